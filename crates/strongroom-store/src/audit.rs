//! The tamper-evident audit log.
//!
//! Every key operation (and, if enabled, every data access) appends one entry in the same
//! transaction as the change it records. Entries are hash-chained and MACed:
//!
//! ```text
//! entry  = ver=1 | seq u64 | time u64 | op u8 | outcome u8 | actor (u8 len) |
//!          target (u16 len) | detail (u16 len) | prev_hash [32] | mac [32]
//! body   = every field before `mac`
//! mac    = HMAC-SHA256(audit key, body)
//! hash   = SHA-256(body ‖ mac)                prev_hash of entry n = hash of entry n-1
//! genesis prev_hash = SHA-256("strongroom/audit/genesis/v1" ‖ store id)
//! head   = last seq u64 | last hash [32] | catalog digest [32] |
//!          HMAC-SHA256(audit key, "strongroom/audit/head/v2" ‖ seq ‖ hash ‖ digest)
//!          (stores from before the authenticated catalog: seq | hash |
//!          HMAC(audit key, "strongroom/audit/head/v1" ‖ seq ‖ hash), until their upgrade)
//! anchor = 0x02 | seq | hash | HMAC(audit key, "strongroom/audit/anchor/v2" ‖ seq ‖ hash), in a
//!          file; version 2 says the catalog is sealed (a store from before writes, and reads,
//!          seq | hash | HMAC(audit key, "strongroom/audit/head/v1" ‖ seq ‖ hash) until its
//!          upgrade). Its own MAC domain: an anchor is never a valid head.
//!
//! The catalog digest (see `catalog.rs`) ties the root and keyring entries to the chain: a
//! catalog changed, rolled back or replayed entry by entry no longer matches the MACed head.
//! ```
//!
//! The audit key is a random 256-bit key stored wrapped under the store's primary root key.
//! Verification walks the chain from sequence 1: a changed entry fails its MAC, a removed or
//! reordered entry breaks the sequence or the chain, a truncated tail no longer matches the
//! MACed head, and nothing can be forged without the audit key. Not detected: a rollback of the
//! whole store (entries and head together) to an earlier consistent state; keep the head
//! (`strongroom audit verify --json` prints it) somewhere else to detect that.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use strongroom_core::format::{FormatError, Reader};
use strongroom_core::{Key256, Timestamp};
use subtle::ConstantTimeEq;

use crate::error::StoreError;
use crate::storage::{Storage, TreeId, Tx, TxResult, abort};

type HmacSha256 = Hmac<Sha256>;

/// Entry format 1: no replica. Format 2 adds the replica that wrote the entry (a store in a
/// fleet names its replica: [`crate::StoreOptions::replica`]); a store that names none writes
/// format 1, so a log from before the fleet reads and verifies as it did.
const ENTRY_VERSION: u8 = 1;
const ENTRY_VERSION_REPLICA: u8 = 2;
/// Meta key of the audit head.
pub(crate) const HEAD_KEY: &[u8] = b"audit_head";
const MAX_ACTOR: usize = 255;
const MAX_TEXT: usize = 4096;

