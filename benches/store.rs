//! Store benchmark (placeholder; being written).
fn main() {}
