//! strongroom's PKCS#11 backend: root keys in a customer's HSM, through [`cryptoki`].
//!
//! Written against the PKCS#11 standard and proven on SoftHSM2; every place where a SoftHSM2
//! quirk forced a choice says so in a comment starting `SoftHSM2 quirk:`.
//!
//! - [`Pkcs11Config`]: module, token (by label or slot), PIN from an environment variable or a
//!   file (never a command-line argument; never stored).
//! - One library context per module per process, shared by every backend on it (any namespace,
//!   any token): one generation and one guarded recovery (finalize + initialize) for all; each
//!   backend re-finds its sessions and checks its cached key handles after a recovery.
//! - A session pool per backend shared by threads, one login (never with a PIN the token refused,
//!   in this process or, with `pin_state`, another; never at the PIN's final try), sessions
//!   checked on checkout (see [`session`]).
//! - Root keys are sensitive, non-extractable token objects under a documented label scheme
//!   (see [`objects`]); keys made by other tools can be adopted.
//! - Mechanisms are probed (the token's whole list, then a trial round trip for what it lacks):
//!   AES-GCM (context as AAD) is preferred, then AES-KWP (RFC 5649, as `CKM_AES_KEY_WRAP_PAD`
//!   0x210A or `CKM_AES_KEY_WRAP_KWP` 0x210B, whichever the token has), then AES-KW; each
//!   wrapped blob records the algorithm it used (not the code: a KWP blob opens under either).
//!   Bad data is told from a failing device by a canary, whatever code the token returns.
//! - No unsafe code here: what `cryptoki` 0.12 cannot call (the whole mechanism list, KWP as
//!   0x210B) goes through `strongroom-pkcs11-raw`, which holds the backend's only unsafe code.
//! - BYOK: root key material wrapped under an RSA-OAEP import key made in the token.
//! - Metrics (recoveries, reconnects, retries, sessions) through the `metrics` facade: see
//!   [`telemetry`].
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
pub mod telemetry;

pub use backend::{Pkcs11Backend, PoolStats};
pub use config::{PinSource, Pkcs11Config, TokenSelector};
