//! The PKCS#11 backend under token personalities: the fault-injecting module of
//! `strongroom-p11-testkit` makes the test's SoftHSM2 token answer like other tokens (other
//! return codes for bad data and deleted keys, other mechanism lists), so that no behaviour
//! depends on SoftHSM2's own codes or numbers. Each personality runs the same cases: tampering
//! is an integrity error with no recovery, a root deleted by another process is unavailable in
//! a long-running backend, blobs of every wrap algorithm the token offers (KWP included) are
//! written and read, a device error, a pulled token and a stuck device are still recovered, and
//! the conformance suite passes.
//!
//! What tokens do (as reported in issue 11): SoftHSM2 returns `CKR_GENERAL_ERROR` for a
//! tampered KW/KWP/GCM input and `CKR_OBJECT_HANDLE_INVALID` for a deleted key; other tokens
//! return `CKR_DEVICE_ERROR` for a tampered KW/KWP blob or a bad import,
//! `CKR_ENCRYPTED_DATA_INVALID` for a bad GCM tag, and `CKR_GENERAL_ERROR` for a deleted key.
//! RFC 5649 key wrap is listed as `CKM_AES_KEY_WRAP_PAD` (0x210A) by some tokens and as
//! `CKM_AES_KEY_WRAP_KWP` (0x210B) by others; `kwp_only_as_0x210b` is a token that accepts it
//! only as 0x210B (which `cryptoki` 0.12 cannot call: the backend calls it through
//! `strongroom-pkcs11-raw`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Duration;

use strongroom_core::blob::{WrapAlg, WrappedKey};
use strongroom_core::{Backend, BackendError, Key256};
use strongroom_p11_testkit::sys::{
    CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD, CKR_DEVICE_ERROR, CKR_ENCRYPTED_DATA_INVALID,
    CKR_GENERAL_ERROR, CKR_KEY_HANDLE_INVALID, CKR_OBJECT_HANDLE_INVALID, CKR_WRAPPED_KEY_INVALID,
};
use strongroom_p11_testkit::{FaultControl, FaultPlan};
use strongroom_pkcs11::{PinSource, Pkcs11Backend, Pkcs11Config, TokenSelector};
use strongroom_test_support::conformance::{self, rid};
use strongroom_test_support::softhsm::Token;

/// SoftHSM2 as it is.
fn softhsm() -> FaultPlan {
    FaultPlan::new()
}

/// Bad data as a device error, a deleted key as a general error.
fn device_error_token() -> FaultPlan {
    FaultPlan::new()
        .remap(CKR_GENERAL_ERROR, CKR_DEVICE_ERROR)
        .on(&["C_UnwrapKey", "C_Decrypt"])
        .remap(CKR_OBJECT_HANDLE_INVALID, CKR_GENERAL_ERROR)
        .remap(CKR_KEY_HANDLE_INVALID, CKR_GENERAL_ERROR)
}

/// Bad data as the standard's data codes, a deleted key as a general error; RFC 5649 listed
/// under its PKCS#11 3.0 code 0x210B only, and accepted under both codes.
fn data_invalid_token() -> FaultPlan {
    FaultPlan::new()
        .remap(CKR_GENERAL_ERROR, CKR_ENCRYPTED_DATA_INVALID)
        .on(&["C_Decrypt"])
        .remap(CKR_GENERAL_ERROR, CKR_WRAPPED_KEY_INVALID)
        .on(&["C_UnwrapKey"])
        .remap(CKR_OBJECT_HANDLE_INVALID, CKR_GENERAL_ERROR)
        .remap(CKR_KEY_HANDLE_INVALID, CKR_GENERAL_ERROR)
        .hide_mechanism(CKM_AES_KEY_WRAP_PAD)
        .list_mechanism(CKM_AES_KEY_WRAP_KWP)
        .translate_mechanism(CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD)
}

/// RFC 5649 listed and accepted only under its PKCS#11 3.0 code 0x210B; bad KW/KWP data as a
/// device error, a deleted key as a general error.
fn kwp_only_as_0x210b() -> FaultPlan {
    FaultPlan::new()
        .kwp_only_as_0x210b()
        .remap(CKR_GENERAL_ERROR, CKR_DEVICE_ERROR)
        .on(&["C_UnwrapKey", "C_Decrypt"])
        .remap(CKR_OBJECT_HANDLE_INVALID, CKR_GENERAL_ERROR)
        .remap(CKR_KEY_HANDLE_INVALID, CKR_GENERAL_ERROR)
}

