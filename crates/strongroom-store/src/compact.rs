//! Compaction: what makes a destruction hold on the disk.
//!
//! Removing a destroyed keyring's wrapped keys and records from the trees is not enough: sled
//! keeps removed values in its segment files until it happens to reuse them. Every destruction
//! (and every completed move, which drops the keys under the old root) therefore records a
//! compaction job in the same transaction, and the store then copies every live entry into a
//! new database generation and shreds the old one (see `storage.rs` for the crash-safe switch).
//! The job stays in the old generation until the switch, so a crash at any point leaves it to
//! the next open (or `strongroom compact` / `resume`).
//!
//! What stays out of reach is said in the README's security model: copies made before (backups,
//! snapshots), blocks a copy-on-write file system or an SSD keeps after an overwrite, the OS
//! page cache and swap.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use strongroom_core::KeyState;

use crate::audit::AuditOp;
use crate::commit::Effects;
use crate::destruction::PURGE_PREFIX;
use crate::error::StoreError;
use crate::records::COUNTER_PREFIX;
use crate::storage::TreeId;
use crate::store::Store;
use crate::telemetry;

/// The job key of a pending compaction (in the jobs tree; never copied into a new generation).
pub(crate) const COMPACT_JOB: &[u8] = b"compact";

/// How long a compaction waits for scans and transactions in flight before giving up.
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactReport {
    /// Live entries copied into the new database generation.
    pub entries: u64,
    /// Entries of destroyed keyrings left behind (normally 0: they were purged already).
    pub dropped: u64,
    /// Bytes of the old generation's files overwritten with zeros and removed.
    pub shredded_bytes: u64,
    /// The generation the store runs on now (`db.<N>` in the store directory).
    pub generation: u64,
    /// How long it took (the store's reads and writes waited for the copy).
    pub elapsed: Duration,
}

/// Whether a tree key belongs to one of the keyring ids in `gone` (records, KEKs and DEKs start
/// with the keyring id; use counters, purges and re-encryptions name it after their prefix).
fn belongs_to(t: TreeId, key: &[u8], gone: &BTreeSet<u64>) -> bool {
    let id_at = |at: usize| {
        key.get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .is_some_and(|id| gone.contains(&id))
    };
    match t {
        TreeId::Records | TreeId::Keks | TreeId::Deks => id_at(0),
        TreeId::Jobs => [
            COUNTER_PREFIX,
            PURGE_PREFIX,
            crate::jobs::REENCRYPT_PREFIX,
            crate::moves::MOVE_PREFIX,
        ]
        .iter()
        .any(|p| key.starts_with(p) && id_at(p.len())),
        _ => false,
    }
}

impl Store {
    /// Copies every live entry into a new database generation and shreds the old one's files
    /// (overwritten with zeros, synced, removed): after it, nothing a destruction removed is
    /// left in any file under the store directory. Runs by itself after every destruction and
    /// completed move; call it to finish one that was interrupted (it also runs at open).
    ///
    /// Reads and writes of the store wait while the live entries are copied (about a second
    /// per 100 MB here: README, benchmarks).
    ///
    /// # Errors
    /// A storage or I/O error, or [`StoreError::InUse`] if scans in flight did not finish in
    /// time; the compaction job then stays pending ([`Store::pending_jobs`]).
    pub fn compact(&self) -> Result<CompactReport, StoreError> {
        let started = Instant::now();
        let r = self.compact_inner(started);
        telemetry::operation("store.compact", started, &r);
        if let Ok(report) = &r {
            telemetry::compacted(report.entries, report.shredded_bytes);
        }
        r
    }

