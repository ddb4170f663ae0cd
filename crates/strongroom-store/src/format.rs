//! The store's own byte formats: store identity, root and keyring entries, counters and job
//! cursors. All big-endian, versioned, parsed strictly with [`Reader`] (no trailing bytes).
//!
//! ```text
//! StoreMeta   "SRSM" | ver=1 | store id [16] | created u64 | backend kind (name) |
//!             backend instance (u16 len, UTF-8) | primary root (name)
//! RootEntry   ver=1 or 2 | state | created u64
//! sealed      a root or keyring entry of version 2 as stored: entry ‖ MAC [32] (catalog.rs)
//! Keyring     ver=1 | id u64 | root (name) | state | current KEK u32 | current DEK u32 |
//!             created u64
//! Keyring v2  the same, then: moving from: u8 0, or u8 1 ‖ (name) | former roots: u8 n ‖
//!             n × (name)
//! state       1 = enabled | 2 = disabled | 3 = pending destruction, then not_before u64 |
//!             4 = destroyed
//! name        u8 len | bytes (A-Z a-z 0-9 . _ -)
//! ```
//! Tree keys: roots `name ‖ 0x00 ‖ version u32`; keyrings `name`; KEKs and DEKs
//! `keyring id u64 ‖ version u32`; records `keyring id u64 ‖ record key`; audit `seq u64`.

use strongroom_core::format::{FormatError, Reader, put_name};
use strongroom_core::{
    DekVersion, KekVersion, KeyState, KeyringName, RootKeyName, RootVersion, Timestamp,
};

/// The store format version this build writes and reads.
pub const STORE_FORMAT_VERSION: u8 = 1;

fn put_state(out: &mut Vec<u8>, s: KeyState) {
    match s {
        KeyState::Enabled => out.push(1),
        KeyState::Disabled => out.push(2),
        KeyState::PendingDestruction { not_before } => {
            out.push(3);
            out.extend_from_slice(&not_before.unix_secs().to_be_bytes());
        }
        KeyState::Destroyed => out.push(4),
    }
}

fn read_state(r: &mut Reader<'_>) -> Result<KeyState, FormatError> {
    Ok(match r.u8("state")? {
        1 => KeyState::Enabled,
        2 => KeyState::Disabled,
        3 => KeyState::PendingDestruction {
            not_before: Timestamp::from_unix_secs(r.u64("not_before")?),
        },
        4 => KeyState::Destroyed,
        code => {
            return Err(FormatError::UnknownCode {
                what: r.what(),
                field: "state",
                code: code.into(),
            });
        }
    })
}

fn read_version(r: &mut Reader<'_>) -> Result<(), FormatError> {
    r.expect_version(STORE_FORMAT_VERSION)
}

/// The version a keyring entry is written with.
pub const KEYRING_ENTRY_VERSION: u8 = 2;
/// Most former roots a keyring entry keeps (the oldest are dropped first).
pub const MAX_FORMER_ROOTS: usize = 16;

/// The store's identity, written once at creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreMeta {
    /// Random id of this store; bound into every wrapping context.
    pub store_id: [u8; 16],
    /// When the store was created.
    pub created: Timestamp,
    /// The backend kind (`soft`, `pkcs11`).
    pub backend_kind: String,
    /// The backend instance (key-file id, token serial).
    pub backend_instance: String,
    /// The root key that protects the audit key.
    pub primary_root: RootKeyName,
}

const META_MAGIC: &[u8; 4] = b"SRSM";

impl StoreMeta {
    /// Serializes.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(META_MAGIC);
        out.push(STORE_FORMAT_VERSION);
        out.extend_from_slice(&self.store_id);
        out.extend_from_slice(&self.created.unix_secs().to_be_bytes());
        put_name(&mut out, &self.backend_kind);
        let inst = self.backend_instance.as_bytes();
        out.extend_from_slice(&u16::try_from(inst.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(&inst[..inst.len().min(usize::from(u16::MAX))]);
        put_name(&mut out, self.primary_root.as_str());
        out
    }

    /// The format version of a serialized meta record, if it has the magic.
    #[must_use]
    pub fn version_of(bytes: &[u8]) -> Option<u8> {
        (bytes.len() > 4 && &bytes[..4] == META_MAGIC).then(|| bytes[4])
    }

    /// Parses.
    ///
    /// # Errors
    /// [`FormatError`] naming the bad field.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new("store metadata", bytes);
        r.expect_magic(META_MAGIC)?;
        read_version(&mut r)?;
        let store_id = r.array::<16>("store id")?;
        let created = Timestamp::from_unix_secs(r.u64("created")?);
        // The same rules as every name: what the writer accepts, the reader accepts, no more.
        let backend_kind = r.name("backend kind", |s| RootKeyName::new(s.clone()).map(|_| s))?;
        let n = usize::from(r.u16("backend instance length")?);
        let inst = r.bytes("backend instance", n)?;
        let backend_instance = std::str::from_utf8(inst)
            .map_err(|_| r.invalid("backend instance", "not UTF-8".into()))?
            .to_owned();
        let primary_root = r.name("primary root", RootKeyName::new)?;
        r.finish()?;
        Ok(Self {
            store_id,
            created,
            backend_kind,
            backend_instance,
            primary_root,
        })
    }
}

