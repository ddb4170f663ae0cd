//! The audit anchor kept in the backend: a fleet's rollback detection.
//!
//! One process anchors its audit head in a file of its data directory ([`ANCHOR_FILE`]). A
//! fleet cannot rely on that: a replica on a new machine has no file, and whoever can write the
//! shared database may reach a replica's disk too. So when the backend keeps anchors (an HSM,
//! in a data object: [`Backend::audit_anchors`](strongroom_core::Backend::audit_anchors)), a
//! store on a shared engine keeps its anchor there, and so does any store that finds anchors
//! there already (a fleet's store opened by one process). The anchor is the log's head
//! (sequence and hash), MACed under the audit key as the file is.
//!
//! - **Written** after every key change and audited refusal (a job's steps at most once a
//!   second), once the database has flushed: the anchors are read first and the head after,
//!   so the head is at least as new as any anchor read (each is written after its own
//!   commit). It is written only past the newest genuine anchor there, so a replica committing
//!   late never puts it back; and never over one that this database's log does not hold (this
//!   database was put back under a running replica: the next operation verifies again, and
//!   refuses).
//! - **Checked** whenever the catalog is verified (at open, and at every reload of the key
//!   states): the newest anchor whose MAC verifies must be an entry of this log, the same entry
//!   (by hash), not one past its end. Anchors that do not verify (another store's, damaged) are
//!   ignored, and removed by the next write.
//! - **Accepting a rollback** anchors the store anew, for the whole fleet.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use strongroom_core::BackendError;

use crate::audit::{self, Anchor, AuditHead, AuditKey};
use crate::error::StoreError;
use crate::store::{ANCHOR_FILE, Store};

/// A job's steps anchor in the backend at most this often (a key change always anchors).
const JOB_STEPS_ANCHOR_EVERY: Duration = Duration::from_secs(1);

/// How errors name the audit anchor a backend keeps.
pub(crate) const BACKEND_ANCHOR: &str =
    "the audit anchor the backend keeps (the HSM's data object <namespace>/anchor)";

/// Whether a store keeps its anchor in its backend: on a shared engine, whenever the backend
/// keeps anchors (one that cannot be reached now but is not known not to keep them counts);
/// on an engine of its own, when anchors are there already (a fleet's store opened by one
/// process).
pub(crate) fn kept_in_backend(shared: bool, anchors: &Result<Vec<Vec<u8>>, BackendError>) -> bool {
    match anchors {
        Ok(values) => shared || !values.is_empty(),
        Err(BackendError::NotSupported { .. }) => false,
        Err(_) => shared,
    }
}

impl Store {
    /// The anchors the backend keeps, raw.
    fn backend_anchor_values(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner
            .backend
            .audit_anchors()
            .map_err(|source| StoreError::Backend {
                while_doing: "reading the audit anchor the backend keeps".into(),
                source,
            })
    }

    /// The newest of `values` that is genuine (its MAC verifies under `key`).
    fn newest_genuine(key: &AuditKey, values: &[Vec<u8>]) -> Option<Anchor> {
        values
            .iter()
            .filter_map(|v| audit::verified_anchor(key, v))
            .max_by_key(|a| a.head.seq)
    }

    /// Whether this database's log holds `anchored`: the same entry, by hash.
    fn log_holds(&self, anchored: AuditHead) -> Result<bool, StoreError> {
        Ok(anchored.seq == 0
            || audit::entry_hash(&self.inner.storage, anchored.seq)? == Some(anchored.hash))
    }

    /// Refuses a log that does not hold `anchored` (it ends before it, or holds another entry
    /// in its place), unless the rollback is being accepted.
    fn refuse_unless_held(&self, anchored: AuditHead, accept: bool) -> Result<(), StoreError> {
        if accept || self.log_holds(anchored)? {
            return Ok(());
        }
        let head = audit::stored_head(&self.inner.storage)?.map_or(0, |h| h.seq);
        Err(StoreError::RolledBack {
            path: self.inner.dir.clone(),
            anchor: PathBuf::from(BACKEND_ANCHOR),
            anchored: anchored.seq,
            // Where the log ends, or the last entry before the one it replaced.
            found: head.min(anchored.seq.saturating_sub(1)),
        })
    }

