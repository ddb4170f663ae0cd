//! `strongroom bench --replicas N`: a fleet of replica processes on one PostgreSQL store and
//! one backend, measured in one run.
//!
//! This process creates the store (schema `<schema>_bench_fleet`, emptied first; its backend
//! the PKCS#11 token `--pkcs11-module` names, in a namespace of the run's own, or else the soft
//! backend in a temporary directory, whose key file every replica opens), with two keyrings:
//! `data`, which the replicas use as fast as they can (one thread each: the even-numbered
//! replicas put then get an earlier key of theirs, the odd-numbered ones only get records
//! written before the run), and `probe`, holding one record that a second
//! thread of each replica reads every millisecond. It then starts the replicas (this binary,
//! `bench-replica`, one process each) and, in rounds at a random phase to their polls,
//! disables `probe` (it is a replica of the fleet too) and waits for every replica to report
//! its first refused read, then enables it and waits for every replica to read it again.
//!
//! Propagation is measured from the moment before the disable is called (so it includes the
//! commit) to the wall-clock time the replica saw its first refusal: both on this machine's
//! clock. The probe reads once a millisecond, so a figure can be up to a millisecond late.
//! A replica that only reads takes a disable in at its next poll: the bound is the interval
//! plus the time of one reload. A replica that writes takes it in at once, since its next write
//! finds the generation moved (the write's own guard): both are reported, apart.
//!
//! Replicas report on their standard output, one JSON line per event ([`Line`]), and stop
//! when their standard input closes.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use strongroom_core::{Backend, KeyringName, RootKeyName, SoftBackend};
use strongroom_pkcs11::{PinSource, Pkcs11Backend, Pkcs11Config, TokenSelector};
use strongroom_postgres::{PgConfig, PgEngine};
use strongroom_store::{Store, StoreError, StoreOptions};

use crate::cli::{BenchArgs, BenchReplicaArgs};
use crate::common::temp_dir;
use crate::context::Context;
use crate::error::CliError;

const DATA: &str = "data";
/// Records written before the run, for the readers.
const PRELOADED: u64 = 1000;
const PROBE: &str = "probe";
/// How long the replicas may take to start (connect, open the store).
const START_LIMIT: Duration = Duration::from_secs(60);

fn other(e: impl std::fmt::Display) -> CliError {
    CliError::Other(format!("bench --replicas: {e}"))
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What a replica reports, one JSON line each.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "snake_case")]
enum Line {
    /// The store is open and the threads are running.
    Ready,
    /// The first refused probe read after it was served (wall clock, ns since the epoch).
    Refused { at_ns: u64 },
    /// The first served probe read after it was refused.
    Served { at_ns: u64 },
    /// The replica stopped: what it did.
    Done {
        puts: u64,
        gets: u64,
        secs: f64,
        errors: u64,
        first_error: Option<String>,
    },
}

/// `bench --replicas --json`.
#[derive(Serialize)]
struct FleetJson {
    replicas: usize,
    /// The fleet's one backend: `pkcs11` (a token) or `soft` (a key file shared).
    backend: &'static str,
    value_size: usize,
    fleet_poll_ms: u64,
    aead: &'static str,
    per_replica: Vec<ReplicaJson>,
    total_puts_per_sec: f64,
    total_gets_per_sec: f64,
    propagation: PropagationJson,
    audit: AuditJson,
}

#[derive(Serialize)]
struct ReplicaJson {
    replica: String,
    /// `puts+gets` or `gets`.
    workload: &'static str,
    puts_per_sec: f64,
    gets_per_sec: f64,
    errors: u64,
}

/// From a disable called in one replica to the first refused read in each other replica.
#[derive(Serialize)]
struct PropagationJson {
    rounds: u32,
    samples: usize,
    p50_ms: f64,
    max_ms: f64,
    /// The target: the poll interval plus 250 ms.
    bound_ms: f64,
    /// The replicas that only read (they take a change in at their next poll).
    readers: Percentiles,
    /// The replicas that write too (their next write finds the generation moved).
    writers: Percentiles,
}

/// The fleet's audit chain after the run.
#[derive(Serialize, Clone)]
struct AuditJson {
    entries: u64,
    verified: bool,
    /// The replicas that wrote entries (the key changes' and refusals' writers).
    replicas_in_log: Vec<String>,
}

