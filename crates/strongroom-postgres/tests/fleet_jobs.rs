//! Jobs in a fleet (issue 13, item 4): a re-encryption, a rewrap, a compaction or the due
//! destructions run on one replica at a time, under a lease in the database. Here as several
//! replicas in one process; `strongroom-store`'s `tests/fleet_jobs.rs` kills a replica process
//! mid-job. A lease another replica holds refuses the job, naming the holder; a holder renews
//! its lease while it runs, however long a step takes; a holder whose lease was taken over
//! writes nothing more (the token is checked in the commit of every step), and the new holder
//! resumes from the cursor.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::fleet::{
    Fleet, fleet_with, job_options, keyring_to_reencrypt, lease_bytes, paused_after_first_step,
    raw_leases, until,
};
use common::{connect, kr};
use strongroom_postgres::PgEngine;
use strongroom_store::{Engine, StoreError, StoreOptions, TreeId};

fn fleet(n: usize, lease: Duration) -> Fleet {
    fleet_with(n, |i| job_options(i, lease))
}

#[test]
fn a_job_one_replica_runs_is_refused_to_the_others_naming_it_until_it_ends() {
    let f = fleet(3, Duration::from_millis(600));
    keyring_to_reencrypt(&f, "ring", 1500);
    let (a, b, c) = (&f.replicas[0], &f.replicas[1], &f.replicas[2]);
    let k = kr("ring");
    // B holds the job, paused after its first batch for longer than the lease, twice: it
    // renews the lease meanwhile.
    let (report, ()) = paused_after_first_step(
        |progress| b.reencrypt(&k, progress),
        || {
            for _ in 0..3 {
                for other in [a, c] {
                    let e = other.reencrypt(&k, &mut |_| {}).unwrap_err();
                    match &e {
                        StoreError::JobBusy {
                            replica,
                            retry_after_ms: Some(ms),
                            ..
                        } => {
                            assert_eq!(replica, "replica-1", "{e}");
                            assert!(*ms <= 600, "{e}");
                        }
                        _ => panic!("refused as busy, naming the holder: {e:?}"),
                    }
                    assert!(e.to_string().contains("replica-1"), "{e}");
                }
                let leases = a.job_leases().unwrap();
                assert_eq!(leases.len(), 1, "{leases:?}");
                assert_eq!(leases[0].replica, "replica-1");
                assert!(leases[0].job.starts_with("reencrypt/"), "{leases:?}");
                assert!(!leases[0].expired, "renewed while it runs: {leases:?}");
                std::thread::sleep(Duration::from_millis(400));
            }
        },
    );
    let report = report.unwrap();
    assert_eq!(report.reencrypted, 1500, "{report:?}");
    assert!(!report.resumed);
    // Released when it ended: no lease left, and another replica runs the next one.
    assert!(a.job_leases().unwrap().is_empty());
    c.rotate_dek(&k).unwrap();
    let (r, _) = until(Duration::from_secs(10), || {
        a.reencrypt(&k, &mut |_| {}).ok()
    });
    assert_eq!(r.reencrypted, 1500, "{r:?}");
    // Each batch's audit entry names the replica that wrote it.
    let batches: Vec<String> = a
        .audit_entries(1)
        .map(Result::unwrap)
        .filter(|e| e.detail.starts_with("batch of"))
        .map(|e| e.replica)
        .collect();
    assert!(!batches.is_empty());
    let first_run = batches.iter().take_while(|r| *r == "replica-1").count();
    assert!(
        batches[first_run..].iter().all(|r| r == "replica-0"),
        "two replicas on one run: {batches:?}"
    );
    assert!(a.verify_audit().unwrap().is_ok());
}

