//! The store's side of the engine interface: one [`Engine`] behind a handle that speaks in
//! [`StoreError`]s, and the transaction view the key logic writes through.
//!
//! The key logic reads and writes the trees only through [`Storage`] and [`Tx`]; which engine
//! sits behind them (sled embedded, PostgreSQL shared) is decided when the store is created or
//! opened (`crate::engine`).

use std::cell::RefCell;
use std::time::Duration;

pub(crate) use crate::engine::{ALL_TREES, BatchRef, Guard, TreeId};
use crate::engine::{
    BatchChange, Compaction, Engine, EngineError, EngineErrorKind, EngineTx, Keep, KeyValue, Scan,
    TxFailure, TxStop, Value,
};
use crate::error::StoreError;

/// The store's engine.
pub(crate) struct Storage {
    engine: Box<dyn Engine>,
}

/// An error inside a transaction: the store's own reason to abort, or the engine's.
#[derive(Debug)]
pub(crate) enum TxError {
    Abort(StoreError),
    Engine(EngineError),
}

impl From<EngineError> for TxError {
    fn from(e: EngineError) -> Self {
        Self::Engine(e)
    }
}

/// The result of a step inside a transaction.
pub(crate) type TxResult<T> = Result<T, TxError>;

/// Aborts a transaction with a store error.
pub(crate) fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(TxError::Abort(e))
}

/// The view of the trees taking part in one transaction.
pub(crate) struct Tx<'a> {
    inner: &'a dyn EngineTx,
}

impl Tx<'_> {
    pub(crate) fn get(&self, t: TreeId, k: impl AsRef<[u8]>) -> TxResult<Option<Vec<u8>>> {
        Ok(self.inner.get(t, k.as_ref())?)
    }

    pub(crate) fn insert(
        &self,
        t: TreeId,
        k: impl AsRef<[u8]>,
        v: impl AsRef<[u8]>,
    ) -> TxResult<()> {
        Ok(self.inner.insert(t, k.as_ref(), v.as_ref())?)
    }

    pub(crate) fn remove(&self, t: TreeId, k: impl AsRef<[u8]>) -> TxResult<()> {
        Ok(self.inner.remove(t, k.as_ref())?)
    }
}

/// Puts and removes applied to one tree atomically (not isolated from concurrent writers).
#[derive(Default)]
pub(crate) struct WriteBatch(Vec<BatchChange>);

impl WriteBatch {
    pub(crate) fn insert(&mut self, k: impl Into<Vec<u8>>, v: impl Into<Vec<u8>>) {
        self.0.push(BatchChange::Insert(k.into(), v.into()));
    }

    pub(crate) fn remove(&mut self, k: impl Into<Vec<u8>>) {
        self.0.push(BatchChange::Remove(k.into()));
    }
}

/// One entry of a scan, or the storage error that ended it.
pub(crate) type Entry = Result<(Vec<u8>, Vec<u8>), StoreError>;

/// An ordered scan of one tree.
pub(crate) type Entries = std::iter::Map<Scan, fn(Result<KeyValue, EngineError>) -> Entry>;

fn scanned(r: Result<KeyValue, EngineError>) -> Entry {
    r.map_err(storage("scanning"))
}

fn storage(while_doing: &'static str) -> impl FnOnce(EngineError) -> StoreError {
    move |source| StoreError::Storage {
        while_doing,
        source,
    }
}

impl Storage {
    pub(crate) fn new(engine: Box<dyn Engine>) -> Self {
        Self { engine }
    }

    /// The engine itself (its description; tests and migrations reach it through the store).
    pub(crate) fn engine(&self) -> &dyn Engine {
        &*self.engine
    }

    pub(crate) fn get(
        &self,
        t: TreeId,
        k: impl AsRef<[u8]>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine.get(t, k.as_ref()).map_err(storage("reading"))
    }

    /// [`Storage::get`] without a copy where the engine can share its buffer.
    pub(crate) fn get_value(&self, t: TreeId, k: &[u8]) -> Result<Option<Value>, StoreError> {
        self.engine.get_value(t, k).map_err(storage("reading"))
    }

    pub(crate) fn insert(
        &self,
        t: TreeId,
        k: impl AsRef<[u8]>,
        v: impl AsRef<[u8]>,
    ) -> Result<(), StoreError> {
        self.engine
            .insert(t, k.as_ref(), v.as_ref())
            .map_err(storage("writing"))
    }

    /// Removes `k`; whether it was there.
    pub(crate) fn remove(&self, t: TreeId, k: impl AsRef<[u8]>) -> Result<bool, StoreError> {
        self.engine
            .remove(t, k.as_ref())
            .map_err(storage("deleting"))
    }

