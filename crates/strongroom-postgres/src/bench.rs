//! The PostgreSQL engine measured against the database alone: `strongroom bench --storage
//! postgres` and `cargo bench --bench postgres` run this.
//!
//! Two contenders on one server, in one run, interleaved in chunks (the order rotating from
//! chunk to chunk, so a burst of load on a shared machine hits both alike):
//! - **plain**: a table of the same shape (`tree smallint, k bytea, v bytea`, primary key
//!   `(tree, k)`, as the engine's) through the same
//!   client (tokio-postgres), the leanest synchronous use of it: each client thread owns a
//!   connection and a current-thread runtime and blocks on each statement (what the `postgres`
//!   crate does), with prepared statements;
//! - **strongroom**: a [`Store`] on a [`PgEngine`], every value sealed.
//!
//! Operations: `put` and `put_durable` (the same on this engine: every commit is synchronous),
//! and random `get`s of existing keys, each with 1 and 4 client threads. The ratio is
//! strongroom's rate over plain's.

// Generator output turned into bytes and indices: truncation is intended.
#![allow(clippy::cast_possible_truncation)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use strongroom_store::{Engine, EngineError, EngineErrorKind, Store, StoreError, StoreOptions};

use crate::{PgConfig, PgEngine};

/// Operations per chunk (each contender runs a whole chunk, split over its threads, in turn).
const CHUNK: usize = 400;

/// One measured operation.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PgBenchRow {
    /// `put`, `put_durable` or `get`.
    pub op: &'static str,
    /// Client threads.
    pub threads: usize,
    /// The plain table's rate (operations per second, all threads).
    pub plain: f64,
    /// strongroom's rate.
    pub strongroom: f64,
    /// strongroom / plain.
    pub ratio: f64,
    /// For gets: the engine alone (a raw get of the same sealed row through [`PgEngine`], no
    /// opening, no key lookup): where the time between plain and strongroom goes.
    pub engine_only: Option<f64>,
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct PgBenchSpec {
    /// Records per put phase (and gets per get phase).
    pub records: usize,
    /// Value size in bytes.
    pub value_size: usize,
    /// Thread counts to run.
    pub threads: Vec<usize>,
}

fn failed(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage {
        while_doing: "benchmarking",
        source: EngineError::new(EngineErrorKind::Other, format!("{what}: {e}")),
    }
}

/// One plain client: a connection and the runtime its thread blocks on.
struct Plain {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    put: tokio_postgres::Statement,
    get: tokio_postgres::Statement,
}

/// A connection driven by a current-thread runtime the caller blocks on.
fn connect_raw(
    config: &PgConfig,
) -> Result<(tokio::runtime::Runtime, tokio_postgres::Client), StoreError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed("runtime", e))?;
    let cfg = config.client_config().map_err(|e| failed("config", e))?;
    let tls = crate::tls::connector(&config.tls).map_err(|e| failed("tls", e))?;
    let client = rt
        .block_on(async {
            let (client, connection) = cfg.connect(tls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client.batch_execute("SET synchronous_commit = on").await?;
            Ok::<_, tokio_postgres::Error>(client)
        })
        .map_err(|e| failed("connecting the plain client", e))?;
    Ok((rt, client))
}

impl Plain {
    fn connect(config: &PgConfig, table: &str) -> Result<Self, StoreError> {
        let (rt, client) = connect_raw(config)?;
        let (put, get) = rt
            .block_on(async {
                let put = client
                    .prepare(&format!(
                        "INSERT INTO {table} (tree, k, v) VALUES (5, $1, $2) ON CONFLICT (tree, k) DO UPDATE SET v = excluded.v"
                    ))
                    .await?;
                let get = client
                    .prepare(&format!("SELECT v FROM {table} WHERE tree = 5 AND k = $1"))
                    .await?;
                Ok::<_, tokio_postgres::Error>((put, get))
            })
            .map_err(|e| failed("preparing the plain client", e))?;
        Ok(Self {
            rt,
            client,
            put,
            get,
        })
    }

    fn put(&self, k: &[u8], v: &[u8]) {
        let _ = self.rt.block_on(self.client.execute(&self.put, &[&k, &v]));
    }

    fn get(&self, k: &[u8]) -> usize {
        self.rt
            .block_on(self.client.query_opt(&self.get, &[&k]))
            .ok()
            .flatten()
            .map_or(0, |r| r.get::<_, Vec<u8>>(0).len())
    }
}

struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Runs `ops` (indices `0..n`) on `threads` threads, chunk by chunk, rotating through the
/// contenders; returns their rates in the order given.
fn interleaved(
    n: usize,
    threads: usize,
    contenders: &[&(dyn Fn(usize, usize) + Sync)],
) -> Vec<f64> {
    let k = contenders.len();
    let mut spent = vec![Duration::ZERO; k];
    for (c, start) in (0..n).step_by(CHUNK).enumerate() {
        let end = (start + CHUNK).min(n);
        for j in 0..k {
            let who = (c + j) % k;
            let f = contenders[who];
            let t = Instant::now();
            std::thread::scope(|s| {
                for th in 0..threads {
                    s.spawn(move || {
                        let mut i = start + th;
                        while i < end {
                            f(th, i);
                            i += threads;
                        }
                    });
                }
            });
            spent[who] += t.elapsed();
        }
    }
    spent
        .iter()
        .map(|d| n as f64 / d.as_secs_f64().max(1e-9))
        .collect()
}

