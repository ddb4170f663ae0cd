//! Fuzz target `store_model`: see `strongroom_fuzz_checks::store_model` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strongroom_fuzz_checks::store_model(data));
