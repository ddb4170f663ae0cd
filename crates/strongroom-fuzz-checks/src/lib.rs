//! The checks behind each fuzz target, shared with the regression test that replays every saved
//! input (`tests/fuzz_regressions.rs`), so a crash found by the fuzzer stays a test forever.
//!
//! Each function takes arbitrary bytes and panics only when strongroom misbehaves. There are
//! three kinds:
//!
//! - **parsers** (`wrapped_blob`, `record_header`, `soft_key_file`, `audit_entry`, `store_meta`,
//!   `cli_config`, `pkcs11_root_record`): never panic; whatever parses re-serializes to an equal
//!   value, and to the very same bytes where the format is canonical;
//! - **`key_wrap_diff`**: the software AES-KW/KWP ([`strongroom_core::crypto::hazmat`] and the
//!   context-bound wraps) against an independent from-scratch RFC 3394 / RFC 5649 implementation
//!   on the raw AES block cipher ([`reference`]);
//! - **`store_model`**: the store against an in-memory model, under an operation sequence decoded
//!   from the bytes (the byte-driven sibling of `strongroom-store/tests/model.rs`).
//!
//! The inputs that found bugs are in `fuzz/regressions/` (see its README), replayed by
//! `tests/fuzz_regressions.rs` with everything in `fuzz/seeds/`.
#![forbid(unsafe_code)]
// A check fails by panicking: that is how the fuzzer and the replay test see a bug.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strongroom_cli::config::{BackendConfig, Config, StorageConfig, UrlSource};
use strongroom_core::blob::{WrapAlg, WrappedKey};
use strongroom_core::crypto::{self, hazmat};
use strongroom_core::id::MAX_NAME_LEN;
use strongroom_core::record::{RECORD_HEADER_LEN, RecordCipher, RecordHeader};
use strongroom_core::soft::keyfile::KeyFile;
use strongroom_core::{Key256, KeyState, KeyringName, RootKeyName, SoftBackend};
use strongroom_pkcs11::objects::{
    ClaimRecord, DEFAULT_NAMESPACE, KeyLocator, RootRecord, check_namespace,
};
use strongroom_pkcs11::{PinSource, TokenSelector};
use strongroom_store::format::{
    KEYRING_ENTRY_VERSION, KeyringEntry, ROOT_ENTRY_VERSION, RootEntry, StoreMeta, keyring_name,
    parse_root_key, parse_versioned_key, root_key, split_sealed, versioned_key,
};
use strongroom_store::{AuditEntry, BatchOp, Store, StoreError, StoreOptions};

// ============================== core formats ==============================

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

// ============================== store formats ==============================

/// Longest audit `target` and `detail` a writer writes (`MAX_TEXT` in `strongroom-store`'s
/// `audit.rs`: longer text is clipped on a char boundary before it is MACed and stored).
pub const AUDIT_MAX_TEXT: usize = 4096;

/// Audit entry parser: never panics; whatever parses is an entry a writer could have written
/// (no text field beyond the writer's limit, so nothing outside what the MAC and the chain hash
/// cover) and re-serializes to the same bytes.
pub fn audit_entry(data: &[u8]) {
    let Ok(e) = AuditEntry::parse(data) else {
        return;
    };
    // Found while writing this target: a longer field used to parse, and only its first 4096
    // bytes were covered by the MAC (computed over the clipped re-serialization).
    assert!(e.target.len() <= AUDIT_MAX_TEXT && e.detail.len() <= AUDIT_MAX_TEXT);
    assert!(e.actor.len() <= usize::from(u8::MAX) && e.replica.len() <= usize::from(u8::MAX));
    let bytes = e.to_bytes();
    assert_eq!(bytes, data, "parse/serialize must be exact");
    assert_eq!(AuditEntry::parse(&bytes).as_ref(), Ok(&e));
}

/// The store's own formats, each tried on the same bytes (the magic and the version bytes tell
/// them apart): [`StoreMeta`], [`RootEntry`], [`KeyringEntry`], root tree keys
/// ([`parse_root_key`]), keyring tree keys ([`keyring_name`]) and KEK/DEK tree keys
/// ([`parse_versioned_key`]). Never panics; all are
/// canonical, so whatever parses re-serializes to the same bytes.
pub fn store_meta(data: &[u8]) {
    if let Ok(m) = StoreMeta::parse(data) {
        assert_eq!(StoreMeta::version_of(data), Some(1));
        // Found by this target: a longer backend kind used to parse, and `to_bytes` (`put_name`)
        // debug-asserts the name limit.
        assert!(m.backend_kind.len() <= MAX_NAME_LEN);
        assert_eq!(m.to_bytes(), data, "store metadata is canonical");
    }
    // Entries of the current version are canonical; an older one reads into the same entry
    // its current-version bytes hold.
    if let Ok(r) = RootEntry::parse(data) {
        if data.first() == Some(&ROOT_ENTRY_VERSION) {
            assert_eq!(r.to_bytes(), data, "root entries are canonical");
        }
        assert_eq!(RootEntry::parse(&r.to_bytes()).as_ref(), Ok(&r));
    }
    if let Ok(k) = KeyringEntry::parse(data) {
        if data.first() == Some(&KEYRING_ENTRY_VERSION) {
            assert_eq!(k.to_bytes(), data, "keyring entries are canonical");
        }
        assert_eq!(KeyringEntry::parse(&k.to_bytes()).as_ref(), Ok(&k));
    }
    // As the catalog stores them (sealed: entry ‖ MAC): never a panic, and the entry inside is
    // the one the bytes before the MAC hold.
    if let Ok(sealed) = split_sealed("catalog entry", data) {
        if let Ok(k) = KeyringEntry::parse_stored(data) {
            assert_eq!(KeyringEntry::parse(sealed.body).as_ref(), Ok(&k));
        }
        let _ = RootEntry::parse_stored(data);
    }
    if let Ok((name, version)) = parse_root_key(data) {
        assert_eq!(
            root_key(&name, version),
            data,
            "root tree keys are canonical"
        );
    }
    if let Ok(name) = keyring_name(data) {
        assert_eq!(name.as_str().as_bytes(), data);
    }
    if let Ok((id, version)) = parse_versioned_key(data) {
        assert_eq!(
            versioned_key(id, version),
            data,
            "KEK/DEK tree keys are canonical"
        );
    } else {
        assert_ne!(data.len(), 12, "every 12-byte key is a versioned key");
    }
}

// ============================== CLI configuration ==============================

/// Whether `to_text` can write `v` so that `parse` reads back the same string: one line, no
/// surrounding whitespace (values are trimmed), not empty.
/// Whether a value can be in `strongroom.conf`: TOML quotes anything, so only an empty one
/// (refused as missing) cannot.
fn config_value_ok(v: &str) -> bool {
    !v.is_empty()
}

fn config_path_ok(p: &std::path::Path) -> bool {
    p.to_str().is_some_and(config_value_ok)
}

/// `strongroom.conf` parser (TOML, and the format-1 line format it still reads): never panics;
/// whatever parses is written back by `to_text` (always TOML) as a text that parses to an equal
/// value (and `to_text` is then a fixed point). The format is not canonical (comments, spacing,
/// key order, defaults), so the bytes are not compared.
///
/// The other direction too: a configuration built from the input (as `strongroom init` builds
/// one from its flags) reads back equal whenever its values are representable.
pub fn cli_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(c) = Config::parse(text)
    {
        let written = c.to_text();
        let again = Config::parse(&written).expect("a written configuration parses");
        assert_eq!(again, c, "parse(to_text(c)) == c");
        assert_eq!(again.to_text(), written, "to_text is a fixed point");
    }
    if let Some(c) = config_from_bytes(data) {
        let representable = match &c.backend {
            BackendConfig::Soft => true,
            BackendConfig::Pkcs11 {
                module,
                token,
                pin,
                namespace,
            } => {
                check_namespace(namespace).is_ok()
                    // A relative module path is refused (it would load whatever library has
                    // that name where strongroom runs): found by this target once that rule came.
                    && module.is_absolute()
                    && config_path_ok(module)
                    && match token {
                        TokenSelector::Label(l) => config_value_ok(l),
                        TokenSelector::Slot(_) => true,
                    }
                    && match pin {
                        PinSource::Env(v) => config_value_ok(v),
                        PinSource::File(p) => config_path_ok(p),
                    }
            }
        };
        let storage_ok = match &c.storage {
            StorageConfig::Sled => true,
            StorageConfig::Postgres {
                url,
                schema,
                pool_size,
                fleet,
            } => {
                (1..=1000).contains(pool_size)
                    && fleet.is_none_or(|p| {
                        p <= Duration::from_secs(3600) && p.subsec_nanos() % 1_000_000 == 0
                    })
                    && strongroom_postgres::check_schema(schema).is_ok()
                    && match url {
                        UrlSource::Env(v) => config_value_ok(v),
                        UrlSource::File(p) => p.is_absolute() && config_path_ok(p),
                    }
            }
        };
        if representable && storage_ok {
            assert_eq!(Config::parse(&c.to_text()).as_ref(), Ok(&c));
        }
    }
}

