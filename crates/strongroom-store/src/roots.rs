//! Root keys: the customer-managed keys in the backend. Created (or adopted), rotated (every
//! KEK rewrapped under the new version, resumably), old versions retired, disabled and enabled
//! in the store and, where the backend can, in the backend itself.

use strongroom_core::blob::WrappedKey;
use strongroom_core::{
    BackendError, KekVersion, Key256, KeyState, RootKeyId, RootKeyName, RootVersion, Timestamp,
    Transition,
};

use crate::audit::AuditOp;
use crate::commit::{Effects, KeyChange};
use crate::error::StoreError;
use crate::format::{self, RootEntry};
use crate::lifecycle::{KekBlob, Progress, transition};
use crate::storage::TreeId;
use crate::store::{Store, audit_key_context, ensure_backend_root};
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

impl Store {
    /// Every root key.
    #[must_use]
    pub fn roots(&self) -> Vec<RootInfo> {
        self.refresh_if_invalidated();
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
    /// [`StoreError::RootNotFound`], a root that is not enabled, or a backend error;
    /// [`StoreError::Conflict`] if another replica changed the key states before the rotation
    /// committed (nothing was rotated: retry). Once the rotation is committed, a rewrap left
    /// to another runner (busy, taken over, or losing its steps to other replicas' key changes)
    /// is not an error: [`Store::pending_jobs`] lists it. Any other error of the rewrap (a
    /// backend error) comes after the rotation was committed: the KEKs done stay done, and
    /// [`Store::rewrap_root`] or `strongroom resume` finishes the rest (rotating again would
    /// make another version).
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
        match self.rewrap_root(name, progress) {
            // The rotation is committed; the rewrap it asks for is another runner's now (a
            // replica rewrapping under this root already), which takes the new version in as
            // it goes or is resumed by `pending_jobs`. Failing here would invite a retry that
            // rotates the root again. So would a rewrap that kept losing a step to other
            // replicas' key changes past its budget (a `Conflict` says nothing was changed,
            // and the rotation was), or one taken over by another replica (`LeaseLost`): the
            // rewrap is left to its holder or to `pending_jobs`, like a busy one.
            Ok(_)
            | Err(
                StoreError::JobBusy { .. }
                | StoreError::Conflict { .. }
                | StoreError::LeaseLost { .. },
            ) => Ok(version),
            Err(e) => Err(e),
        }
    }

    /// The audit key's material, for rewrapping it (kept only as long as needed).
    pub(crate) fn audit_key_material(&self) -> Result<Key256, StoreError> {
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
    pub(crate) fn keks_under(
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
        // From the key states of now (see `Store::reencrypt`).
        self.reload_if_moved();
        let target = self.read_catalog().usable_root(name)?;
        let lease = self.claim(
            &format!("rewrap/{name}"),
            &format!("the rewrap of the KEKs under root {name}"),
        )?;
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
            // One KEK: `Some(replaced)`, or `None` for a keyring gone meanwhile.
            let step = || -> Result<Option<bool>, StoreError> {
                // The lock held shared: a rewrap changes no key (the same KEK, wrapped under a
                // newer root version), so reads and writes go on; key changes wait for the step.
                let shared = self.read_lifecycle();
                let Some(kr_name) = self.read_catalog().ids.get(&id).cloned() else {
                    return Ok(None);
                };
                let Ok(kr) = self.read_catalog().keyring(&kr_name) else {
                    return Ok(None);
                };
                let v = KekVersion::new(ver).map_err(|_| StoreError::KeyIntegrity {
                    what: format!("KEK of keyring {kr_name} (bad version)"),
                })?;
                // The KEK is rewrapped only if it is unchanged since it was listed: a KEK
                // rotation (here, or in another replica) may have replaced or removed it.
                let tree_key = format::versioned_key(id, ver).to_vec();
                let unchanged = |now: Option<&[u8]>| now == Some(&old_bytes[..]);
                let still_there = || -> Result<bool, StoreError> {
                    Ok(unchanged(
                        self.inner.storage.get(TreeId::Keks, &tree_key)?.as_deref(),
                    ))
                };
                if !still_there()? {
                    return Ok(Some(false));
                }
                let kek = match self.kek(&kr_name, &kr, v) {
                    Ok((kek, _)) => kek,
                    // Removed between the look and the unwrap: nothing to rewrap.
                    Err(StoreError::KeyIntegrity { .. }) if !still_there()? => {
                        return Ok(Some(false));
                    }
                    Err(e) => return Err(e),
                };
                let to = RootKeyId::new(name.clone(), target);
                let new = self.wrap_kek(&to, &kek, &kr_name, id, v)?.to_bytes();
                // Each step is its own commit with its audit entry, which replaces the KEK only
                // if it is still unchanged.
                let replaced = std::cell::Cell::new(false);
                {
                    self.commit_shared(
                        &shared,
                        AuditOp::RootRewrapped,
                        format!("root {name}"),
                        format!("KEK {v} of keyring {kr_name} rewrapped under {to}"),
                        |tx| {
                            lease.hold(tx.raw())?;
                            replaced.set(false);
                            if unchanged(tx.get(TreeId::Keks, &tree_key)?.as_deref()) {
                                tx.insert(TreeId::Keks, tree_key.clone(), new.clone())?;
                                replaced.set(true);
                            }
                            Ok(())
                        },
                    )?;
                }
                Ok(Some(replaced.get()))
            };
            // A step refused because another replica changed the key states since this one
            // loaded them wrote nothing: taken in, and the step tried again (as a
            // re-encryption's batch is).
            let mut stale = crate::fleet::StaleBudget::default();
            let replaced = loop {
                let since = self.serving();
                match step() {
                    // Or a key another replica replaced, looking missing here (see
                    // `Store::stale_key_error`).
                    Err(e)
                        if (matches!(e, StoreError::Conflict { .. })
                            || self.stale_key_error(&e, since))
                            && stale.again() =>
                    {
                        self.reload_if_moved();
                    }
                    r => break r?,
                }
            };
            let Some(replaced) = replaced else {
                continue;
            };
            if replaced {
                rewrapped += 1;
            }
            done += 1;
            // With no lock held: the callback may call the store.
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
    pub(crate) fn root_transition(
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
    pub(crate) fn disable_in_backend(&self, name: &RootKeyName) -> Result<(), StoreError> {
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

    pub(crate) fn live_root_versions(&self, name: &RootKeyName) -> Vec<RootVersion> {
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

    pub(crate) fn refuse_primary(&self, name: &RootKeyName) -> Result<(), StoreError> {
        if *name == self.inner.meta.primary_root {
            return Err(StoreError::InUse(format!(
                "root key {name} is the store's primary root: it protects the audit log and cannot be destroyed"
            )));
        }
        Ok(())
    }
}

impl Store {
    /// Destroys root version `id` in the backend. Already destroyed or gone counts as done, and
    /// so does a backend that cannot destroy keys (the store's own record is what refuses it).
    pub(crate) fn destroy_in_backend(&self, id: &RootKeyId) -> Result<(), BackendError> {
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
