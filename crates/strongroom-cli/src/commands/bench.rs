//! `strongroom bench`: plain sled, the limit (plain sled plus the record cipher alone) and
//! strongroom, measured in the same run.
//!
//! All three run in one temporary directory on the embedded soft backend, taking turns in
//! chunks of 2,000 operations with the first one rotating, so that load from elsewhere on the
//! machine hits them alike; the ratios are what to read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use strongroom_core::{
    Backend, Key256, KeyringName, RootKeyId, RootKeyName, RootVersion, SoftBackend,
};
use strongroom_store::{Store, StoreOptions};

use crate::cli::BenchArgs;
use crate::common::{record_cipher, temp_dir};
use crate::context::Context;
use crate::error::CliError;

/// Operations per contender per turn: the contenders take turns over the same keys in chunks
/// of this size, the one that goes first rotating from chunk to chunk, so that all three see
/// the same machine (a burst of load elsewhere falls on all of them, and none always runs on
/// the caches another just filled).
const CHUNK: u64 = 2_000;

/// `bench --json`.
#[derive(Serialize)]
struct BenchJson {
    records: u64,
    value_size: usize,
    threads: usize,
    aead: &'static str,
    ops: Vec<OpJson>,
    backend_wrap_per_sec: f64,
    backend_unwrap_per_sec: f64,
    backend_calls_per_1000_reads: u64,
}

/// One operation's rates in `bench --json`.
#[derive(Serialize)]
struct OpJson {
    op: &'static str,
    plain_per_sec: f64,
    strongroom_per_sec: f64,
    ratio: f64,
    /// Plain sled plus the record cipher alone: a store with no overhead of its own.
    limit_per_sec: f64,
    /// strongroom over the limit: what the store adds beyond the database and the cipher.
    ratio_to_limit: f64,
}

fn other(e: impl std::fmt::Display) -> CliError {
    CliError::Other(format!("bench: {e}"))
}

/// Runs `op(i)` for `i` in `range`, split over `threads`; returns the time taken.
fn timed(
    threads: usize,
    range: std::ops::Range<u64>,
    op: &(dyn Fn(u64) -> Result<(), String> + Sync),
) -> Result<Duration, CliError> {
    let start = Instant::now();
    if threads <= 1 {
        range.clone().try_for_each(op).map_err(other)?;
        return Ok(start.elapsed());
    }
    let n = range.end - range.start;
    let t = threads as u64;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..t)
            .map(|k| {
                let lo = range.start + n * k / t;
                let hi = range.start + n * (k + 1) / t;
                s.spawn(move || (lo..hi).try_for_each(op))
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "a bench thread panicked".to_owned())?)
    })
    .map_err(other)?;
    Ok(start.elapsed())
}

/// A well-mixed 64-bit function of `x` (SplitMix64's finalizer): the random read order.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs `ops` over `0..n` in turns of [`CHUNK`] (see there); returns each one's total time.
fn interleaved<const K: usize>(
    threads: usize,
    n: u64,
    ops: [&(dyn Fn(u64) -> Result<(), String> + Sync); K],
) -> Result<[Duration; K], CliError> {
    let mut spent = [Duration::ZERO; K];
    let starts = (0..n.div_ceil(CHUNK)).map(|c| c * CHUNK);
    for (c, start) in starts.enumerate() {
        let range = start..(start + CHUNK).min(n);
        for j in 0..K {
            let who = (c + j) % K;
            spent[who] += timed(threads, range.clone(), ops[who])?;
        }
    }
    Ok(spent)
}

fn rate(ops: u64, d: Duration) -> f64 {
    ops as f64 / d.as_secs_f64().max(1e-9)
}

/// `bench --storage postgres --json`.
#[derive(Serialize)]
struct PgBenchJson {
    storage: &'static str,
    records: u64,
    value_size: usize,
    aead: &'static str,
    ops: Vec<PgOpJson>,
}

/// One operation at one thread count in `bench --storage postgres --json`.
#[derive(Serialize)]
struct PgOpJson {
    op: &'static str,
    threads: usize,
    plain_per_sec: f64,
    strongroom_per_sec: f64,
    ratio: f64,
    /// Gets only: the engine's raw get of the same sealed row (no opening).
    engine_only_per_sec: Option<f64>,
}

