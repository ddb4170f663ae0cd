//! The authenticated catalog: root and keyring entries that a database edit cannot change
//! silently.
//!
//! The catalog says which keys may be used: a root's or a keyring's state, its destruction
//! deadline, the root a keyring lives under, its current versions. Someone who can write the
//! database but holds no key could otherwise turn a disabled keyring back on, or push a
//! destruction deadline out. So:
//!
//! - every entry is **sealed**: stored as `entry ‖ MAC`, the MAC (HMAC-SHA256 under the catalog
//!   key, derived from the audit key, which the primary root wraps) over
//!   `"strongroom/catalog/v1" ‖ 0x00 ‖ store id ‖ tree ‖ u16 len ‖ tree key ‖ entry`, so an entry
//!   altered, or moved under another name or tree, fails;
//! - the set of entries is bound to the audit chain: the audit head carries a **digest**, the
//!   XOR over every sealed entry of HMAC(catalog key, `"strongroom/catalog-digest/v1"` ‖ tree ‖
//!   tree key ‖ stored bytes), updated in the same transaction as every change (the XOR lets a
//!   change update it from the entries it touches; the HMAC keeps anyone without the key from
//!   choosing entries whose XOR matches). An entry removed, added, or put back from an older
//!   copy no longer matches the MACed head, and the head cannot be rolled back without
//!   breaking the chain (or, whole, without the rollback check against the anchor file).
//!
//! Every catalog write goes through [`CommitTx`] inside `Store::commit`: that is the one place
//! that seals entries and keeps the digest, so no caller can forget to. The catalog is verified
//! at every open; a store from before (unsealed version-1 entries, a head without a digest) is
//! upgraded once, by its first commit (at open, when the primary root is usable).

use std::cell::Cell;

use subtle::ConstantTimeEq;

use crate::audit::{AuditKey, StoredHead, xor};
use crate::error::StoreError;
use crate::format::split_sealed as split;
use crate::storage::{Storage, TreeId, Tx, TxResult};

const SEAL_DOMAIN: &[u8] = b"strongroom/catalog/v1\0";
const DIGEST_DOMAIN: &[u8] = b"strongroom/catalog-digest/v1\0";

/// The catalog's trees.
pub(crate) const CATALOG_TREES: [TreeId; 2] = [TreeId::Roots, TreeId::Keyrings];

fn is_catalog(t: TreeId) -> bool {
    CATALOG_TREES.contains(&t)
}

fn tree_code(t: TreeId) -> u8 {
    t as u8
}

fn key_len(k: &[u8]) -> [u8; 2] {
    // Tree keys are names (at most 64 bytes) and versions: far below u16::MAX.
    u16::try_from(k.len()).unwrap_or(u16::MAX).to_be_bytes()
}

fn seal_mac(key: &AuditKey, store_id: &[u8; 16], t: TreeId, k: &[u8], body: &[u8]) -> [u8; 32] {
    key.catalog_mac(&[SEAL_DOMAIN, store_id, &[tree_code(t)], &key_len(k), k, body])
}

fn digest_part(key: &AuditKey, t: TreeId, k: &[u8], stored: &[u8]) -> [u8; 32] {
    key.catalog_mac(&[DIGEST_DOMAIN, &[tree_code(t)], &key_len(k), k, stored])
}

/// A transaction as `Store::commit` hands it to a change: catalog entries written through it
/// are sealed, and the catalog digest follows every write and removal.
pub(crate) struct CommitTx<'a> {
    tx: &'a Tx<'a>,
    key: &'a AuditKey,
    store_id: &'a [u8; 16],
    delta: Cell<[u8; 32]>,
}

impl<'a> CommitTx<'a> {
    pub(crate) fn new(tx: &'a Tx<'a>, key: &'a AuditKey, store_id: &'a [u8; 16]) -> Self {
        Self {
            tx,
            key,
            store_id,
            delta: Cell::new([0; 32]),
        }
    }

    /// How the digest changed (XOR of what left and what came).
    pub(crate) fn delta(&self) -> [u8; 32] {
        self.delta.get()
    }

    /// The transaction itself (for the audit append).
    pub(crate) fn raw(&self) -> &Tx<'a> {
        self.tx
    }

    fn forget(&self, t: TreeId, k: &[u8]) -> TxResult<()> {
        // Only sealed entries are in the digest (an unsealed one is being upgraded).
        if let Some(old) = self.tx.get(t, k)?
            && old.first().is_some_and(|v| *v >= 2)
        {
            self.delta
                .set(xor(&self.delta.get(), &digest_part(self.key, t, k, &old)));
        }
        Ok(())
    }

    pub(crate) fn get(&self, t: TreeId, k: impl AsRef<[u8]>) -> TxResult<Option<Vec<u8>>> {
        self.tx.get(t, k)
    }

    /// Inserts; a catalog entry (`v` is the entry's bytes) is stored sealed.
    pub(crate) fn insert(
        &self,
        t: TreeId,
        k: impl AsRef<[u8]>,
        v: impl AsRef<[u8]>,
    ) -> TxResult<()> {
        if !is_catalog(t) {
            return self.tx.insert(t, k, v);
        }
        let k = k.as_ref();
        let body = v.as_ref();
        self.forget(t, k)?;
        let mut stored = body.to_vec();
        stored.extend_from_slice(&seal_mac(self.key, self.store_id, t, k, body));
        self.delta.set(xor(
            &self.delta.get(),
            &digest_part(self.key, t, k, &stored),
        ));
        self.tx.insert(t, k, stored)
    }

    pub(crate) fn remove(&self, t: TreeId, k: impl AsRef<[u8]>) -> TxResult<()> {
        if is_catalog(t) {
            self.forget(t, k.as_ref())?;
        }
        self.tx.remove(t, k)
    }
}

