//! Several backends on one module in one process (issue 11): they share one library context, one
//! generation and one recovery. Each test runs in its own process with its own SoftHSM2 token
//! (see `strongroom_test_support::softhsm`), on the fault-injecting module where a test needs to
//! count or inject calls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Duration;

use cryptoki::context::Pkcs11;
use strongroom_core::blob::WrappedKey;
use strongroom_core::{Backend, BackendError, Key256, RootKeyId};
use strongroom_pkcs11::{PinSource, Pkcs11Backend, Pkcs11Config, TokenSelector};
use strongroom_test_support::conformance::rid;
use strongroom_test_support::softhsm::Token;
use strongroom_test_support::softhsm_tests;

fn config(token: &Token, namespace: &str) -> Pkcs11Config {
    let mut c = Pkcs11Config::new(
        strongroom_p11_testkit::module_path(),
        TokenSelector::Label(token.label.clone()),
        PinSource::File(token.pin_file()),
    );
    c.namespace = namespace.to_owned();
    c.attempts = 3;
    c.backoff = Duration::from_millis(5);
    c
}

fn open(token: &Token, namespace: &str) -> Pkcs11Backend {
    Pkcs11Backend::open(config(token, namespace)).expect("open the PKCS#11 backend")
}

fn wrap_n(
    b: &Pkcs11Backend,
    root: &RootKeyId,
    tag: &str,
    n: usize,
) -> Vec<(Key256, WrappedKey, String)> {
    (0..n)
        .map(|i| {
            let k = Key256::generate().unwrap();
            let ctx = format!("{tag}/{i}");
            let blob = b.wrap(root, &k, ctx.as_bytes()).unwrap();
            (k, blob, ctx)
        })
        .collect()
}

/// Every blob opens under `own` to its key, and is an integrity failure under `other` (a
/// different namespace holding a root of the same name).
fn assert_only_own(
    own: &Pkcs11Backend,
    other: &Pkcs11Backend,
    blobs: &[(Key256, WrappedKey, String)],
    what: &str,
) {
    for (i, (k, blob, ctx)) in blobs.iter().enumerate() {
        match own.unwrap(blob, ctx.as_bytes()) {
            Ok(back) => assert!(
                back.ct_eq(k),
                "{what} blob {i}: wrong key under its own root"
            ),
            Err(e) => panic!("{what} blob {i} does not open under its own root: {e:?}"),
        }
        match other.unwrap(blob, ctx.as_bytes()) {
            Err(BackendError::Integrity) => {}
            Ok(_) => panic!("{what} blob {i} opened under the other namespace's root"),
            Err(e) => panic!(
                "{what} blob {i} under the other root: expected an integrity error, got {e:?}"
            ),
        }
    }
}