fn run_postgres(ctx: &Context<'_>, a: &BenchArgs) -> Result<(), CliError> {
    let config = match (&a.pg_url_env, &a.pg_url_file) {
        (Some(v), _) => strongroom_postgres::PgConfig::from_env(v),
        (None, Some(f)) => strongroom_postgres::PgConfig::from_file(f),
        (None, None) => {
            return Err(CliError::Usage(
                "bench --storage postgres needs the database: --pg-url-env VAR or --pg-url-file FILE".into(),
            ));
        }
    }
    .map_err(|e| CliError::Usage(e.to_string()))?;
    let dir = temp_dir()?;
    let pb = ctx
        .out
        .progress("measuring (interleaved: plain table, strongroom)");
    let spec = strongroom_postgres::bench::PgBenchSpec {
        records: usize::try_from(a.records).unwrap_or(usize::MAX),
        value_size: a.value_size,
        threads: vec![1, 4],
    };
    let rows = strongroom_postgres::bench::run(&config, &dir, &spec);
    pb.finish_and_clear();
    let _ = std::fs::remove_dir_all(&dir);
    let rows = rows?;
    ctx.out.result(
        || {
            let mut t = format!(
                "PostgreSQL ({}): {} records of {} bytes per phase, {}\n{:<12} {:>8} {:>14} {:>14} {:>8} {:>14}\n",
                config.location(),
                a.records,
                a.value_size,
                record_cipher(),
                "op",
                "threads",
                "plain/s",
                "strongroom/s",
                "ratio",
                "engine only/s"
            );
            for r in &rows {
                t.push_str(&format!(
                    "{:<12} {:>8} {:>14.0} {:>14.0} {:>8.2} {:>14}\n",
                    r.op,
                    r.threads,
                    r.plain,
                    r.strongroom,
                    r.ratio,
                    r.engine_only.map_or("-".to_owned(), |e| format!("{e:.0}"))
                ));
            }
            t.trim_end().to_owned()
        },
        || PgBenchJson {
            storage: "postgres",
            records: a.records,
            value_size: a.value_size,
            aead: strongroom_core::crypto::GCM_ENGINE,
            ops: rows
                .iter()
                .map(|r| PgOpJson {
                    op: r.op,
                    threads: r.threads,
                    plain_per_sec: r.plain,
                    strongroom_per_sec: r.strongroom,
                    ratio: r.ratio,
                    engine_only_per_sec: r.engine_only,
                })
                .collect(),
        },
    )?;
    Ok(())
}

