//! Review of the leases on long jobs (`crates/strongroom-store/src/lease.rs`) on a shared
//! PostgreSQL schema: races, takeovers, panics, stalls of the database, exclusive reopen,
//! backups, due destructions at open, busy purges and compactions, a busy rewrap after a root
//! rotation.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use common::fleet::{
    Fleet, fleet_with, job_options, keyring_to_reencrypt, lease_bytes, paused_after_first_step,
    raw_leases, until,
};
use common::{connect, kr, rn};
use strongroom_postgres::PgEngine;
use strongroom_store::engine::{EngineTx, TxStop};
use strongroom_store::{
    AuditOp, Engine, Outcome, PendingJob, Store, StoreError, StoreOptions, TreeId,
};

fn opts(i: usize, lease: Duration) -> StoreOptions {
    job_options(i, lease)
}

fn fleet(n: usize, lease: Duration) -> Fleet {
    fleet_with(n, |i| opts(i, lease))
}

fn expiry_of(v: &[u8]) -> u64 {
    u64::from_be_bytes(v[9..17].try_into().unwrap())
}

/// A live lease of another replica (`replica-9`) on `job`, for a minute.
fn foreign_lease(raw: &PgEngine, job: &str) {
    let now = raw.clock_ms().unwrap();
    raw.insert(
        TreeId::Jobs,
        format!("lease/{job}").as_bytes(),
        &lease_bytes(1, now + 60_000, "replica-9#0000000000000009"),
    )
    .unwrap();
}

fn batch_replicas(s: &Store) -> Vec<String> {
    s.audit_entries(1)
        .map(Result::unwrap)
        .filter(|e| e.detail.starts_with("batch of"))
        .map(|e| e.replica)
        .collect()
}

// ----------------------------------------------------------------------------------------------

/// The whole fleet's transactions wait for a moment (here: one transaction holding the fleet's
/// transaction lock for 2.5 s; in production a long destruction, a VACUUM FULL of a compaction,
/// a slow disk). The holder of a job is alive and its heartbeat renews the lease as soon as the
/// database lets it. A renewal that went through must leave a lease that runs for another
/// `job_lease`, and another replica must not take the job over from the live holder.
#[test]
fn a_renewal_that_waited_for_the_database_leaves_a_live_lease() {
    let f = fleet(2, Duration::from_millis(900));
    keyring_to_reencrypt(&f, "ring", 600);
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let k = kr("ring");
    let raw = connect(&f.cfg);
    let (first, (renewed, now, busy)) = paused_after_first_step(
        |progress| a.reencrypt(&k, progress),
        || {
            // The database is busy for 2.5 s: every transaction of the fleet waits.
            let seen = Mutex::new(None);
            raw.transaction(&[TreeId::Jobs], &|tx: &dyn EngineTx| {
                let v = tx
                    .get(TreeId::Jobs, &raw_leases(&raw)[0].0)
                    .map_err(TxStop::Engine)?;
                *seen.lock().unwrap() = v.map(|v| expiry_of(&v));
                std::thread::sleep(Duration::from_millis(2500));
                Ok(())
            })
            .unwrap();
            let during = seen.lock().unwrap().unwrap();
            // The heartbeat's renewal, queued behind it, goes through.
            let (renewed, _) = until(Duration::from_secs(5), || {
                let l = raw_leases(&raw);
                let e = expiry_of(&l.first()?.1);
                (e != during).then_some(e)
            });
            let now = raw.clock_ms().unwrap();
            (renewed, now, b.reencrypt(&k, &mut |_| {}))
        },
    );
    assert!(
        renewed > now,
        "a lease renewed just now has expired already: expires {renewed}, database clock {now} ({} ms in the past); B then got {busy:?} and the live holder {first:?}",
        now - renewed
    );
    assert!(
        matches!(busy, Err(StoreError::JobBusy { .. })),
        "another replica took the job over from a live holder: {busy:?}; holder: {first:?}"
    );
    first.unwrap();
}

