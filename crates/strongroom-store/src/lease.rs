//! Leases on long jobs: one runner at a time for a re-encryption, a rewrap, a compaction, the
//! due destructions or a purge, across the threads of this process and, on a shared database,
//! across the replicas of a fleet.
//!
//! A runner *claims* a job before it starts. In this process a job has at most one runner (an
//! in-memory set). On an engine other processes share ([`Engine::shared`](crate::Engine::shared))
//! the claim is also a row of the jobs tree, `lease/<job>`, written in a serialized transaction:
//! a holder (the replica's name and a random instance id), an expiry by the *database's* clock
//! ([`Engine::clock_ms`](crate::Engine::clock_ms), so that replicas whose machines' clocks
//! differ agree on it), and a fencing token that every claim increments. A claim is refused
//! ([`StoreError::JobBusy`]) while another holder's lease has not expired; a background thread
//! of the holder renews it (every third of [`StoreOptions::job_lease`](crate::StoreOptions)),
//! so it expires only when the holder is gone (killed, cut off from the database) or stalled.
//! Then another replica takes the job over and resumes it from its cursor.
//!
//! Correctness does not rest on the clock: every commit of the job's work checks, in its own
//! transaction, that the lease still carries this holder's token
//! ([`Lease::hold`]). A holder that was stalled past its expiry while another took over has
//! its next commit refused ([`StoreError::LeaseLost`]) and writes nothing more. On an engine
//! that is not shared the store holds the database alone, so a lease left in it by a process
//! that died means nothing and none is written.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::TreeId;
use crate::error::StoreError;
use crate::storage::{Tx, TxResult, abort};
use crate::store::Store;

/// Prefix of the leases in the jobs tree.
pub(crate) const LEASE_PREFIX: &[u8] = b"lease/";
/// The stored lease's format.
const FORMAT: u8 = 1;
/// Longest holder kept (a replica name is clipped at 255 bytes; the instance id follows).
const MAX_HOLDER: usize = 300;

/// A lease as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    pub token: u64,
    pub expires_ms: u64,
    pub holder: String,
}

impl Stored {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(17 + self.holder.len());
        v.push(FORMAT);
        v.extend_from_slice(&self.token.to_be_bytes());
        v.extend_from_slice(&self.expires_ms.to_be_bytes());
        v.extend_from_slice(self.holder.as_bytes());
        v
    }

    /// A stored lease, or `None` for bytes that are not one (the jobs tree is not
    /// authenticated: a damaged lease is taken over, as if it had expired).
    pub(crate) fn parse(b: &[u8]) -> Option<Self> {
        let (&format, rest) = b.split_first()?;
        if format != FORMAT || rest.len() < 16 || rest.len() > 16 + MAX_HOLDER {
            return None;
        }
        let token = u64::from_be_bytes(rest[..8].try_into().ok()?);
        let expires_ms = u64::from_be_bytes(rest[8..16].try_into().ok()?);
        let holder = std::str::from_utf8(&rest[16..]).ok()?.to_owned();
        Some(Self {
            token,
            expires_ms,
            holder,
        })
    }
}

/// The replica named in a holder (`name#instance`).
fn replica_of(holder: &str) -> &str {
    holder.rsplit_once('#').map_or(holder, |(name, _)| name)
}

/// A lease on a job as the database holds it ([`Store::job_leases`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobLease {
    /// The job, as the store names it (`reencrypt/<keyring id>`, `rewrap/<root>`, `compact`,
    /// `due-destructions`, `purge`).
    pub job: String,
    /// The replica holding it (its [`StoreOptions::replica`](crate::StoreOptions::replica)
    /// name; `unnamed` if it has none).
    pub replica: String,
    /// When it expires unless renewed (the database's clock, milliseconds since the Unix
    /// epoch).
    pub expires_unix_ms: u64,
    /// How long it had left when read, by the database's clock (0: expired; the holder is
    /// gone or stalled, and the next claim takes it over).
    pub expires_in_ms: u64,
    /// Whether it had expired when read.
    pub expired: bool,
}

/// The jobs this process runs now (their lease keys).
#[derive(Default)]
pub(crate) struct Running(Mutex<HashSet<Vec<u8>>>);

