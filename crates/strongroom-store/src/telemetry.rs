//! Metrics, through the [`metrics`] facade: the embedding service installs the exporter
//! (Prometheus, StatsD, ...); with none installed, each call is a few loads and does nothing.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `strongroom_operations_total` | counter | `op`, `outcome` | operations of the store, by name and how they ended |
//! | `strongroom_operation_duration_seconds` | histogram | `op` | how long they took |
//! | `strongroom_key_cache_hits_total` | counter | `key` | key lookups served by the key cache |
//! | `strongroom_key_cache_misses_total` | counter | `key` | key lookups that went to the backend (absent, or older than the TTL) |
//! | `strongroom_key_cache_evictions_total` | counter | `reason` | entries dropped from the key cache |
//! | `strongroom_backend_calls_total` | counter | `call` | wrap and unwrap calls to the backend |
//! | `strongroom_backend_errors_total` | counter | `call`, `kind` | those that failed, by kind of error |
//! | `strongroom_backend_call_duration_seconds` | histogram | `call` | how long a backend call took |
//! | `strongroom_job_items_processed_total` | counter | `job` | items a long job processed (records, KEKs, database entries) |
//! | `strongroom_job_progress_done` | gauge | `job` | the running job's items done so far (a resumed job counts what was done before) |
//! | `strongroom_job_progress_size` | gauge | `job` | the running job's items in all, as far as known |
//! | `strongroom_compaction_shredded_bytes_total` | counter | none | bytes of old database files shredded by compactions |
//!
//! The PKCS#11 backend adds its own (documented in `strongroom-pkcs11`): library recoveries,
//! reconnects, retries by kind of failure, and sessions opened.
//!
//! Label values, all from fixed sets (no label grows with the data):
//! - `op`: `record.put`, `record.put-durable`, `record.get`, `record.delete`, `record.list`,
//!   `record.batch`, `audit.verify`, `store.compact`, and for key operations the name of their
//!   audit entry ([`AuditOp::as_str`](crate::AuditOp::as_str): `keyring.create`,
//!   `keyring.rotate-kek`, `root.rotate`, `store.backup`, ...). A key operation is counted per
//!   audited step: a keyring move counts `keyring.move` twice (its start and its finish) and its
//!   re-encryption as `keyring.reencrypt`; an automatic DEK rollover counts as
//!   `keyring.rotate-dek`. The duration of a key operation starts once it holds the lifecycle
//!   lock; a record operation's includes the wait for it.
//! - `outcome`: `ok`, `refused` (a disabled, pending or destroyed key:
//!   [`StoreError::is_access_refused`]), `error` (anything else).
//! - `key`: `kek`, `dek`.
//! - `reason`: `capacity` (the least recently used entry made room), `purge` (a disable, a
//!   destruction, a key the backend no longer has, or [`Store::purge_key_cache`](crate::Store::purge_key_cache)).
//! - `call`: `wrap`, `unwrap`.
//! - `kind`: the [`BackendError`] variant in snake case (`device`, `integrity`,
//!   `root_disabled`, `root_unavailable`, `io`, ...; `other` for a variant added later), never
//!   the error's text.
//! - `job`: `reencrypt`, `move`, `rewrap`, `compact`. A move's re-encryption counts under both
//!   `move` and `reencrypt`.
//!
//! No label ever holds a keyring or root name, a record key, key material or a value: an
//! operator sees the store's behaviour, not its contents. [`describe`] registers a description
//! and unit of each metric with the installed recorder.

use std::time::Instant;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use strongroom_core::BackendError;

use crate::Progress;
use crate::error::StoreError;

