//! Fuzz target `audit_entry`: see `strongroom_fuzz_checks::audit_entry` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strongroom_fuzz_checks::audit_entry(data));
