//! Fuzz target `store_meta`: see `strongroom_fuzz_checks::store_meta` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strongroom_fuzz_checks::store_meta(data));
