//! Long, resumable work: re-encrypting a keyring's records under its current DEK, retiring DEK
//! versions nothing uses any more, and finding work a crash left unfinished.

use strongroom_core::record::RecordHeader;
use strongroom_core::{DekVersion, KeyringName, RootKeyName};

use crate::audit::AuditOp;
use crate::commit::Effects;
use crate::destruction::{BACKEND_DESTROY_PREFIX, PURGE_PREFIX};
use crate::error::StoreError;
use crate::format;
use crate::lifecycle::Progress;
use crate::records::show_key;
use crate::storage::TreeId;
use crate::store::Store;
use crate::telemetry;

pub(crate) const REENCRYPT_PREFIX: &[u8] = b"reencrypt/";
const BATCH: usize = 256;

pub(crate) fn reencrypt_job_key(id: u64) -> Vec<u8> {
    let mut k = REENCRYPT_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// What a re-encryption did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReencryptReport {
    /// Records sealed again under the current DEK (in this run).
    pub reencrypted: u64,
    /// Records already under the current DEK, or changed by a writer meanwhile.
    pub skipped: u64,
    /// Whether this run continued an interrupted one.
    pub resumed: bool,
    /// DEK versions retired afterwards (no record used them any more).
    pub retired: Vec<DekVersion>,
}

/// Work that a crash or an interruption left unfinished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PendingJob {
    /// A re-encryption of a keyring (resume it with [`Store::reencrypt`]).
    Reencrypt(KeyringName),
    /// KEKs still wrapped under an old version of a root (finish with [`Store::rewrap_root`]).
    Rewrap {
        /// The root.
        root: RootKeyName,
        /// KEKs still under old versions.
        keks: u64,
    },
    /// Records of a destroyed keyring not yet purged (finished at the next open).
    Purge(u64),
    /// A keyring whose scheduled destruction is due but could not be carried out yet (finish
    /// with [`Store::run_due_destructions`]; it is unusable meanwhile).
    DueKeyringDestruction(KeyringName),
    /// A root whose scheduled destruction is due but could not be carried out yet (finish with
    /// [`Store::run_due_destructions`]; it is unusable meanwhile).
    DueRootDestruction(RootKeyName),
    /// A root destroyed in the store whose keys the backend has not yet destroyed (finish with
    /// [`Store::finish_root_destruction`]).
    BackendDestroy(RootKeyName),
    /// A move of a keyring to another root whose re-encryption is unfinished: the keyring still
    /// depends on `from` (finish with [`Store::move_keyring`]).
    Move {
        /// The keyring.
        keyring: KeyringName,
        /// The root it is leaving.
        from: RootKeyName,
        /// The root it is moving to.
        to: RootKeyName,
    },
    /// A compaction a destruction or a move asked for: until it runs, what they removed is still
    /// in the database's files (finish with [`Store::compact`]; it also runs at open).
    Compact,
}

impl Store {
    /// Re-encrypts every record of `keyring` that is not under its current DEK, in batches,
    /// with `progress` after each; the position is persisted after every batch, so a crash or
    /// an interrupt loses at most one batch of work and a second call resumes. Writers may keep
    /// writing meanwhile: a record they change is left as they wrote it. Afterwards, DEK versions
    /// no record uses are retired.
    ///
    /// # Errors
    /// A keyring that is not usable, a record that fails its integrity check (named), or a
    /// backend or storage error.
    pub fn reencrypt(
        &self,
        keyring: &KeyringName,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ReencryptReport, StoreError> {
        let mut progress = telemetry::job_progress("reencrypt", progress);
        // A job starts from the key states of now, not from a view one poll old: on a replica
        // that has not yet taken in another's disable, a re-encryption with nothing to commit
        // would otherwise report success on a keyring that is no longer usable.
        self.reload_if_moved();
        // One runner per keyring, in the process and across a fleet (`crate::lease`). A job
        // another runner has is refused before the audit entry: waiting replicas that try it
        // again and again are not attempts at it.
        let lease = match self.read_catalog().keyring(keyring) {
            Ok(kr) => Some(self.claim_reencrypt(keyring, kr.id)?),
            // Refused below, audited.
            Err(_) => None,
        };
        self.audited(AuditOp::Reencrypted, format!("keyring {keyring}"), || {
            self.reencrypt_inner(keyring, lease, &mut progress)
        })
    }

    fn claim_reencrypt(
        &self,
        keyring: &KeyringName,
        id: u64,
    ) -> Result<crate::lease::Lease<'_>, StoreError> {
        self.claim(
            &format!("reencrypt/{id}"),
            &format!("the re-encryption of keyring {keyring}"),
        )
    }