/// A configuration from fuzz bytes: `[flags][secs a][secs b] field ‖ 0x00 ‖ field ‖ 0x00 ...`.
fn config_from_bytes(data: &[u8]) -> Option<Config> {
    let (&flags, rest) = data.split_first()?;
    let (&a, rest) = rest.split_first()?;
    let (&b, rest) = rest.split_first()?;
    let mut fields = rest
        .split(|x| *x == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned());
    let mut next = || fields.next().unwrap_or_default();
    let primary_root = RootKeyName::new(next()).ok()?;
    let backend = if flags & 1 == 0 {
        BackendConfig::Soft
    } else {
        let module = PathBuf::from(next());
        let token = if flags & 2 == 0 {
            TokenSelector::Label(next())
        } else {
            TokenSelector::Slot((u64::from(a) << 8) | u64::from(b))
        };
        let pin = if flags & 4 == 0 {
            PinSource::Env(next())
        } else {
            PinSource::File(PathBuf::from(next()))
        };
        let namespace = if flags & 16 == 0 {
            DEFAULT_NAMESPACE.to_owned()
        } else {
            next()
        };
        BackendConfig::Pkcs11 {
            module,
            token,
            pin,
            namespace,
        }
    };
    // Bit 5: a PostgreSQL storage section (URL from a variable or a file, a schema, a pool).
    let storage = if flags & 32 == 0 {
        StorageConfig::Sled
    } else {
        StorageConfig::Postgres {
            url: if flags & 64 == 0 {
                UrlSource::Env(next())
            } else {
                UrlSource::File(PathBuf::from(next()))
            },
            schema: next(),
            pool_size: usize::from(a),
            // Bit 7: a fleet, polling every `b` * 20 ms.
            fleet: (flags & 128 != 0).then(|| Duration::from_millis(u64::from(b) * 20)),
        }
    };
    Some(Config {
        backend,
        storage,
        primary_root,
        cache_ttl: Duration::from_secs(u64::from(a) * 1000),
        destruction_delay: Duration::from_secs(u64::from(b) << 40),
        audit_data_access: flags & 8 != 0,
    })
}

// ============================== PKCS#11 objects ==============================

/// PKCS#11 root record parser and key selectors: never panic; a parsed record re-serializes to
/// a record that parses to an equal value, and `to_bytes` is then a fixed point. Not canonical
/// (`seq=+7` and `seq=007` read as 7; usage flags in any order or repeated; hex in either case),
/// so the bytes are not compared. A selector that parses prints as a selector for the same key.
pub fn pkcs11_root_record(data: &[u8]) {
    if let Ok(r) = RootRecord::parse(data) {
        let bytes = r.to_bytes();
        assert_eq!(
            RootRecord::parse(&bytes).as_ref(),
            Ok(&r),
            "parse(to_bytes(r)) == r"
        );
        assert_eq!(RootRecord::parse(&bytes).unwrap().to_bytes(), bytes);
        assert!(!matches!(&r.key, KeyLocator::Label(l) if l.is_empty()));
        assert!(!matches!(&r.key, KeyLocator::Id(id) if id.is_empty()));
    }
    // The store claim of a namespace: canonical (what parses writes back the same bytes).
    if let Ok(c) = ClaimRecord::parse(data) {
        assert_eq!(c.to_bytes(), data, "store claims are canonical");
    }
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(loc) = KeyLocator::from_selector(s)
    {
        match &loc {
            KeyLocator::Label(l) => assert!(!l.is_empty()),
            KeyLocator::Id(id) => assert!(!id.is_empty()),
            KeyLocator::Managed => panic!("a selector never names the managed key"),
        }
        assert_eq!(
            KeyLocator::from_selector(&loc.to_string()).as_ref(),
            Ok(&loc)
        );
    }
}

// ============================== key wrap, differential ==============================

/// An independent AES-KW (RFC 3394) and AES-KWP (RFC 5649) on the raw AES block cipher, written
/// from the RFCs for differential testing only: not constant time, no zeroizing.
pub mod reference {
    use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
    use aes::{Aes128, Aes192, Aes256, Block};

    /// The default initial value of RFC 3394, section 2.2.3.1.
    pub const KW_IV: [u8; 8] = [0xA6; 8];
    /// The first half of RFC 5649's alternative initial value; the second is the length.
    pub const KWP_AIV_PREFIX: [u8; 4] = [0xA6, 0x59, 0x59, 0xA6];

