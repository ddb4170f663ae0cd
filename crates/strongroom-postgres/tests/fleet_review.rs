//! An outside review of the fleet (several replicas of one store on one PostgreSQL schema):
//! tests that try to break the fleet's promises. Each test says what it expects; a test that
//! fails here fails because the promise is broken (its waits are bounded by the replicas' poll
//! intervals, with a generous margin).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::fleet::{Fleet, StopOnDrop, fleet_with, polling, retrying, until};
use common::{kr, rn};
use strongroom_core::{KeyState, KeyringName};
use strongroom_store::{Store, StoreError, StoreOptions, Write};
use strongroom_test_support::pg;

/// What the tests read from the rows themselves.
trait Rows {
    fn psql(&self, sql: &str) -> String;
    fn records_per_dek(&self) -> Vec<(u32, u64)>;
    fn records_digest(&self) -> String;
}

impl Rows for Fleet {
    /// `SELECT ...` on the schema's table (`{t}` in `sql` is the table).
    fn psql(&self, sql: &str) -> String {
        pg::shared().psql(&sql.replace("{t}", &format!("\"{}\".entries", self.schema)))
    }

    /// Rows of sealed records per DEK version (bytes 1..5 of a sealed record), over every
    /// keyring.
    fn records_per_dek(&self) -> Vec<(u32, u64)> {
        let rows = self.psql(
            "SELECT (get_byte(v, 1) << 24) | (get_byte(v, 2) << 16) | (get_byte(v, 3) << 8) | get_byte(v, 4), count(*) \
             FROM {t} WHERE tree = 5 GROUP BY 1 ORDER BY 1",
        );
        rows.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let (d, n) = l.split_once('|').unwrap();
                (d.trim().parse().unwrap(), n.trim().parse().unwrap())
            })
            .collect()
    }

    /// A digest of every record row (keys and sealed values).
    fn records_digest(&self) -> String {
        self.psql("SELECT count(*) || ':' || coalesce(md5(string_agg(k || v, '' ORDER BY k)), '-') FROM {t} WHERE tree = 5")
            .trim()
            .to_owned()
    }
}

// ============================================================================================
// (5) ids and versions across replicas
// ============================================================================================

/// Two replicas create keyrings of different names at the same time (each retrying on a
/// conflict): every keyring has an id of its own (their records never mix, a reopen loads the
/// catalog), and each replica writes and reads every keyring.
#[test]
fn keyrings_created_at_once_by_two_replicas_are_distinct_and_usable_from_both() {
    let f = fleet_with(2, |_| polling(Duration::from_millis(50)));
    let per = 8;
    let conflicts = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for (i, r) in f.replicas.iter().enumerate() {
            let conflicts = &conflicts;
            s.spawn(move || {
                for j in 0..per {
                    let k = kr(&format!("r{i}-k{j}"));
                    loop {
                        match r.create_keyring(&k, None) {
                            Ok(_) => break,
                            Err(StoreError::Conflict { .. }) => {
                                conflicts.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("create {k}: {e}"),
                        }
                    }
                }
            });
        }
    });
    eprintln!("conflicts: {}", conflicts.load(Ordering::Relaxed));
    let names: Vec<KeyringName> = (0..2)
        .flat_map(|i| (0..per).map(move |j| kr(&format!("r{i}-k{j}"))))
        .collect();
    // Every replica writes the same record key in every keyring, with the keyring's name.
    for (i, r) in f.replicas.iter().enumerate() {
        for k in &names {
            let (_, _) = until(Duration::from_secs(5), || {
                r.put(k, format!("from{i}").as_bytes(), k.as_str().as_bytes())
                    .ok()
            });
        }
    }
    for r in &f.replicas {
        for k in &names {
            for i in 0..2 {
                let v = r.get(k, format!("from{i}").as_bytes()).unwrap().unwrap();
                assert_eq!(v.expose(), k.as_str().as_bytes(), "keyring {k}");
            }
        }
    }
    // A fresh replica loads a catalog with no id used twice.
    let c = f.open(polling(Duration::from_millis(50))).unwrap();
    assert_eq!(c.keyrings().unwrap().len(), names.len());
    assert!(c.verify_audit().unwrap().is_ok());
}

