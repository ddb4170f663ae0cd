//! The checks behind each fuzz target, shared with the regression test that replays every saved
//! input (`tests/fuzz_regressions.rs`), so a crash found by the fuzzer stays a test forever.
//!
//! Each function takes arbitrary bytes and panics only when strongroom misbehaves.

use strongroom_core::blob::{WrapAlg, WrappedKey};
use strongroom_core::record::{RECORD_HEADER_LEN, RecordCipher, RecordHeader};
use strongroom_core::soft::keyfile::KeyFile;
use strongroom_core::{Key256, KeyringName, crypto};

/// Wrapped-key blob parser: never panics; whatever parses serializes back to the same bytes;
/// a parsed blob never unwraps under a fixed KEK.
pub fn wrapped_blob(data: &[u8]) {
    let Ok(blob) = WrappedKey::parse(data) else {
        return;
    };
    assert_eq!(blob.to_bytes(), data, "parse/serialize must be exact");
    assert_eq!(blob.payload().len(), blob.alg().payload_len());
    let kek = Key256::from_slice_zeroizing(&mut [0x42u8; 32]).unwrap();
    // Arbitrary payloads must not unwrap (a 2^-64 chance of passing KW/KWP's integrity check,
    // then 2^-128 of matching the context tag).
    match blob.alg() {
        WrapAlg::AesKwp => {
            assert!(crypto::kwp_unwrap_bound(&kek, blob.payload(), b"fuzz").is_err())
        }
        WrapAlg::AesKw => assert!(crypto::kw_unwrap_bound(&kek, blob.payload(), b"fuzz").is_err()),
        _ => {}
    }
}

/// Record header parser and record opening: never panics; a parsed header re-serializes to the
/// bytes it came from; arbitrary bytes never open as a record.
pub fn record_header(data: &[u8]) {
    let Ok((header, rest)) = RecordHeader::parse(data) else {
        return;
    };
    assert_eq!(&header.to_bytes()[..], &data[..RECORD_HEADER_LEN]);
    assert_eq!(rest.len(), data.len() - RECORD_HEADER_LEN);
    let dek = Key256::from_slice_zeroizing(&mut [7u8; 32]).unwrap();
    let c = RecordCipher::new(header.dek_version, &dek);
    let kr = KeyringName::new("fuzz").unwrap();
    assert!(c.open(&kr, b"key", data).is_err());
}

/// Soft-backend key file parser: never panics; whatever parses serializes back to the same bytes.
pub fn soft_key_file(data: &[u8]) {
    if let Ok(f) = KeyFile::parse(data) {
        assert_eq!(&f.to_bytes()[..], data);
    }
}

/// A fuzz target's check.
pub type Check = fn(&[u8]);

/// Every fuzz target by name, for the regression replay.
pub const TARGETS: &[(&str, Check)] = &[
    ("wrapped_blob", wrapped_blob),
    ("record_header", record_header),
    ("soft_key_file", soft_key_file),
];
