//! Records: sealed values in a keyring.
//!
//! A value is sealed under the keyring's current DEK (AES-256-GCM, random 96-bit nonce) with an
//! AAD that binds the keyring, the record key and the header, so a value moved to another key or
//! keyring, truncated or altered fails to open with an integrity error naming the record.
//! Steady-state reads and writes find their DEK in the cache and make no backend call.
//!
//! Each DEK counts its encryptions in a persisted counter (reserved in blocks, so a crash can
//! only over-count) and rolls over to a new DEK after `dek_rollover_after` of them.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use strongroom_core::record::{RECORD_OVERHEAD, RecordCipher, SealedRecord};
use strongroom_core::{DekVersion, FormatError, KeyringName, Plaintext};

use crate::audit::{self, AuditOp, Event, Outcome};
use crate::error::StoreError;
use crate::format;
use crate::format::KeyringEntry;
use crate::storage::{BatchRef, Guard, TreeId};
use crate::store::{Counter, Store};
use crate::telemetry::{self, record_op};

/// Longest record key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest record value, in bytes (16 MiB).
pub const MAX_VALUE_LEN: usize = 16 << 20;
pub(crate) const COUNTER_PREFIX: &[u8] = b"uses/";
const COUNTER_BLOCK: u64 = 4096;
/// The per-thread seal buffer is kept after a put up to this capacity...
const KEPT_SEAL_BUFFER: usize = 64 << 10;
/// ...and after a batch up to this one: a batch of a thousand 1 KiB values seals into about a
/// megabyte, which glibc would otherwise map and unmap afresh for each batch (a page fault per
/// 4 KiB; measured: that alone made batches slower than single puts).
const KEPT_BATCH_BUFFER: usize = 4 << 20;

/// Runs `f` with this thread's buffer for sealed records (ciphertext, not secret; `f` clears
/// it as it needs), then keeps it for the next call if its capacity is at most `keep`. A call
/// from a thread-local destructor, after the buffer is gone, gets a buffer of its own.
fn with_seal_buffer<R>(keep: usize, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    thread_local! {
        static SEALED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    // Taken out while in use, so that a nested call (none today) would find an empty buffer
    // rather than a borrowed one.
    let mut buf = SEALED
        .try_with(|cell| std::mem::take(&mut *cell.borrow_mut()))
        .unwrap_or_default();
    let r = f(&mut buf);
    if buf.capacity() <= keep {
        let _ = SEALED.try_with(|cell| *cell.borrow_mut() = buf);
    }
    r
}

/// One operation of an atomic batch. A put's value is plaintext: it is zeroized when the
/// operation is dropped and never shown by `Debug` (which gives its length).
#[derive(Clone)]
pub enum BatchOp {
    /// Put a value.
    Put(Vec<u8>, Vec<u8>),
    /// Delete a key.
    Delete(Vec<u8>),
}

impl Drop for BatchOp {
    fn drop(&mut self) {
        if let Self::Put(_, value) = self {
            strongroom_core::wipe(value);
        }
    }
}

impl std::fmt::Debug for BatchOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Put(k, v) => write!(f, "Put({:?}, [{} bytes REDACTED])", show_key(k), v.len()),
            Self::Delete(k) => write!(f, "Delete({:?})", show_key(k)),
        }
    }
}

/// One operation of an atomic batch of borrowed bytes ([`Store::write_batch`]). `Debug` shows
/// a put's value as its length only.
#[derive(Clone, Copy)]
pub enum Write<'a> {
    /// Put a value (plaintext) under a key.
    Put(&'a [u8], &'a [u8]),
    /// Delete a key.
    Delete(&'a [u8]),
}

impl std::fmt::Debug for Write<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Put(k, v) => write!(f, "Put({:?}, [{} bytes REDACTED])", show_key(k), v.len()),
            Self::Delete(k) => write!(f, "Delete({:?})", show_key(k)),
        }
    }
}

fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError::TooLarge {
            what: "a record key",
            limit: MAX_KEY_LEN,
            found: key.len(),
        });
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(StoreError::TooLarge {
            what: "a record value",
            limit: MAX_VALUE_LEN,
            found: value.len(),
        });
    }
    Ok(())
}

