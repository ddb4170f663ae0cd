//! strongroom's key-hierarchy core.
//!
//! ```text
//! backend (HSM)      root key "acme" v1, v2 ...   never leaves the backend
//!                       | wraps (backend: PKCS#11, or soft AES-KWP)
//! keyring "payroll"  KEK v1, v2 ...               random 256-bit, stored only wrapped
//!                       | wraps (software AES-KWP, context-bound)
//!                    DEK v1, v2 ...               random 256-bit, stored only wrapped
//!                       | seals (AES-256-GCM, random 96-bit nonce, AAD = context)
//! records            value bytes
//! ```
//!
//! This crate holds what every part of strongroom shares:
//! - [`secret`]: [`Key256`] and [`Plaintext`], zeroized on drop, never printed;
//! - [`id`] and [`state`]: names, versions, key states and their legal transitions;
//! - [`blob`] and [`record`]: the versioned byte formats of wrapped keys and sealed records;
//! - [`crypto`]: context-bound AES-KW/KWP and AES-256-GCM; [`rng`]: keys and nonces;
//! - [`backend`]: the [`Backend`] trait, and [`soft`], the embedded software backend.
#![forbid(unsafe_code)]

pub mod backend;
pub mod blob;
pub mod crypto;
pub mod error;
pub mod format;
pub mod id;
pub mod record;
pub mod rng;
pub mod secret;
pub mod soft;
pub mod state;

pub use backend::{
    Backend, BackendInfo, Capabilities, HealthCheck, ImportKey, RootKeyInfo, RootStatus, StoreClaim,
};
pub use blob::{WrapAlg, WrappedKey, WrappingKeyRef};
pub use crypto::IntegrityError;
pub use error::{BackendError, KeyFileProblem, LoginFailure};
pub use format::FormatError;
pub use id::{DekVersion, KekVersion, KeyringName, RootKeyId, RootKeyName, RootVersion};
pub use record::{RecordCipher, RecordHeader, SealError, SealedRecord};
pub use rng::RandomError;
pub use secret::{KEY_LEN, Key256, Plaintext, wipe};
pub use soft::SoftBackend;
pub use state::{KeyState, Timestamp, Transition, TransitionError};
