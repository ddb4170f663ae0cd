//! Storage engines: the one interface the key logic reads and writes through.
//!
//! Everything a store keeps lives in eight named trees of byte keys and byte values
//! ([`TreeId`]). An [`Engine`] stores them: owned values in, owned values out, its own error
//! type ([`EngineError`]), ordered scans, atomic batches, transactions over several trees that
//! the engine retries on conflict, explicit durability, a count and an iteration for backups,
//! and a compaction that removes from the disk what was deleted (what a destruction needs).
//!
//! - [`SledEngine`] (module `sled`): the embedded default, one process on one machine.
//! - `strongroom-postgres` (its own crate, so the embedded default links no database client):
//!   a PostgreSQL database that many processes and machines share.
//!
//! No engine's own types appear outside its module; the store wraps an engine in
//! `storage::Storage`, which turns its errors into [`StoreError`](crate::StoreError)s.

pub mod sled;

use std::fmt;
use std::time::Duration;

pub use self::sled::SledEngine;

/// The trees of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum TreeId {
    /// Store identity, audit head, audit key, id counter.
    Meta = 0,
    /// Root key versions.
    Roots,
    /// Keyrings by name.
    Keyrings,
    /// Wrapped KEKs by keyring id and version.
    Keks,
    /// Wrapped DEKs by keyring id and version.
    Deks,
    /// Sealed records by keyring id and record key.
    Records,
    /// Audit entries by sequence number.
    Audit,
    /// Cursors of resumable jobs, DEK use counters.
    Jobs,
}

const TREE_NAMES: [&str; 8] = [
    "meta", "roots", "keyrings", "keks", "deks", "records", "audit", "jobs",
];

/// A value read with [`Engine::get_value`]: bytes the engine shares (sled's cached value, with
/// no copy) or owns. Values are what the store wrote (sealed records, wrapped keys), never
/// plaintext; `Debug` gives the length only all the same.
pub struct Value(Repr);

enum Repr {
    Owned(Vec<u8>),
    Sled(sled::SledValue),
}

impl std::ops::Deref for Value {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Owned(v) => v,
            Repr::Sled(v) => v.as_ref(),
        }
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Self(Repr::Owned(v))
    }
}

impl From<sled::SledValue> for Value {
    fn from(v: sled::SledValue) -> Self {
        Self(Repr::Sled(v))
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value({} bytes)", self.len())
    }
}

/// Every tree, in a fixed order (backups, compactions, engine migrations).
pub const ALL_TREES: [TreeId; 8] = [
    TreeId::Meta,
    TreeId::Roots,
    TreeId::Keyrings,
    TreeId::Keks,
    TreeId::Deks,
    TreeId::Records,
    TreeId::Audit,
    TreeId::Jobs,
];

impl TreeId {
    /// The tree's name (stable: backups and engines' schemas use it).
    #[must_use]
    pub fn name(self) -> &'static str {
        TREE_NAMES[self as usize]
    }

    /// The tree's position in [`ALL_TREES`] (0..8).
    #[must_use]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// An ordered scan: entries in key order, or the error that ended it.
pub type Scan = Box<dyn Iterator<Item = Result<KeyValue, EngineError>> + Send>;

/// One change of an atomic batch.
#[derive(Clone, PartialEq, Eq)]
pub enum BatchChange {
    /// Set `key` to `value`.
    Insert(Vec<u8>, Vec<u8>),
    /// Remove `key`.
    Remove(Vec<u8>),
}

/// The condition of a guarded batch ([`Engine::apply_batch_guarded`]): `key` in `tree` holds
/// `value` (`None`: is absent).
#[derive(Clone, Copy, Debug)]
pub struct Guard<'a> {
    /// The tree of the key.
    pub tree: TreeId,
    /// The key.
    pub key: &'a [u8],
    /// The value it must hold, or `None` for absent.
    pub value: Option<&'a [u8]>,
}

/// A change of an atomic batch, borrowing its bytes ([`Engine::apply_batch_ref`]): the record
/// write path seals a whole batch into one buffer and hands the engine slices of it.
#[derive(Clone, Copy)]
pub enum BatchRef<'a> {
    /// Set `key` to `value`.
    Insert(&'a [u8], &'a [u8]),
    /// Remove `key`.
    Remove(&'a [u8]),
}

