//! The engine contract, checked on both engines from one set of tests: sled (embedded) and
//! PostgreSQL (a throwaway server the tests start). Each property runs against a model (a
//! `BTreeMap` per tree) or a counted invariant, so a wrong order, a lost write or a half-applied
//! batch fails it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strongroom_postgres::{PgConfig, PgEngine};
use strongroom_store::engine::{
    ALL_TREES, BatchChange, BatchRef, EngineTx, Guard, TxFailure, TxStop,
};
use strongroom_store::{Engine, EngineErrorKind, SledEngine, TreeId};
use strongroom_test_support::pg;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Both engines, fresh: sled in a temp dir, PostgreSQL in a schema of its own on the shared
/// test server.
fn engines() -> Vec<(Arc<dyn Engine>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sled: Arc<dyn Engine> = Arc::new(SledEngine::create(dir.path()).unwrap());
    vec![(sled, Some(dir)), (Arc::new(pg_engine()), None)]
}

fn pg_engine() -> PgEngine {
    let cfg = PgConfig::from_url(&pg::shared().url())
        .unwrap()
        .with_schema(&pg::unique_schema())
        .unwrap();
    PgEngine::connect(&cfg).unwrap()
}

fn key(rng: &mut Rng) -> Vec<u8> {
    // Short keys over a small alphabet with 0x00 and 0xFF in it: prefixes collide, and byte
    // order (unsigned) matters.
    let n = 1 + rng.below(4) as usize;
    (0..n)
        .map(|_| [0x00, 0x01, b'a', b'b', 0x7F, 0x80, 0xFF][rng.below(7) as usize])
        .collect()
}

fn scan_model(
    m: &BTreeMap<Vec<u8>, Vec<u8>>,
    prefix: &[u8],
    start: &[u8],
) -> Vec<(Vec<u8>, Vec<u8>)> {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix) && k.as_slice() >= start)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn point_operations_batches_and_scans_agree_with_a_model_on_both_engines() {
    for (e, _dir) in engines() {
        let kind = e.info().kind;
        let mut rng = Rng(0x1234_5678_9ABC_DEF1);
        let mut model: BTreeMap<TreeId, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
        for step in 0..600 {
            let t = ALL_TREES[rng.below(8) as usize];
            let m = model.entry(t).or_default();
            match rng.below(10) {
                0..=3 => {
                    let (k, v) = (key(&mut rng), rng.next().to_be_bytes().to_vec());
                    e.insert(t, &k, &v).unwrap();
                    m.insert(k, v);
                }
                4 => {
                    let k = key(&mut rng);
                    assert_eq!(
                        e.remove(t, &k).unwrap(),
                        m.remove(&k).is_some(),
                        "{kind} step {step}"
                    );
                }
                5 => {
                    // A batch with repeated keys: the last change of each key wins.
                    let mut changes = Vec::new();
                    for _ in 0..rng.below(12) {
                        let k = key(&mut rng);
                        if rng.below(3) == 0 {
                            m.remove(&k);
                            changes.push(BatchChange::Remove(k));
                        } else {
                            let v = rng.next().to_le_bytes().to_vec();
                            m.insert(k.clone(), v.clone());
                            changes.push(BatchChange::Insert(k, v));
                        }
                    }
                    e.apply_batch(t, changes).unwrap();
                }
                6..=7 => {
                    let k = key(&mut rng);
                    assert_eq!(
                        e.get(t, &k).unwrap(),
                        m.get(&k).cloned(),
                        "{kind} step {step}"
                    );
                }
                _ => {
                    let prefix = if rng.below(3) == 0 {
                        Vec::new()
                    } else {
                        key(&mut rng)[..1].to_vec()
                    };
                    let start = if rng.below(2) == 0 {
                        prefix.clone()
                    } else {
                        key(&mut rng)
                    };
                    let got: Vec<_> = e.scan(t, &prefix, &start).map(Result::unwrap).collect();
                    assert_eq!(
                        got,
                        scan_model(m, &prefix, &start),
                        "{kind} step {step}: scan {prefix:?} from {start:?}"
                    );
                }
            }
        }
        for t in ALL_TREES {
            let m = model.entry(t).or_default();
            assert_eq!(
                e.count(t).unwrap(),
                m.len() as u64,
                "{kind}: count of {t:?}"
            );
            let all: Vec<_> = e.scan(t, b"", b"").map(Result::unwrap).collect();
            assert_eq!(all, scan_model(m, b"", b""), "{kind}: {t:?}");
        }
    }
}

