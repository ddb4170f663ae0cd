//! The key lifecycle: root keys and keyrings, created, rotated, moved, disabled, enabled,
//! scheduled for destruction and destroyed. Each change is one transaction with its audit entry,
//! made under the lifecycle write lock and flushed before the call returns. Backend calls come
//! before the transaction (a transaction may be retried and must not have outside effects).

use std::sync::Arc;
use std::time::Duration;

use strongroom_core::blob::{WrapAlg, WrappedKey, WrappingKeyRef};
use strongroom_core::crypto::kwp_wrap_bound;
use strongroom_core::{
    BackendError, DekVersion, FormatError, KekVersion, Key256, KeyState, KeyringName, RootKeyId,
    RootKeyName, RootVersion, Timestamp, Transition,
};

use crate::audit::AuditOp;
use crate::cache::{Cached, Slot};
use crate::commit::{Effects, KeyChange};
use crate::error::StoreError;
use crate::format::{self, KeyringEntry, RootEntry};
use crate::storage::{TreeId, WriteBatch};
use crate::store::{
    Catalog, NEXT_ID_KEY, Store, audit_key_context, dek_context, ensure_backend_root,
};
use crate::telemetry;

/// A root key as the store sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootInfo {
    /// Its name.
    pub name: RootKeyName,
    /// Every version and its state, oldest first.
    pub versions: Vec<(RootVersion, KeyState)>,
    /// The version new KEKs are wrapped under.
    pub current: Option<RootVersion>,
    /// Keyrings under it.
    pub keyrings: usize,
    /// Whether it protects the audit log (the primary root).
    pub primary: bool,
}

/// A keyring as the store sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyringInfo {
    /// Its name.
    pub name: KeyringName,
    /// Its state.
    pub state: KeyState,
    /// The root key its KEKs are wrapped under.
    pub root: RootKeyName,
    /// The KEK version in use.
    pub current_kek: KekVersion,
    /// The DEK version new records are sealed with.
    pub current_dek: DekVersion,
    /// DEK versions the keyring holds (older ones open older records).
    pub dek_versions: Vec<DekVersion>,
    /// KEK versions and the root version wrapping each.
    pub kek_versions: Vec<(KekVersion, Option<RootKeyId>)>,
    /// When it was created.
    pub created: Timestamp,
    /// While a move is unfinished: the root it still depends on (its older records).
    pub moving_from: Option<RootKeyName>,
    /// Roots it lived under before a move, oldest first: copies of the store made before that
    /// move are only as gone as those roots.
    pub former_roots: Vec<RootKeyName>,
}

/// Progress of a long operation, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Items done so far (including those done before a resume).
    pub done: u64,
    /// Items in all, as far as known.
    pub total: u64,
}

/// What a keyring destruction erased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destroyed {
    /// The keyring.
    pub keyring: KeyringName,
    /// Records purged.
    pub records: u64,
    /// Roots it lived under before a move: copies of the store made before that move are only
    /// as gone as those roots.
    pub former_roots: Vec<RootKeyName>,
}

/// A wrapped KEK as found in the store.
struct KekBlob {
    keyring_id: u64,
    version: u32,
    bytes: Vec<u8>,
    root: RootKeyId,
}

fn transition(state: KeyState, t: Transition) -> Result<KeyState, StoreError> {
    Ok(state.apply(t)?)
}

pub(crate) const PURGE_PREFIX: &[u8] = b"purge/";

pub(crate) const BACKEND_DESTROY_PREFIX: &[u8] = b"backend-destroy/";

/// The job of destroying root `name`'s keys in the backend, written in the same transaction that
/// marks the root destroyed in the store, removed once the backend has destroyed them.
fn backend_destroy_job_key(name: &RootKeyName) -> Vec<u8> {
    let mut k = BACKEND_DESTROY_PREFIX.to_vec();
    k.extend_from_slice(name.as_str().as_bytes());
    k
}