impl Running {
    fn enter(&self, key: &[u8]) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.to_vec())
    }

    fn leave(&self, key: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

/// The lease's key for `job`.
pub(crate) fn lease_key(job: &str) -> Vec<u8> {
    [LEASE_PREFIX, job.as_bytes()].concat()
}

/// A claimed job; released when dropped.
pub(crate) struct Lease<'a> {
    store: &'a Store,
    key: Vec<u8>,
    what: String,
    /// The stored lease's token (`None`: no stored lease, on an engine that is not shared).
    token: Option<u64>,
    /// Renews the stored lease until told to stop (the sender's drop).
    heartbeat: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl std::fmt::Debug for Lease<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("job", &String::from_utf8_lossy(&self.key))
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// This process's holder name: the replica's name and its instance id.
    fn holder(&self) -> String {
        let name = if self.inner.options.replica.is_empty() {
            "unnamed"
        } else {
            self.inner.options.replica.as_str()
        };
        // Clipped as the audit log clips it (255 bytes, at a character boundary), so that a
        // stored lease always parses: a lease that did not would be taken over as damaged.
        let mut end = name.len().min(255);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}#{:016x}", &name[..end], self.inner.instance)
    }

    /// The lease's length: [`StoreOptions::job_lease`](crate::StoreOptions), at least
    /// [`MIN_LEASE`] (a lease of nothing would be taken over between two heartbeats).
    fn lease(&self) -> Duration {
        self.inner.options.job_lease.max(MIN_LEASE)
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease().as_millis()).unwrap_or(u64::MAX)
    }

    /// Claims `job` (described as `what` in errors) for this runner.
    ///
    /// # Errors
    /// [`StoreError::JobBusy`] while another runner (a thread of this process, or a replica
    /// whose lease has not expired) has it; a storage error.
    pub(crate) fn claim(&self, job: &str, what: &str) -> Result<Lease<'_>, StoreError> {
        let key = lease_key(job);
        if !self.inner.jobs.enter(&key) {
            return Err(StoreError::JobBusy {
                job: what.to_owned(),
                replica: "this process".into(),
                retry_after_ms: None,
            });
        }
        let mut lease = Lease {
            store: self,
            key,
            what: what.to_owned(),
            token: None,
            heartbeat: None,
        };
        if !self.inner.fleet.shared {
            return Ok(lease);
        }
        // Dropped on an error below: leaves the in-memory set.
        let token = self.claim_stored(&lease.key, what)?;
        lease.token = Some(token);
        lease.heartbeat = Some(self.heartbeat(lease.key.clone(), token));
        Ok(lease)
    }

    fn claim_stored(&self, key: &[u8], what: &str) -> Result<u64, StoreError> {
        let me = self.holder();
        let ttl = self.lease_ms();
        self.inner.storage.transaction_on(&[TreeId::Jobs], |tx| {
            // Read once the transaction runs: it may have waited for its turn (the fleet's
            // transaction lock, a compaction's table lock) longer than a lease lasts.
            let now = self.clock_ms().or_else(abort)?;
            let raw = tx.get(TreeId::Jobs, key)?;
            let token = match raw.as_deref().map(Stored::parse) {
                Some(Some(l)) if l.holder != me && l.expires_ms > now => {
                    return abort(StoreError::JobBusy {
                        job: what.to_owned(),
                        replica: replica_of(&l.holder).to_owned(),
                        retry_after_ms: Some(l.expires_ms - now),
                    });
                }
                Some(Some(l)) => l.token.wrapping_add(1),
                // Damaged: a token no earlier holder can have had.
                Some(None) => now,
                None => 1,
            };
            let lease = Stored {
                token,
                expires_ms: now.saturating_add(ttl),
                holder: me.clone(),
            };
            tx.insert(TreeId::Jobs, key, lease.encode())?;
            Ok(token)
        })
    }

    fn clock_ms(&self) -> Result<u64, StoreError> {
        self.inner
            .storage
            .engine()
            .clock_ms()
            .map_err(|source| StoreError::Storage {
                while_doing: "reading the database's clock",
                source,
            })
    }

    /// Extends the stored lease `key` with `token`; `false` once another holder has it.
    fn renew(&self, key: &[u8], token: u64) -> Result<bool, StoreError> {
        let me = self.holder();
        let ttl = self.lease_ms();
        self.inner.storage.transaction_on(&[TreeId::Jobs], |tx| {
            // As of the renewal's turn, not of before its wait (see `claim_stored`).
            let now = self.clock_ms().or_else(abort)?;
            match tx
                .get(TreeId::Jobs, key)?
                .as_deref()
                .and_then(Stored::parse)
            {
                Some(l) if l.token == token && l.holder == me => {
                    let renewed = Stored {
                        expires_ms: now.saturating_add(ttl),
                        ..l
                    };
                    tx.insert(TreeId::Jobs, key, renewed.encode())?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    /// A thread renewing the lease every third of its length until its sender is dropped (or
    /// the lease is lost). A renewal that fails (the database unreachable for a moment) is
    /// tried again at the next beat; the lease expires if they keep failing.
    fn heartbeat(&self, key: Vec<u8>, token: u64) -> (mpsc::Sender<()>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<()>();
        let store = self.clone();
        let every = self.lease() / 3;
        let handle = std::thread::spawn(move || {
            loop {
                match rx.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => {}
                    // Stopped: the job released the lease (or the store is going away).
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                if let Ok(false) = store.renew(&key, token) {
                    return;
                }
            }
        });
        (tx, handle)
    }

    /// The leases on jobs the database holds (on a shared engine; none otherwise), as of now.
    ///
    /// # Errors
    /// A storage error.
    pub fn job_leases(&self) -> Result<Vec<JobLease>, StoreError> {
        let mut out = Vec::new();
        // A store that holds its database alone runs no other process's jobs: a lease left in
        // it by a fleet before (a replica that died) means nothing.
        if !self.inner.fleet.shared {
            return Ok(out);
        }
        let now = self.clock_ms()?;
        for item in self.inner.storage.scan_prefix(TreeId::Jobs, LEASE_PREFIX) {
            let (k, v) = item?;
            if let Some(l) = Stored::parse(&v) {
                out.push(JobLease {
                    job: String::from_utf8_lossy(&k[LEASE_PREFIX.len()..]).into_owned(),
                    replica: replica_of(&l.holder).to_owned(),
                    expires_unix_ms: l.expires_ms,
                    expires_in_ms: l.expires_ms.saturating_sub(now),
                    expired: l.expires_ms <= now,
                });
            }
        }
        Ok(out)
    }
}

impl Lease<'_> {
    /// Checks, inside the transaction that commits a step of the job, that this runner still
    /// holds the lease (its token is the stored one): a runner whose lease another replica took
    /// over writes nothing more.
    pub(crate) fn hold(&self, tx: &Tx<'_>) -> TxResult<()> {
        let Some(token) = self.token else {
            return Ok(());
        };
        match tx
            .get(TreeId::Jobs, &self.key)?
            .as_deref()
            .and_then(Stored::parse)
        {
            Some(l) if l.token == token && l.holder == self.store.holder() => Ok(()),
            other => abort(StoreError::LeaseLost {
                job: self.what.clone(),
                replica: other
                    .map_or_else(|| "none".to_owned(), |l| replica_of(&l.holder).to_owned()),
            }),
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.heartbeat.take() {
            drop(stop);
            let _ = handle.join();
        }
        if let Some(token) = self.token {
            // Released for the next runner at once; if this fails (the database unreachable),
            // the lease expires by itself.
            let me = self.store.holder();
            let key = &self.key;
            let _ = self
                .store
                .inner
                .storage
                .transaction_on(&[TreeId::Jobs], |tx| {
                    match tx
                        .get(TreeId::Jobs, key)?
                        .as_deref()
                        .and_then(Stored::parse)
                    {
                        Some(l) if l.token == token && l.holder == me => {
                            tx.remove(TreeId::Jobs, key)
                        }
                        _ => Ok(()),
                    }
                });
        }
        self.store.inner.jobs.leave(&self.key);
    }
}

/// The shortest lease (a shorter [`StoreOptions::job_lease`](crate::StoreOptions) is taken as
/// this).
pub(crate) const MIN_LEASE: Duration = Duration::from_millis(300);

/// How long a lease runs by default ([`StoreOptions::job_lease`](crate::StoreOptions)).
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_round_trips_and_damage_is_not_a_lease() {
        let l = Stored {
            token: 7,
            expires_ms: 1_700_000_000_123,
            holder: "replica-1#00ff00ff00ff00ff".into(),
        };
        let b = l.encode();
        assert_eq!(Stored::parse(&b), Some(l));
        assert_eq!(Stored::parse(&b[..16]), None, "truncated");
        let mut other = b.clone();
        other[0] = 2;
        assert_eq!(Stored::parse(&other), None, "another format");
        let mut bad = b;
        bad.push(0xff);
        assert_eq!(Stored::parse(&bad), None, "a holder that is not UTF-8");
        assert_eq!(replica_of("replica-1#00ff"), "replica-1");
        assert_eq!(replica_of("a#b#00ff"), "a#b");
    }

    proptest::proptest! {
        /// The jobs tree is not authenticated: whatever bytes stand where a lease goes are
        /// parsed without a panic, and a lease the store wrote reads back as written.
        #[test]
        fn any_bytes_parse_without_a_panic_and_leases_round_trip(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            token in proptest::prelude::any::<u64>(),
            expires_ms in proptest::prelude::any::<u64>(),
            holder in "[a-z0-9-]{0,40}#[0-9a-f]{16}",
        ) {
            let _ = Stored::parse(&bytes);
            let l = Stored { token, expires_ms, holder };
            proptest::prop_assert_eq!(Stored::parse(&l.encode()), Some(l));
        }
    }
}