/// A root key version as the store records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootEntry {
    /// Lifecycle state.
    pub state: KeyState,
    /// When this version was made.
    pub created: Timestamp,
}

/// The version a root entry is written with (2: sealed in the catalog; the fields of 1).
pub const ROOT_ENTRY_VERSION: u8 = 2;

impl RootEntry {
    /// Parses an entry as the catalog stores it ([`split_sealed`]; the MAC is not checked).
    ///
    /// # Errors
    /// [`FormatError`] naming the bad field.
    pub fn parse_stored(bytes: &[u8]) -> Result<Self, FormatError> {
        Self::parse(split_sealed("root key entry", bytes)?.body)
    }

    /// Serializes (version 2).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![ROOT_ENTRY_VERSION];
        put_state(&mut out, self.state);
        out.extend_from_slice(&self.created.unix_secs().to_be_bytes());
        out
    }

    /// Parses.
    ///
    /// # Errors
    /// [`FormatError`] naming the bad field.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new("root key entry", bytes);
        let version = r.u8("version")?;
        if !(1..=ROOT_ENTRY_VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion {
                what: "root key entry",
                found: version,
                supported: ROOT_ENTRY_VERSION,
            });
        }
        let state = read_state(&mut r)?;
        let created = Timestamp::from_unix_secs(r.u64("created")?);
        r.finish()?;
        Ok(Self { state, created })
    }
}

/// The tree key of a root version: `name ‖ 0x00 ‖ version`.
#[must_use]
pub fn root_key(name: &RootKeyName, version: RootVersion) -> Vec<u8> {
    let mut k = name.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&version.get().to_be_bytes());
    k
}

/// The prefix of every version of a root: `name ‖ 0x00`.
#[must_use]
pub fn root_prefix(name: &RootKeyName) -> Vec<u8> {
    let mut k = name.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

/// Parses a root tree key.
///
/// # Errors
/// [`FormatError`] for a malformed key.
pub fn parse_root_key(k: &[u8]) -> Result<(RootKeyName, RootVersion), FormatError> {
    let bad = |why: &str| FormatError::Invalid {
        what: "root key entry",
        field: "tree key",
        reason: why.to_owned(),
    };
    let sep = k
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| bad("no separator"))?;
    let name = std::str::from_utf8(&k[..sep]).map_err(|_| bad("name not UTF-8"))?;
    let name = RootKeyName::new(name).map_err(|e| bad(&e.to_string()))?;
    let v: [u8; 4] = k[sep + 1..]
        .try_into()
        .map_err(|_| bad("bad version length"))?;
    let version = RootVersion::new(u32::from_be_bytes(v)).map_err(|e| bad(&e.to_string()))?;
    Ok((name, version))
}

/// A keyring as the store records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyringEntry {
    /// Internal id (prefix of its KEK, DEK and record keys).
    pub id: u64,
    /// The root key its KEKs are wrapped under.
    pub root: RootKeyName,
    /// Lifecycle state.
    pub state: KeyState,
    /// The KEK version that wraps new DEKs.
    pub current_kek: KekVersion,
    /// The DEK version that seals new records.
    pub current_dek: DekVersion,
    /// When it was made.
    pub created: Timestamp,
    /// While a move to `root` is unfinished: the root it came from, which its older records
    /// still depend on.
    pub moving_from: Option<RootKeyName>,
    /// Roots it lived under before a move, oldest first: copies of the store made before that
    /// move are only as gone as those roots.
    pub former_roots: Vec<RootKeyName>,
}

impl KeyringEntry {
    /// Parses an entry as the catalog stores it ([`split_sealed`]; the MAC is not checked).
    ///
    /// # Errors
    /// [`FormatError`] naming the bad field.
    pub fn parse_stored(bytes: &[u8]) -> Result<Self, FormatError> {
        Self::parse(split_sealed("keyring entry", bytes)?.body)
    }

