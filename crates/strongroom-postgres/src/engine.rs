//! The engine: a pool of connections driven by the engine's own small tokio runtime, so that
//! every call works from plain threads and from inside any async runtime alike.
//!
//! Each call is spawned onto the engine's runtime and the caller waits for its answer on a
//! standard channel: the caller's thread needs no runtime (the synchronous `postgres` crate
//! would panic on a tokio worker thread, "Cannot start a runtime from within a runtime"). On an
//! async service's worker thread the wait blocks that thread for one round trip, as a sled read
//! would; `AsyncStore` moves store calls to a blocking pool.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use strongroom_store::engine::{
    ALL_TREES, BatchChange, BatchRef, Compaction, Engine, EngineInfo, EngineTx, Guard, Keep,
    KeyValue, Scan, TreeId, TxBody, TxFailure, TxStop,
};
use strongroom_store::{EngineError, EngineErrorKind};
use tokio_postgres::types::ToSql;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::PgConfig;
use crate::error::{engine_closed, is_retryable, pg_error, timed_out};
use crate::schema;

/// Rows fetched per page of a scan.
const PAGE: i64 = 512;

/// The time limit of a compaction's `VACUUM FULL` once it runs.
const COMPACTION_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// How long a connection sits in the pool before a checkout first lets it notice a server
/// that went away ([`Conn::refresh`]).
const REFRESH_AFTER: Duration = Duration::from_millis(20);

/// The PostgreSQL engine. Cheap to clone (one pool shared by the clones).
#[derive(Clone)]
pub struct PgEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEngine")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// Taken out when the engine is dropped: shut down without blocking (dropping a runtime
    /// blocks, which panics inside another runtime's worker thread).
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    config: PgConfig,
    client_config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    sql: schema::Sql,
    pool: Mutex<PoolState>,
    freed: Condvar,
    location: String,
    /// The connection holding the store's session advisory lock (one process per store; see
    /// [`PgConfig::exclusive`]); `None` when not exclusive.
    lock: Mutex<Option<tokio_postgres::Client>>,
    /// Whether the lock was held once: taking it again means it was lost in between.
    locked_once: AtomicBool,
    /// Set when the lock was lost and taken again (another process may have changed the
    /// database in between): the store drops what it keeps in memory
    /// ([`Engine::take_invalidation`]).
    invalidated: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self
            .rt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            rt.shutdown_background();
        }
    }
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Arc<Conn>>,
    /// Connections open (idle or leased).
    open: usize,
}

/// One connection, its prepared statements, and the current-thread runtime its socket is
/// registered with: the calling thread drives it (see [`drive`]), so a statement costs one
/// round trip and no hand-over between threads.
struct Conn {
    client: tokio_postgres::Client,
    st: schema::Statements,
    /// Set when the connection must not be reused (a timeout left it mid-statement).
    broken: AtomicBool,
    /// Taken out on drop: shut down without blocking (a runtime dropped inside another
    /// runtime's worker would panic).
    rt: Option<Arc<tokio::runtime::Runtime>>,
    /// When it went back to the pool.
    idle_since: Mutex<Instant>,
}

impl Conn {
    fn rt(&self) -> &Arc<tokio::runtime::Runtime> {
        // Always Some until drop.
        self.rt.as_ref().unwrap_or_else(|| unreachable!())
    }

    /// Lets the connection's task see what arrived while it sat idle (the server closing it
    /// at a restart), so that a dead connection is found before a statement is sent on it.
    /// Skipped for a connection back in the pool for less than [`REFRESH_AFTER`]: a busy pool
    /// pays nothing, and a server that died that recently left the calls that were using it
    /// in doubt anyway.
    fn refresh(&self) {
        let idle = self
            .idle_since
            .lock()
            .map_or(REFRESH_AFTER, |t| t.elapsed());
        if idle < REFRESH_AFTER {
            return;
        }
        drive(self.rt(), async {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
        });
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take().and_then(|rt| Arc::try_unwrap(rt).ok()) {
            rt.shutdown_background();
        }
    }
}

