//! Replicas of one store on one PostgreSQL schema, in one process: several `Store`s sharing a
//! store directory and a backend, each with its own engine (no exclusive lock).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use strongroom_core::{Backend, KeyringName, SoftBackend};
use strongroom_postgres::{PgConfig, PgEngine};
use strongroom_store::{Engine, Progress, Store, StoreError, StoreOptions, TreeId};
use strongroom_test_support::pg;

use super::{config, connect, rn};

/// A fleet: replicas of one store over one schema.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub schema: String,
    pub cfg: PgConfig,
    pub backend: Arc<dyn Backend>,
    pub replicas: Vec<Store>,
}

impl Fleet {
    /// A store on `cfg` (made shared here) and `n - 1` more replicas of it (the first created
    /// it); replica `i` is opened with `options(i)`.
    pub fn start_on(
        cfg: PgConfig,
        schema: String,
        n: usize,
        options: impl Fn(usize) -> StoreOptions,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(SoftBackend::create(dir.path()).unwrap());
        Self::start_with(cfg, schema, dir, backend, n, options)
    }

    /// [`Fleet::start_on`] with the store directory `dir` and `backend`.
    pub fn start_with(
        mut cfg: PgConfig,
        schema: String,
        dir: tempfile::TempDir,
        backend: Arc<dyn Backend>,
        n: usize,
        options: impl Fn(usize) -> StoreOptions,
    ) -> Self {
        cfg.exclusive = false;
        let first = Store::create_on(
            dir.path(),
            Box::new(connect(&cfg)),
            Arc::clone(&backend),
            &rn("service"),
            options(0),
        )
        .unwrap();
        let mut f = Self {
            dir,
            schema,
            cfg,
            backend,
            replicas: vec![first],
        };
        for i in 1..n {
            let r = f.open(options(i)).unwrap();
            f.replicas.push(r);
        }
        f
    }

    /// One more replica, opened now.
    pub fn open(&self, options: StoreOptions) -> Result<Store, StoreError> {
        Store::open_on(
            self.dir.path(),
            Box::new(connect(&self.cfg)),
            Arc::clone(&self.backend),
            options,
        )
    }
}

/// [`Fleet::start_on`] a new schema of the shared test server.
pub fn fleet_with(n: usize, options: impl Fn(usize) -> StoreOptions) -> Fleet {
    let schema = pg::unique_schema();
    Fleet::start_on(config(&schema), schema, n, options)
}

/// Options polling every `poll`.
pub fn polling(poll: Duration) -> StoreOptions {
    StoreOptions {
        fleet_poll: poll,
        ..StoreOptions::default()
    }
}

/// Sets its flag when dropped: a loop in another thread stops even when the test panics.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Calls `f` until it returns `Some`, for up to `limit`; returns the value and how long it
/// took.
pub fn until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, t.elapsed());
        }
        assert!(t.elapsed() < limit, "not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Rotates the KEK of `keyring` through replica `s` every 2 ms until `stop` is set, skipping
/// the rotations refused as conflicts (the documented outcome of racing another replica's
/// change); returns how many went through. Any other error stops the loop and panics.
pub fn churn_kek(s: &Store, keyring: &KeyringName, stop: &AtomicBool) -> u32 {
    let _stop = StopOnDrop(stop);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        match s.rotate_kek(keyring) {
            Ok(_) => n += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("a KEK rotation of {keyring}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    n
}

/// Retries `f` while it is refused as a conflict (another replica changed the key states: the
/// documented outcome, after which the replica has reloaded).
pub fn retrying<T>(mut f: impl FnMut() -> Result<T, StoreError>) -> T {
    for _ in 0..200 {
        match f() {
            Ok(v) => return v,
            Err(StoreError::Conflict { .. }) => std::thread::sleep(Duration::from_millis(3)),
            Err(e) => panic!("{e}"),
        }
    }
    panic!("refused as a conflict 200 times in a row");
}

/// Options of replica `i` of a fleet running jobs: named `replica-<i>`, polling every 50 ms,
/// with leases of `lease`.
pub fn job_options(i: usize, lease: Duration) -> StoreOptions {
    StoreOptions {
        fleet_poll: Duration::from_millis(50),
        replica: format!("replica-{i}"),
        job_lease: lease,
        ..StoreOptions::default()
    }
}

/// A keyring `name` of `n` records (`r00000`.. holding `value <i>`), all under a DEK that is
/// not current: a re-encryption to run. Returns once every replica serves the key states of
/// now.
pub fn keyring_to_reencrypt(f: &Fleet, name: &str, n: usize) {
    let a = &f.replicas[0];
    let k = super::kr(name);
    a.create_keyring(&k, None).unwrap();
    let ops: Vec<_> = (0..n)
        .map(|i| {
            strongroom_store::BatchOp::Put(
                format!("r{i:05}").into_bytes(),
                format!("value {i}").into_bytes(),
            )
        })
        .collect();
    for chunk in ops.chunks(500) {
        a.batch(&k, chunk).unwrap();
    }
    a.rotate_dek(&k).unwrap();
    let (stored, _) = a.generations().unwrap();
    for r in &f.replicas {
        until(Duration::from_secs(5), || {
            // An operation polls.
            let _ = r.get(&k, b"r00000");
            (r.generations().unwrap().1 >= stored).then_some(())
        });
    }
}

/// The stored leases, raw: `(key, value)`.
pub fn raw_leases(engine: &PgEngine) -> Vec<(Vec<u8>, Vec<u8>)> {
    engine
        .scan(TreeId::Jobs, b"lease/", b"")
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A lease as the store writes it: format 1, token, expiry (ms since the epoch, the database's
/// clock), holder.
pub fn lease_bytes(token: u64, expires_ms: u64, holder: &str) -> Vec<u8> {
    let mut v = vec![1u8];
    v.extend_from_slice(&token.to_be_bytes());
    v.extend_from_slice(&expires_ms.to_be_bytes());
    v.extend_from_slice(holder.as_bytes());
    v
}

/// Runs `job` in a thread of its own with a progress callback that pauses it after its first
/// step, runs `meanwhile` while it is paused, then lets it finish; returns what `job` and
/// `meanwhile` returned.
///
/// # Panics
/// If the job ends before its first step (with what it returned).
pub fn paused_after_first_step<T: Send + std::fmt::Debug, U>(
    job: impl FnOnce(&mut dyn FnMut(Progress)) -> T + Send,
    meanwhile: impl FnOnce() -> U,
) -> (T, U) {
    let (started_tx, started) = mpsc::channel::<()>();
    let (go_tx, go) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let runner = scope.spawn(move || {
            let mut first = true;
            job(&mut |p: Progress| {
                if first && p.done > 0 {
                    first = false;
                    started_tx.send(()).unwrap();
                    go.recv().unwrap();
                }
            })
        });
        if started.recv().is_err() {
            panic!(
                "the job ended before its first step: {:?}",
                runner.join().unwrap()
            );
        }
        let seen = meanwhile();
        go_tx.send(()).unwrap();
        (runner.join().unwrap(), seen)
    })
}