softhsm_tests! {
    fn two_backends_keep_their_own_keys_across_a_reinitialize(token) {
        // The issue's case: B (tenant-b) opens and wraps; A (tenant-a) opens; something
        // finalizes the library; A recovers; B keeps wrapping. The same root name in both
        // namespaces, so a blob wrapped under the wrong tenant's key would still "work" for
        // that tenant and fail for its own.
        let root = rid("shared-name", 1);
        let b = open(token, "tenant-b");
        b.generate_root(&root).unwrap();
        let b_before = wrap_n(&b, &root, "b-before", 3);
        let a = open(token, "tenant-a");
        a.generate_root(&root).unwrap();
        let a_before = wrap_n(&a, &root, "a-before", 3);

        // Another component of the process finalizes the library under both backends.
        let outsider = Pkcs11::new(strongroom_p11_testkit::module_path()).unwrap();
        outsider.finalize().unwrap();

        // A notices first and recovers; then B carries on.
        let (k, blob, ctx) = &a_before[0];
        assert!(a.unwrap(blob, ctx.as_bytes()).unwrap().ct_eq(k));
        let a_after = wrap_n(&a, &root, "a-after", 3);
        let b_after = wrap_n(&b, &root, "b-after", 6);
        println!("after the finalize: a {:?}, b {:?}", a.stats(), b.stats());

        // Fresh backends of each namespace (no cached handle anywhere) read each tenant's blobs
        // only under its own root.
        let fresh_a = open(token, "tenant-a");
        let fresh_b = open(token, "tenant-b");
        for (own, other, blobs, what) in [
            (&fresh_b, &fresh_a, &b_before, "b-before"),
            (&fresh_b, &fresh_a, &b_after, "b-after"),
            (&fresh_a, &fresh_b, &a_before, "a-before"),
            (&fresh_a, &fresh_b, &a_after, "a-after"),
            (&b, &a, &b_after, "b-after (long-lived)"),
            (&a, &b, &a_after, "a-after (long-lived)"),
        ] {
            assert_only_own(own, other, blobs, what);
        }
    }

    fn one_recovery_serves_every_backend_on_the_module(token) {
        let control = strongroom_p11_testkit::FaultControl::new(token.fault_control());
        let root = rid("r", 1);
        let a = open(token, "tenant-a");
        let b = open(token, "tenant-b");
        a.generate_root(&root).unwrap();
        b.generate_root(&root).unwrap();
        let a_blobs = wrap_n(&a, &root, "a", 2);
        let b_blobs = wrap_n(&b, &root, "b", 2);
        assert_eq!((a.stats().generation, b.stats().generation), (1, 1));
        // One device error under A: A recovers the library, once.
        control
            .set(&strongroom_p11_testkit::FaultPlan::new().fail(strongroom_p11_testkit::sys::CKR_DEVICE_ERROR).on(&["C_Encrypt"]).times(1))
            .unwrap();
        let more_a = wrap_n(&a, &root, "a2", 1);
        assert_eq!(control.status().count_in("fail", "C_Encrypt"), 1, "the fault was injected");
        control.clear().unwrap();
        assert_eq!(a.stats().generation, 2, "{:?}", a.stats());
        // B shares that recovery: it moves to the same generation on its next call, without a
        // recovery of its own, and its cached key handle is checked before use.
        let more_b = wrap_n(&b, &root, "b2", 2);
        assert_eq!(b.stats().generation, 2, "B re-initialized again: {:?}", b.stats());
        assert_eq!(b.stats().reinitializations, 1, "{:?}", b.stats());
        let health = b.health().unwrap();
        let sessions = health.iter().find(|c| c.name == "sessions").unwrap();
        assert!(sessions.detail.contains("generation 2 after 1 re-initializations"), "{}", sessions.detail);
        for (own, other, blobs) in [(&a, &b, &a_blobs), (&a, &b, &more_a), (&b, &a, &b_blobs), (&b, &a, &more_b)] {
            assert_only_own(own, other, blobs, "after the shared recovery");
        }
    }

    fn dropping_a_backend_never_finalizes_under_another(token) {
        let root = rid("r", 1);
        // B is the first backend on the module (it initialized the library); A comes second.
        let b = open(token, "tenant-b");
        b.generate_root(&root).unwrap();
        let _ = wrap_n(&b, &root, "b", 1);
        let a = open(token, "tenant-a");
        a.generate_root(&root).unwrap();
        let blobs = wrap_n(&a, &root, "a", 2);
        // B and a clone of it go away.
        let b2 = b.clone();
        drop(b);
        let _ = wrap_n(&b2, &root, "b", 1);
        drop(b2);
        // A still works on its own sessions, with no recovery: nothing finalized under it.
        let more = wrap_n(&a, &root, "a2", 2);
        for (k, blob, ctx) in blobs.iter().chain(more.iter()) {
            assert!(a.unwrap(blob, ctx.as_bytes()).unwrap().ct_eq(k));
        }
        assert_eq!(a.stats().generation, 1, "{:?}", a.stats());
        assert_eq!(a.stats().reinitializations, 0);
        // Dropping every backend leaves the library initialized: a new one opens and works.
        drop(a);
        let c = open(token, "tenant-a");
        let (k, blob, ctx) = &blobs[0];
        assert!(c.unwrap(blob, ctx.as_bytes()).unwrap().ct_eq(k));
    }
}