/// Counter: operations by `op` and `outcome`.
pub const OPERATIONS: &str = "strongroom_operations_total";
/// Histogram: seconds an operation took, by `op`.
pub const OPERATION_SECONDS: &str = "strongroom_operation_duration_seconds";
/// Counter: key-cache hits, by `key`.
pub const CACHE_HITS: &str = "strongroom_key_cache_hits_total";
/// Counter: key-cache misses, by `key`.
pub const CACHE_MISSES: &str = "strongroom_key_cache_misses_total";
/// Counter: key-cache entries dropped, by `reason`.
pub const CACHE_EVICTIONS: &str = "strongroom_key_cache_evictions_total";
/// Counter: backend calls, by `call`.
pub const BACKEND_CALLS: &str = "strongroom_backend_calls_total";
/// Counter: failed backend calls, by `call` and `kind`.
pub const BACKEND_ERRORS: &str = "strongroom_backend_errors_total";
/// Histogram: seconds a backend call took, by `call`.
pub const BACKEND_SECONDS: &str = "strongroom_backend_call_duration_seconds";
/// Counter: items processed by long jobs, by `job`.
pub const JOB_ITEMS: &str = "strongroom_job_items_processed_total";
/// Gauge: the running job's items done, by `job`.
pub const JOB_DONE: &str = "strongroom_job_progress_done";
/// Gauge: the running job's items in all, by `job`.
pub const JOB_SIZE: &str = "strongroom_job_progress_size";
/// Counter: bytes shredded by compactions.
pub const SHREDDED_BYTES: &str = "strongroom_compaction_shredded_bytes_total";

/// Describes every metric of the store to the installed recorder (call it once, after
/// installing the exporter; optional).
pub fn describe() {
    describe_counter!(OPERATIONS, "Store operations, by operation and outcome");
    describe_histogram!(
        OPERATION_SECONDS,
        Unit::Seconds,
        "How long store operations took"
    );
    describe_counter!(CACHE_HITS, "Key lookups served by the key cache");
    describe_counter!(
        CACHE_MISSES,
        "Key lookups that went to the backend (absent, or past the TTL)"
    );
    describe_counter!(CACHE_EVICTIONS, "Entries dropped from the key cache");
    describe_counter!(BACKEND_CALLS, "Wrap and unwrap calls to the backend");
    describe_counter!(BACKEND_ERRORS, "Failed backend calls, by kind of error");
    describe_histogram!(
        BACKEND_SECONDS,
        Unit::Seconds,
        "How long backend calls took"
    );
    describe_counter!(JOB_ITEMS, "Items processed by long jobs");
    describe_gauge!(JOB_DONE, "Items the running job has done");
    describe_gauge!(JOB_SIZE, "Items of the running job in all");
    describe_counter!(
        SHREDDED_BYTES,
        Unit::Bytes,
        "Bytes of old database files shredded by compactions"
    );
}

/// How an operation ended, as the `outcome` label.
pub(crate) fn outcome<T>(r: &Result<T, StoreError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) if e.is_access_refused() => "refused",
        Err(_) => "error",
    }
}

/// Counts a record operation named by a literal, and its duration since `$started`. The metric
/// names are written out as literals here (they equal [`OPERATIONS`] and
/// [`OPERATION_SECONDS`]; the telemetry tests read them by those constants), so that with the
/// labels, literals too, `metrics` builds each key once in a static: no allocation and no
/// hashing on the hot path.
macro_rules! record_op {
    ($op:literal, $started:expr, $result:expr) => {{
        let seconds = $started.elapsed().as_secs_f64();
        match $crate::telemetry::outcome($result) {
            "ok" => ::metrics::counter!("strongroom_operations_total", "op" => $op, "outcome" => "ok")
                .increment(1),
            "refused" => ::metrics::counter!("strongroom_operations_total", "op" => $op, "outcome" => "refused")
                .increment(1),
            _ => ::metrics::counter!("strongroom_operations_total", "op" => $op, "outcome" => "error")
                .increment(1),
        }
        ::metrics::histogram!("strongroom_operation_duration_seconds", "op" => $op).record(seconds);
    }};
}
pub(crate) use record_op;

