//! PIN safety across processes (issue 11): a refused PIN is not tried again by the next process,
//! and a token whose PIN is at its final try (or locked) is refused without a login attempt.
//! `C_Login` calls are counted through the fault-injecting module (a zero-latency rule on
//! `C_Login` counts every call); the token flags are faked by it (SoftHSM2 never sets
//! `CKF_USER_PIN_FINAL_TRY`: it has no PIN attempt limit).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;

use strongroom_core::{BackendError, LoginFailure};
use strongroom_p11_testkit::sys::{CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED};
use strongroom_p11_testkit::{FaultControl, FaultPlan};
use strongroom_pkcs11::{PinSource, Pkcs11Backend, Pkcs11Config, TokenSelector};
use strongroom_test_support::softhsm::Token;
use strongroom_test_support::softhsm_tests;

/// Counts `C_Login` (and `C_GetTokenInfo`, to show the module was in use) without changing them.
fn counting() -> FaultPlan {
    FaultPlan::new()
        .latency_ms(0)
        .on(&["C_Login", "C_GetTokenInfo"])
}

fn logins(c: &FaultControl) -> u64 {
    c.status().count_in("latency", "C_Login")
}

fn pin_file(dir: &Path, pin: &str) -> PathBuf {
    let p = dir.join(format!("pin-{pin}"));
    std::fs::write(&p, pin).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    p
}

fn config(token: &Token, pin: PathBuf, state: &Path) -> Pkcs11Config {
    let mut c = Pkcs11Config::new(
        strongroom_p11_testkit::module_path(),
        TokenSelector::Label(token.label.clone()),
        PinSource::File(pin),
    );
    c.pin_state = Some(state.to_path_buf());
    c
}

const SECOND_PROCESS: &str = "STRONGROOM_PIN_TEST_SECOND_PROCESS";

softhsm_tests! {
    fn a_refused_pin_is_not_tried_by_the_next_process(token) {
        let state = token.dir().join("pin-state");
        let wrong = pin_file(token.dir(), "not-the-pin");
        if std::env::var_os(SECOND_PROCESS).is_some() {
            // The second process: its own control file (so its counts are its own).
            let control = FaultControl::from_env().unwrap();
            control.set(&counting()).unwrap();
            let e = Pkcs11Backend::open(config(token, wrong, &state)).unwrap_err();
            assert!(
                matches!(&e, BackendError::Login { failure: LoginFailure::RefusedEarlier(f), .. } if **f == LoginFailure::WrongPin),
                "{e:?}"
            );
            assert!(control.status().count_in("latency", "C_GetTokenInfo") > 0, "the fault module was in use");
            assert_eq!(logins(&control), 0, "the second process called C_Login with the refused PIN");
            return;
        }
        let control = FaultControl::new(token.fault_control());
        control.set(&counting()).unwrap();
        let e = Pkcs11Backend::open(config(token, wrong.clone(), &state)).unwrap_err();
        assert!(matches!(&e, BackendError::Login { failure: LoginFailure::WrongPin, .. }), "{e:?}");
        assert_eq!(logins(&control), 1);
        let recorded = std::fs::read_to_string(&state).unwrap();
        assert!(!recorded.contains("not-the-pin"), "the PIN itself is never stored: {recorded}");

        // Another backend in this process (its own in-memory PIN): the state file holds it back.
        let e = Pkcs11Backend::open(config(token, wrong.clone(), &state)).unwrap_err();
        assert!(matches!(&e, BackendError::Login { failure: LoginFailure::RefusedEarlier(_), .. }), "{e:?}");
        assert_eq!(logins(&control), 1, "no second C_Login with the refused PIN");

        // A second process with the same PIN source: this test binary again, on this token.
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["a_refused_pin_is_not_tried_by_the_next_process", "--exact", "--nocapture", "--test-threads=1"])
            .env(SECOND_PROCESS, "1")
            .env("STRONGROOM_FAULT_CONTROL", token.dir().join("faults-second"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("test result: ok. 1 passed"),
            "second process:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // The PIN source changes to the right PIN: it is tried, works, and the record is gone.
        let right = pin_file(token.dir(), &token.user_pin);
        let b = Pkcs11Backend::open(config(token, right, &state)).unwrap();
        assert_eq!(logins(&control), 2);
        assert_eq!(std::fs::read_to_string(&state).unwrap().lines().count(), 1, "a successful login clears the record");
        drop(b);
    }

    fn a_token_at_its_final_pin_try_is_refused_without_a_login(token) {
        let state = token.dir().join("pin-state");
        let control = FaultControl::new(token.fault_control());
        control.set(&counting().token_flags(CKF_USER_PIN_FINAL_TRY)).unwrap();
        let e = Pkcs11Backend::open(config(token, token.pin_file(), &state)).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, BackendError::Login { .. }), "{e:?}");
        assert!(msg.contains("CKF_USER_PIN_FINAL_TRY") && msg.contains(&token.label) && msg.contains("allow_final_pin_try"), "{msg}");
        assert!(!msg.contains(&token.user_pin), "{msg}");
        assert_eq!(logins(&control), 0, "no login attempt at the final try");

        // A locked PIN: refused the same way, saying the security officer must unlock it.
        control.set(&counting().token_flags(CKF_USER_PIN_LOCKED)).unwrap();
        let e = Pkcs11Backend::open(config(token, token.pin_file(), &state)).unwrap_err();
        assert!(matches!(&e, BackendError::Login { failure: LoginFailure::PinLocked, .. }), "{e:?}");
        assert_eq!(logins(&control), 0, "no login attempt on a locked PIN");

        // The explicit override spends the final try (here with the right PIN).
        control.set(&counting().token_flags(CKF_USER_PIN_FINAL_TRY)).unwrap();
        let mut c = config(token, token.pin_file(), &state);
        c.allow_final_pin_try = true;
        let b = Pkcs11Backend::open(c).unwrap();
        assert_eq!(logins(&control), 1);
        drop(b);
    }
}
