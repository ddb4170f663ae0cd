//! Fuzz target `record_header`: see `strongroom_fuzz_checks::record_header` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(
    |data: &[u8]| strongroom_fuzz_checks::record_header(data)
);
