//! The narrow interface between the key logic and the embedded database (sled 0.34), and the
//! compaction that makes a destruction hold on disk.
//!
//! Everything the store keeps lives in a handful of named trees; the rest of the crate reads
//! and writes them only through [`Storage`] and [`Tx`], so another engine (a shared database for
//! deployments that outgrow one machine) could take sled's place behind these two types.
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

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use sled::IVec;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use crate::error::StoreError;

/// The trees of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TreeId {
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

/// All trees, for backup and restore.
pub(crate) const ALL_TREES: [TreeId; 8] = [
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
    pub(crate) fn name(self) -> &'static str {
        TREE_NAMES[self as usize]
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

/// One open sled database and its trees.
struct Engine {
    dir: PathBuf,
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

impl Engine {
    fn open(dir: &Path) -> Result<Self, StoreError> {
        // sled flushes every 500 ms in the background; key-management operations flush
        // explicitly before they return (see the README's durability contract).
        let config = sled::Config::new().path(dir).flush_every_ms(Some(500));
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
                Err(e) => return Err(StoreError::storage("opening the database")(e)),
            }
        };
        let trees = TREE_NAMES
            .iter()
            .map(|n| db.open_tree(n))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::storage("opening the database's trees"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            db,
            trees,
        })
    }

    fn tree(&self, t: TreeId) -> &sled::Tree {
        &self.trees[t as usize]
    }
}

/// The database: the current generation's sled engine, swappable by a compaction.
pub(crate) struct Storage {
    store_dir: PathBuf,
    /// The locked `store.lock` (released when dropped).
    _lock: std::fs::File,
    /// Point operations hold it shared for one call; scans and transactions clone the `Arc` (so
    /// that nothing holds the lock while calling back into the store); a compaction holds it
    /// exclusively while it copies and switches, once no clone is left.
    slot: RwLock<Arc<Engine>>,
}

/// An error inside a transaction: the store's own (aborts) or sled's (conflict/storage).
pub(crate) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Aborts a transaction with a store error.
pub(crate) fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

/// The view of the trees taking part in one transaction.
pub(crate) struct Tx<'a> {
    trees: &'a [TransactionalTree],
    /// Index into `trees` of each [`TreeId`], if it takes part.
    index: [Option<u8>; 8],
}

impl Tx<'_> {
    fn tree(&self, t: TreeId) -> TxResult<&TransactionalTree> {
        match self.index[t as usize] {
            Some(i) => Ok(&self.trees[usize::from(i)]),
            // A programming error (the caller named too few trees); reported, not a panic.
            None => abort(StoreError::InUse(format!(
                "internal error: tree {} is not part of this transaction",
                t.name()
            ))),
        }
    }

    pub(crate) fn get(&self, t: TreeId, k: impl AsRef<[u8]>) -> TxResult<Option<IVec>> {
        Ok(self.tree(t)?.get(k)?)
    }

    pub(crate) fn insert(
        &self,
        t: TreeId,
        k: impl AsRef<[u8]> + Into<IVec>,
        v: impl Into<IVec>,
    ) -> TxResult<()> {
        self.tree(t)?.insert(k, v)?;
        Ok(())
    }

    pub(crate) fn remove(&self, t: TreeId, k: impl AsRef<[u8]> + Into<IVec>) -> TxResult<()> {
        self.tree(t)?.remove(k)?;
        Ok(())
    }
}

/// Puts and removes applied to one tree atomically (not isolated from concurrent writers).
#[derive(Default)]
pub(crate) struct WriteBatch(sled::Batch);

impl WriteBatch {
    pub(crate) fn insert(&mut self, k: impl Into<IVec>, v: impl Into<IVec>) {
        self.0.insert(k, v);
    }

    pub(crate) fn remove(&mut self, k: impl Into<IVec>) {
        self.0.remove(k);
    }
}

/// An ordered scan that keeps its generation open while it runs.
pub(crate) struct Scan<I> {
    inner: I,
    _engine: Arc<Engine>,
}

impl<I: Iterator> Iterator for Scan<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        self.inner.next()
    }
}

/// One entry of a scan, or the storage error that ended it.
pub(crate) type Entry = Result<(IVec, IVec), StoreError>;

fn scanned(r: sled::Result<(IVec, IVec)>) -> Entry {
    r.map_err(StoreError::storage("scanning"))
}