macro_rules! ops {
    ($($(#[$doc:meta])* $name:ident = $code:literal => $text:literal,)*) => {
        /// What an audit entry records.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum AuditOp {
            $($(#[$doc])* $name,)*
        }

        impl AuditOp {
            fn code(self) -> u8 {
                match self { $(Self::$name => $code,)* }
            }

            fn from_code(c: u8) -> Option<Self> {
                match c { $($code => Some(Self::$name),)* _ => None }
            }

            /// The operation's name in logs and `--json` output.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$name => $text,)* }
            }
        }
    };
}

ops! {
    /// The store was created.
    StoreCreated = 1 => "store.create",
    /// A root key was created.
    RootCreated = 2 => "root.create",
    /// A root key was rotated (a new version).
    RootRotated = 3 => "root.rotate",
    /// KEKs were rewrapped under a newer root version.
    RootRewrapped = 4 => "root.rewrap",
    /// A root key was disabled.
    RootDisabled = 5 => "root.disable",
    /// A root key was enabled.
    RootEnabled = 6 => "root.enable",
    /// An old root version was retired (destroyed in the backend).
    RootVersionRetired = 7 => "root.retire-version",
    /// A root key's destruction was scheduled.
    RootDestructionScheduled = 8 => "root.schedule-destroy",
    /// A root key's destruction was cancelled.
    RootDestructionCancelled = 9 => "root.cancel-destroy",
    /// A root key was destroyed.
    RootDestroyed = 10 => "root.destroy",
    /// A root key version was adopted from a key that existed in the backend.
    RootAdopted = 11 => "root.adopt",
    /// A keyring was created.
    KeyringCreated = 20 => "keyring.create",
    /// A keyring's KEK was rotated.
    KekRotated = 21 => "keyring.rotate-kek",
    /// A keyring's DEK was rotated.
    DekRotated = 22 => "keyring.rotate-dek",
    /// A keyring moved to another root key.
    KeyringMoved = 23 => "keyring.move",
    /// A keyring was disabled.
    KeyringDisabled = 24 => "keyring.disable",
    /// A keyring was enabled.
    KeyringEnabled = 25 => "keyring.enable",
    /// A keyring's destruction was scheduled.
    KeyringDestructionScheduled = 26 => "keyring.schedule-destroy",
    /// A keyring's destruction was cancelled.
    KeyringDestructionCancelled = 27 => "keyring.cancel-destroy",
    /// A keyring was destroyed.
    KeyringDestroyed = 28 => "keyring.destroy",
    /// Unused DEK versions of a keyring were retired.
    DeksRetired = 29 => "keyring.retire-deks",
    /// A keyring's records were re-encrypted.
    Reencrypted = 30 => "keyring.reencrypt",
    /// A record was read (data-access auditing).
    RecordRead = 40 => "record.get",
    /// A record was written (data-access auditing).
    RecordWritten = 41 => "record.put",
    /// A record was deleted (data-access auditing).
    RecordDeleted = 42 => "record.delete",
    /// A backup was taken.
    BackupTaken = 50 => "store.backup",
    /// An operator accepted a database older than its audit anchor, or without one.
    RollbackAccepted = 53 => "store.accept-rollback",
    /// The store's catalog was upgraded to sealed entries (once, for a store from before).
    CatalogUpgraded = 52 => "store.upgrade-catalog",
    /// The database was compacted into a new generation and the old one shredded.
    Compacted = 51 => "store.compact",
    /// The store was copied into another storage engine (`strongroom migrate`).
    Migrated = 54 => "store.migrate",
}

impl fmt::Display for AuditOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// How an audited operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It happened.
    Ok,
    /// It was refused (a disabled key, a state that does not allow it).
    Refused,
    /// It failed (the backend or the storage failed).
    Failed,
}

impl Outcome {
    fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Refused => 1,
            Self::Failed => 2,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        [Self::Ok, Self::Refused, Self::Failed]
            .into_iter()
            .find(|o| o.code() == c)
    }

    /// `ok`, `refused` or `failed`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// One audit entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Sequence number, from 1, contiguous.
    pub seq: u64,
    /// When.
    pub time: Timestamp,
    /// What.
    pub op: AuditOp,
    /// How it ended.
    pub outcome: Outcome,
    /// Who (given by the caller).
    pub actor: String,
    /// Which replica of a fleet wrote it (empty: a store that names none, or an entry from
    /// before the fleet).
    pub replica: String,
    /// On what (`keyring payroll`, `root acme/v2`).
    pub target: String,
    /// More (the error, counts).
    pub detail: String,
    /// Hash of the previous entry.
    pub prev_hash: [u8; 32],
    /// MAC of this entry.
    pub mac: [u8; 32],
}

fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl AuditEntry {
    fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            64 + self.actor.len() + self.replica.len() + self.target.len() + self.detail.len(),
        );
        let replica = clip(&self.replica, MAX_ACTOR);
        out.push(if replica.is_empty() {
            ENTRY_VERSION
        } else {
            ENTRY_VERSION_REPLICA
        });
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.time.unix_secs().to_be_bytes());
        out.push(self.op.code());
        out.push(self.outcome.code());
        let actor = clip(&self.actor, MAX_ACTOR);
        out.push(u8::try_from(actor.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(actor.as_bytes());
        if !replica.is_empty() {
            out.push(u8::try_from(replica.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(replica.as_bytes());
        }
        for s in [&self.target, &self.detail] {
            let s = clip(s, MAX_TEXT);
            out.extend_from_slice(&u16::try_from(s.len()).unwrap_or(u16::MAX).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&self.prev_hash);
        out
    }

    /// Serializes (body ‖ mac).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.body();
        b.extend_from_slice(&self.mac);
        b
    }

    /// Parses.
    ///
    /// # Errors
    /// [`FormatError`] naming the bad field.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new("audit entry", bytes);
        let version = r.u8("format version")?;
        if version != ENTRY_VERSION && version != ENTRY_VERSION_REPLICA {
            return Err(FormatError::UnsupportedVersion {
                what: "audit entry",
                found: version,
                supported: ENTRY_VERSION_REPLICA,
            });
        }
        let seq = r.u64("seq")?;
        let time = Timestamp::from_unix_secs(r.u64("time")?);
        let op_code = r.u8("op")?;
        let op = AuditOp::from_code(op_code).ok_or(FormatError::UnknownCode {
            what: "audit entry",
            field: "op",
            code: op_code.into(),
        })?;
        let oc = r.u8("outcome")?;
        let outcome = Outcome::from_code(oc).ok_or(FormatError::UnknownCode {
            what: "audit entry",
            field: "outcome",
            code: oc.into(),
        })?;
        let n = usize::from(r.u8("actor length")?);
        let raw = r.bytes("actor", n)?;
        let actor = text(&r, "actor", raw)?;
        let replica = if version == ENTRY_VERSION_REPLICA {
            let n = usize::from(r.u8("replica length")?);
            if n == 0 {
                // A writer names no replica with format 1.
                return Err(r.invalid("replica", "empty in a format 2 entry".into()));
            }
            let raw = r.bytes("replica", n)?;
            text(&r, "replica", raw)?
        } else {
            String::new()
        };
        let long_text = |r: &mut Reader<'_>, field: &'static str| -> Result<String, FormatError> {
            let n = usize::from(r.u16(field)?);
            // Writers clip at MAX_TEXT; a longer field was not written by strongroom.
            if n > MAX_TEXT {
                return Err(r.invalid(
                    field,
                    format!("{n} bytes, more than the {MAX_TEXT} a writer produces"),
                ));
            }
            let raw = r.bytes(field, n)?;
            text(r, field, raw)
        };
        let target = long_text(&mut r, "target")?;
        let detail = long_text(&mut r, "detail")?;
        let prev_hash = r.array::<32>("prev_hash")?;
        let mac = r.array::<32>("mac")?;
        r.finish()?;
        Ok(Self {
            seq,
            time,
            op,
            outcome,
            actor,
            replica,
            target,
            detail,
            prev_hash,
            mac,
        })
    }

    /// The chain hash of this entry.
    #[must_use]
    pub fn hash(&self) -> [u8; 32] {
        Sha256::new()
            .chain_update(self.body())
            .chain_update(self.mac)
            .finalize()
            .into()
    }
}

fn text(r: &Reader<'_>, field: &'static str, b: &[u8]) -> Result<String, FormatError> {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| r.invalid(field, "not UTF-8".into()))
}

/// The audit key, ready to MAC, and the catalog key derived from it. Zeroized on drop.
pub(crate) struct AuditKey {
    audit: Key256,
    catalog: Key256,
}

fn hmac(key: &Key256, parts: &[&[u8]]) -> [u8; 32] {
    // Conversion to plain bytes: into the HMAC key schedule only.
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key.expose_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

impl AuditKey {
    pub(crate) fn new(k: Key256) -> Self {
        let mut derived = zeroize::Zeroizing::new(hmac(&k, &[b"strongroom/catalog-key/v1"]));
        let catalog = Key256::from_slice_zeroizing(&mut derived[..])
            .unwrap_or_else(|_| unreachable!("an HMAC-SHA256 output is 32 bytes"));
        Self { audit: k, catalog }
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        hmac(&self.audit, parts)
    }

    /// A MAC under the catalog key (derived from the audit key: the primary root protects both).
    pub(crate) fn catalog_mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        hmac(&self.catalog, parts)
    }
}