#[test]
fn scans_cross_page_boundaries_in_order() {
    // More entries than the PostgreSQL engine fetches per page (512).
    for (e, _dir) in engines() {
        let changes: Vec<_> = (0u32..1500)
            .map(|i| BatchChange::Insert([b"p".as_slice(), &i.to_be_bytes()].concat(), vec![1]))
            .chain((0u32..10).map(|i| {
                BatchChange::Insert([b"q".as_slice(), &i.to_be_bytes()].concat(), vec![2])
            }))
            .collect();
        e.apply_batch(TreeId::Records, changes).unwrap();
        let keys: Vec<Vec<u8>> = e
            .scan(TreeId::Records, b"p", b"p")
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(keys.len(), 1500, "{}", e.info().kind);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        let after: Vec<_> = e
            .scan(
                TreeId::Records,
                b"p",
                &[b"p".as_slice(), &1000u32.to_be_bytes(), &[0]].concat(),
            )
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(after.len(), 499);
    }
}

#[test]
fn an_aborted_transaction_writes_nothing_and_a_committed_one_everything() {
    for (e, _dir) in engines() {
        let kind = e.info().kind;
        e.insert(TreeId::Meta, b"x", b"0").unwrap();
        let r = e.transaction(&[TreeId::Meta, TreeId::Records], &|tx: &dyn EngineTx| {
            tx.insert(TreeId::Meta, b"x", b"1")
                .map_err(TxStop::Engine)?;
            tx.insert(TreeId::Records, b"r", b"1")
                .map_err(TxStop::Engine)?;
            // Reads see the transaction's own writes.
            assert_eq!(tx.get(TreeId::Meta, b"x").unwrap(), Some(b"1".to_vec()));
            Err(TxStop::Abort)
        });
        assert!(matches!(r, Err(TxFailure::Aborted)), "{kind}");
        assert_eq!(
            e.get(TreeId::Meta, b"x").unwrap(),
            Some(b"0".to_vec()),
            "{kind}"
        );
        assert_eq!(e.get(TreeId::Records, b"r").unwrap(), None, "{kind}");
        e.transaction(&[TreeId::Meta, TreeId::Records], &|tx: &dyn EngineTx| {
            tx.insert(TreeId::Meta, b"x", b"2")
                .map_err(TxStop::Engine)?;
            tx.remove(TreeId::Meta, b"gone").map_err(TxStop::Engine)?;
            tx.insert(TreeId::Records, b"r", b"2")
                .map_err(TxStop::Engine)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(e.get(TreeId::Meta, b"x").unwrap(), Some(b"2".to_vec()));
        assert_eq!(e.get(TreeId::Records, b"r").unwrap(), Some(b"2".to_vec()));
    }
}

#[test]
fn a_guarded_batch_applies_whole_only_while_its_guard_holds() {
    for (e, _dir) in engines() {
        let kind = e.info().kind;
        e.insert(TreeId::Records, b"old", b"0").unwrap();
        let batch = [
            BatchRef::Insert(b"a", b"1"),
            BatchRef::Remove(b"old"),
            BatchRef::Insert(b"a", b"2"),
        ];
        let absent = Guard {
            tree: TreeId::Meta,
            key: b"g",
            value: None,
        };
        let one = Guard {
            tree: TreeId::Meta,
            key: b"g",
            value: Some(b"1"),
        };
        // The guard's key is absent: the absent-guard holds, the value-guard does not.
        assert!(
            !e.apply_batch_guarded(TreeId::Records, &batch, &one)
                .unwrap(),
            "{kind}"
        );
        assert_eq!(e.get(TreeId::Records, b"a").unwrap(), None, "{kind}");
        assert!(e.get(TreeId::Records, b"old").unwrap().is_some(), "{kind}");
        assert!(
            e.apply_batch_guarded(TreeId::Records, &batch, &absent)
                .unwrap(),
            "{kind}"
        );
        assert_eq!(
            e.get(TreeId::Records, b"a").unwrap(),
            Some(b"2".to_vec()),
            "{kind}"
        );
        assert_eq!(e.get(TreeId::Records, b"old").unwrap(), None, "{kind}");
        // Now it holds 1: the other way round; and a different value fails too.
        e.insert(TreeId::Meta, b"g", b"1").unwrap();
        let second = [BatchRef::Insert(b"b", b"1")];
        assert!(
            !e.apply_batch_guarded(TreeId::Records, &second, &absent)
                .unwrap(),
            "{kind}"
        );
        e.insert(TreeId::Meta, b"g", b"11").unwrap();
        assert!(
            !e.apply_batch_guarded(TreeId::Records, &second, &one)
                .unwrap(),
            "{kind}"
        );
        assert_eq!(e.get(TreeId::Records, b"b").unwrap(), None, "{kind}");
        e.insert(TreeId::Meta, b"g", b"1").unwrap();
        assert!(
            e.apply_batch_guarded(TreeId::Records, &second, &one)
                .unwrap(),
            "{kind}"
        );
        assert_eq!(
            e.get(TreeId::Records, b"b").unwrap(),
            Some(b"1".to_vec()),
            "{kind}"
        );
    }
}

#[test]
fn concurrent_read_modify_write_transactions_lose_no_update() {
    // Four threads each add 1 to one counter 50 times in read-modify-write transactions: the
    // engines' conflict handling (sled's optimistic retries; PostgreSQL's serialization
    // failures retried with backoff) must end at exactly 200.
    for (e, _dir) in engines() {
        let kind = e.info().kind;
        e.insert(TreeId::Jobs, b"n", &0u64.to_be_bytes()).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let e = &e;
                s.spawn(move || {
                    for _ in 0..50 {
                        e.transaction(&[TreeId::Jobs], &|tx: &dyn EngineTx| {
                            let v = tx.get(TreeId::Jobs, b"n").map_err(TxStop::Engine)?.unwrap();
                            let n = u64::from_be_bytes(v.try_into().unwrap());
                            tx.insert(TreeId::Jobs, b"n", &(n + 1).to_be_bytes())
                                .map_err(TxStop::Engine)
                        })
                        .unwrap_or_else(|f| panic!("{kind}: {f:?}"));
                    }
                });
            }
        });
        let v = e.get(TreeId::Jobs, b"n").unwrap().unwrap();
        assert_eq!(u64::from_be_bytes(v.try_into().unwrap()), 200, "{kind}");
    }
}

