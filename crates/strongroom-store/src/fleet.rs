//! Replicas of one store on a shared database (the fleet): key state that stays coherent.
//!
//! Every key change ([`Store::commit`]: a create, rotation, disable, enable, destruction,
//! move, DEK rollover) bumps the store's *generation*, a counter in the metadata tree, in the
//! same transaction as the change, and only if the generation is still the one this replica's
//! catalog was loaded at: a change computed from a catalog another replica has changed since
//! is refused ([`StoreError::Conflict`]) and the replica reloads, so two replicas never both
//! apply a change to the same state.
//!
//! On an engine that other processes share ([`Engine::shared`](crate::Engine::shared):
//! PostgreSQL without the exclusive lock), each replica also *polls* the generation, one
//! point read at most every [`StoreOptions::fleet_poll`](crate::StoreOptions::fleet_poll)
//! (default 1 s; zero polls before every operation), and when it moved, drops its cached keys
//! and DEK counters and reloads its catalog before it serves anything more. A revocation
//! committed by one replica is so refused by every other within the interval (plus the time
//! of one reload), whatever happens to any notification channel. A key change always starts
//! from the current generation: [`Store::write_lifecycle`] reads it once it holds the lock.
//!
//! The key cache's TTL still bounds what the HSM itself revokes (a root disabled in the
//! token, not through strongroom).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use strongroom_core::FormatError;

use crate::TreeId;
use crate::error::StoreError;
use crate::storage::{Tx, TxResult, abort};
use crate::store::Store;

/// The generation's key in the metadata tree (absent: 0, no key change yet).
pub(crate) const GENERATION_KEY: &[u8] = b"generation";

/// What a replica knows of the generation.
pub(crate) struct Fleet {
    /// Whether other processes may change the database (the engine says so).
    pub shared: bool,
    /// The generation this replica's catalog was loaded at (or last committed).
    pub loaded: AtomicU64,
    /// When the generation was last polled, in milliseconds since `opened`, plus one (0:
    /// never).
    last_poll: AtomicU64,
    opened: Instant,
    interval: Duration,
}

impl Fleet {
    pub(crate) fn new(shared: bool, interval: Duration) -> Self {
        Self {
            shared,
            loaded: AtomicU64::new(0),
            last_poll: AtomicU64::new(0),
            opened: Instant::now(),
            interval,
        }
    }

    /// Whether this thread should poll now: the interval has passed since the last poll,
    /// and no other thread has just claimed it.
    fn claim_poll(&self) -> bool {
        let now = u64::try_from(self.opened.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        let last = self.last_poll.load(Ordering::Relaxed);
        let interval = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < interval {
            return false;
        }
        // With a zero interval every operation polls; otherwise one thread per interval.
        interval == 0
            || self
                .last_poll
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// A stored generation.
fn parse(raw: Option<&[u8]>) -> Result<u64, StoreError> {
    let Some(b) = raw else { return Ok(0) };
    <[u8; 8]>::try_from(b)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            what: "the store's generation".into(),
            source: FormatError::BadLength {
                what: "generation",
                field: "generation",
                expected: 8,
                found: b.len(),
            },
        })
}

/// The generation, read inside a transaction.
pub(crate) fn generation_in(tx: &Tx<'_>) -> TxResult<u64> {
    match parse(tx.get(TreeId::Meta, GENERATION_KEY)?.as_deref()) {
        Ok(g) => Ok(g),
        Err(e) => abort(e),
    }
}

impl Store {
    /// Takes in another replica's key changes now, if the generation moved: after a guarded
    /// write found it had (the caller holds no lifecycle guard).
    pub(crate) fn reload_if_moved(&self) {
        let w = self.write_lifecycle();
        // `write_lifecycle` reloads on a shared database when the generation moved; this is
        // for the case its read failed.
        if self
            .stored_generation()
            .is_ok_and(|g| g != self.inner.fleet.loaded.load(Ordering::Acquire))
        {
            let _ = self.reload_locked(&w);
        }
    }

    /// The generation in the database.
    pub(crate) fn stored_generation(&self) -> Result<u64, StoreError> {
        parse(
            self.inner
                .storage
                .get(TreeId::Meta, GENERATION_KEY)?
                .as_deref(),
        )
    }

    /// On a shared engine, once per interval: whether the generation moved since this
    /// replica's catalog was loaded (then the caller reloads). A failed read says nothing
    /// moved: the operation that follows needs the database too, and fails on its own.
    pub(crate) fn generation_moved(&self) -> bool {
        let fleet = &self.inner.fleet;
        if !fleet.shared || !fleet.claim_poll() {
            return false;
        }
        self.stored_generation()
            .is_ok_and(|g| g != fleet.loaded.load(Ordering::Acquire))
    }

    /// Inside a key change's transaction: the generation must still be the one the change was
    /// computed from; it moves on by one. Returns the new generation.
    pub(crate) fn bump_generation(&self, tx: &Tx<'_>, what: &str) -> TxResult<u64> {
        let stored = generation_in(tx)?;
        if stored != self.inner.fleet.loaded.load(Ordering::Acquire) {
            return abort(StoreError::Conflict {
                what: what.to_owned(),
            });
        }
        let next = stored + 1;
        tx.insert(TreeId::Meta, GENERATION_KEY, next.to_be_bytes())?;
        Ok(next)
    }
}