/// The head of the chain as stored: last seq, last hash, MAC over both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditHead {
    /// Sequence number of the last entry (0: empty log).
    pub seq: u64,
    /// Hash of the last entry (the genesis hash when empty).
    pub hash: [u8; 32],
}

const HEAD_DOMAIN: &[u8] = b"strongroom/audit/head/v1";
const HEAD_DOMAIN_V2: &[u8] = b"strongroom/audit/head/v2";

fn genesis(store_id: &[u8; 16]) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"strongroom/audit/genesis/v1")
        .chain_update(store_id)
        .finalize()
        .into()
}

/// The version-1 head: the anchor file's format (and the stored head of a store not yet
/// upgraded to the authenticated catalog).
fn head_bytes(key: &AuditKey, head: AuditHead) -> Vec<u8> {
    let mac = key.mac(&[HEAD_DOMAIN, &head.seq.to_be_bytes(), &head.hash]);
    let mut out = head.seq.to_be_bytes().to_vec();
    out.extend_from_slice(&head.hash);
    out.extend_from_slice(&mac);
    out
}

fn head_v2_mac(key: &AuditKey, head: AuditHead, catalog: &[u8; 32]) -> [u8; 32] {
    key.mac(&[HEAD_DOMAIN_V2, &head.seq.to_be_bytes(), &head.hash, catalog])
}

/// The stored head with the catalog digest.
fn head_v2_bytes(key: &AuditKey, head: AuditHead, catalog: &[u8; 32]) -> Vec<u8> {
    let mut out = head.seq.to_be_bytes().to_vec();
    out.extend_from_slice(&head.hash);
    out.extend_from_slice(catalog);
    out.extend_from_slice(&head_v2_mac(key, head, catalog));
    out
}

/// A stored head, its MAC not yet checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StoredHead {
    pub head: AuditHead,
    /// The catalog digest (absent in a store not yet upgraded).
    pub catalog: Option<[u8; 32]>,
    mac: [u8; 32],
}

impl StoredHead {
    /// Whether its MAC verifies under `key`.
    pub(crate) fn verifies(&self, key: &AuditKey) -> bool {
        let want = match &self.catalog {
            None => key.mac(&[HEAD_DOMAIN, &self.head.seq.to_be_bytes(), &self.head.hash]),
            Some(c) => head_v2_mac(key, self.head, c),
        };
        bool::from(want.ct_eq(&self.mac))
    }
}

/// The stored head, parsed (its MAC unchecked), if there is one.
pub(crate) fn stored_head_full(storage: &Storage) -> Result<Option<StoredHead>, StoreError> {
    let Some(raw) = storage.get(TreeId::Meta, HEAD_KEY)? else {
        return Ok(None);
    };
    parse_head(&raw)
        .map(Some)
        .ok_or_else(|| damaged_head(raw.len()))
}

/// The head of the log as stored in the database (its MAC unverified), if any.
///
/// # Errors
/// [`StoreError::Corrupt`] for a head that is there but does not parse.
/// The audit head in a stored head value (`None` if it is not one).
pub(crate) fn head_of(raw: &[u8]) -> Option<AuditHead> {
    parse_head(raw).map(|h| h.head)
}

pub(crate) fn stored_head(storage: &Storage) -> Result<Option<AuditHead>, StoreError> {
    let Some(raw) = storage.get(TreeId::Meta, HEAD_KEY)? else {
        return Ok(None);
    };
    match parse_head(&raw) {
        Some(h) => Ok(Some(h.head)),
        None => Err(damaged_head(raw.len())),
    }
}

fn damaged_head(found: usize) -> StoreError {
    damaged_head_because(FormatError::BadLength {
        what: "audit head",
        field: "head",
        expected: HEAD_LEN,
        found,
    })
}

fn damaged_head_because(source: FormatError) -> StoreError {
    StoreError::Corrupt {
        what: "the audit log's head (`strongroom audit verify` shows the damage; restore the store from a backup)".into(),
        source,
    }
}