    /// Serializes (version 2).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![KEYRING_ENTRY_VERSION];
        out.extend_from_slice(&self.id.to_be_bytes());
        put_name(&mut out, self.root.as_str());
        put_state(&mut out, self.state);
        out.extend_from_slice(&self.current_kek.get().to_be_bytes());
        out.extend_from_slice(&self.current_dek.get().to_be_bytes());
        out.extend_from_slice(&self.created.unix_secs().to_be_bytes());
        match &self.moving_from {
            None => out.push(0),
            Some(r) => {
                out.push(1);
                put_name(&mut out, r.as_str());
            }
        }
        let former = &self.former_roots[self.former_roots.len().saturating_sub(MAX_FORMER_ROOTS)..];
        out.push(u8::try_from(former.len()).unwrap_or(u8::MAX));
        for r in former {
            put_name(&mut out, r.as_str());
        }
        out
    }

    /// Parses.
    ///
    /// # Errors
    /// [`FormatError`] naming the bad field.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new("keyring entry", bytes);
        let version = r.u8("version")?;
        if !(1..=KEYRING_ENTRY_VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion {
                what: "keyring entry",
                found: version,
                supported: KEYRING_ENTRY_VERSION,
            });
        }
        let id = r.u64("id")?;
        let root = r.name("root", RootKeyName::new)?;
        let state = read_state(&mut r)?;
        let current_kek = KekVersion::new(r.u32("current KEK")?)
            .map_err(|e| r.invalid("current KEK", e.to_string()))?;
        let current_dek = DekVersion::new(r.u32("current DEK")?)
            .map_err(|e| r.invalid("current DEK", e.to_string()))?;
        let created = Timestamp::from_unix_secs(r.u64("created")?);
        let mut moving_from = None;
        let mut former_roots = Vec::new();
        if version >= 2 {
            moving_from = match r.u8("moving from")? {
                0 => None,
                1 => Some(r.name("moving from", RootKeyName::new)?),
                code => {
                    return Err(FormatError::UnknownCode {
                        what: r.what(),
                        field: "moving from",
                        code: code.into(),
                    });
                }
            };
            let n = usize::from(r.u8("former roots")?);
            if n > MAX_FORMER_ROOTS {
                return Err(r.invalid(
                    "former roots",
                    format!("{n}, more than the {MAX_FORMER_ROOTS} a writer keeps"),
                ));
            }
            for _ in 0..n {
                former_roots.push(r.name("former root", RootKeyName::new)?);
            }
        }
        r.finish()?;
        Ok(Self {
            id,
            root,
            state,
            current_kek,
            current_dek,
            created,
            moving_from,
            former_roots,
        })
    }
}

/// Length of the MAC that seals a catalog entry.
pub const SEAL_MAC_LEN: usize = 32;

/// A stored catalog value: the entry, and its MAC if it is sealed (version 2 and later; a
/// version-1 entry is from a store not yet upgraded). The MAC is checked by the store, not here.
pub struct Sealed<'a> {
    /// The entry.
    pub body: &'a [u8],
    /// Its MAC, if sealed.
    pub mac: Option<[u8; SEAL_MAC_LEN]>,
}

/// Splits a stored catalog value into the entry and its MAC.
///
/// # Errors
/// A sealed entry too short to hold its MAC.
pub fn split_sealed<'a>(what: &'static str, stored: &'a [u8]) -> Result<Sealed<'a>, FormatError> {
    match stored.first() {
        Some(1) => Ok(Sealed {
            body: stored,
            mac: None,
        }),
        Some(_) if stored.len() > SEAL_MAC_LEN => {
            let (body, mac) = stored.split_at(stored.len() - SEAL_MAC_LEN);
            Ok(Sealed {
                body,
                mac: mac.try_into().ok(),
            })
        }
        _ => Err(FormatError::BadLength {
            what,
            field: "sealed entry",
            expected: SEAL_MAC_LEN + 1,
            found: stored.len(),
        }),
    }
}

/// The tree key of a KEK or DEK version of a keyring.
#[must_use]
pub fn versioned_key(keyring_id: u64, version: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&keyring_id.to_be_bytes());
    k[8..].copy_from_slice(&version.to_be_bytes());
    k
}

/// The keyring id and version of a [`versioned_key`].
///
/// # Errors
/// [`FormatError::BadLength`] for a key that is not 12 bytes.
pub fn parse_versioned_key(k: &[u8]) -> Result<(u64, u32), FormatError> {
    let k: [u8; 12] = k.try_into().map_err(|_| FormatError::BadLength {
        what: "versioned key",
        field: "key",
        expected: 12,
        found: k.len(),
    })?;
    let (id, v) = k.split_at(8);
    Ok((
        u64::from_be_bytes(id.try_into().unwrap_or_default()),
        u32::from_be_bytes(v.try_into().unwrap_or_default()),
    ))
}

/// The version in a [`versioned_key`].
#[must_use]
pub fn version_of_key(k: &[u8]) -> Option<u32> {
    let v: [u8; 4] = k.get(8..12)?.try_into().ok()?;
    Some(u32::from_be_bytes(v))
}

