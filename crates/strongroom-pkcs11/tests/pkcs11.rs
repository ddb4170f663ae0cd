//! PKCS#11 backend tests against real SoftHSM2 tokens, each in its own process with its own token
//! (see `strongroom_test_support::softhsm`): configuration errors, concurrency, session loss and
//! recovery, mechanism fallback, changes made outside strongroom, interop with OpenSC's
//! `pkcs11-tool`, and BYOK import with an independent RSA-OAEP implementation (OpenSSL).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use strongroom_core::blob::{WrapAlg, WrappedKey};
use strongroom_core::{Backend, BackendError, Key256, LoginFailure, RootStatus};
use strongroom_pkcs11::{PinSource, Pkcs11Backend, Pkcs11Config, TokenSelector};
use strongroom_test_support::conformance::rid;
use strongroom_test_support::softhsm::{Token, module_path};
use strongroom_test_support::softhsm_tests;

fn config(token: &Token) -> Pkcs11Config {
    Pkcs11Config::new(
        &token.module,
        TokenSelector::Label(token.label.clone()),
        PinSource::File(token.pin_file()),
    )
}

fn open(token: &Token) -> Pkcs11Backend {
    Pkcs11Backend::open(config(token)).expect("open the PKCS#11 backend")
}

fn open_with(token: &Token, tweak: impl FnOnce(&mut Pkcs11Config)) -> Pkcs11Backend {
    let mut c = config(token);
    tweak(&mut c);
    Pkcs11Backend::open(c).expect("open the PKCS#11 backend")
}

/// A session of this process's own, outside the backend: "someone else" in the same application.
/// The library is already initialized by the backend, so this never initializes or finalizes it.
fn outside_session(token: &Token) -> (Pkcs11, Session) {
    let ctx = Pkcs11::new(&token.module).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => panic!("{e}"),
    }
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == token.label)
        .unwrap();
    let s = ctx.open_rw_session(slot).unwrap();
    let _ = s.login(UserType::User, Some(&AuthPin::from(token.user_pin.clone())));
    (ctx, s)
}

/// Session (temporary) secret-key objects visible to this application.
fn session_secret_objects(s: &Session) -> usize {
    s.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Token(false),
    ])
    .unwrap()
    .len()
}

fn assert_integrity(r: Result<Key256, BackendError>) {
    match r {
        Err(BackendError::Integrity) => {}
        other => panic!("expected an integrity error, got {other:?}"),
    }
}

// ---------- configuration errors: no token needed ----------