/// What an anchor file says: the head it vouches for, and its version (2: the catalog is
/// sealed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Anchor {
    pub head: AuditHead,
    pub version: u8,
}

const ANCHOR_DOMAIN_V2: &[u8] = b"strongroom/audit/anchor/v2";
const ANCHOR_V2_LEN: usize = 1 + 8 + 32 + 32;

fn anchor_v2_bytes(key: &AuditKey, head: AuditHead) -> Vec<u8> {
    let mac = key.mac(&[ANCHOR_DOMAIN_V2, &head.seq.to_be_bytes(), &head.hash]);
    let mut out = vec![2u8];
    out.extend_from_slice(&head.seq.to_be_bytes());
    out.extend_from_slice(&head.hash);
    out.extend_from_slice(&mac);
    out
}

/// The anchor an anchor file records, if it parses and its MAC is valid under `key`.
pub(crate) fn verified_anchor(key: &AuditKey, anchor: &[u8]) -> Option<Anchor> {
    let a = parse_anchor(anchor)?;
    let want = match a.version {
        2 => anchor_v2_bytes(key, a.head),
        _ => head_bytes(key, a.head),
    };
    bool::from(want.ct_eq(anchor)).then_some(a)
}

/// The stored hash of entry `seq`, if it exists and parses.
pub(crate) fn entry_hash(storage: &Storage, seq: u64) -> Result<Option<[u8; 32]>, StoreError> {
    Ok(storage
        .get(TreeId::Audit, seq.to_be_bytes())?
        .and_then(|v| AuditEntry::parse(&v).ok())
        .map(|e| e.hash()))
}

/// The anchor file's bytes for `head`: version 2 once the catalog is sealed, else version 1.
pub(crate) fn anchor_bytes(key: &AuditKey, head: AuditHead, sealed: bool) -> Vec<u8> {
    if sealed {
        anchor_v2_bytes(key, head)
    } else {
        head_bytes(key, head)
    }
}

/// Parses an anchor file (either version); the MAC is not checked here.
pub(crate) fn parse_anchor(b: &[u8]) -> Option<Anchor> {
    match b.len() {
        HEAD_LEN => parse_head(b).map(|h| Anchor {
            head: h.head,
            version: 1,
        }),
        ANCHOR_V2_LEN if b[0] == 2 => {
            let seq = u64::from_be_bytes(b[1..9].try_into().ok()?);
            let hash = b[9..41].try_into().ok()?;
            Some(Anchor {
                head: AuditHead { seq, hash },
                version: 2,
            })
        }
        _ => None,
    }
}

const HEAD_LEN: usize = 8 + 32 + 32;
const HEAD_V2_LEN: usize = 8 + 32 + 32 + 32;

fn parse_head(b: &[u8]) -> Option<StoredHead> {
    let seq = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
    let hash = b.get(8..40)?.try_into().ok()?;
    let (catalog, mac) = match b.len() {
        HEAD_LEN => (None, b[40..].try_into().ok()?),
        HEAD_V2_LEN => (Some(b[40..72].try_into().ok()?), b[72..].try_into().ok()?),
        _ => return None,
    };
    Some(StoredHead {
        head: AuditHead { seq, hash },
        catalog,
        mac,
    })
}

/// What an audited operation says about itself.
pub(crate) struct Event<'a> {
    pub op: AuditOp,
    pub outcome: Outcome,
    pub actor: &'a str,
    pub replica: &'a str,
    pub target: String,
    pub detail: String,
}

