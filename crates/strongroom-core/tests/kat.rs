//! Known-answer tests: RFC 3394 / RFC 5649 key wrap, NIST SP 800-38F KW/KWP and NIST GCM
//! vectors, read from the data files under `tests/data/` (sources in `tests/data/SOURCES.md`).
//! The GCM vectors run against every AES-GCM engine compiled in (`aes-gcm`, and `ring` with that
//! feature), so the README's `--all-features` test command checks both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use strongroom_core::Key256;
use strongroom_core::crypto::hazmat::{self, KeyWrapError};
use strongroom_core::crypto::{Gcm, GcmEngine, IntegrityError, NONCE_LEN, RustCryptoGcm};

/// One vector: the `NAME = hex` lines of a paragraph, and whether it says `FAIL`.
struct Vector {
    fields: HashMap<String, Vec<u8>>,
    fail: bool,
    line: usize,
}

impl Vector {
    fn get(&self, k: &str) -> &[u8] {
        self.fields
            .get(k)
            .unwrap_or_else(|| panic!("vector at line {} has no {k}", self.line))
    }
}

fn load(rel: &str) -> Vec<Vector> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let mut cur: Option<Vector> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            if line.is_empty() {
                out.extend(cur.take());
            }
            continue;
        }
        let v = cur.get_or_insert_with(|| Vector {
            fields: HashMap::new(),
            fail: false,
            line: n + 1,
        });
        if line == "FAIL" {
            v.fail = true;
        } else if let Some((k, val)) = line.split_once('=') {
            let (k, val) = (k.trim(), val.trim());
            if k.eq_ignore_ascii_case("count") {
                continue;
            }
            let bytes = hex::decode(val).unwrap_or_else(|e| panic!("{rel}:{}: {e}", n + 1));
            v.fields.insert(k.to_owned(), bytes);
        } else {
            panic!("{rel}:{}: unparsed line {line:?}", n + 1);
        }
    }
    out.extend(cur);
    // Keep only complete vectors (section headers can leave stray paragraphs).
    out.retain(|v| v.fields.contains_key("K") || v.fields.contains_key("Key"));
    out
}

#[test]
fn rfc3394_section4() {
    let vs = load("rfc3394-section4.txt");
    assert_eq!(vs.len(), 6);
    for v in &vs {
        assert_eq!(
            hazmat::kw_wrap(v.get("K"), v.get("P")).unwrap(),
            v.get("C"),
            "line {}",
            v.line
        );
        assert_eq!(
            &hazmat::kw_unwrap(v.get("K"), v.get("C")).unwrap()[..],
            v.get("P")
        );
    }
}

#[test]
fn rfc5649_section6() {
    let vs = load("rfc5649-section6.txt");
    assert_eq!(vs.len(), 2);
    for v in &vs {
        assert_eq!(
            hazmat::kwp_wrap(v.get("K"), v.get("P")).unwrap(),
            v.get("C"),
            "line {}",
            v.line
        );
        assert_eq!(
            &hazmat::kwp_unwrap(v.get("K"), v.get("C")).unwrap()[..],
            v.get("P")
        );
    }
}

