//! Metrics through the `metrics` facade, recorded by `metrics-util`'s `DebuggingRecorder`
//! (installed for this thread only, so tests running in parallel do not mix): after a known
//! sequence of operations, the counters equal what happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Fixture, kr, rn};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use strongroom_p11_testkit::sys::CKR_DEVICE_ERROR;
use strongroom_p11_testkit::{FaultControl, FaultPlan};
use strongroom_pkcs11::{PinSource, Pkcs11Backend, Pkcs11Config, TokenSelector};
use strongroom_store::{BatchOp, StoreOptions, telemetry};
use strongroom_test_support::softhsm_tests;

/// The metrics recorded since the last snapshot: counters as `name{label=value,...}` => count,
/// histograms as the same => number of samples, gauges => value.
#[derive(Debug, Default)]
struct Seen {
    counters: BTreeMap<String, u64>,
    samples: BTreeMap<String, usize>,
    gauges: BTreeMap<String, f64>,
    labels: Vec<(String, String)>,
}

fn seen(snapshotter: &Snapshotter) -> Seen {
    let mut out = Seen::default();
    for (ck, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = ck.key();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| {
                out.labels.push((l.key().to_owned(), l.value().to_owned()));
                format!("{}={}", l.key(), l.value())
            })
            .collect();
        labels.sort();
        let name = if labels.is_empty() {
            key.name().to_owned()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        match value {
            DebugValue::Counter(0) => {}
            DebugValue::Counter(n) => {
                out.counters.insert(name, n);
            }
            DebugValue::Histogram(v) if v.is_empty() => {}
            DebugValue::Histogram(v) => {
                out.samples.insert(name, v.len());
            }
            DebugValue::Gauge(g) => {
                out.gauges.insert(name, g.into_inner());
            }
        }
    }
    out
}