#[test]
fn a_missing_module_is_a_clear_config_error() {
    let c = Pkcs11Config::new(
        "/nonexistent/libpkcs11.so",
        TokenSelector::Label("x".into()),
        PinSource::Env("PATH".into()),
    );
    let e = Pkcs11Backend::open(c).unwrap_err();
    assert!(matches!(e, BackendError::Config(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/libpkcs11.so") && msg.contains("softhsm2"),
        "{msg}"
    );

    // A file that exists but is no PKCS#11 library.
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("not-a-module.so");
    std::fs::write(&bogus, b"this is not an ELF file").unwrap();
    let c = Pkcs11Config::new(
        &bogus,
        TokenSelector::Label("x".into()),
        PinSource::Env("PATH".into()),
    );
    let e = Pkcs11Backend::open(c).unwrap_err();
    assert!(
        matches!(e, BackendError::Config(_)) && e.to_string().contains("cannot load"),
        "{e}"
    );
}

#[test]
fn softhsm_is_installed_for_these_tests() {
    // Fails (with install instructions) instead of letting the PKCS#11 tests skip.
    assert!(module_path().exists());
}

softhsm_tests! {
    fn a_wrong_pin_is_a_typed_login_error(token) {
        let pin = token.dir().join("wrong.pin");
        std::fs::write(&pin, "not-the-pin\n").unwrap();
        std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let e = Pkcs11Backend::open(Pkcs11Config {
            pin: PinSource::File(pin),
            ..config(token)
        })
        .unwrap_err();
        assert!(matches!(&e, BackendError::Login { failure: LoginFailure::WrongPin, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("wrong PIN") && msg.contains(&token.label), "{msg}");
        assert!(!msg.contains("not-the-pin") && !format!("{e:?}").contains("not-the-pin"));
        // The right PIN still works afterwards.
        open(token);
    }

    fn an_unknown_token_label_names_the_tokens_there_are(token) {
        let e = Pkcs11Backend::open(Pkcs11Config {
            token: TokenSelector::Label("no-such-token".into()),
            ..config(token)
        })
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, BackendError::Config(_)), "{msg}");
        assert!(msg.contains("no-such-token") && msg.contains(&token.label) && msg.contains("softhsm2-util"), "{msg}");
    }

    fn a_missing_pin_variable_says_to_export_it(token) {
        let e = Pkcs11Backend::open(Pkcs11Config {
            pin: PinSource::Env("STRONGROOM_TEST_NO_SUCH_PIN_VARIABLE".into()),
            ..config(token)
        })
        .unwrap_err();
        assert!(e.to_string().contains("STRONGROOM_TEST_NO_SUCH_PIN_VARIABLE"), "{e}");
    }

    fn threads_do_thousands_of_unwraps_without_opening_sessions_per_operation(token) {
        let b = open(token);
        let root = rid("stress", 1);
        b.generate_root(&root).unwrap();
        let keys: Vec<(Key256, WrappedKey)> = (0..64)
            .map(|i| {
                let k = Key256::generate().unwrap();
                let blob = b.wrap(&root, &k, format!("ctx{i}").as_bytes()).unwrap();
                (k, blob)
            })
            .collect();
        let round = |threads: usize, per_thread: usize| {
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (b, keys) = (&b, &keys);
                    s.spawn(move || {
                        for i in 0..per_thread {
                            let j = (t * 7 + i) % keys.len();
                            let got = b.unwrap(&keys[j].1, format!("ctx{j}").as_bytes()).unwrap();
                            assert!(got.ct_eq(&keys[j].0));
                        }
                    });
                }
            });
        };
        round(8, 500);
        round(8, 1000);
        let after = b.stats();
        // Sessions are pooled: never more than one per concurrent caller, however many calls.
        assert!(after.sessions_opened <= 8, "12,000 unwraps opened {} sessions: {after:?}", after.sessions_opened);
        assert_eq!(after.open, after.idle, "every session is back in the pool");
        assert_eq!(after.reinitializations, 0);
        // Steady state: with sessions idle in the pool, calls open none.
        round(2, 1000);
        assert_eq!(b.stats().sessions_opened, after.sessions_opened, "steady state must open no sessions");
        println!("8 threads x 1500 unwraps; pool {after:?}");
    }

    fn sessions_lost_under_the_pool_recover_without_restart(token) {
        let b = open(token);
        let root = rid("loss", 1);
        b.generate_root(&root).unwrap();
        let stop = AtomicBool::new(false);
        let ok = AtomicUsize::new(0);
        let failed = AtomicUsize::new(0);
        // SoftHSM2 crashes (SIGSEGV, seen here) when C_Finalize or C_CloseAllSessions runs while
        // another thread is inside a call, as PKCS#11 allows it to. So the outside actor waits
        // for the call in flight to return (this lock is the test's, not the backend's), then
        // pulls the rug: the pool's idle sessions and cached handles die between two calls,
        // without the backend being told.
        let gate = std::sync::RwLock::new(());
        std::thread::scope(|s| {
            for t in 0..4 {
                let (b, root, stop, ok, failed, gate) = (&b, &root, &stop, &ok, &failed, &gate);
                s.spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let k = Key256::generate().unwrap();
                        let ctx = format!("t{t}/{i}");
                        let r = {
                            let _call = gate.read().unwrap();
                            b.wrap(root, &k, ctx.as_bytes())
                        }
                        .and_then(|blob| {
                            let _call = gate.read().unwrap();
                            b.unwrap(&blob, ctx.as_bytes())
                        });
                        match r {
                            // Never a wrong key.
                            Ok(back) => {
                                assert!(back.ct_eq(&k), "wrong key after recovery");
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            // During the fault: a typed device error, never an integrity error.
                            Err(e @ BackendError::Device { .. }) => {
                                assert!(e.to_string().contains("HSM"), "{e}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("unexpected error during session loss: {e:?}"),
                        }
                    }
                });
            }
            // The whole library finalized by someone else, five times.
            let outside = Pkcs11::new(&token.module).unwrap();
            for _ in 0..5 {
                std::thread::sleep(std::time::Duration::from_millis(100));
                let _rug = gate.write().unwrap();
                outside.clone().finalize().unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
        });
        let st = b.stats();
        println!("ok {} failed {} stats {st:?}", ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        assert_eq!(st.reinitializations, 5, "one guarded re-initialize per loss: {st:?}");
        // Recovered without a restart: everything works now.
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&root, &k, b"after").unwrap();
        assert!(b.unwrap(&blob, b"after").unwrap().ct_eq(&k));
        assert!(ok.load(Ordering::Relaxed) > 50);
        assert_eq!(failed.load(Ordering::Relaxed), 0, "recovery is transparent when the token is back at once");
    }

    fn a_logout_by_someone_else_is_repaired_on_checkout(token) {
        let b = open(token);
        let root = rid("logout", 1);
        b.generate_root(&root).unwrap();
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&root, &k, b"c").unwrap();
        let (_ctx, s) = outside_session(token);
        // One C_Logout logs every session of the application out.
        s.logout().unwrap();
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
        assert_eq!(b.stats().reinitializations, 0);
    }

    fn enable_never_guesses_the_usage_of_a_key_disabled_outside_strongroom(token) {
        let id = rid("outside", 1);
        let k = Key256::generate().unwrap();
        let blob = {
            let b = open_with(token, |c| c.preference = vec![WrapAlg::AesKw]);
            b.generate_root(&id).unwrap();
            b.wrap(&id, &k, b"c").unwrap()
        };
        assert_eq!(blob.alg(), WrapAlg::AesKw);
        // The customer turns the key's usage off in the HSM, not through strongroom.
        let (_ctx, s) = outside_session(token);
        let key = s
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(b"strongroom/outside/v1".to_vec()),
            ])
            .unwrap()[0];
        let set = |on: bool| {
            s.update_attributes(key, &[Attribute::Wrap(on), Attribute::Unwrap(on)]).unwrap();
        };
        set(false);
        // A backend that prefers AES-GCM must not turn encrypt/decrypt on (and wrap/unwrap
        // explicitly off): the key's KW blobs would never open again.
        let b = open(token);
        let e = b.enable_root(&id).unwrap_err();
        assert!(
            matches!(&e, BackendError::RootUnavailable { reason, .. } if reason.contains("outside strongroom")),
            "{e:?}"
        );
        let usage = s
            .get_attributes(key, &[AttributeType::Encrypt, AttributeType::Decrypt])
            .unwrap();
        assert!(
            usage.iter().all(|a| matches!(a, Attribute::Encrypt(false) | Attribute::Decrypt(false))),
            "no right granted by a guess: {usage:?}"
        );
        // Put back in the HSM, it enables and its blobs open.
        set(true);
        b.enable_root(&id).unwrap();
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
    }

    fn a_refused_pin_is_not_tried_again_until_the_backend_is_reopened(token) {
        let b = open(token);
        let root = rid("pin", 1);
        b.generate_root(&root).unwrap();
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&root, &k, b"c").unwrap();
        // Someone changes the user PIN on the token and logs the application out: the backend's
        // next checkout logs in again with the PIN it has, which is now wrong.
        let (_ctx, s) = outside_session(token);
        let old = AuthPin::from(token.user_pin.clone());
        let new = AuthPin::from("changed-pin".to_owned());
        s.set_pin(&old, &new).unwrap();
        s.logout().unwrap();
        let wrong = b.unwrap(&blob, b"c").unwrap_err();
        assert!(
            matches!(&wrong, BackendError::Login { failure: LoginFailure::WrongPin, .. }),
            "{wrong:?}"
        );
        // The PIN is put back, but the backend does not log in again with the PIN the token
        // refused: each try would spend one of the token's PIN attempts.
        s.login(UserType::User, Some(&new)).unwrap();
        s.set_pin(&new, &old).unwrap();
        s.logout().unwrap();
        let again = b.unwrap(&blob, b"c").unwrap_err();
        assert!(
            matches!(&again, BackendError::Login { failure: LoginFailure::RefusedEarlier(f), .. } if **f == LoginFailure::WrongPin),
            "{again:?}"
        );
        assert!(again.to_string().contains("reopen"), "{again}");
        // Reopened, it logs in with the (right) PIN again.
        drop(b);
        let b = open(token);
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
    }

    fn mechanism_preference_changes_leave_old_blobs_readable(token) {
        let k = Key256::generate().unwrap();
        let mut blobs = Vec::new();
        for (v, alg) in [(1, WrapAlg::AesKwp), (2, WrapAlg::AesKw), (3, WrapAlg::AesGcm)] {
            let b = open_with(token, |c| c.preference = vec![alg]);
            assert_eq!(b.algorithms(), [alg]);
            let id = rid("mech", v);
            b.generate_root(&id).unwrap();
            let blob = b.wrap(&id, &k, b"ctx").unwrap();
            assert_eq!(blob.alg(), alg, "the blob records the mechanism");
            blobs.push(blob);
        }
        // The default preference (GCM first) reads all three.
        let b = open(token);
        assert_eq!(b.algorithms()[0], WrapAlg::AesGcm);
        let (_ctx, raw) = outside_session(token);
        for blob in &blobs {
            assert!(b.unwrap(blob, b"ctx").unwrap().ct_eq(&k), "{:?}", blob.alg());
            assert_integrity(b.unwrap(blob, b"other context"));
            let mut p = blob.payload().to_vec();
            p[20] ^= 0x40;
            let bad = WrappedKey::new(blob.alg(), blob.wrapped_by().clone(), p).unwrap();
            // SoftHSM2 answers CKR_GENERAL_ERROR; the canary shows the device is fine.
            assert_integrity(b.unwrap(&bad, b"ctx"));
        }
        // Failed unwraps left no temporary objects behind.
        assert_eq!(session_secret_objects(&raw), 0);
    }

    fn keys_strongroom_creates_list_as_sensitive_and_never_extractable(token) {
        let b = open(token);
        b.generate_root(&rid("acme", 1)).unwrap();
        drop(b);
        let listing = token.pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
        let block = listing
            .split("Secret Key Object")
            .find(|blk| blk.contains("strongroom/acme/v1"))
            .unwrap_or_else(|| panic!("strongroom/acme/v1 not listed:\n{listing}"));
        assert!(block.contains("sensitive"), "{block}");
        assert!(block.contains("never extractable"), "{block}");
        assert!(block.contains("AES length 32"), "{block}");
        let usage = block.lines().find(|l| l.contains("Usage")).unwrap();
        assert!(usage.contains("encrypt") && usage.contains("decrypt") && !usage.contains("wrap"), "{usage}");
        let data = token.pkcs11_tool(&["--list-objects", "--type", "data"]);
        assert!(data.contains("strongroom/acme/v1") && data.contains("strongroom"), "{data}");
    }

    fn a_key_that_was_once_extractable_is_adopted_only_with_the_override(token) {
        // Made extractable, then turned non-extractable: CKA_NEVER_EXTRACTABLE stays false, so
        // its material may exist outside the HSM.
        let _ = token.pkcs11_tool(&["--keygen", "--key-type", "AES:32", "--label", "was-loose", "--sensitive", "--extractable"]);
        let (_ctx, s) = outside_session(token);
        let key = s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(b"was-loose".to_vec())]).unwrap()[0];
        s.update_attributes(key, &[Attribute::Extractable(false)]).unwrap();
        let b = open(token);
        let e = b.adopt_root(&rid("weak", 1), "was-loose").unwrap_err();
        assert!(matches!(e, BackendError::Config(_)) && e.to_string().contains("CKA_NEVER_EXTRACTABLE") && e.to_string().contains("allow_weak_adoption"), "{e}");
        assert_eq!(b.find_root(&rid("weak", 1)).unwrap(), None, "nothing recorded");
        let b = open_with(token, |c| c.allow_weak_adoption = true);
        b.adopt_root(&rid("weak", 1), "was-loose").unwrap();
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&rid("weak", 1), &k, b"c").unwrap();
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
    }

    fn a_key_made_by_pkcs11_tool_can_be_adopted(token) {
        let _ = token.pkcs11_tool(&["--keygen", "--key-type", "AES:32", "--label", "customer-key", "--id", "c0ffee", "--sensitive"]);
        let _ = token.pkcs11_tool(&["--keygen", "--key-type", "AES:32", "--label", "loose-key", "--id", "0bad", "--sensitive", "--extractable"]);
        let _ = token.pkcs11_tool(&["--keygen", "--key-type", "AES:16", "--label", "short-key", "--sensitive"]);
        let b = open(token);
        let id = rid("customer", 1);
        let info = b.adopt_root(&id, "customer-key").unwrap();
        assert_eq!(info.status, RootStatus::Enabled);
        assert!(info.locator.contains("customer-key"), "{}", info.locator);
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&id, &k, b"c").unwrap();
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
        // By id, under another name.
        b.adopt_root(&rid("customer-by-id", 1), "id:c0ffee").unwrap();
        assert!(matches!(b.adopt_root(&id, "customer-key"), Err(BackendError::RootExists { .. })));
        for (sel, why) in [("loose-key", "extractable"), ("short-key", "256-bit"), ("no-such-key", "no secret key")] {
            let e = b.adopt_root(&rid("refused", 1), sel).unwrap_err();
            assert!(matches!(e, BackendError::Config(_)) && e.to_string().contains(why), "{sel}: {e}");
        }
        // Survives a reopen; the adopted key keeps its own label.
        drop(b);
        let b = open(token);
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
        let roots = b.list_roots().unwrap();
        assert!(roots.iter().any(|r| r.id == id && r.status == RootStatus::Enabled), "{roots:?}");
    }

    fn changes_made_outside_strongroom_are_unavailable_not_corrupt(token) {
        let b = open(token);
        let id = rid("outside", 1);
        b.generate_root(&id).unwrap();
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&id, &k, b"c").unwrap();
        let (_ctx, raw) = outside_session(token);
        let key = raw.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(b"strongroom/outside/v1".to_vec())]).unwrap()[0];

        // An HSM administrator turns decryption off in the HSM.
        raw.update_attributes(key, &[Attribute::Decrypt(false), Attribute::Encrypt(false)]).unwrap();
        let e = b.unwrap(&blob, b"c").unwrap_err();
        assert!(matches!(e, BackendError::RootUnavailable { .. }), "{e:?}");
        assert!(e.to_string().contains("outside strongroom"), "{e}");
        assert_eq!(b.find_root(&id).unwrap().unwrap().status, RootStatus::Unavailable);
        assert!(b.health().unwrap().iter().any(|c| !c.ok && c.name == "root keys"));
        // ... and back on: it works again, no restart.
        raw.update_attributes(key, &[Attribute::Decrypt(true), Attribute::Encrypt(true)]).unwrap();
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));

        // The key is deleted with another tool.
        drop(raw);
        let _ = token.pkcs11_tool(&["--delete-object", "--type", "secrkey", "--label", "strongroom/outside/v1"]);
        let e = b.unwrap(&blob, b"c").unwrap_err();
        assert!(matches!(&e, BackendError::RootUnavailable { reason, .. } if reason.contains("deleted outside")), "{e:?}");
        assert!(e.is_key_unavailable());
        let e = b.wrap(&id, &k, b"c").unwrap_err();
        assert!(matches!(e, BackendError::RootUnavailable { .. }), "{e:?}");
    }

    fn disable_and_destroy_hold_across_reopen(token) {
        let id = rid("life", 1);
        let k = Key256::generate().unwrap();
        let blob = {
            let b = open(token);
            b.generate_root(&id).unwrap();
            let blob = b.wrap(&id, &k, b"c").unwrap();
            b.disable_root(&id).unwrap();
            blob
        };
        let b = open(token);
        assert!(matches!(b.unwrap(&blob, b"c"), Err(BackendError::RootDisabled { .. })));
        assert_eq!(b.find_root(&id).unwrap().unwrap().status, RootStatus::Disabled);
        let listing = token.pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
        let block = listing.split("Secret Key Object").find(|blk| blk.contains("strongroom/life/v1")).unwrap();
        let usage = block.lines().find(|l| l.contains("Usage")).unwrap();
        assert!(!usage.contains("encrypt") && !usage.contains("decrypt"), "disabled in the token too: {usage}");
        b.enable_root(&id).unwrap();
        assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&k));
        b.destroy_root(&id).unwrap();
        drop(b);
        let b = open(token);
        assert!(matches!(b.unwrap(&blob, b"c"), Err(BackendError::RootDestroyed { .. })));
        assert!(!token.pkcs11_tool(&["--list-objects", "--type", "secrkey"]).contains("strongroom/life/v1"));
        assert!(matches!(b.generate_root(&id), Err(BackendError::RootExists { .. })));
    }

    fn administrative_calls_and_unwraps_run_together(token) {
        let b = open(token);
        let root = rid("busy", 1);
        b.generate_root(&root).unwrap();
        let k = Key256::generate().unwrap();
        let blob = b.wrap(&root, &k, b"c").unwrap();
        std::thread::scope(|s| {
            for t in 0..3 {
                let b = &b;
                s.spawn(move || {
                    for v in 1..=12 {
                        b.generate_root(&rid(&format!("gen{t}"), v)).unwrap();
                    }
                });
                let (blob, k) = (&blob, &k);
                s.spawn(move || {
                    for _ in 0..600 {
                        assert!(b.unwrap(blob, b"c").unwrap().ct_eq(k));
                    }
                });
            }
        });
        let roots = b.list_roots().unwrap();
        assert_eq!(roots.len(), 1 + 36, "{roots:?}");
        assert!(roots.iter().all(|r| r.status == RootStatus::Enabled));
        let (_ctx, raw) = outside_session(token);
        let keys = raw.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Token(true)]).unwrap();
        assert_eq!(keys.len(), 37, "no stray or duplicate key objects");
        assert_eq!(session_secret_objects(&raw), 0);
    }

    fn byok_import_under_an_rsa_oaep_key_made_in_the_token(token) {
        let b = open_with(token, |c| c.import_key_bits = 2048);
        let import = b.import_key().unwrap();
        assert!(import.mechanism.starts_with("RSA-OAEP"), "{}", import.mechanism);
        // The import key pair is made once.
        assert_eq!(b.import_key().unwrap(), import);
        let dir = token.dir();
        std::fs::write(dir.join("import.der"), &import.public_key_der).unwrap();

        // The customer, with OpenSSL: a 256-bit key, its check value, and the key wrapped
        // under the published public key.
        let customer = [0x5Au8; 16].iter().chain([0xA5u8; 16].iter()).copied().collect::<Vec<u8>>();
        let wrap_with_openssl = |material: &[u8], name: &str| -> Vec<u8> {
            let (input, output) = (dir.join(format!("{name}.bin")), dir.join(format!("{name}.wrapped")));
            std::fs::write(&input, material).unwrap();
            let md = if import.mechanism.contains("SHA-256") { "sha256" } else { "sha1" };
            let out = Command::new("openssl")
                .args(["pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey"])
                .arg(dir.join("import.der"))
                .args(["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", &format!("rsa_oaep_md:{md}"), "-pkeyopt", &format!("rsa_mgf1_md:{md}"), "-in"])
                .arg(&input)
                .arg("-out")
                .arg(&output)
                .output()
                .expect("openssl is needed for the BYOK test (Debian: apt-get install openssl)");
            assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
            std::fs::read(output).unwrap()
        };
        let kcv = {
            use aes_gcm::aes::Aes256;
            use aes_gcm::aes::cipher::{BlockCipherEncrypt, KeyInit as _};
            let c = Aes256::new_from_slice(&customer).unwrap();
            let mut block = [0u8; 16].into();
            c.encrypt_block(&mut block);
            [block[0], block[1], block[2]]
        };
        let wrapped = wrap_with_openssl(&customer, "customer");

        // A wrong check value, or a 128-bit key, never becomes a root key.
        let id = rid("byok", 1);
        let e = b.import_wrapped_root(&id, &wrapped, &[kcv[0] ^ 1, kcv[1], kcv[2]]).unwrap_err();
        assert!(matches!(e, BackendError::Integrity), "{e:?}");
        let short = wrap_with_openssl(&customer[..16], "short");
        assert!(matches!(b.import_wrapped_root(&id, &short, &kcv), Err(BackendError::Integrity)));
        assert!(matches!(b.import_wrapped_root(&id, &wrapped[1..], &kcv), Err(BackendError::Integrity)));
        assert!(b.find_root(&id).unwrap().is_none());

        b.import_wrapped_root(&id, &wrapped, &kcv).unwrap();
        // Proof that the root key is the customer's: a KEK wrapped under it in the token opens in
        // software with the customer's own copy of the key.
        let kek = Key256::generate().unwrap();
        let blob = b.wrap(&id, &kek, b"keyring=x").unwrap();
        assert_eq!(blob.alg(), WrapAlg::AesGcm);
        let p = blob.payload();
        let cipher = Aes256Gcm::new_from_slice(&customer).unwrap();
        let mut ct = p[12..44].to_vec();
        let nonce: [u8; 12] = p[..12].try_into().unwrap();
        let tag: [u8; 16] = p[44..].try_into().unwrap();
        cipher
            .decrypt_inout_detached((&nonce).into(), b"keyring=x", (&mut ct[..]).into(), (&tag).into())
            .unwrap();
        assert_eq!(&ct[..], kek.expose_bytes());
        assert!(b.unwrap(&blob, b"keyring=x").unwrap().ct_eq(&kek));
        // The imported key is a proper root key in the token.
        let listing = token.pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
        let block = listing.split("Secret Key Object").find(|blk| blk.contains("strongroom/byok/v1")).unwrap();
        assert!(block.contains("sensitive") && !block.contains(" extractable"), "{block}");
    }

    fn namespaces_keep_two_stores_on_one_token_apart(token) {
        let a = open(token);
        let b = open_with(token, |c| c.namespace = "tenant-b".into());
        assert_ne!(a.describe().instance_id, b.describe().instance_id, "the namespace is part of the instance id");
        assert!(b.describe().instance_id.ends_with(";namespace=tenant-b"));
        // The same root name in both: two different keys, neither sees the other's.
        let id = rid("acme", 1);
        a.generate_root(&id).unwrap();
        assert_eq!(b.find_root(&id).unwrap(), None, "b must not see a's key");
        assert!(b.list_roots().unwrap().is_empty());
        b.generate_root(&id).unwrap();
        let k = Key256::generate().unwrap();
        let blob = a.wrap(&id, &k, b"ctx").unwrap();
        assert!(a.unwrap(&blob, b"ctx").unwrap().ct_eq(&k));
        assert_integrity(b.unwrap(&blob, b"ctx"));
        // b's lifecycle leaves a's key alone.
        b.disable_root(&id).unwrap();
        b.destroy_root(&id).unwrap();
        assert_eq!(a.find_root(&id).unwrap().unwrap().status, RootStatus::Enabled);
        assert!(a.unwrap(&blob, b"ctx").unwrap().ct_eq(&k));
        let listed: Vec<_> = a.list_roots().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(listed, [id]);
        assert_eq!(b.import_key().unwrap().id, "tenant-b/import");
        assert_eq!(a.import_key().unwrap().id, "strongroom/import");
        let e = Pkcs11Backend::open(Pkcs11Config { namespace: "a/b".into(), ..config(token) }).unwrap_err();
        assert!(matches!(e, BackendError::Config(_)) && e.to_string().contains("namespace"), "{e}");
    }

    fn health_and_describe_name_the_token(token) {
        let b = open(token);
        b.generate_root(&rid("h", 1)).unwrap();
        let info = b.describe();
        assert_eq!(info.kind, "pkcs11");
        assert!(info.instance_id.starts_with("pkcs11:serial="));
        assert!(info.description.contains(&token.label));
        assert!(info.capabilities.hardware && info.capabilities.import_wrapped);
        let checks = b.health().unwrap();
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["PKCS#11 module", "token", "login", "mechanisms", "sessions", "root keys"]);
        assert!(checks.iter().all(|c| c.ok), "{checks:?}");
        assert!(format!("{b:?}").contains(&token.label));
        assert!(!format!("{b:?}").contains(&token.user_pin));
    }

    fn the_audit_anchor_is_kept_in_the_token_replaced_and_per_namespace(token) {
        let b = open(token);
        assert!(b.audit_anchors().unwrap().is_empty(), "none before the first write");
        b.put_audit_anchor(b"anchor-1", &[]).unwrap();
        assert_eq!(b.audit_anchors().unwrap(), vec![b"anchor-1".to_vec()]);
        // Replaced: the old one is gone once the new one exists.
        b.put_audit_anchor(b"anchor-2", &[b"anchor-1".to_vec()]).unwrap();
        assert_eq!(b.audit_anchors().unwrap(), vec![b"anchor-2".to_vec()]);
        // One another writer put there meanwhile (not in `replacing`) stays: the store reads
        // both and takes the newest.
        b.put_audit_anchor(b"anchor-3", &[]).unwrap();
        let mut both = b.audit_anchors().unwrap();
        both.sort();
        assert_eq!(both, vec![b"anchor-2".to_vec(), b"anchor-3".to_vec()]);
        // Written again (a retry after a lost reply): still one of it.
        b.put_audit_anchor(b"anchor-3", &[b"anchor-2".to_vec()]).unwrap();
        assert_eq!(b.audit_anchors().unwrap(), vec![b"anchor-3".to_vec()]);
        // A private token object, under the namespace's label, that another namespace on the
        // same token does not see.
        let listing = token.pkcs11_tool(&["--list-objects", "--type", "data"]);
        assert!(listing.contains("strongroom/anchor"), "{listing}");
        let other = open_with(token, |c| c.namespace = "other".into());
        assert!(other.audit_anchors().unwrap().is_empty());
        // Not a place for anything large.
        assert!(b.put_audit_anchor(&[0u8; 2048], &[]).is_err());
        // A new session (another replica's process would open its own) reads it.
        drop(b);
        assert_eq!(open(token).audit_anchors().unwrap(), vec![b"anchor-3".to_vec()]);
    }

    fn a_token_made_after_the_library_started_is_found_by_the_next_open(token) {
        // SoftHSM2, like many PKCS#11 libraries, lists only the tokens it saw when it was
        // initialized: the backend initializes it anew when a token is not found (and no other
        // backend of the process uses it), and looks again.
        let first = open(token);
        assert!(first.health().unwrap().iter().all(|c| c.ok));
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", token.conf())
            .args([
                "--init-token", "--free", "--label", "made-later",
                "--pin", &token.user_pin, "--so-pin", &token.so_pin,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        drop(first);
        let later = Pkcs11Backend::open(Pkcs11Config::new(
            &token.module,
            TokenSelector::Label("made-later".into()),
            PinSource::File(token.pin_file()),
        ))
        .expect("found after the library is initialized anew");
        assert!(later.health().unwrap().iter().all(|c| c.ok));
        // A label no token has is still a configuration error, after the rescans.
        let e = Pkcs11Backend::open(Pkcs11Config::new(
            &token.module,
            TokenSelector::Label("no-such-token".into()),
            PinSource::File(token.pin_file()),
        ))
        .unwrap_err();
        assert!(matches!(e, BackendError::Config(_)), "{e:?}");
        assert!(e.to_string().contains("no token with label"), "{e}");
    }
}
