//! Keyrings: the unit of tenancy and revocation. Created under a root with KEK v1 and DEK v1,
//! their KEK or DEK rotated, disabled and enabled; described for `keyring show`.

use std::sync::Arc;

use strongroom_core::blob::{WrapAlg, WrappedKey, WrappingKeyRef};
use strongroom_core::crypto::kwp_wrap_bound;
use strongroom_core::{
    DekVersion, FormatError, KekVersion, Key256, KeyState, KeyringName, RootKeyId, RootKeyName,
    Timestamp, Transition,
};

use crate::audit::AuditOp;
use crate::cache::{Cached, Slot};
use crate::commit::{Effects, KeyChange};
use crate::error::StoreError;
use crate::format::{self, KeyringEntry};
use crate::lifecycle::transition;
use crate::storage::TreeId;
use crate::store::{Catalog, NEXT_ID_KEY, Store, dek_context};

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

impl Store {
    /// Every keyring.
    ///
    /// # Errors
    /// A storage error.
    pub fn keyrings(&self) -> Result<Vec<KeyringInfo>, StoreError> {
        self.refresh_if_invalidated();
        let names: Vec<KeyringName> = self.read_catalog().keyrings.keys().cloned().collect();
        names.iter().map(|n| self.keyring(n)).collect()
    }

    /// One keyring.
    ///
    /// # Errors
    /// [`StoreError::KeyringNotFound`] or a storage error.
    pub fn keyring(&self, name: &KeyringName) -> Result<KeyringInfo, StoreError> {
        // What other replicas changed, as of the last poll (a fleet: `crate::fleet`).
        self.refresh_if_invalidated();
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

    pub(crate) fn rotate_kek_locked(
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
    pub(crate) fn dek_material(
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

    pub(crate) fn keyring_transition(
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

/// The id of the next keyring from the id counter (absent in a store that never had one). A
/// counter of the wrong length, or one that is not ahead of every keyring's id, is a damaged
/// database: a new keyring under a used id would overwrite that keyring's keys and share its
/// records.
pub(crate) fn next_keyring_id(counter: Option<&[u8]>, cat: &Catalog) -> Result<u64, StoreError> {
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
