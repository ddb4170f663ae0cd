//! The store on a failing HSM: the PKCS#11 backend on the fault-injecting module
//! (`strongroom-p11-testkit`), each test in its own process with its own SoftHSM2 token. A
//! workload of writers and readers runs while the device fails; the key cache's TTL is short, so
//! reads keep going back to the HSM. What must hold: no fault ever yields a wrong plaintext or
//! loses an acknowledged record; every error during the fault is typed (a backend error, never
//! an integrity error) and says what happened; once the fault clears, the same store (no
//! restart) serves everything again, key operations included, and its audit log verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strongroom_core::{Backend, KeyringName, RootKeyName};
use strongroom_p11_testkit::sys::{CKR_DEVICE_ERROR, CKR_SESSION_HANDLE_INVALID};
use strongroom_p11_testkit::{FaultControl, FaultPlan};
use strongroom_pkcs11::{PinSource, Pkcs11Backend, Pkcs11Config, TokenSelector};
use strongroom_store::{Store, StoreError, StoreOptions};
use strongroom_test_support::softhsm::Token;
use strongroom_test_support::softhsm_tests;

fn store(token: &Token, dir: &std::path::Path) -> Store {
    let mut c = Pkcs11Config::new(
        strongroom_p11_testkit::module_path(),
        TokenSelector::Label(token.label.clone()),
        PinSource::File(token.pin_file()),
    );
    c.attempts = 3;
    c.backoff = Duration::from_millis(5);
    let backend: Arc<dyn Backend> = Arc::new(Pkcs11Backend::open(c).unwrap());
    common::create(
        dir,
        backend,
        &RootKeyName::new("service").unwrap(),
        StoreOptions {
            // Short, so that reads keep unwrapping through the HSM during the fault.
            cache_ttl: Duration::from_millis(20),
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

const BEFORE: u8 = 0;
const DURING: u8 = 1;
const CLEARING: u8 = 2;
const SETTLED: u8 = 3;

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    errors: AtomicU64,
}

/// Runs writers and readers on `s` while `plan` is in force for `window`, then clears it and
/// checks everything acknowledged, on the same store.
fn workload_through(s: &Store, control: &FaultControl, plan: &FaultPlan, window: Duration) {
    let k = KeyringName::new("ledger").unwrap();
    s.create_keyring(&k, None).unwrap();
    let acked: Mutex<HashMap<Vec<u8>, Vec<u8>>> = Mutex::new(HashMap::new());
    let stop = AtomicBool::new(false);
    // The phase each operation started in: before the fault, during it, while it clears, and
    // once recovery has had its moment.
    let phase = AtomicU8::new(BEFORE);
    let counts: [Counts; 4] = Default::default();
    let samples = Mutex::new(Vec::<String>::new());
    std::thread::scope(|scope| {
        for t in 0..3 {
            let (acked, stop, phase, counts, samples, k) =
                (&acked, &stop, &phase, &counts, &samples, &k);
            scope.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("t{t}/{i:06}").into_bytes();
                    let value =
                        format!("value {t} {i} {}", "x".repeat((i % 97) as usize)).into_bytes();
                    let counts = &counts[usize::from(phase.load(Ordering::SeqCst))];
                    let check = |e: &StoreError| {
                        assert!(
                            !e.is_integrity(),
                            "a fault became an integrity error: {e:?}"
                        );
                        assert!(
                            matches!(e, StoreError::Backend { .. }),
                            "a fault must surface as a backend error: {e:?}"
                        );
                        assert!(
                            e.to_string().contains("CKR_") || e.to_string().contains("device"),
                            "{e}"
                        );
                        let mut s = samples.lock().unwrap();
                        if s.len() < 4 {
                            s.push(e.to_string());
                        }
                    };
                    match s.put(k, &key, &value) {
                        Ok(()) => {
                            acked.lock().unwrap().insert(key.clone(), value.clone());
                            counts.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            check(&e);
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // Read back something acknowledged earlier (by any thread).
                    let probe = acked
                        .lock()
                        .unwrap()
                        .iter()
                        .next()
                        .map(|(k, v)| (k.clone(), v.clone()));
                    if let Some((pk, pv)) = probe {
                        match s.get(k, &pk) {
                            Ok(Some(got)) => assert_eq!(got.expose(), &pv[..], "a wrong plaintext"),
                            Ok(None) => panic!("an acknowledged record is gone"),
                            Err(e) => {
                                check(&e);
                                counts.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
        let t0 = Instant::now();
        while counts[0].ok.load(Ordering::Relaxed) < 30 && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Operations that start from here on count as "during"; those in flight finish first.
        phase.store(DURING, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        control.set(plan).unwrap();
        std::thread::sleep(window);
        phase.store(CLEARING, Ordering::SeqCst);
        control.clear().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        phase.store(SETTLED, Ordering::SeqCst);
        let t1 = Instant::now();
        while counts[3].ok.load(Ordering::Relaxed) < 30 && t1.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let n = |p: u8| {
        let c = &counts[usize::from(p)];
        (
            c.ok.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed),
        )
    };
    println!(
        "{plan}: ok/errors before {:?}, during {:?}, clearing {:?}, settled {:?}; injected {:?}; sample errors {:#?}",
        n(BEFORE),
        n(DURING),
        n(CLEARING),
        n(SETTLED),
        control.status(),
        samples.lock().unwrap()
    );
    assert_eq!(n(BEFORE).1, 0, "errors before any fault");
    assert!(n(DURING).1 > 0, "the fault never surfaced");
    assert_eq!(n(SETTLED).1, 0, "errors once the fault cleared");
    assert!(n(SETTLED).0 >= 30, "no work after recovery");
    assert!(control.status().total > 0, "the fault was never injected");
    // The same store, no restart: every acknowledged record reads back exactly.
    let acked = acked.into_inner().unwrap();
    assert!(acked.len() >= 30);
    for (key, value) in &acked {
        assert_eq!(s.get(&k, key).unwrap().unwrap().expose(), &value[..]);
    }
    // Key operations work again, and everything that happened is in a verifying log.
    s.rotate_dek(&k).unwrap();
    s.rotate_kek(&k).unwrap();
    s.put(&k, b"after", b"the fault").unwrap();
    assert_eq!(s.get(&k, b"after").unwrap().unwrap().expose(), b"the fault");
    s.verify_audit().unwrap().unwrap();
}

softhsm_tests! {
    fn a_store_on_a_failing_device_loses_nothing_and_recovers_without_restart(token) {
        let dir = tempfile::tempdir().unwrap();
        let s = store(token, dir.path());
        let control = FaultControl::new(token.fault_control());
        workload_through(&s, &control, &FaultPlan::new().fail(CKR_DEVICE_ERROR), Duration::from_millis(400));
    }

    fn a_store_whose_sessions_die_loses_nothing_and_recovers_without_restart(token) {
        let dir = tempfile::tempdir().unwrap();
        let s = store(token, dir.path());
        let control = FaultControl::new(token.fault_control());
        workload_through(&s, &control, &FaultPlan::new().fail(CKR_SESSION_HANDLE_INVALID), Duration::from_millis(400));
    }

    fn a_store_whose_token_is_pulled_loses_nothing_and_recovers_without_restart(token) {
        let dir = tempfile::tempdir().unwrap();
        let s = store(token, dir.path());
        let control = FaultControl::new(token.fault_control());
        workload_through(&s, &control, &FaultPlan::new().token_pulled(), Duration::from_millis(400));
    }
}