pub fn run(ctx: &Context<'_>, a: &BenchArgs) -> Result<(), CliError> {
    if let Some(n) = a.replicas {
        return super::bench_fleet::run(ctx, a, usize::from(n));
    }
    if a.storage == crate::cli::StorageKind::Postgres {
        return run_postgres(ctx, a);
    }
    if a.pg_url_env.is_some() || a.pg_url_file.is_some() {
        return Err(CliError::Usage(
            "--pg-url-env and --pg-url-file apply to bench --storage postgres".into(),
        ));
    }
    let out = ctx.out;
    let dir = temp_dir()?;
    let plain = sled::Config::new()
        .path(dir.join("plain"))
        .flush_every_ms(Some(500))
        .open()
        .map_err(other)?
        .open_tree("records")
        .map_err(other)?;
    // The limit: plain sled plus the record cipher alone (a put seals and inserts, a get reads
    // the sealed value and opens it), in a database of its own: what a store with no overhead
    // of its own would reach.
    let limit = sled::Config::new()
        .path(dir.join("limit"))
        .flush_every_ms(Some(500))
        .open()
        .map_err(other)?
        .open_tree("records")
        .map_err(other)?;
    let cipher = strongroom_core::record::RecordCipher::new(
        strongroom_core::DekVersion::FIRST,
        &Key256::generate().map_err(other)?,
    );
    let soft: Arc<dyn Backend> = Arc::new(SoftBackend::create(&dir).map_err(other)?);
    let store = Store::create(
        &dir,
        Arc::clone(&soft),
        &RootKeyName::new("bench").map_err(other)?,
        StoreOptions::default(),
    )
    .map_err(other)?;
    let ring = KeyringName::new("bench").map_err(other)?;
    store.create_keyring(&ring, None).map_err(other)?;
    let value: Vec<u8> = (0..a.value_size)
        .map(|i| u8::try_from(i * 31 % 251).unwrap_or(0))
        .collect();
    let key = |i: u64| format!("record-{i:012}").into_bytes();
    let n = a.records.max(1);

    let limit_ring = ring.clone();
    let plain_put = |i: u64| {
        plain
            .insert(key(i), value.as_slice())
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let sr_put = |i: u64| store.put(&ring, &key(i), &value).map_err(|e| e.to_string());
    let limit_put = |i: u64| {
        let k = key(i);
        let sealed = cipher
            .seal(&limit_ring, &k, &value)
            .map_err(|e| e.to_string())?;
        limit
            .insert(k, sealed)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let [plain_put, sr_put, limit_put] =
        interleaved(a.threads, n, [&plain_put, &sr_put, &limit_put])?;
    // Gets read the records in a random order (the same for all three), as a service does and
    // as `benches/store.rs` does: in key order, every contender would read from the CPU's
    // caches what the previous read brought in.
    let pick = |i: u64| splitmix64(i) % n;
    let plain_get = |i: u64| match plain.get(key(pick(i))) {
        Ok(Some(v)) if v.len() == value.len() => Ok(()),
        other => Err(format!("plain get {i}: {other:?}")),
    };
    let sr_get = |i: u64| match store.get(&ring, &key(pick(i))) {
        Ok(Some(v)) if v.len() == value.len() => Ok(()),
        Ok(other) => Err(format!("get {i}: {:?}", other.map(|p| p.len()))),
        Err(e) => Err(e.to_string()),
    };
    let limit_get = |i: u64| {
        let k = key(pick(i));
        match limit.get(&k) {
            Ok(Some(sealed)) => match cipher.open(&limit_ring, &k, &sealed) {
                Ok(v) if v.len() == value.len() => Ok(()),
                Ok(_) => Err(format!("limit get {i}: wrong length")),
                Err(e) => Err(e.to_string()),
            },
            other => Err(format!(
                "limit get {i}: {:?}",
                other.map(|v| v.map(|v| v.len()))
            )),
        }
    };
    let [plain_get, sr_get, limit_get] =
        interleaved(a.threads, n, [&plain_get, &sr_get, &limit_get])?;
    let total = n;

    // Backend calls per 1000 reads once warm.
    let before = store.backend_calls();
    timed(1, 0..1000, &|i| {
        store
            .get(&ring, &key(i % total))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })?;
    let calls_per_1000 = store.backend_calls() - before;

    // The backend's own wrap and unwrap, one thread, about a second each.
    let root = RootKeyId::new(
        RootKeyName::new("bench").map_err(other)?,
        RootVersion::FIRST,
    );
    let k = Key256::generate().map_err(other)?;
    let blob = soft.wrap(&root, &k, b"bench").map_err(other)?;
    let measure = |f: &dyn Fn() -> bool| -> f64 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_millis(700) {
            for _ in 0..64 {
                if f() {
                    n += 1;
                }
            }
        }
        rate(n, start.elapsed())
    };
    let wrap_rate = measure(&|| soft.wrap(&root, &k, b"bench").is_ok());
    let unwrap_rate = measure(&|| soft.unwrap(&blob, b"bench").is_ok());

    let rows = [
        (
            "put",
            rate(total, plain_put),
            rate(total, sr_put),
            rate(total, limit_put),
        ),
        (
            "get",
            rate(total, plain_get),
            rate(total, sr_get),
            rate(total, limit_get),
        ),
    ];
    let written = out.result(
        || {
            let mut t = format!(
                "strongroom bench: {total} records of {} bytes, {} thread(s), gets in a random order, in turns of {CHUNK} operations, soft backend\nrecords sealed with {}\n\n",
                a.value_size,
                a.threads,
                record_cipher()
            );
            t.push_str(&format!(
                "{:<6} {:>14} {:>22} {:>14} {:>10} {:>16}\n",
                "op", "plain sled/s", "limit (plain+cipher)/s", "strongroom/s", "/ plain", "/ limit"
            ));
            for (op, p, s, l) in rows {
                t.push_str(&format!(
                    "{op:<6} {p:>14.0} {l:>22.0} {s:>14.0} {:>10.2} {:>16.2}\n",
                    s / p,
                    s / l
                ));
            }
            t.push_str(&format!("\nbackend wrap/s   {wrap_rate:>10.0}\nbackend unwrap/s {unwrap_rate:>10.0}\nbackend calls per 1000 reads after warm-up: {calls_per_1000}"));
            t
        },
        || {
            BenchJson {
                records: total,
                value_size: a.value_size,
                threads: a.threads,
                aead: strongroom_core::crypto::GCM_ENGINE,
                ops: rows
                    .iter()
                    .map(|&(op, p, s, l)| OpJson {
                        op,
                        plain_per_sec: p,
                        strongroom_per_sec: s,
                        ratio: s / p,
                        limit_per_sec: l,
                        ratio_to_limit: s / l,
                    })
                    .collect(),
                backend_wrap_per_sec: wrap_rate,
                backend_unwrap_per_sec: unwrap_rate,
                backend_calls_per_1000_reads: calls_per_1000,
            }
        },
    );
    // The temporary store goes even when the result could not be written.
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    written
}
