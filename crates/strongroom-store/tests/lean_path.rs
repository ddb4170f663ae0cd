//! The lean record path (issue 14): what it must not trade for speed. The TTL is checked when a
//! key is used, after any wait of the operation's own; the catalog borrowed under the lifecycle
//! lock does not deadlock with key changes; a batch reserves its DEK uses all at once and
//! within the quota; record keys around the stack buffers' limits store and open as before.
//! (Written by an outside review of the change; the two TTL tests failed on its first version.)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Fixture, get_string, kr, rn};
use strongroom_core::{Backend, DekVersion, RootKeyId, RootVersion, SoftBackend};
use strongroom_store::engine::{
    BatchChange, Compaction, EngineInfo, Keep, Scan, TxBody, TxFailure,
};
use strongroom_store::{
    BatchOp, Engine, EngineError, SledEngine, Store, StoreError, StoreOptions, TreeId,
};

/// sled, with reads of the records tree and reads/writes of the jobs tree (DEK counters) slowed
/// down: a PostgreSQL round trip, a stalled disk.
#[derive(Debug)]
struct Slow {
    inner: SledEngine,
    records_get_ms: Arc<AtomicU64>,
    jobs_ms: Arc<AtomicU64>,
}

fn nap(ms: &AtomicU64) {
    let ms = ms.load(Ordering::Relaxed);
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

impl Engine for Slow {
    fn info(&self) -> EngineInfo {
        self.inner.info()
    }
    fn get(&self, t: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        match t {
            TreeId::Records => nap(&self.records_get_ms),
            TreeId::Jobs => nap(&self.jobs_ms),
            _ => {}
        }
        self.inner.get(t, key)
    }
    fn insert(&self, t: TreeId, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        if t == TreeId::Jobs {
            nap(&self.jobs_ms);
        }
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

struct SlowFx {
    _dir: tempfile::TempDir,
    backend: Arc<dyn Backend>,
    store: Store,
    records_get_ms: Arc<AtomicU64>,
    jobs_ms: Arc<AtomicU64>,
}

fn slow_store(ttl: Duration) -> SlowFx {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(SoftBackend::create(dir.path()).unwrap());
    let records_get_ms = Arc::new(AtomicU64::new(0));
    let jobs_ms = Arc::new(AtomicU64::new(0));
    let engine = Slow {
        inner: SledEngine::create(dir.path()).unwrap(),
        records_get_ms: Arc::clone(&records_get_ms),
        jobs_ms: Arc::clone(&jobs_ms),
    };
    let store = Store::create_on(
        dir.path(),
        Box::new(engine),
        Arc::clone(&backend),
        &rn("service"),
        StoreOptions {
            cache_ttl: ttl,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    SlowFx {
        _dir: dir,
        backend,
        store,
        records_get_ms,
        jobs_ms,
    }
}

/// TTL 1 s; the customer disables its root in the HSM; the record read takes 2 s. Checked
/// against the operation's start, the DEK would be used ~2 s after the backend last vouched
/// for it, twice the TTL; checked when it is used, the get goes to the backend and is refused.
#[test]
fn a_slow_engine_read_does_not_stretch_the_ttl_of_a_get() {
    let fx = slow_store(Duration::from_secs(1));
    let s = &fx.store;
    let k = kr("tenant");
    s.create_root(&rn("customer")).unwrap();
    s.create_keyring(&k, Some(&rn("customer"))).unwrap();
    s.put(&k, b"a", b"secret").unwrap();
    fx.backend
        .disable_root(&RootKeyId::new(rn("customer"), RootVersion::FIRST))
        .unwrap();
    fx.records_get_ms.store(2000, Ordering::Relaxed);
    let t = Instant::now();
    let r = s.get(&k, b"a");
    let took = t.elapsed();
    assert!(
        r.is_err(),
        "served {:?} with a DEK used {took:?} into the get, past its 1 s TTL, after an outside revocation",
        r.map(|p| p.map(|p| String::from_utf8_lossy(p.expose()).into_owned()))
    );
}

/// The same for a put: the counter reservation (a write of the jobs tree, a round trip on
/// PostgreSQL, and every other put waits for it on the counters mutex) happens between the
/// start and the DEK lookup. TTL 2 s, the reservation takes 3 s.
#[test]
fn a_slow_counter_reservation_does_not_stretch_the_ttl_of_a_put() {
    let fx = slow_store(Duration::from_secs(2));
    let s = &fx.store;
    let k = kr("tenant");
    s.create_root(&rn("customer")).unwrap();
    s.create_keyring(&k, Some(&rn("customer"))).unwrap();
    // The DEK is cached, and its first block of 4096 uses is reserved and used up.
    s.put(&k, b"first", b"v").unwrap();
    let ops: Vec<_> = (0..4095u32)
        .map(|i| BatchOp::Put(i.to_be_bytes().to_vec(), b"v".to_vec()))
        .collect();
    s.batch(&k, &ops).unwrap();
    assert_eq!(s.dek_uses(&k, DekVersion::FIRST).unwrap(), 4096);
    fx.backend
        .disable_root(&RootKeyId::new(rn("customer"), RootVersion::FIRST))
        .unwrap();
    fx.jobs_ms.store(3000, Ordering::Relaxed);
    let t = Instant::now();
    let r = s.put(&k, b"a", b"new");
    let took = t.elapsed();
    assert!(
        r.is_err(),
        "sealed under a DEK {took:?} into the put, past its 2 s TTL, after an outside revocation"
    );
}

/// Runs `f` on a thread and fails the test if it does not finish in 60 s (a deadlock).
fn within_60s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} deadlocked"))
}

/// Readers that miss the cache every time (TTL 0: the nested catalog reads of `kek` under the
/// get's catalog guard) and writers (batches, puts) beside key changes that write the catalog.
#[test]
fn nested_catalog_reads_under_the_guard_do_not_deadlock_with_key_changes() {
    within_60s("readers and writers beside key changes", || {
        let fx = Fixture::new(StoreOptions {
            cache_ttl: Duration::ZERO,
            dek_rollover_after: 7,
            ..StoreOptions::default()
        });
        let s = fx.store().clone();
        let k = kr("busy");
        s.create_keyring(&k, None).unwrap();
        s.put(&k, b"x", b"1").unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        std::thread::scope(|scope| {
            for t in 0..3 {
                let (s, k, stop) = (s.clone(), k.clone(), Arc::clone(&stop));
                scope.spawn(move || {
                    let mut i = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        match s.get(&k, b"x") {
                            Ok(_) | Err(StoreError::KeyringDisabled { .. }) => {}
                            Err(e) => panic!("{e:?}"),
                        }
                        let ops = vec![
                            BatchOp::Put(format!("{t}/{i}").into_bytes(), b"v".to_vec()),
                            BatchOp::Delete(format!("{t}/{}", i.wrapping_sub(1)).into_bytes()),
                            BatchOp::Put(b"x".to_vec(), b"1".to_vec()),
                        ];
                        match s.batch(&k, &ops) {
                            Ok(()) | Err(StoreError::KeyringDisabled { .. }) => {}
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                });
            }
            for _ in 0..30 {
                s.disable_keyring(&k).unwrap();
                assert!(
                    s.get(&k, b"x").is_err(),
                    "a read after the disable returned"
                );
                s.enable_keyring(&k).unwrap();
                s.rotate_kek(&k).unwrap();
                s.rotate_dek(&k).unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
        // Every DEK's count stayed within its quota.
        let info = s.keyring(&k).unwrap();
        for v in info.dek_versions {
            assert!(s.dek_uses(&k, v).unwrap() <= 7, "{v}");
        }
    });
}

fn batch_accounting(audited: bool) {
    let mut fx = Fixture::new(StoreOptions {
        dek_rollover_after: 10,
        audit_data_access: audited,
        ..StoreOptions::default()
    });
    let s = fx.store();
    let k = kr("b");
    s.create_keyring(&k, None).unwrap();
    let v1 = DekVersion::FIRST;
    let puts = |tag: &str, n: usize| {
        (0..n)
            .map(|i| BatchOp::Put(format!("{tag}{i}").into_bytes(), b"v".to_vec()))
            .collect::<Vec<_>>()
    };
    s.batch(&k, &[]).unwrap();
    s.batch(&k, &[BatchOp::Delete(b"none".to_vec())]).unwrap();
    assert_eq!(s.dek_uses(&k, v1).unwrap(), 0, "no puts, no count");
    s.batch(&k, &puts("a", 6)).unwrap();
    assert_eq!(s.dek_uses(&k, v1).unwrap(), 6);
    // 6 + 6 > 10: all or none, so the DEK rolls over and the batch goes under v2.
    s.batch(&k, &puts("b", 6)).unwrap();
    let v2 = s.keyring(&k).unwrap().current_dek;
    assert_eq!(v2.get(), 2);
    assert_eq!(s.dek_uses(&k, v1).unwrap(), 6);
    assert_eq!(s.dek_uses(&k, v2).unwrap(), 6);
    // Mixed, with the same key twice: applied in order.
    s.batch(
        &k,
        &[
            BatchOp::Put(b"m".to_vec(), b"1".to_vec()),
            BatchOp::Delete(b"m".to_vec()),
            BatchOp::Delete(b"n".to_vec()),
            BatchOp::Put(b"n".to_vec(), b"2".to_vec()),
            BatchOp::Put(b"o".to_vec(), b"1".to_vec()),
            BatchOp::Put(b"o".to_vec(), b"3".to_vec()),
            BatchOp::Delete(b"a0".to_vec()),
        ],
    )
    .unwrap();
    assert_eq!(get_string(s, &k, "m"), None);
    assert_eq!(get_string(s, &k, "n").as_deref(), Some("2"));
    assert_eq!(get_string(s, &k, "o").as_deref(), Some("3"));
    assert_eq!(get_string(s, &k, "a0"), None);
    assert_eq!(s.dek_uses(&k, v2).unwrap(), 10, "6 + 4 puts");
    // Exactly one quota, then one over.
    s.batch(&k, &puts("c", 10)).unwrap();
    assert!(matches!(
        s.batch(&k, &puts("d", 11)),
        Err(StoreError::TooLarge { .. })
    ));
    for i in 0..10 {
        assert_eq!(get_string(s, &k, &format!("c{i}")).as_deref(), Some("v"));
    }
    for i in 1..6 {
        assert_eq!(get_string(s, &k, &format!("a{i}")).as_deref(), Some("v"));
    }
    let s = fx.reopen();
    let info = s.keyring(&k).unwrap();
    for v in &info.dek_versions {
        let n = s.dek_uses(&k, *v).unwrap();
        assert!(n <= 10, "DEK {v}: {n} after restart");
    }
    s.batch(&k, &puts("e", 3)).unwrap();
    assert_eq!(get_string(s, &k, "e2").as_deref(), Some("v"));
    if audited {
        assert!(s.verify_audit().unwrap().is_ok());
    }
}

#[test]
fn batch_accounting_plain() {
    batch_accounting(false);
}

#[test]
fn batch_accounting_audited() {
    batch_accounting(true);
}

/// Record keys around the stack limits of the tree key (120) and of the AAD (150 with a 64-byte
/// keyring name), up to MAX_KEY_LEN; stored tree keys are id || key.
#[test]
fn record_keys_at_the_stack_boundaries() {
    for audited in [false, true] {
        let mut fx = Fixture::on_sled(StoreOptions {
            audit_data_access: audited,
            ..StoreOptions::default()
        });
        let s = fx.store().clone();
        let k = kr(&"n".repeat(64));
        s.create_keyring(&k, None).unwrap();
        let lens = [
            1usize, 2, 119, 120, 121, 122, 148, 149, 150, 151, 152, 255, 256, 1023, 1024,
        ];
        for &n in &lens {
            let key = vec![b'k'; n];
            s.put(&k, &key, &n.to_be_bytes()).unwrap();
            assert_eq!(s.get(&k, &key).unwrap().unwrap().expose(), &n.to_be_bytes());
        }
        let ops: Vec<_> = lens
            .iter()
            .map(|&n| BatchOp::Put(vec![b'b'; n], vec![n as u8]))
            .collect();
        s.batch(&k, &ops).unwrap();
        for &n in &lens {
            assert_eq!(
                s.get(&k, &vec![b'b'; n]).unwrap().unwrap().expose(),
                &[n as u8]
            );
        }
        assert!(s.put(&k, &[0; 1025], b"v").is_err());
        assert!(s.get(&k, &[0; 1025]).is_err());
        assert!(s.delete(&k, &[b'k'; 121]).unwrap());
        assert!(!s.delete(&k, &[b'k'; 121]).unwrap());
        assert!(s.delete(&k, &[b'k'; 120]).unwrap());
        drop(s);
        let raw = fx.raw_db();
        let keys: Vec<Vec<u8>> = raw
            .tree("records")
            .iter()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys.len(), 2 * lens.len() - 2);
        for tk in &keys {
            let rest = &tk[8..];
            assert!(rest.iter().all(|b| *b == rest[0]), "{tk:?}");
            assert!(
                lens.contains(&rest.len()),
                "tree key of {} bytes",
                rest.len()
            );
        }
        drop(raw);
        let s = fx.reopen();
        for &n in &lens {
            assert!(s.get(&k, &vec![b'b'; n]).unwrap().is_some());
        }
    }
}

/// `write_batch` (borrowed bytes) is `batch` without the copies: the same writes, atomic, the
/// same limits, and (audited) an entry per item.
#[test]
fn write_batch_is_batch_without_the_copies() {
    use strongroom_store::Write;
    for audited in [false, true] {
        let fx = Fixture::new(StoreOptions {
            dek_rollover_after: 5,
            audit_data_access: audited,
            ..StoreOptions::default()
        });
        let s = fx.store();
        let k = kr("w");
        s.create_keyring(&k, None).unwrap();
        s.put(&k, b"gone", b"x").unwrap();
        s.write_batch(
            &k,
            &[
                Write::Put(b"a", b"1"),
                Write::Delete(b"gone"),
                Write::Put(b"b", b"2"),
                Write::Put(b"a", b"3"),
            ],
        )
        .unwrap();
        assert_eq!(get_string(s, &k, "a").as_deref(), Some("3"));
        assert_eq!(get_string(s, &k, "b").as_deref(), Some("2"));
        assert_eq!(get_string(s, &k, "gone"), None);
        // One value over the limit: nothing of the batch is applied.
        let big = vec![0u8; strongroom_store::MAX_VALUE_LEN + 1];
        assert!(matches!(
            s.write_batch(&k, &[Write::Put(b"c", b"4"), Write::Put(b"d", &big)]),
            Err(StoreError::TooLarge { .. })
        ));
        assert_eq!(get_string(s, &k, "c"), None);
        // More puts than one DEK's quota.
        let keys: Vec<Vec<u8>> = (0..6u8).map(|i| vec![b'q', i]).collect();
        let six: Vec<Write<'_>> = keys.iter().map(|k| Write::Put(k, b"v")).collect();
        assert!(matches!(
            s.write_batch(&k, &six),
            Err(StoreError::TooLarge { .. })
        ));
        s.write_batch(&k, &six[..5]).unwrap();
        assert!(s.dek_uses(&k, DekVersion::FIRST).unwrap() <= 5);
        s.disable_keyring(&k).unwrap();
        assert!(matches!(
            s.write_batch(&k, &[Write::Delete(b"a")]),
            Err(StoreError::KeyringDisabled { .. })
        ));
        if audited {
            let report = s.verify_audit().unwrap();
            assert!(report.is_ok());
        }
    }
}
