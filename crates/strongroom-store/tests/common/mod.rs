//! Shared fixtures for the store tests, and the engine they run on.
//!
//! One set of tests, two engines: `STRONGROOM_TEST_ENGINE` = `sled` (the default) or `postgres`
//! (a throwaway server per test process, `strongroom_test_support::pg::shared`, one schema per
//! store). Engine-generic tests create, open and restore stores through [`create`], [`open`] and
//! [`restore`] (never `Store::create/open/restore` directly), and tamper with a closed store's
//! database through [`RawDb`]. Tests about sled's files on disk call `Store::create/open`
//! themselves, or use [`Fixture::on_sled`], and so run on sled in both modes.
//!
//! On PostgreSQL the store directory still holds the audit anchor (and the soft backend's key
//! file); the schema that holds the store's database is named in the file [`PG_SCHEMA_FILE`]
//! there, written when the store is created (or restored) and read when it is opened.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use strongroom_core::{Backend, KeyringName, RootKeyName, SoftBackend};
use strongroom_pkcs11::{PinSource, Pkcs11Backend, Pkcs11Config, TokenSelector};
use strongroom_postgres::{PgConfig, PgEngine};
use strongroom_store::engine::{ALL_TREES, BatchChange, KeyValue};
use strongroom_store::format::StoreMeta;
use strongroom_store::{
    Engine, EngineError, EngineErrorKind, SledEngine, Store, StoreError, StoreOptions, TreeId,
};
use strongroom_test_support::pg;
use strongroom_test_support::softhsm::Token;
use strongroom_test_support::wrappers::TestBackend;

pub fn kr(s: &str) -> KeyringName {
    KeyringName::new(s).unwrap()
}

pub fn rn(s: &str) -> RootKeyName {
    RootKeyName::new(s).unwrap()
}

// ===================== the engine switch =====================

/// The environment variable that picks the engine.
pub const ENGINE_VAR: &str = "STRONGROOM_TEST_ENGINE";

/// File (in a store directory) naming the PostgreSQL schema that holds the store's database.
pub const PG_SCHEMA_FILE: &str = "test-pg-schema";

/// An engine the tests can run a store on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// Embedded, in the store directory.
    Sled,
    /// A schema on the test process's PostgreSQL server.
    Postgres,
}

impl EngineKind {
    /// What `Store::engine_info().kind` says for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sled => "sled",
            Self::Postgres => "postgres",
        }
    }
}

/// The engine this test run is on (`STRONGROOM_TEST_ENGINE`).
///
/// # Panics
/// When the variable holds anything but `sled`, `postgres` or nothing.
pub fn engine() -> EngineKind {
    static KIND: OnceLock<EngineKind> = OnceLock::new();
    *KIND.get_or_init(|| match std::env::var(ENGINE_VAR) {
        Err(std::env::VarError::NotPresent) => EngineKind::Sled,
        Ok(v) if v.is_empty() || v == "sled" => EngineKind::Sled,
        Ok(v) if v == "postgres" => EngineKind::Postgres,
        Ok(v) => panic!(
            "{ENGINE_VAR}={v:?} names no engine the store tests run on: use `sled` (the default) or `postgres`"
        ),
        Err(std::env::VarError::NotUnicode(v)) => panic!(
            "{ENGINE_VAR}={v:?} names no engine the store tests run on: use `sled` (the default) or `postgres`"
        ),
    })
}

/// True when this run is on PostgreSQL.
pub fn on_postgres() -> bool {
    engine() == EngineKind::Postgres
}

// ===================== PostgreSQL schemas =====================

