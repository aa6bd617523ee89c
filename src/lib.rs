//! vlmtune
