//! The PKCS#11 backend against a failing HSM: the backend runs on the fault-injecting module of
//! `strongroom-p11-testkit`, which forwards to the test's own SoftHSM2 token and injects what the
//! test writes to its control file (device errors, lost sessions, a pulled token, a stuck
//! device, lost replies, latency, a session cap). Each test runs in its own process with its own
//! token (see `strongroom_test_support::softhsm`).
//!
//! What every test holds the backend to: errors during a fault are typed device errors naming
//! the operation and the PKCS#11 return code, never an integrity error and never a wrong key;
//! when the fault clears, the same backend instance works again, without a restart, and reads
//! what it wrapped before; re-initializations stay bounded; non-idempotent calls leave the
//! token as if they ran exactly once or not at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use strongroom_core::blob::WrappedKey;
use strongroom_core::{Backend, BackendError, Key256, RootKeyId};
use strongroom_p11_testkit::sys::{
    CK_RV, CKR_ATTRIBUTE_TYPE_INVALID, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_DEVICE_ERROR,
    CKR_DEVICE_REMOVED, CKR_GENERAL_ERROR, CKR_SESSION_CLOSED, CKR_SESSION_HANDLE_INVALID,
    CKR_TOKEN_NOT_PRESENT,
};
use strongroom_p11_testkit::{FaultControl, FaultPlan, ckr_name};
use strongroom_pkcs11::{PinSource, Pkcs11Backend, Pkcs11Config, TokenSelector};
use strongroom_test_support::conformance::rid;
use strongroom_test_support::softhsm::Token;
use strongroom_test_support::softhsm_tests;

/// The backend on the fault module, with short backoffs so that faults outlast its retries.
fn config(token: &Token) -> Pkcs11Config {
    let mut c = Pkcs11Config::new(
        strongroom_p11_testkit::module_path(),
        TokenSelector::Label(token.label.clone()),
        PinSource::File(token.pin_file()),
    );
    c.attempts = 3;
    c.backoff = Duration::from_millis(5);
    c.checkout_timeout = Duration::from_secs(20);
    c
}

fn open(token: &Token) -> Pkcs11Backend {
    Pkcs11Backend::open(config(token)).expect("open the PKCS#11 backend on the fault module")
}

fn faults(token: &Token) -> FaultControl {
    let c = FaultControl::new(token.fault_control());
    assert_eq!(
        std::env::var_os("STRONGROOM_FAULT_CONTROL"),
        Some(c.path().as_os_str().to_owned()),
        "the isolated child must point the fault module at this token's control file"
    );
    c
}

/// Operations a device error may name: the caller's, or a step of reconnecting.
const OPERATIONS: &[&str] = &["wrap a key", "unwrap a key"];

/// A device error that names the caller's operation and a PKCS#11 return code.
fn assert_typed(e: &BackendError) {
    match e {
        BackendError::Device { operation, .. } => {
            let msg = e.to_string();
            assert!(
                OPERATIONS.contains(operation),
                "a device error must name the caller's operation, got {operation:?}: {msg}"
            );
            assert!(
                msg.contains("CKR_"),
                "a device error must name the return code: {msg}"
            );
            assert!(
                !msg.contains(strongroom_test_support::softhsm::USER_PIN),
                "no PIN in errors: {msg}"
            );
        }
        other => panic!("expected a typed device error, got {other:?}"),
    }
}

fn wrap_some(b: &Pkcs11Backend, root: &RootKeyId, n: usize) -> Vec<(Key256, WrappedKey, String)> {
    (0..n)
        .map(|i| {
            let k = Key256::generate().unwrap();
            let ctx = format!("before/{i}");
            let blob = b.wrap(root, &k, ctx.as_bytes()).unwrap();
            (k, blob, ctx)
        })
        .collect()
}

fn assert_unwrap_all(b: &Pkcs11Backend, blobs: &[(Key256, WrappedKey, String)]) {
    for (k, blob, ctx) in blobs {
        let back = b.unwrap(blob, ctx.as_bytes()).unwrap();
        assert!(
            back.ct_eq(k),
            "wrong key for a blob wrapped before the fault"
        );
    }
}

/// Phases of a fault run, by when an operation started.
const BEFORE: u8 = 0;
const DURING: u8 = 1;
const CLEARING: u8 = 2;
const SETTLED: u8 = 3;

#[derive(Debug, Default)]
struct Tally {
    ok: [u64; 4],
    errors: [u64; 4],
    /// Re-initializations when the run settled and when it ended.
    reinit_settled: u64,
    reinit_end: u64,
}