/// The schema named in `dir`, if the directory holds a store made on PostgreSQL.
pub fn pg_schema_of(dir: &Path) -> Option<String> {
    match std::fs::read_to_string(dir.join(PG_SCHEMA_FILE)) {
        Ok(s) => Some(s.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("reading {}: {e}", dir.join(PG_SCHEMA_FILE).display()),
    }
}

/// The schema a new store in `dir` goes into: the one the directory names already (so that a
/// second create or restore there meets the first store, as on sled), else a fresh one, named
/// in the directory from now on.
fn pg_schema_for_new_store(dir: &Path) -> Result<String, StoreError> {
    if let Some(s) = pg_schema_of(dir) {
        return Ok(s);
    }
    let schema = pg::unique_schema();
    let io = |op| {
        move |source| StoreError::Io {
            op,
            path: dir.to_path_buf(),
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("create directory"))?;
    std::fs::write(dir.join(PG_SCHEMA_FILE), &schema).map_err(io("write the test schema file"))?;
    Ok(schema)
}

/// `schema` on the server at `url`: shared by a fleet of replicas, or (`exclusive`) held by
/// one process.
pub fn pg_config_at(url: &str, schema: &str, exclusive: bool) -> PgConfig {
    let mut c = PgConfig::from_url(url)
        .unwrap()
        .with_schema(schema)
        .unwrap();
    c.exclusive = exclusive;
    c
}

/// A PKCS#11 backend on the SoftHSM2 token `token`, in its default namespace.
pub fn pkcs11_backend(token: &Token) -> Arc<Pkcs11Backend> {
    pkcs11_backend_in(token, strongroom_pkcs11::objects::DEFAULT_NAMESPACE)
}

/// A PKCS#11 backend on the SoftHSM2 token `token`, in namespace `ns`.
pub fn pkcs11_backend_in(token: &Token, ns: &str) -> Arc<Pkcs11Backend> {
    let mut c = Pkcs11Config::new(
        &token.module,
        TokenSelector::Label(token.label.clone()),
        PinSource::File(token.pin_file()),
    );
    c.namespace = ns.to_owned();
    Arc::new(Pkcs11Backend::open(c).unwrap())
}

/// The configuration of `schema` on the test process's server.
pub fn pg_config(schema: &str) -> PgConfig {
    PgConfig::from_url(&pg::shared().url())
        .unwrap()
        .with_schema(schema)
        .unwrap()
}

/// Connects to `schema`, waiting (up to 10 s) while an engine closed a moment ago still holds
/// the schema's advisory lock (the server releases it shortly after the connection closes).
pub fn pg_connect(schema: &str) -> Result<PgEngine, EngineError> {
    let config = pg_config(schema);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match PgEngine::connect(&config) {
            Err(e) if e.kind() == EngineErrorKind::Refused && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

fn connecting(source: EngineError) -> StoreError {
    StoreError::Storage {
        while_doing: "connecting to the test PostgreSQL server",
        source,
    }
}

// ===================== stores on the selected engine =====================

/// `Store::create` on this run's engine.
pub fn create(
    dir: impl AsRef<Path>,
    backend: Arc<dyn Backend>,
    primary_root: &RootKeyName,
    options: StoreOptions,
) -> Result<Store, StoreError> {
    create_on(engine(), dir, backend, primary_root, options)
}

/// `Store::create` on `kind`.
pub fn create_on(
    kind: EngineKind,
    dir: impl AsRef<Path>,
    backend: Arc<dyn Backend>,
    primary_root: &RootKeyName,
    options: StoreOptions,
) -> Result<Store, StoreError> {
    let dir = dir.as_ref();
    let store = match kind {
        EngineKind::Sled => Store::create(dir, backend, primary_root, options)?,
        EngineKind::Postgres => {
            let engine = pg_connect(&pg_schema_for_new_store(dir)?).map_err(connecting)?;
            Store::create_on(dir, Box::new(engine), backend, primary_root, options)?
        }
    };
    assert_on(&store, kind);
    Ok(store)
}

/// `Store::open` on this run's engine. A directory that never held a store opens on an empty
/// schema on PostgreSQL, so the product says what it says on sled (`NotAStore`).
pub fn open(
    dir: impl AsRef<Path>,
    backend: Arc<dyn Backend>,
    options: StoreOptions,
) -> Result<Store, StoreError> {
    open_on(engine(), dir, backend, options)
}

/// `Store::open` on `kind`.
pub fn open_on(
    kind: EngineKind,
    dir: impl AsRef<Path>,
    backend: Arc<dyn Backend>,
    options: StoreOptions,
) -> Result<Store, StoreError> {
    let dir = dir.as_ref();
    let store = match kind {
        EngineKind::Sled => Store::open(dir, backend, options)?,
        EngineKind::Postgres => {
            let schema = pg_schema_of(dir).unwrap_or_else(pg::unique_schema);
            let engine = pg_connect(&schema).map_err(connecting)?;
            Store::open_on(dir, Box::new(engine), backend, options)?
        }
    };
    assert_on(&store, kind);
    Ok(store)
}

/// `Store::open_accepting_rollback` on this run's engine.
pub fn open_accepting_rollback(
    dir: impl AsRef<Path>,
    backend: Arc<dyn Backend>,
    options: StoreOptions,
) -> Result<Store, StoreError> {
    match engine() {
        EngineKind::Sled => {
            let store = Store::open_accepting_rollback(dir, backend, options)?;
            assert_on(&store, EngineKind::Sled);
            Ok(store)
        }
        EngineKind::Postgres => {
            let dir = dir.as_ref();
            let schema = pg_schema_of(dir).unwrap_or_else(pg::unique_schema);
            let engine = pg_connect(&schema).map_err(connecting)?;
            let store = Store::open_on_accepting_rollback(dir, Box::new(engine), backend, options)?;
            assert_on(&store, EngineKind::Postgres);
            Ok(store)
        }
    }
}

/// `Store::restore` on this run's engine (into the schema `dir` names, or a new one).
pub fn restore(backup: impl AsRef<Path>, dir: impl AsRef<Path>) -> Result<StoreMeta, StoreError> {
    let dir = dir.as_ref();
    match engine() {
        EngineKind::Sled => Store::restore(backup, dir),
        EngineKind::Postgres => {
            let engine = pg_connect(&pg_schema_for_new_store(dir)?).map_err(connecting)?;
            Store::restore_into(backup, dir, Box::new(engine))
        }
    }
}

/// Whether any of a store's database is in `dir` on this run's engine (sled: its database
/// directory exists; PostgreSQL: the schema the directory names holds an entry). For "a failed
/// create or restore left nothing behind".
pub fn holds_data(dir: impl AsRef<Path>) -> bool {
    let dir = dir.as_ref();
    match engine() {
        EngineKind::Sled => strongroom_store::database_dir(dir).unwrap().exists(),
        EngineKind::Postgres => pg_schema_of(dir).is_some_and(|schema| {
            let engine = pg_connect(&schema).unwrap();
            ALL_TREES.iter().any(|t| engine.count(*t).unwrap() > 0)
        }),
    }
}

/// The guard against a switch that silently falls back: a store is on the engine it was
/// asked for.
fn assert_on(store: &Store, kind: EngineKind) {
    assert_eq!(
        store.engine_info().kind,
        kind.name(),
        "the store is not on the engine the test asked for ({ENGINE_VAR}={:?})",
        std::env::var(ENGINE_VAR).ok()
    );
}

// ===================== the raw database =====================

/// The database of a closed store, read and written past the store (what someone who can
/// write the data directory or the database, but holds no key, can do): its PostgreSQL schema
/// when the directory names one, else its sled files. Flushed when dropped.
pub struct RawDb {
    engine: Box<dyn Engine>,
}

impl RawDb {
    /// Opens the database of the store in `dir` (which must be closed: both engines lock it).
    pub fn open(dir: &Path) -> Self {
        let engine: Box<dyn Engine> = match pg_schema_of(dir) {
            Some(schema) => Box::new(pg_connect(&schema).unwrap()),
            None => Box::new(SledEngine::open(dir).unwrap()),
        };
        Self { engine }
    }

    /// One tree, by its name (`meta`, `keyrings`, `records`...).
    pub fn tree(&self, name: &str) -> RawTree<'_> {
        let id = ALL_TREES
            .into_iter()
            .find(|t| t.name() == name)
            .unwrap_or_else(|| panic!("no tree named {name}"));
        RawTree {
            engine: &*self.engine,
            id,
        }
    }

    /// The engine underneath.
    pub fn engine(&self) -> &dyn Engine {
        &*self.engine
    }

    /// Every entry of every tree (an older copy of the database, to put back later).
    pub fn dump(&self) -> Vec<(TreeId, Vec<KeyValue>)> {
        dump(&*self.engine)
    }

    /// Replaces every tree's entries with `dump`'s.
    pub fn replace_all(&self, dump: &[(TreeId, Vec<KeyValue>)]) {
        replace_all(&*self.engine, dump);
    }
}

/// Every entry of every tree of `engine` (an older copy of the database, to put back later,
/// as someone with the database's credentials can).
pub fn dump(engine: &dyn Engine) -> Vec<(TreeId, Vec<KeyValue>)> {
    ALL_TREES
        .into_iter()
        .map(|t| (t, engine.scan(t, b"", b"").map(Result::unwrap).collect()))
        .collect()
}

/// Replaces every tree's entries in `engine` with `dump`'s.
pub fn replace_all(engine: &dyn Engine, dump: &[(TreeId, Vec<KeyValue>)]) {
    for (t, entries) in dump {
        let mut changes: Vec<BatchChange> = engine
            .scan(*t, b"", b"")
            .map(|r| BatchChange::Remove(r.unwrap().0))
            .collect();
        changes.extend(
            entries
                .iter()
                .map(|(k, v)| BatchChange::Insert(k.clone(), v.clone())),
        );
        engine.apply_batch(*t, changes).unwrap();
    }
}

impl Drop for RawDb {
    fn drop(&mut self) {
        let flushed = self.engine.flush();
        if !std::thread::panicking() {
            flushed.unwrap();
        }
    }
}

/// One tree of a [`RawDb`]. Engine errors panic (the tests read and write a healthy database).
pub struct RawTree<'a> {
    engine: &'a dyn Engine,
    id: TreeId,
}

impl RawTree<'_> {
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<Vec<u8>> {
        self.engine.get(self.id, key.as_ref()).unwrap()
    }

    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.engine
            .insert(self.id, key.as_ref(), value.as_ref())
            .unwrap();
    }

    /// Whether it was there.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> bool {
        self.engine.remove(self.id, key.as_ref()).unwrap()
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> Vec<KeyValue> {
        self.scan_prefix(b"")
    }

    /// The entries whose keys start with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Vec<KeyValue> {
        let p = prefix.as_ref();
        self.engine
            .scan(self.id, p, p)
            .map(Result::unwrap)
            .collect()
    }

    /// The entries from `start` on (inclusive), in key order.
    pub fn range_from(&self, start: impl AsRef<[u8]>) -> Vec<KeyValue> {
        self.engine
            .scan(self.id, b"", start.as_ref())
            .map(Result::unwrap)
            .collect()
    }

    pub fn len(&self) -> u64 {
        self.engine.count(self.id).unwrap()
    }
}

