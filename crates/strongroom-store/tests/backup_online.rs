//! A backup does not stop the store: while it runs, another thread keeps reading and writing,
//! and its operations complete during the backup (not after it); the backup restores to a
//! store whose every record holds one of the values it had during the run, and whose audit log
//! verifies. Runs on the engine `STRONGROOM_TEST_ENGINE` names.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use common::{Fixture, kr};
use strongroom_store::StoreOptions;

#[test]
fn reads_and_writes_go_on_during_a_backup_and_it_restores_consistently() {
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    let ring = kr("live");
    s.create_keyring(&ring, None).unwrap();
    let n = if common::on_postgres() { 3_000 } else { 20_000 };
    for i in 0..n {
        s.put(&ring, format!("k{i:06}").as_bytes(), b"before")
            .unwrap();
    }
    s.flush().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("store.backup");
    let running = Arc::new(AtomicBool::new(true));
    let started = Arc::new(AtomicU64::new(0));
    let done_at = Arc::new(std::sync::Mutex::new(Vec::new()));
    let report = std::thread::scope(|scope| {
        let worker = {
            let (s, ring, running, started, done_at) = (
                s.clone(),
                ring.clone(),
                Arc::clone(&running),
                Arc::clone(&started),
                Arc::clone(&done_at),
            );
            scope.spawn(move || {
                let mut i = 0u64;
                while running.load(Ordering::Acquire) {
                    let k = format!("k{:06}", i % n as u64);
                    s.put(&ring, k.as_bytes(), b"during").unwrap();
                    assert!(s.get(&ring, k.as_bytes()).unwrap().is_some());
                    done_at.lock().unwrap().push(Instant::now());
                    started.store(1, Ordering::Release);
                    i += 1;
                }
            })
        };
        while started.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        let t0 = Instant::now();
        let report = s.backup(&file).unwrap();
        let t1 = Instant::now();
        running.store(false, Ordering::Release);
        worker.join().unwrap();
        // Operations that completed well inside the backup's run (a backup that stopped the
        // store would let through at most those at its very start and end).
        let span = t1 - t0;
        let (from, to) = (t0 + span / 5, t1 - span / 5);
        let inside = done_at
            .lock()
            .unwrap()
            .iter()
            .filter(|t| **t > from && **t < to)
            .count();
        eprintln!(
            "backup took {span:?}; {inside} reads+writes completed in its middle three fifths"
        );
        assert!(
            inside >= 3,
            "reads and writes waited for the backup ({inside} completed during it)"
        );
        report
    });
    assert!(report.entries >= n as u64);

    // The backup restores, opens (its anchor agrees with the log it holds), verifies, and each
    // record holds a value it had during the run.
    let restored = tempfile::tempdir().unwrap();
    common::restore(&file, restored.path()).unwrap();
    std::fs::copy(
        fx.dir.path().join(strongroom_core::soft::KEY_FILE_NAME),
        restored.path().join(strongroom_core::soft::KEY_FILE_NAME),
    )
    .unwrap();
    let backend: Arc<dyn strongroom_core::Backend> =
        Arc::new(strongroom_core::SoftBackend::open(restored.path()).unwrap());
    let r = common::open(restored.path(), backend, StoreOptions::default()).unwrap();
    r.verify_audit().unwrap().unwrap();
    let mut during_seen = 0;
    for i in 0..n {
        let v = r
            .get(&ring, format!("k{i:06}").as_bytes())
            .unwrap()
            .unwrap();
        match v.expose() {
            b"before" => {}
            b"during" => during_seen += 1,
            other => panic!("k{i}: {:?}", String::from_utf8_lossy(other)),
        }
    }
    eprintln!("{during_seen} of {n} records were copied with a value written during the backup");
    // Writes go on after a restore (the DEK counters came along).
    r.put(&ring, b"after", b"x").unwrap();
}
