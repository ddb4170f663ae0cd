//! Replicas of one store on one PostgreSQL schema (engines without the exclusive lock), here
//! as several `Store`s in one process over one backend: the key-state generation keeps them
//! coherent. A disable in one replica is refused by another within its poll interval; a key
//! change made through a replica that has not polled yet starts from the current state; key
//! changes racing from two replicas each apply whole, or are refused and change nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, connect, kr, rn};
use strongroom_core::{Backend, KeyState, SoftBackend};
use strongroom_store::{Store, StoreError, StoreOptions};
use strongroom_test_support::pg;

struct Fleet {
    _dir: tempfile::TempDir,
    replicas: Vec<Store>,
}

/// A store and `n` replicas of it (the first created it), each polling every `poll`.
fn fleet(n: usize, poll: Duration) -> Fleet {
    let schema = pg::unique_schema();
    let mut cfg = config(&schema);
    cfg.exclusive = false;
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(SoftBackend::create(dir.path()).unwrap());
    let options = || StoreOptions {
        fleet_poll: poll,
        ..StoreOptions::default()
    };
    let first = Store::create_on(
        dir.path(),
        Box::new(connect(&cfg)),
        Arc::clone(&backend),
        &rn("service"),
        options(),
    )
    .unwrap();
    let mut replicas = vec![first];
    for _ in 1..n {
        replicas.push(
            Store::open_on(
                dir.path(),
                Box::new(connect(&cfg)),
                Arc::clone(&backend),
                options(),
            )
            .unwrap(),
        );
    }
    Fleet {
        _dir: dir,
        replicas,
    }
}

/// Calls `f` until it returns `Some`, for up to `limit`; returns the value and how long it
/// took.
fn until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, t.elapsed());
        }
        assert!(t.elapsed() < limit, "not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_disable_in_one_replica_is_refused_by_another_within_the_interval() {
    let poll = Duration::from_millis(300);
    let f = fleet(2, poll);
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let k = kr("payroll");
    // B opened before the keyring existed: it sees it within the interval.
    a.create_keyring(&k, None).unwrap();
    a.put(&k, b"alice", b"100").unwrap();
    let (_, took) = until(Duration::from_secs(5), || {
        b.get(&k, b"alice").ok().flatten()
    });
    assert!(took <= poll + Duration::from_millis(500), "{took:?}");
    // B has the DEK cached now. A disables the keyring: B refuses within the interval.
    assert_eq!(b.get(&k, b"alice").unwrap().unwrap().expose(), b"100");
    a.disable_keyring(&k).unwrap();
    let (e, took) = until(Duration::from_secs(5), || b.get(&k, b"alice").err());
    assert!(
        matches!(e, StoreError::KeyringDisabled { .. }),
        "refused as disabled, not otherwise: {e}"
    );
    assert!(took <= poll + Duration::from_millis(500), "{took:?}");
    // Writes too.
    assert!(matches!(
        b.put(&k, b"bob", b"1"),
        Err(StoreError::KeyringDisabled { .. })
    ));
    // Enabled again in A: B serves again, from keys it unwraps anew.
    a.enable_keyring(&k).unwrap();
    let (v, _) = until(Duration::from_secs(5), || {
        b.get(&k, b"alice").ok().flatten()
    });
    assert_eq!(v.expose(), b"100");
}

#[test]
fn a_key_change_through_a_replica_that_has_not_polled_starts_from_the_current_state() {
    // B would not poll for an hour: only its key change's own check brings it up to date.
    let f = fleet(2, Duration::from_secs(3600));
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let k = kr("hr");
    a.create_keyring(&k, None).unwrap();
    a.disable_keyring(&k).unwrap();
    // B has not seen the keyring at all; its enable finds it disabled and enables it.
    b.enable_keyring(&k).unwrap();
    assert!(matches!(b.keyring(&k).unwrap().state, KeyState::Enabled));
    // A has not polled either (its view of the states may lag by its interval)...
    assert!(matches!(a.keyring(&k).unwrap().state, KeyState::Disabled));
    // ...but its key changes start from the current state: A rotates the DEK twice, then B's
    // rotation makes version 4, not a second version 2.
    a.rotate_dek(&k).unwrap();
    a.rotate_dek(&k).unwrap();
    b.rotate_dek(&k).unwrap();
    assert_eq!(b.keyring(&k).unwrap().current_dek.get(), 4);
    assert_eq!(b.keyring(&k).unwrap().dek_versions.len(), 4);
    assert!(a.verify_audit().unwrap().is_ok());
}

#[test]
fn key_changes_racing_from_two_replicas_apply_whole_or_not_at_all() {
    let f = fleet(2, Duration::from_millis(50));
    let k = kr("raced");
    f.replicas[0].create_keyring(&k, None).unwrap();
    f.replicas[0].put(&k, b"x", b"1").unwrap();
    let rounds = 25;
    let outcomes: Vec<(usize, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = f
            .replicas
            .iter()
            .map(|r| {
                let k = k.clone();
                s.spawn(move || {
                    let (mut ok, mut conflicts) = (0, 0);
                    for _ in 0..rounds {
                        match r.rotate_dek(&k) {
                            Ok(_) => ok += 1,
                            Err(StoreError::Conflict { .. }) => conflicts += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    (ok, conflicts)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let applied: usize = outcomes.iter().map(|(ok, _)| ok).sum();
    eprintln!("rotations applied, refused as conflicts, per replica: {outcomes:?}");
    // Every rotation that said it happened made exactly one new version; none was lost or
    // made twice.
    let info = f.replicas[1].keyring(&k).unwrap();
    assert_eq!(info.current_dek.get() as usize, 1 + applied, "{outcomes:?}");
    assert_eq!(info.dek_versions.len(), 1 + applied);
    for r in &f.replicas {
        // Each replica reads the record, and writes under the newest DEK.
        let (v, _) = until(Duration::from_secs(5), || r.get(&k, b"x").ok().flatten());
        assert_eq!(v.expose(), b"1");
        r.put(&k, b"y", b"2").unwrap();
    }
    assert!(f.replicas[0].verify_audit().unwrap().is_ok());
}
