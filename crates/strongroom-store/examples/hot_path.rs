//! A steady loop of gets (or puts) on one keyring, for profiling the hot path with `perf`:
//! `cargo build --release --example hot_path -p strongroom-store` then
//! `perf record -g target/release/examples/hot_path get 200000 1024 10`.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::expect_used
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use strongroom_core::soft::SoftBackend;
use strongroom_core::{KeyringName, RootKeyName};
use strongroom_store::{Store, StoreOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let op = args.get(1).map_or("get", String::as_str).to_owned();
    let n: u64 = args.get(2).map_or(200_000, |s| s.parse().unwrap());
    let size: usize = args.get(3).map_or(1024, |s| s.parse().unwrap());
    let secs: u64 = args.get(4).map_or(10, |s| s.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    if op == "limit-get" {
        return limit_get(dir.path(), n, size, secs);
    }
    let backend = Arc::new(SoftBackend::create(dir.path()).unwrap());
    let store = Store::create(
        dir.path(),
        backend,
        &RootKeyName::new("root").unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    let ring = KeyringName::new("ring").unwrap();
    store.create_keyring(&ring, None).unwrap();
    let value = vec![7u8; size];
    let key = |i: u64| format!("record-{i:012}").into_bytes();
    let fill = Instant::now();
    for i in 0..n {
        store.put(&ring, &key(i), &value).unwrap();
    }
    println!("insert: {:.0}/s", n as f64 / fill.elapsed().as_secs_f64());
    let started = Instant::now();
    let mut ops = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        for _ in 0..10_000 {
            let i = ops % n;
            if op == "get" {
                assert_eq!(store.get(&ring, &key(i)).unwrap().unwrap().len(), size);
            } else {
                store.put(&ring, &key(i), &value).unwrap();
            }
            ops += 1;
        }
    }
    println!(
        "{op}: {:.0}/s",
        ops as f64 / started.elapsed().as_secs_f64()
    );
}

/// Plain sled plus the record cipher alone: what a store with no overhead would reach.
fn limit_get(dir: &std::path::Path, n: u64, size: usize, secs: u64) {
    let tree = sled::Config::new()
        .path(dir.join("limit"))
        .flush_every_ms(Some(500))
        .open()
        .unwrap()
        .open_tree("records")
        .unwrap();
    let cipher = strongroom_core::record::RecordCipher::new(
        strongroom_core::DekVersion::FIRST,
        &strongroom_core::Key256::generate().unwrap(),
    );
    let ring = KeyringName::new("ring").unwrap();
    let value = vec![7u8; size];
    let key = |i: u64| format!("record-{i:012}").into_bytes();
    let fill = Instant::now();
    for i in 0..n {
        let k = key(i);
        tree.insert(&k, cipher.seal(&ring, &k, &value).unwrap())
            .unwrap();
    }
    println!(
        "limit-insert: {:.0}/s",
        n as f64 / fill.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let mut ops = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        for _ in 0..10_000 {
            let k = key(ops % n);
            let sealed = tree.get(&k).unwrap().unwrap();
            assert_eq!(cipher.open(&ring, &k, &sealed).unwrap().len(), size);
            ops += 1;
        }
    }
    println!(
        "limit-get: {:.0}/s",
        ops as f64 / started.elapsed().as_secs_f64()
    );
}