/// Drops schema `schema` of the database `config` names, if it exists, with all it holds: a
/// benchmark's fresh start (never the store's own schema).
///
/// # Errors
/// The database's.
pub fn drop_schema(config: &PgConfig, schema: &str) -> Result<(), StoreError> {
    crate::check_schema(schema).map_err(|e| failed("schema", e))?;
    let (rt, client) = connect_raw(config)?;
    rt.block_on(client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")))
        .map_err(|e| failed("dropping a schema", e))
}

/// Runs the benchmark on the database `config` names: it creates two schemas of its own
/// (`<schema>_bench_store`, `<schema>_bench_plain`), empties them first and drops nothing else;
/// `dir` holds the store's local files (a temporary directory).
///
/// # Errors
/// The database's.
pub fn run(
    config: &PgConfig,
    dir: &std::path::Path,
    spec: &PgBenchSpec,
) -> Result<Vec<PgBenchRow>, StoreError> {
    let base = &config.schema;
    let store_schema = format!("{base}_bench_store");
    let plain_schema = format!("{base}_bench_plain");
    let table = format!("\"{plain_schema}\".plain");
    let max_threads = spec.threads.iter().copied().max().unwrap_or(1);
    let mut store_cfg = config
        .clone()
        .with_schema(&store_schema)
        .map_err(|e| failed("schema", e))?;
    store_cfg.pool_size = store_cfg.pool_size.max(max_threads + 2);
    // A fresh start: both schemas emptied.
    {
        let (rt, client) = connect_raw(config)?;
        rt.block_on(client.batch_execute(&format!(
                "DROP SCHEMA IF EXISTS \"{store_schema}\" CASCADE; DROP SCHEMA IF EXISTS \"{plain_schema}\" CASCADE;
                 CREATE SCHEMA \"{plain_schema}\";
                 CREATE TABLE {table} (tree smallint NOT NULL, k bytea NOT NULL, v bytea NOT NULL, PRIMARY KEY (tree, k));"
            )))
            .map_err(|e| failed("setup", e))?;
    }
    let backend: Arc<dyn strongroom_core::Backend> =
        Arc::new(strongroom_core::SoftBackend::create(dir).map_err(|e| failed("soft backend", e))?);
    let engine = PgEngine::connect(&store_cfg).map_err(|source| StoreError::Storage {
        while_doing: "connecting",
        source,
    })?;
    let store = Store::create_on(
        dir,
        Box::new(engine),
        backend,
        &strongroom_core::RootKeyName::new("service").map_err(|e| failed("root", e))?,
        StoreOptions::default(),
    )?;
    let ring = strongroom_core::KeyringName::new("bench").map_err(|e| failed("keyring", e))?;
    store.create_keyring(&ring, None)?;
    // The engine alone, on the store's own rows (a second engine, not exclusive).
    let mut raw_cfg = store_cfg.clone();
    raw_cfg.exclusive = false;
    let raw = PgEngine::connect(&raw_cfg).map_err(|source| StoreError::Storage {
        while_doing: "connecting",
        source,
    })?;
    let entry = raw
        .get(strongroom_store::TreeId::Keyrings, b"bench")
        .map_err(|source| StoreError::Storage {
            while_doing: "reading",
            source,
        })?
        .ok_or_else(|| failed("setup", "the keyring is missing"))?;
    let ring_id = strongroom_store::format::KeyringEntry::parse_stored(&entry)
        .map_err(|e| failed("setup", e))?
        .id
        .to_be_bytes();
    let plains: Vec<Plain> = (0..max_threads)
        .map(|_| Plain::connect(config, &table))
        .collect::<Result<_, _>>()?;
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    let values: Vec<Vec<u8>> = (0..64)
        .map(|_| (0..spec.value_size).map(|_| g.next() as u8).collect())
        .collect();
    let n = spec.records;
    let key = |phase: usize, i: usize| format!("{phase}-{i:09}").into_bytes();
    let mut rows = Vec::new();
    let mut phase = 0usize;
    for &threads in &spec.threads {
        for op in ["put", "put_durable"] {
            phase += 1;
            let p = phase;
            let r = interleaved(
                n,
                threads,
                &[
                    &|th, i| plains[th].put(&key(p, i), &values[i % 64]),
                    &|_, i| {
                        let r = if op == "put" {
                            store.put(&ring, &key(p, i), &values[i % 64])
                        } else {
                            store.put_durable(&ring, &key(p, i), &values[i % 64])
                        };
                        let _ = r;
                    },
                ],
            );
            rows.push(PgBenchRow {
                op,
                threads,
                plain: r[0],
                strongroom: r[1],
                ratio: r[1] / r[0],
                engine_only: None,
            });
        }
        // Random gets over what the last put phase wrote.
        let p = phase;
        let picks: Vec<usize> = (0..n).map(|_| (g.next() % n as u64) as usize).collect();
        let record_key = |i: usize| [&ring_id[..], &key(p, picks[i])].concat();
        let r = interleaved(
            n,
            threads,
            &[
                &|th, i| {
                    let _ = plains[th].get(&key(p, picks[i]));
                },
                &|_, i| {
                    let _ = store.get(&ring, &key(p, picks[i]));
                },
                &|_, i| {
                    let _ = raw.get(strongroom_store::TreeId::Records, &record_key(i));
                },
            ],
        );
        rows.push(PgBenchRow {
            op: "get",
            threads,
            plain: r[0],
            strongroom: r[1],
            ratio: r[1] / r[0],
            engine_only: Some(r[2]),
        });
    }
    Ok(rows)
}