#[test]
fn a_holder_whose_lease_was_taken_over_writes_nothing_more_and_the_next_resumes() {
    let f = fleet(2, Duration::from_secs(30));
    keyring_to_reencrypt(&f, "ring", 2000);
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let k = kr("ring");
    let raw = connect(&f.cfg);
    let cursor = |raw: &PgEngine| {
        raw.scan(TreeId::Jobs, b"reencrypt/", b"")
            .map(|r| r.unwrap().1)
            .next()
    };
    let mut at_takeover = None;
    let e = a
        .reencrypt(&k, &mut |p| {
            if at_takeover.is_none() && p.done >= 512 {
                // Another replica takes the lease over, as it would once this one's expired
                // (stalled, cut off): the next token, its holder, a short expiry.
                let leases = raw_leases(&raw);
                assert_eq!(leases.len(), 1);
                let (key, value) = &leases[0];
                let token = u64::from_be_bytes(value[1..9].try_into().unwrap());
                let now = raw.clock_ms().unwrap();
                raw.insert(
                    TreeId::Jobs,
                    key,
                    &lease_bytes(token + 1, now + 500, "replica-9#0000000000000009"),
                )
                .unwrap();
                at_takeover = Some(cursor(&raw).unwrap());
            }
        })
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::LeaseLost { replica, .. } if replica == "replica-9"),
        "{e:?}"
    );
    assert!(e.to_string().contains("took it over"), "{e}");
    // Not a step more: the cursor is where it was when the lease was taken.
    assert_eq!(
        cursor(&raw),
        at_takeover,
        "a batch was written after the takeover"
    );
    // The taken-over lease is not released by the loser.
    assert_eq!(raw_leases(&raw).len(), 1);
    // Until it runs out, the job is busy, for either replica; then B takes it over and
    // resumes from the cursor.
    let busy = b.reencrypt(&k, &mut |_| {});
    assert!(
        matches!(&busy, Err(StoreError::JobBusy { replica, .. }) if replica == "replica-9"),
        "{busy:?}"
    );
    let (r, _) = until(Duration::from_secs(10), || {
        b.reencrypt(&k, &mut |_| {}).ok()
    });
    assert!(r.resumed, "{r:?}");
    assert!(
        r.reencrypted > 0 && r.reencrypted <= 2000 - 512,
        "resumed from the cursor, not from the start: {r:?}"
    );
    for i in (0..2000).step_by(37) {
        assert_eq!(
            a.get(&k, format!("r{i:05}").as_bytes())
                .unwrap()
                .unwrap()
                .expose(),
            format!("value {i}").as_bytes()
        );
    }
    assert!(b.pending_jobs().unwrap().is_empty());
    assert!(raw_leases(&raw).is_empty());
    assert!(a.verify_audit().unwrap().is_ok());
}

#[test]
fn a_damaged_lease_is_taken_over_and_a_root_rotation_s_rewrap_is_leased_too() {
    let f = fleet(2, Duration::from_secs(30));
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    for i in 0..5 {
        a.create_keyring(&kr(&format!("k{i}")), None).unwrap();
    }
    let root = common::rn("service");
    let raw = connect(&f.cfg);
    // Garbage where a lease goes: taken over, not an error and not a lock forever.
    raw.insert(TreeId::Jobs, b"lease/rewrap/service", b"\x07garbage")
        .unwrap();
    // A root rotation rewraps every KEK under the new version: a rewrap job.
    let (rotated, ()) = paused_after_first_step(
        |progress| a.rotate_root(&root, progress),
        || {
            let e = until(Duration::from_secs(5), || {
                b.rewrap_root(&root, &mut |_| {}).err()
            })
            .0;
            assert!(
                matches!(&e, StoreError::JobBusy { replica, .. } if replica == "replica-0"),
                "{e:?}"
            );
        },
    );
    assert_eq!(rotated.unwrap().get(), 2);
    assert!(raw_leases(&raw).is_empty());
    assert!(b.verify_audit().unwrap().is_ok());
}

#[test]
fn a_replica_with_a_very_long_name_still_holds_its_job() {
    // Names are clipped (at 255 bytes) in the lease as in the audit log: a lease that did not
    // parse would be taken over as damaged.
    let long = |i: usize| format!("{}-{i}", "é".repeat(200));
    let f = fleet_with(2, |i| StoreOptions {
        fleet_poll: Duration::from_millis(50),
        replica: long(i),
        ..StoreOptions::default()
    });
    keyring_to_reencrypt(&f, "ring", 600);
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let k = kr("ring");
    let (held, ()) = paused_after_first_step(
        |progress| a.reencrypt(&k, progress),
        || {
            let e = b.reencrypt(&k, &mut |_| {}).unwrap_err();
            match &e {
                StoreError::JobBusy { replica, .. } => {
                    assert!(
                        replica.len() <= 255 && long(0).starts_with(replica.as_str()),
                        "{e}"
                    );
                }
                _ => panic!("refused as busy: {e:?}"),
            }
        },
    );
    held.unwrap();
}

