//! Test-only PKCS#11 tooling (placeholder; being written).