/// Four replicas start one re-encryption at the same instant: it runs once, by one replica at a
/// time (the others are refused as busy, or find nothing left), every record re-encrypted once.
#[test]
fn replicas_racing_for_one_job_run_it_once() {
    let f = fleet(4, Duration::from_secs(30));
    keyring_to_reencrypt(&f, "ring", 1200);
    let k = kr("ring");
    let barrier = Barrier::new(4);
    let results: Vec<_> = std::thread::scope(|scope| {
        let hs: Vec<_> = f
            .replicas
            .iter()
            .map(|r| {
                let (k, barrier) = (&k, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    r.reencrypt(k, &mut |_| std::thread::sleep(Duration::from_millis(20)))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = 0;
    let mut oks = 0;
    for r in &results {
        match r {
            Ok(rep) => {
                oks += 1;
                total += rep.reencrypted;
            }
            Err(StoreError::JobBusy { .. }) => {}
            Err(e) => panic!("{e:?} in {results:?}"),
        }
    }
    assert!(oks >= 1, "{results:?}");
    assert_eq!(total, 1200, "{results:?}");
    let batches = batch_replicas(&f.replicas[0]);
    assert!(
        batches.windows(2).all(|w| w[0] == w[1]),
        "two runners' batches: {batches:?}"
    );
    assert!(raw_leases(&connect(&f.cfg)).is_empty());
    assert!(f.replicas[0].verify_audit().unwrap().is_ok());
}

/// A job whose progress callback panics: the lease row and the in-process claim go with it; the
/// same replica (and any other) runs the job again at once, resuming it.
#[test]
fn a_panic_in_a_job_releases_its_lease_in_the_process_and_the_database() {
    let f = fleet(2, Duration::from_secs(30));
    keyring_to_reencrypt(&f, "ring", 800);
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let k = kr("ring");
    let raw = connect(&f.cfg);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        a.reencrypt(&k, &mut |p| {
            assert!(p.done == 0, "a progress callback that panics");
        })
    }));
    assert!(r.is_err());
    assert!(raw_leases(&raw).is_empty(), "{:?}", raw_leases(&raw));
    assert!(a.job_leases().unwrap().is_empty());
    assert!(b.job_leases().unwrap().is_empty());
    let r = a.reencrypt(&k, &mut |_| {}).unwrap();
    assert!(r.resumed, "{r:?}");
    assert_eq!(r.reencrypted, 800 - 256, "{r:?}");
    // The rewrap of a root rotation too.
    let root = rn("service");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.rotate_root(&root, &mut |p| {
            assert!(p.done == 0, "a progress callback that panics");
        })
    }));
    assert!(r.is_err());
    assert!(raw_leases(&raw).is_empty(), "{:?}", raw_leases(&raw));
    assert_eq!(b.rewrap_root(&root, &mut |_| {}).unwrap(), 0);
    assert!(a.verify_audit().unwrap().is_ok());
}

/// A takeover between the last batch and the job's final commit: refused as LeaseLost, the job
/// left pending for the new holder, its lease not released by the loser; the next runner ends
/// it with nothing to re-encrypt.
#[test]
fn a_takeover_before_the_final_commit_leaves_the_job_to_the_new_holder() {
    let f = fleet(2, Duration::from_secs(30));
    keyring_to_reencrypt(&f, "ring", 300);
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let k = kr("ring");
    let raw = connect(&f.cfg);
    let mut took = false;
    let e = a
        .reencrypt(&k, &mut |p| {
            if !took && p.done == p.total && p.total > 0 {
                took = true;
                let l = raw_leases(&raw);
                let token = u64::from_be_bytes(l[0].1[1..9].try_into().unwrap());
                let now = raw.clock_ms().unwrap();
                raw.insert(
                    TreeId::Jobs,
                    &l[0].0,
                    &lease_bytes(token + 1, now + 300, "replica-9#0000000000000009"),
                )
                .unwrap();
            }
        })
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::LeaseLost { replica, .. } if replica == "replica-9"),
        "{e:?}"
    );
    assert_eq!(raw_leases(&raw).len(), 1, "the new holder's lease stays");
    assert!(
        b.pending_jobs()
            .unwrap()
            .iter()
            .any(|j| matches!(j, PendingJob::Reencrypt(n) if *n == k)),
        "{:?}",
        b.pending_jobs()
    );
    let (r, _) = until(Duration::from_secs(5), || b.reencrypt(&k, &mut |_| {}).ok());
    assert!(r.resumed && r.reencrypted == 0, "{r:?}");
    assert!(raw_leases(&raw).is_empty());
    assert!(
        b.pending_jobs().unwrap().is_empty(),
        "{:?}",
        b.pending_jobs()
    );
    for i in (0..300).step_by(13) {
        assert_eq!(
            b.get(&k, format!("r{i:05}").as_bytes())
                .unwrap()
                .unwrap()
                .expose(),
            format!("value {i}").as_bytes()
        );
    }
    assert!(b.verify_audit().unwrap().is_ok());
}