/// KEK and DEK rotations of one keyring race from two replicas: no version is made twice, and
/// every record stays readable from both.
#[test]
fn kek_and_dek_rotations_racing_from_two_replicas_never_collide() {
    let f = fleet_with(2, |_| polling(Duration::from_millis(30)));
    let k = kr("rotated");
    f.replicas[0].create_keyring(&k, None).unwrap();
    std::thread::scope(|s| {
        for (i, r) in f.replicas.iter().enumerate() {
            let k = k.clone();
            s.spawn(move || {
                for j in 0..15 {
                    // Writes between the rotations (a write never fails for a key change).
                    until(Duration::from_secs(5), || {
                        r.put(&k, format!("r{i}-{j}").as_bytes(), b"v").ok()
                    });
                    (if (i + j) % 2 == 0 {
                        r.rotate_kek(&k).map(|_| ())
                    } else {
                        r.rotate_dek(&k).map(|_| ())
                    })
                    .or_else(|e| match e {
                        StoreError::Conflict { .. } => Ok(()),
                        e => Err(e),
                    })
                    .unwrap();
                }
            });
        }
    });
    for r in &f.replicas {
        for i in 0..2 {
            for j in 0..15 {
                let (v, _) = until(Duration::from_secs(5), || {
                    r.get(&k, format!("r{i}-{j}").as_bytes()).ok().flatten()
                });
                assert_eq!(v.expose(), b"v");
            }
        }
    }
    // The KEK rows are read from the database, the current version from the replica's view,
    // which lags by up to its interval (CI saw [9] against a view still at 8): wait for it.
    let (info, _) = until(Duration::from_secs(5), || {
        let info = f.replicas[0].keyring(&k).unwrap();
        let (stored, serving) = f.replicas[0].generations().unwrap();
        (stored == serving).then_some(info)
    });
    let kv: Vec<u32> = info.kek_versions.iter().map(|(v, _)| v.get()).collect();
    assert_eq!(
        kv,
        vec![info.current_kek.get()],
        "one KEK left after rotations"
    );
    let dv: Vec<u32> = info.dek_versions.iter().map(|v| v.get()).collect();
    assert_eq!(dv, (1..=info.current_dek.get()).collect::<Vec<_>>());
    assert!(f.replicas[1].verify_audit().unwrap().is_ok());
}

// ============================================================================================
// (2) a replica's view: flapping, a zero poll interval
// ============================================================================================

/// A replica polling before every operation (fleet_poll zero) sees each of another replica's
/// disables and enables at its very next operation, 20 times in a row.
#[test]
fn a_replica_polling_always_follows_flapping_at_once() {
    let f = fleet_with(2, |i| {
        polling(if i == 1 {
            Duration::ZERO
        } else {
            Duration::from_secs(3600)
        })
    });
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let k = kr("flap");
    a.create_keyring(&k, None).unwrap();
    a.put(&k, b"x", b"1").unwrap();
    for round in 0..20 {
        a.disable_keyring(&k).unwrap();
        match b.get(&k, b"x") {
            Err(StoreError::KeyringDisabled { .. }) => {}
            other => panic!("round {round}: read after a disable: {other:?}"),
        }
        match b.put(&k, b"y", b"2") {
            Err(StoreError::KeyringDisabled { .. }) => {}
            other => panic!("round {round}: write after a disable: {other:?}"),
        }
        a.enable_keyring(&k).unwrap();
        assert_eq!(
            b.get(&k, b"x").unwrap().unwrap().expose(),
            b"1",
            "round {round}"
        );
        b.put(&k, b"y", b"2").unwrap();
    }
    assert!(b.verify_audit().unwrap().is_ok());
}

/// A replica polling every 100 ms, reading all the time while another flaps the keyring: once
/// the flapping stops, it follows the last state within its interval (disabled: refused;
/// enabled: served), and never serves a value that is not the record's.
#[test]
fn reads_follow_flapping_within_the_interval() {
    let poll = Duration::from_millis(100);
    let f = fleet_with(2, |_| polling(poll));
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let k = kr("flapping");
    a.create_keyring(&k, None).unwrap();
    a.put(&k, b"x", b"1").unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match b.get(&k, b"x") {
                    Ok(Some(v)) => assert_eq!(v.expose(), b"1"),
                    Ok(None) => panic!("the record vanished"),
                    Err(StoreError::KeyringDisabled { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        });
        for _ in 0..30 {
            a.disable_keyring(&k).unwrap();
            std::thread::sleep(Duration::from_millis(7));
            a.enable_keyring(&k).unwrap();
            std::thread::sleep(Duration::from_millis(7));
        }
        a.disable_keyring(&k).unwrap();
        let (_, took) = until(Duration::from_secs(5), || {
            matches!(b.get(&k, b"x"), Err(StoreError::KeyringDisabled { .. })).then_some(())
        });
        assert!(took <= poll + Duration::from_millis(1500), "{took:?}");
        a.enable_keyring(&k).unwrap();
        until(Duration::from_secs(5), || b.get(&k, b"x").ok().flatten());
        stop.store(true, Ordering::Relaxed);
    });
    assert!(a.verify_audit().unwrap().is_ok());
}

// ============================================================================================
// (3) writes racing a disable or a destruction
// ============================================================================================