type Wrap = fn(&[u8], &[u8]) -> Result<Vec<u8>, KeyWrapError>;
type Unwrap = fn(&[u8], &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyWrapError>;

fn nist_ae(file: &str, wrap: Wrap, unwrap: Unwrap) {
    let vs = load(file);
    assert_eq!(vs.len(), 500, "{file}");
    for v in &vs {
        assert_eq!(
            wrap(v.get("K"), v.get("P")).unwrap(),
            v.get("C"),
            "{file} line {}",
            v.line
        );
        assert_eq!(
            &unwrap(v.get("K"), v.get("C")).unwrap()[..],
            v.get("P"),
            "{file} line {}",
            v.line
        );
    }
}

fn nist_ad(file: &str, unwrap: Unwrap) {
    let vs = load(file);
    assert_eq!(vs.len(), 500, "{file}");
    let mut fails = 0;
    for v in &vs {
        let got = unwrap(v.get("K"), v.get("C"));
        if v.fail {
            fails += 1;
            assert!(
                got.is_err(),
                "{file} line {}: a FAIL vector unwrapped",
                v.line
            );
        } else {
            assert_eq!(&got.unwrap()[..], v.get("P"), "{file} line {}", v.line);
        }
    }
    // The files say 20 of every 100 trials must fail.
    assert_eq!(fails, 100, "{file}");
}

#[test]
fn nist_kw_ae_256() {
    nist_ae(
        "nist-sp800-38f/KW_AE_256.txt",
        hazmat::kw_wrap,
        hazmat::kw_unwrap,
    );
}

#[test]
fn nist_kw_ad_256() {
    nist_ad("nist-sp800-38f/KW_AD_256.txt", hazmat::kw_unwrap);
}

#[test]
fn nist_kwp_ae_256() {
    nist_ae(
        "nist-sp800-38f/KWP_AE_256.txt",
        hazmat::kwp_wrap,
        hazmat::kwp_unwrap,
    );
}

#[test]
fn nist_kwp_ad_256() {
    nist_ad("nist-sp800-38f/KWP_AD_256.txt", hazmat::kwp_unwrap);
}

fn gcm_for<E: GcmEngine>(key: &[u8]) -> Gcm<E> {
    Gcm::with_engine(&Key256::from_slice_zeroizing(&mut key.to_vec()).unwrap())
}

fn nonce(iv: &[u8]) -> [u8; NONCE_LEN] {
    iv.try_into().unwrap()
}

fn nist_gcm_encrypt_256<E: GcmEngine>() {
    let vs = load("nist-gcm/gcmEncryptExtIV256-iv96-tag128.rsp");
    assert_eq!(vs.len(), 375);
    for v in &vs {
        let g = gcm_for::<E>(v.get("Key"));
        let sealed = g
            .seal(&nonce(v.get("IV")), v.get("AAD"), v.get("PT"))
            .unwrap();
        let mut want = v.get("CT").to_vec();
        want.extend_from_slice(v.get("Tag"));
        assert_eq!(sealed, want, "{} line {}", E::NAME, v.line);
    }
}

fn nist_gcm_decrypt_256<E: GcmEngine>() {
    let vs = load("nist-gcm/gcmDecrypt256-iv96-tag128.rsp");
    assert_eq!(vs.len(), 375);
    let mut fails = 0;
    for v in &vs {
        let g = gcm_for::<E>(v.get("Key"));
        let mut ct = v.get("CT").to_vec();
        ct.extend_from_slice(v.get("Tag"));
        let got = g.open(&nonce(v.get("IV")), v.get("AAD"), &ct);
        if v.fail {
            fails += 1;
            assert_eq!(
                got.unwrap_err(),
                IntegrityError,
                "{} line {}",
                E::NAME,
                v.line
            );
        } else {
            assert_eq!(
                got.unwrap().expose(),
                v.get("PT"),
                "{} line {}",
                E::NAME,
                v.line
            );
        }
    }
    assert!(
        fails > 50,
        "the decrypt file has FAIL vectors; found {fails}"
    );
}

#[test]
fn nist_gcm_encrypt_256_aes_gcm() {
    nist_gcm_encrypt_256::<RustCryptoGcm>();
}

#[test]
fn nist_gcm_decrypt_256_aes_gcm() {
    nist_gcm_decrypt_256::<RustCryptoGcm>();
}

#[cfg(feature = "ring")]
#[test]
fn nist_gcm_encrypt_256_ring() {
    nist_gcm_encrypt_256::<strongroom_core::crypto::RingGcm>();
}

#[cfg(feature = "ring")]
#[test]
fn nist_gcm_decrypt_256_ring() {
    nist_gcm_decrypt_256::<strongroom_core::crypto::RingGcm>();
}
