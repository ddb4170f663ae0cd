//! The narrow interface between the key logic and the embedded database (sled 0.34).
//!
//! Everything the store keeps lives in a handful of named trees; the rest of the crate reads
//! and writes them only through [`Storage`] and [`Tx`], so another engine (a shared database for
//! deployments that outgrow one machine) could take sled's place behind these two types.

use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{IVec, Transactional};

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

/// The database: sled and its trees.
pub(crate) struct Storage {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

/// An error inside a transaction: the store's own (aborts) or sled's (conflict/storage).
pub(crate) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Aborts a transaction with a store error.
pub(crate) fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

/// The view of every tree inside one transaction.
pub(crate) struct Tx<'a>(&'a [TransactionalTree]);

impl Tx<'_> {
    pub(crate) fn get(&self, t: TreeId, k: impl AsRef<[u8]>) -> TxResult<Option<IVec>> {
        Ok(self.0[t as usize].get(k)?)
    }

    pub(crate) fn insert(
        &self,
        t: TreeId,
        k: impl AsRef<[u8]> + Into<IVec>,
        v: impl Into<IVec>,
    ) -> TxResult<()> {
        self.0[t as usize].insert(k, v)?;
        Ok(())
    }

    pub(crate) fn remove(&self, t: TreeId, k: impl AsRef<[u8]> + Into<IVec>) -> TxResult<()> {
        self.0[t as usize].remove(k)?;
        Ok(())
    }
}

impl Storage {
    /// Opens (or creates) the database in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        // sled flushes every 500 ms in the background; key-management operations flush
        // explicitly before they return (see the README's durability contract).
        let config = sled::Config::new().path(dir).flush_every_ms(Some(500));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
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
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(StoreError::storage("opening the database")(e)),
            }
        };
        let trees = TREE_NAMES
            .iter()
            .map(|n| db.open_tree(n))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::storage("opening the database's trees"))?;
        Ok(Self { db, trees })
    }

    pub(crate) fn tree(&self, t: TreeId) -> &sled::Tree {
        &self.trees[t as usize]
    }

    pub(crate) fn get(&self, t: TreeId, k: impl AsRef<[u8]>) -> Result<Option<IVec>, StoreError> {
        self.tree(t).get(k).map_err(StoreError::storage("reading"))
    }

    pub(crate) fn insert(
        &self,
        t: TreeId,
        k: impl AsRef<[u8]>,
        v: impl Into<IVec>,
    ) -> Result<(), StoreError> {
        self.tree(t)
            .insert(k, v)
            .map(|_| ())
            .map_err(StoreError::storage("writing"))
    }

    pub(crate) fn remove(
        &self,
        t: TreeId,
        k: impl AsRef<[u8]>,
    ) -> Result<Option<IVec>, StoreError> {
        self.tree(t)
            .remove(k)
            .map_err(StoreError::storage("deleting"))
    }

    /// Replaces `old` with `new` at `k` only if the value is still `old`; `Ok(false)` if it
    /// changed meanwhile.
    pub(crate) fn compare_and_swap(
        &self,
        t: TreeId,
        k: impl AsRef<[u8]>,
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        self.tree(t)
            .compare_and_swap(k, old, new)
            .map(|r| r.is_ok())
            .map_err(StoreError::storage("writing"))
    }

    /// Every (key, value) under `prefix`, in key order.
    pub(crate) fn scan_prefix(
        &self,
        t: TreeId,
        prefix: impl AsRef<[u8]>,
    ) -> impl Iterator<Item = Result<(IVec, IVec), StoreError>> + '_ {
        self.tree(t)
            .scan_prefix(prefix)
            .map(|r| r.map_err(StoreError::storage("scanning")))
    }

    /// Every (key, value) after `after` (exclusive) under `prefix`, in key order.
    pub(crate) fn scan_prefix_after(
        &self,
        t: TreeId,
        prefix: &[u8],
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<(IVec, IVec), StoreError>> + '_ {
        let start: Vec<u8> = match after {
            Some(a) => {
                let mut s = a.to_vec();
                s.push(0);
                s
            }
            None => prefix.to_vec(),
        };
        let prefix = prefix.to_vec();
        self.tree(t)
            .range(start..)
            .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .map(|r| r.map_err(StoreError::storage("scanning")))
    }

    /// Runs `f` as one atomic transaction over every tree. `f` may run more than once (on a
    /// conflict), so it must not have effects outside the transaction.
    pub(crate) fn transaction<T>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        self.trees
            .as_slice()
            .transaction(|trees| f(&Tx(trees)))
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
        self.db
            .flush()
            .map(|_| ())
            .map_err(StoreError::storage("flushing to disk"))
    }

    /// Bytes used on disk.
    pub(crate) fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db
            .size_on_disk()
            .map_err(StoreError::storage("measuring"))
    }
}
