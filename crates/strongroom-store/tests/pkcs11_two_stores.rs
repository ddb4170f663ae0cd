//! Two stores on one PKCS#11 token in one process (issue 11): each with its own namespace and
//! its own backend, on the same module (so the same library context). They run the store's key
//! lifecycle concurrently, while the device fails under both (through the fault-injecting
//! module: one device error, then every session stuck until the library is finalized, so only
//! a re-initialize gets out); every record stays readable, through its own store only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use strongroom_core::{KeyringName, RootKeyName, RootVersion};
use strongroom_p11_testkit::{FaultControl, FaultPlan};
use strongroom_pkcs11::{PinSource, Pkcs11Backend, Pkcs11Config, TokenSelector};
use strongroom_store::StoreOptions;
use strongroom_test_support::softhsm::Token;
use strongroom_test_support::softhsm_tests;

fn backend(token: &Token, namespace: &str) -> Arc<Pkcs11Backend> {
    let mut c = Pkcs11Config::new(
        strongroom_p11_testkit::module_path(),
        TokenSelector::Label(token.label.clone()),
        PinSource::File(token.pin_file()),
    );
    c.namespace = namespace.to_owned();
    c.backoff = Duration::from_millis(5);
    Arc::new(Pkcs11Backend::open(c).unwrap())
}

/// A barrier that gives up: a thread that failed before reaching it makes the others fail
/// after two minutes (with the first thread's panic reported by the scope), not hang.
struct Barrier {
    parties: usize,
    state: Mutex<(usize, u64)>,
    cv: Condvar,
}

impl Barrier {
    fn new(parties: usize) -> Self {
        Self {
            parties,
            state: Mutex::new((0, 0)),
            cv: Condvar::new(),
        }
    }

    fn wait(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut st = self.state.lock().unwrap();
        let generation = st.1;
        st.0 += 1;
        if st.0 == self.parties {
            st.0 = 0;
            st.1 += 1;
            self.cv.notify_all();
            return;
        }
        while st.1 == generation {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "another thread never reached the barrier (it failed: see its panic)"
            );
            st = self.cv.wait_timeout(st, left).unwrap().0;
        }
    }
}

fn kr(s: &str) -> KeyringName {
    KeyringName::new(s).unwrap()
}

fn rn(s: &str) -> RootKeyName {
    RootKeyName::new(s).unwrap()
}

/// The store's key lifecycle, `rounds` times, on keyrings under the primary root and under a
/// tenant root (the same names in both stores): put/get, root rotation and retirement,
/// disable/enable, reopen.
fn lifecycle(
    dir: &std::path::Path,
    b: &Arc<Pkcs11Backend>,
    tag: &str,
    start: &Barrier,
    finalized: &Barrier,
) {
    let s = common::create(dir, b.clone(), &rn("service"), StoreOptions::default()).unwrap();
    s.create_root(&rn("tenant")).unwrap();
    s.create_keyring(&kr("main"), None).unwrap();
    s.create_keyring(&kr("t"), Some(&rn("tenant"))).unwrap();
    start.wait();
    for i in 0..20 {
        let key = format!("k{i}");
        s.put(
            &kr("main"),
            key.as_bytes(),
            format!("{tag}-main-{i}").as_bytes(),
        )
        .unwrap();
        s.put(&kr("t"), key.as_bytes(), format!("{tag}-t-{i}").as_bytes())
            .unwrap();
        if i == 5 {
            // The test makes the device fail now.
            finalized.wait();
            finalized.wait();
        }
        if i == 8 {
            s.rotate_root(&rn("tenant"), &mut |_| {}).unwrap();
            s.retire_root_version(&rn("tenant"), RootVersion::FIRST)
                .unwrap();
        }
        if i == 12 {
            s.disable_root(&rn("tenant")).unwrap();
            s.enable_root(&rn("tenant")).unwrap();
        }
        s.purge_key_cache();
        assert_eq!(
            s.get(&kr("t"), key.as_bytes()).unwrap().unwrap().expose(),
            format!("{tag}-t-{i}").as_bytes()
        );
    }
    drop(s);
    let s = common::open(dir, b.clone(), StoreOptions::default()).unwrap();
    for i in 0..20 {
        let key = format!("k{i}");
        assert_eq!(
            s.get(&kr("main"), key.as_bytes())
                .unwrap()
                .unwrap()
                .expose(),
            format!("{tag}-main-{i}").as_bytes()
        );
        assert_eq!(
            s.get(&kr("t"), key.as_bytes()).unwrap().unwrap().expose(),
            format!("{tag}-t-{i}").as_bytes()
        );
    }
    assert!(s.verify_audit().unwrap().is_ok());
}

softhsm_tests! {
    fn two_stores_on_one_token_run_concurrently_through_a_reinitialize(token) {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let backends = [backend(token, "store-a"), backend(token, "store-b")];
        let start = Barrier::new(2);
        let finalized = Barrier::new(3);
        let control = FaultControl::new(token.fault_control());
        std::thread::scope(|scope| {
            for (i, tag) in ["a", "b"].into_iter().enumerate() {
                let (dir, b, start, finalized) = (dirs[i].path(), &backends[i], &start, &finalized);
                scope.spawn(move || lifecycle(dir, b, tag, start, finalized));
            }
            // Both stores are mid-way: the device fails.
            finalized.wait();
            control.set(&FaultPlan::new().stuck_after_device_error()).unwrap();
            finalized.wait();
        });
        assert_eq!(control.status().count_code("CKR_DEVICE_ERROR"), 1, "the device failed: {:?}", control.status());
        control.clear().unwrap();
        for b in &backends {
            assert!(b.stats().reinitializations >= 1, "{:?}", b.stats());
        }
        // Each store's data opens only with its own backend: a store opened on the other
        // namespace is refused (its instance id differs).
        assert!(common::open(dirs[0].path(), backends[1].clone(), StoreOptions::default()).is_err());
        assert!(common::open(dirs[1].path(), backends[0].clone(), StoreOptions::default()).is_err());
    }
}
