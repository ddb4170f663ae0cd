//! Fuzz target `record_header`: see `strongroom_test_support::fuzz_checks::record_header` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strongroom_test_support::fuzz_checks::record_header(data));
