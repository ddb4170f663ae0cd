//! PKCS#11 backend benchmark on a SoftHSM2 token of its own: strongroom's unwrap and wrap
//! against the fastest any caller can drive the token (raw single-call `C_DecryptInit` +
//! `C_Decrypt`, `C_EncryptInit` + `C_Encrypt`, through the module's function list) and against
//! cryptoki's `Session::decrypt`/`encrypt` (init + size query + call), all in one interleaved
//! run on the same key; then the backend's unwrap on 4 threads, the sessions it opens per 1000
//! unwraps in steady state, and KWP (`C_WrapKey`/`C_UnwrapKey`) rates.
//!
//! `cargo bench --bench pkcs11 --features pkcs11` (`STRONGROOM_BENCH_SECS` sets seconds per
//! contender, default 2). SoftHSM2 reads `SOFTHSM2_CONF` at `C_Initialize`, and the bench does
//! not change its own environment: it makes a token, then runs itself again as a child with
//! `SOFTHSM2_CONF` pointing at it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use strongroom::pkcs11::{PinSource, Pkcs11Backend, Pkcs11Config, TokenSelector};
use strongroom::{Backend, Key256, RootKeyId, RootKeyName, RootVersion, WrapAlg};
use strongroom_p11_testkit::RawModule;
use strongroom_test_support::bench::{Contender, budget, compare, keep, print_table};
use strongroom_test_support::softhsm::{Token, USER_PIN, module_path};

const TOKEN_DIR_ENV: &str = "STRONGROOM_BENCH_TOKEN_DIR";
const LABEL: &str = "strongroom-bench";
const CONTEXT: &[u8] = b"keyring=bench/kek/v1";

fn main() {
    match std::env::var_os(TOKEN_DIR_ENV) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            assert_eq!(
                std::env::var_os("SOFTHSM2_CONF").map(PathBuf::from),
                Some(dir.join("softhsm2.conf")),
                "the bench child must run on its own token"
            );
            run(&dir);
        }
        None => {
            let token = Token::create(LABEL);
            let status = Command::new(std::env::current_exe().unwrap())
                .args(std::env::args_os().skip(1))
                .envs(token.env())
                .env(TOKEN_DIR_ENV, token.dir())
                .status()
                .expect("run the bench on its token");
            assert!(status.success(), "pkcs11 bench failed: {status}");
        }
    }
}

fn root(name: &str) -> RootKeyId {
    RootKeyId::new(RootKeyName::new(name).unwrap(), RootVersion::FIRST)
}

fn open(dir: &Path, preference: Vec<WrapAlg>) -> Pkcs11Backend {
    let mut c = Pkcs11Config::new(
        module_path(),
        TokenSelector::Label(LABEL.into()),
        PinSource::File(dir.join("user.pin")),
    );
    c.preference = preference;
    Pkcs11Backend::open(c).expect("open the backend")
}

/// A session of the bench's own (the library is already initialized by the backend) and the
/// handle of the root key labelled `strongroom/<name>/v1`.
fn own_session(name: &str) -> (Pkcs11, Session, ObjectHandle) {
    let ctx = Pkcs11::new(module_path()).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == LABEL)
        .unwrap();
    let s = ctx.open_rw_session(slot).unwrap();
    match s.login(UserType::User, Some(&AuthPin::from(USER_PIN.to_owned()))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let key = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(format!("strongroom/{name}/v1").into_bytes()),
        ])
        .unwrap()[0];
    (ctx, s, key)
}

/// Backend unwraps on `threads` threads for `t`: (ops/s, sessions opened per 1000 unwraps).
fn threaded_unwrap(
    b: &Pkcs11Backend,
    blob: &strongroom::WrappedKey,
    threads: usize,
    t: Duration,
) -> (f64, f64) {
    // Warm the pool first, so the count below is the steady state.
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..50 {
                    keep(b.unwrap(blob, CONTEXT).unwrap());
                }
            });
        }
    });
    let opened_before = b.stats().sessions_opened;
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    keep(b.unwrap(blob, CONTEXT).unwrap());
                    n += 1;
                }
                ops.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(t);
        stop.store(true, Ordering::Relaxed);
    });
    let secs = start.elapsed().as_secs_f64();
    let ops = ops.load(Ordering::Relaxed) as f64;
    let opened = (b.stats().sessions_opened - opened_before) as f64;
    (ops / secs, opened * 1000.0 / ops.max(1.0))
}

