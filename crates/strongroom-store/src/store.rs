//! The store handle: opening, the catalog of roots and keyrings, key resolution through the
//! cache, and the commit path that writes a change and its audit entry in one transaction.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use strongroom_core::blob::{WrapAlg, WrappedKey, WrappingKeyRef};
use strongroom_core::crypto::kwp_unwrap_bound;
use strongroom_core::record::RecordCipher;
use strongroom_core::{
    Backend, BackendError, DekVersion, FormatError, KekVersion, Key256, KeyState, KeyringName,
    RootKeyId, RootKeyName, RootVersion, StoreClaim, Timestamp,
};

use crate::audit::{self, AuditKey, AuditOp, Event, Outcome};
use crate::cache::{Cached, DownPolicy, IdMap, KeyCache, Slot};
use crate::catalog::{self, CommitTx};
use crate::commit::Effects;
pub(crate) use crate::commit::{KeyChange, Shared, holding_lifecycle};
use crate::engine::sled as sled_engine;
use crate::engine::{Engine, SledEngine};
use crate::error::StoreError;
use crate::fleet::Fleet;
use crate::format::{self, KeyringEntry, RootEntry, STORE_FORMAT_VERSION, StoreMeta};
use crate::storage::{Storage, TreeId, TxResult, abort};
use crate::telemetry;

/// Meta key of the store identity.
pub(crate) const META_KEY: &[u8] = b"store";
/// Meta key of the wrapped audit key.
pub(crate) const AUDIT_KEY_KEY: &[u8] = b"audit_key";
/// Meta key of the next keyring id.
pub(crate) const NEXT_ID_KEY: &[u8] = b"next_keyring_id";
/// Directory (inside the store directory) that holds the database when the store is created.
/// A compaction moves it to a new directory (`db.<N>`, named by the file `db-current`):
/// [`database_dir`] says which one is current.
pub const DB_DIR: &str = sled_engine::FIRST_GENERATION;
/// File (inside the store directory) that names the current database directory once a
/// compaction has moved it.
pub const CURRENT_DB_FILE: &str = sled_engine::CURRENT_FILE;
/// The store directory's lock file (held while the store is open).
pub const LOCK_FILE: &str = sled_engine::LOCK_FILE;

/// The directory that holds the database of the store in `dir` now (for tools and tests that
/// read the raw files; the store itself finds it on open).
///
/// # Errors
/// An I/O error, or a damaged `db-current` file.
pub fn database_dir(dir: impl AsRef<Path>) -> Result<PathBuf, StoreError> {
    sled_engine::current_db_dir(dir.as_ref())
}
/// File (inside the store directory) that records the audit log's head after every key
/// operation, outside the database: if the database later ends before it (a damaged log that
/// sled silently cut short, or an older copy of its files), the store refuses to open.
pub const ANCHOR_FILE: &str = "audit-anchor";

/// How a store behaves. Every field has a documented default ([`StoreOptions::default`]).
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Who is acting, recorded in the audit log. Default `strongroom`.
    pub actor: String,
    /// Most unwrapped KEKs and DEKs kept in memory. Default 4096.
    pub cache_capacity: usize,
    /// How long a cached key is used before the backend is asked again; bounds how long a
    /// revocation made in the HSM takes to bite. Default 5 minutes.
    pub cache_ttl: Duration,
    /// What to do when a cached key's TTL has run out and the backend is down. Default
    /// [`DownPolicy::FailClosed`].
    pub down_policy: DownPolicy,
    /// Encryptions under one DEK before it rolls over by itself. Default 2^28, far below the
    /// 2^32 bound of NIST SP 800-38D for random 96-bit nonces.
    pub dek_rollover_after: u64,
    /// Waiting period of a scheduled destruction when none is given. Default 7 days.
    pub destruction_delay: Duration,
    /// Audit every record read, write and delete too (one extra write per operation). Default off.
    pub audit_data_access: bool,
    /// sled's page cache in bytes, for a store on sled opened with [`Store::create`] /
    /// [`Store::open`] (another engine is configured on its own): the bound on the store's
    /// memory, and on its read speed once the records outgrow it. Default 1 GiB
    /// ([`SledEngine::DEFAULT_CACHE_BYTES`], sled's own).
    pub sled_cache_bytes: u64,
    /// On a database other processes share (a fleet of replicas), how often this replica
    /// checks whether another changed the key states (one point read): the bound on how long a
    /// disable, destruction or rotation made elsewhere takes to reach it. Zero checks before
    /// every operation. Unused on an engine that is not shared. Default 1 s.
    pub fleet_poll: Duration,
    /// This replica's name in a fleet (up to 255 bytes of UTF-8; longer is clipped): every
    /// audit entry it writes names it, and on a shared engine it reports itself seen with
    /// the generation it serves ([`Store::replicas`]). Default empty: not named (audit
    /// entries in format 1, no report).
    pub replica: String,
    /// Whether a named replica on a shared engine reports itself seen (about once a second,
    /// one write). Default on; a one-shot tool that only names itself in the audit log (the
    /// CLI's commands) turns it off.
    pub report_seen: bool,
    /// How long a replica's lease on a job (a re-encryption, a rewrap, a compaction, the due
    /// destructions) lasts unless renewed, on a shared engine: the holder renews it every
    /// third of this while it runs, so this is how long a replica that died mid-job holds the
    /// job up before another takes it over. At least 300 ms (shorter is taken as that). Unused
    /// on an engine that is not shared. Default 30 s.
    pub job_lease: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            actor: "strongroom".into(),
            cache_capacity: 4096,
            cache_ttl: Duration::from_secs(300),
            down_policy: DownPolicy::FailClosed,
            dek_rollover_after: 1 << 28,
            destruction_delay: Duration::from_secs(7 * 24 * 3600),
            audit_data_access: false,
            sled_cache_bytes: SledEngine::DEFAULT_CACHE_BYTES,
            fleet_poll: Duration::from_secs(1),
            replica: String::new(),
            report_seen: true,
            job_lease: crate::lease::DEFAULT_LEASE,
        }
    }
}

/// Roots and keyrings as last committed (the database is the truth; this is its in-memory copy,
/// changed only after a commit, under the lifecycle write lock).
#[derive(Default)]
pub(crate) struct Catalog {
    pub keyrings: BTreeMap<KeyringName, Arc<KeyringEntry>>,
    pub roots: BTreeMap<RootKeyName, BTreeMap<RootVersion, RootEntry>>,
    pub ids: HashMap<u64, KeyringName>,
}

impl Catalog {
    /// The version new KEKs go under, and the state of the root as a whole: the newest version
    /// that is not destroyed.
    pub(crate) fn current_root(
        &self,
        name: &RootKeyName,
    ) -> Result<(RootVersion, KeyState), StoreError> {
        let versions = self
            .roots
            .get(name)
            .ok_or_else(|| StoreError::RootNotFound { name: name.clone() })?;
        versions
            .iter()
            .rev()
            .find(|(_, e)| e.state != KeyState::Destroyed)
            .map(|(v, e)| (*v, e.state))
            .ok_or_else(|| StoreError::RootDestroyed { name: name.clone() })
    }

    /// The usable current version of a root, or why it is not usable.
    pub(crate) fn usable_root(&self, name: &RootKeyName) -> Result<RootVersion, StoreError> {
        match self.current_root(name)? {
            (v, KeyState::Enabled) => Ok(v),
            (_, KeyState::Destroyed) => Err(StoreError::RootDestroyed { name: name.clone() }),
            (_, KeyState::PendingDestruction { not_before }) => {
                Err(StoreError::RootPendingDestruction {
                    name: name.clone(),
                    not_before,
                })
            }
            (_, KeyState::Disabled) => Err(StoreError::RootDisabled { name: name.clone() }),
        }
    }