#[derive(Serialize, Default)]
struct Percentiles {
    samples: usize,
    p50_ms: f64,
    max_ms: f64,
}

impl Percentiles {
    fn of(mut xs: Vec<f64>) -> Self {
        xs.sort_by(f64::total_cmp);
        Self {
            samples: xs.len(),
            p50_ms: percentile(&xs, 500),
            max_ms: xs.last().copied().unwrap_or(0.0),
        }
    }
}

/// The fleet's PKCS#11 token (`--pkcs11-module`), and the bench's namespace in it.
struct Token {
    module: PathBuf,
    label: String,
    pin_file: PathBuf,
    namespace: String,
}

impl Token {
    fn backend(&self) -> Result<Arc<dyn Backend>, CliError> {
        let mut c = Pkcs11Config::new(
            &self.module,
            TokenSelector::Label(self.label.clone()),
            PinSource::File(self.pin_file.clone()),
        );
        c.namespace = self.namespace.clone();
        Ok(Arc::new(Pkcs11Backend::open(c)?))
    }
}

/// The fleet's backend in `dir`: the token, or the soft key file every process shares.
fn shared_backend(token: Option<&Token>, dir: &Path) -> Result<Arc<dyn Backend>, CliError> {
    match token {
        Some(t) => t.backend(),
        None => Ok(Arc::new(SoftBackend::open_shared(dir).map_err(other)?)),
    }
}

fn writes(index: usize) -> bool {
    index.is_multiple_of(2)
}

/// The PostgreSQL configuration `--pg-url-env` / `--pg-url-file` name.
fn pg_base(env: Option<&String>, file: Option<&PathBuf>) -> Result<PgConfig, CliError> {
    match (env, file) {
        (Some(v), _) => PgConfig::from_env(v),
        (None, Some(f)) => PgConfig::from_file(f),
        (None, None) => {
            return Err(CliError::Usage(
                "bench --replicas needs a PostgreSQL database: --pg-url-env VAR or --pg-url-file FILE (for a throwaway server: cargo run -p strongroom-test-support --bin with-postgres -- strongroom bench --replicas 3 --pg-url-env STRONGROOM_PG_URL)".into(),
            ));
        }
    }
    .map_err(|e| CliError::Usage(e.to_string()))
}

fn fleet_store_config(base: &PgConfig, schema: &str) -> Result<PgConfig, CliError> {
    let mut c = base
        .clone()
        .with_schema(schema)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    // Replicas share the schema.
    c.exclusive = false;
    c.pool_size = 4;
    Ok(c)
}

fn name(s: &str) -> KeyringName {
    KeyringName::new(s).unwrap_or_else(|_| unreachable!("a valid constant name"))
}

/// A started replica process.
struct Replica {
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Replica {
    /// The end of its standard error (where a replica says why it failed).
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

/// The `per_mille`th per-mille of sorted `xs` (nearest rank).
fn percentile(xs: &[f64], per_mille: usize) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs[((xs.len() - 1) * per_mille / 1000).min(xs.len() - 1)]
}

/// Waits for one event of each replica that `want` accepts; returns them by replica.
fn collect<T>(
    rx: &mpsc::Receiver<(usize, Option<Line>)>,
    replicas: &mut [Replica],
    limit: Duration,
    what: &str,
    mut want: impl FnMut(Line) -> Option<T>,
) -> Result<Vec<T>, CliError> {
    let mut got: Vec<Option<T>> = replicas.iter().map(|_| None).collect();
    let deadline = Instant::now() + limit;
    while got.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, Some(line))) => {
                if got[i].is_none() {
                    got[i] = want(line);
                }
            }
            // A replica that already gave what is waited for may stop (after its summary).
            Ok((i, None)) if got[i].is_some() => {}
            Ok((i, None)) => {
                let status = (0..100)
                    .find_map(|_| {
                        let s = replicas[i].child.try_wait().ok().flatten();
                        if s.is_none() {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        s
                    })
                    .map_or("still running".to_owned(), |s| s.to_string());
                return Err(other(format!(
                    "replica {i} stopped ({status}) while waiting for {what}: {}",
                    replicas[i].log_tail()
                )));
            }
            Err(_) => {
                let missing: Vec<String> = got
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| g.is_none())
                    .map(|(i, _)| i.to_string())
                    .collect();
                return Err(other(format!(
                    "no {what} from replica(s) {} within {limit:?}",
                    missing.join(", ")
                )));
            }
        }
    }
    Ok(got.into_iter().flatten().collect())
}

