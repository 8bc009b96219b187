//! The `trustgate` binary (placeholder; being written).
fn main() {}
