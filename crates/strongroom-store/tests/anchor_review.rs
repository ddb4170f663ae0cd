//! Review of the fleet's audit anchor in the HSM (fleet_anchor.rs): a store moved between one
//! process and a fleet, a rollback laundered by a running replica, a forged or foreign anchor, the
//! anchor objects deleted, the HSM down at open, two replicas committing at once, a running
//! replica after another accepted a rollback, a fleet restored from a backup.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use strongroom_core::{Backend, KeyringName, RootKeyName};
use strongroom_pkcs11::Pkcs11Backend;
use strongroom_postgres::{PgConfig, PgEngine};
use strongroom_store::{Store, StoreError, StoreOptions};
use strongroom_test_support::pg;
use strongroom_test_support::softhsm::Token;
use strongroom_test_support::softhsm_tests;
use strongroom_test_support::wrappers::TestBackend;

fn backend_ns(token: &Token, ns: &str) -> Arc<Pkcs11Backend> {
    common::pkcs11_backend_in(token, ns)
}

fn backend(token: &Token) -> Arc<Pkcs11Backend> {
    common::pkcs11_backend(token)
}

fn cfg(url: &str, schema: &str, exclusive: bool) -> PgConfig {
    common::pg_config_at(url, schema, exclusive)
}

/// A fleet's configuration on a new schema of the shared server.
fn shared_cfg() -> PgConfig {
    cfg(&pg::shared().url(), &pg::unique_schema(), false)
}

fn k() -> KeyringName {
    KeyringName::new("payroll").unwrap()
}

fn kn(s: &str) -> KeyringName {
    KeyringName::new(s).unwrap()
}

fn opts(replica: &str) -> StoreOptions {
    StoreOptions {
        replica: replica.into(),
        ..StoreOptions::default()
    }
}

fn create(dir: &Path, cfg: &PgConfig, b: Arc<dyn Backend>) -> Store {
    Store::create_on(
        dir,
        Box::new(PgEngine::connect(cfg).unwrap()),
        b,
        &RootKeyName::new("service").unwrap(),
        opts("a"),
    )
    .unwrap()
}

fn open(dir: &Path, cfg: &PgConfig, b: Arc<dyn Backend>) -> Result<Store, StoreError> {
    Store::open_on(
        dir,
        Box::new(PgEngine::connect(cfg).unwrap()),
        b,
        opts("replica"),
    )
}

fn accept(dir: &Path, cfg: &PgConfig, b: Arc<dyn Backend>) -> Result<Store, StoreError> {
    Store::open_on_accepting_rollback(
        dir,
        Box::new(PgEngine::connect(cfg).unwrap()),
        b,
        opts("accepting"),
    )
}

/// The sequence number an anchor value names (byte 2, seq u64 BE, hash, mac).
fn seq_of(a: &[u8]) -> Option<u64> {
    (a.len() == 73 && a[0] == 2).then(|| u64::from_be_bytes(a[1..9].try_into().unwrap()))
}

fn newest(b: &dyn Backend) -> Option<u64> {
    b.audit_anchors()
        .unwrap()
        .iter()
        .filter_map(|a| seq_of(a))
        .max()
}

fn head(s: &Store) -> u64 {
    s.verify_audit().unwrap().unwrap().entries
}

fn dynb(b: &Arc<Pkcs11Backend>) -> Arc<dyn Backend> {
    Arc::clone(b) as Arc<dyn Backend>
}