/// Runs `fut` to completion on `rt` (a connection's current-thread runtime) from whatever
/// thread calls:
/// - outside any runtime (a plain thread, a `spawn_blocking` thread of a multi-thread runtime):
///   directly, on this thread;
/// - on a worker of a multi-thread runtime: inside `block_in_place`, which hands the worker's
///   other tasks to another thread while this one blocks;
/// - inside a current-thread runtime (which cannot block in place), or while this thread's
///   thread-locals are being destroyed (a store used from a thread-local's destructor, where
///   tokio cannot enter a runtime): on a short-lived thread of its own.
fn drive<F>(rt: &Arc<tokio::runtime::Runtime>, fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    thread_local! {
        /// Set on a thread where `block_in_place` refused (a `LocalSet` inside a multi-thread
        /// runtime): its calls go to a short-lived thread from then on.
        static NO_BLOCK_IN_PLACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    let on_thread = |fut: F| {
        let rt = Arc::clone(rt);
        std::thread::spawn(move || rt.block_on(fut))
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    };
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Err(e) if !e.is_thread_local_destroyed() => rt.block_on(fut),
        Ok(RuntimeFlavor::MultiThread)
            if !NO_BLOCK_IN_PLACE
                .try_with(std::cell::Cell::get)
                .unwrap_or(true) =>
        {
            // tokio offers no way to ask whether `block_in_place` is allowed here; it refuses
            // (with a panic, before running anything) inside a `LocalSet`. The future is
            // handed back out of the closure so that it can go elsewhere then.
            let mut slot = Some(fut);
            let tried = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                tokio::task::block_in_place(|| slot.take().map(|f| rt.block_on(f)))
            }));
            match tried {
                Ok(Some(out)) => out,
                Ok(None) => unreachable!("the future is taken once"),
                Err(panic) => match slot.take() {
                    Some(fut) => {
                        let _ = NO_BLOCK_IN_PLACE.try_with(|c| c.set(true));
                        on_thread(fut)
                    }
                    None => std::panic::resume_unwind(panic),
                },
            }
        }
        _ => on_thread(fut),
    }
}

/// Why a call on the runtime failed, before it becomes an [`EngineError`].
enum Fail {
    Pg(tokio_postgres::Error),
    Timeout,
    Closed,
}

impl Fail {
    fn retryable(&self) -> bool {
        matches!(self, Self::Pg(e) if is_retryable(e))
    }

    fn into_engine(self, what: &str, timeout: Duration) -> EngineError {
        match self {
            Self::Pg(e) => pg_error(what, &e),
            Self::Timeout => timed_out(what, timeout),
            Self::Closed => engine_closed(),
        }
    }
}

/// A connection lent out of the pool; back in the pool when dropped (unless broken).
struct Lease<'a> {
    inner: &'a Inner,
    conn: Option<Arc<Conn>>,
}

impl Lease<'_> {
    fn conn(&self) -> &Arc<Conn> {
        // Always Some until drop.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let mut st = self
            .inner
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if conn.broken.load(Ordering::Acquire) || conn.client.is_closed() {
            st.open = st.open.saturating_sub(1);
        } else {
            if let Ok(mut t) = conn.idle_since.lock() {
                *t = Instant::now();
            }
            st.idle.push(conn);
        }
        drop(st);
        self.inner.freed.notify_one();
    }
}

