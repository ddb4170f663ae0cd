//! Destruction: crypto-shredding of a keyring (its wrapped keys erased in one audited
//! transaction, its records purged resumably, the database compacted) and of a root key (every
//! keyring under it first, then its versions in the backend), now or when a scheduled
//! destruction falls due.

use std::time::Duration;

use strongroom_core::{
    KeyState, KeyringName, RootKeyId, RootKeyName, RootVersion, Timestamp, Transition,
};

use crate::audit::AuditOp;
use crate::commit::{Effects, KeyChange};
use crate::error::StoreError;
use crate::format::KeyringEntry;
use crate::lifecycle::transition;
use crate::storage::{TreeId, WriteBatch};
use crate::store::Store;

/// What a keyring destruction erased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destroyed {
    /// The keyring.
    pub keyring: KeyringName,
    /// Records purged by this call (on a fleet, a purge another replica was running at the
    /// time carries them out, uncounted here: `pending_jobs` lists it until it is done).
    pub records: u64,
    /// Roots it lived under before a move: copies of the store made before that move are only
    /// as gone as those roots.
    pub former_roots: Vec<RootKeyName>,
}

pub(crate) const PURGE_PREFIX: &[u8] = b"purge/";

pub(crate) const BACKEND_DESTROY_PREFIX: &[u8] = b"backend-destroy/";

/// The job of destroying root `name`'s keys in the backend, written in the same transaction that
/// marks the root destroyed in the store, removed once the backend has destroyed them.
pub(crate) fn backend_destroy_job_key(name: &RootKeyName) -> Vec<u8> {
    let mut k = BACKEND_DESTROY_PREFIX.to_vec();
    k.extend_from_slice(name.as_str().as_bytes());
    k
}

