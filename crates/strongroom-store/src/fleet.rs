//! Replicas of one store on a shared database (the fleet): key state that stays coherent.
//!
//! Every key change ([`Store::commit`]: a create, rotation, disable, enable, destruction,
//! move, DEK rollover) bumps the store's *generation*, a counter in the metadata tree, in the
//! same transaction as the change, and only if the generation is still the one this replica's
//! catalog was loaded at: a change computed from a catalog another replica has changed since
//! is refused ([`StoreError::Conflict`]) and the replica reloads, so two replicas never both
//! apply a change to the same state.
//!
//! On an engine that other processes share ([`Engine::shared`](crate::Engine::shared):
//! PostgreSQL without the exclusive lock), each replica also *polls* the generation, one
//! point read at most every [`StoreOptions::fleet_poll`](crate::StoreOptions::fleet_poll)
//! (default 1 s; zero polls before every operation), and when it moved, drops its cached keys
//! and DEK counters and reloads its catalog before it serves anything more. A revocation
//! committed by one replica is so refused by every other within the interval (plus the time
//! of one reload), whatever happens to any notification channel. A key change always starts
//! from the current generation: [`Store::write_lifecycle`] reads it once it holds the lock.
//!
//! The key cache's TTL still bounds what the HSM itself revokes (a root disabled in the
//! token, not through strongroom).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use strongroom_core::FormatError;

use crate::TreeId;
use crate::error::StoreError;
use crate::storage::{Tx, TxResult, abort};
use crate::store::Store;

/// The generation's key in the metadata tree (absent: 0, no key change yet).
pub(crate) const GENERATION_KEY: &[u8] = b"generation";
/// Prefix of the metadata keys where named replicas report themselves seen (a report, not
/// state: a backup leaves them out).
pub(crate) const SEEN_PREFIX: &[u8] = b"replica-seen/";
/// A replica reports itself at most this often (however short its poll interval).
const SEEN_EVERY_MS: u64 = 1000;

/// A replica of a fleet as it last reported itself ([`Store::replicas`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSeen {
    /// Its name ([`StoreOptions::replica`](crate::StoreOptions::replica)).
    pub name: String,
    /// When it last polled (wall clock, milliseconds since the Unix epoch).
    pub seen_unix_ms: u64,
    /// The key-state generation it served then.
    pub generation: u64,
}

/// What a replica knows of the generation.
pub(crate) struct Fleet {
    /// Whether other processes may change the database (the engine says so).
    pub shared: bool,
    /// The generation this replica's catalog was loaded at (or last committed).
    pub loaded: AtomicU64,
    /// When the generation was last polled, in milliseconds since `opened`, plus one (0:
    /// never).
    last_poll: AtomicU64,
    /// When this replica last reported itself seen, likewise.
    last_seen: AtomicU64,
    opened: Instant,
    interval: Duration,
}

impl Fleet {
    pub(crate) fn new(shared: bool, interval: Duration) -> Self {
        Self {
            shared,
            loaded: AtomicU64::new(0),
            last_poll: AtomicU64::new(0),
            last_seen: AtomicU64::new(0),
            opened: Instant::now(),
            interval,
        }
    }

    /// Milliseconds since `opened`, plus one.
    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// Whether this thread should report the replica seen now (at most once a second).
    fn claim_report(&self) -> bool {
        let now = self.now();
        let last = self.last_seen.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= SEEN_EVERY_MS)
            && self
                .last_seen
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether this thread should poll now: the interval has passed since the last poll,
    /// and no other thread has just claimed it.
    fn claim_poll(&self) -> bool {
        let now = self.now();
        let last = self.last_poll.load(Ordering::Relaxed);
        let interval = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < interval {
            return false;
        }
        // With a zero interval every operation polls; otherwise one thread per interval.
        interval == 0
            || self
                .last_poll
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// How long a step that other replicas' key changes keep making stale goes on trying: the
/// generation is store-wide, so a key change anywhere (another keyring's rotation, a DEK
/// rollover) refuses a step computed before it, and the step takes it in and tries again.
const STALE_BUDGET: Duration = Duration::from_secs(3);
/// A step is tried at least this often before the budget can run out (a slow machine).
const STALE_TRIES: u32 = 20;

/// The tries of one step refused as stale ([`StoreError::Conflict`]): it gives up only after
/// [`STALE_TRIES`] refusals in a row *and* [`STALE_BUDGET`] since the first, so that only a
/// sustained storm of key changes elsewhere refuses it. A step that got through resets it.
#[derive(Default)]
pub(crate) struct StaleBudget {
    tries: u32,
    since: Option<Instant>,
}

impl StaleBudget {
    /// Counts a refusal; whether to try again.
    pub(crate) fn again(&mut self) -> bool {
        self.tries += 1;
        let since = *self.since.get_or_insert_with(Instant::now);
        self.tries <= STALE_TRIES || since.elapsed() <= STALE_BUDGET
    }

    /// The step got through: the next stall has a budget of its own.
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

/// A stored generation.
fn parse(raw: Option<&[u8]>) -> Result<u64, StoreError> {
    let Some(b) = raw else { return Ok(0) };
    <[u8; 8]>::try_from(b)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            what: "the store's generation".into(),
            source: FormatError::BadLength {
                what: "generation",
                field: "generation",
                expected: 8,
                found: b.len(),
            },
        })
}

fn seen_key(name: &str) -> Vec<u8> {
    [SEEN_PREFIX, name.as_bytes()].concat()
}

/// The generation, read inside a transaction.
pub(crate) fn generation_in(tx: &Tx<'_>) -> TxResult<u64> {
    match parse(tx.get(TreeId::Meta, GENERATION_KEY)?.as_deref()) {
        Ok(g) => Ok(g),
        Err(e) => abort(e),
    }
}

impl Store {
    /// Takes in another replica's key changes now, if the generation moved: after a guarded
    /// write found it had (the caller holds no lifecycle guard). Taking the lifecycle lock for
    /// a key change does it ([`Store::write_lifecycle`] reads the generation once it holds it).
    pub(crate) fn reload_if_moved(&self) {
        drop(self.write_lifecycle());
    }

