//! Nothing of its own: the test runs the vlmtune library quickstarts from outside the
//! workspace.
