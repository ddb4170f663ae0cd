//! Fuzz target `pkcs11_root_record`: see `strongroom_fuzz_checks::pkcs11_root_record` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(
    |data: &[u8]| strongroom_fuzz_checks::pkcs11_root_record(data)
);
