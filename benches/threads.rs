//! Random gets from 1 and 2 threads on one store: does the read path scale, or does a lock
//! hold it to one core? Three contenders on the same data, as in `benches/store.rs`: plain
//! sled, the limit (plain sled plus the record cipher alone), and strongroom; each measured
//! with 1 then 2 threads, in alternating order, twice. The machines here have 2 cores, so
//! perfect scaling is 2.0 (less whatever else runs).
//!
//! `cargo bench --bench threads` (`STRONGROOM_BENCH_RECORDS`, default 200,000 x 1 KiB).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
#![allow(clippy::cast_possible_truncation)]

use std::sync::Arc;
use std::time::Instant;

use strongroom::core::record::RecordCipher;
use strongroom::{DekVersion, Key256, KeyringName, RootKeyName, SoftBackend};
use strongroom_store::{Store, StoreOptions};
use strongroom_test_support::bench::keep;

struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Gets per second with `threads` threads, each doing `per_thread` random gets.
fn rate(threads: usize, per_thread: usize, n: usize, get: &(dyn Fn(usize) + Sync)) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..threads {
            s.spawn(move || {
                let mut g = Gen(0x9E37_79B9 ^ ((th as u64 + 1) * 0x1000_0001));
                for _ in 0..per_thread {
                    get((g.next() % n as u64) as usize);
                }
            });
        }
    });
    (threads * per_thread) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let n: usize = std::env::var("STRONGROOM_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    // sled's page cache, the same for all three (`STRONGROOM_BENCH_SLED_CACHE_MIB`; default the
    // store's default).
    let cache: u64 = std::env::var("STRONGROOM_BENCH_SLED_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(strongroom_store::SledEngine::DEFAULT_CACHE_BYTES, |m| {
            m << 20
        });
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(SoftBackend::create(dir.path()).unwrap());
    let store = Store::create(
        dir.path(),
        backend,
        &RootKeyName::new("service").unwrap(),
        StoreOptions {
            sled_cache_bytes: cache,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let ring = KeyringName::new("bench").unwrap();
    store.create_keyring(&ring, None).unwrap();
    let plain_db = sled::Config::new()
        .path(dir.path().join("plain"))
        .cache_capacity(cache)
        .open()
        .unwrap();
    let plain = plain_db.open_tree("records").unwrap();
    let limit_db = sled::Config::new()
        .path(dir.path().join("limit"))
        .cache_capacity(cache)
        .open()
        .unwrap();
    let limit = limit_db.open_tree("records").unwrap();
    let cipher = RecordCipher::new(DekVersion::FIRST, &Key256::generate().unwrap());
    let mut g = Gen(0x5DEE_CE66);
    let values: Vec<Vec<u8>> = (0..64)
        .map(|_| (0..1024).map(|_| g.next() as u8).collect())
        .collect();
    let keys: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("record-{i:09}").into_bytes())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        plain
            .insert(k.as_slice(), values[i % 64].as_slice())
            .unwrap();
        limit
            .insert(
                k.as_slice(),
                cipher.seal(&ring, k, &values[i % 64]).unwrap(),
            )
            .unwrap();
        store.put(&ring, k, &values[i % 64]).unwrap();
    }
    // Warm: every record read once everywhere.
    for k in &keys {
        keep(plain.get(k).unwrap());
        keep(limit.get(k).unwrap());
        keep(store.get(&ring, k).unwrap());
    }
    let per = (n * 2).max(100_000);
    let contenders: [(&str, &(dyn Fn(usize) + Sync)); 3] = [
        ("plain sled", &|i| {
            keep(plain.get(keys[i].as_slice()).unwrap().unwrap());
        }),
        ("limit (plain + cipher)", &|i| {
            let sealed = limit.get(keys[i].as_slice()).unwrap().unwrap();
            keep(cipher.open(&ring, &keys[i], &sealed).unwrap());
        }),
        ("strongroom", &|i| {
            keep(store.get(&ring, &keys[i]).unwrap().unwrap());
        }),
    ];
    println!(
        "random gets of {n} x 1 KiB records ({}), {per} gets per thread and run, sled cache {} MiB",
        strongroom::core::crypto::GCM_ENGINE,
        cache >> 20
    );
    println!("| contender | 1 thread/s | 2 threads/s | scaling (2 threads / 1) |");
    println!("|---|---:|---:|---:|");
    for (name, get) in contenders {
        let mut one = 0.0f64;
        let mut two = 0.0f64;
        for round in 0..2 {
            if round % 2 == 0 {
                one += rate(1, per, n, get);
                two += rate(2, per / 2, n, get);
            } else {
                two += rate(2, per / 2, n, get);
                one += rate(1, per, n, get);
            }
        }
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} |",
            one / 2.0,
            two / 2.0,
            two / one
        );
    }
}