impl fmt::Debug for BatchRef<'_> {
    // As for BatchChange: lengths only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Insert(k, v) => {
                write!(f, "Insert({} key bytes, {} value bytes)", k.len(), v.len())
            }
            Self::Remove(k) => write!(f, "Remove({} key bytes)", k.len()),
        }
    }
}

impl fmt::Debug for BatchChange {
    // Values are sealed or wrapped, but a Debug output never shows stored bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Insert(k, v) => {
                write!(f, "Insert({} key bytes, {} value bytes)", k.len(), v.len())
            }
            Self::Remove(k) => write!(f, "Remove({} key bytes)", k.len()),
        }
    }
}

/// What kind of failure an [`EngineError`] is: what the caller can do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineErrorKind {
    /// An operating-system I/O error of this kind (a full disk is `StorageFull`).
    Io(std::io::ErrorKind),
    /// The engine's files or tables hold something it cannot read.
    Corruption,
    /// The database cannot be reached now (connection lost, server restarting); retrying
    /// later may succeed, and nothing the call was doing was committed unless said otherwise.
    Unavailable,
    /// A transaction lost a conflict with another one and should be run again. Engines retry
    /// conflicts themselves; one that reaches the caller ran out of attempts.
    Conflict,
    /// A commit whose outcome is unknown (the connection broke after the commit was sent):
    /// the change may or may not have landed.
    Indeterminate,
    /// The database refused the operation (permissions, a schema it does not understand...).
    Refused,
    /// Anything else.
    Other,
}

/// An engine's error: its kind, what happened in plain words, and what to do next.
#[derive(Debug)]
pub struct EngineError {
    kind: EngineErrorKind,
    message: String,
    hint: &'static str,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl EngineError {
    /// An error of `kind` saying `message` (plain words: never key material or values).
    #[must_use]
    pub fn new(kind: EngineErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: "",
            source: None,
        }
    }

    /// The same error with what to do next (shown after the message, starting with "; ").
    #[must_use]
    pub fn with_hint(mut self, hint: &'static str) -> Self {
        self.hint = hint;
        self
    }

    /// The same error with its cause.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// An I/O error, in plain words with the hint that fits it.
    #[must_use]
    pub fn io(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let (message, hint) = match e.kind() {
            K::StorageFull => (
                "no space left on device".to_owned(),
                "; the disk is full: free space, then open the store again (restart the process); everything acknowledged before is intact",
            ),
            K::QuotaExceeded => (
                "disk quota exceeded".to_owned(),
                "; the disk is full: free space, then open the store again (restart the process); everything acknowledged before is intact",
            ),
            K::FileTooLarge => (
                "file too large".to_owned(),
                "; the file size limit was hit: raise it, then open the store again (restart the process); everything acknowledged before is intact",
            ),
            K::NotFound => (
                "a file is missing".to_owned(),
                "; a database file is missing: restore the store from a backup",
            ),
            K::PermissionDenied => (
                "permission denied".to_owned(),
                "; check the data directory's permissions",
            ),
            _ => (e.to_string(), ""),
        };
        Self {
            kind: EngineErrorKind::Io(e.kind()),
            message,
            hint,
            source: Some(Box::new(e)),
        }
    }

    /// What kind of failure this is.
    #[must_use]
    pub fn kind(&self) -> EngineErrorKind {
        self.kind
    }

    /// The I/O error kind, for I/O errors.
    #[must_use]
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self.kind {
            EngineErrorKind::Io(k) => Some(k),
            _ => None,
        }
    }

    /// True for a transaction conflict (engines retry those before returning one).
    #[must_use]
    pub fn is_conflict(&self) -> bool {
        self.kind == EngineErrorKind::Conflict
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.message, self.hint)
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The view of the trees inside one transaction. Reads see the transaction's own writes.
pub trait EngineTx {
    /// The value of `key` in `t`.
    ///
    /// # Errors
    /// The engine's; a conflict must be returned from the transaction's closure as it is.
    fn get(&self, t: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;
    /// Sets `key` in `t` to `value`.
    ///
    /// # Errors
    /// As [`EngineTx::get`].
    fn insert(&self, t: TreeId, key: &[u8], value: &[u8]) -> Result<(), EngineError>;
    /// Removes `key` from `t`.
    ///
    /// # Errors
    /// As [`EngineTx::get`].
    fn remove(&self, t: TreeId, key: &[u8]) -> Result<(), EngineError>;
}

/// Why a transaction's closure stopped.
#[derive(Debug)]
pub enum TxStop {
    /// The caller's own reason: roll back, and return [`TxFailure::Aborted`].
    Abort,
    /// An engine error met inside (a conflict is retried by the engine).
    Engine(EngineError),
}

/// Why a transaction did not commit.
#[derive(Debug)]
pub enum TxFailure {
    /// The closure returned [`TxStop::Abort`]; nothing was written.
    Aborted,
    /// The engine failed (nothing was written unless the error is
    /// [`EngineErrorKind::Indeterminate`]).
    Engine(EngineError),
}

/// The closure of a transaction: it may run more than once (after a conflict), so it must
/// have no effect outside the transaction but what it records for its last run.
pub type TxBody<'a> = dyn Fn(&dyn EngineTx) -> Result<(), TxStop> + 'a;

/// Decides, during a compaction, whether an entry is kept.
pub type Keep<'a> = dyn Fn(TreeId, &[u8]) -> bool + 'a;

/// What an engine is, for `doctor`, errors and the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineInfo {
    /// "sled", "postgres".
    pub kind: &'static str,
    /// Where it keeps the data (a directory; a host, port and database: never a password).
    pub location: String,
}