    /// Why the reference refused.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum RefError {
        /// The KEK is not 16, 24 or 32 bytes.
        KekLength,
        /// The input length is impossible for the mode and direction.
        InputLength,
        /// The integrity check failed.
        Integrity,
    }

    /// AES with a 128-, 192- or 256-bit key.
    pub enum Aes {
        /// AES-128.
        A128(Aes128),
        /// AES-192.
        A192(Aes192),
        /// AES-256.
        A256(Aes256),
    }

    impl Aes {
        /// The cipher for `kek`.
        ///
        /// # Errors
        /// [`RefError::KekLength`] unless `kek` is 16, 24 or 32 bytes.
        pub fn new(kek: &[u8]) -> Result<Self, RefError> {
            let bad = |_| RefError::KekLength;
            match kek.len() {
                16 => Aes128::new_from_slice(kek).map(Self::A128).map_err(bad),
                24 => Aes192::new_from_slice(kek).map(Self::A192).map_err(bad),
                32 => Aes256::new_from_slice(kek).map(Self::A256).map_err(bad),
                _ => Err(RefError::KekLength),
            }
        }

        /// Encrypts one block in place.
        pub fn encrypt(&self, b: &mut [u8; 16]) {
            let mut block = Block::from(*b);
            match self {
                Self::A128(c) => c.encrypt_block(&mut block),
                Self::A192(c) => c.encrypt_block(&mut block),
                Self::A256(c) => c.encrypt_block(&mut block),
            }
            b.copy_from_slice(&block);
        }

        /// Decrypts one block in place.
        pub fn decrypt(&self, b: &mut [u8; 16]) {
            let mut block = Block::from(*b);
            match self {
                Self::A128(c) => c.decrypt_block(&mut block),
                Self::A192(c) => c.decrypt_block(&mut block),
                Self::A256(c) => c.decrypt_block(&mut block),
            }
            b.copy_from_slice(&block);
        }
    }

    fn semiblocks(b: &[u8]) -> Vec<[u8; 8]> {
        b.chunks_exact(8)
            .map(|c| c.try_into().expect("8-byte chunk"))
            .collect()
    }

    fn t_of(n: usize, j: usize, i: usize) -> [u8; 8] {
        u64::try_from(n * j + i)
            .expect("counter fits in 64 bits")
            .to_be_bytes()
    }

    /// The wrapping function W of RFC 3394, section 2.2.1 (index-based form), with initial
    /// value `a` over `p` (whole semiblocks, at least two).
    #[must_use]
    pub fn w(c: &Aes, a: [u8; 8], p: &[u8]) -> Vec<u8> {
        let mut a = a;
        let mut r = semiblocks(p);
        let n = r.len();
        for j in 0..6 {
            for i in 1..=n {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&a);
                b[8..].copy_from_slice(&r[i - 1]);
                c.encrypt(&mut b);
                let t = t_of(n, j, i);
                for (ak, (bk, tk)) in a.iter_mut().zip(b.iter().zip(t)) {
                    *ak = bk ^ tk;
                }
                r[i - 1].copy_from_slice(&b[8..]);
            }
        }
        let mut out = a.to_vec();
        for ri in r {
            out.extend_from_slice(&ri);
        }
        out
    }

    /// The unwrapping function W^-1 of RFC 3394, section 2.2.2: the recovered initial value and
    /// plaintext of `ct` (whole semiblocks, at least three).
    #[must_use]
    pub fn w_inv(c: &Aes, ct: &[u8]) -> ([u8; 8], Vec<u8>) {
        let mut r = semiblocks(ct);
        let mut a = r.remove(0);
        let n = r.len();
        for j in (0..6).rev() {
            for i in (1..=n).rev() {
                let t = t_of(n, j, i);
                let mut b = [0u8; 16];
                for (bk, (ak, tk)) in b.iter_mut().zip(a.iter().zip(t)) {
                    *bk = ak ^ tk;
                }
                b[8..].copy_from_slice(&r[i - 1]);
                c.decrypt(&mut b);
                a.copy_from_slice(&b[..8]);
                r[i - 1].copy_from_slice(&b[8..]);
            }
        }
        (a, r.concat())
    }

    /// AES-KW wrap: plaintext of at least two whole semiblocks.
    ///
    /// # Errors
    /// [`RefError`] for a bad KEK or plaintext length.
    pub fn kw_wrap(kek: &[u8], p: &[u8]) -> Result<Vec<u8>, RefError> {
        let c = Aes::new(kek)?;
        if p.len() < 16 || !p.len().is_multiple_of(8) {
            return Err(RefError::InputLength);
        }
        Ok(w(&c, KW_IV, p))
    }

    /// AES-KW unwrap.
    ///
    /// # Errors
    /// [`RefError`] for a bad KEK or input length, or a wrong initial value.
    pub fn kw_unwrap(kek: &[u8], ct: &[u8]) -> Result<Vec<u8>, RefError> {
        let c = Aes::new(kek)?;
        if ct.len() < 24 || !ct.len().is_multiple_of(8) {
            return Err(RefError::InputLength);
        }
        let (a, p) = w_inv(&c, ct);
        if a != KW_IV {
            return Err(RefError::Integrity);
        }
        Ok(p)
    }

    /// The KWP encryption of an already padded plaintext under initial value `aiv` (RFC 5649,
    /// section 4.1): one AES block for a single semiblock, W otherwise. With a chosen `aiv` and
    /// padding it builds invalid wraps too.
    #[must_use]
    pub fn kwp_encrypt_padded(c: &Aes, aiv: [u8; 8], padded: &[u8]) -> Vec<u8> {
        if padded.len() == 8 {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&aiv);
            b[8..].copy_from_slice(padded);
            c.encrypt(&mut b);
            b.to_vec()
        } else {
            w(c, aiv, padded)
        }
    }

    /// The alternative initial value for a plaintext of `mli` bytes.
    #[must_use]
    pub fn kwp_aiv(mli: u32) -> [u8; 8] {
        let mut aiv = [0u8; 8];
        aiv[..4].copy_from_slice(&KWP_AIV_PREFIX);
        aiv[4..].copy_from_slice(&mli.to_be_bytes());
        aiv
    }

    /// AES-KWP wrap: 1 to 2^32 - 1 bytes.
    ///
    /// # Errors
    /// [`RefError`] for a bad KEK or plaintext length.
    pub fn kwp_wrap(kek: &[u8], p: &[u8]) -> Result<Vec<u8>, RefError> {
        let c = Aes::new(kek)?;
        let mli = u32::try_from(p.len()).map_err(|_| RefError::InputLength)?;
        if mli == 0 {
            return Err(RefError::InputLength);
        }
        let mut padded = p.to_vec();
        padded.resize(p.len().div_ceil(8) * 8, 0);
        Ok(kwp_encrypt_padded(&c, kwp_aiv(mli), &padded))
    }

    /// AES-KWP unwrap (RFC 5649, section 4.2), with every check of section 3: the constant
    /// half of the initial value, `8 * (n - 1) < MLI <= 8 * n`, and zero padding.
    ///
    /// # Errors
    /// [`RefError`] for a bad KEK or input length, or a failed check.
    pub fn kwp_unwrap(kek: &[u8], ct: &[u8]) -> Result<Vec<u8>, RefError> {
        let c = Aes::new(kek)?;
        if ct.len() < 16 || !ct.len().is_multiple_of(8) {
            return Err(RefError::InputLength);
        }
        let (a, p) = if ct.len() == 16 {
            let mut b: [u8; 16] = ct.try_into().expect("16 bytes");
            c.decrypt(&mut b);
            let a: [u8; 8] = b[..8].try_into().expect("8 bytes");
            (a, b[8..].to_vec())
        } else {
            w_inv(&c, ct)
        };
        if a[..4] != KWP_AIV_PREFIX {
            return Err(RefError::Integrity);
        }
        let mli = usize::try_from(u32::from_be_bytes(a[4..].try_into().expect("4 bytes")))
            .map_err(|_| RefError::Integrity)?;
        let n = p.len() / 8;
        if mli <= 8 * (n - 1) || mli > 8 * n {
            return Err(RefError::Integrity);
        }
        if p[mli..].iter().any(|b| *b != 0) {
            return Err(RefError::Integrity);
        }
        Ok(p[..mli].to_vec())
    }
}

use reference::RefError;

/// Compares a hazmat result with the reference's. When both the KEK and the input length are
/// wrong, either complaint is right (the order of the two checks is not specified).
fn same_outcome<T: AsRef<[u8]>>(
    what: &str,
    got: &Result<T, hazmat::KeyWrapError>,
    want: &Result<Vec<u8>, RefError>,
    kek_ok: bool,
    len_ok: bool,
) {
    use hazmat::KeyWrapError as E;
    match (got, want) {
        (Ok(g), Ok(w)) => assert_eq!(g.as_ref(), &w[..], "{what}: different output"),
        (Err(E::KekLength(n)), Err(RefError::KekLength)) => assert!(!kek_ok, "{what}: KEK {n}"),
        (Err(E::InputLength(_)), Err(RefError::InputLength)) => assert!(!len_ok, "{what}"),
        (Err(E::KekLength(_)), Err(RefError::InputLength))
        | (Err(E::InputLength(_)), Err(RefError::KekLength)) => {
            assert!(
                !kek_ok && !len_ok,
                "{what}: a length complaint for the wrong length"
            )
        }
        (Err(E::Integrity), Err(RefError::Integrity)) => {}
        _ => panic!(
            "{what}: strongroom says {:?}, the reference says {:?}",
            got.as_ref().map(|_| "ok"),
            want.as_ref().map(|_| "ok")
        ),
    }
}