/// A replica writes without pause (puts, deletes, batches; audited and not) while another
/// disables the keyring: from the moment the disable has returned, no record row changes, and
/// every refusal says the keyring is disabled. The writer polls every 20 ms or every hour.
#[test]
fn no_write_lands_after_a_disable_returned() {
    for audited in [false, true] {
        for writer_poll in [Duration::from_millis(20), Duration::from_secs(3600)] {
            let f = fleet_with(2, |i| StoreOptions {
                fleet_poll: if i == 1 {
                    writer_poll
                } else {
                    Duration::from_millis(20)
                },
                audit_data_access: audited,
                ..StoreOptions::default()
            });
            let (a, b) = (&f.replicas[0], &f.replicas[1]);
            let k = kr("raced");
            a.create_keyring(&k, None).unwrap();
            for i in 0..20 {
                a.put(&k, format!("k{i}").as_bytes(), b"0").unwrap();
            }
            b.put(&k, b"warm", b"1").unwrap();
            let stop = AtomicBool::new(false);
            let landed = AtomicUsize::new(0);
            let other_errors = std::sync::Mutex::new(Vec::<String>::new());
            let (before, after) = std::thread::scope(|s| {
                let _stop = StopOnDrop(&stop);
                s.spawn(|| {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let key = format!("k{}", n % 20);
                        let r = match n % 3 {
                            0 => b.put(&k, key.as_bytes(), n.to_string().as_bytes()),
                            1 => b.delete(&k, key.as_bytes()).map(|_| ()),
                            _ => b.write_batch(
                                &k,
                                &[
                                    Write::Put(key.as_bytes(), b"batched"),
                                    Write::Delete(format!("k{}", (n + 7) % 20).as_bytes()),
                                ],
                            ),
                        };
                        match r {
                            Ok(()) => {
                                landed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(StoreError::KeyringDisabled { .. }) => {}
                            Err(e) => other_errors.lock().unwrap().push(e.to_string()),
                        }
                    }
                });
                std::thread::sleep(Duration::from_millis(300));
                a.disable_keyring(&k).unwrap();
                let before = f.records_digest();
                std::thread::sleep(Duration::from_millis(400));
                let after = f.records_digest();
                stop.store(true, Ordering::Relaxed);
                (before, after)
            });
            assert!(
                landed.load(Ordering::Relaxed) > 0,
                "the writer wrote before"
            );
            assert_eq!(
                before, after,
                "audited {audited}, poll {writer_poll:?}: records changed after the disable returned"
            );
            let errs = other_errors.into_inner().unwrap();
            assert!(
                errs.is_empty(),
                "audited {audited}, poll {writer_poll:?}: {errs:?}"
            );
            a.enable_keyring(&k).unwrap();
            assert!(a.verify_audit().unwrap().is_ok());
        }
    }
}

/// A replica writes without pause while another destroys the keyring: once the destruction has
/// returned (its records purged) no record of the keyring is left or comes back, and the
/// writer is refused as destroyed.
#[test]
fn no_record_survives_a_destruction_racing_writes() {
    for audited in [false, true] {
        let f = fleet_with(2, |i| StoreOptions {
            fleet_poll: if i == 1 {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(20)
            },
            audit_data_access: audited,
            ..StoreOptions::default()
        });
        let (a, b) = (&f.replicas[0], &f.replicas[1]);
        let k = kr("doomed");
        a.create_keyring(&k, None).unwrap();
        b.put(&k, b"warm", b"1").unwrap();
        let stop = AtomicBool::new(false);
        let other_errors = std::sync::Mutex::new(Vec::<String>::new());
        let (right_after, later) = std::thread::scope(|s| {
            let _stop = StopOnDrop(&stop);
            s.spawn(|| {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("k{n}");
                    let r = if n.is_multiple_of(2) {
                        b.put(&k, key.as_bytes(), b"v")
                    } else {
                        b.write_batch(
                            &k,
                            &[Write::Put(key.as_bytes(), b"v"), Write::Put(b"z", b"w")],
                        )
                    };
                    match r {
                        Ok(()) | Err(StoreError::KeyringDestroyed { .. }) => {}
                        Err(e) => other_errors.lock().unwrap().push(e.to_string()),
                    }
                }
            });
            std::thread::sleep(Duration::from_millis(300));
            if let Err(e) = a.destroy_keyring_now(&k) {
                panic!("audited {audited}: the destruction failed: {e}");
            }
            let right_after = f.records_digest();
            std::thread::sleep(Duration::from_millis(400));
            let later = f.records_digest();
            stop.store(true, Ordering::Relaxed);
            (right_after, later)
        });
        assert!(
            right_after.starts_with("0:"),
            "audited {audited}: records left: {right_after}"
        );
        assert!(
            later.starts_with("0:"),
            "audited {audited}: records came back: {later}"
        );
        let errs = other_errors.into_inner().unwrap();
        assert!(errs.is_empty(), "audited {audited}: {errs:?}");
        assert!(matches!(
            b.get(&k, b"warm"),
            Err(StoreError::KeyringDestroyed { .. })
        ));
        assert!(a.verify_audit().unwrap().is_ok());
    }
}