/// A root rotation whose rewrap another replica is running: either the rotation is reported
/// done (the rewrap left to the holder, or pending), or nothing is rotated. Reporting a failure
/// for a rotation that was committed makes the caller retry it, and rotate again.
#[test]
fn a_root_rotation_whose_rewrap_is_busy_is_not_reported_as_failed_after_rotating() {
    let f = fleet(1, Duration::from_secs(30));
    let a = &f.replicas[0];
    a.create_keyring(&kr("k"), None).unwrap();
    let root = rn("service");
    let before = a.root(&root).unwrap().current;
    let raw = connect(&f.cfg);
    foreign_lease(&raw, "rewrap/service");
    let r = a.rotate_root(&root, &mut |_| {});
    let after = a.root(&root).unwrap().current;
    assert!(
        r.is_ok() || before == after,
        "rotate_root returned {r:?} but the root was rotated ({before:?} -> {after:?})"
    );
}

/// A lease left in the schema by a fleet (a holder that died) means nothing to a store opened
/// exclusively: its jobs run, and `job_leases` (documented "on a shared engine; none otherwise")
/// lists none.
#[test]
fn an_exclusive_store_runs_jobs_over_a_fleet_s_stale_lease_and_lists_none() {
    let mut f = fleet(1, Duration::from_secs(30));
    keyring_to_reencrypt(&f, "ring", 300);
    let raw = connect(&f.cfg);
    let ring = f.replicas[0].keyring(&kr("ring")).unwrap();
    let _ = ring;
    // The job's lease key is `reencrypt/<id>`; take it from a running job's own lease.
    let mut key = None;
    f.replicas[0]
        .reencrypt(&kr("ring"), &mut |p| {
            if key.is_none() && p.done > 0 {
                key = Some(raw_leases(&raw)[0].0.clone());
            }
        })
        .unwrap();
    let key = key.unwrap();
    f.replicas[0].rotate_dek(&kr("ring")).unwrap();
    // A holder that died mid-job: its lease stays for a minute.
    let now = raw.clock_ms().unwrap();
    raw.insert(
        TreeId::Jobs,
        &key,
        &lease_bytes(7, now + 60_000, "replica-9#0000000000000009"),
    )
    .unwrap();
    drop(raw);
    f.replicas.clear();
    let mut cfg = f.cfg.clone();
    cfg.exclusive = true;
    let s = Store::open_on(
        f.dir.path(),
        Box::new(connect(&cfg)),
        Arc::clone(&f.backend),
        StoreOptions::default(),
    )
    .unwrap();
    let r = s.reencrypt(&kr("ring"), &mut |_| {}).unwrap();
    assert_eq!(r.reencrypted, 300);
    let leases = s.job_leases().unwrap();
    assert!(
        leases.is_empty(),
        "an exclusive store lists a dead fleet's lease as a running job: {leases:?}"
    );
}

