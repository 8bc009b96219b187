//! Kernel filter (placeholder; being written).