fn purge_job_key(id: u64) -> Vec<u8> {
    let mut k = PURGE_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl Store {
    // ===================== root keys =====================

    /// Every root key.
    #[must_use]
    pub fn roots(&self) -> Vec<RootInfo> {
        let cat = self.read_catalog();
        cat.roots
            .iter()
            .map(|(name, versions)| RootInfo {
                name: name.clone(),
                versions: versions.iter().map(|(v, e)| (*v, e.state)).collect(),
                current: cat.current_root(name).ok().map(|(v, _)| v),
                keyrings: cat.keyrings.values().filter(|k| &k.root == name).count(),
                primary: *name == self.inner.meta.primary_root,
            })
            .collect()
    }

    /// One root key.
    ///
    /// # Errors
    /// [`StoreError::RootNotFound`].
    pub fn root(&self, name: &RootKeyName) -> Result<RootInfo, StoreError> {
        self.roots()
            .into_iter()
            .find(|r| &r.name == name)
            .ok_or_else(|| StoreError::RootNotFound { name: name.clone() })
    }

    /// Creates root key `name` (version 1) in the backend and the store.
    ///
    /// # Errors
    /// [`StoreError::RootExists`] or a backend error.
    pub fn create_root(&self, name: &RootKeyName) -> Result<RootInfo, StoreError> {
        let w = self.write_lifecycle();
        self.audited(AuditOp::RootCreated, format!("root {name}"), || {
            if self.read_catalog().roots.contains_key(name) {
                return Err(StoreError::RootExists { name: name.clone() });
            }
            let id = RootKeyId::new(name.clone(), RootVersion::FIRST);
            ensure_backend_root(&*self.inner.backend, &id)?;
            let entry = RootEntry {
                state: KeyState::Enabled,
                created: Timestamp::now(),
            };
            self.commit(
                &w,
                AuditOp::RootCreated,
                format!("root {id}"),
                String::new(),
                |tx| {
                    tx.insert(
                        TreeId::Roots,
                        format::root_key(name, RootVersion::FIRST),
                        entry.to_bytes(),
                    )
                },
                Effects::none().root(name, RootVersion::FIRST, entry),
            )?;
            Ok(())
        })?;
        self.root(name)
    }

    /// Records in the audit log that root key `name` (version 1) is a key adopted from the
    /// backend by `selector`, and whether the backend's adoption checks were overridden
    /// (`weak`: a key that was once extractable, not always sensitive, or not a token object).
    ///
    /// # Errors
    /// [`StoreError::RootNotFound`], or the audit log cannot be written.
    pub fn record_adoption(
        &self,
        name: &RootKeyName,
        selector: &str,
        weak: bool,
    ) -> Result<(), StoreError> {
        let w = self.write_lifecycle();
        if !self.read_catalog().roots.contains_key(name) {
            return Err(StoreError::RootNotFound { name: name.clone() });
        }
        self.commit(&w, AuditOp::RootAdopted,
            format!("root {name}/v1"),
            if weak {
                format!(
                    "adopted the backend's key {selector} with the adoption checks overridden (--allow-weak-adoption): it may once have been extractable, or not always sensitive, or not a token object"
                )
            } else {
                format!("adopted the backend's key {selector}")
            },
            |_| Ok(()), Effects::none(),
        )
        .map(|_| ())
    }

    /// Rotates root key `name`: makes a new version, then rewraps every KEK under the old
    /// versions under it, one at a time ([`Store::rewrap_root`]; resumable after a crash).
    /// Returns the new version.
    ///
    /// # Errors
    /// [`StoreError::RootNotFound`], a root that is not enabled, or a backend error.
    pub fn rotate_root(
        &self,
        name: &RootKeyName,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RootVersion, StoreError> {
        let version = {
            let w = self.write_lifecycle();
            self.audited(AuditOp::RootRotated, format!("root {name}"), || {
                let (current, next) = {
                    let cat = self.read_catalog();
                    let current = cat.usable_root(name)?;
                    let last = cat
                        .roots
                        .get(name)
                        .and_then(|v| v.keys().next_back().copied())
                        .unwrap_or(current);
                    (
                        current,
                        last.next().ok_or_else(|| {
                            StoreError::InUse(format!("root key {name} has no versions left"))
                        })?,
                    )
                };
                let id = RootKeyId::new(name.clone(), next);
                ensure_backend_root(&*self.inner.backend, &id)?;
                // The audit key moves to the new version with the rotation of the primary root.
                let audit_blob = if *name == self.inner.meta.primary_root {
                    let key = self.audit_key_material()?;
                    Some(
                        self.backend_wrap(&id, &key, &audit_key_context(&self.inner.meta.store_id))
                            .map_err(StoreError::backend(format!(
                                "wrapping the audit key under {id}"
                            )))?
                            .to_bytes(),
                    )
                } else {
                    None
                };
                let entry = RootEntry {
                    state: KeyState::Enabled,
                    created: Timestamp::now(),
                };
                self.commit(
                    &w,
                    AuditOp::RootRotated,
                    format!("root {name}"),
                    format!("{current} -> {next}"),
                    |tx| {
                        tx.insert(
                            TreeId::Roots,
                            format::root_key(name, next),
                            entry.to_bytes(),
                        )?;
                        if let Some(b) = &audit_blob {
                            tx.insert(TreeId::Meta, crate::store::AUDIT_KEY_KEY, b.clone())?;
                        }
                        Ok(())
                    },
                    Effects::none().root(name, next, entry),
                )?;
                Ok(next)
            })?
        };
        self.rewrap_root(name, progress)?;
        Ok(version)
    }

    /// The audit key's material, for rewrapping it (kept only as long as needed).
    fn audit_key_material(&self) -> Result<Key256, StoreError> {
        let raw = self
            .inner
            .storage
            .get(TreeId::Meta, crate::store::AUDIT_KEY_KEY)?
            .ok_or_else(|| StoreError::KeyIntegrity {
                what: "the audit key (missing)".into(),
            })?;
        let blob = WrappedKey::parse(&raw).map_err(|source| StoreError::Corrupt {
            what: "the wrapped audit key".into(),
            source,
        })?;
        self.backend_unwrap(&blob, &audit_key_context(&self.inner.meta.store_id))
            .map_err(|e| match e {
                BackendError::Integrity => StoreError::KeyIntegrity {
                    what: "the wrapped audit key".into(),
                },
                e => StoreError::AuditUnavailable {
                    root: self.inner.meta.primary_root.clone(),
                    reason: e.to_string(),
                },
            })
    }

    /// Every KEK blob wrapped under root `name` but not under `except`.
    fn keks_under(
        &self,
        name: &RootKeyName,
        except: Option<RootVersion>,
    ) -> Result<Vec<KekBlob>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.storage.scan_prefix(TreeId::Keks, []) {
            let (k, v) = item?;
            let blob = WrappedKey::parse(&v).map_err(|source| StoreError::Corrupt {
                what: "a wrapped KEK".into(),
                source,
            })?;
            if let Some(root) = blob.root()
                && &root.name == name
                && Some(root.version) != except
            {
                let (id, ver) =
                    format::parse_versioned_key(&k).map_err(|source| StoreError::Corrupt {
                        what: "a wrapped KEK's tree key".into(),
                        source,
                    })?;
                out.push(KekBlob {
                    keyring_id: id,
                    version: ver,
                    bytes: v.to_vec(),
                    root: root.clone(),
                });
            }
        }
        Ok(out)
    }

    /// Rewraps, one KEK at a time, every KEK under an older version of root `name` under its
    /// current version. Safe to run again (after a crash, or to finish a rotation): it only
    /// touches KEKs still under an old version, and records are never touched. Returns the KEKs
    /// it rewrapped (one that a KEK rotation replaced meanwhile is skipped, not counted).
    ///
    /// # Errors
    /// A root that is not enabled, or a backend error (KEKs done so far stay done).
    pub fn rewrap_root(
        &self,
        name: &RootKeyName,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<u64, StoreError> {
        let mut progress = telemetry::job_progress("rewrap", progress);
        let target = self.read_catalog().usable_root(name)?;
        let todo = self.keks_under(name, Some(target))?;
        let total = todo.len() as u64;
        let mut done = 0u64;
        let mut rewrapped = 0u64;
        progress(Progress { done, total });
        for KekBlob {
            keyring_id: id,
            version: ver,
            bytes: old_bytes,
            ..
        } in todo
        {
            // Each step is a key change of its own: under the lock held for writing.
            let w = self.write_lifecycle();
            let Some(kr_name) = self.read_catalog().ids.get(&id).cloned() else {
                continue;
            };
            let Ok(kr) = self.read_catalog().keyring(&kr_name) else {
                continue;
            };
            let v = KekVersion::new(ver).map_err(|_| StoreError::KeyIntegrity {
                what: format!("KEK of keyring {kr_name} (bad version)"),
            })?;
            let (kek, _) = self.kek(&kr_name, &kr, v)?;
            let to = RootKeyId::new(name.clone(), target);
            let new = self.wrap_kek(&to, &kek, &kr_name, id, v)?.to_bytes();
            // Each step is its own commit with its audit entry. The KEK is replaced only if it
            // is unchanged since it was read (a KEK rotation may have replaced or removed it).
            let tree_key = format::versioned_key(id, ver).to_vec();
            let replaced = std::cell::Cell::new(false);
            let unchanged = |now: Option<&[u8]>| now == Some(&old_bytes[..]);
            if unchanged(self.inner.storage.get(TreeId::Keks, &tree_key)?.as_deref()) {
                self.commit(
                    &w,
                    AuditOp::RootRewrapped,
                    format!("root {name}"),
                    format!("KEK {v} of keyring {kr_name} rewrapped under {to}"),
                    |tx| {
                        replaced.set(false);
                        if unchanged(tx.get(TreeId::Keks, &tree_key)?.as_deref()) {
                            tx.insert(TreeId::Keks, tree_key.clone(), new.clone())?;
                            replaced.set(true);
                        }
                        Ok(())
                    },
                    Effects::none(),
                )?;
            }
            if replaced.get() {
                rewrapped += 1;
            }
            done += 1;
            progress(Progress { done, total });
        }
        Ok(rewrapped)
    }

    /// Destroys an old version of root `name` in the backend, once nothing refers to it: no KEK
    /// is wrapped under it (rewrap first) and it is not the current version.
    ///
    /// # Errors
    /// [`StoreError::InUse`] while something refers to it, or a backend error.
    pub fn retire_root_version(
        &self,
        name: &RootKeyName,
        version: RootVersion,
    ) -> Result<(), StoreError> {
        let w = self.write_lifecycle();
        let id = RootKeyId::new(name.clone(), version);
        self.audited(AuditOp::RootVersionRetired, format!("root {id}"), || {
            let entry = {
                let cat = self.read_catalog();
                let (current, _) = cat.current_root(name)?;
                if current == version {
                    return Err(StoreError::InUse(format!("{id} is the current version of root key {name}; rotate it first")));
                }
                *cat.roots
                    .get(name)
                    .and_then(|v| v.get(&version))
                    .ok_or_else(|| StoreError::RootNotFound { name: name.clone() })?
            };
            let users = self.keks_under(name, None)?.into_iter().filter(|b| b.root.version == version).count();
            if users > 0 {
                return Err(StoreError::InUse(format!(
                    "{users} KEKs are still wrapped under {id}; finish the rewrap (`strongroom root rotate` resumes it) before retiring it"
                )));
            }
            let state = transition(entry.state, Transition::DestroyNow)?;
            // Idempotent: a retire that destroyed the key and died before its commit runs again.
            self.destroy_in_backend(&id)
                .map_err(StoreError::backend(format!("destroying {id} in the backend")))?;
            let new = RootEntry { state, ..entry };
            self.commit(&w, AuditOp::RootVersionRetired, format!("root {id}"), String::new(), |tx| {
                tx.insert(TreeId::Roots, format::root_key(name, version), new.to_bytes())
            }, Effects::none().root(name, version, new))?;
            Ok(())
        })
    }

    /// Applies `t` to every live version of root `name` in the store (one transaction), then
    /// purges the cache of its keyrings. Returns the versions changed.
    fn root_transition(
        &self,
        w: &KeyChange<'_>,
        name: &RootKeyName,
        op: AuditOp,
        t: Transition,
        detail: String,
        job: Option<Vec<u8>>,
    ) -> Result<Vec<RootVersion>, StoreError> {
        let changes: Vec<(RootVersion, RootEntry)> = {
            let cat = self.read_catalog();
            let versions = cat
                .roots
                .get(name)
                .ok_or_else(|| StoreError::RootNotFound { name: name.clone() })?;
            let mut out = Vec::new();
            for (v, e) in versions
                .iter()
                .filter(|(_, e)| e.state != KeyState::Destroyed)
            {
                out.push((
                    *v,
                    RootEntry {
                        state: transition(e.state, t)?,
                        ..*e
                    },
                ));
            }
            if out.is_empty() {
                return Err(StoreError::RootDestroyed { name: name.clone() });
            }
            out
        };
        let mut effects = Effects::none().roots(name, changes.iter().copied());
        for (_, kr) in self.keyrings_under(name) {
            effects = effects.purge(kr.id);
        }
        self.commit(
            w,
            op,
            format!("root {name}"),
            detail,
            |tx| {
                for (v, e) in &changes {
                    tx.insert(TreeId::Roots, format::root_key(name, *v), e.to_bytes())?;
                }
                if let Some(job) = &job {
                    tx.insert(TreeId::Jobs, job.clone(), Vec::new())?;
                }
                Ok(())
            },
            effects,
        )?;
        Ok(changes.into_iter().map(|(v, _)| v).collect())
    }

    /// Disables root key `name` (every version): every keyring under it is refused at once,
    /// here and, where the backend can, in the backend itself.
    ///
    /// # Errors
    /// A state that does not allow it, or a backend error (the store stays disabled; run it
    /// again to finish in the backend).
    pub fn disable_root(&self, name: &RootKeyName) -> Result<(), StoreError> {
        let w = self.write_lifecycle();
        self.audited(AuditOp::RootDisabled, format!("root {name}"), || {
            // Disabled already (or pending destruction, which is disabled too): only the
            // backend's part is done again.
            let already = matches!(
                self.read_catalog().current_root(name)?,
                (_, KeyState::Disabled | KeyState::PendingDestruction { .. })
            );
            if !already {
                self.root_transition(
                    &w,
                    name,
                    AuditOp::RootDisabled,
                    Transition::Disable,
                    String::new(),
                    None,
                )?;
            }
            self.disable_in_backend(name)
        })
    }

    /// Disables every live version of root `name` in the backend (where it can).
    fn disable_in_backend(&self, name: &RootKeyName) -> Result<(), StoreError> {
        for v in self.live_root_versions(name) {
            let id = RootKeyId::new(name.clone(), v);
            match self.inner.backend.disable_root(&id) {
                Ok(())
                | Err(BackendError::RootDisabled { .. } | BackendError::NotSupported { .. }) => {}
                Err(e) => {
                    return Err(StoreError::backend(format!(
                        "disabling {id} in the backend (the store refuses it already; `strongroom root disable {name}` finishes it in the backend)"
                    ))(e));
                }
            }
        }
        Ok(())
    }

    fn live_root_versions(&self, name: &RootKeyName) -> Vec<RootVersion> {
        self.read_catalog()
            .roots
            .get(name)
            .map(|v| {
                v.iter()
                    .filter(|(_, e)| e.state != KeyState::Destroyed)
                    .map(|(v, _)| *v)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Enables root key `name` again (every version), in the backend first.
    ///
    /// # Errors
    /// A state that does not allow it, or a backend error.
    pub fn enable_root(&self, name: &RootKeyName) -> Result<(), StoreError> {
        let w = self.write_lifecycle();
        self.audited(AuditOp::RootEnabled, format!("root {name}"), || {
            let (_, state) = self.read_catalog().current_root(name)?;
            // Checked before the backend is touched: a pending destruction must be cancelled.
            transition(state, Transition::Enable)?;
            for v in self.live_root_versions(name) {
                let id = RootKeyId::new(name.clone(), v);
                match self.inner.backend.enable_root(&id) {
                    Ok(()) | Err(BackendError::NotSupported { .. }) => {}
                    Err(e) => {
                        return Err(
                            StoreError::backend(format!("enabling {id} in the backend"))(e),
                        );
                    }
                }
            }
            self.root_transition(
                &w,
                name,
                AuditOp::RootEnabled,
                Transition::Enable,
                String::new(),
                None,
            )?;
            Ok(())
        })
    }

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

    fn refuse_primary(&self, name: &RootKeyName) -> Result<(), StoreError> {
        if *name == self.inner.meta.primary_root {
            return Err(StoreError::InUse(format!(
                "root key {name} is the store's primary root: it protects the audit log and cannot be destroyed"
            )));
        }
        Ok(())
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
        self.finish_compaction()?;
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
    fn with_purged(
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

    fn destroy_root_locked(
        &self,
        w: &KeyChange<'_>,
        name: &RootKeyName,
        t: Transition,
    ) -> Result<Vec<Destroyed>, StoreError> {
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
        let mut destroyed = Vec::new();
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

    // ===================== keyrings =====================

    /// Every keyring.
    ///
    /// # Errors
    /// A storage error.
    pub fn keyrings(&self) -> Result<Vec<KeyringInfo>, StoreError> {
        let names: Vec<KeyringName> = self.read_catalog().keyrings.keys().cloned().collect();
        names.iter().map(|n| self.keyring(n)).collect()
    }

    /// One keyring.
    ///
    /// # Errors
    /// [`StoreError::KeyringNotFound`] or a storage error.
    pub fn keyring(&self, name: &KeyringName) -> Result<KeyringInfo, StoreError> {
        let kr = self.read_catalog().keyring(name)?;
        let mut dek_versions = Vec::new();
        for item in self
            .inner
            .storage
            .scan_prefix(TreeId::Deks, kr.id.to_be_bytes())
        {
            let (k, _) = item?;
            if let Some(v) = format::version_of_key(&k).and_then(|v| DekVersion::new(v).ok()) {
                dek_versions.push(v);
            }
        }
        let mut kek_versions = Vec::new();
        for item in self
            .inner
            .storage
            .scan_prefix(TreeId::Keks, kr.id.to_be_bytes())
        {
            let (k, v) = item?;
            if let Some(ver) = format::version_of_key(&k).and_then(|v| KekVersion::new(v).ok()) {
                kek_versions.push((
                    ver,
                    WrappedKey::parse(&v).ok().and_then(|b| b.root().cloned()),
                ));
            }
        }
        Ok(KeyringInfo {
            name: name.clone(),
            state: kr.state,
            root: kr.root.clone(),
            current_kek: kr.current_kek,
            current_dek: kr.current_dek,
            dek_versions,
            kek_versions,
            created: kr.created,
            moving_from: kr.moving_from.clone(),
            former_roots: kr.former_roots.clone(),
        })
    }

    /// Creates keyring `name` under root `root` (default: the primary root), with KEK v1 and
    /// DEK v1.
    ///
    /// # Errors
    /// [`StoreError::KeyringExists`], a root that is not usable, or a backend error.
    pub fn create_keyring(
        &self,
        name: &KeyringName,
        root: Option<&RootKeyName>,
    ) -> Result<KeyringInfo, StoreError> {
        let w = self.write_lifecycle();
        self.audited(AuditOp::KeyringCreated, format!("keyring {name}"), || {
            let root = root
                .cloned()
                .unwrap_or_else(|| self.inner.meta.primary_root.clone());
            let next_raw = self.inner.storage.get(TreeId::Meta, NEXT_ID_KEY)?;
            let (root_v, id) = {
                let cat = self.read_catalog();
                if let Some(existing) = cat.keyrings.get(name) {
                    return Err(StoreError::KeyringExists {
                        name: name.clone(),
                        destroyed: existing.state == KeyState::Destroyed,
                    });
                }
                (
                    cat.usable_root(&root)?,
                    next_keyring_id(next_raw.as_deref(), &cat)?,
                )
            };
            let store_id = self.inner.meta.store_id;
            let root_id = RootKeyId::new(root.clone(), root_v);
            let kek = Key256::generate()?;
            let kek_blob = self.wrap_kek(&root_id, &kek, name, id, KekVersion::FIRST)?;
            let dek = Key256::generate()?;
            let dek_blob = dek_blob(
                name,
                KekVersion::FIRST,
                &kek,
                &dek,
                &dek_context(&store_id, name, id, DekVersion::FIRST),
            )?;
            let entry = KeyringEntry {
                id,
                root,
                state: KeyState::Enabled,
                current_kek: KekVersion::FIRST,
                current_dek: DekVersion::FIRST,
                created: Timestamp::now(),
                moving_from: None,
                former_roots: Vec::new(),
            };
            self.commit(
                &w,
                AuditOp::KeyringCreated,
                format!("keyring {name}"),
                format!("under root {root_id}"),
                |tx| {
                    crate::store::expect_value(
                        tx,
                        TreeId::Meta,
                        NEXT_ID_KEY,
                        next_raw.as_deref(),
                        "the keyring id counter",
                    )?;
                    tx.insert(TreeId::Keyrings, name.as_str().as_bytes(), entry.to_bytes())?;
                    tx.insert(
                        TreeId::Keks,
                        format::versioned_key(id, 1),
                        kek_blob.to_bytes(),
                    )?;
                    tx.insert(
                        TreeId::Deks,
                        format::versioned_key(id, 1),
                        dek_blob.to_bytes(),
                    )?;
                    tx.insert(TreeId::Meta, NEXT_ID_KEY, (id + 1).to_be_bytes())
                },
                Effects::none().keyring(name, entry.clone()).cache(
                    id,
                    Slot::Kek(1),
                    Cached::Kek(Arc::new(kek)),
                ),
            )?;
            Ok(())
        })?;
        self.keyring(name)
    }

    /// Rotates the KEK of keyring `name`: a new KEK wrapped under the root's current version,
    /// and every DEK rewrapped under it, in one transaction. No record is touched.
    ///
    /// # Errors
    /// A keyring or root that is not usable, or a backend error.
    pub fn rotate_kek(&self, name: &KeyringName) -> Result<KekVersion, StoreError> {
        let w = self.write_lifecycle();
        self.audited(AuditOp::KekRotated, format!("keyring {name}"), || {
            self.rotate_kek_locked(&w, name)
        })
    }

    fn rotate_kek_locked(
        &self,
        w: &KeyChange<'_>,
        name: &KeyringName,
    ) -> Result<KekVersion, StoreError> {
        let kr = self.usable_keyring(name)?;
        let store_id = self.inner.meta.store_id;
        let root_v = self.read_catalog().usable_root(&kr.root)?;
        let next = kr
            .current_kek
            .next()
            .ok_or_else(|| StoreError::InUse(format!("keyring {name} has no KEK versions left")))?;
        let kek = Key256::generate()?;
        let root_id = RootKeyId::new(kr.root.clone(), root_v);
        let kek_blob = self.wrap_kek(&root_id, &kek, name, kr.id, next)?;
        let mut rewrapped = Vec::new();
        for item in self
            .inner
            .storage
            .scan_prefix(TreeId::Deks, kr.id.to_be_bytes())
        {
            let (k, _) = item?;
            let Some(v) = format::version_of_key(&k).and_then(|v| DekVersion::new(v).ok()) else {
                continue;
            };
            let dek = self.dek_material(name, &kr, v)?;
            rewrapped.push((
                k.to_vec(),
                dek_blob(
                    name,
                    next,
                    &kek,
                    &dek,
                    &dek_context(&store_id, name, kr.id, v),
                )?
                .to_bytes(),
            ));
        }
        let old_keks: Vec<Vec<u8>> = self
            .inner
            .storage
            .scan_prefix(TreeId::Keks, kr.id.to_be_bytes())
            .map(|r| r.map(|(k, _)| k.to_vec()))
            .collect::<Result<_, _>>()?;
        let entry = KeyringEntry {
            current_kek: next,
            ..(*kr).clone()
        };
        self.commit(
            w,
            AuditOp::KekRotated,
            format!("keyring {name}"),
            format!(
                "{} -> {next}; {} DEKs rewrapped",
                kr.current_kek,
                rewrapped.len()
            ),
            |tx| {
                for k in &old_keks {
                    tx.remove(TreeId::Keks, k.clone())?;
                }
                tx.insert(
                    TreeId::Keks,
                    format::versioned_key(kr.id, next.get()),
                    kek_blob.to_bytes(),
                )?;
                for (k, v) in &rewrapped {
                    tx.insert(TreeId::Deks, k.clone(), v.clone())?;
                }
                tx.insert(TreeId::Keyrings, name.as_str().as_bytes(), entry.to_bytes())
            },
            // The DEKs' material is unchanged, but the keyring's whole cache goes (a rotation
            // is rare): the new KEK is cached now, the DEKs are unwrapped under it on first use.
            Effects::none()
                .keyring(name, entry.clone())
                .purge(kr.id)
                .cache(kr.id, Slot::Kek(next.get()), Cached::Kek(Arc::new(kek))),
        )?;
        Ok(next)
    }

    /// The material of DEK version `v` (for rewrapping it).
    fn dek_material(
        &self,
        name: &KeyringName,
        kr: &KeyringEntry,
        v: DekVersion,
    ) -> Result<Key256, StoreError> {
        let what = || format!("DEK {v} of keyring {name}");
        let (blob, kek_v) = self.dek_blob(name, kr, v)?;
        let (kek, _) = self.kek(name, kr, kek_v)?;
        strongroom_core::crypto::kwp_unwrap_bound(
            &kek,
            blob.payload(),
            &dek_context(&self.inner.meta.store_id, name, kr.id, v),
        )
        .map_err(|_| StoreError::KeyIntegrity { what: what() })
    }

    /// Rotates the DEK of keyring `name`: new records are sealed with a new DEK; older records
    /// keep opening with their own ([`Store::reencrypt`] moves them).
    ///
    /// # Errors
    /// A keyring or root that is not usable, or a backend error.
    pub fn rotate_dek(&self, name: &KeyringName) -> Result<DekVersion, StoreError> {
        let w = self.write_lifecycle();
        self.audited(AuditOp::DekRotated, format!("keyring {name}"), || {
            self.rotate_dek_locked(&w, name, "requested")
        })
    }

    pub(crate) fn rotate_dek_locked(
        &self,
        w: &KeyChange<'_>,
        name: &KeyringName,
        why: &str,
    ) -> Result<DekVersion, StoreError> {
        let kr = self.usable_keyring(name)?;
        let next = kr
            .current_dek
            .next()
            .ok_or_else(|| StoreError::InUse(format!("keyring {name} has no DEK versions left")))?;
        let (kek, _) = self.kek(name, &kr, kr.current_kek)?;
        let dek = Key256::generate()?;
        let blob = dek_blob(
            name,
            kr.current_kek,
            &kek,
            &dek,
            &dek_context(&self.inner.meta.store_id, name, kr.id, next),
        )?;
        let entry = KeyringEntry {
            current_dek: next,
            ..(*kr).clone()
        };
        self.commit(
            w,
            AuditOp::DekRotated,
            format!("keyring {name}"),
            format!("{} -> {next} ({why})", kr.current_dek),
            |tx| {
                tx.insert(
                    TreeId::Deks,
                    format::versioned_key(kr.id, next.get()),
                    blob.to_bytes(),
                )?;
                tx.insert(TreeId::Keyrings, name.as_str().as_bytes(), entry.to_bytes())
            },
            Effects::none().keyring(name, entry.clone()),
        )?;
        Ok(next)
    }

    fn keyring_transition(
        &self,
        w: &KeyChange<'_>,
        name: &KeyringName,
        op: AuditOp,
        t: Transition,
        detail: String,
    ) -> Result<KeyringEntry, StoreError> {
        let kr = self.read_catalog().keyring(name)?;
        let state = transition(kr.state, t)?;
        let entry = KeyringEntry {
            state,
            ..(*kr).clone()
        };
        self.commit(
            w,
            op,
            format!("keyring {name}"),
            detail,
            |tx| tx.insert(TreeId::Keyrings, name.as_str().as_bytes(), entry.to_bytes()),
            Effects::none().keyring(name, entry.clone()).purge(kr.id),
        )?;
        Ok(entry)
    }

    /// Disables keyring `name`: reads and writes are refused at once and its keys leave the
    /// cache.
    ///
    /// # Errors
    /// A state that does not allow it.
    pub fn disable_keyring(&self, name: &KeyringName) -> Result<(), StoreError> {
        let w = self.write_lifecycle();
        self.audited(AuditOp::KeyringDisabled, format!("keyring {name}"), || {
            self.keyring_transition(
                &w,
                name,
                AuditOp::KeyringDisabled,
                Transition::Disable,
                String::new(),
            )
            .map(|_| ())
        })
    }

    /// Enables keyring `name` again.
    ///
    /// # Errors
    /// A state that does not allow it.
    pub fn enable_keyring(&self, name: &KeyringName) -> Result<(), StoreError> {
        let w = self.write_lifecycle();
        self.audited(AuditOp::KeyringEnabled, format!("keyring {name}"), || {
            self.keyring_transition(
                &w,
                name,
                AuditOp::KeyringEnabled,
                Transition::Enable,
                String::new(),
            )
            .map(|_| ())
        })
    }

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
        self.finish_compaction()?;
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
        {
            let w = self.write_lifecycle();
            for name in due_keyrings {
                self.audited(AuditOp::KeyringDestroyed, format!("keyring {name}"), || {
                    self.destroy_keyring_locked(&w, &name, Transition::DestroyDue { now })
                })?;
                let former_roots = self.read_catalog().keyring(&name)?.former_roots.clone();
                out.push(Destroyed {
                    keyring: name,
                    records: 0,
                    former_roots,
                });
            }
            for name in due_roots {
                let d = self.audited(AuditOp::RootDestroyed, format!("root {name}"), || {
                    self.destroy_root_locked(&w, &name, Transition::DestroyDue { now })
                })?;
                out.extend(d);
            }
        }
        let purged = self.finish_purges()?;
        self.finish_compaction()?;
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

/// A DEK wrapped under a KEK (software AES-KWP, context-bound).
pub(crate) fn dek_blob(
    name: &KeyringName,
    kek_v: KekVersion,
    kek: &Key256,
    dek: &Key256,
    ctx: &[u8],
) -> Result<WrappedKey, StoreError> {
    WrappedKey::new(
        WrapAlg::AesKwp,
        WrappingKeyRef::Kek {
            keyring: name.clone(),
            version: kek_v,
        },
        kwp_wrap_bound(kek, dek, ctx).to_vec(),
    )
    .map_err(|source| StoreError::Corrupt {
        what: format!("a new DEK of keyring {name}"),
        source,
    })
}

impl Store {
    /// Destroys root version `id` in the backend. Already destroyed or gone counts as done, and
    /// so does a backend that cannot destroy keys (the store's own record is what refuses it).
    fn destroy_in_backend(&self, id: &RootKeyId) -> Result<(), BackendError> {
        match self.inner.backend.destroy_root(id) {
            Ok(())
            | Err(
                BackendError::RootDestroyed { .. }
                | BackendError::RootNotFound { .. }
                | BackendError::NotSupported { .. },
            ) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The id of the next keyring from the id counter (absent in a store that never had one). A
/// counter of the wrong length, or one that is not ahead of every keyring's id, is a damaged
/// database: a new keyring under a used id would overwrite that keyring's keys and share its
/// records.
fn next_keyring_id(counter: Option<&[u8]>, cat: &Catalog) -> Result<u64, StoreError> {
    let damaged = |reason: String| StoreError::Corrupt {
        what: "the keyring id counter".into(),
        source: FormatError::Invalid {
            what: "keyring id counter",
            field: "next id",
            reason,
        },
    };
    let next = match counter {
        None => 1,
        Some(b) => u64::from_be_bytes(
            <[u8; 8]>::try_from(b).map_err(|_| damaged(format!("{} bytes, not 8", b.len())))?,
        ),
    };
    match cat.ids.keys().max() {
        Some(&used) if used >= next => Err(damaged(format!(
            "it says {next}, but keyring id {used} is in use; restore the store from a backup"
        ))),
        _ => Ok(next),
    }
}