/// A copy of a closed store's database as it is now, to put back later (a rollback): sled's
/// files as they are, or every entry of the PostgreSQL schema.
pub enum DbCopy {
    Files(tempfile::TempDir),
    Entries(Vec<(TreeId, Vec<KeyValue>)>),
}

impl DbCopy {
    /// Copies the database of the (closed) store in `dir`.
    pub fn take(dir: &Path) -> Self {
        if pg_schema_of(dir).is_some() {
            Self::Entries(RawDb::open(dir).dump())
        } else {
            let copy = tempfile::tempdir().unwrap();
            copy_dir(&strongroom_store::database_dir(dir).unwrap(), copy.path());
            Self::Files(copy)
        }
    }

    /// Puts the copy back in place of the (closed) store's database in `dir`.
    pub fn put_back(&self, dir: &Path) {
        match self {
            Self::Files(copy) => {
                let db = strongroom_store::database_dir(dir).unwrap();
                std::fs::remove_dir_all(&db).unwrap();
                copy_dir(copy.path(), &db);
            }
            Self::Entries(entries) => RawDb::open(dir).replace_all(entries),
        }
    }
}

// ===================== the fixture =====================

/// A store on a soft backend in a temp dir, with the backend wrapped to count calls.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub backend: Arc<TestBackend>,
    pub store: Option<Store>,
    pub options: StoreOptions,
    /// The engine its store is on.
    pub engine: EngineKind,
}