fn config(token: &Token, preference: &[WrapAlg]) -> Pkcs11Config {
    let mut c = Pkcs11Config::new(
        strongroom_p11_testkit::module_path(),
        TokenSelector::Label(token.label.clone()),
        PinSource::File(token.pin_file()),
    );
    c.attempts = 3;
    c.backoff = Duration::from_millis(5);
    c.preference = preference.to_vec();
    c
}

/// The personality in force, then a backend that prefers `alg`.
fn open(token: &Token, personality: &FaultPlan, alg: WrapAlg) -> (Pkcs11Backend, FaultControl) {
    let control = FaultControl::new(token.fault_control());
    control.set(personality).unwrap();
    // A namespace per algorithm: a backend that uses only one algorithm would call the other
    // algorithms' roots unusable.
    let mut c = config(token, &[alg]);
    c.namespace = alg.name().to_owned();
    let b = Pkcs11Backend::open(c).expect("open under the personality");
    assert_eq!(b.algorithms(), [alg], "the token offers {alg}");
    (b, control)
}

const ALGS: [WrapAlg; 3] = [WrapAlg::AesGcm, WrapAlg::AesKwp, WrapAlg::AesKw];

fn assert_integrity(r: Result<Key256, BackendError>, what: &str) {
    match r {
        Err(BackendError::Integrity) => {}
        other => panic!("{what}: expected an integrity error, got {other:?}"),
    }
}

fn tampering(token: &Token, personality: &FaultPlan) {
    for alg in ALGS {
        let (b, control) = open(token, personality, alg);
        let root = rid(&format!("tamper-{}", alg.name().to_lowercase()), 1);
        b.generate_root(&root).unwrap();
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&root, &k, b"ctx").unwrap();
        assert_eq!(blob.alg(), alg);
        assert!(
            b.unwrap(&blob, b"ctx").unwrap().ct_eq(&k),
            "{alg} blobs are written and read"
        );
        let len = blob.payload().len();
        for i in [0, 7, len / 2, len - 1] {
            let mut p = blob.payload().to_vec();
            p[i] ^= 0x10;
            let bad = WrappedKey::new(blob.alg(), blob.wrapped_by().clone(), p).unwrap();
            assert_integrity(b.unwrap(&bad, b"ctx"), &format!("{alg} byte {i}"));
        }
        assert_integrity(b.unwrap(&blob, b"other context"), &format!("{alg} context"));
        // The algorithm byte changed: a root made for one mechanism never tries another.
        for other in ALGS {
            if other != alg
                && let Ok(bad) =
                    WrappedKey::new(other, blob.wrapped_by().clone(), blob.payload().to_vec())
            {
                assert_integrity(
                    b.unwrap(&bad, b"ctx"),
                    &format!("{alg} blob relabelled {other}"),
                );
            }
        }
        assert!(b.unwrap(&blob, b"ctx").unwrap().ct_eq(&k));
        let st = b.stats();
        assert_eq!(
            st.reinitializations, 0,
            "bad data is no reason to reconnect: {st:?}"
        );
        assert_eq!(st.generation, 1, "no recovery for bad data: {st:?}");
        println!("{alg}: {:?}", control.status());
    }
}

fn deleted_root(token: &Token, personality: &FaultPlan) {
    for alg in ALGS {
        let (b, _control) = open(token, personality, alg);
        let name = format!("gone-{}", alg.name().to_lowercase());
        let root = rid(&name, 1);
        b.generate_root(&root).unwrap();
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&root, &k, b"c").unwrap();
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
        // Another process deletes the key object under the long-running backend (which has its
        // handle cached).
        let label = format!("{}/{name}/v1", alg.name());
        let _ = token.pkcs11_tool(&["--delete-object", "--type", "secrkey", "--label", &label]);
        for (what, r) in [
            ("unwrap", b.unwrap(&blob, b"c").map(|_| ())),
            ("wrap", b.wrap(&root, &k, b"c").map(|_| ())),
        ] {
            match r {
                Err(e @ BackendError::RootUnavailable { .. }) => {
                    assert!(e.is_key_unavailable(), "{e}")
                }
                other => panic!(
                    "{alg} {what} after the key was deleted: expected RootUnavailable, got {other:?}"
                ),
            }
        }
        assert_eq!(
            b.stats().reinitializations,
            0,
            "a deleted key is no reason to reconnect"
        );
    }
}

