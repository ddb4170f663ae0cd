//! Cases an outside review found (each failed before its fix): a store whose lock connection
//! was terminated and that another process then changed; a transaction body that ignores a
//! failed statement; calls from inside a `LocalSet` on a multi-thread runtime; a reserved word
//! as the schema name; a migration that fails halfway.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, connect, kr};
use strongroom_core::{Backend, RootKeyName, SoftBackend};
use strongroom_store::engine::{EngineTx, TxFailure, TxStop};
use strongroom_store::{Engine, Store, StoreError, StoreOptions, TreeId};
use strongroom_test_support::pg;

#[test]
fn a_store_whose_lock_was_lost_sees_what_another_process_did_meanwhile() {
    let schema = pg::unique_schema();
    let cfg = config(&schema);
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(SoftBackend::create(dir.path()).unwrap());
    let a = Store::create_on(
        dir.path(),
        Box::new(connect(&cfg)),
        Arc::clone(&backend),
        &RootKeyName::new("service").unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    a.create_keyring(&kr("payroll"), None).unwrap();
    a.put(&kr("payroll"), b"alice", b"100").unwrap();
    assert!(a.get(&kr("payroll"), b"alice").unwrap().is_some());
    // An administrator (or an idle timeout) ends the connection that holds A's lock...
    let killed = pg::shared().psql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND objid = hashtext('{schema}')::oid AND granted"
    ));
    assert_eq!(killed.trim(), "1", "the lock connection was found");
    // ...and another process opens the store meanwhile and disables the keyring.
    let b = Store::open_on(
        dir.path(),
        Box::new(connect(&cfg)),
        Arc::clone(&backend),
        StoreOptions::default(),
    )
    .unwrap();
    b.disable_keyring(&kr("payroll")).unwrap();
    drop(b);
    // A takes its lock back and must not serve the keyring from what it had in memory.
    let mut refused = false;
    for _ in 0..200 {
        match a.get(&kr("payroll"), b"alice") {
            Err(e) if e.is_access_refused() => {
                refused = true;
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
            Ok(v) => panic!(
                "a disabled keyring was served from stale state: {:?}",
                v.is_some()
            ),
        }
    }
    assert!(refused);
    assert!(matches!(
        a.keyring(&kr("payroll")).unwrap().state,
        strongroom_core::KeyState::Disabled
    ));
}

#[test]
fn a_transaction_that_ignores_a_failed_statement_commits_nothing_and_says_so() {
    let e = connect(&config(&pg::unique_schema()));
    e.insert(TreeId::Meta, b"x", b"0").unwrap();
    // Incompressible, so that it does not fit the index even after compression.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let huge: Vec<u8> = (0..9000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let r = e.transaction(&[TreeId::Meta, TreeId::Records], &|tx: &dyn EngineTx| {
        tx.insert(TreeId::Meta, b"x", b"1")
            .map_err(TxStop::Engine)?;
        // A key too large for the index: the statement fails, and the body goes on.
        let _ignored = tx.insert(TreeId::Records, &huge, b"v");
        Ok(())
    });
    assert!(matches!(r, Err(TxFailure::Engine(_))), "{r:?}");
    assert_eq!(
        e.get(TreeId::Meta, b"x").unwrap().as_deref(),
        Some(&b"0"[..])
    );
}

#[test]
fn calls_from_a_local_set_on_a_multi_thread_runtime_work() {
    let e = connect(&config(&pg::unique_schema()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let got = rt.block_on(local.run_until(async {
        e.insert(TreeId::Records, b"k", b"v").unwrap();
        e.get(TreeId::Records, b"k").unwrap()
    }));
    assert_eq!(got.as_deref(), Some(&b"v"[..]));
}

#[test]
fn reserved_words_are_schema_names_like_any_other() {
    for name in ["user", "select"] {
        let _ = pg::shared().psql(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"));
        let e = connect(&config(name));
        e.insert(TreeId::Records, b"k", b"v").unwrap();
        assert!(e.get(TreeId::Records, b"k").unwrap().is_some(), "{name}");
    }
}

#[test]
fn a_migration_that_fails_halfway_leaves_no_store_behind() {
    // The target refuses the records (as a full disk would): the migration fails, the target is
    // emptied again, and nothing there opens as a store.
    let schema = pg::unique_schema();
    let cfg = config(&schema);
    drop(connect(&cfg)); // creates the schema
    let _ = pg::shared().psql(&format!(
        "ALTER TABLE \"{schema}\".entries ADD CONSTRAINT no_records CHECK (tree <> 5) NOT VALID"
    ));
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(SoftBackend::create(dir.path()).unwrap());
    let s = Store::create(
        dir.path(),
        Arc::clone(&backend),
        &RootKeyName::new("service").unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    s.create_keyring(&kr("payroll"), None).unwrap();
    for i in 0..50 {
        s.put(&kr("payroll"), format!("k{i}").as_bytes(), b"v")
            .unwrap();
    }
    let target = connect(&cfg);
    let e = s.migrate_into(&target, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("writing into the target"), "{e}");
    for t in strongroom_store::engine::ALL_TREES {
        assert_eq!(target.count(t).unwrap(), 0, "{t:?} emptied again");
    }
    drop(target);
    let other = tempfile::tempdir().unwrap();
    let e = Store::open_on(
        other.path(),
        Box::new(connect(&cfg)),
        backend,
        StoreOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, StoreError::NotAStore { .. }), "{e}");
}
