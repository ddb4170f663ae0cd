//! Store benchmark: what sealing costs on top of the database, the way a service uses it.
//!
//! For each value size, in one run: N records inserted into plain sled and into the store
//! (soft backend), then N random gets from each, then the backend calls the store makes per
//! 100,000 reads once warm. The contenders run interleaved in chunks of 1,000 operations, the
//! order rotating from chunk to chunk, so a burst of outside load hits all alike: read the
//! ratios, not the absolute rates, on a shared machine.
//!
//! Gets are compared twice, in two passes: with a plain get (which returns a reference into
//! sled's cache and never reads the value), and with a plain get that copies the value out, the
//! least a caller that uses the value does; strongroom must read every byte to authenticate it.
//!
//! A third contender is **the limit**: what a store with zero overhead of its own would reach,
//! plain sled plus the record cipher alone on the same data (a put seals the value with an
//! AES-256-GCM record cipher and inserts it; a get reads the sealed value and opens it), each in
//! a database of its own. `ratio_to_limit` is strongroom's rate over the limit's: what the
//! store adds beyond the database and the cryptography it cannot avoid.
//!
//! Fair by construction: both databases use the same sled settings (a flush every 500 ms, no
//! `put_durable`), both get the same keys in the same order, and every insert writes a new key
//! with one of 64 distinct random values (sled skips a write whose value equals the stored one,
//! so rewriting one constant value would measure nothing on the plain side).
//!
//! `cargo bench --bench store` (`STRONGROOM_BENCH_RECORDS` sets N for 1 KiB values, default
//! 200,000; the 64 B run uses the same N and the 16 KiB run N / 20); add `--features ring` to
//! seal with ring's AES-GCM instead of aes-gcm.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
// Casts below only turn generator output into bytes and indices: truncation is intended.
#![allow(clippy::cast_possible_truncation)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use strongroom::core::record::RecordCipher;
use strongroom::{Backend, DekVersion, Key256, KeyringName, RootKeyName, SoftBackend};
use strongroom_store::{Store, StoreOptions};
use strongroom_test_support::bench::keep;

const CHUNK: usize = 1000;

/// A small deterministic generator (xorshift64*), so both sides see the same order.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Runs each contender over `0..n` in interleaved chunks, rotating which goes first from chunk
/// to chunk; returns their rates (ops/s) in the order given.
fn interleaved(n: usize, contenders: &mut [&mut dyn FnMut(usize)]) -> Vec<f64> {
    let k = contenders.len();
    let mut spent = vec![Duration::ZERO; k];
    for (c, start) in (0..n).step_by(CHUNK).enumerate() {
        let end = (start + CHUNK).min(n);
        for j in 0..k {
            let who = (c + j) % k;
            let t = Instant::now();
            for i in start..end {
                contenders[who](i);
            }
            spent[who] += t.elapsed();
        }
    }
    spent.iter().map(|d| n as f64 / d.as_secs_f64()).collect()
}

fn row(op: &str, plain: f64, store: f64, limit: f64) {
    println!(
        "| {op} | {plain:.0} | {limit:.0} | {store:.0} | {:.2} | {:.2} |",
        store / plain,
        store / limit
    );
}