    fn compact_inner(&self, started: Instant) -> Result<CompactReport, StoreError> {
        let _lease = self.claim("compact", "the compaction")?;
        // Held throughout: no key change (a destruction committing after the set of destroyed
        // keyrings below was taken, with its own compaction job) can fall into the copy.
        let w = self.write_lifecycle();
        let gone: BTreeSet<u64> = self
            .read_catalog()
            .keyrings
            .values()
            .filter(|k| k.state == KeyState::Destroyed)
            .map(|k| k.id)
            .collect();
        let r = self.inner.storage.compact(
            &|t, k| !(t == TreeId::Jobs && k == COMPACT_JOB || belongs_to(t, k, &gone)),
            BUSY_WAIT,
        );
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.audit_failure(AuditOp::Compacted, "store".into(), &e);
                return Err(e);
            }
        };
        // On a shared database this process's lifecycle lock does not hold other replicas
        // back: one may have destroyed a keyring since `gone` was taken, and its compaction
        // job (written with the destruction) may have gone in the copy above. The job is
        // asked for again, so that those records' bytes are erased by the next compaction.
        if self.inner.fleet.shared && self.behind() && self.reload_locked(&w).is_ok() {
            let more = self
                .read_catalog()
                .keyrings
                .values()
                .any(|k| k.state == KeyState::Destroyed && !gone.contains(&k.id));
            if more {
                self.inner
                    .storage
                    .insert(TreeId::Jobs, COMPACT_JOB, Vec::new())?;
            }
        }
        let report = CompactReport {
            entries: r.entries,
            dropped: r.dropped,
            shredded_bytes: r.shredded_bytes,
            generation: r.generation,
            elapsed: started.elapsed(),
        };
        if let Some(why) = r.shred_error {
            // The store runs on the new generation, but files of an old one are left: the job
            // is recorded again, so that `pending_jobs` says so and the next compaction (or
            // open) shreds them.
            let e = StoreError::InUse(format!(
                "the database was compacted into generation {}, but shredding the old files failed ({why}); they are shredded by the next compaction (`strongroom compact`) or open",
                report.generation
            ));
            let _ = self
                .inner
                .storage
                .insert(TreeId::Jobs, COMPACT_JOB, Vec::new());
            let _ = self.inner.storage.flush();
            self.audit_failure(AuditOp::Compacted, "store".into(), &e);
            return Err(e);
        }
        // The compaction is done whether or not its entry can be written (the primary root may
        // be disabled): the audit key is needed only to record it.
        let _ = self.commit(
            &w,
            AuditOp::Compacted,
            "store".into(),
            format!(
                "{} entries copied into generation {}, {} left behind, {} bytes shredded",
                report.entries, report.generation, report.dropped, report.shredded_bytes
            ),
            |_| Ok(()),
            Effects::none(),
        );
        Ok(report)
    }

    /// Runs the compaction a destruction or a move asked for, if one is pending
    /// ([`PendingJob::Compact`](crate::PendingJob::Compact)); `None` if none was.
    ///
    /// # Errors
    /// As [`Store::compact`].
    pub fn finish_compaction(&self) -> Result<Option<CompactReport>, StoreError> {
        if self.inner.storage.get(TreeId::Jobs, COMPACT_JOB)?.is_none() {
            return Ok(None);
        }
        self.compact().map(Some)
    }

    /// [`Store::finish_compaction`] as the last step of a destruction or a move: `None` also
    /// when another runner is compacting already (it compacts what they removed too: it starts
    /// from the destroyed keyrings as of its start, and it holds the lifecycle lock so nothing
    /// is destroyed meanwhile; a destruction that commits before it starts is covered, one that
    /// commits after leaves its own job for the next compaction).
    pub(crate) fn compact_if_asked(&self) -> Result<Option<CompactReport>, StoreError> {
        match self.finish_compaction() {
            Err(StoreError::JobBusy { .. }) => Ok(None),
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn belongs_to_matches_only_the_named_keyrings() {
        let gone: BTreeSet<u64> = [7].into_iter().collect();
        let id7 = 7u64.to_be_bytes();
        let id8 = 8u64.to_be_bytes();
        assert!(belongs_to(
            TreeId::Records,
            &[&id7[..], b"alice"].concat(),
            &gone
        ));
        assert!(!belongs_to(
            TreeId::Records,
            &[&id8[..], b"alice"].concat(),
            &gone
        ));
        assert!(belongs_to(
            TreeId::Keks,
            &[&id7[..], &[0, 0, 0, 1]].concat(),
            &gone
        ));
        assert!(belongs_to(
            TreeId::Jobs,
            &[COUNTER_PREFIX, &id7[..], &[0, 0, 0, 1]].concat(),
            &gone
        ));
        assert!(belongs_to(
            TreeId::Jobs,
            &[PURGE_PREFIX, &id7[..]].concat(),
            &gone
        ));
        assert!(!belongs_to(TreeId::Jobs, COMPACT_JOB, &gone));
        assert!(!belongs_to(TreeId::Meta, &id7, &gone));
        assert!(!belongs_to(TreeId::Records, &id7[..4], &gone), "short keys");
    }
}