/// Waits until `done` (or 20 s, for a loaded machine; the caller's assertions then fail).
fn wait_until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `threads` threads of wrap + unwrap (checking every key) while `plan` is in force for
/// `window` (and, if `expect_errors`, until a caller saw an error), then clears it. Panics on
/// any answer other than the right key or a typed device error; returns what happened in each
/// phase.
fn fault_window(
    b: &Pkcs11Backend,
    root: &RootKeyId,
    control: &FaultControl,
    plan: &FaultPlan,
    threads: usize,
    window: Duration,
    expect_errors: bool,
) -> Tally {
    let phase = AtomicU8::new(BEFORE);
    // The phase in which each thread started its latest operation.
    let started: Vec<AtomicU8> = (0..threads).map(|_| AtomicU8::new(BEFORE)).collect();
    let stop = AtomicBool::new(false);
    let ok: [AtomicU64; 4] = Default::default();
    let errors: [AtomicU64; 4] = Default::default();
    let samples = Mutex::new(Vec::<String>::new());
    let mut tally = Tally::default();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (phase, stop, ok, errors, samples) = (&phase, &stop, &ok, &errors, &samples);
            let mine = &started[t];
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let started = phase.load(Ordering::SeqCst);
                    mine.store(started, Ordering::SeqCst);
                    let k = Key256::generate().unwrap();
                    let ctx = format!("t{t}/{i}");
                    let r = b
                        .wrap(root, &k, ctx.as_bytes())
                        .and_then(|blob| b.unwrap(&blob, ctx.as_bytes()));
                    match r {
                        Ok(back) => {
                            assert!(back.ct_eq(&k), "wrong key (phase {started})");
                            ok[usize::from(started)].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert_typed(&e);
                            errors[usize::from(started)].fetch_add(1, Ordering::Relaxed);
                            let mut s = samples.lock().unwrap();
                            if s.len() < 5 {
                                s.push(format!("phase {started}: {e}"));
                            }
                        }
                    }
                }
            });
        }
        wait_until(|| ok[usize::from(BEFORE)].load(Ordering::Relaxed) >= 20);
        control.set(plan).unwrap();
        phase.store(DURING, Ordering::SeqCst);
        std::thread::sleep(window);
        if expect_errors {
            wait_until(|| errors[usize::from(DURING)].load(Ordering::Relaxed) > 0);
        }
        phase.store(CLEARING, Ordering::SeqCst);
        control.clear().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        phase.store(SETTLED, Ordering::SeqCst);
        // Every operation that started before now has finished its retries (and whatever
        // re-initialize they called for).
        wait_until(|| started.iter().all(|p| p.load(Ordering::SeqCst) == SETTLED));
        tally.reinit_settled = b.stats().reinitializations;
        std::thread::sleep(Duration::from_millis(300));
        wait_until(|| ok[usize::from(SETTLED)].load(Ordering::Relaxed) >= 20);
        stop.store(true, Ordering::Relaxed);
    });
    tally.reinit_end = b.stats().reinitializations;
    for p in 0..4 {
        tally.ok[p] = ok[p].load(Ordering::Relaxed);
        tally.errors[p] = errors[p].load(Ordering::Relaxed);
    }
    println!(
        "plan {:?}: {tally:?}; stats {:?}; injected {:?}; sample errors {:#?}",
        plan.to_string(),
        b.stats(),
        control.status(),
        samples.lock().unwrap()
    );
    tally
}

/// What every fault run must show once the fault is gone.
fn assert_recovered(
    b: &Pkcs11Backend,
    control: &FaultControl,
    tally: &Tally,
    blobs: &[(Key256, WrappedKey, String)],
) {
    let injected = control.status().total;
    assert!(injected > 0, "the fault was never injected");
    assert!(
        tally.ok[usize::from(BEFORE)] > 0,
        "no work before the fault: {tally:?}"
    );
    // Recovered without a restart: everything that started after the fault settled worked.
    assert_eq!(
        tally.errors[usize::from(SETTLED)],
        0,
        "errors after recovery: {tally:?}"
    );
    assert!(
        tally.ok[usize::from(SETTLED)] > 0,
        "no work after recovery: {tally:?}"
    );
    // Bounded re-initialization: at most one per injected fault, none once recovered.
    assert!(
        tally.reinit_end <= injected,
        "{} re-initializations for {injected} injected faults",
        tally.reinit_end
    );
    assert_eq!(
        tally.reinit_settled, tally.reinit_end,
        "re-initializing after recovery: {tally:?}"
    );
    // Data wrapped before the fault still opens, with the same backend instance.
    assert_unwrap_all(b, blobs);
    let st = b.stats();
    assert!(st.open <= st.cap, "{st:?}");
}

