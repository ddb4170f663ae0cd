//! The async API (feature `tokio`) on a multi-threaded tokio runtime: concurrent gets and puts
//! from many tasks, every operation once, and the executor's threads never blocked by a store
//! call (a latency probe keeps ticking while 1,000 slow backend calls run). These run on the
//! engine `STRONGROOM_TEST_ENGINE` names; and the synchronous store on PostgreSQL is called
//! straight from async tasks (its engine runs its own runtime: no nested-runtime panic).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{EngineKind, kr, rn};
use strongroom_core::{Backend, SoftBackend};
use strongroom_store::{AsyncOptions, AsyncStore, BatchOp, PendingJob, StoreOptions};
use strongroom_test_support::wrappers::SlowBackend;
use tokio::task::JoinSet;

async fn store_on(
    dir: &std::path::Path,
    backend: Arc<dyn Backend>,
    options: StoreOptions,
    max_in_flight: usize,
) -> AsyncStore {
    // What `AsyncStore::create` does (the store made on the blocking pool), on the run's engine.
    let dir = dir.to_path_buf();
    let store =
        tokio::task::spawn_blocking(move || common::create(&dir, backend, &rn("service"), options))
            .await
            .unwrap()
            .unwrap();
    AsyncStore::new(store, AsyncOptions { max_in_flight })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_gets_and_puts_from_many_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let soft = Arc::new(SoftBackend::create(tmp.path()).unwrap());
    let store = store_on(tmp.path(), soft, StoreOptions::default(), 8).await;
    let (a, b) = (kr("alpha"), kr("beta"));
    store.create_keyring(&a, None).await.unwrap();
    store.create_keyring(&b, None).await.unwrap();

    let mut tasks = JoinSet::new();
    for t in 0..64u32 {
        let store = store.clone();
        let keyring = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            for i in 0..40u32 {
                let key = format!("t{t}/k{i}");
                let value = format!("value {t} {i}").into_bytes();
                store
                    .put(&keyring, key.clone(), value.clone())
                    .await
                    .unwrap();
                let got = store.get(&keyring, key).await.unwrap().unwrap();
                assert_eq!(got.expose(), value.as_slice());
                // Another task's record, possibly being written right now.
                let other = format!("t{}/k{i}", (t + 2) % 64);
                if let Some(v) = store.get(&keyring, other).await.unwrap() {
                    assert!(v.expose().starts_with(b"value "));
                }
            }
        });
    }
    // A key operation under the load: the DEK rotates while tasks read and write.
    store.rotate_dek(&a).await.unwrap();
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(store.list(&a, "").await.unwrap().len(), 32 * 40);
    assert_eq!(store.list(&b, "t1/").await.unwrap().len(), 40);
    assert!(store.verify_audit().await.unwrap().is_ok());
}

