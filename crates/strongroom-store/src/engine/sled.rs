//! The embedded engine: sled 0.34, one process on one machine (the default).
//!
//! # Generations and compaction
//! sled is log-structured: a removed or overwritten value stays in its segment files until sled
//! happens to reuse the segment, so "removed from the tree" is not "gone from the disk". A
//! destruction therefore ends with a **compaction**: every live entry is copied into a fresh
//! database directory (a new *generation*), the store switches to it, and the old directory's
//! files are overwritten with zeros, synced and removed.
//!
//! ```text
//! <store dir>/db            generation 0 (every store starts here)
//! <store dir>/db.<N>        generation N
//! <store dir>/db-current    names the current generation's directory ("db.3\n");
//!                           absent = "db"
//! ```
//! The switch is one atomic rename of `db-current` (written to a temporary file, synced, renamed,
//! directory synced), so a crash at any step leaves one complete current generation:
//! - before the switch: the current generation is untouched and still holds the job that asked
//!   for the compaction; the partial new directory is removed at the next open and the job runs
//!   again;
//! - after it: the new generation is current; the old directory is shredded at the next open if
//!   the crash came first.
//!
//! Writers are held off while the live entries are copied (the engine's slot is locked for
//! writing), so nothing acknowledged can fall between the copy and the switch.
//!
//! One process at a time: the store directory's `store.lock` is locked (`flock`) for as long as
//! the database is open, before `db-current` is read or any generation touched, so a second
//! opener can never take a generation being written for one that a crash left behind. A
//! leftover generation whose sled lock is still held is never shredded (it waits for a later
//! open).
//!
//! # Durability
//! sled writes in the background and flushes every 500 ms; [`Engine::flush`] waits for the
//! disk ([`Engine::durable_commits`] is false).

use std::cell::RefCell;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use sled::Transactional;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};

use super::{
    ALL_TREES, BatchChange, BatchRef, Compaction, Engine, EngineError, EngineErrorKind, EngineInfo,
    EngineTx, Keep, Scan, TreeId, TxBody, TxFailure, TxStop, Value,
};
use crate::error::StoreError;

/// A value shared out of sled's cache ([`Engine::get_value`]): a reference count, no copy.
pub struct SledValue(sled::IVec);

impl AsRef<[u8]> for SledValue {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The directory of generation 0, inside the store directory.
pub(crate) const FIRST_GENERATION: &str = "db";
/// The file that names the current generation's directory (absent: [`FIRST_GENERATION`]).
pub(crate) const CURRENT_FILE: &str = "db-current";
/// The store directory's lock file, held while the database is open.
pub(crate) const LOCK_FILE: &str = "store.lock";

/// The database directory a store directory uses now (following `db-current`).
///
/// # Errors
/// An I/O error reading `db-current`, or a `db-current` that does not name a generation.
pub(crate) fn current_db_dir(store_dir: &Path) -> Result<PathBuf, StoreError> {
    Ok(store_dir.join(current_name(store_dir)?.dir_name()))
}

/// A generation number and its directory name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Generation(u64);

impl Generation {
    fn dir_name(self) -> String {
        if self.0 == 0 {
            FIRST_GENERATION.to_owned()
        } else {
            format!("{FIRST_GENERATION}.{}", self.0)
        }
    }