softhsm_tests! {
    // A fleet's store opened by one process (fleet = false: maintenance with the fleet stopped,
    // or a CLI command configured without `fleet`): no file was ever written (the HSM holds the
    // anchor), and the exclusive engine does not look in the HSM.
    fn a_store_made_by_a_fleet_opens_as_one_process(token) {
        let url = pg::shared().url();
        let schema = pg::unique_schema();
        let shared = cfg(&url, &schema, false);
        let b = backend(token);
        let dir = tempfile::tempdir().unwrap();
        let a = create(dir.path(), &shared, dynb(&b));
        a.create_keyring(&k(), None).unwrap();
        a.put(&k(), b"alice", b"100").unwrap();
        drop(a);
        assert!(newest(&*b).is_some());
        let one = open(dir.path(), &cfg(&url, &schema, true), dynb(&b));
        assert!(one.is_ok(), "a healthy fleet store refused as one process: {:?}", one.err());
        let one = one.unwrap();
        assert_eq!(one.get(&k(), b"alice").unwrap().unwrap().expose(), b"100");
    }

    // A store run as one process (file anchor), then as a fleet (anchor in the HSM; the file is
    // left as it was), rolled back on purpose to a copy from before the file's entry and the
    // rollback accepted: the stale file then names an entry the log no longer has.
    fn an_accepted_rollback_leaves_no_stale_file_anchor_behind(token) {
        let url = pg::shared().url();
        let schema = pg::unique_schema();
        let one = cfg(&url, &schema, true);
        let shared = cfg(&url, &schema, false);
        let b = backend(token);
        let dir = tempfile::tempdir().unwrap();
        let a = create(dir.path(), &one, dynb(&b));
        a.create_keyring(&k(), None).unwrap();
        drop(a);
        let copy = common::dump(&PgEngine::connect(&shared).unwrap());
        let a = open(dir.path(), &one, dynb(&b)).unwrap();
        a.create_keyring(&kn("k2"), None).unwrap();
        a.create_keyring(&kn("k3"), None).unwrap();
        drop(a);
        assert!(dir.path().join(strongroom_store::ANCHOR_FILE).exists());
        // Now a fleet: the HSM holds the anchor from here on.
        let a = open(dir.path(), &shared, dynb(&b)).unwrap();
        a.create_keyring(&kn("k4"), None).unwrap();
        drop(a);
        assert!(newest(&*b).is_some());
        // Put back on purpose, and accepted.
        common::replace_all(&PgEngine::connect(&shared).unwrap(), &copy);
        let e = open(dir.path(), &shared, dynb(&b)).unwrap_err();
        assert!(matches!(e, StoreError::RolledBack { .. }), "{e:?}");
        drop(accept(dir.path(), &shared, dynb(&b)).unwrap());
        // The fleet opens; its log is whole.
        let a = open(dir.path(), &shared, dynb(&b)).unwrap();
        let v = a.verify_audit().unwrap();
        assert!(v.is_ok(), "after an accepted rollback, verify_audit on this replica: {v:?}");
        drop(a);
        // And as one process again.
        let r = open(dir.path(), &one, dynb(&b));
        assert!(r.is_ok(), "after an accepted rollback, as one process: {:?}", r.err());
    }

    // A copy is taken; refused operations are audited (entries that do not move the key-state
    // generation); the copy is put back, which loses those entries. A replica that was running
    // all along does not reload (the generation is the one it serves), keeps committing on the
    // rolled-back log, and once past the old anchor writes one over it: the rollback is
    // laundered, and the anchor is never compared with the entry it names.
    fn a_rollback_is_not_laundered_by_a_running_replica(token) {
        let shared = shared_cfg();
        let b = backend(token);
        let dir = tempfile::tempdir().unwrap();
        let a = create(dir.path(), &shared, dynb(&b));
        a.create_keyring(&k(), None).unwrap();
        let raw = PgEngine::connect(&shared).unwrap();
        let copy = common::dump(&raw);
        let before = head(&a);
        for _ in 0..3 {
            assert!(a.disable_keyring(&kn("missing")).is_err());
        }
        let anchored = newest(&*b).unwrap();
        assert!(anchored >= before + 3, "refusals are audited and anchored: {before} {anchored}");
        common::replace_all(&raw, &copy);
        // A new replica is refused now...
        let e = open(tempfile::tempdir().unwrap().path(), &shared, dynb(&b)).unwrap_err();
        assert!(matches!(e, StoreError::RolledBack { .. }), "{e:?}");
        // ...but the running one keeps committing on the rolled-back log.
        let mut refused = None;
        for i in 0..5 {
            if let Err(e) = a.create_keyring(&kn(&format!("later{i}")), None) {
                refused = Some(e);
                break;
            }
        }
        let fresh = tempfile::tempdir().unwrap();
        let later = open(fresh.path(), &shared, dynb(&b));
        let verified = later.as_ref().ok().map(|s| s.verify_audit().unwrap());
        assert!(
            refused.is_some() || later.is_err() || verified.as_ref().is_some_and(Result::is_err),
            "the rollback (entries {}..={anchored} lost) went unnoticed: the running replica committed on it, the anchor is now {:?}, a new replica opens and verify_audit says {verified:?}",
            before + 1,
            newest(&*b)
        );
    }

    // An anchor object with a higher sequence and a MAC that is not the store's (forged, or
    // another store's): not this store's anchor, so ignored (one that decided would let a
    // leftover of another store lock this one out, and a forger without the token's PIN cannot
    // put one there anyway); the genuine one still counts, and the next write removes it.
    fn a_forged_anchor_ahead_of_the_log_is_ignored_and_removed(token) {
        let shared = shared_cfg();
        let b = backend(token);
        let dir = tempfile::tempdir().unwrap();
        let a = create(dir.path(), &shared, dynb(&b));
        a.create_keyring(&k(), None).unwrap();
        drop(a);
        let genuine = b.audit_anchors().unwrap().remove(0);
        let mut forged = genuine.clone();
        forged[1..9].copy_from_slice(&1000u64.to_be_bytes());
        b.put_audit_anchor(&forged, &[]).unwrap();
        let a = open(dir.path(), &shared, dynb(&b)).unwrap();
        let head = a.verify_audit().unwrap().unwrap().entries;
        assert_eq!(a.anchor_in_backend(), Some(Some(head)), "the genuine one counts");
        a.create_keyring(&kn("k2"), None).unwrap();
        let there = b.audit_anchors().unwrap();
        assert_eq!(there.len(), 1, "the forged one is gone with the next write: {there:?}");
        assert_ne!(there[0], forged);
    }

    // Garbage (not an anchor at all) in an anchor object next to the genuine one: ignored, and
    // gone with the next write.
    fn garbage_in_an_anchor_object_is_ignored_and_cleaned(token) {
        let shared = shared_cfg();
        let b = backend(token);
        let dir = tempfile::tempdir().unwrap();
        let a = create(dir.path(), &shared, dynb(&b));
        a.create_keyring(&k(), None).unwrap();
        b.put_audit_anchor(b"not an anchor", &[]).unwrap();
        b.put_audit_anchor(&[0u8; 73], &[]).unwrap();
        assert_eq!(b.audit_anchors().unwrap().len(), 3);
        drop(a);
        let a = open(tempfile::tempdir().unwrap().path(), &shared, dynb(&b)).unwrap();
        a.create_keyring(&kn("k2"), None).unwrap();
        assert_eq!(b.audit_anchors().unwrap().len(), 1, "the next anchor replaces what it read");
        assert_eq!(newest(&*b), Some(head(&a)));
    }

    // The anchor objects deleted from the token (by someone with the PIN, or a token cleaned up
    // by hand): a new replica is refused, and should say where the missing anchor was kept
    // (the HSM), not name a file in its own empty directory.
    fn anchors_deleted_from_the_token(token) {
        let shared = shared_cfg();
        let b = backend(token);
        let dir = tempfile::tempdir().unwrap();
        let a = create(dir.path(), &shared, dynb(&b));
        a.create_keyring(&k(), None).unwrap();
        while !b.audit_anchors().unwrap().is_empty() {
            let _ = token.pkcs11_tool(&["--delete-object", "--type", "data", "--label", "strongroom/anchor"]);
        }
        let fresh = tempfile::tempdir().unwrap();
        let e = open(fresh.path(), &shared, dynb(&b)).unwrap_err();
        assert!(e.is_integrity(), "{e:?}");
        // The running replica anchors anew with its next commit.
        a.create_keyring(&kn("k2"), None).unwrap();
        assert_eq!(newest(&*b), Some(head(&a)));
        assert!(open(fresh.path(), &shared, dynb(&b)).is_ok());
        assert!(
            e.to_string().contains("HSM") || e.to_string().contains("backend"),
            "a fleet replica whose anchor in the HSM is gone is told: {e}"
        );
    }

    // The HSM down at open, the database rolled back meanwhile: the replica opens without keys
    // (nothing can be verified) and, once the HSM is back, refuses to serve the rolled-back
    // state.
    fn hsm_down_at_open_then_back_still_catches_the_rollback(token) {
        let shared = shared_cfg();
        let p = backend(token);
        let f = TestBackend::new(dynb(&p));
        let dir = tempfile::tempdir().unwrap();
        let a = create(dir.path(), &shared, Arc::clone(&f) as Arc<dyn Backend>);
        a.create_keyring(&k(), None).unwrap();
        a.put(&k(), b"alice", b"100").unwrap();
        let raw = PgEngine::connect(&shared).unwrap();
        let copy = common::dump(&raw);
        a.disable_keyring(&k()).unwrap();
        drop(a);
        common::replace_all(&raw, &copy);
        f.set_device_down(true);
        let fresh = tempfile::tempdir().unwrap();
        let r = open(fresh.path(), &shared, Arc::clone(&f) as Arc<dyn Backend>);
        f.set_device_down(false);
        match r {
            Ok(r) => {
                let got = r.get(&k(), b"alice");
                assert!(
                    got.as_ref().is_err_and(StoreError::is_integrity),
                    "a rolled-back database served after the HSM came back: {:?}",
                    got.map(|v| v.map(|v| v.expose().to_vec()))
                );
                // No anchor file stood in while the HSM was down.
                assert!(!fresh.path().join(strongroom_store::ANCHOR_FILE).exists());
            }
            Err(e) => assert!(!matches!(e, StoreError::RolledBack { .. }) || e.is_integrity(), "{e:?}"),
        }
        let e = open(fresh.path(), &shared, Arc::clone(&f) as Arc<dyn Backend>).unwrap_err();
        assert!(matches!(e, StoreError::RolledBack { .. }), "{e:?}");
    }

    // The anchor cannot be written while the HSM is down (a commit goes through on keys in
    // cache): the file stands in, in that replica's directory. Later the fleet accepts a
    // rollback on purpose; that replica's stale file must not make it report a broken log.
    fn a_file_written_while_the_hsm_was_down_does_not_outlive_an_accepted_rollback(token) {
        let shared = shared_cfg();
        let p = backend(token);
        let f = TestBackend::new(dynb(&p));
        let fb = || Arc::clone(&f) as Arc<dyn Backend>;
        let dir = tempfile::tempdir().unwrap();
        let a = create(dir.path(), &shared, fb());
        a.create_keyring(&k(), None).unwrap();
        a.put(&k(), b"alice", b"100").unwrap();
        let raw = PgEngine::connect(&shared).unwrap();
        let copy = common::dump(&raw);
        // Audited refusals need no HSM call but the anchor's.
        f.set_device_down(true);
        for _ in 0..3 {
            assert!(a.disable_keyring(&kn("missing")).is_err());
        }
        f.set_device_down(false);
        let wrote_file = dir.path().join(strongroom_store::ANCHOR_FILE).exists();
        a.create_keyring(&kn("k2"), None).unwrap();
        drop(a);
        common::replace_all(&raw, &copy);
        drop(accept(tempfile::tempdir().unwrap().path(), &shared, fb()).unwrap());
        let a = open(dir.path(), &shared, fb()).unwrap();
        let v = a.verify_audit().unwrap();
        assert!(
            v.is_ok(),
            "(anchor file written while the HSM was down: {wrote_file}) after an accepted rollback, verify_audit on that replica: {v:?}"
        );
    }

    // Two replicas committing key changes at once while new replicas keep opening: never a false
    // RolledBack, the anchor never ahead of the log, and at the end the anchor is at the head
    // and one object is left.
    fn two_replicas_committing_at_once_raise_no_false_alarm(token) {
        let shared = shared_cfg();
        let b = backend(token);
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let a = create(d1.path(), &shared, dynb(&b));
        a.create_keyring(&k(), None).unwrap();
        let c = open(d2.path(), &shared, dynb(&b)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::scope(|s| {
            let mut writers = Vec::new();
            for (name, st) in [("a", &a), ("c", &c)] {
                writers.push(s.spawn(move || {
                    let mut done = 0;
                    let mut i = 0;
                    while done < 12 && i < 200 {
                        i += 1;
                        match st.create_keyring(&kn(&format!("{name}{done}")), None) {
                            Ok(_) => done += 1,
                            Err(StoreError::Conflict { .. } | StoreError::InUse(_)) => {}
                            Err(e) => panic!("{name}: {e:?}"),
                        }
                    }
                    done
                }));
            }
            let stop2 = Arc::clone(&stop);
            let shared2 = shared.clone();
            let b2 = Arc::clone(&b);
            let checker = s.spawn(move || {
                let mut opens = 0;
                while !stop2.load(Ordering::SeqCst) {
                    let d = tempfile::tempdir().unwrap();
                    match open(d.path(), &shared2, dynb(&b2)) {
                        Ok(r) => {
                            // Anchor read before the head: never ahead of it.
                            let anchored = newest(&*b2).unwrap();
                            let h = r.verify_audit().unwrap().map(|r| r.entries);
                            if let Ok(h) = h {
                                assert!(anchored <= h, "anchor {anchored} ahead of the log {h}");
                            }
                            opens += 1;
                        }
                        Err(e) => panic!("a new replica refused while two commit: {e:?}"),
                    }
                }
                opens
            });
            for w in writers {
                assert_eq!(w.join().unwrap(), 12);
            }
            stop.store(true, Ordering::SeqCst);
            assert!(checker.join().unwrap() > 0);
        });
        let h = head(&a);
        assert_eq!(newest(&*b), Some(h), "the anchor lags the log at the end");
        assert!(b.audit_anchors().unwrap().len() <= 2, "{:?}", b.audit_anchors().unwrap().len());
    }

    // A replica running while the database is put back (its generation is then behind) refuses
    // to serve; once another replica accepts the rollback, it serves again, without a restart.
    fn a_running_replica_recovers_after_another_accepts_the_rollback(token) {
        let shared = shared_cfg();
        let b = backend(token);
        let dir = tempfile::tempdir().unwrap();
        let a = create(dir.path(), &shared, dynb(&b));
        a.create_keyring(&k(), None).unwrap();
        a.put(&k(), b"alice", b"100").unwrap();
        let raw = PgEngine::connect(&shared).unwrap();
        let copy = common::dump(&raw);
        a.disable_keyring(&k()).unwrap();
        common::replace_all(&raw, &copy);
        let h0 = a.audit_entries(1).count();
        let e = a.create_keyring(&kn("k2"), None).unwrap_err();
        let after_refusal = a.audit_entries(1).count();
        assert!(e.is_integrity() || matches!(e, StoreError::Conflict { .. } | StoreError::InUse(_)), "{e:?}");
        // Once it took the rolled-back database in, it must go on refusing it.
        let second = a.create_keyring(&kn("k2"), None);
        assert!(
            second.is_err(),
            "after {e:?}, the running replica committed on the rolled-back database (log {h0} entries after the put-back, {after_refusal} after the refusal was audited, head now {}, anchor {:?})",
            head(&a),
            newest(&*b)
        );
        drop(accept(tempfile::tempdir().unwrap().path(), &shared, dynb(&b)).unwrap());
        let mut last = None;
        for _ in 0..5 {
            match a.create_keyring(&kn("k3"), None) {
                Ok(_) => { last = None; break; }
                Err(e) => { last = Some(e); std::thread::sleep(std::time::Duration::from_millis(300)); }
            }
        }
        assert!(last.is_none(), "the running replica after the rollback was accepted: {last:?}");
        assert_eq!(a.get(&k(), b"alice").unwrap().unwrap().expose(), b"100");
    }

    // A fleet whose database was lost, restored from a backup into an empty schema: the backup's
    // anchor (a file in the directory) is ignored for the HSM's, newer: refused as a rollback
    // until accepted. (What an operator must do.)
    fn a_fleet_restored_from_a_backup_needs_accept_rollback(token) {
        let shared = shared_cfg();
        let b = backend(token);
        let dir = tempfile::tempdir().unwrap();
        let a = create(dir.path(), &shared, dynb(&b));
        a.create_keyring(&k(), None).unwrap();
        a.put(&k(), b"alice", b"100").unwrap();
        let bk = tempfile::tempdir().unwrap();
        let file = bk.path().join("backup.srbk");
        a.backup(&file).unwrap();
        a.create_keyring(&kn("k2"), None).unwrap();
        drop(a);
        let shared2 = shared_cfg();
        let rdir = tempfile::tempdir().unwrap();
        Store::restore_into(&file, rdir.path(), Box::new(PgEngine::connect(&shared2).unwrap())).unwrap();
        let e = open(rdir.path(), &shared2, dynb(&b)).unwrap_err();
        assert!(matches!(e, StoreError::RolledBack { .. }), "{e:?}");
        let r = accept(rdir.path(), &shared2, dynb(&b)).unwrap();
        assert_eq!(r.get(&k(), b"alice").unwrap().unwrap().expose(), b"100");
        drop(r);
        // The accept made the restored copy the store, for the anchor the namespace keeps: the
        // original database (still there, further along, on another branch of the log from
        // the restored head on) is refused now. Accept a restore only where it replaces the
        // live store (README, "Running a fleet").
        let e = open(tempfile::tempdir().unwrap().path(), &shared, dynb(&b)).unwrap_err();
        assert!(matches!(e, StoreError::RolledBack { .. }), "{e:?}");
    }

    // Another store's anchor (another namespace's, genuine under ITS audit key) left in this
    // namespace, with a higher sequence (a token cleaned up by hand: roots and claim removed,
    // the new kind of object forgotten). A new store created there must either refuse at
    // create or work: never be created and then refuse every open.
    fn a_leftover_anchor_of_another_store_does_not_brick_a_new_one(token) {
        let url = pg::shared().url();
        let old_b = backend_ns(token, "old");
        let old_cfg = cfg(&url, &pg::unique_schema(), false);
        let old = create(tempfile::tempdir().unwrap().path(), &old_cfg, dynb(&old_b));
        for i in 0..5 {
            old.create_keyring(&kn(&format!("o{i}")), None).unwrap();
        }
        let leftover = old_b.audit_anchors().unwrap().remove(0);
        drop(old);
        let b = backend(token);
        b.put_audit_anchor(&leftover, &[]).unwrap();
        let shared = cfg(&url, &pg::unique_schema(), false);
        let dir = tempfile::tempdir().unwrap();
        let created = Store::create_on(
            dir.path(),
            Box::new(PgEngine::connect(&shared).unwrap()),
            dynb(&b),
            &RootKeyName::new("service").unwrap(),
            opts("a"),
        );
        let a = match created {
            Ok(a) => a,
            // Refused at create: acceptable, if it says why.
            Err(e) => {
                assert!(e.to_string().contains("anchor"), "create refused for another reason: {e}");
                return;
            }
        };
        let first = a.create_keyring(&k(), None);
        drop(a);
        let r = open(dir.path(), &shared, dynb(&b));
        assert!(
            r.is_ok(),
            "created on a namespace with a foreign anchor ({first:?}), then refused at open: {:?}; anchors {:?}",
            r.err(),
            b.audit_anchors().unwrap().iter().map(|a| seq_of(a)).collect::<Vec<_>>()
        );
    }
}