/// `bench --replicas n`.
pub fn run(ctx: &Context<'_>, a: &BenchArgs, n: usize) -> Result<(), CliError> {
    if a.storage == crate::cli::StorageKind::Postgres {
        return Err(CliError::Usage(
            "--replicas always runs on PostgreSQL: leave out --storage".into(),
        ));
    }
    let base = pg_base(a.pg_url_env.as_ref(), a.pg_url_file.as_ref())?;
    let schema = format!("{}_bench_fleet", base.schema);
    let cfg = fleet_store_config(&base, &schema)?;
    strongroom_postgres::bench::drop_schema(&base, &schema)?;
    let dir = temp_dir()?;
    // A namespace of this run's own: the token may hold earlier runs' stores (and their
    // claims on their namespaces).
    let token = match (&a.pkcs11_module, &a.pkcs11_token, &a.pkcs11_pin_file) {
        (Some(module), Some(label), Some(pin_file)) => Some(Token {
            module: module.clone(),
            label: label.clone(),
            pin_file: pin_file.clone(),
            namespace: format!("bench-fleet-{:012x}", now_ns() & 0xffff_ffff_ffff),
        }),
        _ => None,
    };
    let result = measure(ctx, a, n, &cfg, &schema, &dir, token.as_ref());
    let _ = std::fs::remove_dir_all(&dir);
    let _ = strongroom_postgres::bench::drop_schema(&base, &schema);
    result
}

fn measure(
    ctx: &Context<'_>,
    a: &BenchArgs,
    n: usize,
    cfg: &PgConfig,
    schema: &str,
    dir: &Path,
    token: Option<&Token>,
) -> Result<(), CliError> {
    let poll = Duration::from_millis(a.fleet_poll_ms);
    let backend: Arc<dyn Backend> = match token {
        Some(t) => t.backend()?,
        None => Arc::new(SoftBackend::create(dir).map_err(other)?),
    };
    let engine = PgEngine::connect(cfg).map_err(crate::context::connecting)?;
    let store = Store::create_on(
        dir,
        Box::new(engine),
        backend,
        &RootKeyName::new("service").map_err(other)?,
        StoreOptions {
            fleet_poll: poll,
            replica: "bench-coordinator".into(),
            ..StoreOptions::default()
        },
    )?;
    let (data, probe) = (name(DATA), name(PROBE));
    store.create_keyring(&data, None)?;
    store.create_keyring(&probe, None)?;
    store.put(&probe, b"p", b"probe")?;
    let value = vec![0x5a_u8; a.value_size];
    for i in 0..PRELOADED {
        store.put(&data, format!("pre-{i}").as_bytes(), &value)?;
    }
    // From here on every process, this one too, uses the one backend of the fleet: the token,
    // or the soft key file shared (root keys do not change during the run).
    drop(store);
    let backend = shared_backend(token, dir)?;
    let engine = PgEngine::connect(cfg).map_err(crate::context::connecting)?;
    let store = Store::open_on(
        dir,
        Box::new(engine),
        backend,
        StoreOptions {
            fleet_poll: poll,
            replica: "bench-coordinator".into(),
            ..StoreOptions::default()
        },
    )?;

    let exe = std::env::current_exe().map_err(other)?;
    let (tx, rx) = mpsc::channel::<(usize, Option<Line>)>();
    let mut replicas: Vec<Replica> = Vec::with_capacity(n);
    for i in 0..n {
        let log = dir.join(format!("replica-{i}.log"));
        let mut cmd = Command::new(&exe);
        cmd.arg("bench-replica")
            .arg("--store-dir")
            .arg(dir)
            .arg("--schema")
            .arg(schema)
            .arg("--index")
            .arg(i.to_string())
            .arg("--fleet-poll-ms")
            .arg(a.fleet_poll_ms.to_string())
            .arg("--value-size")
            .arg(a.value_size.to_string());
        if let Some(v) = &a.pg_url_env {
            cmd.arg("--pg-url-env").arg(v);
        } else if let Some(f) = &a.pg_url_file {
            cmd.arg("--pg-url-file").arg(f);
        }
        if let Some(t) = token {
            cmd.arg("--pkcs11-module")
                .arg(&t.module)
                .arg("--pkcs11-token")
                .arg(&t.label)
                .arg("--pkcs11-pin-file")
                .arg(&t.pin_file)
                .arg("--pkcs11-namespace")
                .arg(&t.namespace);
        }
        let spawned = std::fs::File::create(&log)
            .and_then(|err| {
                cmd.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(err)
                    .spawn()
            })
            .map_err(|e| other(format!("starting replica {i}: {e}")));
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                // The replicas already started go too.
                for r in &mut replicas {
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                }
                return Err(e);
            }
        };
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| other("no replica stdout"))?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Line>(&line) {
                    Ok(l) => {
                        let _ = tx.send((i, Some(l)));
                    }
                    // Not a report (a replica prints nothing else): shown, not dropped.
                    Err(e) => eprintln!("replica {i}: {e}: {line}"),
                }
            }
            let _ = tx.send((i, None));
        });
        replicas.push(Replica {
            stdin: child.stdin.take(),
            child,
            log,
        });
    }
    drop(tx);
    let outcome = drive(ctx, a, &store, &probe, &rx, &mut replicas, poll);
    for r in &mut replicas {
        r.stdin = None;
    }
    if outcome.is_err() {
        for r in &mut replicas {
            let _ = r.child.kill();
        }
    }
    for r in &mut replicas {
        let _ = r.child.wait();
    }
    let (props, done) = outcome?;
    // One audit chain for the fleet: it verifies, with entries from every replica.
    let audit = match store.verify_audit()? {
        Ok(r) => r.entries,
        Err(b) => return Err(other(format!("the audit log does not verify: {b}"))),
    };
    let mut writers = std::collections::BTreeSet::new();
    for e in store.audit_entries(1) {
        let e = e?;
        writers.insert(e.replica);
    }
    let audit = AuditJson {
        entries: audit,
        verified: true,
        replicas_in_log: writers.into_iter().filter(|r| !r.is_empty()).collect(),
    };
    report(ctx, a, &props, &done, &audit, token)
}