    /// Applies `batch` to tree `t` atomically.
    pub(crate) fn apply_batch(
        &self,
        t: TreeId,
        batch: WriteBatch,
        while_doing: &'static str,
    ) -> Result<(), StoreError> {
        if batch.0.is_empty() {
            return Ok(());
        }
        self.engine
            .apply_batch(t, batch.0)
            .map_err(storage(while_doing))
    }

    /// [`Engine::apply_batch_guarded`]: `Ok(false)` when the guard did not hold.
    pub(crate) fn apply_batch_guarded(
        &self,
        t: TreeId,
        changes: &[BatchRef<'_>],
        guard: &Guard<'_>,
        while_doing: &'static str,
    ) -> Result<bool, StoreError> {
        self.engine
            .apply_batch_guarded(t, changes, guard)
            .map_err(storage(while_doing))
    }

    /// [`Storage::apply_batch`] of borrowed changes.
    pub(crate) fn apply_batch_ref(
        &self,
        t: TreeId,
        changes: &[BatchRef<'_>],
        while_doing: &'static str,
    ) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.engine
            .apply_batch_ref(t, changes)
            .map_err(storage(while_doing))
    }

    /// Entries in tree `t`.
    pub(crate) fn len(&self, t: TreeId) -> Result<u64, StoreError> {
        self.engine.count(t).map_err(storage("counting"))
    }

    fn scan(&self, t: TreeId, prefix: &[u8], start: &[u8]) -> Entries {
        self.engine
            .scan(t, prefix, start)
            .map(scanned as fn(_) -> _)
    }

    /// Every (key, value) of tree `t`, in key order.
    pub(crate) fn iter(&self, t: TreeId) -> Entries {
        self.scan(t, b"", b"")
    }

    /// Every (key, value) from `start` on, in key order.
    pub(crate) fn range_from(&self, t: TreeId, start: &[u8]) -> Entries {
        self.scan(t, b"", start)
    }

    /// Every (key, value) under `prefix`, in key order.
    pub(crate) fn scan_prefix(&self, t: TreeId, prefix: impl AsRef<[u8]>) -> Entries {
        let p = prefix.as_ref();
        self.scan(t, p, p)
    }

    /// Every (key, value) after `after` (exclusive) under `prefix`, in key order.
    pub(crate) fn scan_prefix_after(
        &self,
        t: TreeId,
        prefix: &[u8],
        after: Option<&[u8]>,
    ) -> Entries {
        let start: Vec<u8> = match after {
            Some(a) => {
                let mut s = a.to_vec();
                s.push(0);
                s
            }
            None => prefix.to_vec(),
        };
        self.scan(t, prefix, &start)
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
        // What the last run of `f` returned (earlier runs lost a conflict and were undone).
        let out: RefCell<Option<T>> = RefCell::new(None);
        let aborted: RefCell<Option<StoreError>> = RefCell::new(None);
        let r = self.engine.transaction(on, &|tx| {
            *out.borrow_mut() = None;
            *aborted.borrow_mut() = None;
            match f(&Tx { inner: tx }) {
                Ok(v) => {
                    *out.borrow_mut() = Some(v);
                    Ok(())
                }
                Err(TxError::Abort(e)) => {
                    *aborted.borrow_mut() = Some(e);
                    Err(TxStop::Abort)
                }
                Err(TxError::Engine(e)) => Err(TxStop::Engine(e)),
            }
        });
        match r {
            Ok(()) => out.into_inner().ok_or_else(|| {
                StoreError::InUse("internal error: a transaction committed without a result".into())
            }),
            Err(TxFailure::Aborted) => Err(aborted.into_inner().unwrap_or_else(|| {
                StoreError::InUse("internal error: a transaction aborted without a reason".into())
            })),
            Err(TxFailure::Engine(e)) => Err(storage("committing a transaction")(e)),
        }
    }

    /// Makes everything written so far durable.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.engine.flush().map_err(storage("flushing to disk"))
    }

    /// Bytes used on disk.
    pub(crate) fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.engine.size_on_disk().map_err(storage("measuring"))
    }

    /// Drops what `keep` refuses and removes deleted entries from the disk (see
    /// [`Engine::compact`]).
    ///
    /// # Errors
    /// [`StoreError::InUse`] when the engine stayed busy for `wait` (nothing changed), or the
    /// engine's error.
    pub(crate) fn compact(
        &self,
        keep: &Keep<'_>,
        wait: Duration,
    ) -> Result<Compaction, StoreError> {
        self.engine.compact(keep, wait).map_err(|e| {
            if e.kind() == EngineErrorKind::Conflict {
                StoreError::InUse(e.to_string())
            } else {
                storage("compacting")(e)
            }
        })
    }
}
