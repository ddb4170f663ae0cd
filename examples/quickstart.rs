//! A walk through strongroom's key hierarchy on the embedded soft backend, in a temporary
//! directory: root key -> KEK -> DEK -> sealed record, then disable and destroy the root key.
#![allow(clippy::print_stdout)]

use std::error::Error;

use strongroom::core::crypto::{kwp_unwrap_bound, kwp_wrap_bound};
use strongroom::core::record::RecordCipher;
use strongroom::{
    Backend, DekVersion, Key256, KeyringName, RootKeyId, RootKeyName, RootVersion, SoftBackend,
};

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let backend = SoftBackend::create(dir.path())?;
    let root = RootKeyId::new(RootKeyName::new("acme")?, RootVersion::FIRST);
    backend.generate_root(&root)?;
    println!(
        "root key {root} created in {}",
        backend.key_file_path().display()
    );

    let keyring = KeyringName::new("payroll")?;
    let kek = Key256::generate()?;
    let kek_blob = backend.wrap(&root, &kek, b"keyring=payroll;kek=v1")?;
    println!(
        "KEK v1 wrapped under {root} with {} ({} bytes)",
        kek_blob.alg(),
        kek_blob.to_bytes().len()
    );

    let dek = Key256::generate()?;
    let dek_blob = kwp_wrap_bound(&kek, &dek, b"keyring=payroll;dek=v1");
    println!("DEK v1 wrapped under the KEK ({} bytes)", dek_blob.len());

    let cipher = RecordCipher::new(DekVersion::FIRST, &dek);
    let sealed = cipher.seal(&keyring, b"alice", b"salary=100000")?;
    println!("record payroll/alice sealed ({} bytes)", sealed.len());

    // Reading back walks the hierarchy down from the root.
    let kek2 = backend.unwrap(&kek_blob, b"keyring=payroll;kek=v1")?;
    let dek2 = kwp_unwrap_bound(&kek2, &dek_blob, b"keyring=payroll;dek=v1")?;
    let opened = RecordCipher::new(DekVersion::FIRST, &dek2).open(&keyring, b"alice", &sealed)?;
    println!(
        "record payroll/alice opened: {} bytes, matches: {}",
        opened.len(),
        opened.expose() == b"salary=100000"
    );

    let refused = |b: &SoftBackend| match b.unwrap(&kek_blob, b"keyring=payroll;kek=v1") {
        Ok(_) => "unexpectedly succeeded".to_owned(),
        Err(e) => e.to_string(),
    };
    backend.disable_root(&root)?;
    println!("root disabled; unwrap now fails: {}", refused(&backend));
    backend.enable_root(&root)?;
    backend.destroy_root(&root)?;
    println!("root destroyed; unwrap now fails: {}", refused(&backend));
    Ok(())
}
