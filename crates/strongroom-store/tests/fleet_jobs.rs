//! Replica processes of one fleet on a real PostgreSQL server and one SoftHSM2 token (issue 13).
//!
//! Three replica processes (reading, one also writing) serve on through a crash and restart of
//! the database without being restarted themselves, then refuse a disable another replica
//! committed within the poll interval plus a reload (asserted generously).
//!
//! kill -9 of a replica process in the middle of a job: three replica processes on
//! one PostgreSQL schema and one SoftHSM2 token (both made by this test), each writing records
//! and changing keys of its own while all three try to run one re-encryption. One claims it
//! under a lease; the others are refused while it runs. The test kills the holder with SIGKILL
//! after some of its batches; once its lease runs out another replica takes the job over and
//! resumes it from the cursor. Afterwards every record written before the job and every write a
//! replica had acknowledged reads back, the keyring is left with one DEK (nothing is under an
//! old one), no job or lease is left, and the audit chain verifies, holding entries from all
//! three replicas and batches of the job from the killed one and then from its successor only.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use strongroom_core::{KeyringName, RootKeyName};
use strongroom_pkcs11::Pkcs11Backend;
use strongroom_postgres::{PgConfig, PgEngine};
use strongroom_store::{Store, StoreError, StoreOptions};
use strongroom_test_support::pg;
use strongroom_test_support::softhsm::Token;
use strongroom_test_support::softhsm_tests;

const ROLE: &str = "STRONGROOM_FLEET_JOB_REPLICA";
const URL: &str = "STRONGROOM_FLEET_JOB_URL";
const SCHEMA: &str = "STRONGROOM_FLEET_JOB_SCHEMA";
const DIR: &str = "STRONGROOM_FLEET_JOB_DIR";
const RECORDS: usize = 6000;
const LEASE: Duration = Duration::from_millis(1500);

fn ring() -> KeyringName {
    KeyringName::new("ring").unwrap()
}

fn backend(token: &Token) -> Arc<Pkcs11Backend> {
    common::pkcs11_backend(token)
}

fn config(url: &str, schema: &str) -> PgConfig {
    common::pg_config_at(url, schema, false)
}

fn options(name: &str) -> StoreOptions {
    StoreOptions {
        replica: name.to_owned(),
        fleet_poll: Duration::from_millis(100),
        job_lease: LEASE,
        ..StoreOptions::default()
    }
}

fn open(token: &Token, dir: &Path, url: &str, schema: &str, name: &str) -> Store {
    let backend = common::pkcs11_backend(token);
    Store::open_on(
        dir,
        Box::new(PgEngine::connect(&config(url, schema)).unwrap()),
        backend,
        options(name),
    )
    .unwrap()
}

/// Retries a key change refused because another replica changed the key states first.
fn retrying<T>(mut f: impl FnMut() -> Result<T, StoreError>) -> T {
    for _ in 0..500 {
        match f() {
            Err(StoreError::Conflict { .. }) => std::thread::sleep(Duration::from_millis(5)),
            r => return r.unwrap(),
        }
    }
    panic!("refused as a conflict 500 times in a row");
}

/// A replica process: writes records (noting each acknowledged one in `acked-<name>`), rotates
/// the KEK of a keyring of its own, and runs the re-encryption until it has run it, slowly (a
/// caller whose progress callback takes time). Exits when done; the test may kill it first.
fn replica(token: &Token, name: &str) -> ! {
    let dir = PathBuf::from(std::env::var_os(DIR).unwrap());
    let url = std::env::var(URL).unwrap();
    let schema = std::env::var(SCHEMA).unwrap();
    let s = open(token, &dir, &url, &schema, name);
    let own = KeyringName::new(format!("own-{name}")).unwrap();
    retrying(|| s.create_keyring(&own, None));
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut acked = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("acked-{name}")))
                .unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w/{name}/{i}");
                s.put(&ring(), key.as_bytes(), format!("value {i}").as_bytes())
                    .unwrap();
                // One write per acknowledged record: a kill leaves at most a partial last line.
                acked.write_all(format!("{i}\n").as_bytes()).unwrap();
                if i.is_multiple_of(50) {
                    retrying(|| s.rotate_kek(&own));
                    let _ = s.get(&ring(), b"r00000").unwrap();
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let report = loop {
            match s.reencrypt(&ring(), &mut |_| {
                std::thread::sleep(Duration::from_millis(100))
            }) {
                Ok(r) => break r,
                Err(StoreError::JobBusy { .. }) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => panic!("{name}: {e}"),
            }
        };
        stop.store(true, Ordering::Relaxed);
        std::fs::write(
            dir.join(format!("done-{name}")),
            format!("{} {}", report.resumed, report.reencrypted),
        )
        .unwrap();
    });
    std::process::exit(0)
}

