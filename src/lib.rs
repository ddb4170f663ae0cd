//! strongroom: an embedded key-store engine for data encrypted at rest under keys the customer
//! controls.
//!
//! This facade re-exports the public API of strongroom's crates: the store ([`Store`]), the key
//! hierarchy's types and the embedded soft backend ([`core`]), and, with the `pkcs11` feature,
//! the PKCS#11 backend ([`pkcs11`]); with the `tokio` feature, the async API (`AsyncStore`);
//! metrics through the `metrics` facade ([`telemetry`]: names and labels). See the README for the security model and its limits.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! use std::sync::Arc;
//! use strongroom::{KeyringName, RootKeyName, SoftBackend, Store, StoreOptions};
//!
//! let backend = Arc::new(SoftBackend::create(tmp.path())?);
//! let store = Store::create(tmp.path(), backend, &RootKeyName::new("service")?, StoreOptions::default())?;
//! let payroll = KeyringName::new("payroll")?;
//! store.create_keyring(&payroll, None)?;
//! store.put_durable(&payroll, b"alice", b"salary=100000")?;
//! assert_eq!(store.get(&payroll, b"alice")?.unwrap().expose(), b"salary=100000");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub use strongroom_core as core;
pub use strongroom_core::{
    Backend, BackendError, BackendInfo, Capabilities, DekVersion, IntegrityError, KekVersion,
    Key256, KeyState, KeyringName, Plaintext, RootKeyId, RootKeyName, RootVersion, SoftBackend,
    Timestamp, WrapAlg, WrappedKey,
};
pub use strongroom_store as store;
/// The async API (feature `tokio`).
#[cfg(feature = "tokio")]
pub use strongroom_store::{AsyncOptions, AsyncStore};
pub use strongroom_store::{DownPolicy, Store, StoreError, StoreOptions, telemetry};

/// The PKCS#11 backend (feature `pkcs11`).
#[cfg(feature = "pkcs11")]
pub use strongroom_pkcs11 as pkcs11;
