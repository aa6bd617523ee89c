//! vlmtune-train