fn recovery(token: &Token, personality: &FaultPlan) {
    for alg in ALGS {
        let (b, control) = open(token, personality, alg);
        let root = rid(&format!("rec-{}", alg.name().to_lowercase()), 1);
        b.generate_root(&root).unwrap();
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&root, &k, b"c").unwrap();
        let before = b.stats().reinitializations;
        let failed = |c: &FaultControl| {
            let st = c.status();
            st.count_in("fail", "C_EncryptInit") + st.count_in("fail", "C_WrapKey")
        };
        let failed_before = failed(&control);
        // One device error that is the device's: a session call fails while the canary would too.
        control
            .set(
                &personality.clone().and(
                    &FaultPlan::new()
                        .fail(CKR_DEVICE_ERROR)
                        .on(&["C_EncryptInit", "C_WrapKey"])
                        .times(1),
                ),
            )
            .unwrap();
        let k2 = Key256::generate().unwrap();
        let blob2 = b.wrap(&root, &k2, b"c2").unwrap();
        assert_eq!(
            failed(&control),
            failed_before + 1,
            "{:?}",
            control.status()
        );
        control.set(personality).unwrap();
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
        assert!(b.unwrap(&blob2, b"c2").unwrap().ct_eq(&k2));
        assert_eq!(
            b.stats().reinitializations,
            before + 1,
            "a device error is recovered: {:?}",
            b.stats()
        );
    }
}

/// A pulled and reinserted token, then a device stuck after an error (only a re-initialize gets
/// out): typed device errors while it lasts, then the same backend works again.
fn pulled_and_stuck(token: &Token, personality: &FaultPlan) {
    for alg in ALGS {
        let (b, control) = open(token, personality, alg);
        let root = rid(&format!("pull-{}", alg.name().to_lowercase()), 1);
        b.generate_root(&root).unwrap();
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&root, &k, b"c").unwrap();
        control
            .set(&personality.clone().and(&FaultPlan::new().token_pulled()))
            .unwrap();
        match b.unwrap(&blob, b"c") {
            Err(BackendError::Device { .. }) => {}
            other => panic!("{alg} with the token pulled: expected a device error, got {other:?}"),
        }
        control.set(personality).unwrap();
        assert!(
            b.unwrap(&blob, b"c").unwrap().ct_eq(&k),
            "{alg}: after reinsertion"
        );
        let before = b.stats().reinitializations;
        assert!(
            before >= 1,
            "{alg}: a pulled token needs a reconnect: {:?}",
            b.stats()
        );
        control
            .set(
                &personality
                    .clone()
                    .and(&FaultPlan::new().stuck_after_device_error()),
            )
            .unwrap();
        let k2 = Key256::generate().unwrap();
        let blob2 = b.wrap(&root, &k2, b"c2").unwrap();
        assert!(b.unwrap(&blob2, b"c2").unwrap().ct_eq(&k2));
        assert!(
            b.stats().reinitializations > before,
            "{alg}: stuck sessions need a re-initialize: {:?}",
            b.stats()
        );
        control.set(personality).unwrap();
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
    }
}

fn conformance_suite(token: &Token, personality: &FaultPlan) {
    for alg in ALGS {
        let (b, _control) = open(token, personality, alg);
        conformance::describe_is_consistent(&b);
        conformance::generate_find_list(&b);
        conformance::wrap_unwrap_round_trip(&b);
        conformance::wrong_root_fails(&b);
        conformance::tampered_blob_fails_opaquely(&b);
        conformance::context_mismatch_fails(&b);
        conformance::disabled_root_fails(&b);
        conformance::destroyed_root_fails(&b);
        conformance::kek_wrapped_blob_is_refused(&b);
        conformance::concurrent_wrap_unwrap(&b);
        assert_eq!(b.stats().reinitializations, 0, "{alg}: {:?}", b.stats());
    }
}

macro_rules! under_personalities {
    ($($module:ident => $plan:expr;)*) => {$(
        mod $module {
            use super::*;
            strongroom_test_support::softhsm_tests! {
                fn tampering_is_an_integrity_error_without_recovery(token) {
                    tampering(token, &$plan);
                }
                fn a_deleted_root_is_unavailable_in_a_long_running_backend(token) {
                    deleted_root(token, &$plan);
                }
                fn a_device_error_is_still_recovered(token) {
                    recovery(token, &$plan);
                }
                fn a_pulled_token_and_a_stuck_device_are_recovered(token) {
                    pulled_and_stuck(token, &$plan);
                }
                fn the_conformance_suite_passes(token) {
                    conformance_suite(token, &$plan);
                }
            }
        }
    )*};
}

