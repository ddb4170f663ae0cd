//! The authenticated catalog on PostgreSQL: someone who can write the database's rows (but has
//! no key) turns a disabled keyring back on, moves a keyring under another root, or turns a
//! disabled root back on; each is an integrity error at open naming the entry, never a silent
//! state change. (The same MAC code as on sled, where `strongroom-store`'s tamper suite tries
//! many more edits on the raw files.)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;

use common::{connect, kr, rn};
use strongroom_core::{Backend, KeyState, RootVersion, SoftBackend};
use strongroom_postgres::{PgConfig, PgEngine};
use strongroom_store::format::{KeyringEntry, root_key};
use strongroom_store::{Engine, Store, StoreError, StoreOptions, TreeId};
use strongroom_test_support::pg;

/// A store with a disabled keyring, a tenant keyring and a disabled root; its directory, its
/// backend and its engine's configuration.
fn catalog_store() -> (tempfile::TempDir, Arc<dyn Backend>, PgConfig) {
    let cfg = PgConfig::from_url(&pg::shared().url())
        .unwrap()
        .with_schema(&pg::unique_schema())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(SoftBackend::create(dir.path()).unwrap());
    let s = Store::create_on(
        dir.path(),
        Box::new(connect(&cfg)),
        Arc::clone(&backend),
        &rn("service"),
        StoreOptions::default(),
    )
    .unwrap();
    s.create_root(&rn("tenant")).unwrap();
    s.create_root(&rn("tenant-off")).unwrap();
    for (k, root) in [("off", "service"), ("tenant-data", "tenant")] {
        s.create_keyring(&kr(k), Some(&rn(root))).unwrap();
        s.put(&kr(k), b"r", k.as_bytes()).unwrap();
    }
    s.disable_keyring(&kr("off")).unwrap();
    s.disable_root(&rn("tenant-off")).unwrap();
    (dir, backend, cfg)
}

fn edit(cfg: &PgConfig, f: impl FnOnce(&PgEngine)) {
    let e = connect(cfg);
    f(&e);
}

fn keyring_edit(name: &str, change: impl FnOnce(&mut KeyringEntry)) -> impl FnOnce(&PgEngine) {
    let name = name.to_owned();
    move |e| {
        let v = e.get(TreeId::Keyrings, name.as_bytes()).unwrap().unwrap();
        let (body, mac) = v.split_at(v.len() - 32);
        let mut entry = KeyringEntry::parse(body).unwrap();
        change(&mut entry);
        // The changed entry with its old MAC: what someone without the key can write.
        e.insert(
            TreeId::Keyrings,
            name.as_bytes(),
            &[entry.to_bytes(), mac.to_vec()].concat(),
        )
        .unwrap();
    }
}

fn assert_refused(dir: &std::path::Path, backend: &Arc<dyn Backend>, cfg: &PgConfig, names: &str) {
    let r = Store::open_on(
        dir,
        Box::new(connect(cfg)),
        Arc::clone(backend),
        StoreOptions::default(),
    );
    let e = match r {
        Ok(_) => panic!("a changed catalog opened ({names})"),
        Err(e) => e,
    };
    assert!(
        matches!(e, StoreError::CatalogIntegrity { .. }) && e.is_integrity(),
        "{names}: {e:?}"
    );
    assert!(e.to_string().contains(names), "{names}: {e}");
}

#[test]
fn catalog_edits_in_the_database_are_integrity_errors_at_open() {
    // A disabled keyring turned back on.
    let (dir, backend, cfg) = catalog_store();
    edit(&cfg, keyring_edit("off", |e| e.state = KeyState::Enabled));
    assert_refused(dir.path(), &backend, &cfg, "keyring entry off");

    // A tenant's keyring put under the service's root.
    let (dir, backend, cfg) = catalog_store();
    edit(
        &cfg,
        keyring_edit("tenant-data", |e| e.root = rn("service")),
    );
    assert_refused(dir.path(), &backend, &cfg, "keyring entry tenant-data");

    // A disabled root turned back on.
    let (dir, backend, cfg) = catalog_store();
    edit(&cfg, |e| {
        let k = root_key(&rn("tenant-off"), RootVersion::FIRST);
        let mut v = e.get(TreeId::Roots, &k).unwrap().unwrap();
        assert_eq!(v[1], 2, "disabled");
        v[1] = 1;
        e.insert(TreeId::Roots, &k, &v).unwrap();
    });
    assert_refused(dir.path(), &backend, &cfg, "root key entry tenant-off/v1");

    // Untouched, it opens and the states are what was set.
    let (dir, backend, cfg) = catalog_store();
    let s = Store::open_on(
        dir.path(),
        Box::new(connect(&cfg)),
        backend,
        StoreOptions::default(),
    )
    .unwrap();
    assert!(s.get(&kr("off"), b"r").unwrap_err().is_access_refused());
    assert!(s.get(&kr("tenant-data"), b"r").unwrap().is_some());
}