/// Appends `event` inside transaction `tx`. `catalog_delta` is how the catalog digest changes
/// with this transaction (zero when it changes no root or keyring entry; see `catalog.rs`).
pub(crate) fn append(
    tx: &Tx<'_>,
    key: &AuditKey,
    store_id: &[u8; 16],
    event: &Event<'_>,
    catalog_delta: [u8; 32],
) -> TxResult<u64> {
    let (seq, prev_hash, catalog) = match tx.get(TreeId::Meta, HEAD_KEY)? {
        // A new store: its first transaction writes its whole catalog.
        None => (1, genesis(store_id), Some(catalog_delta)),
        Some(raw) => match parse_head(&raw) {
            // A head at u64::MAX is damage too (the log cannot have grown that far).
            Some(h) => match h.head.seq.checked_add(1) {
                Some(next) => (
                    next,
                    h.head.hash,
                    match h.catalog {
                        Some(c) => Some(xor(&c, &catalog_delta)),
                        // Not yet upgraded: the commit that changes the catalog first rewrites
                        // all of it (catalog.rs), so its delta is the whole digest.
                        None if catalog_delta != [0; 32] => Some(catalog_delta),
                        None => None,
                    },
                ),
                None => {
                    return abort(damaged_head_because(FormatError::Invalid {
                        what: "audit head",
                        field: "sequence number",
                        reason: "at its maximum".into(),
                    }));
                }
            },
            // A damaged head must not silently start a new chain over the old one: nothing is
            // appended (and so no key operation happens) until the log is looked at.
            None => return abort(damaged_head(raw.len())),
        },
    };
    let mut e = AuditEntry {
        seq,
        time: Timestamp::now(),
        op: event.op,
        outcome: event.outcome,
        actor: clip(event.actor, MAX_ACTOR).to_owned(),
        replica: clip(event.replica, MAX_ACTOR).to_owned(),
        target: clip(&event.target, MAX_TEXT).to_owned(),
        detail: clip(&event.detail, MAX_TEXT).to_owned(),
        prev_hash,
        mac: [0; 32],
    };
    e.mac = key.mac(&[&e.body()]);
    tx.insert(TreeId::Audit, seq.to_be_bytes(), e.to_bytes())?;
    let head = AuditHead {
        seq,
        hash: e.hash(),
    };
    tx.insert(
        TreeId::Meta,
        HEAD_KEY,
        match &catalog {
            Some(c) => head_v2_bytes(key, head, c),
            None => head_bytes(key, head),
        },
    )?;
    Ok(seq)
}

/// Byte-wise XOR of two digests.
pub(crate) fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = *a;
    for (o, x) in out.iter_mut().zip(b) {
        *o ^= x;
    }
    out
}

/// Where verification found the log broken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit log broken at entry {seq}: {problem}")]
pub struct AuditBreak {
    /// The first entry that does not verify (or the expected next sequence number).
    pub seq: u64,
    /// What is wrong.
    pub problem: String,
}

/// A verified log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditReport {
    /// Entries verified.
    pub entries: u64,
    /// The head they lead to.
    pub head: AuditHead,
}