/// What [`verify`] found.
pub(crate) struct Verified {
    /// Whether the catalog is sealed (false: a store not yet upgraded).
    pub sealed: bool,
}

/// Checks every catalog entry's MAC and the digest against the (MAC-checked) audit head.
///
/// # Errors
/// [`StoreError::CatalogIntegrity`] naming the first entry that fails, or saying what does not
/// match; a storage error.
pub(crate) fn verify(
    storage: &Storage,
    key: &AuditKey,
    store_id: &[u8; 16],
    head: Option<&StoredHead>,
) -> Result<Verified, StoreError> {
    let bad = |what: String| StoreError::CatalogIntegrity { what };
    if let Some(h) = head
        && !h.verifies(key)
    {
        return Err(bad(
            "the audit log's head (which vouches for the catalog)".into()
        ));
    }
    let mut digest = [0u8; 32];
    let mut legacy: Option<String> = None;
    let mut sealed = 0u64;
    for t in CATALOG_TREES {
        for item in storage.iter(t) {
            let (k, v) = item?;
            let what = || entry_name(t, &k);
            let s =
                split("catalog entry", &v).map_err(|_| bad(format!("{} (unreadable)", what())))?;
            match s.mac {
                None => {
                    legacy.get_or_insert_with(what);
                }
                Some(mac) => {
                    let want = seal_mac(key, store_id, t, &k, s.body);
                    if !bool::from(want.ct_eq(&mac)) {
                        return Err(bad(what()));
                    }
                    sealed += 1;
                    digest = xor(&digest, &digest_part(key, t, &k, &v));
                }
            }
        }
    }
    match head.and_then(|h| h.catalog) {
        // Sealed store: every entry sealed, and the set is the one the head vouches for.
        Some(want) => {
            if let Some(what) = legacy {
                return Err(bad(format!("{what} (replaced by an unsealed copy)")));
            }
            if !bool::from(want.ct_eq(&digest)) {
                return Err(bad(
                    "the catalog as a whole (it does not match the audit log's head: an entry was removed, added, or put back from an older copy)".into(),
                ));
            }
            Ok(Verified { sealed: true })
        }
        // A store from before the sealed catalog (its head has no digest): no entry of it may
        // be sealed yet. An empty catalog has nothing to upgrade.
        None if sealed > 0 => Err(bad(
            "the catalog (sealed entries, but an audit head from before sealing)".into(),
        )),
        None => Ok(Verified {
            sealed: legacy.is_none() && head.is_some_and(|h| h.catalog.is_some()),
        }),
    }
}

/// A catalog entry to write: its tree, its tree key, the entry.
pub(crate) type EntryWrite = (TreeId, Vec<u8>, Vec<u8>);

/// The unsealed (version-1) entries of a store not yet upgraded, each in its current version,
/// to be sealed.
pub(crate) fn legacy_entries(storage: &Storage) -> Result<Vec<EntryWrite>, StoreError> {
    let mut out = Vec::new();
    for t in CATALOG_TREES {
        for item in storage.iter(t) {
            let (k, v) = item?;
            if v.first() != Some(&1) {
                continue;
            }
            let corrupt = |source| StoreError::Corrupt {
                what: entry_name(t, &k),
                source,
            };
            let current = match t {
                TreeId::Roots => crate::format::RootEntry::parse(&v)
                    .map_err(corrupt)?
                    .to_bytes(),
                _ => crate::format::KeyringEntry::parse(&v)
                    .map_err(corrupt)?
                    .to_bytes(),
            };
            out.push((t, k.to_vec(), current));
        }
    }
    Ok(out)
}

/// An entry's name for an error: `root key acme/v2`, `keyring payroll`.
fn entry_name(t: TreeId, k: &[u8]) -> String {
    match t {
        TreeId::Roots => match crate::format::parse_root_key(k) {
            Ok((n, v)) => format!("root key entry {n}/{v}"),
            Err(_) => "a root key entry".into(),
        },
        _ => match crate::format::keyring_name(k) {
            Ok(n) => format!("keyring entry {n}"),
            Err(_) => "a keyring entry".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_tells_sealed_from_legacy_entries() {
        let legacy = [1u8, 2, 3];
        let s = split("x", &legacy).unwrap();
        assert_eq!((s.body, s.mac), (&legacy[..], None));
        let mut sealed = vec![2u8, 9, 9];
        sealed.extend_from_slice(&[7; 32]);
        let s = split("x", &sealed).unwrap();
        assert_eq!((s.body, s.mac), (&[2u8, 9, 9][..], Some([7; 32])));
        assert!(split("x", &[2u8; 32]).is_err(), "too short for its MAC");
        assert!(split("x", &[]).is_err());
    }
}