/// Software key wrap against the independent [`reference`].
///
/// Input: `[sel][ctl][kek: 16, 24 or 32 bytes (or a bad length)][data...]`. For every input:
/// 1. `data` is wrapped with KW and KWP by both; same bytes or the same refusal; a wrap unwraps
///    to `data` and, with one bit flipped (`ctl` picks it), fails in both;
/// 2. `data` is unwrapped as a KW and as a KWP wrap by both: same key or same refusal;
/// 3. wraps with a chosen initial value, length indicator and padding (`ctl`) are built with the
///    reference's raw functions, so the integrity checks are reached with inputs that pass AES
///    (wrong IV, MLI out of range, non-zero padding); both must agree on every one;
/// 4. with a 32-byte KEK and 32 bytes of `data`: the context-bound wraps equal the reference
///    wrap of `key ‖ context_tag`, round-trip, and fail under any other context or mode.
pub fn key_wrap_diff(data: &[u8]) {
    let [sel, ctl, rest @ ..] = data else {
        return;
    };
    let kek_len = match sel & 3 {
        0 => 16,
        1 => 24,
        2 => 32,
        _ => usize::from(sel >> 2) % 41,
    };
    if rest.len() < kek_len {
        return;
    }
    let (kek, input) = rest.split_at(kek_len);
    let kek_ok = matches!(kek_len, 16 | 24 | 32);
    let n = input.len();

    // 1. wrap, both modes
    let kw_len_ok = n >= 16 && n.is_multiple_of(8);
    let got = hazmat::kw_wrap(kek, input);
    same_outcome(
        "kw_wrap",
        &got,
        &reference::kw_wrap(kek, input),
        kek_ok,
        kw_len_ok,
    );
    if let Ok(w) = &got {
        assert_eq!(
            &hazmat::kw_unwrap(kek, w).expect("KW round trip")[..],
            input
        );
        let mut t = w.clone();
        let at = usize::from(*ctl) % t.len();
        t[at] ^= 1 << (sel >> 5);
        assert_eq!(
            hazmat::kw_unwrap(kek, &t).unwrap_err(),
            hazmat::KeyWrapError::Integrity
        );
        assert_eq!(reference::kw_unwrap(kek, &t), Err(RefError::Integrity));
    }
    let kwp_len_ok = n >= 1 && u32::try_from(n).is_ok();
    let got = hazmat::kwp_wrap(kek, input);
    same_outcome(
        "kwp_wrap",
        &got,
        &reference::kwp_wrap(kek, input),
        kek_ok,
        kwp_len_ok,
    );
    if let Ok(w) = &got {
        assert_eq!(w.len(), n.div_ceil(8) * 8 + 8);
        assert_eq!(
            &hazmat::kwp_unwrap(kek, w).expect("KWP round trip")[..],
            input
        );
        let mut t = w.clone();
        let at = usize::from(*ctl) % t.len();
        t[at] ^= 1 << (sel >> 5);
        assert_eq!(
            hazmat::kwp_unwrap(kek, &t).unwrap_err(),
            hazmat::KeyWrapError::Integrity
        );
        assert_eq!(reference::kwp_unwrap(kek, &t), Err(RefError::Integrity));
    }

    // 2. unwrap the input as it is
    same_outcome(
        "kw_unwrap",
        &hazmat::kw_unwrap(kek, input),
        &reference::kw_unwrap(kek, input),
        kek_ok,
        n >= 24 && n.is_multiple_of(8),
    );
    same_outcome(
        "kwp_unwrap",
        &hazmat::kwp_unwrap(kek, input),
        &reference::kwp_unwrap(kek, input),
        kek_ok,
        n >= 16 && n.is_multiple_of(8),
    );

    // 3. crafted wraps that reach the integrity checks
    if let Ok(c) = reference::Aes::new(kek) {
        // KW under a chosen IV (bit `ctl & 7` of byte `ctl >> 3 & 7` flipped when ctl & 0x40).
        let mut p = input.to_vec();
        p.resize(p.len().max(16).div_ceil(8) * 8, 0);
        let mut iv = reference::KW_IV;
        if ctl & 0x40 != 0 {
            iv[usize::from(ctl >> 3) & 7] ^= 1 << (ctl & 7);
        }
        let ct = reference::w(&c, iv, &p);
        let want = reference::kw_unwrap(kek, &ct);
        assert_eq!(want.is_ok(), ctl & 0x40 == 0);
        same_outcome(
            "kw_unwrap (crafted)",
            &hazmat::kw_unwrap(kek, &ct),
            &want,
            true,
            true,
        );
        // KWP with a claimed length of data.len() + delta (delta in -8..=7), padding that is
        // zero unless ctl & 0x10, and the constant prefix damaged when ctl & 0x80.
        let padded_len = n.max(1).div_ceil(8) * 8;
        let delta = i64::from(ctl & 0x0F) - 8;
        let mli = i64::try_from(n).expect("length fits") + delta;
        let mli = u32::try_from(mli.max(0)).unwrap_or(u32::MAX);
        let mut padded = input.to_vec();
        padded.resize(padded_len, if ctl & 0x10 != 0 { sel | 1 } else { 0 });
        let mut aiv = reference::kwp_aiv(mli);
        if ctl & 0x80 != 0 {
            aiv[usize::from(sel >> 6)] ^= 0x20;
        }
        let ct = reference::kwp_encrypt_padded(&c, aiv, &padded);
        let want = reference::kwp_unwrap(kek, &ct);
        if let Ok(k) = &want {
            assert!(!k.is_empty(), "the reference never returns an empty key");
        }
        same_outcome(
            "kwp_unwrap (crafted)",
            &hazmat::kwp_unwrap(kek, &ct),
            &want,
            true,
            true,
        );
    }

    // 4. context-bound wraps
    if kek_len == 32 && n >= 32 {
        let kek = Key256::from_slice_zeroizing(&mut kek.to_vec()).expect("32 bytes");
        let key = Key256::from_slice_zeroizing(&mut input[..32].to_vec()).expect("32 bytes");
        let ctx = &input[32..];
        let mut other = ctx.to_vec();
        match other.first_mut() {
            Some(b) if ctl & 1 == 0 => *b ^= 1,
            _ => other.push(*ctl),
        }
        let mut bound = key.expose_bytes().to_vec();
        bound.extend_from_slice(&crypto::context_tag(ctx));
        type Unwrap = fn(&Key256, &[u8], &[u8]) -> Result<Key256, crypto::IntegrityError>;
        let kw = crypto::kw_wrap_bound(&kek, &key, ctx);
        let kwp = crypto::kwp_wrap_bound(&kek, &key, ctx);
        assert_eq!(
            Ok(kw.to_vec()),
            reference::kw_wrap(kek.expose_bytes(), &bound)
        );
        assert_eq!(
            Ok(kwp.to_vec()),
            reference::kwp_wrap(kek.expose_bytes(), &bound)
        );
        for (w, unwrap, wrong_mode) in [
            (
                &kw,
                crypto::kw_unwrap_bound as Unwrap,
                crypto::kwp_unwrap_bound as Unwrap,
            ),
            (&kwp, crypto::kwp_unwrap_bound, crypto::kw_unwrap_bound),
        ] {
            assert!(unwrap(&kek, w, ctx).expect("bound round trip").ct_eq(&key));
            assert!(unwrap(&kek, w, &other).is_err(), "another context opens it");
            assert!(wrong_mode(&kek, w, ctx).is_err(), "the other mode opens it");
            assert!(unwrap(&kek, &w[..48], ctx).is_err());
        }
    }
}

// ============================== the store against a model ==============================

/// Most operations decoded from one input.
pub const STORE_MODEL_MAX_OPS: usize = 32;
const KEYRINGS: [&str; 3] = ["k0", "k1", "k2"];
const ROOTS: [&str; 2] = ["service", "r1"];
const BIG_KEY_LEN: usize = strongroom_store::MAX_KEY_LEN + 1;

/// Reads the fuzz input a byte at a time; an exhausted input reads as zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A record key: 0 to 3 bytes from `a`, `b`, 0x00, 0xff, or (for 0xff) one over the limit.
    fn key(&mut self) -> Vec<u8> {
        let k = self.byte();
        if k == 0xFF {
            return vec![b'x'; BIG_KEY_LEN];
        }
        let alphabet = [b'a', b'b', 0x00, 0xFF];
        (0..usize::from(k & 3))
            .map(|i| alphabet[usize::from(k >> (2 + 2 * i)) & 3])
            .collect()
    }

    /// A record value: 0 to 23 bytes.
    fn value(&mut self) -> Vec<u8> {
        let len = self.byte() % 24;
        (0..len).map(|_| self.byte()).collect()
    }
}

