//! Developer entry points (placeholder; being written).
fn main() {}
