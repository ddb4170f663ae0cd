//! strongroom: an embedded key-store engine for data encrypted at rest under keys the customer
//! controls.
//!
//! This facade re-exports the public API of strongroom's crates. See the README for the key
//! hierarchy, the security model and its limits.
#![forbid(unsafe_code)]

pub use strongroom_core as core;
pub use strongroom_core::{
    Backend, BackendError, BackendInfo, Capabilities, DekVersion, IntegrityError, KekVersion,
    Key256, KeyState, KeyringName, Plaintext, RootKeyId, RootKeyName, RootVersion, SoftBackend,
    Timestamp, WrapAlg, WrappedKey,
};

/// The PKCS#11 backend (feature `pkcs11`).
#[cfg(feature = "pkcs11")]
pub use strongroom_pkcs11 as pkcs11;