/// An error code on every session call for 600 ms, under 4 threads of wrap + unwrap.
fn error_code_window(token: &Token, rv: CK_RV) {
    let b = open(token);
    let control = faults(token);
    let root = rid("faults", 1);
    b.generate_root(&root).unwrap();
    let blobs = wrap_some(&b, &root, 8);
    let plan = FaultPlan::new().fail(rv);
    let tally = fault_window(
        &b,
        &root,
        &control,
        &plan,
        4,
        Duration::from_millis(600),
        true,
    );
    // The fault outlasts the retries (3 attempts, 5 + 20 ms backoff): callers saw it.
    assert!(
        tally.errors[usize::from(DURING)] > 0,
        "{} never surfaced: {tally:?}",
        ckr_name(rv)
    );
    assert!(control.status().count_code(&ckr_name(rv)) > 0);
    assert_recovered(&b, &control, &tally, &blobs);
}

fn count_keys_labelled(token: &Token, label: &str) -> usize {
    let listing = token.pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
    listing
        .lines()
        .filter(|l| {
            l.trim_start().starts_with("label:")
                && l.trim_end().trim_end_matches('\'').ends_with(label)
        })
        .count()
}

/// The `Usage:` line pkcs11-tool prints for the secret key labelled `label`.
fn key_usage(token: &Token, label: &str) -> String {
    let listing = token.pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
    let block = listing
        .split("Secret Key Object")
        .find(|b| {
            b.lines()
                .any(|l| l.trim_start().starts_with("label:") && l.trim_end().ends_with(label))
        })
        .unwrap_or_else(|| panic!("{label} not listed:\n{listing}"));
    block
        .lines()
        .find(|l| l.trim_start().starts_with("Usage:"))
        .unwrap_or_else(|| panic!("no usage line:\n{block}"))
        .trim()
        .to_owned()
}

fn count_records_labelled(token: &Token, label: &str) -> usize {
    let listing = token.pkcs11_tool(&["--list-objects", "--type", "data"]);
    listing
        .lines()
        .filter(|l| {
            l.trim_start().starts_with("label:")
                && l.trim_end().trim_end_matches('\'').ends_with(label)
        })
        .count()
}

