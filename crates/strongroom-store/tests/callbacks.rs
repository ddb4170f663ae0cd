//! Progress callbacks may call back into the store (a service reporting progress reads a
//! record, or asks for a keyring's state): a root rotation's rewrap and a re-encryption call
//! them with no lock held, and an engine that reports an outside change while a callback runs
//! does not deadlock the refresh it asks for. (Found by a review: each of these hung before.)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{kr, rn};
use strongroom_core::{Backend, SoftBackend};
use strongroom_store::engine::{
    BatchChange, Compaction, EngineInfo, Keep, Scan, TxBody, TxFailure,
};
use strongroom_store::{Engine, EngineError, SledEngine, Store, StoreOptions, TreeId};

/// Runs `f` on a thread and fails the test if it does not finish in 20 s (a deadlock).
fn within_20s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} deadlocked"))
}

#[test]
fn a_rewrap_progress_callback_can_read_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(SoftBackend::create(dir.path()).unwrap());
    let s = Store::create(dir.path(), backend, &rn("service"), StoreOptions::default()).unwrap();
    for i in 0..3 {
        s.create_keyring(&kr(&format!("k{i}")), None).unwrap();
    }
    s.put(&kr("k0"), b"r", b"v").unwrap();
    let calls = within_20s("rotate_root with a reading callback", move || {
        let reader = s.clone();
        let mut calls = 0;
        s.rotate_root(&rn("service"), &mut |p| {
            if p.done > 0 {
                assert!(reader.get(&kr("k0"), b"r").unwrap().is_some());
                calls += 1;
            }
        })
        .unwrap();
        calls
    });
    assert!(calls >= 3, "{calls}");
}

/// sled, with an outside change reported on demand.
#[derive(Debug)]
struct Flagged {
    inner: SledEngine,
    changed: Arc<AtomicBool>,
}

impl Engine for Flagged {
    fn info(&self) -> EngineInfo {
        self.inner.info()
    }
    fn get(&self, t: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.inner.get(t, key)
    }
    fn insert(&self, t: TreeId, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        self.inner.insert(t, key, value)
    }
    fn remove(&self, t: TreeId, key: &[u8]) -> Result<bool, EngineError> {
        self.inner.remove(t, key)
    }
    fn apply_batch(&self, t: TreeId, changes: Vec<BatchChange>) -> Result<(), EngineError> {
        self.inner.apply_batch(t, changes)
    }
    fn scan(&self, t: TreeId, prefix: &[u8], start: &[u8]) -> Scan {
        self.inner.scan(t, prefix, start)
    }
    fn transaction(&self, on: &[TreeId], body: &TxBody<'_>) -> Result<(), TxFailure> {
        self.inner.transaction(on, body)
    }
    fn flush(&self) -> Result<(), EngineError> {
        self.inner.flush()
    }
    fn durable_commits(&self) -> bool {
        false
    }
    fn take_invalidation(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }
    fn count(&self, t: TreeId) -> Result<u64, EngineError> {
        self.inner.count(t)
    }
    fn size_on_disk(&self) -> Result<u64, EngineError> {
        self.inner.size_on_disk()
    }
    fn compact(&self, keep: &Keep<'_>, wait: Duration) -> Result<Compaction, EngineError> {
        self.inner.compact(keep, wait)
    }
}

#[test]
fn an_outside_change_reported_during_a_reencryption_callback_neither_deadlocks_nor_serves_stale() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(SoftBackend::create(dir.path()).unwrap());
    let changed = Arc::new(AtomicBool::new(false));
    let engine = Flagged {
        inner: SledEngine::create(dir.path()).unwrap(),
        changed: Arc::clone(&changed),
    };
    let s = Store::create_on(
        dir.path(),
        Box::new(engine),
        backend,
        &rn("service"),
        StoreOptions::default(),
    )
    .unwrap();
    s.create_keyring(&kr("a"), None).unwrap();
    for i in 0..600 {
        s.put(&kr("a"), format!("k{i}").as_bytes(), b"v").unwrap();
    }
    s.rotate_dek(&kr("a")).unwrap();
    let seen = within_20s("reencrypt with a reading callback", move || {
        let reader = s.clone();
        let mut seen = Vec::new();
        s.reencrypt(&kr("a"), &mut |p| {
            if p.done > 0 && seen.is_empty() {
                // The engine reports an outside change, and the callback reads.
                changed.store(true, Ordering::Release);
                seen.push(
                    reader
                        .get(&kr("a"), b"k1")
                        .map(|v| v.is_some())
                        .map_err(|e| e.to_string()),
                );
            }
        })
        .unwrap();
        // Afterwards the refresh has run and everything reads.
        seen.push(Ok(s.get(&kr("a"), b"k1").unwrap().is_some()));
        seen
    });
    // Inside the callback: refused while the catalog is reloaded, or served after the reload;
    // never a hang.
    match &seen[0] {
        Ok(true) => {}
        Err(e) => assert!(e.contains("reloaded"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(seen[1], Ok(true));
}