    fn parse(name: &str) -> Option<Self> {
        if name == FIRST_GENERATION {
            return Some(Self(0));
        }
        let n = name.strip_prefix(FIRST_GENERATION)?.strip_prefix('.')?;
        // Canonical decimal only: "db.01" is not a generation (and so never removed as one).
        if n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok().map(Self)
    }
}

fn current_name(store_dir: &Path) -> Result<Generation, StoreError> {
    let path = store_dir.join(CURRENT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => Generation::parse(s.trim_end_matches('\n')).ok_or_else(|| StoreError::Damaged {
            path: path.clone(),
            why: format!(
                "it should name the current database directory (`{FIRST_GENERATION}.<N>`); restore the store from a backup"
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Generation(0)),
        Err(source) => Err(StoreError::Io {
            op: "read",
            path,
            source,
        }),
    }
}

/// sled's error as an engine error, in plain words (sled's own Display shows the `Debug` form
/// of I/O errors).
pub(crate) fn sled_error(e: sled::Error) -> EngineError {
    match e {
        sled::Error::Io(io) => EngineError::io(io),
        sled::Error::Corruption { at, .. } => EngineError::new(
            EngineErrorKind::Corruption,
            match at {
                Some(at) => format!("the database's files are corrupt (at {at:?})"),
                None => "the database's files are corrupt".into(),
            },
        )
        .with_hint(": restore the store from a backup"),
        sled::Error::ReportableBug(b) => {
            EngineError::new(EngineErrorKind::Other, format!("sled reported a bug: {b}"))
        }
        other => EngineError::new(EngineErrorKind::Other, other.to_string()),
    }
}

/// An engine error where the caller wants a store error (the constructors and compaction).
fn storage(while_doing: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
    move |e| StoreError::Storage {
        while_doing,
        source: sled_error(e),
    }
}

/// One open sled database and its trees.
struct Generation_ {
    dir: PathBuf,
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

impl Generation_ {
    fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        // sled flushes every 500 ms in the background; key-management operations flush
        // explicitly before they return (see the README's durability contract).
        let config = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(500))
            .cache_capacity(cache_bytes);
        let deadline = Instant::now() + Duration::from_secs(2);
        let db = loop {
            // sled 0.34 panics on some damaged logs instead of returning an error (seen in the
            // tamper suite: "tried to serialize Uninitialized" while writing its snapshot); a
            // panic here means damaged files, and is reported as such.
            let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
                .map_err(|panic| StoreError::Damaged {
                path: dir.to_path_buf(),
                why: panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "sled panicked".into()),
            })?;
            match opened {
                Ok(db) => break db,
                // A store closed a moment ago: sled's background threads release its file
                // lock a little after the last handle drops (1 in ~500 close-then-open cycles).
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(StoreError::Storage {
                        while_doing: "opening the database",
                        source: sled_error(e),
                    });
                }
            }
        };
        let trees = ALL_TREES
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Storage {
                while_doing: "opening the database's trees",
                source: sled_error(e),
            })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            db,
            trees,
        })
    }

    fn tree(&self, t: TreeId) -> &sled::Tree {
        &self.trees[t.index()]
    }
}

/// The sled engine: the current generation's database, swappable by a compaction.
pub struct SledEngine {
    store_dir: PathBuf,
    /// sled's page cache, in bytes ([`SledEngine::DEFAULT_CACHE_BYTES`]).
    cache_bytes: u64,
    /// The locked `store.lock` (released when dropped).
    _lock: std::fs::File,
    /// Point operations hold it shared for one call; scans and transactions clone the `Arc` (so
    /// that nothing holds the lock while calling back into the store); a compaction holds it
    /// exclusively while it copies and switches, once no clone is left.
    slot: RwLock<Arc<Generation_>>,
}

impl std::fmt::Debug for SledEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledEngine")
            .field("store_dir", &self.store_dir)
            .finish_non_exhaustive()
    }
}

/// Locks the store directory (see the module docs), retrying for a moment: a store closed a
/// moment ago in this process may still be releasing it.
fn lock_store_dir(store_dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = store_dir.join(LOCK_FILE);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Io {
            op: "open the store's lock file",
            path: path.clone(),
            source,
        })?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: store_dir.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StoreError::Io {
                    op: "lock the store directory",
                    path,
                    source,
                });
            }
        }
    }
}

/// The generation directories in `store_dir`.
fn generations(store_dir: &Path) -> Vec<(Generation, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(store_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let g = e.file_name().to_str().and_then(Generation::parse)?;
            Some((g, e.path()))
        })
        .collect()
}

impl SledEngine {
    /// sled's page cache when none is given: 1 GiB, sled's own default. It bounds the store's
    /// memory (at a million 1 KiB records resident memory reached about 900 MiB with it), and
    /// a smaller one costs reads dearly once the working set outgrows it: random gets of
    /// 200,000 x 1 KiB records ran at 37% of this default's rate with 64 MiB and at 50% with
    /// 256 MiB (README, benchmarks). Set it with [`StoreOptions::sled_cache_bytes`](crate::StoreOptions).
    pub const DEFAULT_CACHE_BYTES: u64 = 1 << 30;