type Done = (u64, u64, f64, u64, Option<String>);
/// Propagation samples: (replica, milliseconds).
type Samples = Vec<(usize, f64)>;

/// The rounds, then the stop: the propagation samples (ms) and each replica's summary.
fn drive(
    ctx: &Context<'_>,
    a: &BenchArgs,
    store: &Store,
    probe: &KeyringName,
    rx: &mpsc::Receiver<(usize, Option<Line>)>,
    replicas: &mut [Replica],
    poll: Duration,
) -> Result<(Samples, Vec<Done>), CliError> {
    collect(rx, &mut *replicas, START_LIMIT, "readiness", |l| {
        matches!(l, Line::Ready).then_some(())
    })?;
    let started = Instant::now();
    let wait = poll * 3 + Duration::from_secs(10);
    let mut props = Vec::new();
    let pb = ctx.out.progress("measuring revocation propagation");
    let mut seed = now_ns();
    for round in 0..a.rounds {
        pb.set_message(format!("round {} of {}", round + 1, a.rounds));
        // A random phase to the replicas' polls: 200 ms to 200 ms + one interval.
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let span = u64::try_from(poll.as_millis()).unwrap_or(1000).max(1);
        std::thread::sleep(Duration::from_millis(200 + (seed >> 33) % span));
        let t0 = now_ns();
        store.disable_keyring(probe)?;
        let refused = collect(rx, &mut *replicas, wait, "a refused read", |l| match l {
            Line::Refused { at_ns } => Some(at_ns),
            _ => None,
        })?;
        props.extend(
            refused
                .iter()
                .enumerate()
                .map(|(i, &at)| (i, at.saturating_sub(t0) as f64 / 1e6)),
        );
        store.enable_keyring(probe)?;
        collect(rx, &mut *replicas, wait, "a served read", |l| match l {
            Line::Served { at_ns } => Some(at_ns),
            _ => None,
        })?;
    }
    let total = Duration::from_secs(a.seconds);
    if let Some(left) = total.checked_sub(started.elapsed()) {
        pb.set_message("measuring throughput");
        std::thread::sleep(left);
    }
    pb.finish_and_clear();
    for r in replicas.iter_mut() {
        r.stdin = None;
    }
    let done = collect(
        rx,
        &mut *replicas,
        Duration::from_secs(60),
        "its summary",
        |l| match l {
            Line::Done {
                puts,
                gets,
                secs,
                errors,
                first_error,
            } => Some((puts, gets, secs, errors, first_error)),
            _ => None,
        },
    )?;
    Ok((props, done))
}

