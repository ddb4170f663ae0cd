//! What keeping promises on disk costs: compaction after a destruction, and data-access
//! auditing.
//!
//! 1. **Compaction.** A store of N records of 1 KiB (default 200,000) in one keyring and N/10
//!    in another; the second is destroyed (which purges its records and compacts: every live
//!    entry copied into a new database generation, the old files overwritten and removed), and
//!    then the store is compacted once more on its own. Against the limit of the approach,
//!    measured on the same machine in the same run: copying the same live entries from one
//!    plain sled database into a fresh one, and flushing it.
//! 2. **Data-access auditing.** Two stores, one auditing every record read and write (each put
//!    commits with its audit entry in one transaction), the other not: puts and random gets of
//!    1 KiB, interleaved in chunks of 1,000, and the ratio audited / unaudited.
//!
//! `cargo bench --bench shred` (`STRONGROOM_BENCH_RECORDS` sets N).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strongroom::{Backend, KeyringName, RootKeyName, SoftBackend};
use strongroom_store::{Store, StoreOptions};
use strongroom_test_support::bench::keep;

const CHUNK: usize = 1000;

struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn store(dir: &Path, options: StoreOptions) -> Store {
    std::fs::create_dir_all(dir).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(SoftBackend::create(dir).unwrap());
    Store::create(dir, backend, &RootKeyName::new("bench").unwrap(), options).unwrap()
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dir_size(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn compaction(n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(&tmp.path().join("store"), StoreOptions::default());
    let (bulk, gone) = (
        KeyringName::new("bulk").unwrap(),
        KeyringName::new("gone").unwrap(),
    );
    s.create_keyring(&bulk, None).unwrap();
    s.create_keyring(&gone, None).unwrap();
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    let values: Vec<Vec<u8>> = (0..64)
        .map(|_| (0..1024).map(|_| g.next() as u8).collect())
        .collect();
    for i in 0..n {
        s.put(&bulk, format!("user/{i:08}").as_bytes(), &values[i % 64])
            .unwrap();
    }
    for i in 0..n / 10 {
        s.put(&gone, format!("user/{i:08}").as_bytes(), &values[i % 64])
            .unwrap();
    }
    s.flush().unwrap();
    let before = dir_size(&tmp.path().join("store"));

    let t = Instant::now();
    let d = s.destroy_keyring_now(&gone).unwrap();
    let destroy = t.elapsed();
    assert_eq!(d.records as usize, n / 10);
    let r = s.compact().unwrap();
    let after = dir_size(&tmp.path().join("store"));

    // The limit: the same live entries copied from plain sled into a fresh plain sled.
    let src = sled::open(tmp.path().join("plain-src")).unwrap();
    let src_tree = src.open_tree("records").unwrap();
    for i in 0..n {
        src_tree
            .insert(format!("user/{i:08}"), values[i % 64].as_slice())
            .unwrap();
    }
    src.flush().unwrap();
    let t = Instant::now();
    let dst = sled::open(tmp.path().join("plain-dst")).unwrap();
    let dst_tree = dst.open_tree("records").unwrap();
    let mut batch = sled::Batch::default();
    for (k, item) in src_tree.iter().enumerate() {
        let (key, v) = item.unwrap();
        batch.insert(key, v);
        if k % 4096 == 4095 {
            dst_tree.apply_batch(std::mem::take(&mut batch)).unwrap();
        }
    }
    dst_tree.apply_batch(batch).unwrap();
    dst.flush().unwrap();
    let plain_copy = t.elapsed();

    println!(
        "\n### compaction: {n} live records of 1 KiB, {} destroyed\n",
        n / 10
    );
    println!("| step | seconds | MiB/s of live data |");
    println!("|---|---:|---:|");
    let live_mib = mib(after);
    println!(
        "| destroy a keyring of {} records (purge + compaction) | {:.2} | |",
        n / 10,
        destroy.as_secs_f64()
    );
    println!(
        "| compaction alone ({} entries, {:.0} MiB of old files shredded) | {:.2} | {:.0} |",
        r.entries,
        mib(r.shredded_bytes),
        r.elapsed.as_secs_f64(),
        live_mib / r.elapsed.as_secs_f64()
    );
    println!(
        "| limit: plain sled copy of the same entries into a fresh database | {:.2} | {:.0} |",
        plain_copy.as_secs_f64(),
        live_mib / plain_copy.as_secs_f64()
    );
    println!(
        "\nstore on disk: {:.0} MiB before, {:.0} MiB after; compaction / plain copy = {:.2}x the time",
        mib(before),
        mib(after),
        r.elapsed.as_secs_f64() / plain_copy.as_secs_f64()
    );
}

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

fn auditing(n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let off = store(&tmp.path().join("off"), StoreOptions::default());
    let on = store(
        &tmp.path().join("on"),
        StoreOptions {
            audit_data_access: true,
            ..StoreOptions::default()
        },
    );
    let ring = KeyringName::new("bench").unwrap();
    off.create_keyring(&ring, None).unwrap();
    on.create_keyring(&ring, None).unwrap();
    let mut g = Gen(0x2545_F491_4F6C_DD1D);
    let values: Vec<Vec<u8>> = (0..64)
        .map(|_| (0..1024).map(|_| g.next() as u8).collect())
        .collect();
    let keys: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("user/{i:08}").into_bytes())
        .collect();
    println!("\n### data-access auditing: {n} records of 1 KiB, one thread\n");
    println!("| op | not audited/s | audited/s | audited / not |");
    println!("|---|---:|---:|---:|");
    let r = interleaved(
        n,
        &mut [
            &mut |i| off.put(&ring, &keys[i], &values[i % 64]).unwrap(),
            &mut |i| on.put(&ring, &keys[i], &values[i % 64]).unwrap(),
        ],
    );
    println!("| put | {:.0} | {:.0} | {:.2} |", r[0], r[1], r[1] / r[0]);
    let reads: Vec<usize> = (0..n).map(|_| (g.next() % n as u64) as usize).collect();
    let r = interleaved(
        n,
        &mut [
            &mut |i| {
                keep(off.get(&ring, &keys[reads[i]]).unwrap().unwrap());
            },
            &mut |i| {
                keep(on.get(&ring, &keys[reads[i]]).unwrap().unwrap());
            },
        ],
    );
    println!(
        "| random get | {:.0} | {:.0} | {:.2} |",
        r[0],
        r[1],
        r[1] / r[0]
    );
    assert!(on.verify_audit().unwrap().is_ok());
}

fn main() {
    let n: usize = std::env::var("STRONGROOM_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    compaction(n);
    auditing((n / 4).max(CHUNK));
}
