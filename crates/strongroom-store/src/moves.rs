//! Moving a keyring to another root key, so that it no longer depends on the old one.
//!
//! Rewrapping the same KEK under the new root would leave the old root's wrappings valid
//! wherever a copy of them survives (a backup, the old segments of the database files): the
//! keyring would stay readable through the old root. A move therefore makes **fresh keys**:
//!
//! 1. *start* (one transaction, audited): a new KEK wrapped under the new root (its context binds
//!    that root), a new DEK under it; the keyring now names the new root, writes go to the new
//!    DEK at once, and the entry records `moving_from` (the old root its older records still
//!    depend on) and adds the old root to `former_roots`. A job `move/<id>` holds the first new
//!    KEK and DEK versions.
//! 2. *re-encrypt* ([`Store::reencrypt`]: resumable, batch by batch, reads and writes go on):
//!    every record sealed under an older DEK is sealed again under the current one; the older
//!    DEKs are then retired.
//! 3. *finish* (one transaction, audited): the KEKs from before the move are erased, the job and
//!    `moving_from` are cleared, and a compaction is asked for, which removes the old wrappings
//!    from the database's files.
//!
//! Until step 3, the keyring reports that it depends on its previous root, and that root cannot
//! be destroyed. A crash anywhere leaves the job for `strongroom resume`
//! ([`PendingJob::Move`](crate::PendingJob::Move)).

use std::sync::Arc;

use strongroom_core::{Key256, KeyringName, RootKeyId, RootKeyName};

use crate::audit::AuditOp;
use crate::cache::{Cached, Slot};
use crate::commit::Effects;
use crate::error::StoreError;
use crate::format::{self, KeyringEntry, MAX_FORMER_ROOTS};
use crate::keyrings::dek_blob;
use crate::lifecycle::Progress;
use crate::storage::TreeId;
use crate::store::{Store, dek_context};
use crate::telemetry;

pub(crate) const MOVE_PREFIX: &[u8] = b"move/";

pub(crate) fn move_job_key(id: u64) -> Vec<u8> {
    let mut k = MOVE_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// What a move did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MoveReport {
    /// The root the keyring left (`None` if it was under the target root already).
    pub from: Option<RootKeyName>,
    /// Records sealed again under the fresh DEK.
    pub reencrypted: u64,
    /// Whether this call finished a move an earlier one started.
    pub resumed: bool,
}

/// The first KEK and DEK versions a move made (its job's value).
fn parse_job(v: &[u8]) -> Option<(u32, u32)> {
    let b: [u8; 8] = v.try_into().ok()?;
    let (k, d) = b.split_at(4);
    Some((
        u32::from_be_bytes(k.try_into().ok()?),
        u32::from_be_bytes(d.try_into().ok()?),
    ))
}

