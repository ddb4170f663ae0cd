//! strongroom's PostgreSQL storage engine: one store shared by many processes and machines.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use strongroom_core::{RootKeyName, SoftBackend};
//! use strongroom_postgres::{PgConfig, PgEngine};
//! use strongroom_store::{Store, StoreOptions};
//!
//! // The URL (with its password) comes from the environment or a file, never from a config file.
//! let config = PgConfig::from_env("STRONGROOM_PG_URL")?;
//! let engine = PgEngine::connect(&config)?;
//! let dir = std::path::Path::new("/var/lib/myservice/strongroom"); // the audit anchor lives here
//! let backend = Arc::new(SoftBackend::open(dir)?);
//! let store = Store::open_on(dir, Box::new(engine), backend, StoreOptions::default())?;
//! # Ok(()) }
//! ```
//!
//! - **Durability**: every write, batch and transaction is committed with `synchronous_commit =
//!   on` before it returns: `put` is as durable as `put_durable` (README, durability).
//! - **Isolation**: the store's transactions run at `SERIALIZABLE` and are retried, with a
//!   growing jittered backoff, on serialization failures and deadlocks (SQLSTATE 40001,
//!   40P01), up to [`PgConfig::max_retries`] times.
//! - **Connections**: a pool of [`PgConfig::pool_size`] connections, driven by the engine's own
//!   two-thread tokio runtime, so that every call works from plain threads and from inside any
//!   async runtime. A connection the server dropped (restart, failover) is replaced at the next
//!   call; calls that hit it fail with [`EngineErrorKind::Unavailable`](strongroom_store::EngineErrorKind),
//!   and a commit whose answer was lost with `Indeterminate`.
//! - **TLS** on rustls: `sslmode` disable, prefer, require or verify-full (with `sslrootcert`),
//!   and client certificates (`sslcert`, `sslkey`).
//! - **Schema**: created and upgraded by strongroom under an advisory lock, versioned
//!   ([`SCHEMA_VERSION`]); one store per PostgreSQL schema ([`PgConfig::schema`]).
//! - **Destruction**: a compaction deletes what the destruction removed and runs `VACUUM FULL`
//!   (the table's files are rewritten, the old ones unlinked) and, if allowed, `CHECKPOINT`.
//!   What remains: WAL segments until the server recycles them, WAL archives, replicas' copies
//!   until they replay it, and backups (README, security model).
#![forbid(unsafe_code)]

pub mod bench;
mod config;
mod engine;
mod error;
mod schema;
mod tls;

pub use config::{DEFAULT_SCHEMA, PgConfig, SslMode, TlsSettings, check_schema};
pub use engine::PgEngine;
pub use schema::SCHEMA_VERSION;