/// A re-encryption run by a replica that has not polled since another disabled the keyring:
/// it is a record write like any other, so it is refused as disabled and rewrites nothing.
#[test]
fn a_reencryption_through_a_replica_that_has_not_polled_never_writes_after_a_disable() {
    let f = fleet_with(2, |i| {
        polling(if i == 1 {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(20)
        })
    });
    let a = &f.replicas[0];
    let k = kr("reenc");
    a.create_keyring(&k, None).unwrap();
    for i in 0..30 {
        a.put(&k, format!("k{i}").as_bytes(), b"v").unwrap();
    }
    a.rotate_dek(&k).unwrap();
    // B opens now: it knows DEK 2 is current, and 30 records are under DEK 1.
    let b = f.open(polling(Duration::from_secs(3600))).unwrap();
    b.put(&k, b"warm", b"1").unwrap();
    a.disable_keyring(&k).unwrap();
    let before = f.records_digest();
    let r = b.reencrypt(&k, &mut |_| {});
    let after = f.records_digest();
    eprintln!(
        "reencrypt through B after A's disable: {r:?}; records per DEK: {:?}",
        f.records_per_dek()
    );
    assert!(
        matches!(r, Err(StoreError::KeyringDisabled { .. })),
        "refused as disabled: {r:?}"
    );
    assert_eq!(
        before, after,
        "records were rewritten under a disabled keyring"
    );
}

// ============================================================================================
// DEK retirement and re-encryption across replicas (data loss)
// ============================================================================================

