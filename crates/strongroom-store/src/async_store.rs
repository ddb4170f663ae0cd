//! The async API (feature `tokio`): [`AsyncStore`], the operations of [`Store`] for services
//! on tokio, each run on tokio's blocking pool so that an executor thread never waits for the
//! disk, the HSM or a lock.
//!
//! At most [`AsyncOptions::max_in_flight`] store calls run at once; the others wait
//! (asynchronously, in FIFO order) for a permit, so a burst of requests cannot take every thread
//! of the blocking pool or queue more calls on the HSM than its sessions serve. Errors are the
//! store's own ([`StoreError`]).
//!
//! Values go in owned (`Vec<u8>`, or anything that converts into one: `&[u8]`, `String`,
//! `bytes::Bytes`) and the store's copy is zeroized once the call is done (a `Bytes` the caller
//! still holds is the caller's to clear); values come out as [`Plaintext`], zeroized on drop.
//!
//! Cancellation: dropping a call's future before it got its permit cancels it; once it runs on
//! the pool it runs to the end (a store operation is never cut in the middle) and its result is
//! dropped. Progress callbacks of long jobs run on the pool's thread.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! # let dir = tmp.path().to_path_buf();
//! use std::sync::Arc;
//! use strongroom_core::{KeyringName, RootKeyName, SoftBackend};
//! use strongroom_store::{AsyncOptions, AsyncStore, StoreOptions};
//!
//! # let rt = tokio::runtime::Builder::new_multi_thread().build()?;
//! # rt.block_on(async {
//! let backend = Arc::new(SoftBackend::create(&dir)?);
//! let store = AsyncStore::create(&dir, backend, &RootKeyName::new("service")?,
//!     StoreOptions::default(), AsyncOptions::default()).await?;
//! let payroll = KeyringName::new("payroll")?;
//! store.create_keyring(&payroll, None).await?;
//! store.put(&payroll, "alice", "salary=100000").await?;
//! let value = store.get(&payroll, "alice").await?; // Option<Plaintext>
//! assert_eq!(value.unwrap().expose(), b"salary=100000");
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use strongroom_core::{
    Backend, DekVersion, KekVersion, KeyringName, Plaintext, RootKeyName, RootVersion, Timestamp,
};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::audit::{AuditBreak, AuditReport};
use crate::backup::BackupReport;
use crate::compact::CompactReport;
use crate::destruction::Destroyed;
use crate::error::StoreError;
use crate::jobs::{PendingJob, ReencryptReport};
use crate::keyrings::KeyringInfo;
use crate::lifecycle::Progress;
use crate::moves::MoveReport;
use crate::records::BatchOp;
use crate::roots::RootInfo;
use crate::store::{Store, StoreOptions};

/// How an [`AsyncStore`] runs its calls.
#[derive(Clone, Copy, Debug)]
pub struct AsyncOptions {
    /// Most store calls running at once on tokio's blocking pool; more wait for a permit.
    /// Default 32 (at least 1).
    pub max_in_flight: usize,
}

impl Default for AsyncOptions {
    fn default() -> Self {
        Self { max_in_flight: 32 }
    }
}

/// A [`Store`] for async code: every call runs on tokio's blocking pool, at most
/// [`AsyncOptions::max_in_flight`] at once (see the module docs). `Send + Sync`, cheap to clone;
/// clones share the store and the bound. Needs a tokio runtime.
#[derive(Clone, Debug)]
pub struct AsyncStore {
    store: Store,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
}

