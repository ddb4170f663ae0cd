//! Reading and verifying the audit log.

use crate::audit::{self, AuditBreak, AuditEntry, AuditReport};
use crate::catalog;
use crate::error::StoreError;
use crate::store::Store;

impl Store {
    /// Verifies the whole audit log: every entry's MAC, the hash chain, contiguous sequence
    /// numbers and the MACed head; and the catalog the head vouches for (every root and keyring
    /// entry's MAC, and the set of them). `Ok(Err(break))` names the first broken entry.
    ///
    /// # Errors
    /// [`StoreError::AuditUnavailable`] when the audit key cannot be unwrapped,
    /// [`StoreError::CatalogIntegrity`] for a catalog changed outside strongroom, or a storage
    /// error.
    pub fn verify_audit(&self) -> Result<Result<AuditReport, AuditBreak>, StoreError> {
        let started = std::time::Instant::now();
        // On a shared database other replicas append while this one reads: the catalog is
        // checked against the head as read after the log, and a change committed in between
        // makes them disagree. A failure while the generation moved is checked again; one
        // with the key states still is real.
        let r = self.read_between_key_changes(
            10,
            || self.verify_audit_inner(),
            |r| matches!(r, Ok(Ok(_))),
        );
        crate::telemetry::operation("audit.verify", started, &r);
        r
    }

    fn verify_audit_inner(&self) -> Result<Result<AuditReport, AuditBreak>, StoreError> {
        let key = self.audit_key()?;
        // The backend's anchor, where the store keeps it (`crate::anchor`), read before the log:
        // another replica may append and anchor meanwhile, and the log read after holds it.
        let in_backend = self.backend_anchor_for_verify(&key)?;
        let report = match audit::verify(&self.inner.storage, &key, &self.inner.meta.store_id)? {
            Ok(r) => r,
            Err(b) => return Ok(Err(b)),
        };
        // The anchor kept outside the database must be genuine and name an entry of this chain.
        let anchor = match in_backend {
            // Anchors there that do not verify are not this store's: ignored.
            Some(Some(a)) => Some(a.head),
            // None there yet: a fleet from before its backend kept one has its file.
            Some(None) | None => match self.anchor_file()? {
                Some(bytes) => {
                    let Some(a) = audit::verified_anchor(&key, &bytes) else {
                        return Ok(Err(AuditBreak {
                            seq: report.entries,
                            problem: "the anchor outside the database (audit-anchor) is damaged or was not written by this store: it fails its MAC".into(),
                        }));
                    };
                    Some(a.head)
                }
                None => None,
            },
        };
        if let Some(anchor) = anchor {
            if anchor.seq > report.entries {
                return Ok(Err(AuditBreak {
                    seq: report.entries + 1,
                    problem: format!(
                        "the log ends at entry {} but the anchor outside the database records entry {}: acknowledged entries were lost",
                        report.entries, anchor.seq
                    ),
                }));
            }
            if anchor.seq > 0
                && audit::entry_hash(&self.inner.storage, anchor.seq)? != Some(anchor.hash)
            {
                return Ok(Err(AuditBreak {
                    seq: anchor.seq,
                    problem: "it is not the entry the anchor outside the database recorded: the log was replaced from that point".into(),
                }));
            }
        }
        let head = audit::stored_head_full(&self.inner.storage)?;
        catalog::verify(
            &self.inner.storage,
            &key,
            &self.inner.meta.store_id,
            head.as_ref(),
        )?;
        Ok(Ok(report))
    }

    /// Audit entries from sequence number `from` on (not verified: use
    /// [`Store::verify_audit`]).
    pub fn audit_entries(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<AuditEntry, StoreError>> + '_ {
        audit::entries(&self.inner.storage, from)
    }
}