/// A rotates the DEK, re-encrypts and so retires DEK 1. B, which has not polled since (its
/// DEK 1 still cached), re-encrypts: whatever it does, every record stays readable.
#[test]
fn a_reencryption_by_a_lagging_replica_never_seals_under_a_retired_dek() {
    let f = fleet_with(2, |i| {
        polling(if i == 1 {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(20)
        })
    });
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let k = kr("ledger");
    a.create_keyring(&k, None).unwrap();
    for i in 0..30 {
        a.put(&k, format!("k{i}").as_bytes(), b"v").unwrap();
    }
    // B has DEK 1 in its cache.
    assert_eq!(b.get(&k, b"k0").unwrap().unwrap().expose(), b"v");
    a.rotate_dek(&k).unwrap();
    let report = a.reencrypt(&k, &mut |_| {}).unwrap();
    assert_eq!(
        report.retired.iter().map(|v| v.get()).collect::<Vec<_>>(),
        vec![1]
    );
    let r = b.reencrypt(&k, &mut |_| {});
    eprintln!(
        "B's re-encryption: {r:?}; records per DEK: {:?}; DEKs: {:?}",
        f.records_per_dek(),
        a.keyring(&k).unwrap().dek_versions
    );
    let mut lost = Vec::new();
    for i in 0..30 {
        match a.get(&k, format!("k{i}").as_bytes()) {
            Ok(Some(v)) if v.expose() == b"v" => {}
            other => lost.push(format!("k{i}: {other:?}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of 30 records lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(3)]
    );
}

/// The same through a move: A moves the keyring to another root (its records re-encrypted,
/// the old DEK retired and the old KEK erased); B, lagging, re-encrypts. Every record stays
/// readable.
#[test]
fn a_reencryption_by_a_lagging_replica_after_a_move_keeps_every_record() {
    let f = fleet_with(2, |i| {
        polling(if i == 1 {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(20)
        })
    });
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let k = kr("moving");
    a.create_root(&rn("other")).unwrap();
    a.create_keyring(&k, None).unwrap();
    for i in 0..30 {
        a.put(&k, format!("k{i}").as_bytes(), b"v").unwrap();
    }
    assert_eq!(b.get(&k, b"k0").unwrap().unwrap().expose(), b"v");
    a.move_keyring(&k, &rn("other"), &mut |_| {}).unwrap();
    assert_eq!(a.keyring(&k).unwrap().moving_from, None);
    let r = b.reencrypt(&k, &mut |_| {});
    eprintln!(
        "B's re-encryption: {r:?}; records per DEK: {:?}",
        f.records_per_dek()
    );
    let mut lost = 0;
    for i in 0..30 {
        if !matches!(a.get(&k, format!("k{i}").as_bytes()), Ok(Some(_))) {
            lost += 1;
        }
    }
    assert_eq!(lost, 0, "{lost} of 30 records lost");
}

// ============================================================================================
// (1) root rotation and rewrap from a lagging replica
// ============================================================================================

/// A rotates root `other` (every KEK rewrapped under version 2). B, which has not polled,
/// runs the rewrap (`strongroom root rotate` resumes it): it must not move KEKs back under
/// version 1 (a change computed from a state another replica changed since).
#[test]
fn a_rewrap_by_a_lagging_replica_does_not_undo_a_root_rotation() {
    let f = fleet_with(2, |i| {
        polling(if i == 1 {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(20)
        })
    });
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let root = rn("other");
    a.create_root(&root).unwrap();
    let k = kr("under-other");
    a.create_keyring(&k, Some(&root)).unwrap();
    a.put(&k, b"x", b"1").unwrap();
    // B knows the root at version 1.
    assert_eq!(b.root(&root).unwrap().current.unwrap().get(), 1);
    a.rotate_root(&root, &mut |_| {}).unwrap();
    let under = |s: &Store| -> Vec<u32> {
        s.keyring(&k)
            .unwrap()
            .kek_versions
            .iter()
            .map(|(_, r)| r.as_ref().unwrap().version.get())
            .collect()
    };
    assert_eq!(under(a), vec![2]);
    let r = b.rewrap_root(&root, &mut |_| {});
    eprintln!("B's rewrap: {r:?}; KEKs under root versions {:?}", under(a));
    assert_eq!(
        under(a),
        vec![2],
        "KEKs moved back under the old root version"
    );
    // And the old version can be retired as A expects.
    a.retire_root_version(&root, strongroom_core::RootVersion::FIRST)
        .unwrap();
    assert_eq!(a.get(&k, b"x").unwrap().unwrap().expose(), b"1");
}

/// A moves a keyring to another root while B rotates its DEK and KEK over and over (each
/// retrying on conflicts): the move finishes (or says what to resume), and every record stays
/// readable from both replicas.
#[test]
fn a_move_racing_rotations_keeps_every_record() {
    let f = fleet_with(2, |_| polling(Duration::from_millis(30)));
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let k = kr("mover");
    a.create_root(&rn("other")).unwrap();
    a.create_keyring(&k, None).unwrap();
    for i in 0..600 {
        a.put(&k, format!("k{i}").as_bytes(), b"v").unwrap();
    }
    let stop = AtomicBool::new(false);
    let moved = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let r = if n % 3 == 0 {
                    b.rotate_kek(&k).map(|_| ())
                } else {
                    b.rotate_dek(&k).map(|_| ())
                };
                match r {
                    Ok(()) | Err(StoreError::Conflict { .. }) => {}
                    Err(e) => panic!("B's rotation: {e}"),
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let mut outcomes = Vec::new();
        for _ in 0..20 {
            let r = a.move_keyring(&k, &rn("other"), &mut |_| {});
            let done = r.is_ok() && a.keyring(&k).unwrap().moving_from.is_none();
            outcomes.push(r.map(|_| ()).map_err(|e| e.to_string()));
            if done {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        outcomes
    });
    eprintln!("move attempts: {moved:?}");
    // Finish whatever is left, with nothing racing.
    retrying(|| a.move_keyring(&k, &rn("other"), &mut |_| {}));
    let info = a.keyring(&k).unwrap();
    assert_eq!(info.root, rn("other"));
    assert_eq!(info.moving_from, None);
    for r in [a, b] {
        for i in 0..600 {
            let (v, _) = until(Duration::from_secs(5), || {
                r.get(&k, format!("k{i}").as_bytes()).ok().flatten()
            });
            assert_eq!(v.expose(), b"v");
        }
    }
    assert!(a.verify_audit().unwrap().is_ok());
}

// ============================================================================================
// (4) DEK quotas with three replicas and batches
// ============================================================================================

/// Three replicas, two threads each, write batches of 5 puts under a quota of 24 encryptions
/// per DEK: no batch fails (a rollover racing another replica's is the store's business), no
/// DEK seals more than 24 records (read from the rows), and every record reads back.
#[test]
fn three_replicas_writing_batches_never_exceed_a_quota_nor_fail() {
    let quota = 24u64;
    let f = fleet_with(3, |_| StoreOptions {
        fleet_poll: Duration::from_millis(20),
        dek_rollover_after: quota,
        ..StoreOptions::default()
    });
    let k = kr("quota");
    f.replicas[0].create_keyring(&k, None).unwrap();
    // Every replica knows the keyring (within its interval) before the race starts.
    for r in &f.replicas {
        until(Duration::from_secs(5), || r.keyring(&k).ok());
    }
    let batches = 25;
    let failures = std::sync::Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        for (i, r) in f.replicas.iter().enumerate() {
            for t in 0..2 {
                let (k, failures) = (k.clone(), &failures);
                s.spawn(move || {
                    for j in 0..batches {
                        let keys: Vec<String> =
                            (0..5).map(|n| format!("r{i}t{t}b{j}n{n}")).collect();
                        let ops: Vec<Write<'_>> = keys
                            .iter()
                            .map(|key| Write::Put(key.as_bytes(), b"v"))
                            .collect();
                        if let Err(e) = r.write_batch(&k, &ops) {
                            failures.lock().unwrap().push(format!("r{i}t{t}b{j}: {e}"));
                        }
                    }
                });
            }
        }
    });
    let failures = failures.into_inner().unwrap();
    let per_dek = f.records_per_dek();
    eprintln!(
        "failed batches: {}; records per DEK: {per_dek:?}",
        failures.len()
    );
    let over: Vec<_> = per_dek.iter().filter(|(_, n)| *n > quota).collect();
    assert!(
        over.is_empty(),
        "DEKs over their quota of {quota}: {over:?}"
    );
    assert!(
        failures.is_empty(),
        "{} batches failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    let total: u64 = per_dek.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 3 * 2 * batches as u64 * 5);
}

// ============================================================================================
// (6) and reopening: the audit chain and the catalog checked while other replicas work
// ============================================================================================

/// B verifies the audit chain over and over while A writes (audited) and rotates DEKs: the
/// chain is intact the whole time, so every verification must say so.
#[test]
fn verify_audit_on_one_replica_while_another_works_never_reports_a_break() {
    let f = fleet_with(2, |_| StoreOptions {
        fleet_poll: Duration::from_millis(50),
        audit_data_access: true,
        ..StoreOptions::default()
    });
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let k = kr("audited");
    a.create_keyring(&k, None).unwrap();
    for i in 0..600 {
        a.put(&k, format!("seed{i}").as_bytes(), b"v").unwrap();
    }
    let stop = AtomicBool::new(false);
    let verdicts = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if n.is_multiple_of(10) {
                    let _ = a.rotate_dek(&k);
                } else {
                    a.put(&k, format!("k{n}").as_bytes(), b"v").unwrap();
                }
            }
        });
        let mut verdicts = Vec::new();
        for _ in 0..15 {
            verdicts.push(match b.verify_audit() {
                Ok(Ok(_)) => "ok".to_owned(),
                Ok(Err(brk)) => format!("break at {}: {}", brk.seq, brk.problem),
                Err(e) => format!("error: {e}"),
            });
        }
        stop.store(true, Ordering::Relaxed);
        verdicts
    });
    let bad: Vec<&String> = verdicts.iter().filter(|v| *v != "ok").collect();
    eprintln!("verdicts: {verdicts:?}");
    assert!(b.verify_audit().unwrap().is_ok(), "quiet: it verifies");
    assert!(
        bad.is_empty(),
        "{} of {} false alarms, e.g. {}",
        bad.len(),
        verdicts.len(),
        bad[0]
    );
}