/// The tree key of a record.
#[must_use]
pub fn record_key(keyring_id: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&keyring_id.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// Record keys up to this length get their tree key built on the stack by
/// [`with_record_key`].
const STACK_RECORD_KEY: usize = 120;

/// Calls `f` with [`record_key`]`(keyring_id, key)`, built on the stack for keys up to
/// [`STACK_RECORD_KEY`] bytes (the read path's lookups), in an allocation beyond.
pub(crate) fn with_record_key<R>(keyring_id: u64, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    let mut buf = [0u8; 8 + STACK_RECORD_KEY];
    match buf.get_mut(8..8 + key.len()) {
        Some(tail) => {
            tail.copy_from_slice(key);
            buf[..8].copy_from_slice(&keyring_id.to_be_bytes());
            f(&buf[..8 + key.len()])
        }
        None => f(&record_key(keyring_id, key)),
    }
}

/// A keyring name from its tree key.
///
/// # Errors
/// [`FormatError`] for a key that is not a valid name.
pub fn keyring_name(k: &[u8]) -> Result<KeyringName, FormatError> {
    let s = std::str::from_utf8(k).map_err(|_| FormatError::Invalid {
        what: "keyring entry",
        field: "name",
        reason: "not UTF-8".into(),
    })?;
    KeyringName::new(s).map_err(|e| FormatError::Invalid {
        what: "keyring entry",
        field: "name",
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_strictness() {
        let m = StoreMeta {
            store_id: [7; 16],
            created: Timestamp::from_unix_secs(1_795_999_415),
            backend_kind: "pkcs11".into(),
            backend_instance: "pkcs11:serial=0123abcd".into(),
            primary_root: RootKeyName::new("service").unwrap(),
        };
        assert_eq!(StoreMeta::parse(&m.to_bytes()).unwrap(), m);
        assert_eq!(StoreMeta::version_of(&m.to_bytes()), Some(1));
        let r = RootEntry {
            state: KeyState::PendingDestruction {
                not_before: Timestamp::from_unix_secs(99),
            },
            created: Timestamp::from_unix_secs(5),
        };
        assert_eq!(RootEntry::parse(&r.to_bytes()).unwrap(), r);
        let k = KeyringEntry {
            id: 42,
            root: RootKeyName::new("acme").unwrap(),
            state: KeyState::Disabled,
            current_kek: KekVersion::new(3).unwrap(),
            current_dek: DekVersion::new(9).unwrap(),
            created: Timestamp::from_unix_secs(1),
            moving_from: Some(RootKeyName::new("old").unwrap()),
            former_roots: vec![
                RootKeyName::new("older").unwrap(),
                RootKeyName::new("old").unwrap(),
            ],
        };
        let b = k.to_bytes();
        assert_eq!(KeyringEntry::parse(&b).unwrap(), k);
        for cut in 0..b.len() {
            assert!(KeyringEntry::parse(&b[..cut]).is_err());
        }
        let mut extra = b.clone();
        extra.push(0);
        assert!(KeyringEntry::parse(&extra).is_err());
        // Version 1 (stores written before moves re-encrypted): no move fields.
        let v1 = KeyringEntry {
            moving_from: None,
            former_roots: Vec::new(),
            ..k.clone()
        };
        let mut v1_bytes = v1.to_bytes();
        v1_bytes.truncate(v1_bytes.len() - 2);
        v1_bytes[0] = 1;
        assert_eq!(KeyringEntry::parse(&v1_bytes).unwrap(), v1);
        assert!(KeyringEntry::parse(&[&v1_bytes[..], &[0, 0]].concat()).is_err());
        let mut bad_state = r.to_bytes();
        bad_state[1] = 9;
        assert!(matches!(
            RootEntry::parse(&bad_state),
            Err(FormatError::UnknownCode { code: 9, .. })
        ));
        // Found by fuzzing: a 65-byte backend kind parsed but could not be written back.
        let mut long = m.to_bytes();
        let at = 4 + 1 + 16 + 8;
        long.splice(
            at..at + 1 + "pkcs11".len(),
            [&[65u8][..], &[b'k'; 65][..]].concat(),
        );
        assert!(StoreMeta::parse(&long).is_err());
        let name = RootKeyName::new("acme").unwrap();
        let v = RootVersion::new(258).unwrap();
        assert_eq!(
            parse_root_key(&root_key(&name, v)).unwrap(),
            (name.clone(), v)
        );
        assert!(root_key(&name, v).starts_with(&root_prefix(&name)));
        assert!(parse_root_key(b"acme").is_err());
        assert_eq!(version_of_key(&versioned_key(5, 77)), Some(77));
    }
}
