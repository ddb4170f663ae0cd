//! Replicas of one store on one PostgreSQL schema, in one process: several `Store`s sharing a
//! store directory and a backend, each with its own engine (no exclusive lock).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use strongroom_core::{Backend, SoftBackend};
use strongroom_postgres::PgConfig;
use strongroom_store::{Store, StoreError, StoreOptions};
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
        mut cfg: PgConfig,
        schema: String,
        n: usize,
        options: impl Fn(usize) -> StoreOptions,
    ) -> Self {
        cfg.exclusive = false;
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(SoftBackend::create(dir.path()).unwrap());
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