#[test]
fn write_skew_is_prevented() {
    // Two transactions each read both flags and set one only if neither is set: at most one
    // flag may end up set (snapshot isolation alone would let both through).
    for (e, _dir) in engines() {
        let kind = e.info().kind;
        for round in 0..20u8 {
            let (a, b) = ([b'a', round], [b'b', round]);
            // Both first attempts meet after their reads when the engine lets them (sled runs
            // its transactions one at a time here, so the meeting is given up after 200 ms).
            let arrived = std::sync::atomic::AtomicU32::new(0);
            std::thread::scope(|s| {
                for (mine, _other) in [(a, b), (b, a)] {
                    let (e, arrived) = (&e, &arrived);
                    s.spawn(move || {
                        let first = std::sync::atomic::AtomicBool::new(true);
                        e.transaction(&[TreeId::Keyrings], &|tx: &dyn EngineTx| {
                            let seen_a = tx.get(TreeId::Keyrings, &a).map_err(TxStop::Engine)?;
                            let seen_b = tx.get(TreeId::Keyrings, &b).map_err(TxStop::Engine)?;
                            if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                                arrived.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                                let deadline =
                                    std::time::Instant::now() + Duration::from_millis(200);
                                while arrived.load(std::sync::atomic::Ordering::Acquire) < 2
                                    && std::time::Instant::now() < deadline
                                {
                                    std::thread::yield_now();
                                }
                            }
                            if seen_a.is_none() && seen_b.is_none() {
                                tx.insert(TreeId::Keyrings, &mine, b"set")
                                    .map_err(TxStop::Engine)?;
                            }
                            Ok(())
                        })
                        .unwrap();
                    });
                }
            });
            let set = [a, b]
                .iter()
                .filter(|k| e.get(TreeId::Keyrings, *k).unwrap().is_some())
                .count();
            assert_eq!(set, 1, "{kind} round {round}: {set} flags set");
        }
    }
}

#[test]
fn compaction_drops_what_the_filter_refuses() {
    for (e, _dir) in engines() {
        let kind = e.info().kind;
        for i in 0u8..50 {
            e.insert(TreeId::Records, &[i], b"value").unwrap();
        }
        let r = e
            .compact(&|_, k| k[0] % 5 != 0, Duration::from_secs(5))
            .unwrap();
        assert_eq!(r.dropped, 10, "{kind}");
        assert_eq!(e.count(TreeId::Records).unwrap(), 40, "{kind}");
        assert!(e.get(TreeId::Records, &[5]).unwrap().is_none());
        assert!(e.get(TreeId::Records, &[6]).unwrap().is_some());
    }
}

