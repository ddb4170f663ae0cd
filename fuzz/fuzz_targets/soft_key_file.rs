//! Fuzz target `soft_key_file`: see `strongroom_fuzz_checks::soft_key_file` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(
    |data: &[u8]| strongroom_fuzz_checks::soft_key_file(data)
);