/// A backup taken while a job runs leaves its lease out: the restored store (shared) runs the
/// job at once, resuming it from the backed-up cursor.
#[test]
fn a_backup_taken_mid_job_restores_without_the_lease_and_resumes() {
    let f = fleet(2, Duration::from_secs(30));
    keyring_to_reencrypt(&f, "ring", 800);
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let k = kr("ring");
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("backup.srb");
    let (ran, ()) = paused_after_first_step(
        |progress| a.reencrypt(&k, progress),
        || {
            assert_eq!(b.job_leases().unwrap().len(), 1);
            b.backup(&file).unwrap();
        },
    );
    ran.unwrap();
    // Left out of the file itself (its tree keys are stored as they are), not only of what a
    // restore shows; the job's own entry is in it.
    let bytes = std::fs::read(&file).unwrap();
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!has(b"lease/"), "a lease in the backup file");
    assert!(has(b"reencrypt/"), "the job's cursor in the backup file");
    let schema = strongroom_test_support::pg::unique_schema();
    let mut cfg = common::config(&schema);
    cfg.exclusive = false;
    let dir = tempfile::tempdir().unwrap();
    Store::restore_into(&file, dir.path(), Box::new(connect(&cfg))).unwrap();
    let restored = Store::open_on(
        dir.path(),
        Box::new(connect(&cfg)),
        Arc::clone(&f.backend),
        opts(5, Duration::from_secs(30)),
    )
    .unwrap();
    assert!(restored.job_leases().unwrap().is_empty());
    assert!(raw_leases(&connect(&cfg)).is_empty());
    let r = restored.reencrypt(&k, &mut |_| {}).unwrap();
    assert!(r.resumed, "{r:?}");
    assert_eq!(r.reencrypted, 800 - 256, "{r:?}");
    assert!(restored.verify_audit().unwrap().is_ok());
}