/// Walks the whole chain and checks every entry and the head.
pub(crate) fn verify(
    storage: &Storage,
    key: &AuditKey,
    store_id: &[u8; 16],
) -> Result<Result<AuditReport, AuditBreak>, StoreError> {
    // The head first, then the entries: an entry appended meanwhile (by another thread, or
    // another replica of a fleet) is past the head read here, and is verified as far as it
    // chains, without making the head look behind. Every entry up to the head must be there
    // and be the one the head records.
    let head = match storage.get(TreeId::Meta, HEAD_KEY)? {
        None => None,
        Some(raw) => {
            let Some(stored) = parse_head(&raw) else {
                return Ok(Err(AuditBreak {
                    seq: 0,
                    problem: "the log's head record is unreadable".into(),
                }));
            };
            if !stored.verifies(key) {
                return Ok(Err(AuditBreak {
                    seq: stored.head.seq,
                    problem: "the log's head record fails its MAC: it was altered".into(),
                }));
            }
            Some(stored.head)
        }
    };
    let mut expected_seq = 1u64;
    let mut prev = genesis(store_id);
    for item in storage.scan_prefix(TreeId::Audit, []) {
        let (k, v) = item?;
        let at = |problem: String| {
            Ok(Err(AuditBreak {
                seq: expected_seq,
                problem,
            }))
        };
        let Ok(kb) = <[u8; 8]>::try_from(&k[..]) else {
            return at("an entry has a malformed sequence key".into());
        };
        let key_seq = u64::from_be_bytes(kb);
        if key_seq != expected_seq {
            return at(format!(
                "entry {expected_seq} is missing (next entry is {key_seq}): entries were removed or reordered"
            ));
        }
        let e = match AuditEntry::parse(&v) {
            Ok(e) => e,
            Err(err) => return at(format!("the entry is unreadable ({err}): it was altered")),
        };
        if e.seq != key_seq {
            return at(format!(
                "the entry says it is number {} but is stored as {key_seq}: entries were moved",
                e.seq
            ));
        }
        let mac = key.mac(&[&e.body()]);
        if !bool::from(mac.ct_eq(&e.mac)) {
            return at("its MAC does not verify: the entry was altered".into());
        }
        if e.prev_hash != prev {
            return at("it does not chain to the entry before it: entries were removed, reordered or replaced".into());
        }
        prev = e.hash();
        if head.is_some_and(|h| h.seq == key_seq && h.hash != prev) {
            return at(
                "it is not the entry the log's head records: the log was replaced from here".into(),
            );
        }
        expected_seq += 1;
    }
    let last = expected_seq - 1;
    match head {
        None if last > 0 => {
            return Ok(Err(AuditBreak {
                seq: last,
                problem: "the log's head record is missing".into(),
            }));
        }
        Some(h) if last < h.seq => {
            return Ok(Err(AuditBreak {
                seq: last + 1,
                problem: format!(
                    "the log ends at entry {last} but its head says {}: entries were removed from the end",
                    h.seq
                ),
            }));
        }
        _ => {}
    }
    // Entries past the head read first: appended meanwhile, or a head put back (an older
    // genuine head restored under the log, to undo what came after it). An entry and its head
    // are written in one transaction, so the head read now is at or past every entry scanned,
    // and names the last one by its hash if it is at it.
    if head.is_none_or(|h| last > h.seq) && last > 0 {
        let now = storage
            .get(TreeId::Meta, HEAD_KEY)?
            .as_deref()
            .and_then(parse_head)
            .filter(|s| s.verifies(key))
            .map(|s| s.head);
        match now {
            Some(h) if h.seq > last || (h.seq == last && h.hash == prev) => {}
            Some(h) => {
                return Ok(Err(AuditBreak {
                    seq: h.seq,
                    problem: format!(
                        "the log's head says entry {} but the log goes on to entry {last}: the head was put back to an older one",
                        h.seq
                    ),
                }));
            }
            None => {
                return Ok(Err(AuditBreak {
                    seq: last,
                    problem: "the log's head record is missing, unreadable or fails its MAC".into(),
                }));
            }
        }
    }
    Ok(Ok(AuditReport {
        entries: last,
        head: AuditHead {
            seq: last,
            hash: prev,
        },
    }))
}