fn report(
    ctx: &Context<'_>,
    a: &BenchArgs,
    props: &[(usize, f64)],
    done: &[Done],
    audit: &AuditJson,
    token: Option<&Token>,
) -> Result<(), CliError> {
    let n = done.len();
    let poll = Duration::from_millis(a.fleet_poll_ms);
    let all = Percentiles::of(props.iter().map(|p| p.1).collect());
    let readers = Percentiles::of(props.iter().filter(|p| !writes(p.0)).map(|p| p.1).collect());
    let writers = Percentiles::of(props.iter().filter(|p| writes(p.0)).map(|p| p.1).collect());
    let per: Vec<ReplicaJson> = done
        .iter()
        .enumerate()
        .map(|(i, (puts, gets, secs, errors, _))| ReplicaJson {
            replica: format!("bench-{i}"),
            workload: if writes(i) { "puts+gets" } else { "gets" },
            puts_per_sec: *puts as f64 / secs.max(1e-9),
            gets_per_sec: *gets as f64 / secs.max(1e-9),
            errors: *errors,
        })
        .collect();
    let errors: Vec<String> = done
        .iter()
        .enumerate()
        .filter_map(|(i, d)| d.4.as_ref().map(|e| format!("bench-{i}: {e}")))
        .collect();
    let json = FleetJson {
        replicas: n,
        backend: if token.is_some() { "pkcs11" } else { "soft" },
        value_size: a.value_size,
        fleet_poll_ms: a.fleet_poll_ms,
        aead: strongroom_core::crypto::GCM_ENGINE,
        total_puts_per_sec: per.iter().map(|r| r.puts_per_sec).sum(),
        total_gets_per_sec: per.iter().map(|r| r.gets_per_sec).sum(),
        per_replica: per,
        propagation: PropagationJson {
            rounds: a.rounds,
            samples: all.samples,
            p50_ms: all.p50_ms,
            max_ms: all.max_ms,
            bound_ms: poll.as_secs_f64() * 1000.0 + 250.0,
            readers,
            writers,
        },
        audit: audit.clone(),
    };
    ctx.out.result(
        || {
            let mut t = format!(
                "fleet: {n} replica processes on one PostgreSQL store and {}, values of {} bytes, poll every {} ms\n{:<10} {:<10} {:>12} {:>12} {:>8}\n",
                token.map_or_else(
                    || "one soft key file".to_owned(),
                    |t| format!("one PKCS#11 token ({})", t.label)
                ),
                a.value_size, a.fleet_poll_ms, "replica", "workload", "puts/s", "gets/s", "errors"
            );
            for r in &json.per_replica {
                t.push_str(&format!(
                    "{:<10} {:<10} {:>12.0} {:>12.0} {:>8}\n",
                    r.replica, r.workload, r.puts_per_sec, r.gets_per_sec, r.errors
                ));
            }
            t.push_str(&format!(
                "{:<10} {:<10} {:>12.0} {:>12.0}\n",
                "total", "", json.total_puts_per_sec, json.total_gets_per_sec
            ));
            let p = &json.propagation;
            t.push_str(&format!(
                "revocation propagation, {} rounds: p50 {:.0} ms, max {:.0} ms over {} samples (target: max <= {:.0} ms, the interval + 250 ms)\n  replicas that only read: p50 {:.0} ms, max {:.0} ms; replicas that write: p50 {:.0} ms, max {:.0} ms",
                p.rounds, p.p50_ms, p.max_ms, p.samples, p.bound_ms,
                p.readers.p50_ms, p.readers.max_ms, p.writers.p50_ms, p.writers.max_ms
            ));
            t.push_str(&format!(
                "\naudit log: {} entries, chain verified; written by {}",
                json.audit.entries,
                json.audit.replicas_in_log.join(", ")
            ));
            if !errors.is_empty() {
                t.push_str(&format!("\nfirst errors: {}", errors.join("; ")));
            }
            t
        },
        || &json,
    )?;
    Ok(())
}

