//! Shared fixtures for the store tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use strongroom_core::{KeyringName, RootKeyName, SoftBackend};
use strongroom_store::{Store, StoreOptions};
use strongroom_test_support::wrappers::TestBackend;

pub fn kr(s: &str) -> KeyringName {
    KeyringName::new(s).unwrap()
}

pub fn rn(s: &str) -> RootKeyName {
    RootKeyName::new(s).unwrap()
}

/// A store on a soft backend in a temp dir, with the backend wrapped to count calls.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub backend: Arc<TestBackend>,
    pub store: Option<Store>,
    pub options: StoreOptions,
}

impl Fixture {
    pub fn new(options: StoreOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let soft = SoftBackend::create(dir.path()).unwrap();
        let backend = TestBackend::new(Arc::new(soft));
        let store =
            Store::create(dir.path(), backend.clone(), &rn("service"), options.clone()).unwrap();
        Self {
            dir,
            backend,
            store: Some(store),
            options,
        }
    }

    pub fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    /// Closes the store and opens it again (same backend instance).
    pub fn reopen(&mut self) -> &Store {
        self.store = None;
        self.store =
            Some(Store::open(self.dir.path(), self.backend.clone(), self.options.clone()).unwrap());
        self.store()
    }

    /// Closes the store and hands its database to `f` (for tampering), then reopens.
    pub fn with_raw_db(&mut self, f: impl FnOnce(&sled::Db)) -> &Store {
        self.store = None;
        {
            let db = raw_sled(&strongroom_store::database_dir(self.dir.path()).unwrap());
            f(&db);
            db.flush().unwrap();
        }
        self.reopen()
    }
}

/// sled opened directly, retrying while a store just closed still holds its lock (sled's
/// background threads release it a moment after the last handle drops).
pub fn raw_sled(db_dir: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::open(db_dir) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
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
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
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