under_personalities! {
    softhsm2 => softhsm();
    device_error_token => device_error_token();
    data_invalid_token => data_invalid_token();
    kwp_only_as_0x210b => kwp_only_as_0x210b();
}

fn mechanisms_detail(b: &Pkcs11Backend) -> String {
    let health = b.health().unwrap();
    health
        .iter()
        .find(|c| c.name == "mechanisms")
        .unwrap()
        .detail
        .clone()
}

strongroom_test_support::softhsm_tests! {
    fn kwp_missing_from_the_list_is_found_by_trial(token) {
        // The list shows no KWP under either code, but the token still accepts 0x210A: the
        // trial at open finds it.
        let unlisted = FaultPlan::new().hide_mechanism(CKM_AES_KEY_WRAP_PAD);
        let (b, control) = open(token, &unlisted, WrapAlg::AesKwp);
        let health = b.health().unwrap();
        let mechs = health.iter().find(|c| c.name == "mechanisms").unwrap();
        assert!(
            mechs.detail.contains("aes-kwp as CKM_AES_KEY_WRAP_PAD (0x210A), not in the mechanism list as read but a trial round trip worked"),
            "{}",
            mechs.detail
        );
        assert!(mechs.detail.contains("aes-gcm as CKM_AES_GCM (0x1087), listed"), "{}", mechs.detail);
        let root = rid("kwp", 1);
        b.generate_root(&root).unwrap();
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&root, &k, b"c").unwrap();
        assert_eq!(blob.alg(), WrapAlg::AesKwp);
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
        assert_eq!(control.status().count("refuse-mechanism"), 0);
    }

    fn a_token_that_offers_kwp_only_as_0x210b_gets_kwp_and_says_so(token) {
        // A token that lists and accepts RFC 5649 only as 0x210B, which cryptoki 0.12 neither
        // lists nor calls: the raw list shows it, and the backend calls it directly.
        let control = FaultControl::new(token.fault_control());
        control.set(&FaultPlan::new().kwp_only_as_0x210b()).unwrap();
        let b = Pkcs11Backend::open(config(token, &[WrapAlg::AesKwp, WrapAlg::AesKw])).unwrap();
        assert_eq!(b.algorithms(), [WrapAlg::AesKwp, WrapAlg::AesKw], "KWP and KW are usable");
        let detail = mechanisms_detail(&b);
        assert!(
            detail.contains("aes-kwp as CKM_AES_KEY_WRAP_KWP (0x210B), listed"),
            "doctor names the code: {detail}"
        );
        assert!(detail.contains("new root keys use aes-kwp"), "{detail}");
        let root = rid("kwp", 1);
        b.generate_root(&root).unwrap();
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&root, &k, b"c").unwrap();
        assert_eq!(blob.alg(), WrapAlg::AesKwp);
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
        let st = control.status();
        // (C_WrapKey twice: the length, then the wrap.)
        assert!(st.count_in("translate-mechanism", "C_WrapKey") >= 1, "wrapped as 0x210B: {st:?}");
        assert_eq!(st.count_in("translate-mechanism", "C_UnwrapKey"), 1, "unwrapped as 0x210B: {st:?}");
        assert_eq!(st.count("refuse-mechanism"), 0, "0x210A never tried: {st:?}");
        // KWP only: the open works.
        let only = Pkcs11Backend::open(config(token, &[WrapAlg::AesKwp])).unwrap();
        assert_eq!(only.algorithms(), [WrapAlg::AesKwp]);
        assert!(only.unwrap(&blob, b"c").unwrap().ct_eq(&k));
        // A tampered blob is an integrity error, with no recovery.
        let mut p = blob.payload().to_vec();
        p[9] ^= 0x01;
        let bad = WrappedKey::new(blob.alg(), blob.wrapped_by().clone(), p).unwrap();
        assert_integrity(b.unwrap(&bad, b"c"), "tampered 0x210B blob");
        assert_eq!(b.stats().reinitializations, 0);
    }

    fn kwp_found_by_trial_under_0x210b_when_the_token_lists_neither_code(token) {
        // Neither code listed; 0x210A refused, 0x210B accepted: the trial finds 0x210B.
        let unlisted = FaultPlan::new()
            .hide_mechanism(CKM_AES_KEY_WRAP_PAD)
            .refuse_mechanism(CKM_AES_KEY_WRAP_PAD)
            .translate_mechanism(CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD);
        let (b, control) = open(token, &unlisted, WrapAlg::AesKwp);
        let detail = mechanisms_detail(&b);
        assert!(
            detail.contains("aes-kwp as CKM_AES_KEY_WRAP_KWP (0x210B), not in the mechanism list as read but a trial round trip worked"),
            "{detail}"
        );
        assert!(control.status().count("refuse-mechanism") > 0, "0x210A was tried first");
        let root = rid("kwp", 1);
        b.generate_root(&root).unwrap();
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&root, &k, b"c").unwrap();
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
    }

    fn kwp_blobs_open_under_either_code(token) {
        // One root, two backends in one process: one on a token personality that says 0x210B,
        // one on SoftHSM2 as it is (0x210A). A blob does not record the code: each opens the
        // other's blobs.
        let control = FaultControl::new(token.fault_control());
        control.set(&FaultPlan::new().kwp_only_as_0x210b()).unwrap();
        let b210b = Pkcs11Backend::open(config(token, &[WrapAlg::AesKwp])).unwrap();
        assert!(mechanisms_detail(&b210b).contains("CKM_AES_KEY_WRAP_KWP (0x210B)"));
        let root = rid("either", 1);
        b210b.generate_root(&root).unwrap();
        let k1 = Key256::generate().unwrap();
        let blob_210b = b210b.wrap(&root, &k1, b"one").unwrap();

        control.set(&softhsm()).unwrap();
        let b210a = Pkcs11Backend::open(config(token, &[WrapAlg::AesKwp])).unwrap();
        assert!(mechanisms_detail(&b210a).contains("aes-kwp as CKM_AES_KEY_WRAP_PAD (0x210A), listed"));
        assert!(b210a.unwrap(&blob_210b, b"one").unwrap().ct_eq(&k1), "0x210B blob under 0x210A");
        let k2 = Key256::generate().unwrap();
        let blob_210a = b210a.wrap(&root, &k2, b"two").unwrap();
        assert_eq!(blob_210a.alg(), blob_210b.alg());

        control.set(&FaultPlan::new().kwp_only_as_0x210b()).unwrap();
        assert!(b210b.unwrap(&blob_210a, b"two").unwrap().ct_eq(&k2), "0x210A blob under 0x210B");
        assert!(b210b.unwrap(&blob_210b, b"one").unwrap().ct_eq(&k1));
        let st = control.status();
        assert!(st.count_in("translate-mechanism", "C_UnwrapKey") >= 2, "{st:?}");
        assert_eq!(st.count("refuse-mechanism"), 0, "{st:?}");
    }

    fn a_bad_byok_import_is_an_integrity_error_whatever_the_code(token) {
        // Material that is not an RSA-OAEP encryption under the import key: SoftHSM2 refuses it
        // with a data code; a token that says CKR_DEVICE_ERROR instead must not send strongroom
        // into recovery, nor be reported as a failing HSM.
        let mut bad_import = FaultPlan::new();
        for code in [
            CKR_GENERAL_ERROR,
            CKR_ENCRYPTED_DATA_INVALID,
            CKR_WRAPPED_KEY_INVALID,
            strongroom_p11_testkit::sys::CKR_ENCRYPTED_DATA_LEN_RANGE,
            strongroom_p11_testkit::sys::CKR_DATA_INVALID,
            strongroom_p11_testkit::sys::CKR_DATA_LEN_RANGE,
        ] {
            bad_import = bad_import.remap(code, CKR_DEVICE_ERROR).on(&["C_UnwrapKey"]);
        }
        let control = FaultControl::new(token.fault_control());
        control.set(&bad_import).unwrap();
        let mut c = config(token, &[WrapAlg::AesGcm]);
        c.import_key_bits = 2048;
        let b = Pkcs11Backend::open(c).unwrap();
        let _ = b.import_key().unwrap();
        let mut garbage = vec![0x5a_u8; 256];
        garbage[0] = 0;
        let e = b.import_wrapped_root(&rid("byok", 1), &garbage, &[1, 2, 3]).unwrap_err();
        assert!(matches!(e, BackendError::Integrity), "{e:?}");
        let st = control.status();
        assert_eq!(st.count_in("remap", "C_UnwrapKey"), 1, "the token answered CKR_DEVICE_ERROR: {st:?}");
        assert_eq!(b.stats().reinitializations, 0, "bad material is no reason to reconnect");
        assert_eq!(b.find_root(&rid("byok", 1)).unwrap(), None);
    }
}