impl Store {
    /// Moves keyring `name` to root key `root` (a tenant switching to its own root key, or
    /// back): a fresh KEK under `root` and a fresh DEK, every record re-encrypted (resumably;
    /// reads and writes go on meanwhile, `progress` after each batch), then the keys from
    /// before erased and the database compacted. Once it returns, nothing of the keyring
    /// depends on the old root, in this store or its files; copies of the store made before
    /// the move stay readable while the old root lives.
    ///
    /// Called again for a move an interruption left unfinished, it finishes it. `progress` is
    /// called with the store's lifecycle lock held for reading: it must not call a lifecycle
    /// operation of the same store (that would wait for itself).
    ///
    /// # Errors
    /// A keyring or root that is not usable, [`StoreError::InUse`] while another move of the
    /// keyring is unfinished, a backend or storage error (the move stays pending).
    pub fn move_keyring(
        &self,
        name: &KeyringName,
        root: &RootKeyName,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<MoveReport, StoreError> {
        let mut progress = telemetry::job_progress("move", progress);
        let started = self.start_move(name, root)?;
        let mut report = self.finish_move(name, &mut progress)?;
        report.resumed &= !started;
        Ok(report)
    }

    /// Step 1; `true` if this call started a move (`false`: none needed, or one is underway).
    fn start_move(&self, name: &KeyringName, root: &RootKeyName) -> Result<bool, StoreError> {
        let w = self.write_lifecycle();
        self.audited(AuditOp::KeyringMoved, format!("keyring {name}"), || {
            let kr = self.read_catalog().keyring(name)?;
            if let Some(from) = &kr.moving_from {
                if &kr.root == root {
                    return Ok(false);
                }
                return Err(StoreError::InUse(format!(
                    "keyring {name} is still moving from root key {from} to {}; finish that move first (`strongroom resume`)",
                    kr.root
                )));
            }
            let kr = self.usable_keyring(name)?;
            if &kr.root == root {
                return Ok(false);
            }
            let root_v = self.read_catalog().usable_root(root)?;
            let to = RootKeyId::new(root.clone(), root_v);
            let no_versions = |what: &str| {
                StoreError::InUse(format!("keyring {name} has no {what} versions left"))
            };
            let kek_v = kr.current_kek.next().ok_or_else(|| no_versions("KEK"))?;
            let dek_v = kr.current_dek.next().ok_or_else(|| no_versions("DEK"))?;
            let kek = Key256::generate()?;
            let kek_blob = self.wrap_kek(&to, &kek, name, kr.id, kek_v)?;
            let dek = Key256::generate()?;
            let dek_blob = dek_blob(
                name,
                kek_v,
                &kek,
                &dek,
                &dek_context(&self.inner.meta.store_id, name, kr.id, dek_v),
            )?;
            let mut former_roots: Vec<RootKeyName> = kr
                .former_roots
                .iter()
                .filter(|r| *r != &kr.root)
                .cloned()
                .collect();
            former_roots.push(kr.root.clone());
            let excess = former_roots.len().saturating_sub(MAX_FORMER_ROOTS);
            former_roots.drain(..excess);
            let entry = KeyringEntry {
                root: root.clone(),
                current_kek: kek_v,
                current_dek: dek_v,
                moving_from: Some(kr.root.clone()),
                former_roots,
                ..(*kr).clone()
            };
            let mut job = kek_v.get().to_be_bytes().to_vec();
            job.extend_from_slice(&dek_v.get().to_be_bytes());
            self.commit(&w, AuditOp::KeyringMoved,
                format!("keyring {name}"),
                format!(
                    "started: from root {} to {to}; fresh KEK {kek_v} and DEK {dek_v}, its records to be re-encrypted",
                    kr.root
                ),
                |tx| {
                    tx.insert(
                        TreeId::Keks,
                        format::versioned_key(kr.id, kek_v.get()),
                        kek_blob.to_bytes(),
                    )?;
                    tx.insert(
                        TreeId::Deks,
                        format::versioned_key(kr.id, dek_v.get()),
                        dek_blob.to_bytes(),
                    )?;
                    tx.insert(TreeId::Jobs, move_job_key(kr.id), job.clone())?;
                    // An interrupted re-encryption from before: its cursor would make the
                    // move's re-encryption skip the records before it (still under old DEKs).
                    tx.remove(TreeId::Jobs, crate::jobs::reencrypt_job_key(kr.id))?;
                    tx.insert(TreeId::Keyrings, name.as_str().as_bytes(), entry.to_bytes())
                },
                Effects::none()
                    .keyring(name, entry.clone())
                    .purge(kr.id)
                    .cache(kr.id, Slot::Kek(kek_v.get()), Cached::Kek(Arc::new(kek))),
            )?;
            Ok(true)
        })
    }

    /// Steps 2 and 3 of a move that has started (nothing if none has).
    pub(crate) fn finish_move(
        &self,
        name: &KeyringName,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<MoveReport, StoreError> {
        let kr = self.read_catalog().keyring(name)?;
        let Some(from) = kr.moving_from.clone() else {
            return Ok(MoveReport::default());
        };
        let mut reencrypted = self.reencrypt(name, progress)?.reencrypted;
        // Records a resumed re-encryption skipped (its cursor older than the move: a crash
        // between two of its batches, then another interruption) are caught by a full pass.
        if self.deks_before_move(name)? {
            reencrypted += self.reencrypt(name, progress)?.reencrypted;
        }
        // The move's last commit is a key change: one refused because another replica changed
        // the key states first changed nothing (the re-encryption before it stands), and is
        // tried again from the states of now, rather than report a move half done as a
        // `Conflict`.
        let mut stale = crate::fleet::StaleBudget::default();
        loop {
            let w = self.write_lifecycle();
            let r = self.audited(AuditOp::KeyringMoved, format!("keyring {name}"), || {
                let kr = self.usable_keyring(name)?;
                let job = move_job_key(kr.id);
                let Some((first_kek, first_dek)) = self
                    .inner
                    .storage
                    .get(TreeId::Jobs, &job)?
                    .as_deref()
                    .and_then(parse_job)
                else {
                    return Err(StoreError::KeyIntegrity {
                        what: format!(
                            "the move job of keyring {name} (missing or damaged; the keyring still depends on root {from})"
                        ),
                    });
                };
                let versions = |t: TreeId| -> Result<Vec<u32>, StoreError> {
                    self.inner
                        .storage
                        .scan_prefix(t, kr.id.to_be_bytes())
                        .map(|r| r.map(|(k, _)| format::version_of_key(&k).unwrap_or(0)))
                        .collect()
                };
                // Re-encryption retired every DEK no record uses: one from before the move that
                // is still here means records still under it (a writer cannot make new ones).
                let old_deks: Vec<u32> = versions(TreeId::Deks)?
                    .into_iter()
                    .filter(|v| *v < first_dek)
                    .collect();
                if !old_deks.is_empty() {
                    return Err(StoreError::InUse(format!(
                        "keyring {name}: records are still sealed under DEK versions from before its move ({old_deks:?}); run `strongroom resume` again"
                    )));
                }
                let old_keks: Vec<u32> = versions(TreeId::Keks)?
                    .into_iter()
                    .filter(|v| *v < first_kek)
                    .collect();
                let entry = KeyringEntry {
                    moving_from: None,
                    ..(*kr).clone()
                };
                self.commit(&w, AuditOp::KeyringMoved,
                    format!("keyring {name}"),
                    format!(
                        "finished: now under root {}; {reencrypted} records re-encrypted, {} KEKs from root {from} erased",
                        kr.root,
                        old_keks.len()
                    ),
                    |tx| {
                        for v in &old_keks {
                            tx.remove(TreeId::Keks, format::versioned_key(kr.id, *v))?;
                        }
                        tx.remove(TreeId::Jobs, job.clone())?;
                        tx.insert(TreeId::Jobs, crate::compact::COMPACT_JOB, Vec::new())?;
                        tx.insert(TreeId::Keyrings, name.as_str().as_bytes(), entry.to_bytes())
                    }, Effects::none().keyring(name, entry.clone()).purge(kr.id),
                )?;
                Ok(())
            });
            match r {
                Err(StoreError::Conflict { .. }) if stale.again() => {}
                r => break r?,
            }
        }
        self.compact_if_asked()?;
        Ok(MoveReport {
            from: Some(from),
            reencrypted,
            resumed: true,
        })
    }

    /// Whether keyring `name` still holds DEKs made before its move.
    fn deks_before_move(&self, name: &KeyringName) -> Result<bool, StoreError> {
        let kr = self.read_catalog().keyring(name)?;
        let Some((_, first_dek)) = self
            .inner
            .storage
            .get(TreeId::Jobs, move_job_key(kr.id))?
            .as_deref()
            .and_then(parse_job)
        else {
            return Ok(false);
        };
        for item in self
            .inner
            .storage
            .scan_prefix(TreeId::Deks, kr.id.to_be_bytes())
        {
            if format::version_of_key(&item?.0).is_some_and(|v| v < first_dek) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Refuses to destroy root `name` while a keyring is still moving off it (its older
    /// records depend on it until the move finishes).
    pub(crate) fn refuse_if_moving_off(&self, name: &RootKeyName) -> Result<(), StoreError> {
        let cat = self.read_catalog();
        if let Some((kr, _)) = cat
            .keyrings
            .iter()
            .find(|(_, e)| e.moving_from.as_ref() == Some(name))
        {
            return Err(StoreError::InUse(format!(
                "keyring {kr} is still moving off root key {name}: its older records depend on it; finish the move first (`strongroom resume`)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_holds_the_first_new_versions() {
        let mut v = 7u32.to_be_bytes().to_vec();
        v.extend_from_slice(&9u32.to_be_bytes());
        assert_eq!(parse_job(&v), Some((7, 9)));
        assert_eq!(parse_job(&v[..7]), None);
    }
}