fn spawn(token: &Token, dir: &Path, url: &str, schema: &str, name: &str) -> Child {
    spawn_in(
        "a_replica_killed_mid_job_is_replaced_and_nothing_acknowledged_is_lost",
        token,
        dir,
        url,
        schema,
        name,
    )
}

/// A replica process running `test`'s replica role.
fn spawn_in(test: &str, token: &Token, dir: &Path, url: &str, schema: &str, name: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .envs(token.env())
        .env(ROLE, name)
        .env(URL, url)
        .env(SCHEMA, schema)
        .env(DIR, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn unix_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A replica process that reads (and, for `replica-0`, writes) until its reads are refused as
/// disabled; it notes when it was ready and when it was first refused (this machine's clock,
/// in milliseconds, in files of the store directory), then exits.
fn serving_replica(token: &Token, name: &str) -> ! {
    let dir = PathBuf::from(std::env::var_os(DIR).unwrap());
    let url = std::env::var(URL).unwrap();
    let schema = std::env::var(SCHEMA).unwrap();
    let s = open(token, &dir, &url, &schema, name);
    let writes = name == "replica-0";
    let mut i = 0u64;
    let mut ready = false;
    // Errors other than the refusal are taken as the database going away for a while (the
    // test restarts it): what matters is that this replica serves again, by itself, after.
    let mut failing_since: Option<Instant> = None;
    loop {
        let r = s.get(&ring(), b"r00000").and_then(|v| {
            if writes {
                s.put(&ring(), format!("w/{i}").as_bytes(), b"v")?;
            }
            Ok(v)
        });
        match r {
            Ok(v) => {
                assert_eq!(v.unwrap().expose(), b"record 0");
                failing_since = None;
                if !ready {
                    std::fs::write(dir.join(format!("ready-{name}")), b"").unwrap();
                    ready = true;
                }
                if i.is_multiple_of(20) {
                    std::fs::write(dir.join(format!("ok-{name}")), unix_ms().to_string()).unwrap();
                }
            }
            Err(StoreError::KeyringDisabled { .. }) => {
                let at = unix_ms();
                std::fs::write(dir.join(format!("refused-{name}")), at.to_string()).unwrap();
                std::process::exit(0);
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < Duration::from_secs(60),
                    "{name}: failing for a minute: {e}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Fails, with what the replica said on its way out, if replica `n` has exited (`when`).
fn assert_running(n: &str, c: &mut Child, when: &str) {
    if let Ok(Some(status)) = c.try_wait() {
        let err = std::io::read_to_string(c.stderr.take().unwrap()).unwrap_or_default();
        panic!("{n} exited {when} ({status}): {err}");
    }
}

fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

softhsm_tests! {
    fn a_replica_killed_mid_job_is_replaced_and_nothing_acknowledged_is_lost(token) {
        if let Ok(name) = std::env::var(ROLE) {
            replica(token, &name);
        }
        let url = pg::shared().url();
        let schema = pg::unique_schema();
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create_on(
            dir.path(),
            Box::new(PgEngine::connect(&config(&url, &schema)).unwrap()),
            backend(token),
            &RootKeyName::new("service").unwrap(),
            options("test"),
        )
        .unwrap();
        s.create_keyring(&ring(), None).unwrap();
        let ops: Vec<_> = (0..RECORDS)
            .map(|i| strongroom_store::BatchOp::Put(format!("r{i:05}").into_bytes(), format!("record {i}").into_bytes()))
            .collect();
        for chunk in ops.chunks(500) {
            s.batch(&ring(), chunk).unwrap();
        }
        s.rotate_dek(&ring()).unwrap();
        let names = ["replica-0", "replica-1", "replica-2"];
        let mut children: BTreeMap<&str, Child> = names
            .iter()
            .map(|n| {
                std::thread::sleep(Duration::from_millis(300));
                (*n, spawn(token, dir.path(), &url, &schema, n))
            })
            .collect();
        // The holder, once it has committed a few batches.
        let batches_by = |s: &Store, who: &str| {
            s.audit_entries(1)
                .map(Result::unwrap)
                .filter(|e| e.detail.starts_with("batch of") && e.replica == who)
                .count()
        };
        let holder = wait_for(Duration::from_secs(60), "a replica holds the job", || {
            for (n, c) in &mut children {
                assert_running(n, c, "before the kill");
            }
            let leases = s.job_leases().unwrap();
            let l = leases.iter().find(|l| l.job.starts_with("reencrypt/"))?;
            (batches_by(&s, &l.replica) >= 3).then(|| l.replica.clone())
        });
        let mut victim = children.remove(holder.as_str()).unwrap();
        victim.kill().unwrap();
        let killed_at = Instant::now();
        victim.wait().unwrap();
        let before_kill = batches_by(&s, &holder);
        assert!(
            s.pending_jobs().unwrap().contains(&strongroom_store::PendingJob::Reencrypt(ring())),
            "killed mid-job (the job had finished already: make it longer)"
        );
        // Another replica takes over once the lease runs out, and finishes.
        let (finisher, resumed, reencrypted) = wait_for(Duration::from_secs(120), "another replica finishes the job", || {
            children.keys().find_map(|n| {
                let done = std::fs::read_to_string(dir.path().join(format!("done-{n}"))).ok()?;
                let (resumed, count) = done.split_once(' ')?;
                (resumed == "true").then(|| (n.to_string(), true, count.parse::<u64>().unwrap()))
            })
        });
        assert!(resumed);
        assert!(
            killed_at.elapsed() >= LEASE - Duration::from_millis(200),
            "taken over before the lease could run out"
        );
        assert!(reencrypted < RECORDS as u64, "resumed from the cursor, not from the start: {reencrypted}");
        // Every record from before the job was re-encrypted once: by the killed holder's
        // batches (each entry says how many it re-encrypted) or by its successor.
        let by_holder: u64 = s
            .audit_entries(1)
            .map(Result::unwrap)
            .filter(|e| e.replica == holder && e.detail.starts_with("batch of"))
            .map(|e| {
                let n = e.detail.split(": ").nth(1).unwrap();
                n.split(' ').next().unwrap().parse::<u64>().unwrap()
            })
            .sum();
        let job_log: Vec<String> = s
            .audit_entries(1)
            .map(Result::unwrap)
            .filter(|e| e.op == strongroom_store::AuditOp::Reencrypted)
            .map(|e| format!("{} {:?} {}", e.replica, e.outcome, e.detail))
            .collect();
        assert_eq!(
            by_holder + reencrypted,
            RECORDS as u64,
            "holder {holder}: {by_holder}, successor {finisher}: {reencrypted}; the job's entries: {job_log:#?}"
        );
        for (n, mut c) in children {
            let deadline = Instant::now() + Duration::from_secs(60);
            while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if c.try_wait().unwrap().is_none() {
                c.kill().unwrap();
            }
            let status = c.wait().unwrap();
            let err = std::io::read_to_string(c.stderr.take().unwrap()).unwrap_or_default();
            assert!(status.success(), "{n}: {status}: {err}");
        }
        // Everything reads back: the records from before, and every acknowledged write (the
        // killed replica's too).
        for i in 0..RECORDS {
            let v = s.get(&ring(), format!("r{i:05}").as_bytes()).unwrap().unwrap();
            assert_eq!(v.expose(), format!("record {i}").as_bytes());
        }
        let mut acked = 0;
        for n in names {
            let log = std::fs::read_to_string(dir.path().join(format!("acked-{n}"))).unwrap_or_default();
            for line in log.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
                let i = line.trim_end();
                let v = s.get(&ring(), format!("w/{n}/{i}").as_bytes()).unwrap();
                assert_eq!(v.unwrap().expose(), format!("value {i}").as_bytes(), "{n} {i}");
                acked += 1;
            }
        }
        assert!(acked > 0);
        // Nothing left under an old DEK, no job, no lease.
        assert_eq!(s.keyring(&ring()).unwrap().dek_versions.len(), 1);
        assert!(s.pending_jobs().unwrap().is_empty(), "{:?}", s.pending_jobs());
        assert!(s.job_leases().unwrap().is_empty());
        // The chain verifies, with entries of all three replicas; the job's batches until the
        // successor's run ended came from the killed holder and then from the successor only.
        assert!(s.verify_audit().unwrap().is_ok());
        let entries: Vec<_> = s.audit_entries(1).map(Result::unwrap).collect();
        for n in names {
            assert!(entries.iter().any(|e| e.replica == n), "no entry of {n}");
        }
        let end = entries
            .iter()
            .position(|e| e.replica == finisher && e.detail.contains("resumed"))
            .expect("the successor's closing entry");
        let runs: Vec<&str> = entries[..end]
            .iter()
            .filter(|e| e.detail.starts_with("batch of"))
            .map(|e| e.replica.as_str())
            .fold(Vec::new(), |mut runs, r| {
                if runs.last() != Some(&r) {
                    runs.push(r);
                }
                runs
            });
        assert_eq!(runs, vec![holder.as_str(), finisher.as_str()], "replicas' batches in turn");
        assert_eq!(batches_by(&s, &holder), before_kill, "the killed replica wrote nothing more");
    }

    fn a_fleet_of_processes_outlives_a_database_restart_and_follows_a_disable(token) {
        if let Ok(name) = std::env::var(ROLE) {
            serving_replica(token, &name);
        }
        // A server of this test's own: it is crashed and started again under the replicas.
        let mut server = pg::PgServer::start();
        let url = server.url();
        let schema = pg::unique_schema();
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create_on(
            dir.path(),
            Box::new(PgEngine::connect(&config(&url, &schema)).unwrap()),
            backend(token),
            &RootKeyName::new("service").unwrap(),
            options("coordinator"),
        )
        .unwrap();
        s.create_keyring(&ring(), None).unwrap();
        s.put(&ring(), b"r00000", b"record 0").unwrap();
        let names = ["replica-0", "replica-1", "replica-2"];
        let test = "a_fleet_of_processes_outlives_a_database_restart_and_follows_a_disable";
        let mut children: Vec<(&str, Child)> = names
            .iter()
            .map(|n| {
                std::thread::sleep(Duration::from_millis(300));
                (*n, spawn_in(test, token, dir.path(), &url, &schema, n))
            })
            .collect();
        wait_for(Duration::from_secs(60), "every replica serves", || {
            for (n, c) in &mut children {
                assert_running(n, c, "before the disable");
            }
            names
                .iter()
                .all(|n| dir.path().join(format!("ready-{n}")).exists())
                .then_some(())
        });
        // The database crashes (no checkpoint) and comes back on its port: every replica
        // serves again by itself, without being restarted.
        server.stop(true);
        std::thread::sleep(Duration::from_millis(500));
        server.restart_same_port();
        let restarted = unix_ms();
        wait_for(Duration::from_secs(90), "every replica serves after the restart", || {
            for (n, c) in &mut children {
                assert_running(n, c, "after the restart");
            }
            names
                .iter()
                .all(|n| {
                    std::fs::read_to_string(dir.path().join(format!("ok-{n}")))
                        .ok()
                        .and_then(|t| t.parse::<u64>().ok())
                        .is_some_and(|t| t > restarted)
                })
                .then_some(())
        });
        // At a phase of its own to the replicas' polls (every 100 ms).
        std::thread::sleep(Duration::from_millis(unix_ms() % 97));
        let mut tries = 0;
        loop {
            match s.disable_keyring(&ring()) {
                Ok(()) => break,
                // An attempt whose reply was lost did it.
                Err(StoreError::Transition(_)) if tries > 0 => break,
                // This replica's first statements after the restart may meet the old
                // connections' end.
                Err(e) if tries < 50 && !matches!(e, StoreError::Transition(_)) => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{e}"),
            }
        }
        let committed = unix_ms();
        let mut took = Vec::new();
        for (n, mut c) in children {
            let at: u64 = wait_for(Duration::from_secs(30), "the replica refuses", || {
                std::fs::read_to_string(dir.path().join(format!("refused-{n}")))
                    .ok()?
                    .parse()
                    .ok()
            });
            let status = c.wait().unwrap();
            let err = std::io::read_to_string(c.stderr.take().unwrap()).unwrap_or_default();
            assert!(status.success(), "{n}: {status}: {err}");
            took.push((n, at.saturating_sub(committed)));
        }
        eprintln!("refused after the disable committed (ms): {took:?}");
        // The bound is the interval (100 ms) plus a reload; asserted generously (a shared,
        // loaded 2-core machine), measured exactly by `strongroom bench --replicas`.
        for (n, ms) in &took {
            assert!(*ms <= 2000, "{n} served {ms} ms after the disable");
        }
        assert!(s.verify_audit().unwrap().is_ok());
    }
}
