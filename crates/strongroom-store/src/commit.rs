//! The one commit path of a key change, and the rules it keeps.
//!
//! A key change (create, rotate, disable, enable, destroy, move... anything that changes a
//! root, a keyring, a KEK or a DEK) is written by [`Store::commit`] and nothing else:
//!
//! 1. under the lifecycle lock held for writing: a [`KeyChange`], which only
//!    `Store::write_lifecycle` hands out, and which `commit` requires;
//! 2. the change and its audit entry in one transaction (the catalog entries sealed, their
//!    digest carried into the audit head by [`CommitTx`]), then flushed;
//! 3. then, and only once that succeeded, its in-memory [`Effects`]: the catalog entries it
//!    wrote, and the keys it must drop from the cache. Both are applied here, still under the
//!    lock, so no reader (readers hold the lock shared) can see the new state with an old key,
//!    or the old state after the commit. The in-memory catalog has no other writer but
//!    [`Store::load_catalog`], and the cache's purges require a [`KeyChange`] too.
//!
//! A commit that fails to flush leaves the database ahead of memory: the cache is emptied and
//! the catalog reloaded from the database, so nothing acts on a state the database no longer
//! agrees with.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLockReadGuard, RwLockWriteGuard};

use strongroom_core::{KeyringName, RootKeyName, RootVersion};

use crate::audit::{self, AuditKey, AuditOp, Event, Outcome};
use crate::cache::{Cached, Slot};
use crate::catalog::{self, CommitTx};
use crate::error::StoreError;
use strongroom_core::FormatError;

use crate::format::{self, KeyringEntry, RootEntry};
use crate::storage::{TreeId, TxResult};
use crate::store::{Catalog, Store};

thread_local! {
    /// Lifecycle guards this thread holds (a progress callback may call back into the store
    /// while its caller holds one): a refresh that needs the lock for writing must not wait
    /// for it then ([`Store::refresh_if_invalidated`]).
    static HELD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn enter() {
    let _ = HELD.try_with(|h| h.set(h.get().saturating_add(1)));
}

fn leave() {
    let _ = HELD.try_with(|h| h.set(h.get().saturating_sub(1)));
}

/// Whether this thread holds a lifecycle guard now.
pub(crate) fn holding_lifecycle() -> bool {
    HELD.try_with(std::cell::Cell::get).map_or(true, |n| n > 0)
}

/// The lifecycle lock, held for writing. Key changes and their in-memory effects require one.
pub(crate) struct KeyChange<'a> {
    _held: RwLockWriteGuard<'a, ()>,
}

impl<'a> KeyChange<'a> {
    pub(crate) fn new(held: RwLockWriteGuard<'a, ()>) -> Self {
        enter();
        Self { _held: held }
    }
}

impl Drop for KeyChange<'_> {
    fn drop(&mut self) {
        leave();
    }
}

/// The lifecycle lock, held shared: reads, writes, and changes that change no key.
pub(crate) struct Shared<'a> {
    _held: RwLockReadGuard<'a, ()>,
}

impl<'a> Shared<'a> {
    pub(crate) fn new(held: RwLockReadGuard<'a, ()>) -> Self {
        enter();
        Self { _held: held }
    }
}

impl Drop for Shared<'_> {
    fn drop(&mut self) {
        leave();
    }
}

/// Why a commit's write failed: before the transaction committed, or at the flush after it.
enum Failed {
    Other(StoreError),
    Flush(StoreError),
}
use Failed::{Flush, Other};

/// What a commit changes in memory once it is durable.
#[derive(Default)]
#[must_use]
pub(crate) struct Effects {
    keyrings: Vec<(KeyringName, KeyringEntry)>,
    roots: Vec<(RootKeyName, RootVersion, RootEntry)>,
    purge: Vec<u64>,
    cache: Vec<(u64, Slot, Cached)>,
}

impl Effects {
    /// Nothing in memory changes (the change is in the database only: a job cursor, a backup
    /// entry).
    pub(crate) fn none() -> Self {
        Self::default()
    }

    /// The keyring entry the commit wrote.
    pub(crate) fn keyring(mut self, name: &KeyringName, entry: KeyringEntry) -> Self {
        self.keyrings.push((name.clone(), entry));
        self
    }

    /// A root version entry the commit wrote.
    pub(crate) fn root(mut self, name: &RootKeyName, v: RootVersion, entry: RootEntry) -> Self {
        self.roots.push((name.clone(), v, entry));
        self
    }