/// New replicas open while another makes key changes: every open succeeds (no false tamper
/// or rollback alarm), and the opened replica serves the keyring.
#[test]
fn a_replica_opens_while_another_changes_keys() {
    let f = fleet_with(1, |_| polling(Duration::from_millis(50)));
    let a = &f.replicas[0];
    let k = kr("busy");
    a.create_keyring(&k, None).unwrap();
    a.put(&k, b"x", b"1").unwrap();
    let stop = AtomicBool::new(false);
    let outcomes = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                retrying(|| a.rotate_dek(&k));
            }
        });
        let mut outcomes = Vec::new();
        for _ in 0..60 {
            outcomes.push(match f.open(polling(Duration::from_millis(50))) {
                Ok(r) => match r.get(&k, b"x") {
                    Ok(Some(v)) if v.expose() == b"1" => "ok".to_owned(),
                    other => format!("opened, then read {other:?}"),
                },
                Err(e) => format!("open failed: {e}"),
            });
        }
        stop.store(true, Ordering::Relaxed);
        outcomes
    });
    let bad: Vec<&String> = outcomes.iter().filter(|v| *v != "ok").collect();
    eprintln!("opens: {outcomes:?}");
    assert!(
        bad.is_empty(),
        "{} of {} opens failed, e.g. {}",
        bad.len(),
        outcomes.len(),
        bad[0]
    );
}