pub(crate) fn purge_job_key(id: u64) -> Vec<u8> {
    let mut k = PURGE_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl Store {
    /// Schedules the destruction of root key `name` (every version, and every keyring under
    /// it) after `after` (default: the store's destruction delay). Everything under it is
    /// refused from now on, and the key is disabled in the backend where it can be;
    /// [`Store::cancel_root_destruction`] undoes it until then (leaving it disabled).
    ///
    /// # Errors
    /// [`StoreError::InUse`] for the primary root (it protects the audit log), or a state error.
    pub fn schedule_root_destruction(
        &self,
        name: &RootKeyName,
        after: Option<Duration>,
    ) -> Result<Timestamp, StoreError> {
        let w = self.write_lifecycle();
        let not_before =
            Timestamp::now().saturating_add(after.unwrap_or(self.inner.options.destruction_delay));
        self.audited(
            AuditOp::RootDestructionScheduled,
            format!("root {name}"),
            || {
                self.refuse_primary(name)?;
                self.refuse_if_moving_off(name)?;
                self.root_transition(
                    &w,
                    name,
                    AuditOp::RootDestructionScheduled,
                    Transition::ScheduleDestruction { not_before },
                    format!("not before {not_before}"),
                    None,
                )?;
                // Refused here from now on; in the backend too, for any other user of the HSM.
                self.disable_in_backend(name)?;
                Ok(not_before)
            },
        )
    }

    /// Cancels a scheduled root destruction; the root is left disabled.
    ///
    /// # Errors
    /// A state error if none is scheduled.
    pub fn cancel_root_destruction(&self, name: &RootKeyName) -> Result<(), StoreError> {
        let w = self.write_lifecycle();
        self.audited(
            AuditOp::RootDestructionCancelled,
            format!("root {name}"),
            || {
                self.root_transition(
                    &w,
                    name,
                    AuditOp::RootDestructionCancelled,
                    Transition::CancelDestruction,
                    "left disabled".into(),
                    None,
                )
                .map(|_| ())
            },
        )
    }

    /// Destroys root key `name` now: every version in the backend, and every keyring under it
    /// (their wrapped keys and records erased, the database compacted). Irreversible:
    /// crypto-shredding, in this store and in every copy of it (the key never left the
    /// backend). Refused while a keyring is still moving off it.
    ///
    /// # Errors
    /// [`StoreError::InUse`] for the primary root; a backend error (the store already counts it
    /// destroyed, and [`Store::pending_jobs`] lists the backend's part until a second call, or
    /// `strongroom resume`, finishes it).
    pub fn destroy_root_now(&self, name: &RootKeyName) -> Result<Vec<Destroyed>, StoreError> {
        let w = self.write_lifecycle();
        let r = self.audited(AuditOp::RootDestroyed, format!("root {name}"), || {
            self.refuse_primary(name)?;
            self.destroy_root_locked(&w, name, Transition::DestroyNow)
        });
        drop(w);
        let destroyed = r?;
        let purged = self.finish_purges()?;
        self.compact_if_asked()?;
        Ok(self.with_purged(destroyed, &purged))
    }

    /// Finishes the destruction of root key `name` in the backend, for a root the store already
    /// counts destroyed ([`PendingJob::BackendDestroy`](crate::PendingJob::BackendDestroy)).
    /// Never destroys a root that is not destroyed in the store.
    ///
    /// # Errors
    /// [`StoreError::InUse`] for a root that is not destroyed in the store; a backend error.
    pub fn finish_root_destruction(&self, name: &RootKeyName) -> Result<(), StoreError> {
        if !matches!(
            self.read_catalog().current_root(name),
            Err(StoreError::RootDestroyed { .. })
        ) {
            return Err(StoreError::InUse(format!(
                "root key {name} is not destroyed in the store; destroy it with `strongroom root destroy {name}`"
            )));
        }
        self.destroy_root_now(name).map(|_| ())
    }

    /// Fills in the records purged for each destroyed keyring.
    pub(crate) fn with_purged(
        &self,
        mut destroyed: Vec<Destroyed>,
        purged: &std::collections::BTreeMap<u64, u64>,
    ) -> Vec<Destroyed> {
        let cat = self.read_catalog();
        for d in &mut destroyed {
            if let Some(kr) = cat.keyrings.get(&d.keyring) {
                d.records = purged.get(&kr.id).copied().unwrap_or(0);
            }
        }
        destroyed
    }

    pub(crate) fn destroy_root_locked(
        &self,
        w: &KeyChange<'_>,
        name: &RootKeyName,
        t: Transition,
    ) -> Result<Vec<Destroyed>, StoreError> {
        let mut destroyed = Vec::new();
        // Several commits (each keyring, then the root): one refused because another replica
        // changed the key states first changed nothing, but those before it stand. The rest is
        // tried again from the reloaded states (the commit reloaded them), so that a `Conflict`
        // never follows a partial destruction unless a storm of key changes outlasts the
        // budget (then a second call finishes it).
        let mut stale = crate::fleet::StaleBudget::default();
        loop {
            match self.destroy_root_in_store(w, name, t, &mut destroyed) {
                Err(StoreError::Conflict { .. }) if stale.again() => {}
                r => break r?,
            }
        }
        let all: Vec<RootVersion> = self
            .read_catalog()
            .roots
            .get(name)
            .map(|v| v.keys().copied().collect())
            .unwrap_or_default();
        for v in all {
            let id = RootKeyId::new(name.clone(), v);
            self.destroy_in_backend(&id).map_err(StoreError::backend(format!(
                "destroying {id} in the backend (the store counts it destroyed; `strongroom resume` finishes it in the backend)"
            )))?;
        }
        let job = backend_destroy_job_key(name);
        if self.inner.storage.get(TreeId::Jobs, &job)?.is_some() {
            self.inner.storage.remove(TreeId::Jobs, &job)?;
            self.inner.storage.flush()?;
        }
        Ok(destroyed)
    }

    /// The store's part of [`Store::destroy_root_locked`] from the key states of now: the
    /// keyrings under the root not yet destroyed (added to `destroyed` as each commits), then
    /// the root itself.
    fn destroy_root_in_store(
        &self,
        w: &KeyChange<'_>,
        name: &RootKeyName,
        t: Transition,
        destroyed: &mut Vec<Destroyed>,
    ) -> Result<(), StoreError> {
        self.refuse_if_moving_off(name)?;
        let already = matches!(
            self.read_catalog().current_root(name),
            Err(StoreError::RootDestroyed { .. })
        );
        let versions = if already {
            Vec::new()
        } else {
            self.live_root_versions(name)
        };
        // The keyrings go first (each its own transaction): their keys are what the root protects.
        for (kr_name, kr) in self.keyrings_under(name) {
            if kr.state != KeyState::Destroyed {
                self.destroy_keyring_locked(w, &kr_name, Transition::DestroyNow)?;
                destroyed.push(Destroyed {
                    keyring: kr_name,
                    records: 0,
                    former_roots: kr.former_roots.clone(),
                });
            }
        }
        if !versions.is_empty() {
            self.root_transition(
                w,
                name,
                AuditOp::RootDestroyed,
                t,
                format!("{} versions", versions.len()),
                // If the backend's part fails below (or the process dies first), this job
                // remains: `pending_jobs` lists it and `resume` finishes it.
                Some(backend_destroy_job_key(name)),
            )?;
        }
        Ok(())
    }

    // ===================== keyrings =====================

    /// Schedules the destruction of keyring `name` after `after` (default: the store's
    /// destruction delay, 7 days unless configured). It is refused from now on and destroyed
    /// when the time comes (at the next open or [`Store::run_due_destructions`]).
    ///
    /// # Errors
    /// A state that does not allow it.
    pub fn schedule_keyring_destruction(
        &self,
        name: &KeyringName,
        after: Option<Duration>,
    ) -> Result<Timestamp, StoreError> {
        let w = self.write_lifecycle();
        let not_before =
            Timestamp::now().saturating_add(after.unwrap_or(self.inner.options.destruction_delay));
        self.audited(
            AuditOp::KeyringDestructionScheduled,
            format!("keyring {name}"),
            || {
                self.keyring_transition(
                    &w,
                    name,
                    AuditOp::KeyringDestructionScheduled,
                    Transition::ScheduleDestruction { not_before },
                    format!("not before {not_before}"),
                )?;
                Ok(not_before)
            },
        )
    }

    /// Cancels a scheduled destruction; the keyring is left disabled.
    ///
    /// # Errors
    /// A state error if none is scheduled.
    pub fn cancel_keyring_destruction(&self, name: &KeyringName) -> Result<(), StoreError> {
        let w = self.write_lifecycle();
        self.audited(
            AuditOp::KeyringDestructionCancelled,
            format!("keyring {name}"),
            || {
                self.keyring_transition(
                    &w,
                    name,
                    AuditOp::KeyringDestructionCancelled,
                    Transition::CancelDestruction,
                    "left disabled".into(),
                )
                .map(|_| ())
            },
        )
    }

    /// Destroys keyring `name` now: its wrapped KEKs and DEKs are erased in one transaction
    /// (from then on nothing of it can be read from this store: crypto-shredding), then its
    /// records are purged, and the database is compacted ([`Store::compact`]), so that none of
    /// their bytes stay in the store's files. A copy of the store made before (a backup, a
    /// snapshot) still holds the wrapped keys, unwrappable while the root above them lives:
    /// destroy the root ([`Store::destroy_root_now`]) to make the data unrecoverable everywhere.
    ///
    /// # Errors
    /// A keyring already destroyed, or a storage error.
    pub fn destroy_keyring_now(&self, name: &KeyringName) -> Result<Destroyed, StoreError> {
        {
            let w = self.write_lifecycle();
            self.audited(AuditOp::KeyringDestroyed, format!("keyring {name}"), || {
                self.destroy_keyring_locked(&w, name, Transition::DestroyNow)
            })?;
        }
        let purged = self.finish_purges()?;
        self.compact_if_asked()?;
        let kr = self.read_catalog().keyring(name)?;
        Ok(Destroyed {
            keyring: name.clone(),
            records: purged.get(&kr.id).copied().unwrap_or(0),
            former_roots: kr.former_roots.clone(),
        })
    }

    pub(crate) fn destroy_keyring_locked(
        &self,
        w: &KeyChange<'_>,
        name: &KeyringName,
        t: Transition,
    ) -> Result<(), StoreError> {
        let kr = self.read_catalog().keyring(name)?;
        let state = transition(kr.state, t)?;
        let mut keys: Vec<(TreeId, Vec<u8>)> = Vec::new();
        for tree in [TreeId::Keks, TreeId::Deks] {
            for item in self.inner.storage.scan_prefix(tree, kr.id.to_be_bytes()) {
                keys.push((tree, item?.0.to_vec()));
            }
        }
        // Its bookkeeping goes too: DEK use counters and an unfinished re-encryption.
        let mut jobs: Vec<Vec<u8>> = vec![
            crate::jobs::reencrypt_job_key(kr.id),
            crate::moves::move_job_key(kr.id),
        ];
        for item in self
            .inner
            .storage
            .scan_prefix(TreeId::Jobs, crate::records::counter_prefix(kr.id))
        {
            jobs.push(item?.0.to_vec());
        }
        let entry = KeyringEntry {
            state,
            // A move it was in the middle of ends with it: nothing of it is left to move (found
            // by the lifecycle model: the destroyed keyring kept its old root from going).
            moving_from: None,
            ..(*kr).clone()
        };
        self.commit(
            w,
            AuditOp::KeyringDestroyed,
            format!("keyring {name}"),
            format!("{} wrapped keys erased", keys.len()),
            |tx| {
                for (tree, k) in &keys {
                    tx.remove(*tree, k.clone())?;
                }
                for k in &jobs {
                    tx.remove(TreeId::Jobs, k.clone())?;
                }
                tx.insert(TreeId::Keyrings, name.as_str().as_bytes(), entry.to_bytes())?;
                // Its records are purged next, resumably: this marker survives a crash. Then the
                // database is compacted, so that none of its bytes stay in the files.
                tx.insert(TreeId::Jobs, purge_job_key(kr.id), Vec::new())?;
                tx.insert(TreeId::Jobs, crate::compact::COMPACT_JOB, Vec::new())
            },
            Effects::none().keyring(name, entry.clone()).purge(kr.id),
        )?;
        Ok(())
    }

    /// Removes the records of destroyed keyrings, in batches; resumes an interrupted purge.
    /// Returns the records removed, by keyring id.
    ///
    /// # Errors
    /// A storage error.
    pub(crate) fn finish_purges(&self) -> Result<std::collections::BTreeMap<u64, u64>, StoreError> {
        let jobs: Vec<Vec<u8>> = self
            .inner
            .storage
            .scan_prefix(TreeId::Jobs, PURGE_PREFIX)
            .map(|r| r.map(|(k, _)| k.to_vec()))
            .collect::<Result<_, _>>()?;
        let mut removed = std::collections::BTreeMap::new();
        if jobs.is_empty() {
            return Ok(removed);
        }
        // One purger at a time. Another runner (a replica, or a thread of this process) that
        // holds it finishes the purges it found; one written after it looked is listed by
        // `pending_jobs` and finished at the next open or destruction.
        let _lease = match self.claim("purge", "the purge of destroyed keyrings' records") {
            Err(StoreError::JobBusy { .. }) => return Ok(removed),
            r => r?,
        };
        for job in jobs {
            let Ok(id) = <[u8; 8]>::try_from(&job[PURGE_PREFIX.len()..]) else {
                continue;
            };
            // Only the records of a keyring that is destroyed are ever purged: a damaged or
            // forged job entry must not wipe a live keyring.
            let destroyed = {
                let cat = self.read_catalog();
                cat.ids
                    .get(&u64::from_be_bytes(id))
                    .and_then(|n| cat.keyrings.get(n))
                    .is_some_and(|k| k.state == KeyState::Destroyed)
            };
            if !destroyed {
                continue;
            }
            loop {
                let batch: Vec<Vec<u8>> = self
                    .inner
                    .storage
                    .scan_prefix(TreeId::Records, id)
                    .take(1024)
                    .map(|r| r.map(|(k, _)| k.to_vec()))
                    .collect::<Result<_, _>>()?;
                if batch.is_empty() {
                    break;
                }
                let mut b = WriteBatch::default();
                for k in &batch {
                    b.remove(k.as_slice());
                }
                self.inner.storage.apply_batch(
                    TreeId::Records,
                    b,
                    "purging the records of a destroyed keyring",
                )?;
                *removed.entry(u64::from_be_bytes(id)).or_insert(0) += batch.len() as u64;
            }
            self.inner.storage.remove(TreeId::Jobs, &job)?;
            self.inner.storage.flush()?;
        }
        Ok(removed)
    }

    /// Destroys every keyring and root whose scheduled destruction is due. Runs at every open.
    ///
    /// # Errors
    /// A storage or backend error.
    pub fn run_due_destructions(&self) -> Result<Vec<Destroyed>, StoreError> {
        let now = Timestamp::now();
        let mut out = Vec::new();
        let (due_keyrings, due_roots) = self.due_destructions(now);
        if due_keyrings.is_empty() && due_roots.is_empty() {
            return Ok(out);
        }
        // One runner at a time across a fleet; each destruction is also a key change, refused
        // if another replica changed the key states first (`crate::fleet`).
        let _lease = self.claim("due-destructions", "the destructions that fell due")?;
        // A destruction refused because another replica changed the key states first (any
        // key change, or its compaction's entry) has changed nothing, and this replica has
        // taken the new states in: what is due is read again and the rest carried out.
        let mut stale = crate::fleet::StaleBudget::default();
        'again: loop {
            let w = self.write_lifecycle();
            // As of now: another runner may have carried some out before this one claimed.
            let (due_keyrings, due_roots) = self.due_destructions(now);
            for name in due_keyrings {
                match self.audited(AuditOp::KeyringDestroyed, format!("keyring {name}"), || {
                    self.destroy_keyring_locked(&w, &name, Transition::DestroyDue { now })
                }) {
                    Err(StoreError::Conflict { .. }) if stale.again() => {
                        continue 'again;
                    }
                    r => r?,
                };
                stale.reset();
                let former_roots = self.read_catalog().keyring(&name)?.former_roots.clone();
                out.push(Destroyed {
                    keyring: name,
                    records: 0,
                    former_roots,
                });
            }
            for name in due_roots {
                let d = match self.audited(AuditOp::RootDestroyed, format!("root {name}"), || {
                    self.destroy_root_locked(&w, &name, Transition::DestroyDue { now })
                }) {
                    Err(StoreError::Conflict { .. }) if stale.again() => {
                        continue 'again;
                    }
                    r => r?,
                };
                stale.reset();
                out.extend(d);
            }
            break;
        }
        let purged = self.finish_purges()?;
        self.compact_if_asked()?;
        Ok(self.with_purged(out, &purged))
    }

    /// The keyrings and roots whose scheduled destruction is due at `now`.
    pub(crate) fn due_destructions(&self, now: Timestamp) -> (Vec<KeyringName>, Vec<RootKeyName>) {
        let cat = self.read_catalog();
        let keyrings = cat
            .keyrings
            .iter()
            .filter(|(_, e)| matches!(e.state, KeyState::PendingDestruction { not_before } if not_before <= now))
            .map(|(n, _)| n.clone())
            .collect();
        let roots = cat
            .roots
            .keys()
            .filter(|n| matches!(cat.current_root(n), Ok((_, KeyState::PendingDestruction { not_before })) if not_before <= now))
            .cloned()
            .collect();
        (keyrings, roots)
    }
}
