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
        return limit_get(dir.path(), n, size, secs, false);
    }
    if op == "limit-get-prefixed" {
        return limit_get(dir.path(), n, size, secs, true);
    }
    if op == "cmp" {
        return cmp(dir.path(), n, size, secs);
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
    if op == "reopen" {
        // Close (drop) and open again in this process, each timed.
        let t = Instant::now();
        drop(store);
        let close = t.elapsed();
        let t = Instant::now();
        let backend = Arc::new(SoftBackend::open(dir.path()).unwrap());
        let mut store = Store::open(dir.path(), backend, StoreOptions::default()).unwrap();
        let open = t.elapsed();
        assert!(store.get(&ring, &key(0)).unwrap().is_some());
        println!("close: {close:?}, open: {open:?}");
        for _ in 0..2 {
            let t = Instant::now();
            drop(store);
            let close = t.elapsed();
            let t = Instant::now();
            let backend = Arc::new(SoftBackend::open(dir.path()).unwrap());
            store = Store::open(dir.path(), backend, StoreOptions::default()).unwrap();
            println!("again: close: {close:?}, open: {:?}", t.elapsed());
        }
        return;
    }
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
fn limit_get(dir: &std::path::Path, n: u64, size: usize, secs: u64, prefixed: bool) {
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
    // With `prefixed`, the tree key is the store's: the keyring id, then the record key.
    let tk = |k: &[u8]| {
        if prefixed {
            [&1u64.to_be_bytes()[..], k].concat()
        } else {
            k.to_vec()
        }
    };
    let fill = Instant::now();
    for i in 0..n {
        let k = key(i);
        tree.insert(tk(&k), cipher.seal(&ring, &k, &value).unwrap())
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
            let sealed = tree.get(tk(&k)).unwrap().unwrap();
            assert_eq!(cipher.open(&ring, &k, &sealed).unwrap().len(), size);
            ops += 1;
        }
    }
    println!(
        "limit-get: {:.0}/s",
        ops as f64 / started.elapsed().as_secs_f64()
    );
}

/// `cmp N SIZE ROUNDS`: gets from strongroom, the limit, and the limit with the store's tree
/// keys (keyring id, then record key), in interleaved chunks of 2,000 with the first rotating.
fn cmp(dir: &std::path::Path, n: u64, size: usize, rounds: u64) {
    let backend = Arc::new(SoftBackend::create(dir).unwrap());
    let store = Store::create(
        dir,
        backend,
        &RootKeyName::new("root").unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    let ring = KeyringName::new("ring").unwrap();
    store.create_keyring(&ring, None).unwrap();
    let open = |name: &str| {
        sled::Config::new()
            .path(dir.join(name))
            .flush_every_ms(Some(500))
            .open()
            .unwrap()
            .open_tree("records")
            .unwrap()
    };
    let (plain, prefixed) = (open("limit"), open("limit-prefixed"));
    let cipher = strongroom_core::record::RecordCipher::new(
        strongroom_core::DekVersion::FIRST,
        &strongroom_core::Key256::generate().unwrap(),
    );
    let value = vec![7u8; size];
    let key = |i: u64| format!("record-{i:012}").into_bytes();
    // The prefix of the store's tree keys (8 bytes, the keyring id); `HOT_PATH_PREFIX=n` keeps
    // only its last n bytes, to see what the prefix's length costs sled.
    let keep: usize = std::env::var("HOT_PATH_PREFIX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let pre = |k: &[u8]| [&1u64.to_be_bytes()[8 - keep.min(8)..], k].concat();
    // Puts, interleaved the same way.
    let puts: [&dyn Fn(u64); 3] = [
        &|i| store.put(&ring, &key(i), &value).unwrap(),
        &|i| {
            let k = key(i);
            plain
                .insert(&k, cipher.seal(&ring, &k, &value).unwrap())
                .unwrap();
        },
        &|i| {
            let k = key(i);
            prefixed
                .insert(pre(&k), cipher.seal(&ring, &k, &value).unwrap())
                .unwrap();
        },
    ];
    let mut spent = [Duration::ZERO; 3];
    for (c, start) in (0..n).step_by(2000).enumerate() {
        for j in 0..3 {
            let who = (c + j) % 3;
            let t = Instant::now();
            for i in start..(start + 2000).min(n) {
                puts[who](i);
            }
            spent[who] += t.elapsed();
        }
    }
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let (s, l, p) = (rate(spent[0]), rate(spent[1]), rate(spent[2]));
    println!(
        "puts: strongroom {s:.0}/s, limit {l:.0}/s ({:.3}), limit with the store's keys {p:.0}/s ({:.3})",
        s / l,
        s / p
    );
    let ops: [&dyn Fn(u64); 3] = [
        &|i| assert_eq!(store.get(&ring, &key(i)).unwrap().unwrap().len(), size),
        &|i| {
            let k = key(i);
            let s = plain.get(&k).unwrap().unwrap();
            assert_eq!(cipher.open(&ring, &k, &s).unwrap().len(), size);
        },
        &|i| {
            let k = key(i);
            let s = prefixed.get(pre(&k)).unwrap().unwrap();
            assert_eq!(cipher.open(&ring, &k, &s).unwrap().len(), size);
        },
    ];
    let mut spent = [Duration::ZERO; 3];
    let mut c = 0;
    for _ in 0..rounds {
        for start in (0..n).step_by(2000) {
            for j in 0..3 {
                let who = (c + j) % 3;
                let t = Instant::now();
                for i in start..(start + 2000).min(n) {
                    ops[who](i);
                }
                spent[who] += t.elapsed();
            }
            c += 1;
        }
    }
    let rate = |d: Duration| (n * rounds) as f64 / d.as_secs_f64();
    let (s, l, p) = (rate(spent[0]), rate(spent[1]), rate(spent[2]));
    println!(
        "strongroom {s:.0}/s, limit {l:.0}/s ({:.3}), limit with the store's keys {p:.0}/s ({:.3})",
        s / l,
        s / p
    );
}
