//! Fuzz target `wrapped_blob`: see `strongroom_fuzz_checks::wrapped_blob` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strongroom_fuzz_checks::wrapped_blob(data));
