//! Core crypto benchmarks: record seal/open at 64 B, 1 KiB and 64 KiB; nonces from the userspace
//! CSPRNG against the OS; soft-backend wrap and unwrap against the raw context-bound KWP they
//! wrap. Each table is one interleaved run; read the ratios.
//!
//! With `--features ring`, also the `aes-gcm` and `ring` AES-GCM engines side by side.
//!
//! `cargo bench --bench crypto` (`STRONGROOM_BENCH_SECS` sets seconds per contender, default 2)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use strongroom::core::crypto::{kwp_unwrap_bound, kwp_wrap_bound};
use strongroom::core::record::RecordCipher;
use strongroom::core::rng;
use strongroom::{
    Backend, DekVersion, Key256, KeyringName, RootKeyId, RootKeyName, RootVersion, SoftBackend,
};
use strongroom_test_support::bench::{Contender, budget, compare, keep, print_table};

fn main() {
    let t = budget();
    let kr = KeyringName::new("bench").unwrap();
    let dek = Key256::generate().unwrap();
    let cipher = RecordCipher::new(DekVersion::FIRST, &dek);

    for size in [64usize, 1024, 64 * 1024] {
        let value = vec![0xA5u8; size];
        let sealed = cipher.seal(&kr, b"key", &value).unwrap();
        let r = compare(
            vec![
                Contender::new(format!("seal {size} B"), || {
                    keep(cipher.seal(&kr, b"key", keep(&value)).unwrap());
                }),
                Contender::new(format!("open {size} B"), || {
                    keep(cipher.open(&kr, b"key", keep(&sealed)).unwrap());
                }),
            ],
            t,
        );
        print_table(&format!("record seal/open, {size}-byte values"), &r);
        let mib = |ops: f64| ops * size as f64 / (1024.0 * 1024.0);
        println!(
            "\nthroughput: seal {:.0} MiB/s, open {:.0} MiB/s",
            mib(r[0].ops_per_sec),
            mib(r[1].ops_per_sec)
        );
    }

    let r = compare(
        vec![
            Contender::new("nonce from the OS (getrandom)", || {
                let mut n = [0u8; 12];
                rng::os_fill(&mut n).unwrap();
                keep(n);
            }),
            Contender::new("nonce from the userspace CSPRNG", || {
                let mut n = [0u8; 12];
                rng::fill_nonce(&mut n).unwrap();
                keep(n);
            }),
        ],
        t,
    );
    print_table("96-bit nonces", &r);

    let dir = tempfile::tempdir().unwrap();
    let soft = SoftBackend::create(dir.path()).unwrap();
    let root = RootKeyId::new(RootKeyName::new("bench").unwrap(), RootVersion::FIRST);
    soft.generate_root(&root).unwrap();
    let root_material = Key256::generate().unwrap();
    let key = Key256::generate().unwrap();
    let blob = soft.wrap(&root, &key, b"ctx").unwrap();
    let raw_blob = kwp_wrap_bound(&root_material, &key, b"ctx");
    let r = compare(
        vec![
            Contender::new("raw context-bound KWP unwrap", || {
                keep(kwp_unwrap_bound(&root_material, keep(&raw_blob), b"ctx").unwrap());
            }),
            Contender::new("soft backend unwrap", || {
                keep(soft.unwrap(keep(&blob), b"ctx").unwrap());
            }),
            Contender::new("raw context-bound KWP wrap", || {
                keep(kwp_wrap_bound(&root_material, &key, b"ctx"));
            }),
            Contender::new("soft backend wrap", || {
                keep(soft.wrap(&root, &key, b"ctx").unwrap());
            }),
        ],
        t,
    );
    print_table("soft backend wrap/unwrap against raw KWP", &r);

    engines(t);
}

/// The two AES-GCM engines side by side (only with `--features ring`; without it only `aes-gcm`
/// is built).
#[cfg(feature = "ring")]
fn engines(t: std::time::Duration) {
    use strongroom::core::crypto::{Gcm, RingGcm, RustCryptoGcm};
    let k = Key256::generate().unwrap();
    let (rc, ring) = (
        Gcm::<RustCryptoGcm>::with_engine(&k),
        Gcm::<RingGcm>::with_engine(&k),
    );
    let nonce = [7u8; 12];
    for size in [64usize, 1024, 16 * 1024] {
        let value = vec![0x5Au8; size];
        let sealed = rc.seal(&nonce, b"aad", &value).unwrap();
        let r = compare(
            vec![
                Contender::new(format!("aes-gcm open {size} B"), || {
                    keep(rc.open(&nonce, b"aad", keep(&sealed)).unwrap());
                }),
                Contender::new(format!("ring open {size} B"), || {
                    keep(ring.open(&nonce, b"aad", keep(&sealed)).unwrap());
                }),
                Contender::new(format!("aes-gcm seal {size} B"), || {
                    keep(rc.seal(&nonce, b"aad", keep(&value)).unwrap());
                }),
                Contender::new(format!("ring seal {size} B"), || {
                    keep(ring.seal(&nonce, b"aad", keep(&value)).unwrap());
                }),
            ],
            t,
        );
        print_table(&format!("AES-256-GCM engines, {size}-byte values"), &r);
    }
}

#[cfg(not(feature = "ring"))]
fn engines(_: std::time::Duration) {
    println!("\n(build with --features ring to compare the aes-gcm and ring engines)");
}