/// One replica (`bench-replica`): puts and gets on `data`, the probe read every millisecond,
/// events on standard output, until standard input closes.
pub fn replica(a: &BenchReplicaArgs) -> Result<(), CliError> {
    let base = pg_base(a.pg_url_env.as_ref(), a.pg_url_file.as_ref())?;
    let cfg = fleet_store_config(&base, &a.schema)?;
    let token = match (
        &a.pkcs11_module,
        &a.pkcs11_token,
        &a.pkcs11_pin_file,
        &a.pkcs11_namespace,
    ) {
        (Some(module), Some(label), Some(pin_file), Some(namespace)) => Some(Token {
            module: module.clone(),
            label: label.clone(),
            pin_file: pin_file.clone(),
            namespace: namespace.clone(),
        }),
        _ => None,
    };
    let backend = shared_backend(token.as_ref(), &a.store_dir)?;
    let engine = PgEngine::connect(&cfg).map_err(crate::context::connecting)?;
    let store = Store::open_on(
        &a.store_dir,
        Box::new(engine),
        backend,
        StoreOptions {
            fleet_poll: Duration::from_millis(a.fleet_poll_ms),
            replica: format!("bench-{}", a.index),
            ..StoreOptions::default()
        },
    )?;
    let out = Mutex::new(std::io::stdout());
    let emit = |l: &Line| {
        if let Ok(text) = serde_json::to_string(l) {
            let mut o = out
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = writeln!(o, "{text}");
            let _ = o.flush();
        }
    };
    let stop = AtomicBool::new(false);
    let errors = AtomicU64::new(0);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let failed = |e: &dyn std::fmt::Display| {
        errors.fetch_add(1, Ordering::Relaxed);
        let mut f = first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if f.is_none() {
            *f = Some(e.to_string());
        }
    };
    let (data, probe) = (name(DATA), name(PROBE));
    let value = vec![0x5a_u8; a.value_size];
    // One key change of its own (the replicas start together, so these race): the fleet's
    // audit chain then holds an entry from every replica.
    let own = KeyringName::new(format!("replica-{}", a.index)).map_err(other)?;
    let mut tries = 0;
    loop {
        match store.create_keyring(&own, None) {
            Ok(_) => break,
            Err(StoreError::Conflict { .. }) if tries < 20 => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
    emit(&Line::Ready);
    let started = Instant::now();
    let (puts, gets) = std::thread::scope(|s| {
        s.spawn(|| {
            // Standard input closing (the coordinator is done, or gone) stops the replica.
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while stdin.read(&mut sink).is_ok_and(|n| n > 0) {}
            stop.store(true, Ordering::Release);
        });
        s.spawn(|| {
            let mut serving = true;
            while !stop.load(Ordering::Acquire) {
                match store.get(&probe, b"p") {
                    Ok(Some(_)) if !serving => {
                        serving = true;
                        emit(&Line::Served { at_ns: now_ns() });
                    }
                    Ok(_) => {}
                    Err(StoreError::KeyringDisabled { .. }) => {
                        if serving {
                            serving = false;
                            emit(&Line::Refused { at_ns: now_ns() });
                        }
                    }
                    Err(e) => failed(&e),
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let (mut puts, mut gets) = (0u64, 0u64);
        let mut x = u64::from(a.index).wrapping_add(0x9e37_79b9_7f4a_7c15);
        let writer = writes(usize::from(a.index));
        while !stop.load(Ordering::Acquire) {
            if writer {
                let key = format!("r{}-{puts}", a.index);
                match store.put(&data, key.as_bytes(), &value) {
                    Ok(()) => puts += 1,
                    Err(e) => failed(&e),
                }
            }
            if puts > 0 || !writer {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = if writer {
                    format!("r{}-{}", a.index, x % puts)
                } else {
                    format!("pre-{}", x % PRELOADED)
                };
                match store.get(&data, key.as_bytes()) {
                    Ok(Some(_)) => gets += 1,
                    Ok(None) => failed(&format!("record {key} is missing")),
                    Err(e) => failed(&e),
                }
            }
        }
        (puts, gets)
    });
    emit(&Line::Done {
        puts,
        gets,
        secs: started.elapsed().as_secs_f64(),
        errors: errors.load(Ordering::Relaxed),
        first_error: first_error
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    });
    Ok(())
}
