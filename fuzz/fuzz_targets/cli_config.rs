//! Fuzz target `cli_config`: see `strongroom_fuzz_checks::cli_config` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strongroom_fuzz_checks::cli_config(data));