    fn reencrypt_inner(
        &self,
        keyring: &KeyringName,
        lease: Option<crate::lease::Lease<'_>>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ReencryptReport, StoreError> {
        let id = self.read_catalog().keyring(keyring)?.id;
        let lease = match lease {
            Some(l) => l,
            None => self.claim_reencrypt(keyring, id)?,
        };
        let job = reencrypt_job_key(id);
        let mut cursor: Option<Vec<u8>> = self
            .inner
            .storage
            .get(TreeId::Jobs, &job)?
            .map(|v| v.to_vec());
        let mut report = ReencryptReport {
            resumed: cursor.is_some(),
            ..ReencryptReport::default()
        };
        let prefix = id.to_be_bytes();
        let total = self
            .inner
            .storage
            .scan_prefix(TreeId::Records, prefix)
            .count() as u64;
        let mut done = match &cursor {
            Some(c) => self
                .inner
                .storage
                .scan_prefix(TreeId::Records, prefix)
                .filter(|r| r.as_ref().is_ok_and(|(k, _)| k.as_slice() <= c.as_slice()))
                .count() as u64,
            None => 0,
        };
        if cursor.is_none() {
            // A job is recorded only for a keyring that can be re-encrypted now, and only by
            // the lease's holder (one taken over at once would record it again after its
            // successor had finished).
            self.usable_keyring(keyring)?;
            self.inner.storage.transaction_on(&[TreeId::Jobs], |tx| {
                lease.hold(tx)?;
                tx.insert(TreeId::Jobs, &job, [])
            })?;
        }
        progress(Progress { done, total });
        let mut stale = crate::fleet::StaleBudget::default();
        // A batch another replica's key change made stale is tried again smaller: under a
        // steady stream of key changes elsewhere (the generation is store-wide), a batch that
        // takes longer than the gap between them would never get through, while a batch of a
        // few records gets through as a single write does. It grows back after a success.
        let mut batch_size = BATCH;
        loop {
            let since = self.serving();
            let step = (|| -> Result<Option<Option<DekVersion>>, StoreError> {
                let _r = self.read_lifecycle();
                let kr = self.usable_keyring(keyring)?;
                let batch: Vec<(Vec<u8>, Vec<u8>)> = self
                    .inner
                    .storage
                    .scan_prefix_after(
                        TreeId::Records,
                        &prefix,
                        cursor.as_deref().filter(|c| !c.is_empty()),
                    )
                    .take(batch_size)
                    .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
                    .collect::<Result<_, _>>()?;
                if batch.is_empty() {
                    return Ok(None);
                }
                let target = self.dek(keyring, &kr, kr.current_dek)?;
                let mut roll_over = None;
                let mut processed = 0usize;
                let mut resealed: Vec<(&[u8], &[u8], Vec<u8>)> = Vec::new();
                let mut skipped = 0u64;
                for (k, sealed) in &batch {
                    let rk = &k[8..];
                    let integrity = || StoreError::RecordIntegrity {
                        keyring: keyring.clone(),
                        key: show_key(rk),
                    };
                    let (header, _) = RecordHeader::parse(sealed).map_err(|_| integrity())?;
                    if header.dek_version == kr.current_dek {
                        skipped += 1;
                        processed += 1;
                        continue;
                    }
                    if !self.reserve_for_reencrypt(kr.id, kr.current_dek)? {
                        roll_over = Some(kr.current_dek);
                        break;
                    }
                    let Some(old) = self.record_dek(
                        keyring,
                        &kr,
                        header.dek_version,
                        std::time::Instant::now(),
                    )?
                    else {
                        return Err(integrity());
                    };
                    let plain = old.open(keyring, rk, sealed).map_err(|_| integrity())?;
                    let new = target
                        .seal(keyring, rk, plain.expose())
                        .map_err(|e| StoreError::from_seal(e, plain.len()))?;
                    resealed.push((k, sealed, new));
                    processed += 1;
                }
                if processed > 0 {
                    // The batch, its cursor and its audit entry in one commit. A record a
                    // writer changed since it was read is left as the writer wrote it.
                    let last = batch[processed - 1].0.clone();
                    let replaced = std::cell::Cell::new(0u64);
                    self.commit_shared(
                        &_r,
                        AuditOp::Reencrypted,
                        format!("keyring {keyring}"),
                        format!(
                            "batch of {processed} records up to {}: {} to re-encrypt under {}",
                            show_key(&last[8..]),
                            resealed.len(),
                            kr.current_dek
                        ),
                        |tx| {
                            lease.hold(tx.raw())?;
                            replaced.set(0);
                            for (k, old, new) in &resealed {
                                if tx.get(TreeId::Records, k)?.as_deref() == Some(*old) {
                                    tx.insert(TreeId::Records, k, new.clone())?;
                                    replaced.set(replaced.get() + 1);
                                }
                            }
                            tx.insert(TreeId::Jobs, job.clone(), last.clone())
                        },
                    )?;
                    report.reencrypted += replaced.get();
                    report.skipped += skipped + (resealed.len() as u64 - replaced.get());
                    done += processed as u64;
                    cursor = Some(last);
                }
                Ok(Some(roll_over))
            })();
            let roll_over = match step {
                Ok(Some(r)) => {
                    // The conflict budget is per stall, not for the whole job.
                    stale.reset();
                    batch_size = (batch_size * 2).min(BATCH);
                    r
                }
                Ok(None) => break,
                // Another replica changed the key states since this one loaded them (on a
                // shared database: the commit's check, or a key it replaced that looked
                // missing here): nothing of the batch was written. Take them in (the keyring
                // may be disabled now, its DEK retired), and go on from the cursor.
                Err(e)
                    if (matches!(e, StoreError::Conflict { .. })
                        || self.stale_key_error(&e, since))
                        && stale.again() =>
                {
                    batch_size = (batch_size / 4).max(1);
                    self.reload_if_moved();
                    continue;
                }
                Err(e) => return Err(e),
            };
            // With no lock held: the callback may call the store.
            progress(Progress {
                done,
                total: total.max(done),
            });
            if let Some(rolled) = roll_over {
                match self.roll_over_dek(keyring, rolled) {
                    Ok(()) => {}
                    // The next batch decides again from the reloaded states, as a write does.
                    Err(StoreError::Conflict { .. }) if stale.again() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        // The end: retire what no record uses, and the job with its audit entry. Both are key
        // changes; one refused because another replica changed the key states first changed
        // nothing (this replica has reloaded): tried again, as a batch is, rather than leave a
        // finished job for the next runner.
        let mut stale = crate::fleet::StaleBudget::default();
        loop {
            match self.finish_reencrypt(keyring, &job, &lease, &mut report) {
                Err(StoreError::Conflict { .. }) if stale.again() => {}
                r => break r?,
            }
        }
        drop(lease);
        Ok(report)
    }

    /// The last step of a re-encryption (see its caller).
    fn finish_reencrypt(
        &self,
        keyring: &KeyringName,
        job: &[u8],
        lease: &crate::lease::Lease<'_>,
        report: &mut ReencryptReport,
    ) -> Result<(), StoreError> {
        for v in self.retire_unused_deks(keyring)? {
            if !report.retired.contains(&v) {
                report.retired.push(v);
            }
        }
        let w = self.write_lifecycle();
        let detail = format!(
            "{} re-encrypted, {} skipped{}; DEK versions retired: {}",
            report.reencrypted,
            report.skipped,
            if report.resumed { ", resumed" } else { "" },
            if report.retired.is_empty() {
                "none".to_owned()
            } else {
                report
                    .retired
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        self.commit(
            &w,
            AuditOp::Reencrypted,
            format!("keyring {keyring}"),
            detail,
            |tx| {
                lease.hold(tx.raw())?;
                tx.remove(TreeId::Jobs, job)
            },
            Effects::none(),
        )?;
        Ok(())
    }

    /// Removes the DEK versions of `keyring` that no record uses and that are not current.
    ///
    /// # Errors
    /// A storage error.
    pub fn retire_unused_deks(&self, keyring: &KeyringName) -> Result<Vec<DekVersion>, StoreError> {
        let w = self.write_lifecycle();
        let kr = self.read_catalog().keyring(keyring)?;
        let mut used = std::collections::BTreeSet::new();
        for item in self
            .inner
            .storage
            .scan_prefix(TreeId::Records, kr.id.to_be_bytes())
        {
            let (k, v) = item?;
            let (h, _) = RecordHeader::parse(&v).map_err(|_| StoreError::RecordIntegrity {
                keyring: keyring.clone(),
                key: show_key(&k[8..]),
            })?;
            used.insert(h.dek_version);
        }
        let mut retire = Vec::new();
        for item in self
            .inner
            .storage
            .scan_prefix(TreeId::Deks, kr.id.to_be_bytes())
        {
            let (k, _) = item?;
            if let Some(v) = format::version_of_key(&k).and_then(|v| DekVersion::new(v).ok())
                && v != kr.current_dek
                && !used.contains(&v)
            {
                retire.push(v);
            }
        }
        if retire.is_empty() {
            return Ok(retire);
        }
        let list = retire
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        self.commit(
            &w,
            AuditOp::DeksRetired,
            format!("keyring {keyring}"),
            list,
            |tx| {
                for v in &retire {
                    tx.remove(TreeId::Deks, format::versioned_key(kr.id, v.get()))?;
                }
                Ok(())
            },
            Effects::none().purge(kr.id),
        )?;
        Ok(retire)
    }

    /// Work left unfinished by a crash or an interrupt.
    ///
    /// # Errors
    /// A storage error.
    pub fn pending_jobs(&self) -> Result<Vec<PendingJob>, StoreError> {
        let mut out = Vec::new();
        // A move's re-encryption is part of the move: listed once, as the move.
        let moving: Vec<(KeyringName, RootKeyName, RootKeyName)> = self
            .read_catalog()
            .keyrings
            .iter()
            .filter_map(|(n, e)| {
                e.moving_from
                    .clone()
                    .map(|from| (n.clone(), from, e.root.clone()))
            })
            .collect();
        for item in self
            .inner
            .storage
            .scan_prefix(TreeId::Jobs, REENCRYPT_PREFIX)
        {
            let (k, _) = item?;
            if let Ok(id) = <[u8; 8]>::try_from(&k[REENCRYPT_PREFIX.len()..])
                && let Some(name) = self.read_catalog().ids.get(&u64::from_be_bytes(id))
                && !moving.iter().any(|(m, ..)| m == name)
            {
                out.push(PendingJob::Reencrypt(name.clone()));
            }
        }
        out.extend(
            moving
                .into_iter()
                .map(|(keyring, from, to)| PendingJob::Move { keyring, from, to }),
        );
        for item in self.inner.storage.scan_prefix(TreeId::Jobs, PURGE_PREFIX) {
            let (k, _) = item?;
            if let Ok(id) = <[u8; 8]>::try_from(&k[PURGE_PREFIX.len()..]) {
                out.push(PendingJob::Purge(u64::from_be_bytes(id)));
            }
        }
        for item in self
            .inner
            .storage
            .scan_prefix(TreeId::Jobs, BACKEND_DESTROY_PREFIX)
        {
            let (k, _) = item?;
            // Believed only for a root the (sealed) catalog has as destroyed: the jobs tree is
            // not authenticated, and a job for a live root is not strongroom's.
            if let Ok(name) = std::str::from_utf8(&k[BACKEND_DESTROY_PREFIX.len()..])
                && let Ok(name) = RootKeyName::new(name)
                && matches!(
                    self.read_catalog().current_root(&name),
                    Err(StoreError::RootDestroyed { .. })
                )
            {
                out.push(PendingJob::BackendDestroy(name));
            }
        }
        let (due_keyrings, due_roots) = self.due_destructions(strongroom_core::Timestamp::now());
        out.extend(
            due_keyrings
                .into_iter()
                .map(PendingJob::DueKeyringDestruction),
        );
        out.extend(due_roots.into_iter().map(PendingJob::DueRootDestruction));
        let roots: Vec<RootKeyName> = self.read_catalog().roots.keys().cloned().collect();
        for root in roots {
            let Ok((current, _)) = self.read_catalog().current_root(&root) else {
                continue;
            };
            let mut keks = 0u64;
            for item in self.inner.storage.scan_prefix(TreeId::Keks, []) {
                let (_, v) = item?;
                if let Ok(b) = strongroom_core::WrappedKey::parse(&v)
                    && let Some(r) = b.root()
                    && r.name == root
                    && r.version != current
                {
                    keks += 1;
                }
            }
            if keks > 0 {
                out.push(PendingJob::Rewrap { root, keks });
            }
        }
        // Last: it runs after the jobs above (a destruction compacts when it finishes).
        if self
            .inner
            .storage
            .get(TreeId::Jobs, crate::compact::COMPACT_JOB)?
            .is_some()
        {
            out.push(PendingJob::Compact);
        }
        Ok(out)
    }
}