fn run(size: usize, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let plain_db = sled::Config::new()
        .path(dir.path().join("plain"))
        .flush_every_ms(Some(500))
        .open()
        .unwrap();
    let plain = plain_db.open_tree("records").unwrap();
    // The limit: plain sled and the record cipher alone, in a database of its own.
    let limit_db = sled::Config::new()
        .path(dir.path().join("limit"))
        .flush_every_ms(Some(500))
        .open()
        .unwrap();
    let limit = limit_db.open_tree("records").unwrap();
    let cipher = RecordCipher::new(DekVersion::FIRST, &Key256::generate().unwrap());
    let store_dir = dir.path().join("store");
    std::fs::create_dir(&store_dir).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(SoftBackend::create(&store_dir).unwrap());
    let store = Store::create(
        &store_dir,
        backend,
        &RootKeyName::new("bench").unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    let ring = KeyringName::new("bench").unwrap();
    store.create_keyring(&ring, None).unwrap();

    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    let values: Vec<Vec<u8>> = (0..64)
        .map(|_| (0..size).map(|_| g.next() as u8).collect())
        .collect();
    // Keys in a shuffled order, so inserts land all over the tree as a service's would.
    let mut keys: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("user/{i:08}").into_bytes())
        .collect();
    for i in (1..n).rev() {
        keys.swap(i, (g.next() % (i as u64 + 1)) as usize);
    }

    println!(
        "\n### {n} records of {size} B (records sealed with {})\n",
        strongroom::core::crypto::GCM_ENGINE
    );
    println!(
        "| op | plain sled/s | limit (plain + cipher)/s | strongroom/s | ratio (to plain) | ratio_to_limit |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let r = interleaved(
        n,
        &mut [
            &mut |i| {
                keep(
                    plain
                        .insert(keys[i].as_slice(), values[i % 64].as_slice())
                        .unwrap(),
                );
            },
            &mut |i| store.put(&ring, &keys[i], &values[i % 64]).unwrap(),
            &mut |i| {
                let sealed = cipher.seal(&ring, &keys[i], &values[i % 64]).unwrap();
                keep(limit.insert(keys[i].as_slice(), sealed).unwrap());
            },
        ],
    );
    row("insert", r[0], r[1], r[2]);
    plain_db.flush().unwrap();
    limit_db.flush().unwrap();
    store.flush().unwrap();

    // Warm-up: every record read once on both sides, so the timed passes measure steady-state
    // reads, not sled loading pages (and, for large values, blob files) from disk.
    for k in &keys {
        keep(plain.get(k).unwrap());
        keep(limit.get(k).unwrap());
        keep(store.get(&ring, k).unwrap());
    }
    let reads: Vec<usize> = (0..n).map(|_| (g.next() % n as u64) as usize).collect();
    let r = interleaved(
        n,
        &mut [
            &mut |i| {
                keep(plain.get(keep(keys[reads[i]].as_slice())).unwrap().unwrap());
            },
            &mut |i| {
                keep(store.get(&ring, keep(&keys[reads[i]])).unwrap().unwrap());
            },
            &mut |i| {
                let k = keep(&keys[reads[i]]);
                let sealed = limit.get(k.as_slice()).unwrap().unwrap();
                keep(cipher.open(&ring, k, &sealed).unwrap());
            },
        ],
    );
    row("random get", r[0], r[1], r[2]);
    // Again, against what a caller that uses the value pays anyway: sled hands back a reference
    // to its cached bytes, which the plain get above never reads. A pass of its own (fresh
    // random read positions), so that two contenders never take turns warming one database.
    let reads: Vec<usize> = (0..n).map(|_| (g.next() % n as u64) as usize).collect();
    let r = interleaved(
        n,
        &mut [
            &mut |i| {
                let v = plain.get(keep(keys[reads[i]].as_slice())).unwrap().unwrap();
                keep(v.to_vec());
            },
            &mut |i| {
                keep(store.get(&ring, keep(&keys[reads[i]])).unwrap().unwrap());
            },
            &mut |i| {
                let k = keep(&keys[reads[i]]);
                let sealed = limit.get(k.as_slice()).unwrap().unwrap();
                keep(cipher.open(&ring, k, &sealed).unwrap());
            },
        ],
    );
    row(
        "random get, plain side copies the value out",
        r[0],
        r[1],
        r[2],
    );

    let before = store.backend_calls();
    for i in 0..100_000 {
        keep(store.get(&ring, &keys[reads[i % n]]).unwrap());
    }
    println!(
        "\nbackend calls per 100,000 reads after warm-up: {}",
        store.backend_calls() - before
    );
}

fn main() {
    let n: usize = std::env::var("STRONGROOM_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    run(1024, n);
    run(64, n);
    run(16 * 1024, (n / 20).max(CHUNK));
}