impl Inner {
    /// Runs `fut` on the engine's runtime, bounded by the configured timeout, and waits for it.
    fn run<T, F>(&self, fut: F) -> Result<T, Fail>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        let timeout = self.config.timeout;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let r = tokio::time::timeout(timeout, fut).await;
            let _ = tx.send(r);
        });
        match rx.recv() {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(Fail::Pg(e)),
            Ok(Err(_elapsed)) => Err(Fail::Timeout),
            Err(_) => Err(Fail::Closed),
        }
    }

    /// Runs `f(connection)` on a leased connection; a connection left in doubt (timeout,
    /// broken socket) is dropped from the pool.
    fn on<T, F, Fut>(&self, lease: &Lease<'_>, f: F) -> Result<T, Fail>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Conn>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        self.on_for(lease, self.config.timeout, f)
    }

    /// [`Inner::on`] with its own time limit.
    fn on_for<T, F, Fut>(&self, lease: &Lease<'_>, timeout: Duration, f: F) -> Result<T, Fail>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Conn>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        let conn = Arc::clone(lease.conn());
        let fut = f(Arc::clone(&conn));
        let r = match drive(conn.rt(), async move {
            tokio::time::timeout(timeout, fut).await
        }) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Fail::Pg(e)),
            Err(_elapsed) => Err(Fail::Timeout),
        };
        if let Err(Fail::Timeout | Fail::Closed) = &r {
            conn.broken.store(true, Ordering::Release);
        }
        if let Err(Fail::Pg(e)) = &r
            && e.is_closed()
        {
            conn.broken.store(true, Ordering::Release);
        }
        r
    }

    fn connect(&self) -> Result<Conn, EngineError> {
        let rt = Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(EngineError::io)?,
        );
        let cfg = self.client_config.clone();
        let tls = self.tls.clone();
        let sql = self.sql.clone();
        let timeout = self.config.timeout;
        let r = drive(&rt, async move {
            tokio::time::timeout(timeout, async move {
                let (client, connection) = cfg.connect(tls).await?;
                // On this connection's runtime: it runs whenever a caller drives it. The task
                // ends when the client is dropped or the socket breaks.
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                let st = schema::Statements::prepare(&client, &sql).await?;
                Ok::<_, tokio_postgres::Error>((client, st))
            })
            .await
        });
        match r {
            Ok(Ok((client, st))) => Ok(Conn {
                client,
                st,
                broken: AtomicBool::new(false),
                rt: Some(rt),
                idle_since: Mutex::new(Instant::now()),
            }),
            Ok(Err(e)) => {
                if let Ok(rt) = Arc::try_unwrap(rt) {
                    rt.shutdown_background();
                }
                Err(pg_error("connecting", &e))
            }
            Err(_) => {
                if let Ok(rt) = Arc::try_unwrap(rt) {
                    rt.shutdown_background();
                }
                Err(timed_out("connecting", timeout))
            }
        }
    }

    /// Takes (or, after a server restart broke its connection, takes again) the store's
    /// session advisory lock.
    fn hold_lock(&self) -> Result<(), EngineError> {
        if !self.config.exclusive {
            return Ok(());
        }
        let mut lock = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if lock.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        *lock = None;
        let cfg = self.client_config.clone();
        let tls = self.tls.clone();
        let handle = self.handle.clone();
        let schema = self.config.schema.clone();
        let (client, got) = self
            .run(async move {
                let (client, connection) = cfg.connect(tls).await?;
                handle.spawn(async move {
                    let _ = connection.await;
                });
                let got: bool = client
                    .query_one(
                        "SELECT pg_try_advisory_lock(hashtext('strongroom-store'), hashtext($1))",
                        &[&schema],
                    )
                    .await?
                    .try_get(0)?;
                Ok((client, got))
            })
            .map_err(|f| f.into_engine("locking the store", self.config.timeout))?;
        if !got {
            return Err(EngineError::new(
                EngineErrorKind::Refused,
                format!(
                    "another process has the store in PostgreSQL schema {} open",
                    self.config.schema
                ),
            )
            .with_hint("; one process at a time opens a store: close the other one (a service, another command) and retry"));
        }
        *lock = Some(client);
        if self.locked_once.swap(true, Ordering::AcqRel) {
            // Lost (a server restart, the connection dropped or terminated) and taken again:
            // for a moment another process could have had the store. What the store keeps in
            // memory is refreshed before it is used again.
            self.invalidated.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn checkout(&self) -> Result<Lease<'_>, EngineError> {
        self.hold_lock()?;
        let deadline = Instant::now() + self.config.checkout_timeout;
        let mut st = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(c) = st.idle.pop() {
                // Checked outside the pool's lock (it may drive the connection for a moment).
                drop(st);
                c.refresh();
                if c.client.is_closed() || c.broken.load(Ordering::Acquire) {
                    st = self
                        .pool
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    st.open = st.open.saturating_sub(1);
                    continue;
                }
                return Ok(Lease {
                    inner: self,
                    conn: Some(c),
                });
            }
            if st.open < self.config.pool_size.max(1) {
                st.open += 1;
                drop(st);
                return match self.connect() {
                    Ok(c) => Ok(Lease {
                        inner: self,
                        conn: Some(Arc::new(c)),
                    }),
                    Err(e) => {
                        let mut st = self
                            .pool
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        st.open = st.open.saturating_sub(1);
                        drop(st);
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(EngineError::new(
                    EngineErrorKind::Unavailable,
                    format!(
                        "all {} PostgreSQL connections stayed busy for {:?}",
                        self.config.pool_size, self.config.checkout_timeout
                    ),
                )
                .with_hint("; raise the pool size (pg_pool_size), or find what holds them"));
            }
            st = self
                .freed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// One read on a pooled connection, run again once on a fresh connection when the pooled
    /// one turns out to be dead (the server restarted since it was last used): a read has no
    /// effect to duplicate.
    fn read<T, F, Fut>(&self, what: &str, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: Fn(Arc<Conn>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        let mut again = true;
        loop {
            let lease = self.checkout()?;
            match self.on(&lease, &f) {
                Ok(v) => return Ok(v),
                Err(Fail::Pg(e)) if again && e.is_closed() && e.as_db_error().is_none() => {
                    again = false;
                }
                Err(f) => return Err(f.into_engine(what, self.config.timeout)),
            }
        }
    }

    /// One write (a statement that commits by itself). A connection that breaks, or a server
    /// that does not answer, after the statement may have been sent leaves its outcome unknown:
    /// [`EngineErrorKind::Indeterminate`], never retried here.
    fn write<T, F, Fut>(&self, what: &str, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Conn>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        let lease = self.checkout()?;
        self.on(&lease, f).map_err(|f| {
            let broke = match &f {
                Fail::Pg(e) => e.as_db_error().is_none() && !is_retryable(e),
                Fail::Timeout => true,
                Fail::Closed => false,
            };
            let e = f.into_engine(what, self.config.timeout);
            if broke {
                EngineError::new(
                    EngineErrorKind::Indeterminate,
                    format!("the outcome of a write is unknown: {e}"),
                )
                .with_hint("; the write may or may not have been applied: read it back, or write it again (writes are idempotent)")
            } else {
                e
            }
        })
    }
}

fn tree_id(t: TreeId) -> i16 {
    // 0..8: always fits.
    i16::try_from(t.index()).unwrap_or(i16::MAX)
}

/// The smallest key greater than every key starting with `prefix` (`None`: no bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl PgEngine {
    /// Connects to the database `config` names, creates or upgrades strongroom's schema there
    /// (under an advisory lock, so processes starting together do not race), and opens the
    /// first connection of the pool.
    ///
    /// # Errors
    /// The server cannot be reached, refuses the user, the TLS settings are wrong, or the
    /// schema was written by a newer strongroom.
    pub fn connect(config: &PgConfig) -> Result<Self, EngineError> {
        crate::config::check_schema(&config.schema)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("strongroom-pg")
            .enable_all()
            .build()
            .map_err(EngineError::io)?;
        let handle = rt.handle().clone();
        let inner = Arc::new(Inner {
            rt: Mutex::new(Some(rt)),
            handle,
            client_config: config.client_config()?,
            tls: crate::tls::connector(&config.tls)?,
            sql: schema::Sql::new(&config.schema),
            config: config.clone(),
            pool: Mutex::new(PoolState::default()),
            freed: Condvar::new(),
            location: config.location(),
            lock: Mutex::new(None),
            locked_once: AtomicBool::new(false),
            invalidated: AtomicBool::new(false),
        });
        let engine = Self { inner };
        engine.ensure_schema()?;
        // The first pooled connection now: its statements need the tables.
        drop(engine.inner.checkout()?);
        Ok(engine)
    }

    fn ensure_schema(&self) -> Result<(), EngineError> {
        let inner = &self.inner;
        let cfg = inner.client_config.clone();
        let tls = inner.tls.clone();
        let handle = inner.handle.clone();
        let sql = inner.sql.clone();
        let r = inner.run(async move {
            let (client, connection) = cfg.connect(tls).await?;
            handle.spawn(async move {
                let _ = connection.await;
            });
            schema::ensure(&client, &sql).await
        });
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(f) => Err(f.into_engine("creating the schema", inner.config.timeout)),
        }
    }

    /// The server's version (`SHOW server_version`).
    ///
    /// # Errors
    /// The server's.
    pub fn server_version(&self) -> Result<String, EngineError> {
        self.inner
            .read("reading the server version", |c| async move {
                let row = c.client.query_one("SHOW server_version", &[]).await?;
                row.try_get::<_, String>(0)
            })
    }

    /// The version of strongroom's schema in the database.
    ///
    /// # Errors
    /// The server's.
    pub fn schema_version(&self) -> Result<i32, EngineError> {
        let q = self.inner.sql.schema_version.clone();
        self.inner.read("reading the schema version", move |c| {
            let q = q.clone();
            async move {
                let row = c.client.query_one(q.as_str(), &[]).await?;
                Ok(row.try_get::<_, Option<i32>>(0)?.unwrap_or(0))
            }
        })
    }

    /// Whether this engine's connections are encrypted (what the server says about them), and
    /// the TLS version.
    ///
    /// # Errors
    /// The server's.
    pub fn tls_in_use(&self) -> Result<Option<String>, EngineError> {
        self.inner
            .read("reading the connection's TLS state", |c| async move {
                let row = c
                    .client
                    .query_one(
                        "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                        &[],
                    )
                    .await?;
                let on: bool = row.try_get(0)?;
                Ok(if on {
                    row.try_get::<_, Option<String>>(1)?
                } else {
                    None
                })
            })
    }

    /// Connections open now (idle or in use).
    #[must_use]
    pub fn connections_open(&self) -> usize {
        self.inner
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .open
    }

    /// The configuration the engine was made with.
    #[must_use]
    pub fn config(&self) -> &PgConfig {
        &self.inner.config
    }
}

/// A scan, one page per statement (not a snapshot: like sled's scans, it sees writes made
/// while it runs).
struct PgScan {
    engine: Arc<Inner>,
    tree: i16,
    end: Option<Vec<u8>>,
    next: Vec<u8>,
    inclusive: bool,
    buf: VecDeque<KeyValue>,
    done: bool,
}

impl Iterator for PgScan {
    type Item = Result<KeyValue, EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() && !self.done {
            let (tree, from, end, inclusive) = (
                self.tree,
                self.next.clone(),
                self.end.clone(),
                self.inclusive,
            );
            let r = self.engine.read("scanning", move |c| {
                let (from, end) = (from.clone(), end.clone());
                async move {
                    let st = match (inclusive, end.is_some()) {
                        (true, true) => &c.st.scan_ge_lt,
                        (true, false) => &c.st.scan_ge,
                        (false, true) => &c.st.scan_gt_lt,
                        (false, false) => &c.st.scan_gt,
                    };
                    let rows = match &end {
                        Some(end) => c.client.query(st, &[&tree, &from, end, &PAGE]).await?,
                        None => c.client.query(st, &[&tree, &from, &PAGE]).await?,
                    };
                    rows.iter()
                        .map(|r| Ok((r.try_get::<_, Vec<u8>>(0)?, r.try_get::<_, Vec<u8>>(1)?)))
                        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                }
            });
            match r {
                Ok(rows) => {
                    self.done = (rows.len() as u64) < PAGE.unsigned_abs();
                    if let Some((k, _)) = rows.last() {
                        self.next.clone_from(k);
                        self.inclusive = false;
                    }
                    self.buf.extend(rows);
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        self.buf.pop_front().map(Ok)
    }
}

/// The view of one transaction: every statement on the leased connection, in order.
struct PgTx<'a> {
    inner: &'a Inner,
    lease: &'a Lease<'a>,
    /// Set by the first statement that failed: PostgreSQL has aborted the transaction, and a
    /// `COMMIT` would roll it back without an error, so it is never sent (a body that ignored
    /// the error must not see its other writes reported as committed).
    poisoned: std::cell::Cell<bool>,
}

impl PgTx<'_> {
    fn fail(&self, f: Fail, what: &str) -> EngineError {
        self.poisoned.set(true);
        if f.retryable() {
            EngineError::new(EngineErrorKind::Conflict, "a serialization conflict")
        } else {
            f.into_engine(what, self.inner.config.timeout)
        }
    }
}

impl EngineTx for PgTx<'_> {
    fn get(&self, t: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let (tree, key) = (tree_id(t), key.to_vec());
        self.inner
            .on(self.lease, move |c| async move {
                let row = c.client.query_opt(&c.st.get, &[&tree, &key]).await?;
                row.map(|r| r.try_get::<_, Vec<u8>>(0)).transpose()
            })
            .map_err(|f| self.fail(f, "reading in a transaction"))
    }

    fn insert(&self, t: TreeId, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        let (tree, key, value) = (tree_id(t), key.to_vec(), value.to_vec());
        self.inner
            .on(self.lease, move |c| async move {
                c.client.execute(&c.st.put, &[&tree, &key, &value]).await?;
                Ok(())
            })
            .map_err(|f| self.fail(f, "writing in a transaction"))
    }

    fn remove(&self, t: TreeId, key: &[u8]) -> Result<(), EngineError> {
        let (tree, key) = (tree_id(t), key.to_vec());
        self.inner
            .on(self.lease, move |c| async move {
                c.client.execute(&c.st.del, &[&tree, &key]).await?;
                Ok(())
            })
            .map_err(|f| self.fail(f, "deleting in a transaction"))
    }
}

/// A growing, jittered pause before attempt `n` of a transaction (about 1 ms, 2 ms, 4 ms...
/// up to about 100 ms).
fn backoff(n: u32) {
    use std::hash::{BuildHasher, Hasher};
    let base = Duration::from_micros(500u64 << n.min(8)).min(Duration::from_millis(100));
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(n);
    let jitter = h.finish() % 1000;
    std::thread::sleep(base + base * u32::try_from(jitter).unwrap_or(0) / 1000);
}

/// On a schema the replicas of a fleet share, the store's transactions take turns, fleet-wide:
/// a session advisory lock taken before `BEGIN` (so the transaction's snapshot is taken once
/// it holds the lock) and released after its end. Every key change and every audited access
/// appends to the one audit chain, so they conflict on its head row anyway; under
/// `SERIALIZABLE` alone a long transaction (a destruction, a disable) lost that conflict to a
/// stream of short ones (another replica's audited reads) until it gave up. Waiting in line,
/// every one gets through. Unaudited record writes are single statements, not transactions,
/// and do not wait for it. (A connection whose unlock fails is closed, which releases it.)
struct FleetTxLock<'a> {
    inner: &'a Inner,
    lease: &'a Lease<'a>,
}

