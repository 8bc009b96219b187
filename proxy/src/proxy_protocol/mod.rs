//! PROXY protocol (placeholder; being written).
