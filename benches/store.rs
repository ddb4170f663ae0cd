//! Store benchmark: what sealing costs on top of the database. Plain sled `insert` against
//! `Store::put`, and plain sled `get` against `Store::get`, at 64 B, 1 KiB and 64 KiB values,
//! each pair in one interleaved run (read the ratios, not the absolute rates, on a shared
//! machine); then the backend calls `Store::get` makes per 1000 reads in steady state.
//!
//! Both sides run in a temporary directory with the same sled settings (a flush every 500 ms,
//! no `put_durable`), on the soft backend; puts cycle over a fixed set of keys, so the database
//! stays the same size, and gets read keys that exist.
//!
//! `cargo bench --bench store` (`STRONGROOM_BENCH_SECS` sets seconds per contender, default 2)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;

use strongroom::{Backend, KeyringName, RootKeyName, SoftBackend};
use strongroom_store::{Store, StoreOptions};
use strongroom_test_support::bench::{Contender, budget, compare, keep, print_table};

fn main() {
    let t = budget();
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

    for size in [64usize, 1024, 64 * 1024] {
        // Fewer keys for big values keep both databases at a few tens of MiB.
        let n = if size > 4096 { 256 } else { 4096 };
        let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("key-{i:06}").into_bytes()).collect();
        let value = vec![0xA5u8; size];
        for k in &keys {
            plain.insert(k.as_slice(), value.as_slice()).unwrap();
            store.put(&ring, k, &value).unwrap();
        }
        let (mut a, mut b) = (0usize, 0usize);
        let r = compare(
            vec![
                Contender::new(format!("sled insert {size} B"), || {
                    a = (a + 1) % n;
                    keep(
                        plain
                            .insert(keys[a].as_slice(), keep(value.as_slice()))
                            .unwrap(),
                    );
                }),
                Contender::new(format!("Store::put {size} B"), || {
                    b = (b + 1) % n;
                    store.put(&ring, &keys[b], keep(&value)).unwrap();
                }),
            ],
            t,
        );
        print_table(&format!("writes, {size}-byte values"), &r);
        let (mut a, mut b) = (0usize, 0usize);
        let r = compare(
            vec![
                Contender::new(format!("sled get {size} B"), || {
                    a = (a + 1) % n;
                    keep(plain.get(keep(keys[a].as_slice())).unwrap());
                }),
                Contender::new(format!("Store::get {size} B"), || {
                    b = (b + 1) % n;
                    keep(store.get(&ring, keep(&keys[b])).unwrap());
                }),
            ],
            t,
        );
        print_table(&format!("reads, {size}-byte values"), &r);
        plain_db.flush().unwrap();
        store.flush().unwrap();
    }

    // Steady state: the keyring's DEK is in the cache, so reads make no backend call. After a
    // purge, the first read has the backend unwrap the KEK once (the DEK is unwrapped under the
    // KEK in this process).
    let key = b"key-000001";
    let calls = |f: &dyn Fn()| {
        let before = store.backend_calls();
        f();
        store.backend_calls() - before
    };
    let steady = calls(&|| {
        for _ in 0..1000 {
            keep(store.get(&ring, key).unwrap());
        }
    });
    store.purge_key_cache();
    let cold = calls(&|| {
        for _ in 0..1000 {
            keep(store.get(&ring, key).unwrap());
        }
    });
    println!(
        "\nbackend calls per 1000 reads: {steady} in steady state; {cold} for the first 1000 after the key cache is purged"
    );
}
