//! Reading and verifying the audit log.

use crate::audit::{self, AuditBreak, AuditEntry, AuditReport};
use crate::error::StoreError;
use crate::store::Store;

impl Store {
    /// Verifies the whole audit log: every entry's MAC, the hash chain, contiguous sequence
    /// numbers and the MACed head. `Ok(Err(break))` names the first broken entry.
    ///
    /// # Errors
    /// [`StoreError::AuditUnavailable`] when the audit key cannot be unwrapped, or a storage
    /// error.
    pub fn verify_audit(&self) -> Result<Result<AuditReport, AuditBreak>, StoreError> {
        let key = self.audit_key()?;
        audit::verify(&self.inner.storage, &key, &self.inner.meta.store_id)
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