/// B opened first and never polls; A then changes everything (new keyrings, rotations, a
/// move, a destruction, a disable, a root rotation). B's next writes and key changes start
/// from the current state, a reopened B sees it all, and the chain verifies.
#[test]
fn a_lagging_replica_and_a_reopened_one_after_everything_changed() {
    let f = fleet_with(2, |i| {
        polling(if i == 1 {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(20)
        })
    });
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let (keep, gone, off, moved) = (kr("keep"), kr("gone"), kr("off"), kr("moved"));
    for k in [&keep, &gone, &off, &moved] {
        a.create_keyring(k, None).unwrap();
        a.put(k, b"x", b"old").unwrap();
    }
    for k in [&keep, &gone, &off, &moved] {
        assert_eq!(b.get(k, b"x").unwrap().unwrap().expose(), b"old");
    }
    a.create_root(&rn("other")).unwrap();
    a.rotate_dek(&keep).unwrap();
    a.rotate_kek(&keep).unwrap();
    a.put(&keep, b"x", b"new").unwrap();
    a.destroy_keyring_now(&gone).unwrap();
    a.disable_keyring(&off).unwrap();
    a.move_keyring(&moved, &rn("other"), &mut |_| {}).unwrap();
    a.rotate_root(&rn("service"), &mut |_| {}).unwrap();
    let fresh = kr("fresh");
    a.create_keyring(&fresh, None).unwrap();
    a.put(&fresh, b"x", b"f").unwrap();
    // B writes: the guard makes it take everything in.
    assert!(matches!(
        b.put(&gone, b"y", b"1"),
        Err(StoreError::KeyringDestroyed { .. })
    ));
    assert!(matches!(
        b.put(&off, b"y", b"1"),
        Err(StoreError::KeyringDisabled { .. })
    ));
    b.put(&moved, b"y", b"1").unwrap();
    b.put(&keep, b"y", b"1").unwrap();
    b.put(&fresh, b"y", b"1").unwrap();
    assert_eq!(b.get(&keep, b"x").unwrap().unwrap().expose(), b"new");
    assert_eq!(b.get(&moved, b"x").unwrap().unwrap().expose(), b"old");
    // A key change from B starts from the current state.
    b.rotate_dek(&keep).unwrap();
    assert_eq!(b.keyring(&keep).unwrap().current_dek.get(), 3);
    assert!(matches!(b.keyring(&off).unwrap().state, KeyState::Disabled));
    // A reopened replica.
    let c = f.open(polling(Duration::from_millis(20))).unwrap();
    assert_eq!(c.keyrings().unwrap().len(), 5);
    for (k, want) in [(&keep, &b"new"[..]), (&moved, b"old"), (&fresh, b"f")] {
        assert_eq!(c.get(k, b"x").unwrap().unwrap().expose(), want, "{k}");
        assert_eq!(c.get(k, b"y").unwrap().unwrap().expose(), b"1", "{k}");
    }
    assert!(c.verify_audit().unwrap().is_ok());
    assert!(b.verify_audit().unwrap().is_ok());
}

// ============================================================================================
// reads racing key changes elsewhere: no false integrity alarm
// ============================================================================================

/// B reads without pause (no key cache: every read unwraps its DEK through its KEK) while A
/// rotates the keyring's KEK over and over. The records are intact the whole time: no read
/// may fail, least of all with an integrity error ("restore the store from a backup").
#[test]
fn reads_racing_kek_rotations_elsewhere_never_fail_as_integrity_errors() {
    let f = fleet_with(2, |i| StoreOptions {
        fleet_poll: Duration::from_millis(50),
        cache_ttl: if i == 1 {
            Duration::ZERO
        } else {
            Duration::from_secs(300)
        },
        ..StoreOptions::default()
    });
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let k = kr("kek-rotated");
    a.create_keyring(&k, None).unwrap();
    a.put(&k, b"x", b"1").unwrap();
    until(Duration::from_secs(5), || b.get(&k, b"x").ok().flatten());
    let stop = AtomicBool::new(false);
    let (reads, errors) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            let _stop = StopOnDrop(&stop);
            for _ in 0..40 {
                retrying(|| a.rotate_kek(&k));
            }
        });
        let (mut reads, mut errors) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            reads += 1;
            match b.get(&k, b"x") {
                Ok(Some(v)) => assert_eq!(v.expose(), b"1"),
                other => errors.push(format!("{other:?}")),
            }
        }
        (reads, errors)
    });
    eprintln!(
        "{} of {reads} reads failed, e.g. {:?}",
        errors.len(),
        errors.first()
    );
    assert!(
        errors.is_empty(),
        "{} of {reads} reads failed, e.g. {}",
        errors.len(),
        errors[0]
    );
}

/// A rotates root `other` (its KEKs rewrapped under version 2). B, inside its poll interval
/// (an hour here; 1 s by default) and with nothing of the keyring cached yet, reads: its view
/// may lag, but the read must be served (the keys are all there), not refused as damage.
#[test]
fn a_lagging_replica_reads_after_a_root_rotation_elsewhere() {
    let f = fleet_with(1, |_| polling(Duration::from_millis(20)));
    let a = &f.replicas[0];
    let root = rn("other");
    a.create_root(&root).unwrap();
    let k = kr("under-other");
    a.create_keyring(&k, Some(&root)).unwrap();
    a.put(&k, b"x", b"1").unwrap();
    let b = f.open(polling(Duration::from_secs(3600))).unwrap();
    // B has polled (its first operation) and knows the keyring and root version 1.
    assert_eq!(b.root(&root).unwrap().current.unwrap().get(), 1);
    a.rotate_root(&root, &mut |_| {}).unwrap();
    let r = b.get(&k, b"x");
    eprintln!("B's read after A's root rotation: {r:?}");
    assert_eq!(r.unwrap().unwrap().expose(), b"1");
}

// ============================================================================================
// writes while another replica changes an unrelated keyring
// ============================================================================================