fn map<V: Copy>(items: &[(&str, V)]) -> BTreeMap<String, V> {
    items.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

#[test]
fn counters_equal_what_happened() {
    let fx = Fixture::new(StoreOptions::default());
    let store = fx.store();
    let payroll = kr("payroll");
    store.create_keyring(&payroll, None).unwrap();
    store.purge_key_cache();

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let calls_before = fx.backend.crypto_calls();
    let recorded = metrics::with_local_recorder(&recorder, || {
        // Cold cache: the first put misses its DEK and KEK, and unwraps the KEK once.
        for (k, v) in [("alice", "1"), ("bob", "2"), ("carol", "3")] {
            store.put(&payroll, k.as_bytes(), v.as_bytes()).unwrap();
        }
        // Two hits and a record that is not there (no key needed).
        assert!(store.get(&payroll, b"alice").unwrap().is_some());
        assert!(store.get(&payroll, b"bob").unwrap().is_some());
        assert!(store.get(&payroll, b"zed").unwrap().is_none());
        // A cache miss: the KEK is unwrapped again.
        store.purge_key_cache();
        assert!(store.get(&payroll, b"carol").unwrap().is_some());
        // A backend failure: the HSM is down when the KEK must be unwrapped.
        store.purge_key_cache();
        fx.backend.set_down(true);
        let err = store.get(&payroll, b"alice").unwrap_err();
        assert!(!err.is_access_refused(), "{err}");
        fx.backend.set_down(false);
        // A refused read of a disabled keyring, and a key operation.
        store.disable_keyring(&payroll).unwrap();
        assert!(
            store
                .get(&payroll, b"alice")
                .unwrap_err()
                .is_access_refused()
        );
        store.enable_keyring(&payroll).unwrap();
        store
            .batch(
                &payroll,
                &[
                    BatchOp::Put(b"dave".to_vec(), b"4".to_vec()),
                    BatchOp::Delete(b"bob".to_vec()),
                ],
            )
            .unwrap();
        assert_eq!(store.list(&payroll, b"").unwrap().len(), 3);
        seen(&snapshotter)
    });

    let expected = map(&[
        ("strongroom_operations_total{op=record.put,outcome=ok}", 3),
        ("strongroom_operations_total{op=record.get,outcome=ok}", 4),
        (
            "strongroom_operations_total{op=record.get,outcome=error}",
            1,
        ),
        (
            "strongroom_operations_total{op=record.get,outcome=refused}",
            1,
        ),
        (
            "strongroom_operations_total{op=keyring.disable,outcome=ok}",
            1,
        ),
        (
            "strongroom_operations_total{op=keyring.enable,outcome=ok}",
            1,
        ),
        ("strongroom_operations_total{op=record.batch,outcome=ok}", 1),
        ("strongroom_operations_total{op=record.list,outcome=ok}", 1),
        // DEK: the first put, the get after the purge, the failed get, and the batch after
        // the enable (a disable purges the keyring's keys) missed; two puts and two gets hit.
        ("strongroom_key_cache_misses_total{key=dek}", 4),
        ("strongroom_key_cache_hits_total{key=dek}", 4),
        ("strongroom_key_cache_misses_total{key=kek}", 4),
        // Two purges of a KEK and a DEK each; the failed get cached nothing, and the disable
        // found nothing cached (the cache had just been purged).
        ("strongroom_key_cache_evictions_total{reason=purge}", 4),
        ("strongroom_backend_calls_total{call=unwrap}", 4),
        (
            "strongroom_backend_errors_total{call=unwrap,kind=device}",
            1,
        ),
    ]);
    assert_eq!(recorded.counters, expected);
    // The backend saw exactly the calls the metrics counted.
    assert_eq!(fx.backend.crypto_calls() - calls_before, 4);
    // One duration per operation and per backend call.
    let ops: usize = recorded
        .samples
        .iter()
        .filter(|(k, _)| k.starts_with(telemetry::OPERATION_SECONDS))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(ops, 3 + 6 + 1 + 1 + 1 + 1);
    assert_eq!(
        recorded.samples["strongroom_backend_call_duration_seconds{call=unwrap}"],
        4
    );
    assert_no_secret_in_labels(
        &recorded,
        &["payroll", "alice", "bob", "carol", "dave", "zed"],
    );
}

#[test]
fn jobs_report_progress_and_items() {
    let fx = Fixture::new(StoreOptions::default());
    let store = fx.store();
    let payroll = kr("payroll");
    store.create_keyring(&payroll, None).unwrap();
    for i in 0..25u32 {
        store
            .put(&payroll, format!("k{i}").as_bytes(), b"v")
            .unwrap();
    }
    store.create_root(&rn("elsewhere")).unwrap();

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let recorded = metrics::with_local_recorder(&recorder, || {
        store.rotate_dek(&payroll).unwrap();
        store.reencrypt(&payroll, &mut |_| {}).unwrap();
        store
            .move_keyring(&payroll, &rn("elsewhere"), &mut |_| {})
            .unwrap();
        store.compact().unwrap();
        seen(&snapshotter)
    });
    let c = &recorded.counters;
    assert_eq!(c["strongroom_job_items_processed_total{job=move}"], 25);
    // Its own re-encryption, and the move's.
    assert_eq!(c["strongroom_job_items_processed_total{job=reencrypt}"], 50);
    assert!(c["strongroom_job_items_processed_total{job=compact}"] > 25);
    assert_eq!(
        c["strongroom_operations_total{op=keyring.rotate-dek,outcome=ok}"],
        1
    );
    assert_eq!(
        c["strongroom_operations_total{op=keyring.reencrypt,outcome=ok}"],
        2
    );
    assert_eq!(
        c["strongroom_operations_total{op=keyring.move,outcome=ok}"],
        2
    );
    // The move compacts (its old KEKs' bytes are shredded), then the explicit compaction.
    assert_eq!(
        c["strongroom_operations_total{op=store.compact,outcome=ok}"],
        2
    );
    assert_eq!(
        recorded.gauges["strongroom_job_progress_done{job=move}"],
        25.0
    );
    assert_eq!(
        recorded.gauges["strongroom_job_progress_size{job=move}"],
        25.0
    );
    assert_no_secret_in_labels(&recorded, &["payroll", "elsewhere", "k1"]);
}

/// Every label is one of the documented ones, and no value holds a name, key or value.
fn assert_no_secret_in_labels(recorded: &Seen, secrets: &[&str]) {
    assert!(!recorded.labels.is_empty());
    for (k, v) in &recorded.labels {
        assert!(
            [
                "op", "outcome", "key", "reason", "call", "kind", "job", "failure"
            ]
            .contains(&k.as_str()),
            "undocumented label {k}"
        );
        for s in secrets {
            assert!(!v.contains(s), "label {k}={v} holds {s}");
        }
    }
}

softhsm_tests! {
    // The PKCS#11 backend on the fault-injecting module (strongroom-p11-testkit), in a process
    // of its own with its own SoftHSM2 token: the device fails every call that names a session
    // while one read needs the HSM, then comes back.
    fn an_hsm_failure_and_its_recovery_are_counted(token) {
        const ATTEMPTS: u32 = 3;
        let mut config = Pkcs11Config::new(
            strongroom_p11_testkit::module_path(),
            TokenSelector::Label(token.label.clone()),
            PinSource::File(token.pin_file()),
        );
        config.attempts = ATTEMPTS;
        config.backoff = Duration::from_millis(5);
        let backend = Arc::new(Pkcs11Backend::open(config).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let store =
            common::create(dir.path(), backend.clone(), &rn("service"), StoreOptions::default())
                .unwrap();
        let control = FaultControl::new(token.fault_control());
        let payroll = kr("payroll");
        store.create_keyring(&payroll, None).unwrap();
        store.put(&payroll, b"alice", b"salary=100000").unwrap();
        store.purge_key_cache();
        let before = backend.stats();

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let recorded = metrics::with_local_recorder(&recorder, || {
            control.set(&FaultPlan::new().fail(CKR_DEVICE_ERROR)).unwrap();
            let err = store.get(&payroll, b"alice").unwrap_err();
            assert!(!err.is_integrity(), "{err}");
            control.clear().unwrap();
            // The same store, no restart: the backend reconnects and the read works.
            let value = store.get(&payroll, b"alice").unwrap().unwrap();
            assert_eq!(value.expose(), b"salary=100000");
            seen(&snapshotter)
        });
        let after = backend.stats();
        let attempts = u64::from(ATTEMPTS);
        let expected = map(&[
            ("strongroom_operations_total{op=record.get,outcome=error}", 1),
            ("strongroom_operations_total{op=record.get,outcome=ok}", 1),
            ("strongroom_key_cache_misses_total{key=dek}", 2),
            ("strongroom_key_cache_misses_total{key=kek}", 2),
            ("strongroom_backend_calls_total{call=unwrap}", 2),
            ("strongroom_backend_errors_total{call=unwrap,kind=device}", 1),
            // Every attempt of the failing unwrap lost the device and recovered the library
            // (C_Initialize names no session, so it works during this fault); the backend
            // found its token again after each recovery and opened one new session.
            ("strongroom_pkcs11_failed_attempts_total{failure=device_lost}", attempts),
            ("strongroom_pkcs11_reinitializations_total", attempts),
            ("strongroom_pkcs11_reconnects_total", attempts),
            ("strongroom_pkcs11_sessions_opened_total", 1),
        ]);
        assert_eq!(recorded.counters, expected);
        // The backend's own counters agree.
        assert_eq!(after.generation - before.generation, attempts);
        assert_eq!(after.reinitializations - before.reinitializations, attempts);
        assert_eq!(after.sessions_opened - before.sessions_opened, 1);
        assert_no_secret_in_labels(&recorded, &["payroll", "alice", "salary", &token.label]);
    }
}

/// Every metric the code reports is in the README's table and in its module's `//!` table, and
/// the README names no metric the code does not report.
#[test]
fn every_metric_is_documented_and_every_documented_metric_exists() {
    use strongroom_pkcs11::telemetry as p11;
    let code = [
        telemetry::OPERATIONS,
        telemetry::OPERATION_SECONDS,
        telemetry::CACHE_HITS,
        telemetry::CACHE_MISSES,
        telemetry::CACHE_EVICTIONS,
        telemetry::BACKEND_CALLS,
        telemetry::BACKEND_ERRORS,
        telemetry::BACKEND_SECONDS,
        telemetry::JOB_ITEMS,
        telemetry::JOB_DONE,
        telemetry::JOB_SIZE,
        telemetry::SHREDDED_BYTES,
        p11::FAILED_ATTEMPTS,
        p11::REINITIALIZATIONS,
        p11::RECOVERY_FAILURES,
        p11::RECONNECTS,
        p11::SESSIONS_OPENED,
    ];
    let readme = include_str!("../../../README.md");
    let section = &readme[readme.find("## Metrics").unwrap()..];
    let section = &section[..section[3..].find("\n## ").unwrap()];
    let store_docs = include_str!("../src/telemetry.rs");
    let p11_docs = include_str!("../../strongroom-pkcs11/src/telemetry.rs");
    for name in code {
        let row = format!("| `{name}` |");
        assert!(
            section.contains(&row),
            "{name} is missing from the README's metrics table"
        );
        let docs = if name.starts_with("strongroom_pkcs11_") {
            p11_docs
        } else {
            store_docs
        };
        assert!(
            docs.contains(&format!("//! {row}")),
            "{name} is missing from its module's docs"
        );
    }
    for row in section.lines().filter(|l| l.starts_with("| `strongroom_")) {
        let name = row.split('`').nth(1).unwrap();
        assert!(
            code.contains(&name),
            "the README documents {name}, which nothing reports"
        );
    }
}