/// One operation of a store run. Keyrings and roots are indexes into `KEYRINGS` and `ROOTS`.
#[derive(Clone, Debug)]
enum Op {
    Put(usize, Vec<u8>, Vec<u8>),
    Get(usize, Vec<u8>),
    Delete(usize, Vec<u8>),
    List(usize, Vec<u8>),
    Batch(usize, Vec<(Vec<u8>, Option<Vec<u8>>)>),
    RotateKek(usize),
    RotateDek(usize),
    Reencrypt(usize),
    Disable(usize),
    Enable(usize),
    Schedule(usize, bool),
    Cancel(usize),
    DestroyNow(usize),
    CreateKeyring(usize, usize),
    MoveKeyring(usize, usize),
    RotateRoot(usize),
    DisableRoot,
    EnableRoot,
    ScheduleRoot(usize, bool),
    CancelRoot,
    DestroyRootNow(usize),
    RunDue,
    Reopen,
    PurgeCache,
}

fn decode_op(inp: &mut Input<'_>) -> Op {
    let code = inp.byte();
    let kr = usize::from(code >> 5) % KEYRINGS.len();
    let root = usize::from(code >> 7);
    let now = code & 0x20 != 0;
    match code % 24 {
        0 | 1 => Op::Put(kr, inp.key(), inp.value()),
        2 | 3 => Op::Get(kr, inp.key()),
        4 => Op::Delete(kr, inp.key()),
        5 => Op::List(kr, inp.key()),
        6 => {
            let n = inp.byte();
            let items = (0..n % 5)
                .map(|i| {
                    let k = inp.key();
                    (k, ((n >> (3 + i)) & 1 == 0).then(|| inp.value()))
                })
                .collect();
            Op::Batch(kr, items)
        }
        7 => Op::RotateKek(kr),
        8 => Op::RotateDek(kr),
        9 => Op::Reencrypt(kr),
        10 => Op::Disable(kr),
        11 => Op::Enable(kr),
        12 => Op::Schedule(kr, now),
        13 => Op::Cancel(kr),
        14 => Op::DestroyNow(kr),
        15 => Op::CreateKeyring(kr, root),
        16 => Op::MoveKeyring(kr, root),
        17 => Op::RotateRoot(root),
        18 => Op::DisableRoot,
        19 => Op::EnableRoot,
        20 => match code >> 5 {
            0..=2 => Op::ScheduleRoot(1, now),
            3 => Op::ScheduleRoot(0, now),
            4 | 5 => Op::CancelRoot,
            _ => Op::DestroyRootNow(usize::from(code & 0x20 == 0)),
        },
        21 => Op::RunDue,
        22 => Op::Reopen,
        _ => Op::PurgeCache,
    }
}

/// The model's view of a keyring or root state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Enabled,
    Disabled,
    Pending { due: bool },
    Destroyed,
}

impl St {
    fn agrees(self, s: KeyState) -> bool {
        matches!(
            (self, s),
            (St::Enabled, KeyState::Enabled)
                | (St::Disabled, KeyState::Disabled)
                | (St::Pending { .. }, KeyState::PendingDestruction { .. })
                | (St::Destroyed, KeyState::Destroyed)
        )
    }
}

/// What an operation came to (errors by kind only).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Out {
    Ok,
    Value(Option<Vec<u8>>),
    Deleted(bool),
    Keys(Vec<Vec<u8>>),
    NotFound,
    Exists { destroyed: bool },
    KeyringDisabled,
    KeyringPending,
    KeyringDestroyed,
    RootDisabled,
    RootPending,
    RootDestroyed,
    Illegal,
    TooLarge,
    InUse,
}

fn kind(e: &StoreError) -> Out {
    match e {
        StoreError::KeyringNotFound { .. } => Out::NotFound,
        StoreError::KeyringExists { destroyed, .. } => Out::Exists {
            destroyed: *destroyed,
        },
        StoreError::KeyringDisabled { .. } => Out::KeyringDisabled,
        StoreError::KeyringPendingDestruction { .. } => Out::KeyringPending,
        StoreError::KeyringDestroyed { .. } => Out::KeyringDestroyed,
        StoreError::RootDisabled { .. } => Out::RootDisabled,
        StoreError::RootPendingDestruction { .. } => Out::RootPending,
        StoreError::RootDestroyed { .. } => Out::RootDestroyed,
        StoreError::Transition(_) => Out::Illegal,
        StoreError::TooLarge { .. } => Out::TooLarge,
        StoreError::InUse(_) => Out::InUse,
        other => panic!("the store failed where the model cannot: {other}"),
    }
}

#[derive(Clone, Debug)]
struct KeyringModel {
    exists: bool,
    state: St,
    root: usize,
    records: BTreeMap<Vec<u8>, Vec<u8>>,
    kek: u32,
}

struct Model {
    roots: [St; 2],
    root_versions: [usize; 2],
    keyrings: [KeyringModel; 3],
    /// Encryptions one DEK may make: a batch with more puts than this is refused.
    dek_quota: u64,
}

fn transition(from: St, op: &Op) -> Option<St> {
    match (from, op) {
        (St::Enabled, Op::Disable(_) | Op::DisableRoot) => Some(St::Disabled),
        (St::Disabled, Op::Enable(_) | Op::EnableRoot) => Some(St::Enabled),
        (St::Enabled | St::Disabled, Op::Schedule(_, now) | Op::ScheduleRoot(_, now)) => {
            Some(St::Pending { due: *now })
        }
        (St::Pending { .. }, Op::Cancel(_) | Op::CancelRoot) => Some(St::Disabled),
        _ => None,
    }
}

impl Model {
    fn new(dek_quota: u64) -> Self {
        let kr = |exists, root| KeyringModel {
            exists,
            state: St::Enabled,
            root,
            records: BTreeMap::new(),
            kek: 1,
        };
        Self {
            roots: [St::Enabled; 2],
            root_versions: [1; 2],
            keyrings: [kr(true, 0), kr(true, 1), kr(false, 0)],
            dek_quota,
        }
    }

    fn root_refusal(&self, r: usize) -> Option<Out> {
        match self.roots[r] {
            St::Enabled => None,
            St::Disabled => Some(Out::RootDisabled),
            St::Pending { .. } => Some(Out::RootPending),
            St::Destroyed => Some(Out::RootDestroyed),
        }
    }

    /// Why keyring `i` cannot be used now: not found, its state, then its root's.
    fn refusal(&self, i: usize) -> Option<Out> {
        let k = &self.keyrings[i];
        if !k.exists {
            return Some(Out::NotFound);
        }
        match k.state {
            St::Enabled => self.root_refusal(k.root),
            St::Disabled => Some(Out::KeyringDisabled),
            St::Pending { .. } => Some(Out::KeyringPending),
            St::Destroyed => Some(Out::KeyringDestroyed),
        }
    }

    fn destroy_keyring(&mut self, i: usize) {
        let k = &mut self.keyrings[i];
        k.state = St::Destroyed;
        k.records.clear();
    }

    fn destroy_root(&mut self, r: usize) {
        for i in 0..KEYRINGS.len() {
            let k = &self.keyrings[i];
            if k.exists && k.root == r && k.state != St::Destroyed {
                self.destroy_keyring(i);
            }
        }
        self.roots[r] = St::Destroyed;
    }

    fn run_due(&mut self) {
        for i in 0..KEYRINGS.len() {
            if self.keyrings[i].state == (St::Pending { due: true }) {
                self.destroy_keyring(i);
            }
        }
        for r in 0..ROOTS.len() {
            if self.roots[r] == (St::Pending { due: true }) {
                self.destroy_root(r);
            }
        }
    }

