//! strongroom's PKCS#11 backend: root keys in a customer's HSM, through [`cryptoki`].
//!
//! Written against the PKCS#11 standard and proven on SoftHSM2; every place where a SoftHSM2
//! quirk forced a choice says so in a comment starting `SoftHSM2 quirk:`.
//!
//! - [`Pkcs11Config`]: module, token (by label or slot), PIN from an environment variable or a
//!   file (never a command-line argument; never stored).
//! - A session pool shared by threads, one login, sessions checked on checkout, and recovery from
//!   lost sessions and lost devices by one guarded re-initialize (see [`session`]).
//! - Root keys are sensitive, non-extractable token objects under a documented label scheme
//!   (see [`objects`]); keys made by other tools can be adopted.
//! - Mechanisms are probed: AES-GCM (context as AAD) is preferred, then AES-KWP, then AES-KW;
//!   each wrapped blob records the mechanism it used.
//! - BYOK: root key material wrapped under an RSA-OAEP import key made in the token.
#![forbid(unsafe_code)]

mod backend;
pub mod config;
mod der;
mod error;
mod library;
mod mechanisms;
pub mod objects;
mod pin_state;
pub mod session;

pub use backend::{Pkcs11Backend, PoolStats};
pub use config::{PinSource, Pkcs11Config, TokenSelector};