    /// Keyring `name` if it is usable (enabled, under a usable root), borrowed from the
    /// catalog: the record paths hold the lifecycle lock shared, under which the catalog does
    /// not change (every writer of it holds that lock exclusively), so they need no copy.
    pub(crate) fn usable(&self, name: &KeyringName) -> Result<&KeyringEntry, StoreError> {
        let kr = self
            .keyrings
            .get(name)
            .ok_or_else(|| StoreError::KeyringNotFound { name: name.clone() })?;
        check_usable(self, name, kr)?;
        Ok(kr)
    }

    pub(crate) fn keyring(&self, name: &KeyringName) -> Result<Arc<KeyringEntry>, StoreError> {
        self.keyrings
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::KeyringNotFound { name: name.clone() })
    }
}

/// Refuses access to a keyring that is not enabled (or whose root is not).
fn check_usable(cat: &Catalog, name: &KeyringName, kr: &KeyringEntry) -> Result<(), StoreError> {
    match kr.state {
        KeyState::Enabled => {}
        KeyState::Disabled => return Err(StoreError::KeyringDisabled { name: name.clone() }),
        KeyState::PendingDestruction { not_before } => {
            return Err(StoreError::KeyringPendingDestruction {
                name: name.clone(),
                not_before,
            });
        }
        KeyState::Destroyed => return Err(StoreError::KeyringDestroyed { name: name.clone() }),
    }
    cat.usable_root(&kr.root).map(|_| ())
}

#[derive(Clone, Copy)]
pub(crate) struct Counter {
    pub used: u64,
    pub reserved: u64,
}

pub(crate) struct Inner {
    pub dir: PathBuf,
    pub storage: Storage,
    pub backend: Arc<dyn Backend>,
    pub meta: StoreMeta,
    pub options: StoreOptions,
    /// Data operations hold it shared; lifecycle changes hold it exclusively, so that once a
    /// disable (or destroy) returns, no read or write of the keyring is in flight.
    pub lifecycle: RwLock<()>,
    pub catalog: RwLock<Catalog>,
    pub cache: KeyCache,
    pub audit_key: RwLock<Option<Arc<AuditKey>>>,
    pub counters: Mutex<IdMap<(u64, u32), Counter>>,
    /// Wrap and unwrap calls made to the backend.
    pub backend_calls: AtomicU64,
    /// Whether the catalog was verified against the audit key since open.
    pub catalog_verified: AtomicBool,
    /// The engine reported a possible outside change and the catalog could not be reloaded
    /// yet ([`Store::refresh_if_invalidated`]).
    pub catalog_stale: AtomicBool,
    /// When a stale catalog's reload was last tried.
    pub last_refresh_attempt: Mutex<Option<Instant>>,
    /// Whether the catalog is sealed (false: a store from before, until its first commit).
    pub catalog_sealed: AtomicBool,
    /// Opened with [`Store::open_accepting_rollback`].
    pub accepting_rollback: AtomicBool,
    /// When data operations last tried to verify a catalog that could not be verified at open.
    pub last_verify_attempt: Mutex<Option<Instant>>,
    /// The key-state generation, and how this replica follows it ([`crate::fleet`]).
    pub fleet: Fleet,
    /// The jobs this process runs now ([`crate::lease`]).
    pub jobs: crate::lease::Running,
    /// A random id of this open store, in the leases it holds: two processes with one replica
    /// name are still two holders.
    pub instance: u64,
    /// The audit anchor is kept in the backend too (a fleet on a backend that keeps one: see
    /// [`Store::write_anchor`]).
    pub anchor_in_backend: bool,
    /// The backend's anchor was checked since open.
    pub anchor_checked: AtomicBool,
    /// When this store last wrote the backend's anchor ([`crate::anchor`]: a job's steps
    /// anchor at most once a second).
    pub anchor_written: Mutex<Option<Instant>>,
}

/// An open store. `Send + Sync`, cheap to clone; clones share everything but the actor.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
    pub(crate) actor: Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("backend", &self.inner.meta.backend_kind)
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

/// The wrapping context of a KEK: binds it to the store, the keyring and the version, and (in
/// blobs of format 2, every one written since) to the root key version that wraps it, so that a
/// KEK wrapped under one root never opens as another's.
pub(crate) fn kek_context(
    store_id: &[u8; 16],
    keyring: &KeyringName,
    id: u64,
    v: KekVersion,
    root: Option<&RootKeyId>,
) -> Vec<u8> {
    match root {
        None => context(b"strongroom/kek/v1\0", store_id, keyring, id, v.get()),
        Some(root) => {
            let mut c = context(b"strongroom/kek/v2\0", store_id, keyring, id, v.get());
            strongroom_core::format::put_name(&mut c, root.name.as_str());
            c.extend_from_slice(&root.version.get().to_be_bytes());
            c
        }
    }
}

/// The context a stored KEK blob was wrapped with (format 1: without its root).
fn stored_kek_context(
    store_id: &[u8; 16],
    keyring: &KeyringName,
    id: u64,
    v: KekVersion,
    blob: &WrappedKey,
) -> Vec<u8> {
    let root = (blob.format_version() >= 2).then(|| blob.root()).flatten();
    kek_context(store_id, keyring, id, v, root)
}

/// The wrapping context of a DEK.
pub(crate) fn dek_context(
    store_id: &[u8; 16],
    keyring: &KeyringName,
    id: u64,
    v: DekVersion,
) -> Vec<u8> {
    context(b"strongroom/dek/v1\0", store_id, keyring, id, v.get())
}

fn context(domain: &[u8], store_id: &[u8; 16], keyring: &KeyringName, id: u64, v: u32) -> Vec<u8> {
    let mut c = domain.to_vec();
    c.extend_from_slice(store_id);
    strongroom_core::format::put_name(&mut c, keyring.as_str());
    c.extend_from_slice(&id.to_be_bytes());
    c.extend_from_slice(&v.to_be_bytes());
    c
}

/// The wrapping context of the audit key.
pub(crate) fn audit_key_context(store_id: &[u8; 16]) -> Vec<u8> {
    let mut c = b"strongroom/audit-key/v1\0".to_vec();
    c.extend_from_slice(store_id);
    c
}

fn parse_blob(bytes: &[u8], what: impl Fn() -> String) -> Result<WrappedKey, StoreError> {
    WrappedKey::parse(bytes).map_err(|source| StoreError::Corrupt {
        what: what(),
        source,
    })
}