/// Counts an operation whose name is only known at run time (key operations: not a hot path).
pub(crate) fn operation<T>(op: &'static str, started: Instant, r: &Result<T, StoreError>) {
    metrics::counter!(OPERATIONS, "op" => op, "outcome" => outcome(r)).increment(1);
    metrics::histogram!(OPERATION_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
}

/// A key-cache lookup: `hit` or not, for a KEK (`kek`) or a DEK.
pub(crate) fn cache_lookup(kek: bool, hit: bool) {
    // Literal names (equal to CACHE_HITS and CACHE_MISSES): static keys, as in `record_op!`.
    match (kek, hit) {
        (true, true) => {
            metrics::counter!("strongroom_key_cache_hits_total", "key" => "kek").increment(1);
        }
        (true, false) => {
            metrics::counter!("strongroom_key_cache_misses_total", "key" => "kek").increment(1);
        }
        (false, true) => {
            metrics::counter!("strongroom_key_cache_hits_total", "key" => "dek").increment(1);
        }
        (false, false) => {
            metrics::counter!("strongroom_key_cache_misses_total", "key" => "dek").increment(1);
        }
    }
}

/// `n` key-cache entries dropped to make room (`capacity`) or by a purge.
pub(crate) fn cache_evicted(capacity: bool, n: usize) {
    if n == 0 {
        return;
    }
    let n = n as u64;
    if capacity {
        metrics::counter!(CACHE_EVICTIONS, "reason" => "capacity").increment(n);
    } else {
        metrics::counter!(CACHE_EVICTIONS, "reason" => "purge").increment(n);
    }
}

/// The `kind` label of a backend error: its variant, never its text.
#[must_use]
pub fn backend_error_kind(e: &BackendError) -> &'static str {
    match e {
        BackendError::NotSupported { .. } => "not_supported",
        BackendError::RootNotFound { .. } => "root_not_found",
        BackendError::RootExists { .. } => "root_exists",
        BackendError::RootDisabled { .. } => "root_disabled",
        BackendError::RootDestroyed { .. } => "root_destroyed",
        BackendError::RootUnavailable { .. } => "root_unavailable",
        BackendError::Integrity => "integrity",
        BackendError::UnsupportedAlgorithm { .. } => "unsupported_algorithm",
        BackendError::NotRootWrapped => "not_root_wrapped",
        BackendError::Format(_) => "format",
        BackendError::Random(_) => "random",
        BackendError::Transition(_) => "transition",
        BackendError::KeyFile { .. } => "key_file",
        BackendError::Locked { .. } => "locked",
        BackendError::SharedKeyFile { .. } => "shared_key_file",
        BackendError::Io { .. } => "io",
        BackendError::Login { .. } => "login",
        BackendError::Config(_) => "config",
        BackendError::Device { .. } => "device",
        _ => "other",
    }
}

/// Runs one backend call (`wrap` when `wrap`, else `unwrap`), counting it, its duration and
/// its failure.
pub(crate) fn backend_call<T>(
    wrap: bool,
    f: impl FnOnce() -> Result<T, BackendError>,
) -> Result<T, BackendError> {
    let started = Instant::now();
    let r = f();
    let seconds = started.elapsed().as_secs_f64();
    let call = if wrap { "wrap" } else { "unwrap" };
    if wrap {
        metrics::counter!(BACKEND_CALLS, "call" => "wrap").increment(1);
        metrics::histogram!(BACKEND_SECONDS, "call" => "wrap").record(seconds);
    } else {
        metrics::counter!(BACKEND_CALLS, "call" => "unwrap").increment(1);
        metrics::histogram!(BACKEND_SECONDS, "call" => "unwrap").record(seconds);
    }
    if let Err(e) = &r {
        metrics::counter!(BACKEND_ERRORS, "call" => call, "kind" => backend_error_kind(e))
            .increment(1);
    }
    r
}

/// Passes a job's progress on to `inner`, reporting it as the job's gauges and counting the
/// items processed (the first report sets the start: items done before a resume are not
/// counted again).
pub(crate) fn job_progress<'a>(
    job: &'static str,
    inner: &'a mut dyn FnMut(Progress),
) -> impl FnMut(Progress) + 'a {
    let mut last: Option<u64> = None;
    move |p: Progress| {
        if let Some(before) = last {
            metrics::counter!(JOB_ITEMS, "job" => job).increment(p.done.saturating_sub(before));
        }
        last = Some(p.done);
        #[allow(clippy::cast_precision_loss)] // a gauge is an f64; exact up to 2^53 items
        {
            metrics::gauge!(JOB_DONE, "job" => job).set(p.done as f64);
            metrics::gauge!(JOB_SIZE, "job" => job).set(p.total as f64);
        }
        inner(p);
    }
}

/// A compaction's work: entries copied and bytes shredded.
pub(crate) fn compacted(entries: u64, shredded_bytes: u64) {
    metrics::counter!(JOB_ITEMS, "job" => "compact").increment(entries);
    metrics::counter!(SHREDDED_BYTES).increment(shredded_bytes);
}
