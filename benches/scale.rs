//! The scale curve: a store of 10,000, 100,000 and 1,000,000 records of 1 KiB on sled (soft
//! backend, default options), each size in a child process of its own so that its peak memory
//! is its own. Per size: insert rate (puts, a flush every 10,000), size on disk, random-get
//! rate (100,000 gets, after one warm-up read of every record), time to close, the first open
//! after the writes (sled replays its log), an open again in the same process and in a fresh
//! one, the re-encryption rate after a DEK rotation, and the process's peak resident memory
//! (`VmHWM`).
//!
//! `cargo bench --bench scale` (`STRONGROOM_SCALE_SIZES=10000,100000` to choose sizes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
#![allow(clippy::cast_possible_truncation)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strongroom::{KeyringName, RootKeyName, SoftBackend};
use strongroom_store::{Store, StoreOptions};
use strongroom_test_support::bench::keep;

const CHILD: &str = "STRONGROOM_SCALE_CHILD";
const REOPEN: &str = "STRONGROOM_SCALE_REOPEN";

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn open(dir: &Path) -> Store {
    let backend = Arc::new(SoftBackend::open(dir).unwrap());
    Store::open(dir, backend, StoreOptions::default()).unwrap()
}

fn ring() -> KeyringName {
    KeyringName::new("scale").unwrap()
}

/// A fresh process opens the store in `dir` and reports how long that took.
fn reopen_child(dir: &Path) -> ! {
    let t = Instant::now();
    let s = open(dir);
    let took = t.elapsed();
    keep(s.get(&ring(), b"r000000000").unwrap());
    println!("OPEN {}", took.as_micros());
    std::process::exit(0);
}

fn child(n: usize) -> ! {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(SoftBackend::create(dir.path()).unwrap());
    let s = Store::create(
        dir.path(),
        backend,
        &RootKeyName::new("service").unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    s.create_keyring(&ring(), None).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let values: Vec<Vec<u8>> = (0..64)
        .map(|_| (0..1024).map(|_| next() as u8).collect())
        .collect();
    let key = |i: usize| format!("r{i:09}").into_bytes();
    let t = Instant::now();
    for i in 0..n {
        s.put(&ring(), &key(i), &values[i % 64]).unwrap();
        if i % 10_000 == 9_999 {
            s.flush().unwrap();
        }
    }
    s.flush().unwrap();
    let insert = n as f64 / t.elapsed().as_secs_f64();
    let disk = s.size_on_disk().unwrap();
    for i in 0..n {
        keep(s.get(&ring(), &key(i)).unwrap());
    }
    let gets = 100_000;
    let t = Instant::now();
    for _ in 0..gets {
        let i = (next() % n as u64) as usize;
        keep(s.get(&ring(), &key(i)).unwrap().unwrap());
    }
    let get = f64::from(gets) / t.elapsed().as_secs_f64();
    // Close, then reopen in this process: sled 0.34 writes its snapshot only when it opens
    // (its `snapshot_after_ops` does nothing), so this first open replays every write made
    // since the store was created.
    let t = Instant::now();
    drop(s);
    let close = t.elapsed();
    let t = Instant::now();
    let s = open(dir.path());
    let first_open = t.elapsed();
    keep(s.get(&ring(), &key(0)).unwrap());
    drop(s);
    // Open again, in a fresh process and then in this one: from the snapshot just written.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env(REOPEN, dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let fresh = text
        .lines()
        .find_map(|l| l.strip_prefix("OPEN "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_micros);
    let t = Instant::now();
    let s = open(dir.path());
    let reopen_here = t.elapsed();
    keep(s.get(&ring(), &key(0)).unwrap());
    // Re-encryption after a DEK rotation.
    s.rotate_dek(&ring()).unwrap();
    let t = Instant::now();
    let report = s.reencrypt(&ring(), &mut |_| {}).unwrap();
    let reencrypt = report.reencrypted as f64 / t.elapsed().as_secs_f64();
    let rss = peak_rss_mib();
    drop(s);
    println!(
        "ROW | {n} | {insert:.0} | {get:.0} | {} | {rss} | {:.3} | {:.3} | {:.3} | {:.3} | {reencrypt:.0} |",
        disk >> 20,
        close.as_secs_f64(),
        first_open.as_secs_f64(),
        reopen_here.as_secs_f64(),
        fresh.as_secs_f64()
    );
    std::process::exit(0);
}

fn main() {
    if let Some(dir) = std::env::var_os(REOPEN) {
        reopen_child(Path::new(&dir));
    }
    if let Some(n) = std::env::var(CHILD).ok().and_then(|v| v.parse().ok()) {
        child(n);
    }
    let sizes: Vec<usize> = std::env::var("STRONGROOM_SCALE_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);
    println!(
        "records of 1 KiB on sled, soft backend, default options ({})",
        strongroom::core::crypto::GCM_ENGINE
    );
    println!(
        "| records | insert/s | random get/s | size on disk MiB | peak RSS MiB | close s | first open s | open again s | open again, fresh process s | re-encryption/s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env(CHILD, n.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().find_map(|l| l.strip_prefix("ROW ")) {
            Some(row) => println!("{row}"),
            None => println!(
                "| {n} | failed: {} |",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ),
        }
    }
}