    fn apply(&mut self, op: &Op) -> Out {
        let big = |k: &[u8]| k.len() > strongroom_store::MAX_KEY_LEN;
        match op {
            Op::Put(i, k, v) => {
                if big(k) {
                    return Out::TooLarge;
                }
                self.refusal(*i).unwrap_or_else(|| {
                    self.keyrings[*i].records.insert(k.clone(), v.clone());
                    Out::Ok
                })
            }
            Op::Get(i, k) => {
                if big(k) {
                    return Out::TooLarge;
                }
                self.refusal(*i)
                    .unwrap_or_else(|| Out::Value(self.keyrings[*i].records.get(k).cloned()))
            }
            Op::Delete(i, k) => {
                if big(k) {
                    return Out::TooLarge;
                }
                self.refusal(*i)
                    .unwrap_or_else(|| Out::Deleted(self.keyrings[*i].records.remove(k).is_some()))
            }
            Op::List(i, prefix) => self.refusal(*i).unwrap_or_else(|| {
                Out::Keys(
                    self.keyrings[*i]
                        .records
                        .keys()
                        .filter(|k| k.starts_with(prefix))
                        .cloned()
                        .collect(),
                )
            }),
            Op::Batch(i, items) => {
                let puts = items.iter().filter(|(_, v)| v.is_some()).count();
                if items.iter().any(|(k, _)| big(k))
                    || u64::try_from(puts).is_ok_and(|p| p > self.dek_quota)
                {
                    return Out::TooLarge;
                }
                self.refusal(*i).unwrap_or_else(|| {
                    let recs = &mut self.keyrings[*i].records;
                    for (k, v) in items {
                        match v {
                            Some(v) => recs.insert(k.clone(), v.clone()),
                            None => recs.remove(k),
                        };
                    }
                    Out::Ok
                })
            }
            Op::RotateKek(i) => self.refusal(*i).unwrap_or_else(|| {
                self.keyrings[*i].kek += 1;
                Out::Ok
            }),
            Op::RotateDek(i) | Op::Reencrypt(i) => self.refusal(*i).unwrap_or(Out::Ok),
            Op::Disable(i) | Op::Enable(i) | Op::Schedule(i, _) | Op::Cancel(i) => {
                let k = &mut self.keyrings[*i];
                if !k.exists {
                    return Out::NotFound;
                }
                match transition(k.state, op) {
                    Some(s) => {
                        k.state = s;
                        Out::Ok
                    }
                    None => Out::Illegal,
                }
            }
            Op::DestroyNow(i) => {
                let k = &self.keyrings[*i];
                if !k.exists {
                    return Out::NotFound;
                }
                if k.state == St::Destroyed {
                    return Out::Illegal;
                }
                self.destroy_keyring(*i);
                Out::Ok
            }
            Op::CreateKeyring(i, r) => {
                let k = &self.keyrings[*i];
                if k.exists {
                    return Out::Exists {
                        destroyed: k.state == St::Destroyed,
                    };
                }
                if let Some(out) = self.root_refusal(*r) {
                    return out;
                }
                self.keyrings[*i] = KeyringModel {
                    exists: true,
                    state: St::Enabled,
                    root: *r,
                    records: BTreeMap::new(),
                    kek: 1,
                };
                Out::Ok
            }
            Op::MoveKeyring(i, r) => {
                if let Some(out) = self.refusal(*i) {
                    return out;
                }
                if self.keyrings[*i].root == *r {
                    return Out::Ok;
                }
                if let Some(out) = self.root_refusal(*r) {
                    return out;
                }
                // A move makes a fresh KEK (and DEK) under the new root.
                self.keyrings[*i].root = *r;
                self.keyrings[*i].kek += 1;
                Out::Ok
            }
            Op::RotateRoot(r) => self.root_refusal(*r).unwrap_or_else(|| {
                self.root_versions[*r] += 1;
                Out::Ok
            }),
            Op::DisableRoot | Op::EnableRoot | Op::CancelRoot | Op::ScheduleRoot(1, _) => {
                match (self.roots[1], op) {
                    (St::Destroyed, _) => Out::RootDestroyed,
                    // Disabling again (disabled, or pending destruction, which is disabled
                    // too) only re-applies the disable in the backend: no state change.
                    (St::Disabled | St::Pending { .. }, Op::DisableRoot) => Out::Ok,
                    (from, _) => match transition(from, op) {
                        Some(s) => {
                            self.roots[1] = s;
                            Out::Ok
                        }
                        None => Out::Illegal,
                    },
                }
            }
            Op::ScheduleRoot(_, _) | Op::DestroyRootNow(0) => Out::InUse,
            Op::DestroyRootNow(r) => {
                self.destroy_root(*r);
                Out::Ok
            }
            Op::RunDue | Op::Reopen => {
                self.run_due();
                Out::Ok
            }
            Op::PurgeCache => Out::Ok,
        }
    }
}

/// A store in a fresh temporary directory on a soft backend: roots `service` (primary) and `r1`,
/// keyrings `k0` (under `service`) and `k1` (under `r1`).
struct StoreRun {
    dir: tempfile::TempDir,
    backend: Arc<SoftBackend>,
    options: StoreOptions,
    store: Option<Store>,
}