    /// Runs `read` (the catalog or the audit log read entry by entry: no engine offers a
    /// snapshot across scans) again while it raced another replica's key change: on a shared
    /// engine, a result read while the generation moved is read anew, up to `tries` times in
    /// all, unless `settled` accepts it. One read while the generation stood still is what the
    /// database holds (a failure then is real: a tampered catalog).
    pub(crate) fn read_between_key_changes<T>(
        &self,
        tries: u32,
        mut read: impl FnMut() -> T,
        settled: impl Fn(&T) -> bool,
    ) -> T {
        let mut n = 0;
        loop {
            let before = self.stored_generation();
            let r = read();
            n += 1;
            let moved = self.inner.fleet.shared
                && matches!((&before, self.stored_generation()), (Ok(b), Ok(a)) if *b != a);
            if !moved || n >= tries || settled(&r) {
                return r;
            }
        }
    }

    /// Whether the database's generation is ahead of the one this replica serves (a failed
    /// read says no: the operation that follows needs the database too, and fails on its own).
    pub(crate) fn behind(&self) -> bool {
        self.stored_generation().is_ok_and(|g| g != self.serving())
    }

    /// The generation this replica serves now: taken when an operation starts, for
    /// [`Store::stale_key_error`].
    pub(crate) fn serving(&self) -> u64 {
        self.inner.fleet.loaded.load(Ordering::Acquire)
    }

    /// Whether `e`, a key that failed to load in an operation that started at generation
    /// `since` ([`Store::serving`]), may come from key states another replica changed
    /// meanwhile: on a shared engine, a key integrity error while the stored generation is not
    /// `since` any more (one more read, on the error path only). A KEK rotated away between
    /// reading a DEK and its KEK looks missing; after a reload it is not.
    pub(crate) fn stale_key_error(&self, e: &StoreError, since: u64) -> bool {
        matches!(e, StoreError::KeyIntegrity { .. })
            && self.inner.fleet.shared
            && self.stored_generation().is_ok_and(|g| g != since)
    }

    /// The generation in the database.
    pub(crate) fn stored_generation(&self) -> Result<u64, StoreError> {
        parse(
            self.inner
                .storage
                .get(TreeId::Meta, GENERATION_KEY)?
                .as_deref(),
        )
    }

    /// On a shared engine, once per interval: whether the generation moved since this
    /// replica's catalog was loaded (then the caller reloads). A failed read says nothing
    /// moved: the operation that follows needs the database too, and fails on its own.
    pub(crate) fn generation_moved(&self) -> bool {
        let fleet = &self.inner.fleet;
        if !fleet.shared || !fleet.claim_poll() {
            return false;
        }
        let moved = self.behind();
        self.report_seen();
        moved
    }

    /// A named replica on a shared engine reports itself seen, with the generation it serves
    /// (at most once a second; a failed write is left for the next poll: it is a report).
    fn report_seen(&self) {
        let fleet = &self.inner.fleet;
        let name = &self.inner.options.replica;
        if name.is_empty()
            || !self.inner.options.report_seen
            || !fleet.shared
            || !fleet.claim_report()
        {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut v = Vec::with_capacity(17);
        v.push(1);
        v.extend_from_slice(&now.to_be_bytes());
        v.extend_from_slice(&self.serving().to_be_bytes());
        let _ = self.inner.storage.insert(TreeId::Meta, seen_key(name), &v);
    }

    /// The replicas of a fleet that reported themselves seen (named replicas on a shared
    /// engine, about once a second while they poll), most recently seen first. A replica that
    /// stopped stays listed with its last report.
    ///
    /// # Errors
    /// A storage error.
    pub fn replicas(&self) -> Result<Vec<ReplicaSeen>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.storage.scan_prefix(TreeId::Meta, SEEN_PREFIX) {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k[SEEN_PREFIX.len()..]).into_owned();
            // A report in a format this build does not know is skipped, not an error.
            if v.len() == 17 && v[0] == 1 {
                let (ms, g) = v[1..].split_at(8);
                out.push(ReplicaSeen {
                    name,
                    seen_unix_ms: u64::from_be_bytes(ms.try_into().unwrap_or_default()),
                    generation: u64::from_be_bytes(g.try_into().unwrap_or_default()),
                });
            }
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.seen_unix_ms));
        Ok(out)
    }

    /// The key-state generation in the database, and the one this handle serves (they differ
    /// for up to the poll interval after another replica's key change).
    ///
    /// # Errors
    /// A storage error.
    pub fn generations(&self) -> Result<(u64, u64), StoreError> {
        Ok((self.stored_generation()?, self.serving()))
    }

    /// Inside a key change's transaction: the generation must still be the one the change was
    /// computed from; it moves on by one. Returns the new generation.
    pub(crate) fn bump_generation(&self, tx: &Tx<'_>, what: &str) -> TxResult<u64> {
        let stored = generation_in(tx)?;
        if stored != self.serving() {
            return abort(StoreError::Conflict {
                what: what.to_owned(),
            });
        }
        let next = stored + 1;
        tx.insert(TreeId::Meta, GENERATION_KEY, next.to_be_bytes())?;
        Ok(next)
    }
}