impl<'a> FleetTxLock<'a> {
    fn take(inner: &'a Inner, lease: &'a Lease<'a>) -> Result<Self, Fail> {
        let schema = inner.config.schema.clone();
        inner.on(lease, move |c| async move {
            c.client
                .execute(
                    "SELECT pg_advisory_lock(hashtext('strongroom-tx'), hashtext($1))",
                    &[&schema],
                )
                .await
                .map(|_| ())
        })?;
        Ok(Self { inner, lease })
    }
}

impl Drop for FleetTxLock<'_> {
    fn drop(&mut self) {
        let conn = self.lease.conn();
        // A connection that failed (a timeout: a statement may still be running on it) is
        // closed rather than asked, which releases the lock with the session; so is one whose
        // transaction a panic left open (it must not go back to the pool inside it).
        if conn.broken.load(Ordering::Acquire) || std::thread::panicking() {
            conn.broken.store(true, Ordering::Release);
            return;
        }
        let schema = self.inner.config.schema.clone();
        let unlocked = self.inner.on(self.lease, move |c| async move {
            let row = c
                .client
                .query_one(
                    "SELECT pg_advisory_unlock(hashtext('strongroom-tx'), hashtext($1))",
                    &[&schema],
                )
                .await?;
            row.try_get::<_, bool>(0)
        });
        if !matches!(unlocked, Ok(true)) {
            self.lease.conn().broken.store(true, Ordering::Release);
        }
    }
}