impl StoreRun {
    fn new(options: StoreOptions) -> Self {
        // STRONGROOM_FUZZ_TMPDIR (the run scripts set /dev/shm) keeps the disk syncs off the disk.
        let dir = match std::env::var_os("STRONGROOM_FUZZ_TMPDIR") {
            Some(d) => tempfile::tempdir_in(d),
            None => tempfile::tempdir(),
        }
        .expect("temp dir");
        let backend = Arc::new(SoftBackend::create(dir.path()).expect("soft backend"));
        let store = Store::create(
            dir.path(),
            backend.clone(),
            &RootKeyName::new(ROOTS[0]).unwrap(),
            options.clone(),
        )
        .expect("create store");
        store.create_root(&root_name(1)).expect("create root r1");
        store
            .create_keyring(&keyring(0), None)
            .expect("create keyring k0");
        store
            .create_keyring(&keyring(1), Some(&root_name(1)))
            .expect("create keyring k1");
        Self {
            dir,
            backend,
            options,
            store: Some(store),
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("store open")
    }

    /// Closes the store and opens it again. `Store::open` already waits up to 2 s for sled to
    /// release the closed handle's file lock (sled's background threads drop it a little after
    /// the last handle); under fuzzing load that once ran out, so this waits up to 30 s more
    /// and says so on stderr. A lock that is never released still fails the run.
    fn reopen(&mut self) {
        self.store = None;
        let start = std::time::Instant::now();
        loop {
            match Store::open(self.dir.path(), self.backend.clone(), self.options.clone()) {
                Ok(s) => {
                    self.store = Some(s);
                    break;
                }
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && start.elapsed() < Duration::from_secs(32) =>
                {
                    eprintln!(
                        "store_model: the database lock is still held {:?} after close",
                        start.elapsed()
                    );
                }
                Err(e) => panic!("reopen the store: {e}"),
            }
        }
    }

    fn run(&mut self, op: &Op) -> Out {
        let s = self.store().clone();
        let unit = |r: Result<(), StoreError>| r.map_or_else(|e| kind(&e), |()| Out::Ok);
        let kr = |i: &usize| keyring(*i);
        match op {
            Op::Put(i, k, v) => unit(s.put(&kr(i), k, v)),
            Op::Get(i, k) => s
                .get(&kr(i), k)
                .map_or_else(|e| kind(&e), |v| Out::Value(v.map(|p| p.expose().to_vec()))),
            Op::Delete(i, k) => s.delete(&kr(i), k).map_or_else(|e| kind(&e), Out::Deleted),
            Op::List(i, p) => s.list(&kr(i), p).map_or_else(|e| kind(&e), Out::Keys),
            Op::Batch(i, items) => {
                let ops: Vec<BatchOp> = items
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => BatchOp::Put(k.clone(), v.clone()),
                        None => BatchOp::Delete(k.clone()),
                    })
                    .collect();
                unit(s.batch(&kr(i), &ops))
            }
            Op::RotateKek(i) => unit(s.rotate_kek(&kr(i)).map(|_| ())),
            Op::RotateDek(i) => unit(s.rotate_dek(&kr(i)).map(|_| ())),
            Op::Reencrypt(i) => unit(s.reencrypt(&kr(i), &mut |_| {}).map(|_| ())),
            Op::Disable(i) => unit(s.disable_keyring(&kr(i))),
            Op::Enable(i) => unit(s.enable_keyring(&kr(i))),
            Op::Schedule(i, now) => unit(
                s.schedule_keyring_destruction(&kr(i), Some(delay(*now)))
                    .map(|_| ()),
            ),
            Op::Cancel(i) => unit(s.cancel_keyring_destruction(&kr(i))),
            Op::DestroyNow(i) => unit(s.destroy_keyring_now(&kr(i)).map(|_| ())),
            Op::CreateKeyring(i, r) => {
                unit(s.create_keyring(&kr(i), Some(&root_name(*r))).map(|_| ()))
            }
            Op::MoveKeyring(i, r) => unit(
                s.move_keyring(&kr(i), &root_name(*r), &mut |_| {})
                    .map(|_| ()),
            ),
            Op::RotateRoot(r) => unit(s.rotate_root(&root_name(*r), &mut |_| {}).map(|_| ())),
            Op::DisableRoot => unit(s.disable_root(&root_name(1))),
            Op::EnableRoot => unit(s.enable_root(&root_name(1))),
            Op::ScheduleRoot(r, now) => unit(
                s.schedule_root_destruction(&root_name(*r), Some(delay(*now)))
                    .map(|_| ()),
            ),
            Op::CancelRoot => unit(s.cancel_root_destruction(&root_name(1))),
            Op::DestroyRootNow(r) => unit(s.destroy_root_now(&root_name(*r)).map(|_| ())),
            Op::RunDue => unit(s.run_due_destructions().map(|_| ())),
            Op::Reopen => {
                drop(s);
                self.reopen();
                Out::Ok
            }
            Op::PurgeCache => {
                s.purge_key_cache();
                Out::Ok
            }
        }
    }

    /// The store's keyrings, roots and unfinished work agree with the model.
    fn check_state(&self, model: &Model, step: usize, op: &Op) {
        let s = self.store();
        let at = || format!("after step {step} ({op:?})");
        let mut current = [None; 2];
        for (r, name) in ROOTS.iter().enumerate() {
            let info = s.root(&root_name(r)).expect("root info");
            assert_eq!(
                info.versions.len(),
                model.root_versions[r],
                "{name} {}",
                at()
            );
            let live: Vec<KeyState> = info
                .versions
                .iter()
                .map(|(_, st)| *st)
                .filter(|st| *st != KeyState::Destroyed)
                .collect();
            match model.roots[r] {
                St::Destroyed => assert!(live.is_empty(), "root {name} {}", at()),
                m => assert!(
                    !live.is_empty() && live.iter().all(|st| m.agrees(*st)),
                    "root {name} is {live:?}, model {m:?}, {}",
                    at()
                ),
            }
            current[r] = info.current;
        }
        for (i, name) in KEYRINGS.iter().enumerate() {
            let m = &model.keyrings[i];
            let info = match s.keyring(&keyring(i)) {
                Err(StoreError::KeyringNotFound { .. }) if !m.exists => continue,
                Ok(info) if m.exists => info,
                other => panic!("keyring {name}: {:?}, model {m:?}, {}", other.err(), at()),
            };
            assert!(
                m.state.agrees(info.state),
                "keyring {name} is {:?}, model {:?}, {}",
                info.state,
                m.state,
                at()
            );
            assert_eq!(info.root.as_str(), ROOTS[m.root], "keyring {name} {}", at());
            assert_eq!(info.current_kek.get(), m.kek, "keyring {name} KEK {}", at());
            if m.state == St::Destroyed {
                assert!(info.kek_versions.is_empty() && info.dek_versions.is_empty());
                continue;
            }
            // One KEK, wrapped under the current version of the keyring's root (a rotation
            // rewraps at once; a move makes a fresh one and erases the old when it finishes).
            let root_id = info.kek_versions.first().and_then(|(_, r)| r.clone());
            assert_eq!(info.kek_versions.len(), 1, "keyring {name} {}", at());
            assert_eq!(info.kek_versions[0].0, info.current_kek);
            let root_id = root_id.expect("a KEK wrapped under a root");
            assert_eq!(root_id.name.as_str(), ROOTS[m.root], "{}", at());
            assert_eq!(Some(root_id.version), current[m.root], "{}", at());
            assert!(info.dek_versions.contains(&info.current_dek), "{}", at());
        }
        let jobs: Vec<_> = s
            .pending_jobs()
            .expect("pending jobs")
            .into_iter()
            // A destruction scheduled with no delay is due (and listed) until the next
            // `run_due_destructions` or open carries it out, as the model has it.
            .filter(|j| {
                !matches!(
                    j,
                    strongroom_store::PendingJob::DueKeyringDestruction(_)
                        | strongroom_store::PendingJob::DueRootDestruction(_)
                )
            })
            .collect();
        // Found by this target: a refused re-encryption used to leave its job marker behind.
        assert!(jobs.is_empty(), "unfinished work {jobs:?} {}", at());
    }

    /// Every record of every usable keyring reads back as the model has it.
    fn check_records(&self, model: &Model) {
        let s = self.store();
        for (i, m) in model.keyrings.iter().enumerate() {
            if model.refusal(i).is_some() {
                continue;
            }
            let keys = s.list(&keyring(i), b"").expect("list");
            assert_eq!(
                keys,
                m.records.keys().cloned().collect::<Vec<_>>(),
                "keys of {}",
                KEYRINGS[i]
            );
            for (k, v) in &m.records {
                let got = s.get(&keyring(i), k).expect("get").expect("present");
                assert_eq!(got.expose(), &v[..]);
            }
        }
    }
}

fn keyring(i: usize) -> KeyringName {
    KeyringName::new(KEYRINGS[i]).unwrap()
}

fn root_name(r: usize) -> RootKeyName {
    RootKeyName::new(ROOTS[r]).unwrap()
}

fn delay(now: bool) -> Duration {
    if now {
        Duration::ZERO
    } else {
        Duration::from_secs(3600)
    }
}

/// The store against an in-memory model under an operation sequence decoded from `data`:
/// puts, gets, deletes, lists and batches on three keyrings; KEK and DEK rotations and
/// re-encryption; keyring disable, enable, schedule (due now or later), cancel, destroy, create
/// and move; root rotation, disable, enable, schedule, cancel and destroy; due destructions,
/// reopening and purging the key cache. Every outcome (value or kind of error) must be the
/// model's; after every step the keyring and root states, KEK versions and wrapping roots agree
/// and no unfinished work is left; at the end every record reads back and the audit log
/// verifies.
///
/// Input: `[options]` (bit 0: audit data access; bits 1-2: DEK rollover after 1 to 4
/// encryptions), then up to [`STORE_MODEL_MAX_OPS`] operations, each an opcode byte (operation
/// `code % 24`, keyring `code >> 5`, root `code >> 7`, "now" `code & 0x20`) and its operands.
pub fn store_model(data: &[u8]) {
    let mut inp = Input(data);
    let flags = inp.byte();
    let mut ops = Vec::new();
    while !inp.is_empty() && ops.len() < STORE_MODEL_MAX_OPS {
        ops.push(decode_op(&mut inp));
    }
    let options = StoreOptions {
        audit_data_access: flags & 1 != 0,
        dek_rollover_after: 1 + u64::from((flags >> 1) & 3),
        ..StoreOptions::default()
    };
    let mut model = Model::new(options.dek_rollover_after);
    let mut run = StoreRun::new(options);
    for (step, op) in ops.iter().enumerate() {
        let want = model.apply(op);
        let got = run.run(op);
        assert_eq!(got, want, "step {step}: {op:?}");
        run.check_state(&model, step, op);
    }
    run.check_records(&model);
    let s = run.store();
    assert!(
        s.verify_audit().expect("verify the audit log").is_ok(),
        "the audit log verifies"
    );
    for e in s.audit_entries(0) {
        let e = e.expect("audit entry");
        assert_eq!(AuditEntry::parse(&e.to_bytes()).as_ref(), Ok(&e));
    }
}

// ============================== the list ==============================

/// A fuzz target's check.
pub type Check = fn(&[u8]);