    /// Checks the backend's anchor against the log (see the module docs), when the catalog is
    /// verified; returns the anchor checked, or `None` when the backend holds no genuine one
    /// and this store has a file anchor to fall back on (a fleet from before its backend kept
    /// the anchor).
    pub(crate) fn check_backend_anchor(
        &self,
        key: &AuditKey,
        accept: bool,
    ) -> Result<Option<Anchor>, StoreError> {
        // Read before the head (`refuse_unless_held` reads it after).
        let values = match self.backend_anchor_values() {
            Ok(v) => v,
            // Checked since open: a backend that does not answer for a moment does not hold a
            // reload of the key states up (the rollback guarded against is of the database).
            Err(_) if self.inner.anchor_checked.load(Ordering::Acquire) => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some(a) = Self::newest_genuine(key, &values) {
            self.refuse_unless_held(a.head, accept)?;
            self.inner.anchor_checked.store(true, Ordering::Release);
            return Ok(Some(a));
        }
        // No genuine anchor there. Gone since it was checked: the next commit writes it again.
        if self.inner.anchor_checked.load(Ordering::Acquire) || self.anchor_file()?.is_some() {
            return Ok(None);
        }
        let found = audit::stored_head(&self.inner.storage)?.map_or(0, |h| h.seq);
        if found > 0 && !accept {
            return Err(StoreError::AnchorMissing {
                path: self.inner.dir.clone(),
                anchor: PathBuf::from(BACKEND_ANCHOR),
                found,
            });
        }
        Ok(None)
    }

    /// Writes the anchor to the backend (see the module docs); `reset`: even over a newer one
    /// (a rollback accepted). Returns whether the backend holds an anchor for this log now (if
    /// not, the caller writes the file instead).
    pub(crate) fn write_backend_anchor(&self, key: &AuditKey, reset: bool) -> bool {
        let Ok(there) = self.backend_anchor_values() else {
            return false;
        };
        // The head after the anchors: at least as new as any of them.
        let Ok(Some(head)) = audit::stored_head(&self.inner.storage) else {
            return false;
        };
        let newest = Self::newest_genuine(key, &there);
        if !reset
            && let Some(a) = &newest
            && !self.log_holds(a.head).unwrap_or(true)
        {
            // This log does not hold the anchored entry: the database was put back under this
            // replica. The anchor is left as it is, and the next operation verifies again.
            self.inner.catalog_verified.store(false, Ordering::Release);
            self.inner.anchor_checked.store(false, Ordering::Release);
            return true;
        }
        let written = if reset || newest.is_none_or(|a| a.head.seq < head.seq) {
            let sealed = self.inner.catalog_sealed.load(Ordering::Acquire);
            self.inner
                .backend
                .put_audit_anchor(&audit::anchor_bytes(key, head, sealed), &there)
                .is_ok()
        } else {
            true
        };
        if written {
            *self
                .inner
                .anchor_written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
            // A file left from before (the store run by one process, or written while the
            // backend did not answer) is not the anchor any more.
            let _ = std::fs::remove_file(self.inner.dir.join(ANCHOR_FILE));
        }
        written
    }

    /// Whether a job's step should anchor now: always with a file anchor (cheap), and in the
    /// backend at most every [`JOB_STEPS_ANCHOR_EVERY`].
    pub(crate) fn anchor_due(&self) -> bool {
        !self.inner.anchor_in_backend
            || self
                .inner
                .anchor_written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_none_or(|at| at.elapsed() >= JOB_STEPS_ANCHOR_EVERY)
    }

    /// Whether this store keeps its audit anchor in its backend (a fleet on a backend that
    /// keeps one, such as an HSM) rather than in a file of its directory; with the sequence
    /// number of the newest genuine anchor there (`None`: none, or the backend or the audit key
    /// cannot be read now).
    #[must_use]
    pub fn anchor_in_backend(&self) -> Option<Option<u64>> {
        self.inner.anchor_in_backend.then(|| {
            let key = self.audit_key().ok()?;
            let values = self.backend_anchor_values().ok()?;
            Self::newest_genuine(&key, &values).map(|a| a.head.seq)
        })
    }

    /// The newest genuine anchor the backend keeps, for `verify_audit` (`None` if the store
    /// keeps its anchor in a file).
    pub(crate) fn backend_anchor_for_verify(
        &self,
        key: &AuditKey,
    ) -> Result<Option<Option<Anchor>>, StoreError> {
        if !self.inner.anchor_in_backend {
            return Ok(None);
        }
        let values = self.backend_anchor_values()?;
        Ok(Some(Self::newest_genuine(key, &values)))
    }
}