    /// Root version entries the commit wrote.
    pub(crate) fn roots(
        mut self,
        name: &RootKeyName,
        entries: impl IntoIterator<Item = (RootVersion, RootEntry)>,
    ) -> Self {
        for (v, e) in entries {
            self.roots.push((name.clone(), v, e));
        }
        self
    }

    /// Every key of keyring `id` leaves the cache.
    pub(crate) fn purge(mut self, id: u64) -> Self {
        self.purge.push(id);
        self
    }

    /// A key the commit made goes into the cache (after the purges).
    pub(crate) fn cache(mut self, id: u64, slot: Slot, value: Cached) -> Self {
        self.cache.push((id, slot, value));
        self
    }
}

impl Store {
    /// Writes `change` and its audit entry in one transaction, flushes, then applies `effects`
    /// in memory (see the module docs): a change that must hold together either happens whole,
    /// audited, durable and visible, or not at all.
    pub(crate) fn commit(
        &self,
        held: &KeyChange<'_>,
        op: AuditOp,
        target: String,
        detail: String,
        change: impl Fn(&CommitTx<'_>) -> TxResult<()>,
        effects: Effects,
    ) -> Result<u64, StoreError> {
        self.refuse_if_stale()?;
        let (seq, key) = match self.commit_transaction(op, target, detail, true, change) {
            Ok(x) => x,
            Err(Flush(e)) => {
                self.inner.cache.purge_all(held);
                let _ = self.load_catalog();
                return Err(e);
            }
            Err(Other(e @ StoreError::Conflict { .. })) => {
                // Another replica changed the key states since this one loaded them: take
                // them in now, so that what the caller does next starts from them.
                let _ = self.reload_locked(held);
                return Err(e);
            }
            Err(Other(e)) => return Err(e),
        };
        self.apply(held, effects);
        self.write_anchor(&key);
        Ok(seq)
    }

    /// [`Store::commit`] for a change that changes no key and nothing in memory, with its
    /// audit entry: a re-encryption batch (records only), a KEK rewrapped under a newer root
    /// version (the same key). It needs the lifecycle lock only shared (the caller's guard,
    /// `_shared`), so reads and writes go on beside it; key changes wait.
    pub(crate) fn commit_shared(
        &self,
        _shared: &Shared<'_>,
        op: AuditOp,
        target: String,
        detail: String,
        change: impl Fn(&CommitTx<'_>) -> TxResult<()>,
    ) -> Result<u64, StoreError> {
        let (seq, key) = self
            .commit_transaction(op, target, detail, false, change)
            .map_err(|(Flush(e) | Other(e))| e)?;
        // A job's steps (thousands of KEKs rewrapped one commit each) anchor in the backend at
        // most once a second: each write is a few HSM calls, and an anchor a step behind only
        // weakens the check by that step (`crate::anchor`).
        if self.anchor_due() {
            self.write_anchor(&key);
        }
        Ok(seq)
    }

    /// The transaction and the flush of a commit. A key change (`key_change`) moves the
    /// key-state generation on, in the same transaction, if it is still the one this replica
    /// loaded ([`crate::fleet`]).
    fn commit_transaction(
        &self,
        op: AuditOp,
        target: String,
        detail: String,
        key_change: bool,
        change: impl Fn(&CommitTx<'_>) -> TxResult<()>,
    ) -> Result<(u64, Arc<AuditKey>), Failed> {
        let key = self.audit_key().map_err(Other)?;
        // Nothing is written over a catalog that does not verify; a store from before the
        // sealed catalog has all of it sealed by this commit.
        let sealed = self.verify_catalog_once(&key).map_err(Other)?;
        let legacy = if sealed {
            Vec::new()
        } else {
            catalog::legacy_entries(&self.inner.storage).map_err(Other)?
        };
        let conflict = format!("{} of {target}", op.as_str());
        let event = Event {
            op,
            outcome: Outcome::Ok,
            actor: &self.actor,
            replica: &self.inner.options.replica,
            target,
            detail,
        };
        let store_id = self.inner.meta.store_id;
        let (seq, generation) = self
            .inner
            .storage
            .transaction(|tx| {
                let generation = if key_change {
                    Some(self.bump_generation(tx, &conflict)?)
                } else {
                    // A change of records or wrapped keys computed from the key states this
                    // replica loaded (a re-encryption's target DEK, a rewrap's root): another
                    // replica must not have changed them since (disabled the keyring, retired
                    // the DEK, moved it), or the change would write under keys that are gone.
                    if self.inner.fleet.shared && crate::fleet::generation_in(tx)? != self.serving()
                    {
                        return crate::storage::abort(StoreError::Conflict {
                            what: conflict.clone(),
                        });
                    }
                    None
                };
                let ctx = CommitTx::new(tx, &key, &store_id);
                for (t, k, entry) in &legacy {
                    ctx.insert(*t, k.clone(), entry.clone())?;
                }
                change(&ctx)?;
                let seq = audit::append(ctx.raw(), &key, &store_id, &event, ctx.delta())?;
                Ok((seq, generation))
            })
            .map_err(Other)?;
        if let Some(g) = generation {
            self.inner.fleet.loaded.store(g, Ordering::Release);
        }
        self.inner.catalog_sealed.store(true, Ordering::Release);
        // The transaction is in the database (and may or may not be on disk): a caller with
        // effects brings memory in line with the database (`commit`).
        self.inner.storage.flush().map_err(Flush)?;
        Ok((seq, key))
    }

    /// Applies a committed change's in-memory effects.
    fn apply(&self, held: &KeyChange<'_>, effects: Effects) {
        if !effects.keyrings.is_empty() || !effects.roots.is_empty() {
            let mut cat = self.catalog_mut();
            for (name, entry) in effects.keyrings {
                cat.ids.insert(entry.id, name.clone());
                cat.keyrings.insert(name, Arc::new(entry));
            }
            for (name, v, entry) in effects.roots {
                cat.roots.entry(name).or_default().insert(v, entry);
            }
        }
        for id in effects.purge {
            self.inner.cache.purge_keyring(held, id);
        }
        let now = std::time::Instant::now();
        for (id, slot, value) in effects.cache {
            self.inner.cache.insert(id, slot, value, now);
        }
    }

    /// The in-memory catalog, for writing: only the commit path and a reload write it.
    fn catalog_mut(&self) -> RwLockWriteGuard<'_, Catalog> {
        self.inner
            .catalog
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the whole catalog from the database into memory (at open, and whenever the
    /// database may have changed under the store): the one other writer of the in-memory
    /// catalog.
    pub(crate) fn load_catalog(&self) -> Result<(), StoreError> {
        // Read before the entries: a change committed in between makes the catalog newer than
        // the generation it is taken at, and the next poll reloads it again (never the other
        // way round).
        let generation = self.stored_generation()?;
        let mut cat = Catalog::default();
        for item in self.inner.storage.scan_prefix(TreeId::Roots, []) {
            let (k, v) = item?;
            let (name, version) =
                format::parse_root_key(&k).map_err(|source| StoreError::Corrupt {
                    what: "a root key entry".into(),
                    source,
                })?;
            let e = format::split_sealed("root key entry", &v)
                .and_then(|s| RootEntry::parse(s.body))
                .map_err(|source| StoreError::Corrupt {
                    what: format!("root key entry {name}/{version}"),
                    source,
                })?;
            cat.roots.entry(name).or_default().insert(version, e);
        }
        for item in self.inner.storage.scan_prefix(TreeId::Keyrings, []) {
            let (k, v) = item?;
            let name = format::keyring_name(&k).map_err(|source| StoreError::Corrupt {
                what: "a keyring entry".into(),
                source,
            })?;
            let e = format::split_sealed("keyring entry", &v)
                .and_then(|s| KeyringEntry::parse(s.body))
                .map_err(|source| StoreError::Corrupt {
                    what: format!("keyring entry {name}"),
                    source,
                })?;
            if let Some(other) = cat.ids.insert(e.id, name.clone()) {
                // Two keyrings under one id would share records and keys: a destruction of one
                // would purge the other's.
                return Err(StoreError::Corrupt {
                    what: format!("keyring entry {name}"),
                    source: FormatError::Invalid {
                        what: "keyring entry",
                        field: "id",
                        reason: format!("id {} is also keyring {other}'s", e.id),
                    },
                });
            }
            cat.keyrings.insert(name, Arc::new(e));
        }
        *self.catalog_mut() = cat;
        self.inner.fleet.loaded.store(generation, Ordering::Release);
        Ok(())
    }
}