/// A scan of one tree.
pub(crate) type TreeScan =
    Scan<std::iter::Map<sled::Iter, fn(sled::Result<(IVec, IVec)>) -> Entry>>;

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Compaction {
    /// Entries copied into the new generation.
    pub entries: u64,
    /// Entries left behind (by the caller's filter).
    pub dropped: u64,
    /// Bytes of files under the old generation, overwritten and removed.
    pub shredded_bytes: u64,
    /// The new generation.
    pub generation: u64,
    /// Shredding an old generation failed (the store runs on the new one; what is left is
    /// shredded by the next compaction or open).
    pub shred_error: Option<String>,
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

impl Storage {
    /// Creates the database of a new store in `store_dir`, which must hold none: no generation
    /// and no `db-current` ([`StoreError::AlreadyExists`] otherwise; nothing is touched).
    pub(crate) fn create(store_dir: &Path) -> Result<Self, StoreError> {
        let lock = lock_store_dir(store_dir)?;
        if !generations(store_dir).is_empty()
            || std::fs::symlink_metadata(store_dir.join(CURRENT_FILE)).is_ok()
        {
            return Err(StoreError::AlreadyExists {
                path: store_dir.to_path_buf(),
            });
        }
        let engine = Engine::open(&store_dir.join(Generation(0).dir_name()))?;
        Ok(Self {
            store_dir: store_dir.to_path_buf(),
            _lock: lock,
            slot: RwLock::new(Arc::new(engine)),
        })
    }

    /// Opens the database of the store in `store_dir`: its current generation. Leftovers of an
    /// interrupted compaction are removed first (an unfinished new generation, or an old one
    /// whose shredding a crash cut short).
    ///
    /// # Errors
    /// [`StoreError::NotAStore`] when there is no database; [`StoreError::Damaged`] when
    /// `db-current` names a generation that is missing while others are there;
    /// [`StoreError::Locked`] while another handle has it open.
    pub(crate) fn open(store_dir: &Path) -> Result<Self, StoreError> {
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
        let engine = Engine::open(&current_dir)?;
        Ok(Self {
            store_dir: store_dir.to_path_buf(),
            _lock: lock,
            slot: RwLock::new(Arc::new(engine)),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Arc<Engine>> {
        self.slot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn engine(&self) -> Arc<Engine> {
        Arc::clone(&self.read())
    }

    /// The current generation's directory.
    #[cfg(test)]
    pub(crate) fn db_dir(&self) -> PathBuf {
        self.read().dir.clone()
    }

    pub(crate) fn get(&self, t: TreeId, k: impl AsRef<[u8]>) -> Result<Option<IVec>, StoreError> {
        self.read()
            .tree(t)
            .get(k)
            .map_err(StoreError::storage("reading"))
    }

    pub(crate) fn insert(
        &self,
        t: TreeId,
        k: impl AsRef<[u8]>,
        v: impl Into<IVec>,
    ) -> Result<(), StoreError> {
        self.read()
            .tree(t)
            .insert(k, v)
            .map(|_| ())
            .map_err(StoreError::storage("writing"))
    }

    pub(crate) fn remove(
        &self,
        t: TreeId,
        k: impl AsRef<[u8]>,
    ) -> Result<Option<IVec>, StoreError> {
        self.read()
            .tree(t)
            .remove(k)
            .map_err(StoreError::storage("deleting"))
    }

    /// Applies `batch` to tree `t` atomically.
    pub(crate) fn apply_batch(
        &self,
        t: TreeId,
        batch: WriteBatch,
        while_doing: &'static str,
    ) -> Result<(), StoreError> {
        self.read()
            .tree(t)
            .apply_batch(batch.0)
            .map_err(StoreError::storage(while_doing))
    }

    /// Entries in tree `t` (a full pass in sled).
    pub(crate) fn len(&self, t: TreeId) -> usize {
        self.read().tree(t).len()
    }

    fn scan(&self, f: impl FnOnce(&sled::Tree) -> sled::Iter, t: TreeId) -> TreeScan {
        let engine = self.engine();
        let inner = f(engine.tree(t)).map(scanned as fn(_) -> _);
        Scan {
            inner,
            _engine: engine,
        }
    }

    /// Every (key, value) of tree `t`, in key order.
    pub(crate) fn iter(&self, t: TreeId) -> TreeScan {
        self.scan(sled::Tree::iter, t)
    }

    /// Every (key, value) from `start` on, in key order.
    pub(crate) fn range_from(&self, t: TreeId, start: &[u8]) -> TreeScan {
        self.scan(|tree| tree.range(start.to_vec()..), t)
    }

    /// Every (key, value) under `prefix`, in key order.
    pub(crate) fn scan_prefix(&self, t: TreeId, prefix: impl AsRef<[u8]>) -> TreeScan {
        self.scan(|tree| tree.scan_prefix(prefix), t)
    }

    /// Every (key, value) after `after` (exclusive) under `prefix`, in key order.
    pub(crate) fn scan_prefix_after(
        &self,
        t: TreeId,
        prefix: &[u8],
        after: Option<&[u8]>,
    ) -> Scan<impl Iterator<Item = Entry> + use<>> {
        let start: Vec<u8> = match after {
            Some(a) => {
                let mut s = a.to_vec();
                s.push(0);
                s
            }
            None => prefix.to_vec(),
        };
        let prefix = prefix.to_vec();
        let engine = self.engine();
        let inner = engine
            .tree(t)
            .range(start..)
            .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .map(|r| r.map_err(StoreError::storage("scanning")));
        Scan {
            inner,
            _engine: engine,
        }
    }

    /// Runs `f` as one atomic transaction over every tree. `f` may run more than once (on a
    /// conflict), so it must not have effects outside the transaction.
    pub(crate) fn transaction<T>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        self.transaction_on(&ALL_TREES, f)
    }

    /// Runs `f` as one atomic transaction over the trees `on` only: transactions over disjoint
    /// trees do not conflict with each other. `f` may run more than once.
    pub(crate) fn transaction_on<T>(
        &self,
        on: &[TreeId],
        f: impl Fn(&Tx<'_>) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        let engine = self.engine();
        let mut index = [None; 8];
        let mut trees = Vec::with_capacity(on.len());
        for (i, t) in on.iter().enumerate() {
            index[*t as usize] = u8::try_from(i).ok();
            trees.push(engine.tree(*t).clone());
        }
        trees
            .as_slice()
            .transaction(|trees| f(&Tx { trees, index }))
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::Storage {
                    while_doing: "committing a transaction",
                    source: e,
                },
            })
    }

    /// Makes everything written so far durable.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        let engine = self.engine();
        engine
            .db
            .flush()
            .map(|_| ())
            .map_err(StoreError::storage("flushing to disk"))
    }

    /// Bytes used on disk.
    pub(crate) fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.read()
            .db
            .size_on_disk()
            .map_err(StoreError::storage("measuring"))
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
    pub(crate) fn compact(
        &self,
        keep: &dyn Fn(TreeId, &[u8]) -> bool,
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
        let copied = (|| {
            let new = Engine::open(&next_dir)?;
            for t in ALL_TREES {
                let mut batch = sled::Batch::default();
                let mut n = 0u32;
                for item in old.tree(t).iter() {
                    let (k, v) = item.map_err(StoreError::storage("reading for a compaction"))?;
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
                            .map_err(StoreError::storage("writing a compaction"))?;
                        n = 0;
                    }
                }
                new.tree(t)
                    .apply_batch(batch)
                    .map_err(StoreError::storage("writing a compaction"))?;
            }
            new.db
                .flush()
                .map_err(StoreError::storage("flushing a compaction"))?;
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
        let s = Storage::create(d.path()).unwrap();
        s.insert(TreeId::Records, b"keep", b"kept-value".to_vec())
            .unwrap();
        s.insert(TreeId::Records, b"drop", b"dropped-value".to_vec())
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
        s.insert(TreeId::Records, b"after", b"x".to_vec()).unwrap();
        s.flush().unwrap();
        drop(s);
        let s = Storage::open(d.path()).unwrap();
        assert_eq!(s.len(TreeId::Records), 2);
    }

    #[test]
    fn a_scan_in_flight_holds_a_compaction_off_until_it_ends() {
        let d = tempfile::tempdir().unwrap();
        let s = Storage::create(d.path()).unwrap();
        s.insert(TreeId::Jobs, b"a", b"1".to_vec()).unwrap();
        let scan = s.scan_prefix(TreeId::Jobs, b"");
        let e = s
            .compact(&|_, _| true, Duration::from_millis(30))
            .unwrap_err();
        assert!(matches!(e, StoreError::InUse(_)), "{e}");
        assert_eq!(s.db_dir(), d.path().join("db"), "nothing switched");
        drop(scan);
        s.compact(&|_, _| true, Duration::from_millis(30)).unwrap();
        assert_eq!(s.db_dir(), d.path().join("db.1"));
    }

    #[test]
    fn leftovers_of_an_interrupted_compaction_are_removed_at_open() {
        let d = tempfile::tempdir().unwrap();
        drop(Storage::create(d.path()).unwrap());
        // A copy that died before the switch, and an older generation a crash left unshredded.
        for leftover in ["db.1", "db.5"] {
            std::fs::create_dir(d.path().join(leftover)).unwrap();
            std::fs::write(d.path().join(leftover).join("db"), b"old bytes").unwrap();
        }
        std::fs::write(d.path().join(CURRENT_FILE), b"db.5\n").unwrap();
        let _ = std::fs::remove_dir_all(d.path().join("db.5"));
        std::fs::create_dir(d.path().join("db.5")).unwrap();
        std::fs::write(d.path().join("unrelated"), b"stays").unwrap();
        let s = Storage::open(d.path()).unwrap();
        assert_eq!(s.db_dir(), d.path().join("db.5"));
        assert!(!d.path().join("db").exists());
        assert!(!d.path().join("db.1").exists());
        assert!(d.path().join("unrelated").exists());
    }
}