/// Three replicas open at once on a store whose scheduled destructions fell due: every open
/// succeeds, each keyring is destroyed once (one successful audit entry, no failed one), its
/// records purged, nothing left pending, no lease left.
#[test]
fn due_destructions_at_the_open_of_several_replicas_at_once() {
    let f = fleet(1, Duration::from_secs(30));
    let a = &f.replicas[0];
    let names: Vec<_> = (0..4).map(|i| kr(&format!("doomed{i}"))).collect();
    for n in &names {
        a.create_keyring(n, None).unwrap();
        let ops: Vec<_> = (0..300)
            .map(|i| strongroom_store::BatchOp::Put(format!("r{i}").into_bytes(), b"v".to_vec()))
            .collect();
        a.batch(n, &ops).unwrap();
        a.disable_keyring(n).unwrap();
        a.schedule_keyring_destruction(n, Some(Duration::from_millis(1)))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    let barrier = Barrier::new(3);
    let opened: Vec<Result<Store, StoreError>> = std::thread::scope(|scope| {
        let hs: Vec<_> = (1..4)
            .map(|i| {
                let (f, barrier) = (&f, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    f.open(opts(i, Duration::from_secs(30)))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &opened {
        assert!(o.is_ok(), "{:?}", o.as_ref().err());
    }
    let s = opened.into_iter().next().unwrap().unwrap();
    // It serves the key states of now (an operation polls).
    let (stored, _) = s.generations().unwrap();
    until(Duration::from_secs(5), || {
        let _ = s.get(&names[0], b"r0");
        (s.generations().unwrap().1 >= stored).then_some(())
    });
    // Any compaction a busy runner left is finished by the next call.
    let _ = s.finish_compaction();
    let entries: Vec<_> = s
        .audit_entries(1)
        .map(Result::unwrap)
        .filter(|e| e.op == AuditOp::KeyringDestroyed)
        .collect();
    let failed: Vec<_> = entries
        .iter()
        .filter(|e| e.outcome != Outcome::Ok)
        .collect();
    assert!(
        failed.is_empty(),
        "failed destructions: {:?}\nthe audit log: {:?}",
        failed
            .iter()
            .map(|e| (&e.replica, &e.target, &e.detail))
            .collect::<Vec<_>>(),
        s.audit_entries(1)
            .map(Result::unwrap)
            .map(|e| format!(
                "{} {} {} {:?}",
                e.replica,
                e.op.as_str(),
                e.target,
                e.outcome
            ))
            .collect::<Vec<_>>()
    );
    assert!(
        s.pending_jobs().unwrap().is_empty(),
        "{:?}",
        s.pending_jobs()
    );
    for n in &names {
        let target = format!("keyring {n}");
        let ok = entries
            .iter()
            .filter(|e| e.target == target && e.outcome == Outcome::Ok)
            .count();
        assert_eq!(
            ok,
            1,
            "{target}: {:?}",
            entries
                .iter()
                .map(|e| (&e.replica, &e.target, e.outcome))
                .collect::<Vec<_>>()
        );
    }
    assert!(raw_leases(&connect(&f.cfg)).is_empty());
    assert_eq!(connect(&f.cfg).count(TreeId::Records).unwrap(), 0);
    assert!(s.verify_audit().unwrap().is_ok());
}

/// A destruction while another replica holds the purge: the keyring's records are erased all
/// the same (by the compaction that follows); the report counts what this call purged itself
/// (none: `Destroyed::records` says so).
#[test]
fn a_destruction_while_the_purge_is_busy_still_erases_the_records() {
    let f = fleet(1, Duration::from_secs(30));
    let a = &f.replicas[0];
    let k = kr("doomed");
    a.create_keyring(&k, None).unwrap();
    let ops: Vec<_> = (0..200)
        .map(|i| strongroom_store::BatchOp::Put(format!("r{i}").into_bytes(), b"v".to_vec()))
        .collect();
    a.batch(&k, &ops).unwrap();
    let raw = connect(&f.cfg);
    foreign_lease(&raw, "purge");
    let d = a.destroy_keyring_now(&k).unwrap();
    assert_eq!(
        raw.count(TreeId::Records).unwrap(),
        0,
        "records left: {d:?}"
    );
    assert_eq!(
        d.records, 0,
        "purged by the other runner, not counted here: {d:?}"
    );
}

/// A destruction while another replica compacts: the destruction succeeds and its compaction is
/// left pending (not lost), then run by the next call once the other is done.
#[test]
fn a_destruction_while_another_replica_compacts_leaves_its_compaction_pending() {
    let f = fleet(1, Duration::from_secs(30));
    let a = &f.replicas[0];
    let k = kr("doomed");
    a.create_keyring(&k, None).unwrap();
    a.put(&k, b"x", b"secret").unwrap();
    let raw = connect(&f.cfg);
    foreign_lease(&raw, "compact");
    a.destroy_keyring_now(&k).unwrap();
    let pending = a.pending_jobs().unwrap();
    assert!(
        pending.iter().any(|j| matches!(j, PendingJob::Compact)),
        "{pending:?}"
    );
    assert!(matches!(
        a.compact(),
        Err(StoreError::JobBusy { ref replica, .. }) if replica == "replica-9"
    ));
    raw.remove(TreeId::Jobs, b"lease/compact").unwrap();
    assert!(a.finish_compaction().unwrap().is_some());
    assert!(a.pending_jobs().unwrap().is_empty());
}

/// Heartbeat threads end with their jobs: many short jobs with a lease renewed every few
/// milliseconds leave no thread behind.
#[test]
fn heartbeats_end_with_their_jobs() {
    fn threads() -> usize {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
    let f = fleet(1, Duration::from_millis(30));
    keyring_to_reencrypt(&f, "ring", 600);
    let a = &f.replicas[0];
    let k = kr("ring");
    let _ = a.job_leases().unwrap();
    let before = threads();
    for _ in 0..10 {
        a.rotate_dek(&k).unwrap();
        let r = a
            .reencrypt(&k, &mut |_| std::thread::sleep(Duration::from_millis(40)))
            .unwrap();
        assert_eq!(r.reencrypted, 600);
    }
    let after = threads();
    assert!(after <= before, "threads {before} -> {after}");
    assert!(a.job_leases().unwrap().is_empty());
}

/// `job_lease: Duration::ZERO` (not refused by the options): the lease is 1 ms and the
/// heartbeat renews it in a busy loop (`recv_timeout(0)`); a live holder's job must still not be
/// taken over by another replica.
#[test]
fn a_zero_job_lease_does_not_let_another_replica_take_over_a_live_job() {
    let f = fleet(2, Duration::ZERO);
    keyring_to_reencrypt(&f, "ring", 600);
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let k = kr("ring");
    let (first, busy) = paused_after_first_step(
        |progress| a.reencrypt(&k, progress),
        || {
            std::thread::sleep(Duration::from_millis(100));
            b.reencrypt(&k, &mut |_| {})
        },
    );
    assert!(
        matches!(busy, Err(StoreError::JobBusy { .. })),
        "B took the job over from a live holder: {busy:?}; holder: {first:?}"
    );
    first.unwrap();
}