#[test]
fn jobs_finish_while_another_replica_keeps_changing_keys() {
    // Every step of a job is a commit that another replica's key change (here: KEK rotations
    // of another keyring, one every few milliseconds) can make stale; a stale step changed
    // nothing and is tried again, up to the job's last commit: the jobs end, and are not left
    // for the next runner. A full re-encryption batch takes longer than the gap between two
    // rotations and would never get through: it is tried again smaller (it failed 3 of 3
    // without that).
    let f = fleet(2, Duration::from_secs(30));
    keyring_to_reencrypt(&f, "ring", 1500);
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    for i in 0..10 {
        a.create_keyring(&kr(&format!("k{i}")), None).unwrap();
    }
    let other = kr("busy");
    a.create_keyring(&other, None).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let rotations = std::thread::scope(|scope| {
        let churn = scope.spawn(|| common::fleet::churn_kek(b, &other, &stop));
        let _stop = common::fleet::StopOnDrop(&stop);
        let r = a.reencrypt(&kr("ring"), &mut |_| {}).unwrap();
        assert_eq!(r.reencrypted, 1500, "{r:?}");
        // The rotation is a key change itself: one computed while the other replica rotated
        // is refused as a conflict, as documented, and tried again.
        common::fleet::retrying(|| a.rotate_root(&common::rn("service"), &mut |_| {}));
        drop(_stop);
        churn.join().unwrap()
    });
    assert!(rotations > 0);
    assert!(
        a.pending_jobs().unwrap().is_empty(),
        "{:?}",
        a.pending_jobs()
    );
    assert!(a.verify_audit().unwrap().is_ok());
}

#[test]
fn a_root_rotation_whose_rewrap_keeps_losing_its_steps_returns_the_new_version() {
    // Another replica changes a key between every rewrap step's look at the key states and its
    // commit (a hook on the backend's `wrap`, which each step calls in between): every try of
    // the step is refused as stale, and the rewrap gives up. The rotation itself was committed,
    // so `rotate_root` reports the new version and leaves the rewrap pending; a `Conflict`
    // ("nothing was changed") would make the caller rotate the root again.
    let dir = tempfile::tempdir().unwrap();
    let soft: std::sync::Arc<dyn strongroom_core::Backend> =
        std::sync::Arc::new(strongroom_core::SoftBackend::create(dir.path()).unwrap());
    let backend = strongroom_test_support::wrappers::TestBackend::new(soft);
    let schema = strongroom_test_support::pg::unique_schema();
    let f = Fleet::start_with(
        common::config(&schema),
        schema,
        dir,
        backend.clone(),
        2,
        |i| job_options(i, Duration::from_secs(30)),
    );
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let root = common::rn("other");
    a.create_root(&root).unwrap();
    let k = kr("under-other");
    a.create_keyring(&k, Some(&root)).unwrap();
    a.put(&k, b"x", b"1").unwrap();
    let bystander = kr("bystander");
    a.create_keyring(&bystander, None).unwrap();
    let interfered = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    {
        let (b, bystander, interfered) = (b.clone(), bystander.clone(), interfered.clone());
        backend.before_wrap(Some(Box::new(move || {
            common::fleet::retrying(|| b.rotate_dek(&bystander));
            interfered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })));
    }
    let r = a.rotate_root(&root, &mut |_| {});
    backend.before_wrap(None);
    let tries = interfered.load(std::sync::atomic::Ordering::SeqCst);
    assert!(tries > 20, "the step was tried {tries} times");
    let info = a.root(&root).unwrap();
    assert_eq!(info.versions.len(), 2, "{info:?}");
    assert_eq!(r.unwrap(), info.current.unwrap());
    assert!(
        a.pending_jobs().unwrap().iter().any(
            |j| matches!(j, strongroom_store::PendingJob::Rewrap { root: r, keks: 1 } if *r == root)
        ),
        "{:?}",
        a.pending_jobs()
    );
    // Left alone, the rewrap finishes as a pending job does.
    assert_eq!(b.rewrap_root(&root, &mut |_| {}).unwrap(), 1);
    assert!(a.pending_jobs().unwrap().is_empty());
    assert_eq!(b.get(&k, b"x").unwrap().unwrap().expose(), b"1");
    assert!(a.verify_audit().unwrap().is_ok());
}