/// Entries from `from_seq` on, in order (unverified; use [`verify`] for that).
pub(crate) fn entries(
    storage: &Storage,
    from_seq: u64,
) -> impl Iterator<Item = Result<AuditEntry, StoreError>> + '_ {
    storage
        .range_from(TreeId::Audit, &from_seq.to_be_bytes())
        .map(|r| {
            let (k, v) = r?;
            AuditEntry::parse(&v).map_err(|source| StoreError::Corrupt {
                what: format!(
                    "audit entry {}",
                    <[u8; 8]>::try_from(&k[..])
                        .map(u64::from_be_bytes)
                        .unwrap_or(0)
                ),
                source,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AuditEntry {
        AuditEntry {
            seq: 7,
            time: Timestamp::from_unix_secs(1000),
            op: AuditOp::KeyringDestroyed,
            outcome: Outcome::Refused,
            actor: "ops:alice".into(),
            replica: String::new(),
            target: "keyring payroll".into(),
            detail: "naïve détail".into(),
            prev_hash: [3; 32],
            mac: [4; 32],
        }
    }

    #[test]
    fn an_entry_names_its_replica_in_format_2_and_only_then() {
        // Without a replica: format 1, byte for byte what a store before the fleet wrote.
        let plain = entry().to_bytes();
        assert_eq!(plain[0], 1);
        // version, seq, time, op, outcome, then the actor's length and bytes, then the target.
        assert_eq!(&plain[19..29], b"\x09ops:alice");
        assert_eq!(&plain[29..31], &15u16.to_be_bytes());
        let named = AuditEntry {
            replica: "replica-2".into(),
            ..entry()
        };
        let b = named.to_bytes();
        assert_eq!(b[0], 2);
        assert_eq!(b.len(), plain.len() + 1 + "replica-2".len());
        let parsed = AuditEntry::parse(&b).unwrap();
        assert_eq!(parsed, named);
        for cut in 0..b.len() {
            assert!(AuditEntry::parse(&b[..cut]).is_err());
        }
        // The replica is in what the MAC covers.
        assert_ne!(named.body(), entry().body());
        // Format 2 with an empty replica is not what a writer produces.
        let mut empty = plain.clone();
        empty[0] = 2;
        empty.insert(29, 0);
        assert!(matches!(
            AuditEntry::parse(&empty),
            Err(FormatError::Invalid {
                field: "replica",
                ..
            })
        ));
        // An unknown format is named as such.
        let mut future = plain;
        future[0] = 3;
        assert!(matches!(
            AuditEntry::parse(&future),
            Err(FormatError::UnsupportedVersion { found: 3, .. })
        ));
    }

    #[test]
    fn entry_round_trip_and_strictness() {
        let e = entry();
        let b = e.to_bytes();
        assert_eq!(AuditEntry::parse(&b).unwrap(), e);
        for cut in 0..b.len() {
            assert!(AuditEntry::parse(&b[..cut]).is_err());
        }
        let mut bad = b.clone();
        bad[17] = 0xEE; // op code
        assert!(AuditEntry::parse(&bad).is_err());
        assert_ne!(
            e.hash(),
            AuditEntry {
                mac: [5; 32],
                ..e.clone()
            }
            .hash(),
            "the hash covers the MAC"
        );
    }

    #[test]
    fn fields_longer_than_a_writer_writes_are_refused() {
        // Found by fuzzing: a 4097-byte target parsed, then could not serialize back to itself.
        let mut b = entry().body();
        let at = 1 + 8 + 8 + 1 + 1 + 1 + "ops:alice".len();
        let long = "t".repeat(MAX_TEXT + 1);
        b.splice(
            at..at + 2 + "keyring payroll".len(),
            [
                &u16::try_from(long.len()).unwrap().to_be_bytes()[..],
                long.as_bytes(),
            ]
            .concat(),
        );
        b.extend_from_slice(&[0; 32]);
        assert!(matches!(
            AuditEntry::parse(&b),
            Err(FormatError::Invalid {
                field: "target",
                ..
            })
        ));
    }

    #[test]
    fn long_fields_are_clipped_on_char_boundaries() {
        let e = AuditEntry {
            actor: "é".repeat(200),
            ..entry()
        };
        let parsed = AuditEntry::parse(&e.to_bytes()).unwrap();
        assert!(parsed.actor.len() <= MAX_ACTOR && parsed.actor.chars().all(|c| c == 'é'));
    }

    #[test]
    fn op_codes_are_unique() {
        let all = [
            AuditOp::StoreCreated,
            AuditOp::RootCreated,
            AuditOp::RootRotated,
            AuditOp::RootRewrapped,
            AuditOp::RootDisabled,
            AuditOp::RootEnabled,
            AuditOp::RootVersionRetired,
            AuditOp::RootDestructionScheduled,
            AuditOp::RootDestructionCancelled,
            AuditOp::RootDestroyed,
            AuditOp::KeyringCreated,
            AuditOp::KekRotated,
            AuditOp::DekRotated,
            AuditOp::KeyringMoved,
            AuditOp::KeyringDisabled,
            AuditOp::KeyringEnabled,
            AuditOp::KeyringDestructionScheduled,
            AuditOp::KeyringDestructionCancelled,
            AuditOp::KeyringDestroyed,
            AuditOp::DeksRetired,
            AuditOp::Reencrypted,
            AuditOp::RecordRead,
            AuditOp::RecordWritten,
            AuditOp::RecordDeleted,
            AuditOp::BackupTaken,
        ];
        let codes: std::collections::HashSet<u8> = all.iter().map(|o| o.code()).collect();
        assert_eq!(codes.len(), all.len());
        for o in all {
            assert_eq!(AuditOp::from_code(o.code()), Some(o));
        }
    }
}
