//! Batches against single puts, the way a service writes in bulk: chunks of `BATCH` records of
//! 1 KiB either as `BATCH` calls to `put` then one `flush`, or as one `write_batch` (borrowed
//! keys and values) then one `flush`, or as one `batch` of owned operations (each value copied
//! into one first) then one `flush`; interleaved chunk by chunk (the order rotating), each into
//! its own store, so all see the same machine. A batch should be the fastest way in: it amortizes the locks, the DEK counter
//! reservations and the commit.
//!
//! Two more contenders show what sled itself does with the same shape of work: plain sled
//! inserts of values of the sealed size then a flush, and a plain sled `Batch` of them then a
//! flush: whatever a strongroom batch loses beyond sled's own batch is strongroom's.
//!
//! `cargo bench --bench batch` (`STRONGROOM_BENCH_RECORDS`, default 200,000).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
#![allow(clippy::cast_possible_truncation)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use strongroom::{KeyringName, RootKeyName, SoftBackend};
use strongroom_store::{BatchOp, Store, StoreOptions, Write};

const BATCH: usize = 1000;

fn store(dir: &std::path::Path) -> Store {
    let backend = Arc::new(SoftBackend::create(dir).unwrap());
    let s = Store::create(
        dir,
        backend,
        &RootKeyName::new("service").unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    s.create_keyring(&KeyringName::new("bulk").unwrap(), None)
        .unwrap();
    s
}

fn main() {
    let n: usize = std::env::var("STRONGROOM_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let (da, db, de) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (singles, batches, owned) = (store(da.path()), store(db.path()), store(de.path()));
    let (dc, dd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let plain = |d: &std::path::Path| {
        sled::Config::new()
            .path(d)
            .flush_every_ms(Some(500))
            .open()
            .unwrap()
    };
    let (plain_singles, plain_batches) = (plain(dc.path()), plain(dd.path()));
    let (ts, tb) = (
        plain_singles.open_tree("records").unwrap(),
        plain_batches.open_tree("records").unwrap(),
    );
    let ring = KeyringName::new("bulk").unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let values: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            (0..1024)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect();
    let key = |i: usize| format!("record-{i:09}").into_bytes();
    // Sealed-size values for the plain contenders (1 KiB + header + tag).
    let sealed_size: Vec<Vec<u8>> = values
        .iter()
        .map(|v| {
            let mut s = v.clone();
            s.resize(1024 + 33, 0);
            s
        })
        .collect();
    let mut spent = [Duration::ZERO; 5];
    for (c, start) in (0..n).step_by(BATCH).enumerate() {
        let end = (start + BATCH).min(n);
        for j in 0..5 {
            let who = (c + j) % 5;
            let t = Instant::now();
            match who {
                0 => {
                    for i in start..end {
                        singles.put(&ring, &key(i), &values[i % 64]).unwrap();
                    }
                    singles.flush().unwrap();
                }
                1 => {
                    // The caller's keys and values, borrowed: what the puts get.
                    let keys: Vec<Vec<u8>> = (start..end).map(key).collect();
                    let ops: Vec<Write<'_>> = keys
                        .iter()
                        .zip(start..end)
                        .map(|(k, i)| Write::Put(k, &values[i % 64]))
                        .collect();
                    batches.write_batch(&ring, &ops).unwrap();
                    batches.flush().unwrap();
                }
                4 => {
                    // `batch` takes owned operations: each value copied into one first.
                    let ops: Vec<BatchOp> = (start..end)
                        .map(|i| BatchOp::Put(key(i), values[i % 64].clone()))
                        .collect();
                    owned.batch(&ring, &ops).unwrap();
                    owned.flush().unwrap();
                }
                2 => {
                    for i in start..end {
                        ts.insert(key(i), sealed_size[i % 64].as_slice()).unwrap();
                    }
                    plain_singles.flush().unwrap();
                }
                3 => {
                    let mut b = sled::Batch::default();
                    for i in start..end {
                        b.insert(key(i), sealed_size[i % 64].as_slice());
                    }
                    tb.apply_batch(b).unwrap();
                    plain_batches.flush().unwrap();
                }
                _ => unreachable!(),
            }
            spent[who] += t.elapsed();
        }
    }
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "{n} x 1 KiB in chunks of {BATCH} ({}), each then flushed:",
        strongroom::core::crypto::GCM_ENGINE
    );
    println!("| | one by one/s | as a batch/s | batch / one by one |");
    println!("|---|---:|---:|---:|");
    println!(
        "| strongroom (put, write_batch) | {:.0} | {:.0} | {:.2} |",
        rate(spent[0]),
        rate(spent[1]),
        spent[0].as_secs_f64() / spent[1].as_secs_f64()
    );
    println!(
        "| strongroom (put, batch of owned ops) | {:.0} | {:.0} | {:.2} |",
        rate(spent[0]),
        rate(spent[4]),
        spent[0].as_secs_f64() / spent[4].as_secs_f64()
    );
    println!(
        "| plain sled (insert, Batch) | {:.0} | {:.0} | {:.2} |",
        rate(spent[2]),
        rate(spent[3]),
        spent[2].as_secs_f64() / spent[3].as_secs_f64()
    );
}