fn run(dir: &Path) {
    let t = budget();
    let b = open(dir, vec![WrapAlg::AesGcm]);
    let id = root("bench");
    b.generate_root(&id).unwrap();
    let key = Key256::generate().unwrap();
    let blob = b.wrap(&id, &key, CONTEXT).unwrap();
    assert_eq!(blob.alg(), WrapAlg::AesGcm);
    let (_ctx, session, handle) = own_session("bench");
    let raw = RawModule::load(&module_path()).unwrap();

    // The blob's payload is IV (12) || ciphertext (32) || tag (16).
    let payload = blob.payload().to_vec();
    let iv: [u8; 12] = payload[..12].try_into().unwrap();
    let sealed = &payload[12..];
    let mut out = vec![0u8; sealed.len()];
    let n = raw
        .gcm_decrypt(
            session.handle(),
            handle.handle(),
            &iv,
            CONTEXT,
            sealed,
            &mut out,
        )
        .unwrap();
    assert_eq!(
        &out[..n],
        key.expose_bytes(),
        "the raw baseline decrypts the backend's blob"
    );

    let r = compare(
        vec![
            Contender::new("raw single-call C_DecryptInit+C_Decrypt", || {
                let n = raw
                    .gcm_decrypt(
                        session.handle(),
                        handle.handle(),
                        &iv,
                        CONTEXT,
                        keep(sealed),
                        &mut out,
                    )
                    .unwrap();
                keep(&out[..n]);
            }),
            Contender::new(
                "cryptoki Session::decrypt (init + size query + decrypt)",
                || {
                    let mut iv = iv;
                    let mech =
                        Mechanism::AesGcm(GcmParams::new(&mut iv, CONTEXT, 128.into()).unwrap());
                    keep(session.decrypt(&mech, handle, keep(sealed)).unwrap());
                },
            ),
            Contender::new("Pkcs11Backend::unwrap (AES-GCM)", || {
                keep(b.unwrap(keep(&blob), CONTEXT).unwrap());
            }),
        ],
        t,
    );
    print_table(
        "unwrap: PKCS#11 AES-GCM decrypt of a wrapped 256-bit key, one thread",
        &r,
    );
    let unwrap_ratio = r[2].ratio_to_baseline;

    // Wrap side. The raw and cryptoki contenders encrypt under counter IVs (never reused).
    let mut counter = 0u64;
    let mut next_iv = || {
        counter += 1;
        let mut iv = [0u8; 12];
        iv[4..].copy_from_slice(&counter.to_be_bytes());
        iv
    };
    let mut next_iv2 = {
        let mut c = 1u64 << 40;
        move || {
            c += 1;
            let mut iv = [0u8; 12];
            iv[4..].copy_from_slice(&c.to_be_bytes());
            iv
        }
    };
    let mut ct = vec![0u8; 48];
    let r = compare(
        vec![
            Contender::new("raw single-call C_EncryptInit+C_Encrypt", || {
                let iv = next_iv();
                let n = raw
                    .gcm_encrypt(
                        session.handle(),
                        handle.handle(),
                        &iv,
                        CONTEXT,
                        key.expose_bytes(),
                        &mut ct,
                    )
                    .unwrap();
                keep(&ct[..n]);
            }),
            Contender::new(
                "cryptoki Session::encrypt (init + size query + encrypt)",
                || {
                    let mut iv = next_iv2();
                    let mech =
                        Mechanism::AesGcm(GcmParams::new(&mut iv, CONTEXT, 128.into()).unwrap());
                    keep(session.encrypt(&mech, handle, key.expose_bytes()).unwrap());
                },
            ),
            Contender::new("Pkcs11Backend::wrap (AES-GCM)", || {
                keep(b.wrap(&id, &key, CONTEXT).unwrap());
            }),
        ],
        t,
    );
    print_table(
        "wrap: PKCS#11 AES-GCM encrypt of a 256-bit key, one thread",
        &r,
    );

    // Threads: the machine has few cores, so read the scaling, not the absolute numbers.
    let (one, per1000_one) = threaded_unwrap(&b, &blob, 1, t);
    let (four, per1000_four) = threaded_unwrap(&b, &blob, 4, t);
    println!("\n### Pkcs11Backend::unwrap on threads (AES-GCM)\n");
    println!("| threads | ops/s | sessions opened per 1000 unwraps (steady state) |");
    println!("|---:|---:|---:|");
    println!("| 1 | {one:.0} | {per1000_one:.2} |");
    println!("| 4 | {four:.0} | {per1000_four:.2} |");
    println!(
        "\n{} cores; pool after the run: {:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        b.stats()
    );

    // KWP: the backend with AES key wrap with padding preferred (C_WrapKey/C_UnwrapKey of a
    // temporary session object holding the context-bound key).
    let kwp = open(dir, vec![WrapAlg::AesKwp]);
    let kid = root("bench-kwp");
    kwp.generate_root(&kid).unwrap();
    let kblob = kwp.wrap(&kid, &key, CONTEXT).unwrap();
    assert_eq!(kblob.alg(), WrapAlg::AesKwp);
    assert!(kwp.unwrap(&kblob, CONTEXT).unwrap().ct_eq(&key));
    let r = compare(
        vec![
            Contender::new("Pkcs11Backend::unwrap (AES-GCM)", || {
                keep(b.unwrap(keep(&blob), CONTEXT).unwrap());
            }),
            Contender::new("Pkcs11Backend::unwrap (AES-KWP, C_UnwrapKey)", || {
                keep(kwp.unwrap(keep(&kblob), CONTEXT).unwrap());
            }),
            Contender::new("Pkcs11Backend::wrap (AES-KWP, C_WrapKey)", || {
                keep(kwp.wrap(&kid, &key, CONTEXT).unwrap());
            }),
        ],
        t,
    );
    print_table("KWP against GCM through the backend, one thread", &r);

    println!("\nbackend unwrap / raw single-call C_Decrypt = {unwrap_ratio:.2}");
}
