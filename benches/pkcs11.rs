//! PKCS#11 backend benchmark (placeholder; being written).
fn main() {}