impl EngineInfo {
    /// An engine description.
    #[must_use]
    pub fn new(kind: &'static str, location: impl Into<String>) -> Self {
        Self {
            kind,
            location: location.into(),
        }
    }
}

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Compaction {
    /// Live entries kept (copied into a new generation, or left in place).
    pub entries: u64,
    /// Entries the filter dropped.
    pub dropped: u64,
    /// Bytes of old files overwritten and removed (0 for engines that rewrite in place).
    pub shredded_bytes: u64,
    /// The generation the engine runs on now (engines without generations: 0).
    pub generation: u64,
    /// What the engine did, in plain words (for the audit log and the CLI).
    pub detail: String,
    /// The removal from the disk did not finish (the store works; what is left is removed by
    /// the next compaction or open).
    pub shred_error: Option<String>,
}

/// A storage engine. Every method may be called from any thread, including from inside an
/// async runtime's worker threads (an engine that drives async I/O must not need the caller's
/// runtime).
///
/// Durability: see [`Engine::durable_commits`]. Point writes and batches are atomic; a
/// transaction is atomic and isolated (serializable over the keys it read and wrote).
pub trait Engine: Send + Sync + fmt::Debug {
    /// What the engine is and where it keeps its data.
    fn info(&self) -> EngineInfo;

    /// The value of `key` in `t`.
    ///
    /// # Errors
    /// The engine's.
    fn get(&self, t: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;

    /// [`Engine::get`], in a buffer the engine may share rather than copy (sled hands out its
    /// cached value): what the record read path uses. The default wraps [`Engine::get`].
    ///
    /// # Errors
    /// The engine's.
    fn get_value(&self, t: TreeId, key: &[u8]) -> Result<Option<Value>, EngineError> {
        self.get(t, key).map(|v| v.map(Value::from))
    }

    /// Sets `key` in `t` to `value`.
    ///
    /// # Errors
    /// The engine's.
    fn insert(&self, t: TreeId, key: &[u8], value: &[u8]) -> Result<(), EngineError>;

    /// Removes `key` from `t`; whether it was there.
    ///
    /// # Errors
    /// The engine's.
    fn remove(&self, t: TreeId, key: &[u8]) -> Result<bool, EngineError>;

    /// Applies `changes` to `t` atomically, in order.
    ///
    /// # Errors
    /// The engine's; nothing was applied.
    fn apply_batch(&self, t: TreeId, changes: Vec<BatchChange>) -> Result<(), EngineError>;

    /// [`Engine::apply_batch_ref`] only if `guard` holds, checked atomically with the write;
    /// `Ok(false)` when it does not (nothing applied). A replica of a fleet writes records so,
    /// guarded by the key-state generation its catalog was loaded at: a write never lands after
    /// a key change it did not see. The default runs a transaction over both trees.
    ///
    /// # Errors
    /// As [`Engine::apply_batch`].
    fn apply_batch_guarded(
        &self,
        t: TreeId,
        changes: &[BatchRef<'_>],
        guard: &Guard<'_>,
    ) -> Result<bool, EngineError> {
        let held = std::cell::Cell::new(false);
        let trees = if t == guard.tree {
            vec![t]
        } else {
            vec![t, guard.tree]
        };
        let r = self.transaction(&trees, &|tx| {
            held.set(false);
            if tx
                .get(guard.tree, guard.key)
                .map_err(TxStop::Engine)?
                .as_deref()
                != guard.value
            {
                return Ok(());
            }
            for c in changes {
                match *c {
                    BatchRef::Insert(k, v) => tx.insert(t, k, v),
                    BatchRef::Remove(k) => tx.remove(t, k),
                }
                .map_err(TxStop::Engine)?;
            }
            held.set(true);
            Ok(())
        });
        match r {
            Ok(()) => Ok(held.get()),
            Err(TxFailure::Engine(e)) => Err(e),
            // The body never aborts.
            Err(TxFailure::Aborted) => Ok(false),
        }
    }

    /// [`Engine::apply_batch`] of borrowed changes, which an engine that copies them anyway
    /// (sled into its own buffers) reads in place. The default copies them into a
    /// [`BatchChange`] list.
    ///
    /// # Errors
    /// As [`Engine::apply_batch`].
    fn apply_batch_ref(&self, t: TreeId, changes: &[BatchRef<'_>]) -> Result<(), EngineError> {
        self.apply_batch(
            t,
            changes
                .iter()
                .map(|c| match *c {
                    BatchRef::Insert(k, v) => BatchChange::Insert(k.to_vec(), v.to_vec()),
                    BatchRef::Remove(k) => BatchChange::Remove(k.to_vec()),
                })
                .collect(),
        )
    }

    /// The entries of `t` whose keys start with `prefix`, from `start` on (inclusive; `start`
    /// is at or after `prefix`), in key order.
    fn scan(&self, t: TreeId, prefix: &[u8], start: &[u8]) -> Scan;

    /// Runs `body` as one atomic, isolated transaction over the trees `on` (transactions over
    /// disjoint trees need not conflict). Conflicts are retried by the engine.
    ///
    /// # Errors
    /// [`TxFailure::Aborted`] when `body` said so, or the engine's error.
    fn transaction(&self, on: &[TreeId], body: &TxBody<'_>) -> Result<(), TxFailure>;

    /// Makes every write acknowledged so far durable.
    ///
    /// # Errors
    /// The engine's.
    fn flush(&self) -> Result<(), EngineError>;

    /// True when every write, batch and transaction is durable when it returns (a database
    /// server committing synchronously); false when durability waits for [`Engine::flush`].
    fn durable_commits(&self) -> bool;

    /// True (once) when another process may have changed the database since the store last
    /// looked (an engine that keeps a store to one process lost that guarantee for a moment and
    /// has it again): the store then drops its cached keys and counters and reloads its catalog
    /// before serving anything. Engines that cannot lose it return false.
    fn take_invalidation(&self) -> bool {
        false
    }

    /// Whether other processes may write this database while the engine is open (replicas of
    /// a fleet): the store then follows the key-state generation ([`crate::StoreOptions::fleet_poll`]).
    /// Engines that keep a store to one process return false.
    fn shared(&self) -> bool {
        false
    }

    /// The database's clock, in milliseconds since the Unix epoch: what the leases on jobs
    /// expire by, so that replicas on machines whose clocks differ still agree on when a lease
    /// ran out. The default, this machine's clock, is right for an engine no other process
    /// shares.
    ///
    /// # Errors
    /// The database cannot be reached.
    fn clock_ms(&self) -> Result<u64, EngineError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(u64::try_from(now.as_millis()).unwrap_or(u64::MAX))
    }

    /// The number of entries in `t`.
    ///
    /// # Errors
    /// The engine's.
    fn count(&self, t: TreeId) -> Result<u64, EngineError>;

    /// Bytes the engine's data takes on disk (as the engine can tell).
    ///
    /// # Errors
    /// The engine's.
    fn size_on_disk(&self) -> Result<u64, EngineError>;

    /// Drops every entry that `keep` refuses and removes from the disk what deleted entries
    /// left behind, as far as the engine can (its docs say what remains). Writers may wait
    /// while it runs; `wait` bounds how long it waits for scans and transactions in flight.
    ///
    /// # Errors
    /// The engine's; [`EngineErrorKind::Conflict`] when the engine stayed busy for `wait`.
    fn compact(&self, keep: &Keep<'_>, wait: Duration) -> Result<Compaction, EngineError>;
}