/// Runs `load` while a probe task sleeps 5 ms at a time; returns the probe's worst lateness.
async fn worst_probe_lateness<F: Future<Output = ()>>(load: F) -> Duration {
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let probe = {
        let (stop, worst) = (Arc::clone(&stop), Arc::clone(&worst));
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let asked = Instant::now();
                tokio::time::sleep(Duration::from_millis(5)).await;
                let late = asked.elapsed().saturating_sub(Duration::from_millis(5));
                worst.fetch_max(u64::try_from(late.as_micros()).unwrap(), Ordering::SeqCst);
            }
        })
    };
    // Let the probe start ticking.
    tokio::time::sleep(Duration::from_millis(20)).await;
    load.await;
    stop.store(true, Ordering::SeqCst);
    probe.await.unwrap();
    Duration::from_micros(worst.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_threads_are_never_blocked_by_store_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let soft: Arc<dyn Backend> = Arc::new(SoftBackend::create(tmp.path()).unwrap());
    let slow = SlowBackend::new(soft, Duration::from_millis(3));
    // A cache TTL of zero: every get unwraps its KEK through the (slow) backend again.
    let options = StoreOptions {
        cache_ttl: Duration::ZERO,
        ..StoreOptions::default()
    };
    let store = store_on(tmp.path(), slow.clone(), options, 16).await;
    let payroll = kr("payroll");
    store.create_keyring(&payroll, None).await.unwrap();
    store.put(&payroll, "alice", "salary=100000").await.unwrap();
    let before = slow.crypto_calls();

    let async_store = store.clone();
    let worst = worst_probe_lateness(async move {
        let mut tasks = JoinSet::new();
        for _ in 0..1000 {
            let store = async_store.clone();
            let payroll = payroll.clone();
            tasks.spawn(async move {
                let v = store.get(&payroll, "alice").await.unwrap().unwrap();
                assert_eq!(v.expose(), b"salary=100000");
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    })
    .await;
    let calls = slow.crypto_calls() - before;
    assert!(calls >= 1000, "only {calls} backend calls");
    assert!(
        slow.most_at_once() <= 16,
        "{} backend calls ran at once, more than max_in_flight",
        slow.most_at_once()
    );
    assert!(
        worst < Duration::from_millis(50),
        "the probe was {worst:?} late: an executor thread was blocked"
    );

    // The control: calls as slow as the backend's, made synchronously on the executor's
    // threads, starve the probe, so the probe does see a blocked executor. (Not through the
    // synchronous store: on PostgreSQL its engine steps off a worker thread with
    // `block_in_place` for each round trip, which lets the probe run.)
    let worst_blocking = worst_probe_lateness(async move {
        let mut tasks = JoinSet::new();
        for _ in 0..600 {
            tasks.spawn(async move {
                std::thread::sleep(Duration::from_millis(3));
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    })
    .await;
    eprintln!("probe lateness: {worst:?} with the async API, {worst_blocking:?} when blocking");
    assert!(
        worst_blocking > Duration::from_millis(50),
        "the probe missed blocked executor threads (worst lateness {worst_blocking:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_through_the_async_api() {
    let tmp = tempfile::tempdir().unwrap();
    let soft = Arc::new(SoftBackend::create(tmp.path()).unwrap());
    let store = store_on(tmp.path(), soft, StoreOptions::default(), 4).await;
    let (payroll, other) = (kr("payroll"), rn("other"));

    store.create_root(&other).await.unwrap();
    store.create_keyring(&payroll, None).await.unwrap();
    store
        .put_durable(&payroll, b"a".to_vec(), b"1".to_vec())
        .await
        .unwrap();
    store
        .batch(
            &payroll,
            vec![
                BatchOp::Put(b"b".to_vec(), b"2".to_vec()),
                BatchOp::Put(b"c".to_vec(), b"3".to_vec()),
            ],
        )
        .await
        .unwrap();
    assert!(store.delete(&payroll, "c").await.unwrap());
    assert_eq!(
        store.list(&payroll, "").await.unwrap(),
        [b"a".to_vec(), b"b".to_vec()]
    );
    store.flush().await.unwrap();

    store.rotate_kek(&payroll).await.unwrap();
    store.rotate_dek(&payroll).await.unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let s = Arc::clone(&seen);
    let report = store
        .reencrypt(&payroll, move |p| s.store(p.done, Ordering::SeqCst))
        .await
        .unwrap();
    assert_eq!(report.reencrypted, 2);
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    store.retire_unused_deks(&payroll).await.unwrap();
    store.move_keyring(&payroll, &other, |_| {}).await.unwrap();
    assert_eq!(store.keyring(&payroll).await.unwrap().root, other);

    store.disable_keyring(&payroll).await.unwrap();
    assert!(
        store
            .get(&payroll, "a")
            .await
            .unwrap_err()
            .is_access_refused()
    );
    store.enable_keyring(&payroll).await.unwrap();
    store
        .schedule_keyring_destruction(&payroll, None)
        .await
        .unwrap();
    store.cancel_keyring_destruction(&payroll).await.unwrap();
    store.enable_keyring(&payroll).await.unwrap(); // a cancelled destruction leaves it disabled

    let v2 = store.rotate_root(&other, |_| {}).await.unwrap();
    store.rewrap_root(&other, |_| {}).await.unwrap();
    assert_eq!(store.store().root(&other).unwrap().current, Some(v2));
    store.disable_root(&other).await.unwrap();
    store.enable_root(&other).await.unwrap();
    store.schedule_root_destruction(&other, None).await.unwrap();
    store.cancel_root_destruction(&other).await.unwrap();
    store.enable_root(&other).await.unwrap();

    assert_eq!(
        store.get(&payroll, "b").await.unwrap().unwrap().expose(),
        b"2"
    );
    assert!(store.verify_audit().await.unwrap().is_ok());
    let backup = tmp.path().join("backup.srb");
    store.backup(&backup).await.unwrap();
    assert!(backup.exists());
    store.compact().await.unwrap();
    assert!(store.finish_compaction().await.unwrap().is_none());
    assert!(
        store
            .pending_jobs()
            .await
            .unwrap()
            .iter()
            .all(|j| !matches!(j, PendingJob::Compact))
    );
    assert!(store.run_due_destructions().await.unwrap().is_empty());
    assert_eq!(store.keyrings().await.unwrap().len(), 1);

    store.destroy_keyring_now(&payroll).await.unwrap();
    let err = store.get(&payroll, "a").await.unwrap_err();
    assert!(err.is_access_refused(), "{err}");
    store.destroy_root_now(&other).await.unwrap();
    // The same error types as the synchronous API.
    let err = store.create_keyring(&payroll, None).await.unwrap_err();
    assert!(
        matches!(err, strongroom_store::StoreError::KeyringExists { .. }),
        "{err}"
    );
}

/// The synchronous store on PostgreSQL, called directly from an async task (no
/// `spawn_blocking`, no `AsyncStore`): created, written, read, a key operation, dropped and
/// opened again, all on the test's runtime threads. The engine drives its connections on a
/// runtime of its own, so none of this may panic ("cannot start a runtime from within a
/// runtime", "cannot drop a runtime in a context where blocking is not allowed").
async fn the_store_on_postgres_inside_a_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let soft: Arc<dyn Backend> = Arc::new(SoftBackend::create(tmp.path()).unwrap());
    let options = StoreOptions::default();
    let store = common::create_on(
        EngineKind::Postgres,
        tmp.path(),
        soft.clone(),
        &rn("service"),
        options.clone(),
    )
    .unwrap();
    assert_eq!(store.engine_info().kind, "postgres");
    let payroll = kr("payroll");
    store.create_keyring(&payroll, None).unwrap();
    store.put(&payroll, b"alice", b"salary=100000").unwrap();
    tokio::task::yield_now().await;
    assert_eq!(
        store.get(&payroll, b"alice").unwrap().unwrap().expose(),
        b"salary=100000"
    );
    // Key operations: rotations, a re-encryption, a disable and an enable.
    store.rotate_kek(&payroll).unwrap();
    store.rotate_dek(&payroll).unwrap();
    let report = store.reencrypt(&payroll, &mut |_| {}).unwrap();
    assert_eq!(report.reencrypted, 1);
    store.disable_keyring(&payroll).unwrap();
    assert!(
        store
            .get(&payroll, b"alice")
            .unwrap_err()
            .is_access_refused()
    );
    store.enable_keyring(&payroll).unwrap();
    tokio::task::yield_now().await;
    store
        .put_durable(&payroll, b"bob", b"salary=90000")
        .unwrap();
    assert!(store.verify_audit().unwrap().is_ok());
    // Dropped on a runtime thread; then opened again there.
    drop(store);
    let store = common::open_on(EngineKind::Postgres, tmp.path(), soft, options).unwrap();
    assert_eq!(
        store.get(&payroll, b"alice").unwrap().unwrap().expose(),
        b"salary=100000"
    );
    assert_eq!(
        store.get(&payroll, b"bob").unwrap().unwrap().expose(),
        b"salary=90000"
    );
    // A clone used from another task, the last handle dropped there.
    let clone = store.clone();
    drop(store);
    tokio::spawn(async move {
        clone.put(&kr("payroll"), b"carol", b"1").unwrap();
        drop(clone);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_on_postgres_called_from_a_multi_threaded_runtime() {
    the_store_on_postgres_inside_a_runtime().await;
}

#[tokio::test(flavor = "current_thread")]
async fn the_store_on_postgres_called_from_a_current_thread_runtime() {
    the_store_on_postgres_inside_a_runtime().await;
}