fn simple(inner: &Inner, lease: &Lease<'_>, sql: &'static str) -> Result<(), Fail> {
    inner.on(
        lease,
        move |c| async move { c.client.batch_execute(sql).await },
    )
}

/// The last change of each key, split into the keys and values to upsert and the keys to
/// delete (disjoint): what applying the changes in order would leave.
#[allow(clippy::type_complexity)]
fn last_changes(
    changes: impl Iterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let last: BTreeMap<Vec<u8>, Option<Vec<u8>>> = changes.collect();
    let (mut keys, mut values, mut gone) = (Vec::new(), Vec::new(), Vec::new());
    for (k, v) in last {
        match v {
            Some(v) => {
                keys.push(k);
                values.push(v);
            }
            None => gone.push(k),
        }
    }
    (keys, values, gone)
}

impl Engine for PgEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo::new("postgres", self.inner.location.clone())
    }

    fn get(&self, t: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let (tree, key) = (tree_id(t), key.to_vec());
        self.inner.read("reading", move |c| {
            let key = key.clone();
            async move {
                let row = c.client.query_opt(&c.st.get, &[&tree, &key]).await?;
                row.map(|r| r.try_get::<_, Vec<u8>>(0)).transpose()
            }
        })
    }

    fn insert(&self, t: TreeId, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        let (tree, key, value) = (tree_id(t), key.to_vec(), value.to_vec());
        self.inner.write("writing", move |c| async move {
            c.client.execute(&c.st.put, &[&tree, &key, &value]).await?;
            Ok(())
        })
    }

    fn remove(&self, t: TreeId, key: &[u8]) -> Result<bool, EngineError> {
        let (tree, key) = (tree_id(t), key.to_vec());
        self.inner.write("deleting", move |c| async move {
            Ok(c.client.execute(&c.st.del, &[&tree, &key]).await? > 0)
        })
    }

    fn apply_batch(&self, t: TreeId, changes: Vec<BatchChange>) -> Result<(), EngineError> {
        // The last change of each key wins (as applying them in order would leave it); then
        // one statement deletes and upserts: atomic by itself, one round trip.
        let (keys, values, gone) = last_changes(changes.into_iter().map(|c| match c {
            BatchChange::Insert(k, v) => (k, Some(v)),
            BatchChange::Remove(k) => (k, None),
        }));
        let tree = tree_id(t);
        self.inner.write("applying a batch", move |c| async move {
            let params: [&(dyn ToSql + Sync); 4] = [&tree, &keys, &values, &gone];
            c.client.execute(&c.st.batch, &params).await?;
            Ok(())
        })
    }

    fn apply_batch_guarded(
        &self,
        t: TreeId,
        changes: &[BatchRef<'_>],
        guard: &Guard<'_>,
    ) -> Result<bool, EngineError> {
        // One statement, as `apply_batch`, with the guard checked in it (`batch_guarded`).
        let (keys, values, gone) = last_changes(changes.iter().map(|c| match *c {
            BatchRef::Insert(k, v) => (k.to_vec(), Some(v.to_vec())),
            BatchRef::Remove(k) => (k.to_vec(), None),
        }));
        let (tree, gtree) = (tree_id(t), tree_id(guard.tree));
        let (gkey, gvalue) = (guard.key.to_vec(), guard.value.map(<[u8]>::to_vec));
        self.inner
            .write("applying a guarded batch", move |c| async move {
                let params: [&(dyn ToSql + Sync); 7] =
                    [&tree, &keys, &values, &gone, &gtree, &gkey, &gvalue];
                let row = c.client.query_one(&c.st.batch_guarded, &params).await?;
                row.try_get::<_, bool>(0)
            })
    }

    fn scan(&self, t: TreeId, prefix: &[u8], start: &[u8]) -> Scan {
        let next = if start < prefix {
            prefix.to_vec()
        } else {
            start.to_vec()
        };
        Box::new(PgScan {
            engine: Arc::clone(&self.inner),
            tree: tree_id(t),
            end: prefix_end(prefix),
            next,
            inclusive: true,
            buf: VecDeque::new(),
            done: false,
        })
    }

    fn transaction(&self, _on: &[TreeId], body: &TxBody<'_>) -> Result<(), TxFailure> {
        let inner = &*self.inner;
        let timeout = inner.config.timeout;
        let mut attempt = 0u32;
        loop {
            let lease = inner.checkout().map_err(TxFailure::Engine)?;
            // Dropped before the lease: the lock is released before the connection goes back.
            let serial = if inner.config.exclusive {
                None
            } else {
                Some(FleetTxLock::take(inner, &lease).map_err(|f| {
                    TxFailure::Engine(
                        f.into_engine("waiting for the fleet's transaction lock", timeout),
                    )
                })?)
            };
            if let Err(f) = simple(inner, &lease, "BEGIN ISOLATION LEVEL SERIALIZABLE") {
                return Err(TxFailure::Engine(
                    f.into_engine("starting a transaction", timeout),
                ));
            }
            let tx = PgTx {
                inner,
                lease: &lease,
                poisoned: std::cell::Cell::new(false),
            };
            let outcome = match body(&tx) {
                Ok(()) if tx.poisoned.get() => Err(TxStop::Engine(EngineError::new(
                    EngineErrorKind::Other,
                    "a statement of the transaction failed and the transaction went on as if it had not: nothing was committed",
                ))),
                other => other,
            };
            let retry = match outcome {
                Ok(()) => match simple(inner, &lease, "COMMIT") {
                    Ok(()) => return Ok(()),
                    Err(f) if f.retryable() => true,
                    Err(Fail::Pg(e)) if e.as_db_error().is_some() => {
                        return Err(TxFailure::Engine(pg_error("committing", &e)));
                    }
                    // The commit was sent, and the answer never came.
                    Err(f) => {
                        let e = f.into_engine("committing", timeout);
                        return Err(TxFailure::Engine(
                            EngineError::new(
                                EngineErrorKind::Indeterminate,
                                format!("the outcome of a commit is unknown: {e}"),
                            )
                            .with_hint("; the change may or may not have been applied: read it back before retrying"),
                        ));
                    }
                },
                Err(TxStop::Abort) => {
                    let _ = simple(inner, &lease, "ROLLBACK");
                    return Err(TxFailure::Aborted);
                }
                Err(TxStop::Engine(e)) => {
                    let _ = simple(inner, &lease, "ROLLBACK");
                    if e.is_conflict() {
                        true
                    } else {
                        return Err(TxFailure::Engine(e));
                    }
                }
            };
            debug_assert!(retry);
            drop(serial);
            drop(lease);
            attempt += 1;
            if attempt > inner.config.max_retries {
                return Err(TxFailure::Engine(
                    EngineError::new(
                        EngineErrorKind::Conflict,
                        format!(
                            "a transaction lost a serialization conflict or a deadlock {attempt} times in a row"
                        ),
                    )
                    .with_hint("; retry it (other writers were busy on the same keys)"),
                ));
            }
            backoff(attempt);
        }
    }

    fn flush(&self) -> Result<(), EngineError> {
        // Every commit is durable when it returns (synchronous_commit is on for strongroom's
        // connections).
        Ok(())
    }

    fn durable_commits(&self) -> bool {
        true
    }

    fn shared(&self) -> bool {
        // Without the exclusive lock, other processes (replicas of a fleet) may write the
        // schema: the store follows the key-state generation.
        !self.inner.config.exclusive
    }

    fn take_invalidation(&self) -> bool {
        // Checked (and the lock taken back if it was lost) before the store uses what it keeps
        // in memory, not only when the next statement needs a connection. If another process
        // holds it now, the statement that follows is refused at checkout.
        let _ = self.inner.hold_lock();
        self.inner.invalidated.swap(false, Ordering::AcqRel)
    }

    fn clock_ms(&self) -> Result<u64, EngineError> {
        // The server's clock, one for every replica whatever their machines' clocks say.
        self.inner
            .read("reading the server's clock", move |c| async move {
                let ms: i64 = c
                    .client
                    .query_one(
                        "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8",
                        &[],
                    )
                    .await?
                    .try_get(0)?;
                Ok(ms.unsigned_abs())
            })
    }

    fn count(&self, t: TreeId) -> Result<u64, EngineError> {
        let tree = tree_id(t);
        self.inner.read("counting", move |c| async move {
            let n: i64 = c
                .client
                .query_one(&c.st.count, &[&tree])
                .await?
                .try_get(0)?;
            Ok(n.unsigned_abs())
        })
    }

    fn size_on_disk(&self) -> Result<u64, EngineError> {
        let q = self.inner.sql.size.clone();
        self.inner.read("measuring", move |c| {
            let q = q.clone();
            async move {
                let n: i64 = c.client.query_one(q.as_str(), &[]).await?.try_get(0)?;
                Ok(n.unsigned_abs())
            }
        })
    }

    fn compact(&self, keep: &Keep<'_>, wait: Duration) -> Result<Compaction, EngineError> {
        let mut report = Compaction::default();
        for t in ALL_TREES {
            let mut refused = Vec::new();
            for item in self.scan(t, b"", b"") {
                let (k, _) = item?;
                if keep(t, &k) {
                    report.entries += 1;
                } else {
                    refused.push(BatchChange::Remove(k));
                }
            }
            report.dropped += refused.len() as u64;
            for chunk in refused.chunks(4096) {
                self.apply_batch(t, chunk.to_vec())?;
            }
        }
        let before = self.size_on_disk()?;
        // VACUUM FULL rewrites the table into new files and unlinks the old ones, where the
        // deleted rows' bytes were; it waits for (and blocks) every reader and writer of the
        // table, so the wait for its lock is bounded.
        let sql = self.inner.sql.vacuum_full(wait);
        // However long the rewrite takes once it has its lock (the wait for the lock is bounded
        // by `lock_timeout` above): a timeout here would report a compaction that the server
        // goes on to finish.
        let lease = self.inner.checkout()?;
        self.inner
            .on_for(&lease, COMPACTION_LIMIT, move |c| async move {
                for statement in &sql {
                    c.client.batch_execute(statement).await?;
                }
                Ok(())
            })
            .map_err(|f| f.into_engine("compacting (VACUUM FULL)", COMPACTION_LIMIT))?;
        drop(lease);
        // A checkpoint lets the server recycle WAL segments that still hold the deleted rows;
        // it needs the pg_checkpoint role (or superuser) and is skipped without it.
        let checkpoint = self.inner.write("checkpointing", |c| async move {
            c.client.batch_execute("CHECKPOINT").await
        });
        report.shredded_bytes = before;
        report.detail = format!(
            "VACUUM FULL rewrote the table ({before} bytes before); {}",
            match checkpoint {
                Ok(()) => "CHECKPOINT done (WAL segments holding deleted rows are recycled as the server goes on)".to_owned(),
                Err(e) => format!("no CHECKPOINT ({e}); WAL segments keep deleted rows until the server recycles them"),
            }
        );
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }
}
