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
//! A hit takes only the read side of the lock and writes nothing shared unless the entry's
//! recency changed: recency is the cache's *epoch*, a counter that moves on each insert, and a
//! hit stores it into the entry only when the entry has not been used since the last insert.
//! Readers on many threads therefore neither queue behind one another nor bounce a cache line
//! between cores on every hit. Eviction takes the entry with the oldest epoch: least recently
//! used, up to the order among entries used between the same two inserts.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
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
    /// The cache's epoch at this entry's last use (higher is more recent).
    last_used: AtomicU64,
}

/// Hashes the cache's keys: keyring ids the store assigned and small version numbers, never
/// values an outsider chooses, so a multiply-and-fold is enough (no flooding to defend against,
/// which is what SipHash's cost buys).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_isize(&mut self, n: isize) {
        self.write_u64(n as u64);
    }
}

/// A map keyed by store-assigned ids, hashed with [`IdHasher`].
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

type Map = IdMap<(u64, Slot), Entry>;

/// A cache hit and how fresh it is.
pub(crate) struct Hit {
    pub value: Cached,
    pub age: Duration,
}

pub(crate) struct KeyCache {
    map: RwLock<Map>,
    /// The epoch: moves on each insert; only its order matters.
    epoch: AtomicU64,
    capacity: usize,
}

impl KeyCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: RwLock::new(Map::default()),
            epoch: AtomicU64::new(0),
            capacity: capacity.max(2),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Map> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Map> {
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The entry for `slot` of `keyring`, and its age at `now`.
    pub(crate) fn get(&self, keyring: u64, slot: Slot, now: Instant) -> Option<Hit> {
        let map = self.read();
        let e = map.get(&(keyring, slot))?;
        self.touch(e);
        Some(Hit {
            value: e.value.clone(),
            age: now.saturating_duration_since(e.fetched),
        })
    }

    /// Calls `f` with DEK `version` of `keyring` if it is cached and younger than `ttl` at
    /// `now`, under the read lock (no reference count taken: the read path's hit costs one
    /// lock and one lookup); gives `f` back otherwise.
    pub(crate) fn with_fresh_dek<R, F: FnOnce(&RecordCipher) -> R>(
        &self,
        keyring: u64,
        version: u32,
        now: Instant,
        ttl: Duration,
        f: F,
    ) -> Result<R, F> {
        let map = self.read();
        let Some(e) = map.get(&(keyring, Slot::Dek(version))) else {
            return Err(f);
        };
        let Cached::Dek(c) = &e.value else {
            return Err(f);
        };
        if now.saturating_duration_since(e.fetched) >= ttl {
            return Err(f);
        }
        self.touch(e);
        Ok(f(c))
    }

    /// Marks `e` used in the current epoch (see the module docs).
    fn touch(&self, e: &Entry) {
        // Relaxed: the epoch orders evictions only; a race may evict the slightly less recent
        // of two entries, never a wrong key. Read first, so a hit that changes nothing writes
        // nothing.
        let epoch = self.epoch.load(Ordering::Relaxed);
        if e.last_used.load(Ordering::Relaxed) < epoch {
            e.last_used.fetch_max(epoch, Ordering::Relaxed);
        }
    }

    /// Inserts, evicting the least recently used entries beyond capacity. `fetched` is when the
    /// backend last vouched for this chain (a DEK inherits its KEK's).
    pub(crate) fn insert(&self, keyring: u64, slot: Slot, value: Cached, fetched: Instant) {
        let mut map = self.write();
        // Under the write lock: no hit runs meanwhile, so the entries used since the last
        // insert all hold the old epoch, and the new entry alone the new one.
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        map.insert(
            (keyring, slot),
            Entry {
                value,
                fetched,
                last_used: AtomicU64::new(epoch),
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

    #[cfg(test)]
    fn get_now(&self, keyring: u64, slot: Slot) -> Option<Hit> {
        self.get(keyring, slot, Instant::now())
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
        assert!(c.get_now(0, Slot::Dek(1)).is_some()); // 0 is now the most recently used
        c.insert(3, Slot::Dek(1), dek(), now);
        assert_eq!(c.len(), 3);
        assert!(c.get_now(2, Slot::Dek(1)).is_some());
        assert!(
            c.get_now(1, Slot::Dek(1)).is_none(),
            "the least recently used entry goes first"
        );
        assert!(c.get_now(0, Slot::Dek(1)).is_some());
        c.insert(
            0,
            Slot::Kek(1),
            Cached::Kek(Arc::new(Key256::generate().unwrap())),
            now,
        );
        let lock = RwLock::new(());
        let held = KeyChange::new(lock.write().unwrap());
        c.purge_keyring(&held, 0);
        assert!(c.get_now(0, Slot::Dek(1)).is_none() && c.get_now(0, Slot::Kek(1)).is_none());
        c.purge_all(&held);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn with_fresh_dek_serves_only_fresh_deks() {
        let c = KeyCache::new(4);
        let now = Instant::now();
        let old = now.checked_sub(Duration::from_secs(10)).unwrap();
        c.insert(1, Slot::Dek(2), dek(), old);
        c.insert(
            1,
            Slot::Kek(2),
            Cached::Kek(Arc::new(Key256::generate().unwrap())),
            now,
        );
        let ttl = Duration::from_secs(60);
        assert_eq!(
            c.with_fresh_dek(1, 2, now, ttl, |d| d.version().get()).ok(),
            Some(1)
        );
        // Past the TTL, absent, or a KEK in that slot's place: the closure comes back.
        let short = Duration::from_secs(5);
        assert!(c.with_fresh_dek(1, 2, now, short, |_| ()).is_err());
        assert!(c.with_fresh_dek(1, 3, now, ttl, |_| ()).is_err());
        assert!(c.with_fresh_dek(2, 2, now, ttl, |_| ()).is_err());
    }

    #[test]
    fn age_counts_from_fetch() {
        let c = KeyCache::new(4);
        let fetched = Instant::now().checked_sub(Duration::from_secs(5)).unwrap();
        c.insert(1, Slot::Dek(2), dek(), fetched);
        assert!(c.get_now(1, Slot::Dek(2)).unwrap().age >= Duration::from_secs(5));
    }
}
