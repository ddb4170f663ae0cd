//! Crypto-shredding on PostgreSQL, checked on the server's files: after a keyring's destruction
//! (which deletes its rows, then runs VACUUM FULL and a CHECKPOINT), no 16-byte piece of its
//! wrapped KEKs, wrapped DEKs or sealed records is left in the table files under the cluster's
//! `base/` directory; the same scan finds all of them before the destruction. What remains is
//! reported, not hidden: the WAL (`pg_wal/`) still holds them until the server recycles and
//! overwrites its segments (README, security model).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;

use common::connect;
use strongroom_core::{Backend, KeyringName, RootKeyName, SoftBackend, WrappedKey};
use strongroom_postgres::{PgConfig, PgEngine};
use strongroom_store::format::KeyringEntry;
use strongroom_store::{Engine, Store, StoreOptions, TreeId};
use strongroom_test_support::disk::Needles;
use strongroom_test_support::pg::{self, PgServer};

fn needles_of(engine: &PgEngine, name: &str) -> Needles {
    let mut needles = Needles::new();
    let raw = engine
        .get(TreeId::Keyrings, name.as_bytes())
        .unwrap()
        .unwrap();
    let entry = KeyringEntry::parse_stored(&raw).unwrap();
    let prefix = entry.id.to_be_bytes();
    for t in [TreeId::Keks, TreeId::Deks] {
        for kv in engine.scan(t, &prefix, &prefix) {
            let (k, v) = kv.unwrap();
            needles.add(
                format!("{name} {t:?} {k:?}"),
                WrappedKey::parse(&v).unwrap().payload(),
            );
        }
    }
    for kv in engine.scan(TreeId::Records, &prefix, &prefix) {
        let (k, v) = kv.unwrap();
        // From the nonce on: the random part of a sealed record.
        needles.add(
            format!("{name} record {:?}", String::from_utf8_lossy(&k[8..])),
            &v[5..],
        );
    }
    needles
}

#[test]
fn a_destroyed_keyring_leaves_nothing_in_the_table_files() {
    let server = PgServer::start();
    let cfg = PgConfig::from_url(&server.url()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(SoftBackend::create(dir.path()).unwrap());
    let kr = |s: &str| KeyringName::new(s).unwrap();
    let store = Store::create_on(
        dir.path(),
        Box::new(connect(&cfg)),
        Arc::clone(&backend),
        &RootKeyName::new("service").unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    for name in ["gone", "kept"] {
        store.create_keyring(&kr(name), None).unwrap();
        for i in 0..40 {
            // Some values past PostgreSQL's 2 kB TOAST threshold: they live in the TOAST table.
            let len = if i % 8 == 0 { 6000 } else { 700 };
            let mut v = format!("{name}/{i}/").into_bytes();
            v.resize(len, b'.');
            store
                .put(&kr(name), format!("r{i}").as_bytes(), &v)
                .unwrap();
        }
        store.rotate_kek(&kr(name)).unwrap();
    }
    drop(store);
    let engine = connect(&cfg);
    let gone = needles_of(&engine, "gone");
    let kept = needles_of(&engine, "kept");
    drop(engine);
    assert!(gone.len() > 40, "{}", gone.len());
    // Everything on disk first: the scan must see what it looks for.
    let _ = server.psql("CHECKPOINT");
    let base = server.data_dir().join("base");
    assert_eq!(
        gone.find_in_dir(&base).len(),
        gone.len(),
        "the scan finds every piece before"
    );

    let store = Store::open_on(
        dir.path(),
        Box::new(connect(&cfg)),
        Arc::clone(&backend),
        StoreOptions::default(),
    )
    .unwrap();
    store.destroy_keyring_now(&kr("gone")).unwrap();
    assert!(
        store.pending_jobs().unwrap().is_empty(),
        "the compaction ran"
    );
    drop(store);
    let _ = server.psql("CHECKPOINT");

    let left = gone.find_in_dir(&base);
    assert!(
        left.is_empty(),
        "pieces of the destroyed keyring in the table files: {:?}",
        &left[..left.len().min(5)]
    );
    // The live keyring is still all there (the table was rewritten, not emptied).
    assert_eq!(kept.find_in_dir(&base).len(), kept.len());
    // The documented limit, reported: the WAL still holds what was written before.
    let in_wal = gone.find_in_dir(&server.data_dir().join("pg_wal")).len();
    eprintln!(
        "WAL still holds {in_wal} of {} pieces of the destroyed keyring (until its segments are recycled and overwritten)",
        gone.len()
    );
    let store = Store::open_on(
        dir.path(),
        Box::new(connect(&cfg)),
        backend,
        StoreOptions::default(),
    )
    .unwrap();
    assert!(store.get(&kr("gone"), b"r1").is_err());
    assert!(store.get(&kr("kept"), b"r1").unwrap().is_some());
    let _ = pg::unique_schema();
}