softhsm_tests! {
    fn the_fault_module_forwards_faithfully_when_no_fault_is_set(token) {
        let b = open(token);
        let control = faults(token);
        let root = rid("plain", 1);
        b.generate_root(&root).unwrap();
        let blobs = wrap_some(&b, &root, 4);
        assert_unwrap_all(&b, &blobs);
        control.clear().unwrap();
        assert_unwrap_all(&b, &blobs);
        assert_eq!(control.status().total, 0);
        assert!(b.health().unwrap().iter().all(|c| c.ok));
        assert_eq!(b.stats().reinitializations, 0);
    }

    fn device_errors_are_typed_and_clear_without_restart(token) {
        error_code_window(token, CKR_DEVICE_ERROR);
    }

    fn invalid_session_handles_are_typed_and_clear_without_restart(token) {
        error_code_window(token, CKR_SESSION_HANDLE_INVALID);
    }

    fn closed_sessions_are_typed_and_clear_without_restart(token) {
        error_code_window(token, CKR_SESSION_CLOSED);
    }

    fn a_missing_token_is_typed_and_clears_without_restart(token) {
        error_code_window(token, CKR_TOKEN_NOT_PRESENT);
    }

    fn a_removed_device_is_typed_and_clears_without_restart(token) {
        error_code_window(token, CKR_DEVICE_REMOVED);
    }

    fn an_uninitialized_library_is_typed_and_clears_without_restart(token) {
        error_code_window(token, CKR_CRYPTOKI_NOT_INITIALIZED);
    }

    fn a_pulled_token_is_typed_and_old_sessions_are_never_reused(token) {
        let b = open(token);
        let control = faults(token);
        let root = rid("pulled", 1);
        b.generate_root(&root).unwrap();
        let blobs = wrap_some(&b, &root, 8);
        let plan = FaultPlan::new().token_pulled();
        let tally = fault_window(&b, &root, &control, &plan, 4, Duration::from_millis(600), true);
        assert!(tally.errors[usize::from(DURING)] > 0, "{tally:?}");
        let st = control.status();
        assert!(st.count_code("CKR_DEVICE_REMOVED") + st.count_code("CKR_TOKEN_NOT_PRESENT") > 0, "{st:?}");
        assert_recovered(&b, &control, &tally, &blobs);
        // Once the token is back, a session from before the pull never works again: if the
        // backend had used one after reinsertion it would have failed (and been counted).
        let before = control.status().count_code("CKR_SESSION_HANDLE_INVALID");
        assert_unwrap_all(&b, &blobs);
        assert_eq!(control.status().count_code("CKR_SESSION_HANDLE_INVALID"), before, "an old session was used after recovery");
        assert!(b.stats().reinitializations >= 1, "a pulled token needs a reconnect");
    }

    fn a_token_pulled_while_idle_is_reconnected_on_next_use(token) {
        let b = open(token);
        let control = faults(token);
        let root = rid("idle", 1);
        b.generate_root(&root).unwrap();
        let blobs = wrap_some(&b, &root, 4);
        // Pull while nothing runs: a call during the pull fails typed, after its retries.
        control.set(&FaultPlan::new().token_pulled()).unwrap();
        let (_, blob, ctx) = &blobs[0];
        let e = b.unwrap(blob, ctx.as_bytes()).unwrap_err();
        assert_typed(&e);
        // Reinserted: the next call reconnects, and never touches a session from before.
        control.clear().unwrap();
        assert_unwrap_all(&b, &blobs);
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&root, &k, b"after").unwrap();
        assert!(b.unwrap(&blob, b"after").unwrap().ct_eq(&k));
        assert!(b.stats().reinitializations >= 1);
    }

    fn a_device_stuck_after_an_error_recovers_by_reinitializing(token) {
        let b = open(token);
        let control = faults(token);
        let root = rid("stuck", 1);
        b.generate_root(&root).unwrap();
        let blobs = wrap_some(&b, &root, 8);
        // One device error, then every session (old and new) is invalid until C_Finalize: only
        // the backend's re-initialize gets out of it.
        let plan = FaultPlan::new().stuck_after_device_error();
        let tally = fault_window(&b, &root, &control, &plan, 4, Duration::from_millis(600), false);
        let st = control.status();
        assert_eq!(st.count_code("CKR_DEVICE_ERROR"), 1, "{st:?}");
        assert!(tally.reinit_end >= 1, "stuck sessions need a re-initialize: {tally:?}");
        // The library recovered while the plan was still in force (the device error is spent).
        assert!(tally.ok[usize::from(DURING)] > 0, "no recovery while the stuck plan held: {tally:?}");
        assert_recovered(&b, &control, &tally, &blobs);
    }

    fn general_errors_from_the_device_are_not_reported_as_tampering(token) {
        let b = open(token);
        let control = faults(token);
        let root = rid("general", 1);
        b.generate_root(&root).unwrap();
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&root, &k, b"ctx").unwrap();

        // Every C_Decrypt and C_Encrypt fails: the canary fails too, so the authentic blob's
        // failure is the device's, not an integrity failure.
        control.set(&FaultPlan::new().fail(CKR_GENERAL_ERROR).on(&["C_Decrypt", "C_Encrypt"])).unwrap();
        let e = b.unwrap(&blob, b"ctx").unwrap_err();
        assert_typed(&e);
        assert!(e.to_string().contains("CKR_GENERAL_ERROR"), "{e}");
        assert!(control.status().count_in("fail", "C_Encrypt") > 0, "the canary ran");

        // One glitch on C_Decrypt: the canary passes, the retry unwraps the authentic blob.
        control.set(&FaultPlan::new().fail(CKR_GENERAL_ERROR).on(&["C_Decrypt"]).times(1)).unwrap();
        let before = control.status().count_in("fail", "C_Decrypt");
        assert!(b.unwrap(&blob, b"ctx").unwrap().ct_eq(&k));
        assert_eq!(control.status().count_in("fail", "C_Decrypt"), before + 1, "the glitch was injected");

        // A really tampered blob, no fault: integrity error, every time.
        control.clear().unwrap();
        let mut p = blob.payload().to_vec();
        p[20] ^= 0x01;
        let bad = WrappedKey::new(blob.alg(), blob.wrapped_by().clone(), p).unwrap();
        for _ in 0..3 {
            assert!(matches!(b.unwrap(&bad, b"ctx"), Err(BackendError::Integrity)));
        }
        assert!(matches!(b.unwrap(&blob, b"other"), Err(BackendError::Integrity)));
        assert!(b.unwrap(&blob, b"ctx").unwrap().ct_eq(&k));
        assert_eq!(b.stats().reinitializations, 0, "bad data is no reason to reconnect");
    }

    fn a_session_cap_below_the_pool_size_makes_callers_wait(token) {
        let b = open(token);
        let control = faults(token);
        let root = rid("cap", 1);
        b.generate_root(&root).unwrap();
        let blobs = wrap_some(&b, &root, 16);
        // The token refuses a fourth session without saying so in its token info; `b` holds one
        // (as other applications would), so the new backend gets two, against a pool cap of 16.
        // (1 ms more per C_Decrypt keeps sessions busy long enough for callers to pile up.)
        control.set(&FaultPlan::new().session_cap(3).latency_ms(1).on(&["C_Decrypt"])).unwrap();
        let fresh = Pkcs11Backend::open(config(token)).unwrap();
        assert!(fresh.stats().cap > 2);
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (fresh, blobs, start) = (&fresh, &blobs, &start);
                s.spawn(move || {
                    start.wait();
                    for i in 0..60 {
                        let (k, blob, ctx) = &blobs[(t * 5 + i) % blobs.len()];
                        let got = fresh.unwrap(blob, ctx.as_bytes()).unwrap_or_else(|e| panic!("thread {t}: {e}"));
                        assert!(got.ct_eq(k));
                    }
                });
            }
        });
        let st = fresh.stats();
        println!("capped pool: {st:?}; injected {:?}", control.status());
        assert!(control.status().count("session-cap") > 0, "the cap was never reached");
        assert!(st.open <= 2 && st.sessions_opened <= 2, "{st:?}");
        assert!(st.cap <= 2, "the pool keeps to the sessions the token allows: {st:?}");
        assert_eq!(st.reinitializations, 0, "a full token is no reason to reconnect");
        // The first backend (whose sessions count against the cap too) still works.
        control.clear().unwrap();
        assert_unwrap_all(&b, &blobs);
    }

    fn added_latency_slows_calls_but_they_succeed(token) {
        let b = open(token);
        let control = faults(token);
        let root = rid("slow", 1);
        b.generate_root(&root).unwrap();
        let blobs = wrap_some(&b, &root, 4);
        control.set(&FaultPlan::new().latency_ms(20)).unwrap();
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (b, root) = (&b, &root);
                s.spawn(move || {
                    for i in 0..5 {
                        let k = Key256::generate().unwrap();
                        let ctx = format!("slow/{t}/{i}");
                        let blob = b.wrap(root, &k, ctx.as_bytes()).unwrap();
                        assert!(b.unwrap(&blob, ctx.as_bytes()).unwrap().ct_eq(&k));
                    }
                });
            }
        });
        let took = start.elapsed();
        let delayed = control.status().count("latency");
        println!("20 wrap+unwrap round trips on 4 threads at +20 ms per call: {took:?}, {delayed} calls delayed");
        assert!(delayed >= 20 * 4, "latency was not injected: {delayed}");
        assert!(took >= Duration::from_millis(20 * 4 * 5), "{took:?}");
        assert!(took < Duration::from_secs(30), "{took:?}");
        control.clear().unwrap();
        assert_unwrap_all(&b, &blobs);
        assert_eq!(b.stats().reinitializations, 0, "slowness is no reason to reconnect");
    }

    fn a_failed_key_generation_is_not_retried_blind(token) {
        let b = open(token);
        let control = faults(token);
        let label = "strongroom/gen/v1";
        // The device refuses C_GenerateKey once: generate either fails typed and leaves no
        // key, or (after reconnecting) succeeds exactly once.
        control.set(&FaultPlan::new().fail(CKR_DEVICE_ERROR).on(&["C_GenerateKey"]).times(1)).unwrap();
        let r = b.generate_root(&rid("gen", 1));
        println!("generate with one refused C_GenerateKey: {r:?}");
        assert_eq!(control.status().count_in("fail", "C_GenerateKey"), 1);
        control.clear().unwrap();
        let keys = count_keys_labelled(token, label);
        match r {
            Ok(_) => assert_eq!(keys, 1, "one root key, not {keys}"),
            Err(e) => {
                assert!(matches!(e, BackendError::Device { .. }), "{e:?}");
                assert_eq!(keys, 0, "a failed generate left {keys} keys");
            }
        }
        assert_eq!(count_records_labelled(token, label), keys.min(1));

        // The key is made but the reply is lost: a blind retry would make a second key. The
        // retry must find and finish the first one instead.
        let label = "strongroom/lost/v1";
        control.set(&FaultPlan::new().lose_reply(CKR_DEVICE_ERROR).on(&["C_GenerateKey"]).times(1)).unwrap();
        let r = b.generate_root(&rid("lost", 1));
        println!("generate with a lost C_GenerateKey reply: {r:?}");
        assert_eq!(control.status().count_in("lose-reply", "C_GenerateKey"), 1);
        control.clear().unwrap();
        let keys = count_keys_labelled(token, label);
        match r {
            Ok(_) => assert_eq!(keys, 1, "one root key, not {keys}"),
            Err(e) => panic!("a lost reply should be finished on retry, got {e:?} ({keys} keys)"),
        }
        assert_eq!(count_records_labelled(token, label), 1);
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&rid("lost", 1), &k, b"c").unwrap();
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
    }

    fn the_audit_anchor_under_other_tokens_behaviours(token) {
        let b = open(token);
        let control = faults(token);
        let label = "strongroom/anchor";
        b.put_audit_anchor(b"anchor-1", &[]).unwrap();
        // The new anchor is made but the reply is lost: the retry finds it, makes no second
        // one, and still removes the one it replaces.
        control.set(&FaultPlan::new().lose_reply(CKR_DEVICE_ERROR).on(&["C_CreateObject"]).times(1)).unwrap();
        let r = b.put_audit_anchor(b"anchor-2", &[b"anchor-1".to_vec()]);
        assert_eq!(control.status().count_in("lose-reply", "C_CreateObject"), 1);
        control.clear().unwrap();
        assert!(r.is_ok(), "a lost reply is finished on retry: {r:?}");
        assert_eq!(count_records_labelled(token, label), 1);
        assert_eq!(b.audit_anchors().unwrap(), vec![b"anchor-2".to_vec()]);
        // A token that answers an object creation with CKR_GENERAL_ERROR now and then (SoftHSM2
        // when two sessions create at once): tried again.
        control.set(&FaultPlan::new().fail(CKR_GENERAL_ERROR).on(&["C_CreateObject"]).times(1)).unwrap();
        b.put_audit_anchor(b"anchor-3", &[b"anchor-2".to_vec()]).unwrap();
        control.clear().unwrap();
        assert_eq!(b.audit_anchors().unwrap(), vec![b"anchor-3".to_vec()]);
        // A device that keeps failing the search: a typed device error, never "no anchor"
        // (which a store would take for an anchor removed, or none written yet).
        control.set(&FaultPlan::new().fail(CKR_DEVICE_ERROR).on(&["C_FindObjectsInit"])).unwrap();
        let e = b.audit_anchors().unwrap_err();
        control.clear().unwrap();
        match &e {
            BackendError::Device { operation, .. } => {
                assert_eq!(*operation, "read the audit anchor", "{e}");
                assert!(e.to_string().contains("CKR_DEVICE_ERROR"), "{e}");
            }
            other => panic!("a typed device error, not {other:?}"),
        }
        // And once the device is back, the same backend reads it again.
        assert_eq!(b.audit_anchors().unwrap(), vec![b"anchor-3".to_vec()]);
    }

    fn a_lost_record_write_reply_leaves_a_usable_root(token) {
        let b = open(token);
        let control = faults(token);
        let label = "strongroom/lostrec/v1";
        // The record is written but the reply is lost: the outcome is unknown to the backend.
        control.set(&FaultPlan::new().lose_reply(CKR_DEVICE_ERROR).on(&["C_CreateObject"]).times(1)).unwrap();
        let r = b.generate_root(&rid("lostrec", 1));
        println!("generate with a lost record-write reply: {r:?}");
        assert_eq!(control.status().count_in("lose-reply", "C_CreateObject"), 1);
        control.clear().unwrap();
        let keys = count_keys_labelled(token, label);
        let records = count_records_labelled(token, label);
        println!("after: {keys} keys, {records} records; find_root {:?}", b.find_root(&rid("lostrec", 1)));
        // Never a record without its key (a root that looks made but can never wrap): the key
        // is not rolled back when the record's fate is unknown, and the retry finishes.
        assert!(!(records > 0 && keys == 0), "a record without its key: {keys} keys, {records} records");
        assert_eq!((keys, records), (1, 1));
        assert!(r.is_ok(), "the retry finds its own record and key: {r:?}");
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&rid("lostrec", 1), &k, b"c").unwrap();
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
        // A second generate of the same root is still refused.
        assert!(matches!(b.generate_root(&rid("lostrec", 1)), Err(BackendError::RootExists { .. })));
    }

    fn a_disable_interrupted_between_its_steps_is_finished_by_the_next(token) {
        let b = open(token);
        let control = faults(token);
        let root = rid("dis", 1);
        b.generate_root(&root).unwrap();
        let label = "strongroom/dis/v1";
        assert!(key_usage(token, label).contains("encrypt"), "{}", key_usage(token, label));
        // The record says disabled, then turning the usage flags off fails once.
        control.set(&FaultPlan::new().fail(CKR_DEVICE_ERROR).on(&["C_SetAttributeValue"]).times(1)).unwrap();
        let r = b.disable_root(&root);
        println!("disable with one refused C_SetAttributeValue: {r:?}");
        assert_eq!(control.status().count_in("fail", "C_SetAttributeValue"), 1);
        control.clear().unwrap();
        match r {
            Ok(()) | Err(BackendError::RootDisabled { .. }) => {}
            Err(e) => {
                assert!(matches!(e, BackendError::Device { .. }), "{e:?}");
                // Run again: it must finish what the first one started.
                let again = b.disable_root(&root);
                assert!(matches!(again, Ok(()) | Err(BackendError::RootDisabled { .. })), "{again:?}");
            }
        }
        assert_eq!(key_usage(token, label), "Usage:      none", "the key itself must be unusable");
        assert_eq!(b.find_root(&root).unwrap().unwrap().status, strongroom_core::RootStatus::Disabled);
        b.enable_root(&root).unwrap();
        assert!(key_usage(token, label).contains("encrypt"));
    }

    fn an_adoption_whose_reply_was_lost_is_finished_on_retry(token) {
        let _ = token.pkcs11_tool(&["--keygen", "--key-type", "AES:32", "--label", "customer-key", "--sensitive"]);
        let b = open(token);
        let control = faults(token);
        let root = rid("cust", 1);
        // The record is written, its reply lost: the retry finds its own record for the same key.
        control.set(&FaultPlan::new().lose_reply(CKR_DEVICE_ERROR).on(&["C_CreateObject"]).times(1)).unwrap();
        let r = b.adopt_root(&root, "customer-key");
        println!("adopt with a lost record-write reply: {r:?}");
        assert_eq!(control.status().count_in("lose-reply", "C_CreateObject"), 1);
        control.clear().unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(count_records_labelled(token, "strongroom/cust/v1"), 1);
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&root, &k, b"c").unwrap();
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
        // Adopting another key under the same id is still refused.
        let _ = token.pkcs11_tool(&["--keygen", "--key-type", "AES:32", "--label", "other-key", "--sensitive"]);
        assert!(matches!(b.adopt_root(&root, "other-key"), Err(BackendError::RootExists { .. })));
    }

    fn a_backend_that_does_not_own_the_library_never_finalizes_it(token) {
        use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
        // Another part of this process initialized the library first and keeps a session.
        let ctx = Pkcs11::new(strongroom_p11_testkit::module_path()).unwrap();
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).unwrap();
        let slot = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == token.label)
            .unwrap();
        // Several read-only sessions: after a re-initialize their handle numbers would be void
        // or, worse, name the backend's new (read-write) sessions.
        let others: Vec<_> = (0..20).map(|_| ctx.open_ro_session(slot).unwrap()).collect();
        let b = open(token);
        let control = faults(token);
        let root = rid("shared", 1);
        b.generate_root(&root).unwrap();
        let blobs = wrap_some(&b, &root, 2);
        // The device goes away under the backend once: it recovers on its own sessions.
        control.set(&FaultPlan::new().fail(CKR_DEVICE_REMOVED).on(&["C_Encrypt"]).times(1)).unwrap();
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&root, &k, b"c").unwrap();
        assert_eq!(control.status().count_in("fail", "C_Encrypt"), 1, "the fault was injected");
        control.clear().unwrap();
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
        assert_unwrap_all(&b, &blobs);
        // The other user's sessions survived: the library was not finalized under them.
        for other in &others {
            let info = other.get_session_info().expect("the library was finalized under its other user");
            assert!(!info.read_write(), "a session handle now names someone else's session");
        }
    }

    fn a_token_without_allowed_mechanisms_still_gets_root_keys(token) {
        let b = open(token);
        let control = faults(token);
        // The token refuses CKA_ALLOWED_MECHANISMS (as tokens before PKCS#11 2.40 do) on the
        // first try of each way of making a root key: generate, import in the clear.
        let refuse = |function: &str| {
            control.set(&FaultPlan::new().fail(CKR_ATTRIBUTE_TYPE_INVALID).on(&[function]).times(1)).unwrap();
        };
        refuse("C_GenerateKey");
        b.generate_root(&rid("old-gen", 1)).unwrap();
        assert_eq!(control.status().count_in("fail", "C_GenerateKey"), 1);
        refuse("C_CreateObject");
        let material = Key256::generate().unwrap();
        b.import_root(&rid("old-imp", 1), &material).unwrap();
        assert_eq!(control.status().count_in("fail", "C_CreateObject"), 1);
        control.clear().unwrap();
        for root in [rid("old-gen", 1), rid("old-imp", 1)] {
            let k = Key256::generate().unwrap();
            let blob = b.wrap(&root, &k, b"c").unwrap();
            assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
        }
    }

    fn a_passing_general_error_on_a_token_change_is_tried_again_and_a_lasting_one_reported(token) {
        // SoftHSM2 itself answers CKR_GENERAL_ERROR now and then when two sessions create token
        // objects at the same moment; token changes read the token first on every attempt, so
        // one passing CKR_GENERAL_ERROR is tried again (no reconnect), whether the object was
        // made (a lost reply) or not.
        let b = open(token);
        let control = faults(token);
        control.set(&FaultPlan::new().fail(CKR_GENERAL_ERROR).on(&["C_GenerateKey"]).times(1)).unwrap();
        b.generate_root(&rid("passing", 1)).unwrap();
        assert_eq!(control.status().count_in("fail", "C_GenerateKey"), 1);
        control.set(&FaultPlan::new().lose_reply(CKR_GENERAL_ERROR).on(&["C_GenerateKey"]).times(1)).unwrap();
        b.generate_root(&rid("lost-general", 1)).unwrap();
        control.set(&FaultPlan::new().fail(CKR_GENERAL_ERROR).on(&["C_CreateObject"]).times(1)).unwrap();
        b.destroy_root(&rid("passing", 1)).unwrap();
        control.clear().unwrap();
        assert_eq!(count_keys_labelled(token, "strongroom/passing/v1"), 0);
        assert_eq!(count_keys_labelled(token, "strongroom/lost-general/v1"), 1);
        assert_eq!(count_records_labelled(token, "strongroom/lost-general/v1"), 1);
        // A lasting one is reported, typed, after the bounded attempts; nothing is left.
        control.set(&FaultPlan::new().fail(CKR_GENERAL_ERROR).on(&["C_GenerateKey"])).unwrap();
        let e = b.generate_root(&rid("lasting", 1)).unwrap_err();
        assert!(matches!(e, BackendError::Device { .. }) && e.to_string().contains("CKR_GENERAL_ERROR"), "{e}");
        control.clear().unwrap();
        assert_eq!(count_keys_labelled(token, "strongroom/lasting/v1"), 0);
        assert_eq!(b.stats().reinitializations, 0, "no reconnect for a refused call");
    }

    fn a_failed_record_write_leaves_no_orphan_key(token) {
        let b = open(token);
        let control = faults(token);
        let label = "strongroom/rec/v1";
        // C_GenerateKey works, the record's C_CreateObject is refused once: the key is rolled
        // back, or the retry finishes cleanly; never a key without a record.
        control.set(&FaultPlan::new().fail(CKR_DEVICE_ERROR).on(&["C_CreateObject"]).times(1)).unwrap();
        let r = b.generate_root(&rid("rec", 1));
        println!("generate with one refused record write: {r:?}");
        assert_eq!(control.status().count_in("fail", "C_CreateObject"), 1);
        control.clear().unwrap();
        let keys = count_keys_labelled(token, label);
        let records = count_records_labelled(token, label);
        match r {
            Ok(_) => assert_eq!((keys, records), (1, 1)),
            Err(e) => {
                assert!(matches!(e, BackendError::Device { .. }), "{e:?}");
                assert_eq!((keys, records), (0, 0), "orphans after a failed generate");
            }
        }
        // And the root works (or can be made now).
        let root = rid("rec", 1);
        if b.find_root(&root).unwrap().is_none() {
            b.generate_root(&root).unwrap();
        }
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&root, &k, b"c").unwrap();
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
        assert_eq!(count_keys_labelled(token, label), 1);
    }

    fn a_token_that_fails_to_describe_itself_is_a_device_error_not_a_missing_token(token) {
        let control = faults(token);
        // Once: open retries and succeeds.
        control.set(&FaultPlan::new().fail(CKR_DEVICE_ERROR).on(&["C_GetTokenInfo"]).times(1)).unwrap();
        let b = open(token);
        assert_eq!(control.status().count_in("fail", "C_GetTokenInfo"), 1);
        drop(b);
        // Every time: a device error naming the call, never "no token with label".
        control.set(&FaultPlan::new().fail(CKR_DEVICE_ERROR).on(&["C_GetTokenInfo"])).unwrap();
        let e = Pkcs11Backend::open(config(token)).unwrap_err();
        assert!(matches!(e, BackendError::Device { .. }), "{e:?}");
        assert!(e.to_string().contains("CKR_DEVICE_ERROR") && !e.to_string().contains("no token"), "{e}");
        control.clear().unwrap();
    }

    fn the_pool_keeps_to_the_tokens_read_write_session_limit(token) {
        let control = faults(token);
        // The token allows many sessions but only 3 read-write ones (the pool's kind).
        control.set(&FaultPlan::new().rw_session_limit(3)).unwrap();
        let b = open(token);
        assert_eq!(b.stats().cap, 3, "{:?}", b.stats());
        let root = rid("rw", 1);
        b.generate_root(&root).unwrap();
        let blobs = wrap_some(&b, &root, 8);
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| assert_unwrap_all(&b, &blobs));
            }
        });
        assert!(b.stats().sessions_opened <= 3, "{:?}", b.stats());
        control.clear().unwrap();
    }
}