impl Store {
    /// Creates a store in `dir` (which must not hold one) on `backend`, with `primary_root` as
    /// its first root key (made in the backend, or taken over if the backend already holds
    /// version 1 of it from an interrupted earlier attempt in this directory), which also
    /// protects the audit log. The backend's keys are claimed for this store first: keys that
    /// belong to another store are refused ([`StoreError::KeysOfAnotherStore`]).
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`], [`StoreError::KeysOfAnotherStore`], a backend error, or a
    /// storage error.
    pub fn create(
        dir: impl AsRef<Path>,
        backend: Arc<dyn Backend>,
        primary_root: &RootKeyName,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        Self::create_inner(dir.as_ref(), None, backend, primary_root, None, options)
    }

    /// [`Store::create`] on another storage engine (a PostgreSQL database, from
    /// `strongroom-postgres`), which must hold no store ([`StoreError::AlreadyExists`]). `dir`
    /// is the store's local directory: the audit anchor lives there (and the software
    /// backend's key file, if that is the backend).
    ///
    /// # Errors
    /// As [`Store::create`].
    pub fn create_on(
        dir: impl AsRef<Path>,
        engine: Box<dyn Engine>,
        backend: Arc<dyn Backend>,
        primary_root: &RootKeyName,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        Self::create_inner(
            dir.as_ref(),
            Some(engine),
            backend,
            primary_root,
            None,
            options,
        )
    }

    /// [`Store::create`] with a primary root adopted from a key the backend already holds
    /// (`selector`: a label, `label:LABEL` or `id:HEX`; see [`Backend::adopt_root`]).
    ///
    /// # Errors
    /// As [`Store::create`]; a key the backend will not adopt.
    pub fn create_adopting(
        dir: impl AsRef<Path>,
        backend: Arc<dyn Backend>,
        primary_root: &RootKeyName,
        selector: &str,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        Self::create_inner(
            dir.as_ref(),
            None,
            backend,
            primary_root,
            Some(selector),
            options,
        )
    }

    /// [`Store::create_adopting`] on another storage engine (see [`Store::create_on`]).
    ///
    /// # Errors
    /// As [`Store::create_adopting`].
    pub fn create_adopting_on(
        dir: impl AsRef<Path>,
        engine: Box<dyn Engine>,
        backend: Arc<dyn Backend>,
        primary_root: &RootKeyName,
        selector: &str,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        Self::create_inner(
            dir.as_ref(),
            Some(engine),
            backend,
            primary_root,
            Some(selector),
            options,
        )
    }

    fn create_inner(
        dir: &Path,
        engine: Option<Box<dyn Engine>>,
        backend: Arc<dyn Backend>,
        primary_root: &RootKeyName,
        adopt: Option<&str>,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        let dir = dir.to_path_buf();
        match &engine {
            None => {
                if sled_engine::current_db_dir(&dir)?.exists()
                    || std::fs::symlink_metadata(dir.join(CURRENT_DB_FILE)).is_ok()
                {
                    return Err(StoreError::AlreadyExists { path: dir });
                }
            }
            Some(e) => {
                let found =
                    e.get(TreeId::Meta, META_KEY)
                        .map_err(|source| StoreError::Storage {
                            while_doing: "looking for a store",
                            source,
                        })?;
                if found.is_some() {
                    return Err(StoreError::AlreadyExists {
                        path: PathBuf::from(e.info().location),
                    });
                }
            }
        }
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            op: "create directory",
            path: dir.clone(),
            source,
        })?;
        let info = backend.describe();
        let mut store_id = [0u8; 16];
        strongroom_core::rng::os_fill(&mut store_id)?;
        let meta = StoreMeta {
            store_id,
            created: Timestamp::now(),
            backend_kind: info.kind.to_owned(),
            backend_instance: info.instance_id,
            primary_root: primary_root.clone(),
        };
        // One store per set of backend keys: claimed before the first key is made.
        claim_backend(&*backend, &store_id, &dir)?;
        let claimed = || -> Result<(), StoreError> {
            // Two inits on one namespace at once: the last claim wins, the other gives up.
            // Anything but our own claim read back (another one, several, none, an error) is
            // refused: of two creates racing, at most one goes on (possibly neither; retry).
            match backend.store_claim() {
                Ok(Some(c)) if c.store_id == store_id => Ok(()),
                Err(BackendError::NotSupported { .. }) => Ok(()),
                Ok(Some(c)) => Err(StoreError::KeysOfAnotherStore {
                    what: format!(
                        "another store ({} at {}) claimed the backend's keys while this one was being created",
                        hex(&c.store_id),
                        c.location
                    ),
                }),
                Ok(None) => Err(StoreError::KeysOfAnotherStore {
                    what: "this store's claim on the backend's keys vanished while it was being created".into(),
                }),
                Err(e) => Err(StoreError::KeysOfAnotherStore {
                    what: format!(
                        "this store's claim on the backend's keys could not be confirmed ({e})"
                    ),
                }),
            }
        };
        let root = RootKeyId::new(primary_root.clone(), RootVersion::FIRST);
        if let Some(selector) = adopt {
            match backend.adopt_root(&root, selector) {
                // Adopted by an earlier attempt here that did not finish.
                Ok(_) | Err(BackendError::RootExists { .. }) => {}
                Err(e) => {
                    return Err(StoreError::backend(format!(
                        "adopting {selector} as root key {root}"
                    ))(e));
                }
            }
        }
        ensure_backend_root(&*backend, &root)?;
        claimed()?;
        let audit_key = Key256::generate()?;
        let audit_blob = backend
            .wrap(&root, &audit_key, &audit_key_context(&store_id))
            .map_err(StoreError::backend(format!(
                "wrapping the audit key under root key {root}"
            )))?;
        let storage = Storage::new(match engine {
            Some(e) => e,
            None => Box::new(SledEngine::create_with_cache(
                &dir,
                options.sled_cache_bytes,
            )?),
        });
        let store = Self::assemble(dir, storage, backend, meta.clone(), options);
        *store
            .inner
            .audit_key
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Arc::new(AuditKey::new(audit_key)));
        let root_entry = RootEntry {
            state: KeyState::Enabled,
            created: Timestamp::now(),
        };
        let w = store.write_lifecycle();
        store.commit(
            &w,
            AuditOp::StoreCreated,
            format!("store {}", hex(&store_id)),
            format!(
                "backend {} ({}); primary root key {root}",
                meta.backend_kind, meta.backend_instance
            ),
            |tx| {
                tx.insert(TreeId::Meta, META_KEY, meta.to_bytes())?;
                tx.insert(TreeId::Meta, AUDIT_KEY_KEY, audit_blob.to_bytes())?;
                tx.insert(TreeId::Meta, NEXT_ID_KEY, 1u64.to_be_bytes())?;
                tx.insert(
                    TreeId::Roots,
                    format::root_key(primary_root, RootVersion::FIRST),
                    root_entry.to_bytes(),
                )?;
                Ok(())
            },
            Effects::none().root(primary_root, RootVersion::FIRST, root_entry),
        )?;
        drop(w);
        Ok(store)
    }

    /// Opens the store in `dir` with `backend`, which must be the backend instance the store was
    /// created with. Carries out destructions that fell due (those that cannot be carried out now
    /// are left to [`Store::pending_jobs`]) and finishes interrupted purges.
    ///
    /// # Errors
    /// [`StoreError::NotAStore`], [`StoreError::NewerFormat`], [`StoreError::WrongBackend`], a
    /// corrupt store, or a storage error.
    pub fn open(
        dir: impl AsRef<Path>,
        backend: Arc<dyn Backend>,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        Self::open_inner(dir.as_ref(), None, backend, options, false)
    }

    /// [`Store::open`] on another storage engine (see [`Store::create_on`]).
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_on(
        dir: impl AsRef<Path>,
        engine: Box<dyn Engine>,
        backend: Arc<dyn Backend>,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        Self::open_inner(dir.as_ref(), Some(engine), backend, options, false)
    }

    /// [`Store::open`] for a database that the audit anchor outside it says is older than it
    /// should be ([`StoreError::RolledBack`]), or that has lost its anchor
    /// ([`StoreError::AnchorMissing`]), when an operator put an older copy in place on purpose:
    /// the database is taken as it is, the acceptance is recorded in the audit log, and the
    /// anchor is written anew. Everything else is checked as at any open.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_accepting_rollback(
        dir: impl AsRef<Path>,
        backend: Arc<dyn Backend>,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        Self::accept_rollback(Self::open_inner(
            dir.as_ref(),
            None,
            backend,
            options,
            true,
        )?)
    }

    /// [`Store::open_accepting_rollback`] on another storage engine (see [`Store::create_on`]).
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_on_accepting_rollback(
        dir: impl AsRef<Path>,
        engine: Box<dyn Engine>,
        backend: Arc<dyn Backend>,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        Self::accept_rollback(Self::open_inner(
            dir.as_ref(),
            Some(engine),
            backend,
            options,
            true,
        )?)
    }

    /// Records the acceptance of a rolled-back (or anchorless) database and anchors it anew.
    fn accept_rollback(store: Self) -> Result<Self, StoreError> {
        let found = audit::stored_head(&store.inner.storage)?.map_or(0, |h| h.seq);
        let anchored = store
            .anchor_file()?
            .and_then(|b| audit::parse_anchor(&b))
            .map(|a| a.head.seq)
            .max(store.anchor_in_backend().flatten());
        let w = store.write_lifecycle();
        store.commit(
            &w,
            AuditOp::RollbackAccepted,
            "store".into(),
            match anchored {
                Some(a) => format!("the database's log ends at entry {found}; the anchor said {a}"),
                None => format!("the database's log ends at entry {found}; there was no anchor"),
            },
            |_| Ok(()),
            Effects::none(),
        )?;
        drop(w);
        // The commit anchored the file anew; the backend's anchor, newer than this log, is
        // replaced too.
        if let Ok(key) = store.audit_key() {
            store.write_anchor_as(&key, true);
        }
        Ok(store)
    }

    fn open_inner(
        dir: &Path,
        engine: Option<Box<dyn Engine>>,
        backend: Arc<dyn Backend>,
        options: StoreOptions,
        accept_rollback: bool,
    ) -> Result<Self, StoreError> {
        let dir = dir.to_path_buf();
        let storage = Storage::new(match engine {
            Some(e) => e,
            None => Box::new(SledEngine::open_with_cache(&dir, options.sled_cache_bytes)?),
        });
        let raw = storage
            .get(TreeId::Meta, META_KEY)?
            .ok_or_else(|| StoreError::NotAStore { path: dir.clone() })?;
        if let Some(v) = StoreMeta::version_of(&raw)
            && v > STORE_FORMAT_VERSION
        {
            return Err(StoreError::NewerFormat {
                path: dir,
                found: v,
                supported: STORE_FORMAT_VERSION,
            });
        }
        let meta = StoreMeta::parse(&raw).map_err(|source| StoreError::Corrupt {
            what: "the store's metadata".into(),
            source,
        })?;
        let info = backend.describe();
        if info.kind != meta.backend_kind || info.instance_id != meta.backend_instance {
            return Err(StoreError::WrongBackend {
                path: dir,
                expected: format!("{} {}", meta.backend_kind, meta.backend_instance),
                found: format!("{} {}", info.kind, info.instance_id),
            });
        }
        match backend.store_claim() {
            Ok(Some(c)) if c.store_id != meta.store_id => {
                return Err(StoreError::KeysOfAnotherStore {
                    what: format!(
                        "the backend's keys belong to store {} (created at {}), not to the store in {} ({})",
                        hex(&c.store_id),
                        c.location,
                        dir.display(),
                        hex(&meta.store_id)
                    ),
                });
            }
            // A store from before claims were recorded: its claim is recorded now (best
            // effort: a backend that cannot say now is asked again at the next open).
            Ok(None) => {
                let _ = backend.set_store_claim(
                    &StoreClaim {
                        store_id: meta.store_id,
                        location: location_of(&dir),
                    },
                    None,
                );
            }
            _ => {}
        }
        let store = Self::assemble(dir, storage, backend, meta, options);
        store
            .inner
            .accepting_rollback
            .store(accept_rollback, Ordering::Release);
        store.check_anchor(accept_rollback)?;
        // The audit key is loaded now if its root allows. If the root is unusable (disabled,
        // destroyed, the HSM down), nothing can be verified yet: key operations report
        // AuditUnavailable, and data operations wait for the catalog to be verified
        // (`usable_keyring`). A damaged audit key (or metadata naming another primary root) is
        // an integrity failure now.
        let key = match store.audit_key() {
            Ok(k) => Some(k),
            Err(StoreError::AuditUnavailable { .. } | StoreError::Backend { .. }) => None,
            Err(e) => return Err(e),
        };
        // A catalog changed outside strongroom is refused here, naming the entry, before
        // anything in it is believed.
        // Another replica may commit while this one reads: `read_between_key_changes`.
        let sealed = store.read_between_key_changes(
            20,
            || -> Result<Option<bool>, StoreError> {
                store.inner.catalog_verified.store(false, Ordering::Release);
                let sealed = match &key {
                    Some(key) => Some(store.verify_catalog_once(key)?),
                    None => None,
                };
                store.load_catalog()?;
                Ok(sealed)
            },
            |_| false,
        )?;
        if sealed == Some(false) {
            // A store from before the sealed catalog: sealed once, now.
            let w = store.write_lifecycle();
            store.commit(
                &w,
                AuditOp::CatalogUpgraded,
                "store".into(),
                "root and keyring entries sealed, the catalog digest in the audit head".into(),
                |_| Ok(()),
                Effects::none(),
            )?;
        }
        drop(key);
        // Due destructions are carried out now if they can be. One that cannot (its audit entry
        // needs the primary root, which may be disabled) must not lock the store: the key is
        // unusable already, and it is listed by `pending_jobs` until `run_due_destructions`
        // succeeds.
        let _ = store.run_due_destructions();
        store.finish_purges()?;
        // Likewise a compaction a crash interrupted: best effort, it stays listed by
        // `pending_jobs` (and flagged by `doctor`) until it runs.
        let _ = store.finish_compaction();
        Ok(store)
    }

    fn assemble(
        dir: PathBuf,
        storage: Storage,
        backend: Arc<dyn Backend>,
        meta: StoreMeta,
        options: StoreOptions,
    ) -> Self {
        let actor: Arc<str> = Arc::from(options.actor.as_str());
        let fleet = Fleet::new(storage.engine().shared(), options.fleet_poll);
        // Where the audit anchor is kept: `crate::anchor`.
        let anchor_in_backend =
            crate::anchor::kept_in_backend(fleet.shared, &backend.audit_anchors());
        // Only tells two holders of leases apart (not a secret): a failed draw falls back to
        // the process id and the time.
        let mut instance = [0u8; 8];
        if strongroom_core::rng::os_fill(&mut instance).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos();
            instance = (u64::from(std::process::id()) << 32 | u64::from(nanos)).to_be_bytes();
        }
        Self {
            inner: Arc::new(Inner {
                fleet,
                dir,
                storage,
                backend,
                meta,
                cache: KeyCache::new(options.cache_capacity),
                options,
                lifecycle: RwLock::new(()),
                catalog: RwLock::new(Catalog::default()),
                audit_key: RwLock::new(None),
                counters: Mutex::new(IdMap::default()),
                backend_calls: AtomicU64::new(0),
                catalog_verified: AtomicBool::new(false),
                catalog_stale: AtomicBool::new(false),
                last_refresh_attempt: Mutex::new(None),
                catalog_sealed: AtomicBool::new(false),
                accepting_rollback: AtomicBool::new(false),
                last_verify_attempt: Mutex::new(None),
                jobs: crate::lease::Running::default(),
                instance: u64::from_be_bytes(instance),
                anchor_in_backend,
                anchor_checked: AtomicBool::new(false),
                anchor_written: Mutex::new(None),
            }),
            actor,
        }
    }

    /// The same store, acting as `actor` in the audit log.
    #[must_use]
    pub fn with_actor(&self, actor: impl Into<String>) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            actor: Arc::from(actor.into().as_str()),
        }
    }

    /// The store directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The backend.
    #[must_use]
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The store's identity.
    #[must_use]
    pub fn meta(&self) -> &StoreMeta {
        &self.inner.meta
    }

    /// The options the store was opened with.
    #[must_use]
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// Drops every cached key now (they are zeroized as their last users finish); the next
    /// operations unwrap again through the backend.
    pub fn purge_key_cache(&self) {
        let w = self.write_lifecycle();
        self.inner.cache.purge_all(&w);
    }

    /// Entries in the key cache now.
    #[must_use]
    pub fn cached_keys(&self) -> usize {
        self.inner.cache.len()
    }

    /// The storage engine the store runs on, and where.
    #[must_use]
    pub fn engine_info(&self) -> crate::engine::EngineInfo {
        self.inner.storage.engine().info()
    }

    /// Bytes the store's database takes on disk.
    ///
    /// # Errors
    /// The engine's.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner.storage.size_on_disk()
    }

    /// Makes every write so far durable (records written with [`Store::put`] are otherwise
    /// flushed in the background within about 500 ms).
    ///
    /// # Errors
    /// A storage error (a full disk, an I/O error).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.storage.flush()
    }

    /// The keyring entry, refusing unless it is enabled and its root is too.
    pub(crate) fn usable_keyring(
        &self,
        name: &KeyringName,
    ) -> Result<Arc<KeyringEntry>, StoreError> {
        let cat = self.data_catalog()?;
        let kr = cat.keyring(name)?;
        check_usable(&cat, name, &kr)?;
        Ok(kr)
    }

    /// The catalog for a data operation, once it may be believed (not stale, verified): the
    /// caller holds the lifecycle lock shared and looks its keyring up with
    /// [`Catalog::usable`]. Nested reads of the catalog under it (a key-cache miss) cannot
    /// deadlock: no writer of the catalog can be waiting while the lifecycle lock is held shared.
    pub(crate) fn data_catalog(&self) -> Result<RwLockReadGuard<'_, Catalog>, StoreError> {
        self.refuse_if_stale()?;
        if !self.inner.catalog_verified.load(Ordering::Acquire) {
            self.verify_for_data()?;
        }
        Ok(self.read_catalog())
    }

    /// A catalog that could not be verified at open (the primary root was unusable) is not
    /// believed: data operations try to verify it (at most once a second) and are refused until
    /// that succeeds.
    #[cold]
    fn verify_for_data(&self) -> Result<(), StoreError> {
        let root = self.inner.meta.primary_root.clone();
        let refused = |reason: String| StoreError::AuditUnavailable {
            root: root.clone(),
            reason: format!(
                "the key states (the catalog) cannot be verified until it is usable, so no record is read or written: {reason}"
            ),
        };
        {
            let mut last = self
                .inner
                .last_verify_attempt
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Err(refused("it was not a moment ago".into()));
            }
            *last = Some(Instant::now());
        }
        let key = match self.audit_key() {
            Ok(k) => k,
            Err(StoreError::AuditUnavailable { reason, .. }) => return Err(refused(reason)),
            Err(e) => return Err(e),
        };
        self.verify_catalog_once(&key).map(|_| ())
    }

    /// The lifecycle lock, held shared (see [`Shared`]).
    pub(crate) fn read_lifecycle(&self) -> Shared<'_> {
        self.refresh_if_invalidated();
        Shared::new(
            self.inner
                .lifecycle
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The lifecycle lock, held for writing: every key change, and the in-memory effects of
    /// one (catalog, key cache), need it ([`KeyChange`]).
    pub(crate) fn write_lifecycle(&self) -> KeyChange<'_> {
        self.refresh_if_invalidated();
        let w = KeyChange::new(
            self.inner
                .lifecycle
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        // On a shared database a key change starts from the current key states: whatever
        // another replica committed since the last poll is taken in first. (A change committed
        // after this read is caught by the commit's own check: `fleet::bump_generation`.)
        if self.inner.fleet.shared && self.behind() {
            let _ = self.reload_locked(&w);
        }
        w
    }

    /// Drops cached keys and DEK counters and loads the catalog again (verified), under the
    /// lifecycle lock held for writing. Until it succeeds the catalog is *stale*: data
    /// operations and key changes are refused ([`Store::refuse_if_stale`]).
    pub(crate) fn reload_locked(&self, w: &KeyChange<'_>) -> Result<(), StoreError> {
        self.inner.cache.purge_all(w);
        self.inner
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        // Another replica may commit while this one reads: `read_between_key_changes`.
        let reloaded = self.read_between_key_changes(
            20,
            || {
                self.inner.catalog_verified.store(false, Ordering::Release);
                self.audit_key()
                    .and_then(|key| self.verify_catalog_once(&key))
                    .and_then(|_| self.load_catalog())
            },
            |_| false,
        );
        self.inner
            .catalog_stale
            .store(reloaded.is_err(), Ordering::Release);
        reloaded
    }

    /// Before an operation uses what the store keeps in memory: takes in what another process
    /// may have changed.
    ///
    /// - When another replica moved the key-state generation (polled at most every
    ///   [`StoreOptions::fleet_poll`] on a shared engine: [`crate::fleet`]), the thread that
    ///   noticed reloads under the lifecycle lock; other threads wait for the lock, and are
    ///   not refused.
    /// - When the engine says another process may have changed the database
    ///   ([`Engine::take_invalidation`]: a lost exclusive lock), the catalog is *stale* at once,
    ///   for every thread, until a reload succeeds; the reload is tried again at most every
    ///   200 ms.
    ///
    /// A thread that holds a lifecycle guard already (a progress callback calling back into
    /// the store) does not wait for the lock: its call is refused while the catalog is stale.
    pub(crate) fn refresh_if_invalidated(&self) {
        if self.inner.storage.engine().take_invalidation() {
            // Stale from now on, for every thread, until the reload below succeeds.
            self.inner.catalog_stale.store(true, Ordering::Release);
            self.inner.catalog_verified.store(false, Ordering::Release);
        }
        if holding_lifecycle() {
            return;
        }
        if !self.inner.catalog_stale.load(Ordering::Acquire) {
            if self.generation_moved() {
                let w = KeyChange::new(
                    self.inner
                        .lifecycle
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                // Another thread may have reloaded while this one waited for the lock.
                if self
                    .stored_generation()
                    .map_or(true, |g| g != self.serving())
                {
                    let _ = self.reload_locked(&w);
                }
            }
            return;
        }
        {
            let mut last = self
                .inner
                .last_refresh_attempt
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
                return;
            }
            *last = Some(Instant::now());
        }
        let w = KeyChange::new(
            self.inner
                .lifecycle
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if !self.inner.catalog_stale.load(Ordering::Acquire) {
            return; // another thread reloaded it meanwhile
        }
        let _ = self.reload_locked(&w);
    }

    /// Refuses while the catalog must be reloaded ([`Store::refresh_if_invalidated`]).
    pub(crate) fn refuse_if_stale(&self) -> Result<(), StoreError> {
        if self.inner.catalog_stale.load(Ordering::Acquire) {
            return Err(StoreError::InUse(
                "the store's database may have been changed by another process while this one's lock on it was lost; its catalog is being reloaded: retry in a moment".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn read_catalog(&self) -> RwLockReadGuard<'_, Catalog> {
        self.inner
            .catalog
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The audit key, unwrapped from the store on first use.
    pub(crate) fn audit_key(&self) -> Result<Arc<AuditKey>, StoreError> {
        if let Some(k) = self
            .inner
            .audit_key
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            return Ok(Arc::clone(k));
        }
        let root = self.inner.meta.primary_root.clone();
        let raw = self
            .inner
            .storage
            .get(TreeId::Meta, AUDIT_KEY_KEY)?
            .ok_or_else(|| StoreError::KeyIntegrity {
                what: "the audit key (missing)".into(),
            })?;
        let blob = parse_blob(&raw, || "the wrapped audit key".into())?;
        // The metadata (not sealed: it names the key that seals the rest) must name the root
        // the audit key is wrapped under, which only that root can unwrap.
        if blob.root().map(|r| &r.name) != Some(&root) {
            return Err(StoreError::KeyIntegrity {
                what: format!(
                    "the store's metadata (it names {root} as the primary root, but the audit key is wrapped under {})",
                    blob.root()
                        .map_or_else(|| "no root key".to_owned(), |r| r.name.to_string())
                ),
            });
        }
        let key = match self.backend_unwrap(&blob, &audit_key_context(&self.inner.meta.store_id)) {
            Ok(k) => k,
            Err(BackendError::Integrity) => {
                return Err(StoreError::KeyIntegrity {
                    what: "the wrapped audit key".into(),
                });
            }
            // The root is disabled, destroyed or gone: the operator must act on the root.
            Err(e) if e.is_key_unavailable() => {
                return Err(StoreError::AuditUnavailable {
                    root,
                    reason: e.to_string(),
                });
            }
            // A device or configuration failure (a wrong PIN, an HSM that is down) is reported
            // as what it is, with the backend's own advice.
            Err(e) => return Err(StoreError::backend("unwrapping the audit key")(e)),
        };
        let key = Arc::new(AuditKey::new(key));
        *self
            .inner
            .audit_key
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&key));
        Ok(key)
    }

    /// Refuses a database that ends before the audit anchor (see [`ANCHOR_FILE`]).
    fn check_anchor(&self, accept_rollback: bool) -> Result<(), StoreError> {
        let path = self.inner.dir.join(ANCHOR_FILE);
        // Temporary anchors a crash left behind (on a shared database another replica in the
        // same directory may be writing one now: left alone).
        if !self.inner.fleet.shared
            && let Ok(entries) = std::fs::read_dir(&self.inner.dir)
        {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{ANCHOR_FILE}.tmp"))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // The backend's anchor (`crate::anchor`) is checked when the catalog is verified, with
        // its MAC; here only whether there is one, or a file to fall back on.
        if self.inner.anchor_in_backend {
            match self.inner.backend.audit_anchors() {
                Ok(values) if values.is_empty() => {
                    if self.anchor_file()?.is_none() {
                        let found = audit::stored_head(&self.inner.storage)?.map_or(0, |h| h.seq);
                        if found > 0 && !accept_rollback {
                            return Err(StoreError::AnchorMissing {
                                path: self.inner.dir.clone(),
                                anchor: PathBuf::from(crate::anchor::BACKEND_ANCHOR),
                                found,
                            });
                        }
                        return Ok(());
                    }
                    // A fleet from before its backend kept the anchor: its file, below.
                }
                _ => return Ok(()),
            }
        }
        // The anchor first, then the head: another replica sharing the directory may append
        // and anchor in between, and the head read after is at least as new as any anchor
        // read before it.
        let anchor_bytes = self.anchor_file()?;
        let head = audit::stored_head(&self.inner.storage)?.map_or(0, |h| h.seq);
        // No anchor: a store that never had a key operation, or one whose anchor was removed
        // (which would hide an older copy of the database put in place).
        let Some(bytes) = anchor_bytes else {
            if head > 0 && !accept_rollback {
                return Err(StoreError::AnchorMissing {
                    path: self.inner.dir.clone(),
                    anchor: path,
                    found: head,
                });
            }
            return Ok(());
        };
        let Some(anchor) = audit::parse_anchor(&bytes).map(|a| a.head) else {
            return Err(StoreError::Corrupt {
                what: format!("the audit anchor {}", path.display()),
                source: FormatError::BadLength {
                    what: "audit anchor",
                    field: "file",
                    expected: 73,
                    found: bytes.len(),
                },
            });
        };
        // Only the sequence is checked here; its MAC with the catalog (`verify_catalog_once`),
        // whether the entries match in `verify_audit`.
        if head < anchor.seq && !accept_rollback {
            return Err(StoreError::RolledBack {
                path: self.inner.dir.clone(),
                anchor: path,
                anchored: anchor.seq,
                found: head,
            });
        }
        Ok(())
    }

    /// The anchor file's bytes, if there is one. A read error other than "not found" is an
    /// error: it must not pass as "no anchor", which would skip the rollback check.
    pub(crate) fn anchor_file(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.inner.dir.join(ANCHOR_FILE);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                op: "read the audit anchor",
                path,
                source,
            }),
        }
    }

    /// Records the audit head outside the database (best effort: a missing or older anchor only
    /// weakens the rollback check, never causes a false alarm, because the database is flushed
    /// first).
    pub(crate) fn write_anchor(&self, key: &AuditKey) {
        self.write_anchor_as(key, false);
    }

    /// [`Store::write_anchor`]; `reset`: the backend's anchor is replaced even by an older one
    /// (a rollback accepted). The backend keeps the anchor if the store keeps it there
    /// ([`crate::anchor`]); the file stands in only when the backend cannot take it.
    fn write_anchor_as(&self, key: &AuditKey, reset: bool) {
        let Ok(Some(head)) = audit::stored_head(&self.inner.storage) else {
            return;
        };
        // Only if the backend could not take it does the file stand in for it.
        if self.inner.anchor_in_backend && self.write_backend_anchor(key, reset) {
            return;
        }
        let sealed = self.inner.catalog_sealed.load(Ordering::Acquire);
        let path = self.inner.dir.join(ANCHOR_FILE);
        // A name of its own for each write, so two writers never share a temporary file.
        let mut r = [0u8; 8];
        let _ = strongroom_core::rng::fill_nonce(&mut r);
        let tmp = self
            .inner
            .dir
            .join(format!("{ANCHOR_FILE}.tmp.{:016x}", u64::from_le_bytes(r)));
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&audit::anchor_bytes(key, head, sealed))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.inner.dir)?.sync_all()
        };
        if write().is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// Verifies the catalog against the audit key if that has not been done since open (it
    /// cannot be while the primary root is unusable); returns whether it is sealed. The anchor
    /// outside the database is checked with it: it must be genuine, and one written after the
    /// catalog was sealed (version 2) refuses a database whose catalog is not (a downgrade).
    pub(crate) fn verify_catalog_once(&self, key: &AuditKey) -> Result<bool, StoreError> {
        if self.inner.catalog_verified.load(Ordering::Acquire) {
            return Ok(self.inner.catalog_sealed.load(Ordering::Acquire));
        }
        let mut must_be_sealed = false;
        let accepting = self.inner.accepting_rollback.load(Ordering::Acquire);
        // The backend's anchor, where the store keeps it (`crate::anchor`): genuine, and an
        // entry of this log. The file is the anchor otherwise, or for a fleet from before its
        // backend kept one (until its first check there).
        let mut file_is_anchor = !self.inner.anchor_in_backend;
        if self.inner.anchor_in_backend {
            match self.check_backend_anchor(key, accepting)? {
                Some(a) => must_be_sealed = a.version >= 2 && !accepting,
                None => file_is_anchor = !self.inner.anchor_checked.load(Ordering::Acquire),
            }
        }
        if file_is_anchor && let Some(bytes) = self.anchor_file()? {
            match audit::verified_anchor(key, &bytes) {
                Some(a) => {
                    must_be_sealed = a.version >= 2 && !accepting;
                }
                None => {
                    return Err(StoreError::CatalogIntegrity {
                        what: format!(
                            "the audit anchor {} (it fails its MAC: it was not written by this store)",
                            self.inner.dir.join(ANCHOR_FILE).display()
                        ),
                    });
                }
            }
        }
        let head = audit::stored_head_full(&self.inner.storage)?;
        let v = catalog::verify(
            &self.inner.storage,
            key,
            &self.inner.meta.store_id,
            head.as_ref(),
        )?;
        if must_be_sealed && !v.sealed {
            return Err(StoreError::CatalogIntegrity {
                what: "the catalog (the anchor outside the database was written after it was sealed, but the database holds an unsealed one: it was downgraded)".into(),
            });
        }
        self.inner.catalog_sealed.store(v.sealed, Ordering::Release);
        self.inner.catalog_verified.store(true, Ordering::Release);
        Ok(v.sealed)
    }

    /// Records an operation that was refused or failed (best effort: if even this cannot be
    /// written, the original error is what the caller reports).
    pub(crate) fn audit_failure(&self, op: AuditOp, target: String, err: &StoreError) {
        let outcome = if err.is_access_refused()
            || matches!(err, StoreError::Transition(_) | StoreError::InUse(_))
        {
            Outcome::Refused
        } else {
            Outcome::Failed
        };
        let Ok(key) = self.audit_key() else {
            return;
        };
        let event = Event {
            op,
            outcome,
            actor: &self.actor,
            replica: &self.inner.options.replica,
            target,
            detail: err.to_string(),
        };
        let store_id = self.inner.meta.store_id;
        let _ = self
            .inner
            .storage
            .transaction(|tx| audit::append(tx, &key, &store_id, &event, [0; 32]).map(|_| ()));
        if self.inner.storage.flush().is_ok() {
            self.write_anchor(&key);
        }
    }

    /// Runs a lifecycle operation: audits its failure, passes its result through.
    pub(crate) fn audited<T>(
        &self,
        op: AuditOp,
        target: String,
        f: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let r = f().map_err(|e| {
            // A key another replica replaced since this one loaded the key states (a KEK
            // rotated away before this change read it) looks missing: the change was computed
            // from stale states, as one its commit refuses, and is refused the same way. (Its
            // own commits move the generation this replica serves along with the stored one.)
            // The next key change starts from the current states (`Store::write_lifecycle`).
            if self.stale_key_error(&e, self.serving()) {
                StoreError::Conflict {
                    what: format!("{} of {target}", op.as_str()),
                }
            } else {
                e
            }
        });
        telemetry::operation(op.as_str(), started, &r);
        if let Err(e) = &r {
            self.audit_failure(op, target, e);
        }
        r
    }

    /// Wrap and unwrap calls this handle has made to the backend (zero in steady state: see
    /// the key cache).
    #[must_use]
    pub fn backend_calls(&self) -> u64 {
        self.inner.backend_calls.load(Ordering::Relaxed)
    }

    pub(crate) fn backend_wrap(
        &self,
        root: &RootKeyId,
        key: &Key256,
        context: &[u8],
    ) -> Result<WrappedKey, BackendError> {
        self.inner.backend_calls.fetch_add(1, Ordering::Relaxed);
        telemetry::backend_call(true, || self.inner.backend.wrap(root, key, context))
    }

    /// Wraps KEK version `v` of keyring `name` (id `id`) under root version `root`, bound to
    /// all of them (blob format 2).
    pub(crate) fn wrap_kek(
        &self,
        root: &RootKeyId,
        kek: &Key256,
        name: &KeyringName,
        id: u64,
        v: KekVersion,
    ) -> Result<WrappedKey, StoreError> {
        self.backend_wrap(
            root,
            kek,
            &kek_context(&self.inner.meta.store_id, name, id, v, Some(root)),
        )
        .map(WrappedKey::bound_to_wrapping_key)
        .map_err(StoreError::backend(format!(
            "wrapping KEK {v} of keyring {name} under {root}"
        )))
    }

    pub(crate) fn backend_unwrap(
        &self,
        blob: &WrappedKey,
        context: &[u8],
    ) -> Result<Key256, BackendError> {
        self.inner.backend_calls.fetch_add(1, Ordering::Relaxed);
        telemetry::backend_call(false, || self.inner.backend.unwrap(blob, context))
    }

    // ----- key resolution -----

    fn fresh(&self, age: Duration) -> bool {
        age < self.inner.options.cache_ttl
    }

    fn may_serve_stale(&self, age: Duration, err: &BackendError) -> bool {
        match self.inner.options.down_policy {
            DownPolicy::FailClosed => false,
            DownPolicy::ServeCached { grace } => {
                matches!(err, BackendError::Device { .. } | BackendError::Io { .. })
                    && age < self.inner.options.cache_ttl + grace
            }
        }
    }

    /// A keyring's KEK version `v`, from the cache or unwrapped by the backend. Returns the key
    /// and when the backend last vouched for it.
    pub(crate) fn kek(
        &self,
        name: &KeyringName,
        kr: &KeyringEntry,
        v: KekVersion,
    ) -> Result<(Arc<Key256>, Instant), StoreError> {
        let stale = match self
            .inner
            .cache
            .get(kr.id, Slot::Kek(v.get()), Instant::now())
        {
            Some(hit) => match hit.value {
                Cached::Kek(k) if self.fresh(hit.age) => {
                    telemetry::cache_lookup(true, true);
                    return Ok((k, Instant::now() - hit.age));
                }
                Cached::Kek(k) => Some((k, hit.age)),
                Cached::Dek(_) => None,
            },
            None => None,
        };
        telemetry::cache_lookup(true, false);
        let what = || format!("KEK {v} of keyring {name}");
        let raw = self
            .inner
            .storage
            .get(TreeId::Keks, format::versioned_key(kr.id, v.get()))?
            .ok_or_else(|| StoreError::KeyIntegrity {
                what: format!("{} (missing)", what()),
            })?;
        let blob = parse_blob(&raw, what)?;
        // The blob must name a root key version this store has: a damaged reference is a damaged
        // KEK, not a root key the backend lacks.
        let known = blob.root().is_some_and(|r| {
            self.read_catalog()
                .roots
                .get(&r.name)
                .is_some_and(|versions| versions.contains_key(&r.version))
        });
        if !known {
            return Err(StoreError::KeyIntegrity {
                what: format!(
                    "{} (wrapped under a root key version this store does not have)",
                    what()
                ),
            });
        }
        match self.backend_unwrap(
            &blob,
            &stored_kek_context(&self.inner.meta.store_id, name, kr.id, v, &blob),
        ) {
            Ok(k) => {
                let k = Arc::new(k);
                let now = Instant::now();
                // Only a usable keyring's keys are kept: a lifecycle operation on a disabled
                // keyring (a rewrap, a rotation) must not leave its keys cached.
                if kr.state == KeyState::Enabled {
                    self.inner.cache.insert(
                        kr.id,
                        Slot::Kek(v.get()),
                        Cached::Kek(Arc::clone(&k)),
                        now,
                    );
                }
                Ok((k, now))
            }
            Err(BackendError::Integrity) => Err(StoreError::KeyIntegrity { what: what() }),
            Err(e) => {
                if let Some((k, age)) = stale
                    && self.may_serve_stale(age, &e)
                {
                    return Ok((k, Instant::now() - age));
                }
                if e.is_key_unavailable() {
                    self.inner.cache.evict_keyring(kr.id);
                }
                Err(StoreError::Backend {
                    while_doing: format!("unwrapping {}", what()),
                    source: e,
                })
            }
        }
    }

    /// A keyring's DEK version `v` as a ready cipher, from the cache or unwrapped.
    pub(crate) fn dek(
        &self,
        name: &KeyringName,
        kr: &KeyringEntry,
        v: DekVersion,
    ) -> Result<Arc<RecordCipher>, StoreError> {
        self.dek_at(name, kr, v, Instant::now())
    }

    /// [`Store::dek`], with the TTL checked against `now`: the caller reads the clock right
    /// before it uses the key, so that no wait of its own (an engine read, a counter block
    /// written) stretches the TTL.
    pub(crate) fn dek_at(
        &self,
        name: &KeyringName,
        kr: &KeyringEntry,
        v: DekVersion,
        now: Instant,
    ) -> Result<Arc<RecordCipher>, StoreError> {
        let stale = match self.inner.cache.get(kr.id, Slot::Dek(v.get()), now) {
            Some(hit) => match hit.value {
                Cached::Dek(c) if self.fresh(hit.age) => {
                    telemetry::cache_lookup(false, true);
                    return Ok(c);
                }
                Cached::Dek(c) => Some((c, hit.age)),
                Cached::Kek(_) => None,
            },
            None => None,
        };
        telemetry::cache_lookup(false, false);
        let what = || format!("DEK {v} of keyring {name}");
        let (blob, kek_v) = self.dek_blob(name, kr, v)?;
        let (kek, fetched) = match self.kek(name, kr, kek_v) {
            Ok(x) => x,
            Err(e) => {
                // The KEK could not be refreshed; serve the stale DEK only if the policy allows
                // it for the KEK error (the KEK path already decided for its own entry).
                if let (Some((c, age)), StoreError::Backend { source, .. }) = (&stale, &e)
                    && self.may_serve_stale(*age, source)
                {
                    return Ok(Arc::clone(c));
                }
                return Err(e);
            }
        };
        let key = kwp_unwrap_bound(
            &kek,
            blob.payload(),
            &dek_context(&self.inner.meta.store_id, name, kr.id, v),
        )
        .map_err(|_| StoreError::KeyIntegrity { what: what() })?;
        let cipher = Arc::new(RecordCipher::new(v, &key));
        if kr.state == KeyState::Enabled {
            self.inner.cache.insert(
                kr.id,
                Slot::Dek(v.get()),
                Cached::Dek(Arc::clone(&cipher)),
                fetched,
            );
        }
        Ok(cipher)
    }

    /// The wrapped DEK version `v` of a keyring, checked to be an AES-KWP blob under one of
    /// this keyring's KEKs, and the KEK version it names.
    pub(crate) fn dek_blob(
        &self,
        name: &KeyringName,
        kr: &KeyringEntry,
        v: DekVersion,
    ) -> Result<(WrappedKey, KekVersion), StoreError> {
        let what = || format!("DEK {v} of keyring {name}");
        let raw = self
            .inner
            .storage
            .get(TreeId::Deks, format::versioned_key(kr.id, v.get()))?
            .ok_or_else(|| StoreError::KeyIntegrity {
                what: format!("{} (missing)", what()),
            })?;
        let blob = parse_blob(&raw, what)?;
        match blob.wrapped_by() {
            WrappingKeyRef::Kek { keyring, version }
                if keyring == name && blob.alg() == WrapAlg::AesKwp =>
            {
                let version = *version;
                Ok((blob, version))
            }
            _ => Err(StoreError::KeyIntegrity {
                what: format!("{} (wrapped by the wrong key)", what()),
            }),
        }
    }

    /// The names and ids of keyrings under root `name`.
    pub(crate) fn keyrings_under(
        &self,
        root: &RootKeyName,
    ) -> Vec<(KeyringName, Arc<KeyringEntry>)> {
        self.read_catalog()
            .keyrings
            .iter()
            .filter(|(_, e)| &e.root == root)
            .map(|(n, e)| (n.clone(), Arc::clone(e)))
            .collect()
    }
}

fn location_of(dir: &Path) -> String {
    std::path::absolute(dir)
        .unwrap_or_else(|_| dir.to_path_buf())
        .display()
        .to_string()
}

/// File (inside the store directory) naming the store id a create in this directory claimed
/// the backend's keys for, written before the claim: how a create that did not finish is told
/// from another store that once lived at the same path.
pub const STORE_ID_FILE: &str = "store-id";

/// Claims the backend's keys for a new store `store_id` in `dir`, or refuses if they belong to
/// another store: one whose claim names another place, or the same place without this
/// directory's `store-id` naming it (a store moved away, or deleted), or, for keys from before
/// claims were recorded, any root key already there. A claim that this directory's `store-id`
/// names is an earlier create here that did not finish (no store is here now): taken over.
fn claim_backend(backend: &dyn Backend, store_id: &[u8; 16], dir: &Path) -> Result<(), StoreError> {
    let claim = StoreClaim {
        store_id: *store_id,
        location: location_of(dir),
    };
    let marker = dir.join(STORE_ID_FILE);
    let earlier: Option<[u8; 16]> = std::fs::read_to_string(&marker).ok().and_then(|s| {
        let s = s.trim();
        let mut id = [0u8; 16];
        (s.len() == 32).then_some(())?;
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(id)
    });
    let reading = "reading which store the backend's keys belong to";
    let current = backend.store_claim();
    match &current {
        Err(BackendError::NotSupported { .. }) => return Ok(()),
        Err(_) => {}
        Ok(Some(c)) if c.location != claim.location || earlier != Some(c.store_id) => {
            return Err(StoreError::KeysOfAnotherStore {
                what: format!(
                    "the backend's keys belong to store {} at {}",
                    hex(&c.store_id),
                    c.location
                ),
            });
        }
        Ok(Some(_)) => {}
        Ok(None) => {
            let roots = backend.list_roots().map_err(StoreError::backend(reading))?;
            if !roots.is_empty() {
                let names: Vec<String> = roots.iter().map(|r| r.id.to_string()).collect();
                return Err(StoreError::KeysOfAnotherStore {
                    what: format!(
                        "the backend already holds the root keys of another store ({})",
                        names.join(", ")
                    ),
                });
            }
        }
    }
    let replacing = match current {
        Ok(c) => c,
        Err(e) => return Err(StoreError::backend(reading)(e)),
    };
    std::fs::write(&marker, format!("{}\n", hex(store_id))).map_err(|source| StoreError::Io {
        op: "write",
        path: marker.clone(),
        source,
    })?;
    // A compare-and-set: another create that claimed them since the read above wins.
    match backend.set_store_claim(&claim, replacing.as_ref()) {
        Ok(()) => Ok(()),
        Err(BackendError::ClaimedByAnother { store, location }) => {
            Err(StoreError::KeysOfAnotherStore {
                what: format!(
                    "another store ({store} at {location}) claimed the backend's keys while this one was being created"
                ),
            })
        }
        Err(e) => Err(StoreError::backend(
            "recording which store the backend's keys belong to",
        )(e)),
    }
}

/// Makes sure the backend holds root version `id`: generates it, or adopts one the backend
/// already holds enabled (left by an attempt that crashed before the store recorded it: the
/// backend instance is this store's own).
pub(crate) fn ensure_backend_root(backend: &dyn Backend, id: &RootKeyId) -> Result<(), StoreError> {
    match backend.generate_root(id) {
        Ok(_) => Ok(()),
        Err(BackendError::RootExists { .. }) => match backend.find_root(id) {
            Ok(Some(info)) if info.status == strongroom_core::RootStatus::Enabled => Ok(()),
            Ok(_) => Err(StoreError::Backend {
                while_doing: format!("creating root key {id}"),
                source: BackendError::RootExists { root: id.clone() },
            }),
            Err(e) => Err(StoreError::backend(format!("looking up root key {id}"))(e)),
        },
        Err(e) => Err(StoreError::backend(format!("creating root key {id}"))(e)),
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Aborts a transaction unless `tree[key]` still holds `expected` (a guard against a change
/// committed between a check and its transaction).
pub(crate) fn expect_value(
    tx: &CommitTx<'_>,
    tree: TreeId,
    key: &[u8],
    expected: Option<&[u8]>,
    what: &str,
) -> TxResult<()> {
    let now = tx.get(tree, key)?;
    if now.as_deref() != expected {
        return abort(StoreError::InUse(format!(
            "{what} changed while this operation ran; retry it"
        )));
    }
    Ok(())
}