/// A record key as it may appear in an error: printable ASCII as is, the rest escaped.
pub(crate) fn show_key(key: &[u8]) -> String {
    key.iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .take(200)
        .collect()
}

/// The prefix of every DEK use counter of keyring `id`.
pub(crate) fn counter_prefix(id: u64) -> Vec<u8> {
    let mut k = COUNTER_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn counter_key(id: u64, v: u32) -> Vec<u8> {
    let mut k = counter_prefix(id);
    k.extend_from_slice(&v.to_be_bytes());
    k
}

/// A stored use counter of DEK `v` (absent: 0). One of the wrong length is damage, not a fresh
/// start: counting from 0 again would let the DEK seal more than its quota of random nonces.
fn parse_uses(v: DekVersion, raw: Option<&[u8]>) -> Result<u64, StoreError> {
    let Some(b) = raw else { return Ok(0) };
    <[u8; 8]>::try_from(b)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            what: format!("the use counter of DEK {v}"),
            source: FormatError::BadLength {
                what: "DEK use counter",
                field: "count",
                expected: 8,
                found: b.len(),
            },
        })
}

enum Reserve {
    Ok,
    RollOver,
}

/// How a write under the lifecycle lock ended.
enum Next {
    /// Written; for a single delete, whether the record existed.
    Done(bool),
    /// Nothing written: DEK `v` must roll over first.
    RollOver(DekVersion),
    /// Nothing written: another replica changed the key states since this one loaded them
    /// (a fleet on a shared database); reload, then decide again.
    Stale,
}

