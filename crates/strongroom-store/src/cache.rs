//! The key cache: unwrapped KEKs and ready DEK ciphers, bounded, with a TTL.
//!
//! Steady-state reads and writes find their DEK here and make no backend call. Entries hold
//! their material in zeroizing types, so eviction zeroizes them (once the last user of an entry
//! drops its `Arc`). A local disable purges a keyring's entries at once. The TTL bounds how long
//! a revocation made outside strongroom (in the HSM) takes to bite: an entry older than the TTL
//! is refreshed from the backend before use, and the refresh fails once the root key is gone.
//! What happens when the refresh fails because the backend is *down* (not because the key was
//! revoked) is the [`DownPolicy`].
//!
//! A hit takes only the read side of the lock: recency is an atomic stamp from a counter, so
//! readers on many threads do not queue behind one another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use strongroom_core::Key256;
use strongroom_core::record::RecordCipher;

use crate::commit::KeyChange;
use crate::telemetry;

/// What to do when a cached key's TTL has run out and the backend cannot be reached to refresh
/// it (a device error; a disabled, destroyed or missing root key always purges at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownPolicy {
    /// Refuse the operation (the default): no key is used past its TTL.
    FailClosed,
    /// Keep using the cached key for up to `grace` past its TTL while the backend is down.
    ServeCached {
        /// How long past the TTL.
        grace: Duration,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    Kek(u32),
    Dek(u32),
}

#[derive(Clone)]
pub(crate) enum Cached {
    Kek(Arc<Key256>),
    Dek(Arc<RecordCipher>),
}

struct Entry {
    value: Cached,
    /// When the backend last vouched for the root behind this entry.
    fetched: Instant,
    /// The cache's use counter at this entry's last use (higher is more recent).
    last_used: AtomicU64,
}

/// A cache hit and how fresh it is.
pub(crate) struct Hit {
    pub value: Cached,
    pub age: Duration,
}

pub(crate) struct KeyCache {
    map: RwLock<HashMap<(u64, Slot), Entry>>,
    /// Hands out use stamps; only their order matters.
    uses: AtomicU64,
    capacity: usize,
}

impl KeyCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            uses: AtomicU64::new(0),
            capacity: capacity.max(2),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<(u64, Slot), Entry>> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<(u64, Slot), Entry>> {
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stamp(&self) -> u64 {
        self.uses.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn get(&self, keyring: u64, slot: Slot) -> Option<Hit> {
        let map = self.read();
        let e = map.get(&(keyring, slot))?;
        // Relaxed: the stamp orders evictions only; a race between two stamps may evict the
        // slightly less recent of two entries, never a wrong key.
        e.last_used.fetch_max(self.stamp(), Ordering::Relaxed);
        Some(Hit {
            value: e.value.clone(),
            age: Instant::now().saturating_duration_since(e.fetched),
        })
    }

    /// Inserts, evicting the least recently used entries beyond capacity. `fetched` is when the
    /// backend last vouched for this chain (a DEK inherits its KEK's).
    pub(crate) fn insert(&self, keyring: u64, slot: Slot, value: Cached, fetched: Instant) {
        let mut map = self.write();
        map.insert(
            (keyring, slot),
            Entry {
                value,
                fetched,
                last_used: AtomicU64::new(self.stamp()),
            },
        );
        let before = map.len();
        while map.len() > self.capacity {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| *k)
            else {
                break;
            };
            map.remove(&oldest);
        }
        telemetry::cache_evicted(true, before - map.len());
    }

    /// Drops keyring `keyring`'s keys, as a key change requires: under the lifecycle lock
    /// held for writing (the [`KeyChange`] says so), so that no reader still holding the old
    /// state can put an old key back afterwards.
    pub(crate) fn purge_keyring(&self, _held: &KeyChange<'_>, keyring: u64) {
        self.evict_keyring(keyring);
    }

    /// Drops every key, as a change of the whole store requires (see
    /// [`KeyCache::purge_keyring`]).
    pub(crate) fn purge_all(&self, _held: &KeyChange<'_>) {
        let mut map = self.write();
        telemetry::cache_evicted(false, map.len());
        map.clear();
    }

    /// Drops keyring `keyring`'s keys without a key change: on a read path that found the
    /// backend refusing one of them. Only ever removes; it is not what makes a revocation take
    /// effect (that is a commit's purge).
    pub(crate) fn evict_keyring(&self, keyring: u64) {
        let mut map = self.write();
        let before = map.len();
        map.retain(|(k, _), _| *k != keyring);
        telemetry::cache_evicted(false, before - map.len());
    }

    pub(crate) fn len(&self) -> usize {
        self.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strongroom_core::DekVersion;

    fn dek() -> Cached {
        Cached::Dek(Arc::new(RecordCipher::new(
            DekVersion::FIRST,
            &Key256::generate().unwrap(),
        )))
    }

    #[test]
    fn bounded_lru_and_purges() {
        let c = KeyCache::new(3);
        let now = Instant::now();
        for i in 0..3 {
            c.insert(i, Slot::Dek(1), dek(), now);
        }
        assert!(c.get(0, Slot::Dek(1)).is_some()); // 0 is now the most recently used
        c.insert(3, Slot::Dek(1), dek(), now);
        assert_eq!(c.len(), 3);
        assert!(
            c.get(1, Slot::Dek(1)).is_none(),
            "the least recently used entry goes first"
        );
        assert!(c.get(0, Slot::Dek(1)).is_some());
        c.insert(
            0,
            Slot::Kek(1),
            Cached::Kek(Arc::new(Key256::generate().unwrap())),
            now,
        );
        let lock = RwLock::new(());
        let held = KeyChange::new(lock.write().unwrap());
        c.purge_keyring(&held, 0);
        assert!(c.get(0, Slot::Dek(1)).is_none() && c.get(0, Slot::Kek(1)).is_none());
        c.purge_all(&held);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn age_counts_from_fetch() {
        let c = KeyCache::new(4);
        let fetched = Instant::now().checked_sub(Duration::from_secs(5)).unwrap();
        c.insert(1, Slot::Dek(2), dek(), fetched);
        assert!(c.get(1, Slot::Dek(2)).unwrap().age >= Duration::from_secs(5));
    }
}