    /// Creates the sled database of a new store in `store_dir`, which must hold none: no generation
    /// and no `db-current` ([`StoreError::AlreadyExists`] otherwise; nothing is touched).
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`], [`StoreError::Locked`], an I/O or storage error.
    pub fn create(store_dir: &Path) -> Result<Self, StoreError> {
        Self::create_with_cache(store_dir, Self::DEFAULT_CACHE_BYTES)
    }

    /// [`SledEngine::create`] with a page cache of `cache_bytes`.
    ///
    /// # Errors
    /// As [`SledEngine::create`].
    pub fn create_with_cache(store_dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let lock = lock_store_dir(store_dir)?;
        if !generations(store_dir).is_empty()
            || std::fs::symlink_metadata(store_dir.join(CURRENT_FILE)).is_ok()
        {
            return Err(StoreError::AlreadyExists {
                path: store_dir.to_path_buf(),
            });
        }
        let engine = Generation_::open(&store_dir.join(Generation(0).dir_name()), cache_bytes)?;
        Ok(Self {
            store_dir: store_dir.to_path_buf(),
            cache_bytes,
            _lock: lock,
            slot: RwLock::new(Arc::new(engine)),
        })
    }

    /// Opens the sled database of the store in `store_dir`: its current generation. Leftovers of an
    /// interrupted compaction are removed first (an unfinished new generation, or an old one
    /// whose shredding a crash cut short).
    ///
    /// # Errors
    /// [`StoreError::NotAStore`] when there is no database; [`StoreError::Damaged`] when
    /// `db-current` names a generation that is missing while others are there;
    /// [`StoreError::Locked`] while another handle has it open.
    pub fn open(store_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(store_dir, Self::DEFAULT_CACHE_BYTES)
    }

    /// [`SledEngine::open`] with a page cache of `cache_bytes`.
    ///
    /// # Errors
    /// As [`SledEngine::open`].
    pub fn open_with_cache(store_dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let lock = lock_store_dir(store_dir)?;
        let current = current_name(store_dir)?;
        let current_dir = store_dir.join(current.dir_name());
        if !current_dir.is_dir() {
            let others = generations(store_dir);
            if others.is_empty() {
                return Err(StoreError::NotAStore {
                    path: store_dir.to_path_buf(),
                });
            }
            return Err(StoreError::Damaged {
                path: store_dir.join(CURRENT_FILE),
                why: format!(
                    "it names {} (or is missing and so names `{FIRST_GENERATION}`), which does not exist, but {} does: nothing was removed; restore `{CURRENT_FILE}` naming the right one, or restore the store from a backup",
                    current.dir_name(),
                    others
                        .iter()
                        .map(|(g, _)| g.dir_name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        shred_other_generations(store_dir, current)?;
        let engine = Generation_::open(&current_dir, cache_bytes)?;
        Ok(Self {
            store_dir: store_dir.to_path_buf(),
            cache_bytes,
            _lock: lock,
            slot: RwLock::new(Arc::new(engine)),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Arc<Generation_>> {
        self.slot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn generation(&self) -> Arc<Generation_> {
        Arc::clone(&self.read())
    }

    /// The current generation's directory.
    #[must_use]
    pub fn db_dir(&self) -> PathBuf {
        self.read().dir.clone()
    }

    /// Copies every entry that `keep(tree, key)` accepts into a new generation, switches to it,
    /// and shreds the old one (see the module docs). Writers wait while it runs; `wait` bounds
    /// how long it waits for scans and transactions in flight to finish first.
    ///
    /// # Errors
    /// [`StoreError::InUse`] when scans or transactions did not finish within `wait` (nothing
    /// changed), or a storage or I/O error (before the switch nothing changed and the partial
    /// copy is removed; after it the store runs on the new generation and the old one is
    /// shredded at the next open).
    fn compact_generation(
        &self,
        keep: &Keep<'_>,
        wait: Duration,
    ) -> Result<Compaction, StoreError> {
        let deadline = Instant::now() + wait;
        let mut slot = loop {
            let slot = self
                .slot
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // No scan or transaction of the old generation may still be running: its writes
            // would land after the copy.
            if Arc::strong_count(&slot) == 1 {
                break slot;
            }
            drop(slot);
            if Instant::now() >= deadline {
                return Err(StoreError::InUse(
                    "the store stayed busy while a compaction waited for it; it runs again at the next open or with `strongroom compact`".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let old = Arc::clone(&slot);
        let current = Generation::parse(
            &old.dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )
        .unwrap_or(Generation(0));
        let next = Generation(current.0 + 1);
        let next_dir = self.store_dir.join(next.dir_name());
        // A leftover of an earlier attempt that died before its switch.
        if next_dir.exists() {
            shred_dir(&next_dir)?;
        }
        let mut report = Compaction {
            generation: next.0,
            ..Compaction::default()
        };
        report.detail = format!("copied into generation {}", next.0);
        let copied = (|| {
            let new = Generation_::open(&next_dir, self.cache_bytes)?;
            for t in ALL_TREES {
                let mut batch = sled::Batch::default();
                let mut n = 0u32;
                for item in old.tree(t).iter() {
                    let (k, v) = item.map_err(storage("reading for a compaction"))?;
                    if !keep(t, &k) {
                        report.dropped += 1;
                        continue;
                    }
                    batch.insert(k, v);
                    report.entries += 1;
                    n += 1;
                    if n == 4096 {
                        new.tree(t)
                            .apply_batch(std::mem::take(&mut batch))
                            .map_err(storage("writing a compaction"))?;
                        n = 0;
                    }
                }
                new.tree(t)
                    .apply_batch(batch)
                    .map_err(storage("writing a compaction"))?;
            }
            new.db.flush().map_err(storage("flushing a compaction"))?;
            Ok(new)
        })();
        let new = match copied {
            Ok(new) => new,
            Err(e) => {
                let _ = shred_dir(&next_dir);
                return Err(e);
            }
        };
        // The switch: from here on the new generation is the store.
        if let Err(e) = write_current(&self.store_dir, next) {
            drop(new);
            let _ = shred_dir(&next_dir);
            return Err(e);
        }
        *slot = Arc::new(new);
        drop(slot);
        // The old generation is closed (its last handle was ours), then shredded. Its
        // background threads release the database's lock a moment after the close: only then
        // is nothing left that could write to its files. A failure here leaves files behind,
        // said in the report: the store runs on the new generation, and the next compaction or
        // open shreds what is left.
        drop(old);
        let old_dir = self.store_dir.join(current.dir_name());
        let shredded = if wait_unlocked(&old_dir) {
            shred_dir(&old_dir)
        } else {
            Err(StoreError::InUse(format!(
                "{} is still locked by sled",
                old_dir.display()
            )))
        };
        match shredded.and_then(|n| shred_other_generations(&self.store_dir, next).map(|()| n)) {
            Ok(n) => report.shredded_bytes = n,
            Err(e) => report.shred_error = Some(e.to_string()),
        }
        Ok(report)
    }
}

/// The trees of one sled transaction, by [`TreeId`].
struct SledTx<'a> {
    trees: &'a [TransactionalTree],
    index: [Option<u8>; 8],
    /// A conflict met inside, handed back to sled so that it runs the transaction again.
    conflict: &'a RefCell<bool>,
}

impl SledTx<'_> {
    fn tree(&self, t: TreeId) -> Result<&TransactionalTree, EngineError> {
        match self.index[t.index()] {
            Some(i) => Ok(&self.trees[usize::from(i)]),
            // A programming error (the caller named too few trees); reported, not a panic.
            None => Err(EngineError::new(
                EngineErrorKind::Other,
                format!(
                    "internal error: tree {} is not part of this transaction",
                    t.name()
                ),
            )),
        }
    }

    fn unabortable(&self, e: UnabortableTransactionError) -> EngineError {
        match e {
            UnabortableTransactionError::Conflict => {
                *self.conflict.borrow_mut() = true;
                EngineError::new(EngineErrorKind::Conflict, "a transaction conflict")
            }
            UnabortableTransactionError::Storage(e) => sled_error(e),
        }
    }
}

impl EngineTx for SledTx<'_> {
    fn get(&self, t: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.tree(t)?
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.unabortable(e))
    }

    fn insert(&self, t: TreeId, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        self.tree(t)?
            .insert(key, value)
            .map(|_| ())
            .map_err(|e| self.unabortable(e))
    }

    fn remove(&self, t: TreeId, key: &[u8]) -> Result<(), EngineError> {
        self.tree(t)?
            .remove(key)
            .map(|_| ())
            .map_err(|e| self.unabortable(e))
    }
}

impl Engine for SledEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo::new("sled", self.store_dir.display().to_string())
    }

    fn get(&self, t: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.read()
            .tree(t)
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(sled_error)
    }

    fn get_value(&self, t: TreeId, key: &[u8]) -> Result<Option<Value>, EngineError> {
        self.read()
            .tree(t)
            .get(key)
            .map(|v| v.map(|v| Value::from(SledValue(v))))
            .map_err(sled_error)
    }

    fn insert(&self, t: TreeId, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        self.read()
            .tree(t)
            .insert(key, value)
            .map(|_| ())
            .map_err(sled_error)
    }

    fn remove(&self, t: TreeId, key: &[u8]) -> Result<bool, EngineError> {
        self.read()
            .tree(t)
            .remove(key)
            .map(|old| old.is_some())
            .map_err(sled_error)
    }

    fn apply_batch(&self, t: TreeId, changes: Vec<BatchChange>) -> Result<(), EngineError> {
        let mut batch = sled::Batch::default();
        for c in changes {
            match c {
                BatchChange::Insert(k, v) => batch.insert(k, v),
                BatchChange::Remove(k) => batch.remove(k),
            }
        }
        self.read().tree(t).apply_batch(batch).map_err(sled_error)
    }

    fn apply_batch_ref(&self, t: TreeId, changes: &[BatchRef<'_>]) -> Result<(), EngineError> {
        let mut batch = sled::Batch::default();
        for c in changes {
            match *c {
                BatchRef::Insert(k, v) => batch.insert(k, v),
                BatchRef::Remove(k) => batch.remove(k),
            }
        }
        self.read().tree(t).apply_batch(batch).map_err(sled_error)
    }

    fn scan(&self, t: TreeId, prefix: &[u8], start: &[u8]) -> Scan {
        let generation = self.generation();
        let prefix = prefix.to_vec();
        let start = if start < prefix.as_slice() {
            prefix.clone()
        } else {
            start.to_vec()
        };
        let inner = generation.tree(t).range(start..);
        // The generation stays open (and a compaction waits) while the scan lives.
        let held = Arc::clone(&generation);
        Box::new(
            inner
                .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
                .map(move |r| {
                    let _ = &held;
                    r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(sled_error)
                }),
        )
    }

    fn transaction(&self, on: &[TreeId], body: &TxBody<'_>) -> Result<(), TxFailure> {
        let generation = self.generation();
        let mut index = [None; 8];
        let mut trees = Vec::with_capacity(on.len());
        for (i, t) in on.iter().enumerate() {
            index[t.index()] = u8::try_from(i).ok();
            trees.push(generation.tree(*t).clone());
        }
        let conflict = RefCell::new(false);
        let aborted = RefCell::new(None::<EngineError>);
        let r = trees.as_slice().transaction(|trees| {
            *conflict.borrow_mut() = false;
            let tx = SledTx {
                trees,
                index,
                conflict: &conflict,
            };
            match body(&tx) {
                Ok(()) => Ok(()),
                Err(TxStop::Engine(_)) if *conflict.borrow() => {
                    Err(ConflictableTransactionError::Conflict)
                }
                Err(TxStop::Engine(e)) => {
                    *aborted.borrow_mut() = Some(e);
                    Err(ConflictableTransactionError::Abort(()))
                }
                Err(TxStop::Abort) => Err(ConflictableTransactionError::Abort(())),
            }
        });
        match r {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(())) => Err(match aborted.into_inner() {
                Some(e) => TxFailure::Engine(e),
                None => TxFailure::Aborted,
            }),
            Err(TransactionError::Storage(e)) => Err(TxFailure::Engine(sled_error(e))),
        }
    }

    fn flush(&self) -> Result<(), EngineError> {
        self.generation().db.flush().map(|_| ()).map_err(sled_error)
    }

    fn durable_commits(&self) -> bool {
        false
    }

    fn count(&self, t: TreeId) -> Result<u64, EngineError> {
        Ok(self.read().tree(t).len() as u64)
    }

    fn size_on_disk(&self) -> Result<u64, EngineError> {
        self.read().db.size_on_disk().map_err(sled_error)
    }

    fn compact(&self, keep: &Keep<'_>, wait: Duration) -> Result<Compaction, EngineError> {
        self.compact_generation(keep, wait).map_err(|e| match e {
            StoreError::InUse(why) => EngineError::new(EngineErrorKind::Conflict, why),
            StoreError::Storage { source, .. } => source,
            StoreError::Io { source, .. } => EngineError::io(source),
            other => EngineError::new(EngineErrorKind::Other, other.to_string()),
        })
    }
}

/// Shreds the sled database of the store in `store_dir` (every generation, `db-current`, the
/// lock file): what `strongroom migrate --shred-source` does to the copy a migration left
/// behind. The caller must have closed it. Returns the bytes overwritten.
///
/// # Errors
/// [`StoreError::Locked`] while it is open; an I/O error.
pub fn shred_database(store_dir: &Path) -> Result<u64, StoreError> {
    let lock = lock_store_dir(store_dir)?;
    let mut bytes = 0;
    for (_, path) in generations(store_dir) {
        if !wait_unlocked(&path) {
            return Err(StoreError::Locked {
                path: store_dir.to_path_buf(),
            });
        }
        bytes += shred_dir(&path)?;
    }
    let _ = std::fs::remove_file(store_dir.join(CURRENT_FILE));
    let _ = std::fs::remove_file(store_dir.join(format!("{CURRENT_FILE}.tmp")));
    drop(lock);
    let _ = std::fs::remove_file(store_dir.join(LOCK_FILE));
    Ok(bytes)
}

/// Writes `db-current` naming generation `g`: a temporary file, synced, renamed over the old
/// one, and the directory synced.
fn write_current(store_dir: &Path, g: Generation) -> Result<(), StoreError> {
    let path = store_dir.join(CURRENT_FILE);
    let tmp = store_dir.join(format!("{CURRENT_FILE}.tmp"));
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| StoreError::Io {
            op,
            path: p,
            source,
        }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(format!("{}\n", g.dir_name()).as_bytes())
        .map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
    std::fs::File::open(store_dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", store_dir))
}

/// Waits (up to 5 s) until no one holds sled's lock on the database in `dir`; `false` if it is
/// still held then (the directory must then not be touched).
fn wait_unlocked(dir: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    let lock_file = dir.join("db");
    loop {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&lock_file)
        {
            Ok(f) => {
                if f.try_lock().is_ok() {
                    let _ = f.unlock();
                    return true;
                }
            }
            Err(_) => return true,
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Shreds every generation directory in `store_dir` other than `current` (leftovers of an
/// interrupted compaction), and a temporary `db-current` a crash left. The caller holds the
/// store directory's lock; a generation whose sled lock is still held is left alone.
fn shred_other_generations(store_dir: &Path, current: Generation) -> Result<(), StoreError> {
    let _ = std::fs::remove_file(store_dir.join(format!("{CURRENT_FILE}.tmp")));
    for (g, path) in generations(store_dir) {
        if g != current && wait_unlocked(&path) {
            shred_dir(&path)?;
        }
    }
    Ok(())
}

/// Overwrites every file under `dir` with zeros, syncs it, removes it, then removes the
/// directories. Returns the bytes overwritten. (On a file system that writes in place this
/// reaches the blocks; copy-on-write file systems, SSD remapping and snapshots keep older
/// blocks out of reach: README, security model.)
pub(crate) fn shred_dir(dir: &Path) -> Result<u64, StoreError> {
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| StoreError::Io {
            op,
            path: p,
            source,
        }
    };
    let mut bytes = 0u64;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io("read directory", dir)(e)),
    };
    for e in entries {
        let e = e.map_err(io("read directory", dir))?;
        let path = e.path();
        let kind = e.file_type().map_err(io("inspect", &path))?;
        if kind.is_dir() {
            bytes += shred_dir(&path)?;
        } else if kind.is_file() {
            bytes += zero_file(&path)?;
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
        } else {
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
        }
    }
    std::fs::remove_dir(dir).map_err(io("remove directory", dir))?;
    Ok(bytes)
}

fn zero_file(path: &Path) -> Result<u64, StoreError> {
    let io = |op: &'static str| {
        let p = path.to_path_buf();
        move |source| StoreError::Io {
            op,
            path: p,
            source,
        }
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("open for shredding"))?;
    let len = f.metadata().map_err(io("inspect"))?.len();
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        f.write_all(&zeros[..n]).map_err(io("overwrite"))?;
        left -= n as u64;
    }
    f.sync_all().map_err(io("sync"))?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_names_are_canonical() {
        assert_eq!(Generation::parse("db"), Some(Generation(0)));
        assert_eq!(Generation::parse("db.7"), Some(Generation(7)));
        assert_eq!(Generation(12).dir_name(), "db.12");
        for bad in [
            "db.",
            "db.07",
            "db.0",
            "db.x",
            "dbx",
            "db-current",
            "db.1.2",
            "",
        ] {
            assert_eq!(Generation::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_damaged_current_file_is_an_error_not_generation_zero() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(CURRENT_FILE), b"../elsewhere\n").unwrap();
        assert!(matches!(
            current_db_dir(d.path()),
            Err(StoreError::Damaged { .. })
        ));
        std::fs::write(d.path().join(CURRENT_FILE), b"db.3\n").unwrap();
        assert_eq!(current_db_dir(d.path()).unwrap(), d.path().join("db.3"));
    }

    #[test]
    fn compaction_keeps_what_the_filter_keeps_and_shreds_the_old_generation() {
        let d = tempfile::tempdir().unwrap();
        let s = SledEngine::create(d.path()).unwrap();
        s.insert(TreeId::Records, b"keep", b"kept-value").unwrap();
        s.insert(TreeId::Records, b"drop", b"dropped-value")
            .unwrap();
        s.flush().unwrap();
        let r = s
            .compact(&|_, k| k != b"drop", Duration::from_secs(1))
            .unwrap();
        assert_eq!((r.entries, r.dropped, r.generation), (1, 1, 1));
        assert!(r.shredded_bytes > 0);
        assert!(!d.path().join("db").exists());
        assert_eq!(s.db_dir(), d.path().join("db.1"));
        assert_eq!(
            s.get(TreeId::Records, b"keep").unwrap().as_deref(),
            Some(&b"kept-value"[..])
        );
        assert!(s.get(TreeId::Records, b"drop").unwrap().is_none());
        // Writes go on in the new generation, and it is the one a reopen finds.
        s.insert(TreeId::Records, b"after", b"x").unwrap();
        s.flush().unwrap();
        drop(s);
        let s = SledEngine::open(d.path()).unwrap();
        assert_eq!(s.count(TreeId::Records).unwrap(), 2);
    }

    #[test]
    fn a_scan_in_flight_holds_a_compaction_off_until_it_ends() {
        let d = tempfile::tempdir().unwrap();
        let s = SledEngine::create(d.path()).unwrap();
        s.insert(TreeId::Jobs, b"a", b"1").unwrap();
        let scan = s.scan(TreeId::Jobs, b"", b"");
        let e = s
            .compact(&|_, _| true, Duration::from_millis(30))
            .unwrap_err();
        assert!(e.is_conflict(), "{e}");
        assert_eq!(s.db_dir(), d.path().join("db"), "nothing switched");
        drop(scan);
        s.compact(&|_, _| true, Duration::from_millis(30)).unwrap();
        assert_eq!(s.db_dir(), d.path().join("db.1"));
    }

    #[test]
    fn leftovers_of_an_interrupted_compaction_are_removed_at_open() {
        let d = tempfile::tempdir().unwrap();
        drop(SledEngine::create(d.path()).unwrap());
        // A copy that died before the switch, and an older generation a crash left unshredded.
        for leftover in ["db.1", "db.5"] {
            std::fs::create_dir(d.path().join(leftover)).unwrap();
            std::fs::write(d.path().join(leftover).join("db"), b"old bytes").unwrap();
        }
        std::fs::write(d.path().join(CURRENT_FILE), b"db.5\n").unwrap();
        let _ = std::fs::remove_dir_all(d.path().join("db.5"));
        std::fs::create_dir(d.path().join("db.5")).unwrap();
        std::fs::write(d.path().join("unrelated"), b"stays").unwrap();
        let s = SledEngine::open(d.path()).unwrap();
        assert_eq!(s.db_dir(), d.path().join("db.5"));
        assert!(!d.path().join("db").exists());
        assert!(!d.path().join("db.1").exists());
        assert!(d.path().join("unrelated").exists());
    }
}