impl Store {
    /// Counts `n` more encryptions under DEK `v` of keyring `id` (one put, or all the puts of
    /// a batch at once), or says it must roll over first: all `n` or none.
    fn reserve(&self, id: u64, v: DekVersion, n: u64) -> Result<Reserve, StoreError> {
        let limit = self.inner.options.dek_rollover_after.max(1);
        let mut counters = self
            .inner
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = match counters.entry((id, v.get())) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                // After a restart, every reserved encryption counts as used.
                let reserved = self.stored_uses(id, v)?;
                e.insert(Counter {
                    used: reserved,
                    reserved,
                })
            }
        };
        let wanted = c.used.saturating_add(n);
        if wanted > limit {
            return Ok(Reserve::RollOver);
        }
        if wanted > c.reserved {
            if self.inner.fleet.shared {
                return self.reserve_fleet_block(c, id, v, n, limit);
            }
            // The next block is on disk before any of it is used, so a crash can only
            // over-count.
            let reserved = wanted.max(c.used + COUNTER_BLOCK.min(limit)).min(limit);
            self.inner.storage.insert(
                TreeId::Jobs,
                counter_key(id, v.get()),
                reserved.to_be_bytes(),
            )?;
            c.reserved = reserved;
        }
        c.used = wanted;
        Ok(Reserve::Ok)
    }

    /// On a shared database the stored count is the fleet's high-water mark: a replica takes
    /// its next block from it in a transaction (two replicas never get the same block, so the
    /// sum of all replicas' encryptions under a DEK stays within `dek_rollover_after`), and
    /// what was left of its previous block is counted as used.
    fn reserve_fleet_block(
        &self,
        c: &mut Counter,
        id: u64,
        v: DekVersion,
        n: u64,
        limit: u64,
    ) -> Result<Reserve, StoreError> {
        let key = counter_key(id, v.get());
        let block = self.inner.storage.transaction_on(&[TreeId::Jobs], |tx| {
            let start = match parse_uses(v, tx.get(TreeId::Jobs, &key)?.as_deref()) {
                Ok(n) => n,
                Err(e) => return crate::storage::abort(e),
            };
            if start.saturating_add(n) > limit {
                return Ok(None);
            }
            let end = (start + n).max(start + COUNTER_BLOCK.min(limit)).min(limit);
            tx.insert(TreeId::Jobs, &key, end.to_be_bytes())?;
            Ok(Some((start, end)))
        })?;
        let Some((start, end)) = block else {
            // The fleet has used this DEK's quota: every replica's count says so from now on.
            c.used = limit;
            c.reserved = limit;
            return Ok(Reserve::RollOver);
        };
        c.used = start + n;
        c.reserved = end;
        Ok(Reserve::Ok)
    }

    /// Counts one encryption for a re-encryption; `false` when the DEK must roll over first.
    pub(crate) fn reserve_for_reencrypt(&self, id: u64, v: DekVersion) -> Result<bool, StoreError> {
        Ok(matches!(self.reserve(id, v, 1)?, Reserve::Ok))
    }

    /// Encryptions counted under a keyring's DEK version (as reserved on disk, after a restart).
    ///
    /// # Errors
    /// [`StoreError::KeyringNotFound`] or a storage error.
    pub fn dek_uses(&self, keyring: &KeyringName, v: DekVersion) -> Result<u64, StoreError> {
        let id = self.read_catalog().keyring(keyring)?.id;
        if let Some(c) = self
            .inner
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(id, v.get()))
        {
            return Ok(c.used);
        }
        self.stored_uses(id, v)
    }

    /// The encryptions reserved on disk for DEK `v` of keyring `id` (0 before the first). A
    /// counter of the wrong length is damage, not a fresh start: counting from 0 again would
    /// let the DEK seal more than its quota of random nonces.
    fn stored_uses(&self, id: u64, v: DekVersion) -> Result<u64, StoreError> {
        parse_uses(
            v,
            self.inner
                .storage
                .get(TreeId::Jobs, counter_key(id, v.get()))?
                .as_deref(),
        )
    }

    fn audit_access(
        &self,
        op: AuditOp,
        keyring: &KeyringName,
        key: &[u8],
        outcome: Outcome,
        detail: impl FnOnce() -> String,
    ) -> Result<(), StoreError> {
        if !self.inner.options.audit_data_access {
            return Ok(());
        }
        let detail = detail();
        // Under the lifecycle lock like every other write, so a backup (which holds it
        // exclusively) never copies the log halfway through an append. Callers hold no lock here.
        let _r = self.read_lifecycle();
        let akey = self.audit_key()?;
        let event = Event {
            op,
            outcome,
            actor: &self.actor,
            replica: &self.inner.options.replica,
            target: format!("record {} in keyring {keyring}", show_key(key)),
            detail,
        };
        let store_id = self.inner.meta.store_id;
        // The log and its head only: audited reads do not take part in other writes'
        // transactions (they still queue on the log's head, which every entry moves).
        self.inner
            .storage
            .transaction_on(&[TreeId::Audit, TreeId::Meta], |tx| {
                audit::append(tx, &akey, &store_id, &event, [0; 32]).map(|_| ())
            })?;
        Ok(())
    }

    /// Seals and writes `items` together with their data-access audit entries, in one
    /// transaction over the records, the log and its head: a write is never there without its
    /// entry, nor the entry without the write. `Some(v)` when DEK `v` must roll over first
    /// (nothing written). Returns, for a single delete, whether the record existed.
    fn write_audited(
        &self,
        keyring: &KeyringName,
        kr: &KeyringEntry,
        items: &[(&[u8], Option<&[u8]>)],
    ) -> Result<Next, StoreError> {
        let akey = self.audit_key()?;
        let puts = items.iter().filter(|(_, v)| v.is_some()).count() as u64;
        if puts > 0
            && matches!(
                self.reserve(kr.id, kr.current_dek, puts)?,
                Reserve::RollOver
            )
        {
            return Ok(Next::RollOver(kr.current_dek));
        }
        let mut cipher = None;
        let mut sealed: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(items.len());
        for (k, v) in items {
            let tk = format::record_key(kr.id, k);
            let Some(v) = v else {
                sealed.push((tk, None));
                continue;
            };
            let c = match &cipher {
                Some(c) => c,
                None => cipher.insert(self.dek(keyring, kr, kr.current_dek)?),
            };
            let s = c
                .seal(keyring, k, v)
                .map_err(|e| StoreError::from_seal(e, v.len()))?;
            sealed.push((tk, Some(s)));
        }
        let store_id = self.inner.meta.store_id;
        let shared = self.inner.fleet.shared;
        let loaded = self.serving();
        let written = self.inner.storage.transaction_on(
            &[TreeId::Records, TreeId::Audit, TreeId::Meta],
            |tx| {
                // On a shared database: nothing is written after a key change this replica
                // has not seen (`write_guarded`).
                if shared && crate::fleet::generation_in(tx)? != loaded {
                    return Ok(None);
                }
                let mut existed = false;
                for ((k, v), (tk, s)) in items.iter().zip(&sealed) {
                    let (op, detail) = match (v, s) {
                        (Some(v), Some(s)) => {
                            tx.insert(TreeId::Records, tk.clone(), s.clone())?;
                            (AuditOp::RecordWritten, format!("{} bytes", v.len()))
                        }
                        _ => {
                            existed = tx.get(TreeId::Records, tk)?.is_some();
                            tx.remove(TreeId::Records, tk.clone())?;
                            (
                                AuditOp::RecordDeleted,
                                if existed { "deleted" } else { "not found" }.to_owned(),
                            )
                        }
                    };
                    let event = Event {
                        op,
                        outcome: Outcome::Ok,
                        actor: &self.actor,
                        replica: &self.inner.options.replica,
                        target: format!("record {} in keyring {keyring}", show_key(k)),
                        detail,
                    };
                    audit::append(tx, &akey, &store_id, &event, [0; 32])?;
                }
                Ok(Some(existed))
            },
        )?;
        Ok(written.map_or(Next::Stale, Next::Done))
    }

    /// Seals and writes one record; `Some(v)` when DEK `v` must roll over first (nothing
    /// written). The sealed bytes go through a per-thread buffer: sled copies the value into its
    /// own, so this saves an allocation per put.
    fn put_one(
        &self,
        keyring: &KeyringName,
        kr: &KeyringEntry,
        key: &[u8],
        value: &[u8],
    ) -> Result<Next, StoreError> {
        if let Reserve::RollOver = self.reserve(kr.id, kr.current_dek, 1)? {
            return Ok(Next::RollOver(kr.current_dek));
        }
        let cipher = self.dek(keyring, kr, kr.current_dek)?;
        let write = |buf: &mut Vec<u8>| {
            cipher
                .seal_into(keyring, key, value, buf)
                .map_err(|e| StoreError::from_seal(e, value.len()))?;
            format::with_record_key(kr.id, key, |tk| {
                if self.inner.fleet.shared {
                    self.write_guarded(&[BatchRef::Insert(tk, buf.as_slice())])
                } else {
                    self.inner
                        .storage
                        .insert(TreeId::Records, tk, buf.as_slice())
                        .map(|()| Next::Done(false))
                }
            })
        };
        with_seal_buffer(KEPT_SEAL_BUFFER, write)
    }

    /// Seals and writes several puts and deletes as one atomic batch; `Some(v)` when DEK `v`
    /// must roll over first (nothing written). One counter reservation for all the puts, and
    /// two buffers for the whole batch (the tree keys, and the sealed values back to back), which
    /// the engine reads in place: a batch costs less per record than the same puts one by one.
    fn write_many(
        &self,
        keyring: &KeyringName,
        kr: &KeyringEntry,
        items: &[(&[u8], Option<&[u8]>)],
    ) -> Result<Next, StoreError> {
        let (mut puts, mut sealed_len, mut keys_len) = (0u64, 0usize, 0usize);
        for (k, v) in items {
            keys_len += 8 + k.len();
            if let Some(v) = v {
                puts += 1;
                sealed_len += RECORD_OVERHEAD + v.len();
            }
        }
        let cipher = if puts > 0 {
            if let Reserve::RollOver = self.reserve(kr.id, kr.current_dek, puts)? {
                return Ok(Next::RollOver(kr.current_dek));
            }
            Some(self.dek(keyring, kr, kr.current_dek)?)
        } else {
            None
        };
        with_seal_buffer(KEPT_BATCH_BUFFER, |sealed| {
            sealed.clear();
            sealed.reserve(sealed_len);
            self.write_sealed_batch(keyring, kr, items, cipher.as_deref(), keys_len, sealed)
        })
    }

    /// [`Store::write_many`]'s sealing and writing, into `sealed` (a reused buffer).
    fn write_sealed_batch(
        &self,
        keyring: &KeyringName,
        kr: &KeyringEntry,
        items: &[(&[u8], Option<&[u8]>)],
        cipher: Option<&RecordCipher>,
        keys_len: usize,
        sealed: &mut Vec<u8>,
    ) -> Result<Next, StoreError> {
        // Sealed records are not secret: these buffers need no zeroizing.
        let mut keys = Vec::with_capacity(keys_len);
        let mut spans = Vec::with_capacity(items.len());
        for (k, v) in items {
            let key_at = keys.len();
            keys.extend_from_slice(&kr.id.to_be_bytes());
            keys.extend_from_slice(k);
            let value = match (v, cipher) {
                (Some(v), Some(c)) => {
                    let at = sealed.len();
                    c.seal_append(keyring, k, v, sealed)
                        .map_err(|e| StoreError::from_seal(e, v.len()))?;
                    Some(at..sealed.len())
                }
                _ => None,
            };
            spans.push((key_at..keys.len(), value));
        }
        let changes: Vec<BatchRef<'_>> = spans
            .iter()
            .map(|(k, v)| match v {
                Some(v) => BatchRef::Insert(&keys[k.clone()], &sealed[v.clone()]),
                None => BatchRef::Remove(&keys[k.clone()]),
            })
            .collect();
        if self.inner.fleet.shared {
            return self.write_guarded(&changes);
        }
        self.inner
            .storage
            .apply_batch_ref(TreeId::Records, &changes, "writing a batch")
            .map(|()| Next::Done(false))
    }

    /// Deletes one record; whether it existed.
    fn delete_one(&self, kr: &KeyringEntry, key: &[u8]) -> Result<Next, StoreError> {
        format::with_record_key(kr.id, key, |tk| {
            if self.inner.fleet.shared {
                // Whether it existed is read first (it only informs the caller); the delete
                // itself is guarded like every write.
                let existed = self.inner.storage.get(TreeId::Records, tk)?.is_some();
                return Ok(match self.write_guarded(&[BatchRef::Remove(tk)])? {
                    Next::Done(_) => Next::Done(existed),
                    other => other,
                });
            }
            Ok(Next::Done(self.inner.storage.remove(TreeId::Records, tk)?))
        })
    }

    /// On a shared database: writes `changes` to the records only if the key-state generation
    /// is still the one this replica's catalog was loaded at (checked atomically with the
    /// write: `crate::fleet`), so that no write lands after a disable or destruction made by
    /// another replica that this one has not seen yet.
    fn write_guarded(&self, changes: &[BatchRef<'_>]) -> Result<Next, StoreError> {
        let g = self.serving();
        let bytes = g.to_be_bytes();
        let guard = Guard {
            tree: TreeId::Meta,
            key: crate::fleet::GENERATION_KEY,
            value: (g != 0).then_some(&bytes[..]),
        };
        let applied = self.inner.storage.apply_batch_guarded(
            TreeId::Records,
            changes,
            &guard,
            "writing records",
        )?;
        Ok(if applied {
            Next::Done(false)
        } else {
            Next::Stale
        })
    }

    /// The cipher of the DEK a record's header names, or `None` when the keyring has no such
    /// DEK: then the record is what is damaged, and the caller reports it by name.
    pub(crate) fn record_dek(
        &self,
        name: &KeyringName,
        kr: &KeyringEntry,
        v: DekVersion,
        now: Instant,
    ) -> Result<Option<Arc<RecordCipher>>, StoreError> {
        match self.dek_at(name, kr, v, now) {
            Ok(c) => Ok(Some(c)),
            Err(e @ StoreError::KeyIntegrity { .. }) => {
                let exists = self
                    .inner
                    .storage
                    .get(TreeId::Deks, format::versioned_key(kr.id, v.get()))?
                    .is_some();
                if exists { Err(e) } else { Ok(None) }
            }
            Err(e) => Err(e),
        }
    }

    /// Seals and writes `items` (a value, or `None` to delete) in one atomic batch, under one
    /// hold of the lifecycle lock, so no lifecycle change (a disable, a DEK retirement) can fall
    /// between sealing and writing. Rolls the DEK over first when it has sealed its quota.
    /// Returns, for a single delete, whether the record existed.
    fn write_records(
        &self,
        keyring: &KeyringName,
        items: &[(&[u8], Option<&[u8]>)],
    ) -> Result<bool, StoreError> {
        for (k, v) in items {
            check_key(k)?;
            if let Some(v) = v {
                check_value(v)?;
            }
        }
        // Another replica's key changes make a write in flight stale (the generation is
        // store-wide): it takes them in and tries again, within a budget, so that only a
        // sustained storm of key changes elsewhere refuses it (as a `Conflict`).
        let mut stale = crate::fleet::StaleBudget::default();
        loop {
            let since = self.serving();
            let next = (|| -> Result<Next, StoreError> {
                let _r = self.read_lifecycle();
                let cat = self.data_catalog()?;
                let kr = cat.usable(keyring)?;
                Ok(if self.inner.options.audit_data_access {
                    self.write_audited(keyring, kr, items)?
                } else {
                    match items {
                        [(k, Some(v))] => self.put_one(keyring, kr, k, v)?,
                        [(k, None)] => self.delete_one(kr, k)?,
                        _ => self.write_many(keyring, kr, items)?,
                    }
                })
            })();
            let next = match next {
                Ok(n) => n,
                // A key another replica replaced since this one loaded the key states (a
                // KEK rotated away between reading a DEK and its KEK): stale, not damaged.
                Err(e) if self.stale_key_error(&e, since) => Next::Stale,
                Err(e) => return Err(e),
            };
            let rolled = match next {
                Next::Done(existed) => return Ok(existed),
                Next::RollOver(v) => v,
                Next::Stale => {
                    // Take in what the other replica changed (the keyring may be disabled
                    // now), then decide again.
                    if !stale.again() {
                        return Err(StoreError::Conflict {
                            what: format!("a write to keyring {keyring}"),
                        });
                    }
                    self.reload_if_moved();
                    continue;
                }
            };
            match self.roll_over_dek(keyring, rolled) {
                Ok(()) => {}
                // The write decides again from the reloaded states, and its caller never sees
                // the race.
                Err(StoreError::Conflict { .. }) => {
                    if !stale.again() {
                        return Err(StoreError::Conflict {
                            what: format!("a write to keyring {keyring}"),
                        });
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Rolls DEK `rolled` of `keyring` over, its use count spent (by a write or a
    /// re-encryption), under the write lock, unless another writer did already (a thread of
    /// this process, or another replica: the lock's holder reads the current key states
    /// first). A [`StoreError::Conflict`]: another replica changed the key states in between
    /// (most often: rolled this DEK over too); the commit reloaded them, and the caller
    /// decides again from there.
    pub(crate) fn roll_over_dek(
        &self,
        keyring: &KeyringName,
        rolled: DekVersion,
    ) -> Result<(), StoreError> {
        let w = self.write_lifecycle();
        if self.read_catalog().keyring(keyring)?.current_dek != rolled {
            return Ok(());
        }
        let limit = self.inner.options.dek_rollover_after;
        self.audited(AuditOp::DekRotated, format!("keyring {keyring}"), || {
            self.rotate_dek_locked(
                &w,
                keyring,
                &format!("automatic rollover after {limit} encryptions"),
            )
        })
        .map(|_| ())
    }

    /// Stores `value` under `key` in `keyring`, sealed. Durable within about 500 ms (sled's
    /// background flush), or at [`Store::flush`]; use [`Store::put_durable`] to wait for it.
    ///
    /// # Errors
    /// A keyring that is not usable, a key or value over the limits, or a storage error.
    pub fn put(&self, keyring: &KeyringName, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let started = Instant::now();
        let r = self
            .write_records(keyring, &[(key, Some(value))])
            .map(|_| ());
        record_op!("record.put", started, &r);
        r
    }

    /// [`Store::put`], then flush: durable when it returns.
    ///
    /// # Errors
    /// As [`Store::put`] and [`Store::flush`].
    pub fn put_durable(
        &self,
        keyring: &KeyringName,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let r = self
            .write_records(keyring, &[(key, Some(value))])
            .and_then(|_| self.flush());
        record_op!("record.put-durable", started, &r);
        r
    }

    /// The value under `key` in `keyring`, or `None`.
    ///
    /// # Errors
    /// A keyring that is not usable, [`StoreError::RecordIntegrity`] for a record that fails to
    /// open, or a backend or storage error.
    pub fn get(&self, keyring: &KeyringName, key: &[u8]) -> Result<Option<Plaintext>, StoreError> {
        let started = Instant::now();
        let mut since = self.serving();
        let mut r = self.get_audited(keyring, key);
        // On a shared database: a key another replica replaced or retired while this read ran
        // looks missing; the new key states taken in, the read is tried again (within the
        // budget of a step made stale: only a stream of key changes elsewhere makes it race
        // again, and outlasting the budget is a `Conflict`, never damage).
        let mut stale = crate::fleet::StaleBudget::default();
        while let Err(e) = &r {
            if !self.stale_key_error(e, since) {
                break;
            }
            if !stale.again() {
                r = Err(StoreError::Conflict {
                    what: format!("a read of keyring {keyring}"),
                });
                break;
            }
            self.reload_if_moved();
            since = self.serving();
            r = self.get_audited(keyring, key);
        }
        record_op!("record.get", started, &r);
        r
    }

    fn get_audited(
        &self,
        keyring: &KeyringName,
        key: &[u8],
    ) -> Result<Option<Plaintext>, StoreError> {
        check_key(key)?;
        let r = self.get_inner(keyring, key);
        if self.inner.options.audit_data_access {
            let (outcome, detail) = match &r {
                Ok(Some(p)) => (Outcome::Ok, format!("{} bytes", p.len())),
                Ok(None) => (Outcome::Ok, "not found".into()),
                Err(e) if e.is_access_refused() => (Outcome::Refused, e.to_string()),
                Err(e) => (Outcome::Failed, e.to_string()),
            };
            self.audit_access(AuditOp::RecordRead, keyring, key, outcome, || detail)?;
        }
        r
    }

    fn get_inner(
        &self,
        keyring: &KeyringName,
        key: &[u8],
    ) -> Result<Option<Plaintext>, StoreError> {
        let _r = self.read_lifecycle();
        let cat = self.data_catalog()?;
        let kr = cat.usable(keyring)?;
        // The sealed bytes as the engine holds them (sled: its cached value, not a copy).
        let Some(sealed) = format::with_record_key(kr.id, key, |tk| {
            self.inner.storage.get_value(TreeId::Records, tk)
        })?
        else {
            return Ok(None);
        };
        let integrity = || StoreError::RecordIntegrity {
            keyring: keyring.clone(),
            key: show_key(key),
        };
        let record = SealedRecord::parse(&sealed).map_err(|_| integrity())?;
        // The TTL is checked now, when the key is about to be used: after the engine read,
        // which may have taken any time (a network round trip, a stalled disk).
        let now = Instant::now();
        let open = |c: &RecordCipher| c.open_parsed(keyring, key, &record);
        let opened = match self.inner.cache.with_fresh_dek(
            kr.id,
            record.header.dek_version.get(),
            now,
            self.inner.options.cache_ttl,
            open,
        ) {
            Ok(opened) => {
                telemetry::cache_lookup(false, true);
                Some(opened)
            }
            // A miss, or past the TTL: through the backend, as every other DEK lookup.
            Err(open) => self
                .record_dek(keyring, kr, record.header.dek_version, now)?
                .map(|c| open(&c)),
        };
        match opened {
            Some(Ok(plaintext)) => Ok(Some(plaintext)),
            // No such DEK in the keyring, or the record does not open under it.
            Some(Err(_)) | None => Err(integrity()),
        }
    }

    /// Deletes `key` from `keyring`; `true` if it was there.
    ///
    /// # Errors
    /// A keyring that is not usable, or a storage error.
    pub fn delete(&self, keyring: &KeyringName, key: &[u8]) -> Result<bool, StoreError> {
        let started = Instant::now();
        let r = self.write_records(keyring, &[(key, None)]);
        record_op!("record.delete", started, &r);
        r
    }

    /// Keys in `keyring` that start with `prefix`, in order (values are not opened).
    ///
    /// # Errors
    /// A keyring that is not usable, or a storage error.
    pub fn list(&self, keyring: &KeyringName, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let started = Instant::now();
        let r = (|| {
            let _r = self.read_lifecycle();
            let kr = self.usable_keyring(keyring)?;
            self.inner
                .storage
                .scan_prefix(TreeId::Records, format::record_key(kr.id, prefix))
                .map(|r| r.map(|(k, _)| k[8..].to_vec()))
                .collect()
        })();
        record_op!("record.list", started, &r);
        r
    }

    /// Applies `ops` to `keyring` atomically: all of them or none.
    ///
    /// # Errors
    /// A keyring that is not usable, a key or value over the limits, more puts than one DEK may
    /// seal (`dek_rollover_after`), or a storage error (then nothing was applied).
    pub fn batch(&self, keyring: &KeyringName, ops: &[BatchOp]) -> Result<(), StoreError> {
        let started = Instant::now();
        let r = self.batch_inner(keyring, ops);
        record_op!("record.batch", started, &r);
        r
    }

    /// [`Store::batch`] of borrowed keys and values: the fastest way in, since nothing is
    /// copied before it is sealed (and no second copy of the plaintext is made, for the caller
    /// to zeroize or not).
    ///
    /// # Errors
    /// As [`Store::batch`].
    pub fn write_batch(&self, keyring: &KeyringName, ops: &[Write<'_>]) -> Result<(), StoreError> {
        let started = Instant::now();
        let items: Vec<(&[u8], Option<&[u8]>)> = ops
            .iter()
            .map(|op| match *op {
                Write::Put(k, v) => (k, Some(v)),
                Write::Delete(k) => (k, None),
            })
            .collect();
        let r = self.batch_items(keyring, &items);
        record_op!("record.batch", started, &r);
        r
    }

    fn batch_inner(&self, keyring: &KeyringName, ops: &[BatchOp]) -> Result<(), StoreError> {
        let items: Vec<(&[u8], Option<&[u8]>)> = ops
            .iter()
            .map(|op| match op {
                BatchOp::Put(k, v) => (k.as_slice(), Some(v.as_slice())),
                BatchOp::Delete(k) => (k.as_slice(), None),
            })
            .collect();
        self.batch_items(keyring, &items)
    }

    fn batch_items(
        &self,
        keyring: &KeyringName,
        items: &[(&[u8], Option<&[u8]>)],
    ) -> Result<(), StoreError> {
        // A batch is sealed under one DEK, so it can hold at most one DEK's quota of puts
        // (found by fuzzing: a larger one rolled the DEK over without end).
        let puts = items.iter().filter(|(_, v)| v.is_some()).count();
        let quota = usize::try_from(self.inner.options.dek_rollover_after).unwrap_or(usize::MAX);
        if puts > quota {
            return Err(StoreError::TooLarge {
                what: "the puts of one batch (one DEK's quota, dek_rollover_after)",
                limit: quota,
                found: puts,
            });
        }
        self.write_records(keyring, items).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_put_never_shows_its_value() {
        let op = BatchOp::Put(b"alice".to_vec(), b"salary=100000".to_vec());
        let shown = format!("{op:?}");
        assert_eq!(shown, "Put(\"alice\", [13 bytes REDACTED])");
        assert_eq!(
            format!("{:?}", BatchOp::Delete(b"bob".to_vec())),
            "Delete(\"bob\")"
        );
        let w = Write::Put(b"alice", b"salary=100000");
        assert_eq!(format!("{w:?}"), "Put(\"alice\", [13 bytes REDACTED])");
    }
}