/// A rotates the DEK of keyring `busy` over and over (two threads); B writes to keyring
/// `quiet`, which nobody changes. B's writes are refused only when their own keyring changed:
/// none of them may fail.
///
/// (Review finding F8: with ten retries, 3 to 120 of about a thousand writes were refused as
/// conflicts; a write now keeps taking the changes in for up to three seconds.)
#[test]
fn writes_never_fail_for_key_changes_to_another_keyring() {
    let f = fleet_with(2, |_| polling(Duration::from_millis(50)));
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let (busy, quiet) = (kr("busy"), kr("quiet"));
    a.create_keyring(&busy, None).unwrap();
    a.create_keyring(&quiet, None).unwrap();
    until(Duration::from_secs(5), || b.put(&quiet, b"warm", b"1").ok());
    let stop = AtomicBool::new(false);
    let rotations = AtomicUsize::new(0);
    let (writes, failures) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if a.rotate_dek(&busy).is_ok() {
                        rotations.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let (mut writes, mut failures) = (0u64, Vec::new());
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(4) {
            writes += 1;
            let key = format!("k{writes}");
            let r = if writes % 2 == 0 {
                b.put(&quiet, key.as_bytes(), b"v")
            } else {
                b.write_batch(
                    &quiet,
                    &[Write::Put(key.as_bytes(), b"v"), Write::Delete(b"none")],
                )
            };
            if let Err(e) = r {
                failures.push(e.to_string());
            }
        }
        stop.store(true, Ordering::Relaxed);
        (writes, failures)
    });
    eprintln!(
        "{} rotations; {} of {writes} writes failed, e.g. {:?}",
        rotations.load(Ordering::Relaxed),
        failures.len(),
        failures.first()
    );
    assert!(
        failures.is_empty(),
        "{} of {writes} writes failed, e.g. {}",
        failures.len(),
        failures[0]
    );
}

/// A disables root `other`; B, which has not polled, writes to a keyring under it: refused as
/// the root is, nothing written (promise 3 for roots).
#[test]
fn a_write_through_a_lagging_replica_never_lands_after_a_root_disable() {
    for audited in [false, true] {
        let f = fleet_with(2, |i| StoreOptions {
            fleet_poll: if i == 1 {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(20)
            },
            audit_data_access: audited,
            ..StoreOptions::default()
        });
        let (a, b) = (&f.replicas[0], &f.replicas[1]);
        let root = rn("other");
        a.create_root(&root).unwrap();
        let k = kr("under");
        a.create_keyring(&k, Some(&root)).unwrap();
        until(Duration::from_secs(5), || b.put(&k, b"x", b"1").ok());
        // B's view is fixed now (it will not poll for an hour).
        std::thread::sleep(Duration::from_millis(50));
        b.put(&k, b"x", b"2").unwrap();
        a.disable_root(&root).unwrap();
        let before = f.records_digest();
        for r in [
            b.put(&k, b"x", b"3"),
            b.delete(&k, b"x").map(|_| ()),
            b.write_batch(&k, &[Write::Put(b"y", b"1")]),
        ] {
            assert!(
                matches!(r, Err(StoreError::RootDisabled { .. })),
                "audited {audited}: {r:?}"
            );
        }
        assert_eq!(before, f.records_digest(), "audited {audited}");
    }
}

// ============================================================================================
// key changes while another replica audits its data access
// ============================================================================================

/// B reads one record without pause, auditing every read (audit_data_access, two threads);
/// A destroys other keyrings and disables (and enables) this one: each must get through (at
/// worst refused as a conflict, which a retry gets past), not fail on storage contention.
#[test]
fn a_revocation_gets_through_while_another_replica_audits_its_reads() {
    let f = fleet_with(2, |_| StoreOptions {
        fleet_poll: Duration::from_millis(50),
        audit_data_access: true,
        ..StoreOptions::default()
    });
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let read = kr("read");
    let others: Vec<KeyringName> = (0..3).map(|i| kr(&format!("other{i}"))).collect();
    a.create_keyring(&read, None).unwrap();
    for o in &others {
        a.create_keyring(o, None).unwrap();
    }
    a.put(&read, b"x", b"1").unwrap();
    until(Duration::from_secs(5), || b.get(&read, b"x").ok().flatten());
    let stop = AtomicBool::new(false);
    let outcomes = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = b.get(&read, b"x");
                }
            });
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut outcomes = Vec::new();
        let attempt = |f: &dyn Fn() -> Result<(), StoreError>| {
            let t = Instant::now();
            let mut tries = Vec::new();
            for _ in 0..5 {
                match f() {
                    Ok(()) => return (format!("ok after {tries:?}"), t.elapsed()),
                    Err(e @ StoreError::Conflict { .. }) => tries.push(format!("conflict: {e}")),
                    Err(e) => return (format!("failed: {e}"), t.elapsed()),
                }
            }
            (format!("still refused: {tries:?}"), t.elapsed())
        };
        for o in &others {
            outcomes.push(attempt(&|| a.destroy_keyring_now(o).map(|_| ())));
            outcomes.push(attempt(&|| a.disable_keyring(&read)));
            outcomes.push(attempt(&|| a.enable_keyring(&read)));
        }
        outcomes
    });
    eprintln!("{outcomes:?}");
    for (o, took) in &outcomes {
        assert!(o.starts_with("ok"), "{o} (after {took:?})");
    }
}