impl Fixture {
    /// A store on this run's engine.
    pub fn new(options: StoreOptions) -> Self {
        Self::on(engine(), options)
    }

    /// A store on sled whatever the run's engine (tests of sled's files).
    pub fn on_sled(options: StoreOptions) -> Self {
        Self::on(EngineKind::Sled, options)
    }

    pub fn on(kind: EngineKind, options: StoreOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let soft = SoftBackend::create(dir.path()).unwrap();
        let backend = TestBackend::new(Arc::new(soft));
        let store = create_on(
            kind,
            dir.path(),
            backend.clone(),
            &rn("service"),
            options.clone(),
        )
        .unwrap();
        assert_eq!(store.engine_info().kind, kind.name());
        Self {
            dir,
            backend,
            store: Some(store),
            options,
            engine: kind,
        }
    }

    pub fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    /// Closes the store and opens it again (same backend instance).
    pub fn reopen(&mut self) -> &Store {
        self.store = None;
        self.store = Some(self.open().unwrap());
        self.store()
    }

    /// Opens the store in the fixture's directory on its engine (close it first).
    pub fn open(&self) -> Result<Store, StoreError> {
        open_on(
            self.engine,
            self.dir.path(),
            self.backend.clone(),
            self.options.clone(),
        )
    }

    /// Closes the store and opens its database raw.
    pub fn raw_db(&mut self) -> RawDb {
        self.store = None;
        RawDb::open(self.dir.path())
    }

    /// Closes the store and hands its database to `f` (for tampering), then reopens.
    pub fn with_raw_db(&mut self, f: impl FnOnce(&RawDb)) -> &Store {
        self.with_raw_db_unchecked(f);
        self.reopen()
    }

    /// Closes the store and hands its database to `f`; the store stays closed.
    pub fn with_raw_db_unchecked(&mut self, f: impl FnOnce(&RawDb)) {
        let db = self.raw_db();
        f(&db);
    }
}

/// sled opened directly, retrying while a store just closed still holds its lock (sled's
/// background threads release it a moment after the last handle drops). For tests of sled's
/// files only.
pub fn raw_sled(db_dir: &Path) -> sled::Db {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match sled::open(db_dir) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r.unwrap(),
        }
    }
}

pub fn get_string(store: &Store, k: &KeyringName, key: &str) -> Option<String> {
    store
        .get(k, key.as_bytes())
        .unwrap()
        .map(|p| String::from_utf8(p.expose().to_vec()).unwrap())
}

/// Copies a directory tree (for older copies of a store, and fixtures).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