/// Every fuzz target by name, for the regression replay.
pub const TARGETS: &[(&str, Check)] = &[
    ("wrapped_blob", wrapped_blob),
    ("record_header", record_header),
    ("soft_key_file", soft_key_file),
    ("audit_entry", audit_entry),
    ("store_meta", store_meta),
    ("cli_config", cli_config),
    ("pkcs11_root_record", pkcs11_root_record),
    ("key_wrap_diff", key_wrap_diff),
    ("store_model", store_model),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `(K, P, C)` triples of a vector file in `strongroom-core/tests/data`.
    fn vectors(file: &str) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../strongroom-core/tests/data")
            .join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut out = Vec::new();
        let mut cur: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once(" = ") {
                cur.insert(k.trim(), unhex(v.trim()));
                if cur.len() == 3 {
                    out.push((
                        cur.remove("K").unwrap(),
                        cur.remove("P").unwrap(),
                        cur.remove("C").unwrap(),
                    ));
                    cur.clear();
                }
            }
        }
        assert!(!out.is_empty(), "no vectors in {}", path.display());
        out
    }

    #[test]
    fn the_reference_passes_rfc3394_section_4() {
        let vs = vectors("rfc3394-section4.txt");
        assert_eq!(vs.len(), 6);
        for (k, p, c) in vs {
            assert_eq!(reference::kw_wrap(&k, &p).unwrap(), c);
            assert_eq!(reference::kw_unwrap(&k, &c).unwrap(), p);
            let mut bad = c.clone();
            bad[0] ^= 1;
            assert_eq!(reference::kw_unwrap(&k, &bad), Err(RefError::Integrity));
        }
    }

    #[test]
    fn the_reference_passes_rfc5649_section_6() {
        let vs = vectors("rfc5649-section6.txt");
        assert_eq!(vs.len(), 2);
        for (k, p, c) in vs {
            assert_eq!(reference::kwp_wrap(&k, &p).unwrap(), c);
            assert_eq!(reference::kwp_unwrap(&k, &c).unwrap(), p);
            let mut bad = c.clone();
            *bad.last_mut().unwrap() ^= 1;
            assert_eq!(reference::kwp_unwrap(&k, &bad), Err(RefError::Integrity));
        }
    }

    #[test]
    fn the_reference_refuses_what_the_rfcs_refuse() {
        let kek = [7u8; 16];
        let c = reference::Aes::new(&kek).unwrap();
        // Empty keys: the 8-byte wraps aes-kw 0.3.1 accepts, and an MLI of 0 in one block.
        assert_eq!(
            reference::kw_unwrap(&kek, &unhex("a6a6a6a6a6a6a6a6")),
            Err(RefError::InputLength)
        );
        let zero_mli = reference::kwp_encrypt_padded(&c, reference::kwp_aiv(0), &[0; 8]);
        assert_eq!(
            reference::kwp_unwrap(&kek, &zero_mli),
            Err(RefError::Integrity)
        );
        // Non-zero padding, and an MLI that claims a semiblock too many.
        let pad = reference::kwp_encrypt_padded(&c, reference::kwp_aiv(9), &[1; 16]);
        assert_eq!(reference::kwp_unwrap(&kek, &pad), Err(RefError::Integrity));
        let long = reference::kwp_encrypt_padded(&c, reference::kwp_aiv(17), &[0; 16]);
        assert_eq!(reference::kwp_unwrap(&kek, &long), Err(RefError::Integrity));
        let ok = reference::kwp_encrypt_padded(
            &c,
            reference::kwp_aiv(9),
            &[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        );
        assert_eq!(reference::kwp_unwrap(&kek, &ok).unwrap(), vec![1; 9]);
        assert_eq!(
            reference::kw_wrap(&[0; 20], &[0; 16]),
            Err(RefError::KekLength)
        );
        assert_eq!(reference::kwp_wrap(&kek, &[]), Err(RefError::InputLength));
    }

    #[test]
    fn every_target_accepts_empty_and_short_inputs() {
        for (name, check) in TARGETS {
            for len in 0..4 {
                let outcome = std::panic::catch_unwind(|| check(&vec![0u8; len]));
                assert!(outcome.is_ok(), "{name} panics on {len} zero bytes");
            }
        }
    }

    /// The committed seeds of the parser targets are valid instances of their formats, so the
    /// fuzzers start from inside the formats (`fuzz/make_seeds.py` writes them).
    #[test]
    fn parser_seeds_are_valid_instances() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
        let read = |target: &str| -> Vec<(String, Vec<u8>)> {
            let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(seeds.join(target))
                .unwrap()
                .map(|e| {
                    let p = e.unwrap().path();
                    (
                        p.file_name().unwrap().to_string_lossy().into_owned(),
                        std::fs::read(&p).unwrap(),
                    )
                })
                .collect();
            out.sort();
            assert!(out.len() >= 2, "{target}: fewer than 2 seeds");
            out
        };
        for (name, b) in read("audit_entry") {
            assert!(AuditEntry::parse(&b).is_ok(), "audit_entry/{name}");
        }
        let mut kinds = [0usize; 5];
        for (name, b) in read("store_meta") {
            let parsed = [
                StoreMeta::parse(&b).is_ok(),
                RootEntry::parse(&b).is_ok(),
                KeyringEntry::parse(&b).is_ok(),
                parse_root_key(&b).is_ok(),
                keyring_name(&b).is_ok(),
            ];
            assert!(
                parsed.iter().any(|p| *p),
                "store_meta/{name} parses as nothing"
            );
            for (k, p) in kinds.iter_mut().zip(parsed) {
                *k += usize::from(p);
            }
        }
        assert!(
            kinds.iter().all(|k| *k >= 2),
            "store_meta seeds per format: {kinds:?}"
        );
        for (name, b) in read("cli_config") {
            let text = std::str::from_utf8(&b).unwrap();
            assert!(Config::parse(text).is_ok(), "cli_config/{name}");
        }
        let (mut records, mut selectors) = (0, 0);
        for (_, b) in read("pkcs11_root_record") {
            records += usize::from(RootRecord::parse(&b).is_ok());
            selectors += usize::from(
                std::str::from_utf8(&b).is_ok_and(|s| KeyLocator::from_selector(s).is_ok()),
            );
        }
        assert!(records >= 2 && selectors >= 2);
        read("key_wrap_diff");
        read("store_model");
    }

    #[test]
    fn cli_config_reads_toml_and_the_old_line_format() {
        let toml = "format = 2\nbackend = \"pkcs11\"\nprimary-root = \"service\"\n[pkcs11]\nmodule = \"/m.so\"\ntoken = \" odd \\\"label\\\"\\n\"\npin-env = \"P\"\n";
        let c = Config::parse(toml).unwrap();
        cli_config(toml.as_bytes());
        // A seed of the old format and its TOML rewrite both run through the check.
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/cli_config");
        let mut n = 0;
        for e in std::fs::read_dir(seeds).unwrap() {
            let p = e.unwrap().path();
            let (name, b) = (p.display().to_string(), std::fs::read(&p).unwrap());
            n += 1;
            let c = Config::parse(std::str::from_utf8(&b).unwrap()).unwrap();
            let t = c.to_text();
            assert!(t.contains("format = 2"), "cli_config/{name}");
            cli_config(&b);
            cli_config(t.as_bytes());
        }
        assert!(n > 0);
        // The inputs that once found bugs still pass (as the replay test runs them).
        let found = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/cli_config");
        for e in std::fs::read_dir(found).unwrap() {
            cli_config(&std::fs::read(e.unwrap().path()).unwrap());
        }
        assert!(matches!(c.backend, BackendConfig::Pkcs11 { .. }));
        // Unknown keys are refused in TOML too.
        assert!(Config::parse(&format!("{toml}colour = \"red\"\n")).is_err());
    }

    #[test]
    fn the_model_run_covers_a_lifecycle() {
        // put, get, rotate KEK and DEK, disable, put (refused), enable, re-encrypt, reopen.
        let mut ops = vec![0b0000_0110u8];
        ops.extend([0, 0x01, 3, 1, 2, 3]); // put k0 "a" [1,2,3]
        ops.extend([2, 0x01]); // get k0 "a"
        ops.extend([7, 8, 10, 0, 0x01, 0, 11, 9, 22]);
        ops.extend([2, 0x01]); // get k0 "a" after reopen
        store_model(&ops);
    }
}