impl AsyncStore {
    /// Wraps an open store.
    #[must_use]
    pub fn new(store: Store, options: AsyncOptions) -> Self {
        let max_in_flight = options.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            store,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
        }
    }

    /// [`Store::open`], on the blocking pool.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub async fn open(
        dir: impl AsRef<Path>,
        backend: Arc<dyn Backend>,
        options: StoreOptions,
        async_options: AsyncOptions,
    ) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let store = unbounded(dir.clone(), move || Store::open(&dir, backend, options)).await?;
        Ok(Self::new(store, async_options))
    }

    /// [`Store::create`], on the blocking pool.
    ///
    /// # Errors
    /// As [`Store::create`].
    pub async fn create(
        dir: impl AsRef<Path>,
        backend: Arc<dyn Backend>,
        primary_root: &RootKeyName,
        options: StoreOptions,
        async_options: AsyncOptions,
    ) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let root = primary_root.clone();
        let store = unbounded(dir.clone(), move || {
            Store::create(&dir, backend, &root, options)
        })
        .await?;
        Ok(Self::new(store, async_options))
    }

    /// The synchronous store (for what needs no waiting: [`Store::roots`], options, counters).
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The bound on calls running at once.
    #[must_use]
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Runs `f` with the store on the blocking pool, under the bound: for any operation of
    /// [`Store`] this type does not wrap.
    ///
    /// # Errors
    /// `f`'s error, or [`StoreError::Io`] if the runtime shut down before `f` ran.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        // The semaphore is never closed, so acquiring only fails if it were.
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| shut_down(self.store.dir()))?;
        let store = self.store.clone();
        let dir = store.dir().to_path_buf();
        unbounded(dir, move || {
            let _permit = permit;
            f(&store)
        })
        .await
    }

    // ----- records -----

    /// [`Store::put`].
    ///
    /// # Errors
    /// As [`Store::put`].
    pub async fn put(
        &self,
        keyring: &KeyringName,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let (keyring, key, value) = (keyring.clone(), key.into(), Zeroizing::new(value.into()));
        self.call(move |s| s.put(&keyring, &key, &value)).await
    }

    /// [`Store::put_durable`].
    ///
    /// # Errors
    /// As [`Store::put_durable`].
    pub async fn put_durable(
        &self,
        keyring: &KeyringName,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let (keyring, key, value) = (keyring.clone(), key.into(), Zeroizing::new(value.into()));
        self.call(move |s| s.put_durable(&keyring, &key, &value))
            .await
    }

    /// [`Store::get`].
    ///
    /// # Errors
    /// As [`Store::get`].
    pub async fn get(
        &self,
        keyring: &KeyringName,
        key: impl Into<Vec<u8>>,
    ) -> Result<Option<Plaintext>, StoreError> {
        let (keyring, key) = (keyring.clone(), key.into());
        self.call(move |s| s.get(&keyring, &key)).await
    }

    /// [`Store::delete`].
    ///
    /// # Errors
    /// As [`Store::delete`].
    pub async fn delete(
        &self,
        keyring: &KeyringName,
        key: impl Into<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let (keyring, key) = (keyring.clone(), key.into());
        self.call(move |s| s.delete(&keyring, &key)).await
    }

    /// [`Store::list`].
    ///
    /// # Errors
    /// As [`Store::list`].
    pub async fn list(
        &self,
        keyring: &KeyringName,
        prefix: impl Into<Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let (keyring, prefix) = (keyring.clone(), prefix.into());
        self.call(move |s| s.list(&keyring, &prefix)).await
    }

    /// [`Store::batch`].
    ///
    /// # Errors
    /// As [`Store::batch`].
    pub async fn batch(&self, keyring: &KeyringName, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        let keyring = keyring.clone();
        self.call(move |s| s.batch(&keyring, &ops)).await
    }

    /// [`Store::flush`].
    ///
    /// # Errors
    /// As [`Store::flush`].
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.call(Store::flush).await
    }

    // ----- keyrings -----

    /// [`Store::keyrings`].
    ///
    /// # Errors
    /// As [`Store::keyrings`].
    pub async fn keyrings(&self) -> Result<Vec<KeyringInfo>, StoreError> {
        self.call(Store::keyrings).await
    }

    /// [`Store::keyring`].
    ///
    /// # Errors
    /// As [`Store::keyring`].
    pub async fn keyring(&self, name: &KeyringName) -> Result<KeyringInfo, StoreError> {
        let name = name.clone();
        self.call(move |s| s.keyring(&name)).await
    }

    /// [`Store::create_keyring`].
    ///
    /// # Errors
    /// As [`Store::create_keyring`].
    pub async fn create_keyring(
        &self,
        name: &KeyringName,
        root: Option<&RootKeyName>,
    ) -> Result<KeyringInfo, StoreError> {
        let (name, root) = (name.clone(), root.cloned());
        self.call(move |s| s.create_keyring(&name, root.as_ref()))
            .await
    }

    /// [`Store::rotate_kek`].
    ///
    /// # Errors
    /// As [`Store::rotate_kek`].
    pub async fn rotate_kek(&self, name: &KeyringName) -> Result<KekVersion, StoreError> {
        let name = name.clone();
        self.call(move |s| s.rotate_kek(&name)).await
    }

    /// [`Store::rotate_dek`].
    ///
    /// # Errors
    /// As [`Store::rotate_dek`].
    pub async fn rotate_dek(&self, name: &KeyringName) -> Result<DekVersion, StoreError> {
        let name = name.clone();
        self.call(move |s| s.rotate_dek(&name)).await
    }

    /// [`Store::move_keyring`]; `progress` runs on the blocking pool.
    ///
    /// # Errors
    /// As [`Store::move_keyring`].
    pub async fn move_keyring(
        &self,
        name: &KeyringName,
        root: &RootKeyName,
        mut progress: impl FnMut(Progress) + Send + 'static,
    ) -> Result<MoveReport, StoreError> {
        let (name, root) = (name.clone(), root.clone());
        self.call(move |s| s.move_keyring(&name, &root, &mut progress))
            .await
    }

    /// [`Store::disable_keyring`].
    ///
    /// # Errors
    /// As [`Store::disable_keyring`].
    pub async fn disable_keyring(&self, name: &KeyringName) -> Result<(), StoreError> {
        let name = name.clone();
        self.call(move |s| s.disable_keyring(&name)).await
    }

    /// [`Store::enable_keyring`].
    ///
    /// # Errors
    /// As [`Store::enable_keyring`].
    pub async fn enable_keyring(&self, name: &KeyringName) -> Result<(), StoreError> {
        let name = name.clone();
        self.call(move |s| s.enable_keyring(&name)).await
    }

    /// [`Store::schedule_keyring_destruction`].
    ///
    /// # Errors
    /// As [`Store::schedule_keyring_destruction`].
    pub async fn schedule_keyring_destruction(
        &self,
        name: &KeyringName,
        after: Option<Duration>,
    ) -> Result<Timestamp, StoreError> {
        let name = name.clone();
        self.call(move |s| s.schedule_keyring_destruction(&name, after))
            .await
    }

    /// [`Store::cancel_keyring_destruction`].
    ///
    /// # Errors
    /// As [`Store::cancel_keyring_destruction`].
    pub async fn cancel_keyring_destruction(&self, name: &KeyringName) -> Result<(), StoreError> {
        let name = name.clone();
        self.call(move |s| s.cancel_keyring_destruction(&name))
            .await
    }

    /// [`Store::destroy_keyring_now`].
    ///
    /// # Errors
    /// As [`Store::destroy_keyring_now`].
    pub async fn destroy_keyring_now(&self, name: &KeyringName) -> Result<Destroyed, StoreError> {
        let name = name.clone();
        self.call(move |s| s.destroy_keyring_now(&name)).await
    }

    /// [`Store::retire_unused_deks`].
    ///
    /// # Errors
    /// As [`Store::retire_unused_deks`].
    pub async fn retire_unused_deks(
        &self,
        name: &KeyringName,
    ) -> Result<Vec<DekVersion>, StoreError> {
        let name = name.clone();
        self.call(move |s| s.retire_unused_deks(&name)).await
    }

    /// [`Store::reencrypt`]; `progress` runs on the blocking pool.
    ///
    /// # Errors
    /// As [`Store::reencrypt`].
    pub async fn reencrypt(
        &self,
        name: &KeyringName,
        mut progress: impl FnMut(Progress) + Send + 'static,
    ) -> Result<ReencryptReport, StoreError> {
        let name = name.clone();
        self.call(move |s| s.reencrypt(&name, &mut progress)).await
    }

    // ----- roots -----

    /// [`Store::create_root`].
    ///
    /// # Errors
    /// As [`Store::create_root`].
    pub async fn create_root(&self, name: &RootKeyName) -> Result<RootInfo, StoreError> {
        let name = name.clone();
        self.call(move |s| s.create_root(&name)).await
    }

    /// [`Store::rotate_root`]; `progress` runs on the blocking pool.
    ///
    /// # Errors
    /// As [`Store::rotate_root`].
    pub async fn rotate_root(
        &self,
        name: &RootKeyName,
        mut progress: impl FnMut(Progress) + Send + 'static,
    ) -> Result<RootVersion, StoreError> {
        let name = name.clone();
        self.call(move |s| s.rotate_root(&name, &mut progress))
            .await
    }

    /// [`Store::rewrap_root`]; `progress` runs on the blocking pool.
    ///
    /// # Errors
    /// As [`Store::rewrap_root`].
    pub async fn rewrap_root(
        &self,
        name: &RootKeyName,
        mut progress: impl FnMut(Progress) + Send + 'static,
    ) -> Result<u64, StoreError> {
        let name = name.clone();
        self.call(move |s| s.rewrap_root(&name, &mut progress))
            .await
    }

    /// [`Store::retire_root_version`].
    ///
    /// # Errors
    /// As [`Store::retire_root_version`].
    pub async fn retire_root_version(
        &self,
        name: &RootKeyName,
        version: RootVersion,
    ) -> Result<(), StoreError> {
        let name = name.clone();
        self.call(move |s| s.retire_root_version(&name, version))
            .await
    }

    /// [`Store::disable_root`].
    ///
    /// # Errors
    /// As [`Store::disable_root`].
    pub async fn disable_root(&self, name: &RootKeyName) -> Result<(), StoreError> {
        let name = name.clone();
        self.call(move |s| s.disable_root(&name)).await
    }

    /// [`Store::enable_root`].
    ///
    /// # Errors
    /// As [`Store::enable_root`].
    pub async fn enable_root(&self, name: &RootKeyName) -> Result<(), StoreError> {
        let name = name.clone();
        self.call(move |s| s.enable_root(&name)).await
    }

    /// [`Store::schedule_root_destruction`].
    ///
    /// # Errors
    /// As [`Store::schedule_root_destruction`].
    pub async fn schedule_root_destruction(
        &self,
        name: &RootKeyName,
        after: Option<Duration>,
    ) -> Result<Timestamp, StoreError> {
        let name = name.clone();
        self.call(move |s| s.schedule_root_destruction(&name, after))
            .await
    }

    /// [`Store::cancel_root_destruction`].
    ///
    /// # Errors
    /// As [`Store::cancel_root_destruction`].
    pub async fn cancel_root_destruction(&self, name: &RootKeyName) -> Result<(), StoreError> {
        let name = name.clone();
        self.call(move |s| s.cancel_root_destruction(&name)).await
    }

    /// [`Store::destroy_root_now`].
    ///
    /// # Errors
    /// As [`Store::destroy_root_now`].
    pub async fn destroy_root_now(&self, name: &RootKeyName) -> Result<Vec<Destroyed>, StoreError> {
        let name = name.clone();
        self.call(move |s| s.destroy_root_now(&name)).await
    }

    /// [`Store::finish_root_destruction`].
    ///
    /// # Errors
    /// As [`Store::finish_root_destruction`].
    pub async fn finish_root_destruction(&self, name: &RootKeyName) -> Result<(), StoreError> {
        let name = name.clone();
        self.call(move |s| s.finish_root_destruction(&name)).await
    }

    // ----- jobs, audit, backup -----

    /// [`Store::pending_jobs`].
    ///
    /// # Errors
    /// As [`Store::pending_jobs`].
    pub async fn pending_jobs(&self) -> Result<Vec<PendingJob>, StoreError> {
        self.call(Store::pending_jobs).await
    }

    /// [`Store::run_due_destructions`].
    ///
    /// # Errors
    /// As [`Store::run_due_destructions`].
    pub async fn run_due_destructions(&self) -> Result<Vec<Destroyed>, StoreError> {
        self.call(Store::run_due_destructions).await
    }

    /// [`Store::compact`].
    ///
    /// # Errors
    /// As [`Store::compact`].
    pub async fn compact(&self) -> Result<CompactReport, StoreError> {
        self.call(Store::compact).await
    }

    /// [`Store::finish_compaction`].
    ///
    /// # Errors
    /// As [`Store::finish_compaction`].
    pub async fn finish_compaction(&self) -> Result<Option<CompactReport>, StoreError> {
        self.call(Store::finish_compaction).await
    }

    /// [`Store::verify_audit`].
    ///
    /// # Errors
    /// As [`Store::verify_audit`].
    pub async fn verify_audit(&self) -> Result<Result<AuditReport, AuditBreak>, StoreError> {
        self.call(Store::verify_audit).await
    }

    /// [`Store::backup`].
    ///
    /// # Errors
    /// As [`Store::backup`].
    pub async fn backup(&self, path: impl Into<PathBuf>) -> Result<BackupReport, StoreError> {
        let path = path.into();
        self.call(move |s| s.backup(&path)).await
    }
}

/// Runs `f` on the blocking pool (no bound: opening and creating, before there is a store).
async fn unbounded<T, F>(dir: PathBuf, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        // The store's panic is the caller's, as it would be with the synchronous API.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(shut_down(&dir)),
    }
}

fn shut_down(dir: &Path) -> StoreError {
    StoreError::Io {
        op: "run a store call on tokio's blocking pool for",
        path: dir.to_path_buf(),
        source: std::io::Error::other("the tokio runtime is shutting down; nothing was done"),
    }
}
