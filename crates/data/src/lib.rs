//! vlmtune-data
