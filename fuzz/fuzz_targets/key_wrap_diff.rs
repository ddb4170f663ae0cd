//! Fuzz target `key_wrap_diff`: see `strongroom_fuzz_checks::key_wrap_diff` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(
    |data: &[u8]| strongroom_fuzz_checks::key_wrap_diff(data)
);
