//! strongroom's encrypted record store, on a storage engine: sled embedded (the default), or
//! PostgreSQL (`strongroom-postgres`) through [`Store::create_on`] / [`Store::open_on`].
//!
//! Every value is sealed under the hierarchy root key → keyring KEK → DEK, and the customer's key
//! decisions (rotate, revoke, destroy) take effect on the data:
//!
//! - [`Store::create`] / [`Store::open`] a store directory with a [`Backend`](strongroom_core::Backend);
//! - root keys: create, rotate (KEKs rewrapped incrementally), retire old versions, disable,
//!   enable, schedule destruction, destroy;
//! - keyrings: create under a root, rotate KEK or DEK, move to another root (fresh keys, records
//!   re-encrypted), disable, enable, schedule destruction (7 days by default) or destroy now
//!   (crypto-shredding: keys and records erased, and the files compacted so none of their bytes
//!   remain);
//! - an authenticated catalog (key states MACed and bound to the audit chain);
//! - records: put, get, delete, list, atomic batch;
//! - resumable re-encryption, a bounded key cache, a tamper-evident audit log, online backup;
//! - with the `tokio` feature, `AsyncStore`: the same operations for async
//!   services, on a bounded blocking pool;
//! - metrics through the `metrics` facade (names and labels: [`telemetry`]).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! # let dir = tmp.path();
//! use std::sync::Arc;
//! use strongroom_core::{KeyringName, RootKeyName, SoftBackend};
//! use strongroom_store::{Store, StoreOptions};
//!
//! let backend = Arc::new(SoftBackend::create(dir)?); // or strongroom_pkcs11::Pkcs11Backend::open(..)
//! let store = Store::create(dir, backend, &RootKeyName::new("service")?, StoreOptions::default())?;
//! let payroll = KeyringName::new("payroll")?;
//! store.create_keyring(&payroll, None)?;
//! store.put_durable(&payroll, b"alice", b"salary=100000")?;
//! let value = store.get(&payroll, b"alice")?; // Option<Plaintext>, zeroized on drop
//! assert_eq!(value.unwrap().expose(), b"salary=100000");
//! store.disable_keyring(&payroll)?;
//! assert!(store.get(&payroll, b"alice").unwrap_err().is_access_refused());
//! # Ok(())
//! # }
//! ```
//!
//! # Durability contract
//! On PostgreSQL every write commits synchronously: `put` is as durable as `put_durable`. On
//! sled: sled writes in the background and flushes every 500 ms (using `sync_file_range` and `fsync`
//! on Linux). Every key-management operation (create, rotate, move, disable, enable, schedule,
//! cancel, destroy, re-encrypt batches) flushes before it returns: when it returns, it is
//! durable. [`Store::put`] returns once the record is in sled's log, which reaches the disk
//! within about 500 ms; [`Store::put_durable`] and [`Store::flush`] wait for the disk. A crash
//! loses at most the unflushed puts of the last ~500 ms, never a key or a flushed record.
#![forbid(unsafe_code)]

mod anchor;
#[cfg(feature = "tokio")]
mod async_store;
mod audit;
mod backup;
mod cache;
mod catalog;
mod commit;
mod compact;
mod destruction;
pub mod engine;
mod error;
mod fleet;
pub mod format;
mod jobs;
mod keyrings;
mod lease;
mod lifecycle;
mod migrate;
mod moves;
mod records;
mod roots;
mod storage;
mod store;
pub mod telemetry;
mod verify;

#[cfg(feature = "tokio")]
pub use async_store::{AsyncOptions, AsyncStore};
pub use audit::{AuditBreak, AuditEntry, AuditHead, AuditOp, AuditReport, Outcome};
pub use backup::BackupReport;
pub use cache::DownPolicy;
pub use compact::CompactReport;
pub use destruction::Destroyed;
pub use engine::{Engine, EngineError, EngineErrorKind, SledEngine, TreeId};
pub use error::StoreError;
pub use fleet::ReplicaSeen;
pub use jobs::{PendingJob, ReencryptReport};
pub use keyrings::KeyringInfo;
pub use lease::JobLease;
pub use lifecycle::Progress;
pub use migrate::MigrateReport;
pub use moves::MoveReport;
pub use records::{BatchOp, MAX_KEY_LEN, MAX_VALUE_LEN, Write};
pub use roots::RootInfo;
pub use store::{
    ANCHOR_FILE, CURRENT_DB_FILE, DB_DIR, LOCK_FILE, STORE_ID_FILE, Store, StoreOptions,
    database_dir,
};
