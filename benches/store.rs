//! Store benchmark: what sealing costs on top of the database, the way a service uses it.
//!
//! For each value size, in one run: N records inserted into plain sled and into the store
//! (soft backend), then N random gets from each, then the backend calls the store makes per
//! 100,000 reads once warm. Both sides run interleaved in chunks of 1,000 operations, the order
//! alternating from chunk to chunk, so a burst of outside load hits both alike: read the ratios,
//! not the absolute rates, on a shared machine.
//!
//! Fair by construction: both databases use the same sled settings (a flush every 500 ms, no
//! `put_durable`), both get the same keys in the same order, and every insert writes a new key
//! with one of 64 distinct random values (sled skips a write whose value equals the stored one,
//! so rewriting one constant value would measure nothing on the plain side).
//!
//! `cargo bench --bench store` (`STRONGROOM_BENCH_RECORDS` sets N for 1 KiB values, default
//! 200,000; the 64 B run uses the same N and the 16 KiB run N / 20).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
// Casts below only turn generator output into bytes and indices: truncation is intended.
#![allow(clippy::cast_possible_truncation)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use strongroom::{Backend, KeyringName, RootKeyName, SoftBackend};
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

/// Runs `plain` and `store` over `0..n` in interleaved chunks; returns their rates (ops/s).
fn interleaved(n: usize, mut plain: impl FnMut(usize), mut store: impl FnMut(usize)) -> (f64, f64) {
    let (mut tp, mut ts) = (Duration::ZERO, Duration::ZERO);
    for (c, start) in (0..n).step_by(CHUNK).enumerate() {
        let end = (start + CHUNK).min(n);
        let mut run_plain = || {
            let t = Instant::now();
            for i in start..end {
                plain(i);
            }
            tp += t.elapsed();
        };
        if c % 2 == 0 {
            run_plain();
            let t = Instant::now();
            for i in start..end {
                store(i);
            }
            ts += t.elapsed();
        } else {
            let t = Instant::now();
            for i in start..end {
                store(i);
            }
            ts += t.elapsed();
            run_plain();
        }
    }
    (n as f64 / tp.as_secs_f64(), n as f64 / ts.as_secs_f64())
}

fn row(op: &str, (plain, store): (f64, f64)) {
    println!("| {op} | {plain:.0} | {store:.0} | {:.2} |", store / plain);
}

fn run(size: usize, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let plain_db = sled::Config::new()
        .path(dir.path().join("plain"))
        .flush_every_ms(Some(500))
        .open()
        .unwrap();
    let plain = plain_db.open_tree("records").unwrap();
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

    println!("\n### {n} records of {size} B\n");
    println!("| op | plain sled/s | strongroom/s | strongroom / plain |");
    println!("|---|---:|---:|---:|");
    let inserts = interleaved(
        n,
        |i| {
            keep(
                plain
                    .insert(keys[i].as_slice(), values[i % 64].as_slice())
                    .unwrap(),
            );
        },
        |i| store.put(&ring, &keys[i], &values[i % 64]).unwrap(),
    );
    row("insert", inserts);
    plain_db.flush().unwrap();
    store.flush().unwrap();

    let reads: Vec<usize> = (0..n).map(|_| (g.next() % n as u64) as usize).collect();
    let gets = interleaved(
        n,
        |i| {
            keep(plain.get(keep(keys[reads[i]].as_slice())).unwrap().unwrap());
        },
        |i| {
            keep(store.get(&ring, keep(&keys[reads[i]])).unwrap().unwrap());
        },
    );
    row("random get", gets);

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