#[test]
fn engine_errors_never_show_stored_values() {
    // A value too large for the server's limit (1 GB) is not tried; a bad key type is not
    // possible; what can fail is the connection. Its error must say what to do, not what was
    // being written.
    let server = pg::PgServer::start();
    let cfg = PgConfig::from_url(&server.url()).unwrap();
    let e = PgEngine::connect(&cfg).unwrap();
    server.stop(true);
    let err = e
        .insert(TreeId::Records, b"k", b"SECRET-VALUE-BYTES")
        .unwrap_err();
    assert_eq!(err.kind(), EngineErrorKind::Unavailable, "{err}");
    assert!(!format!("{err} {err:?}").contains("SECRET-VALUE-BYTES"));
    assert!(err.to_string().contains("retry"), "{err}");
}

#[test]
fn a_second_process_is_refused_while_one_has_the_store_open() {
    let cfg = PgConfig::from_url(&pg::shared().url())
        .unwrap()
        .with_schema(&pg::unique_schema())
        .unwrap();
    let first = PgEngine::connect(&cfg).unwrap();
    let e = PgEngine::connect(&cfg).unwrap_err();
    assert_eq!(e.kind(), EngineErrorKind::Refused, "{e}");
    assert!(e.to_string().contains("another process"), "{e}");
    drop(first);
    // The server releases the lock when it sees the connection close.
    assert!(pg::wait_until(Duration::from_secs(10), || {
        PgEngine::connect(&cfg).is_ok()
    }));
}

#[test]
fn the_engine_recovers_by_itself_when_the_server_restarts_under_a_workload() {
    let mut server = pg::PgServer::start();
    let cfg = PgConfig::from_url(&server.url()).unwrap();
    let mut cfg = cfg;
    cfg.timeout = Duration::from_secs(5);
    let e = PgEngine::connect(&cfg).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (acked, kinds) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut acked = Vec::new();
            let mut kinds = std::collections::BTreeSet::new();
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                match e.insert(TreeId::Records, &i.to_be_bytes(), b"v") {
                    Ok(()) => acked.push(i),
                    Err(err) => {
                        assert!(!err.to_string().is_empty());
                        kinds.insert(format!("{:?}", err.kind()));
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                i += 1;
            }
            (acked, kinds)
        });
        std::thread::sleep(Duration::from_millis(300));
        server.stop(true);
        std::thread::sleep(Duration::from_millis(700));
        server.restart_same_port();
        // Writes succeed again without a new engine.
        let before = e.count(TreeId::Records);
        assert!(pg::wait_until(Duration::from_secs(20), || {
            e.count(TreeId::Records)
                .is_ok_and(|n| before.as_ref().map_or(true, |b| n > *b))
        }));
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, std::sync::atomic::Ordering::Release);
        writer.join().unwrap()
    });
    assert!(!kinds.is_empty(), "the restart was seen by the writer");
    for k in &kinds {
        assert!(k == "Unavailable" || k == "Indeterminate", "{kinds:?}");
    }
    let n = acked.len();
    assert!(n > 10, "{n}");
    for i in acked {
        assert!(
            e.get(TreeId::Records, &i.to_be_bytes()).unwrap().is_some(),
            "acknowledged write {i} lost"
        );
    }
}

#[test]
fn after_a_server_restart_an_idle_engine_writes_again_without_an_error() {
    // The pool's idle connections died with the server; they are found dead before a
    // statement is sent on them, so the first write after the restart simply succeeds (a write
    // sent on a dead connection could only be reported as of unknown outcome).
    let mut server = pg::PgServer::start();
    let e = PgEngine::connect(&PgConfig::from_url(&server.url()).unwrap()).unwrap();
    std::thread::scope(|s| {
        for t in 0u8..4 {
            let e = &e;
            s.spawn(move || e.insert(TreeId::Records, &[t], b"before").unwrap());
        }
    });
    server.stop(false);
    server.restart_same_port();
    std::thread::sleep(Duration::from_millis(100));
    for t in 0u8..4 {
        e.insert(TreeId::Records, &[t], b"after")
            .unwrap_or_else(|err| panic!("write {t}: {err}"));
    }
    assert_eq!(
        e.get(TreeId::Records, &[3]).unwrap().as_deref(),
        Some(&b"after"[..])
    );
}
