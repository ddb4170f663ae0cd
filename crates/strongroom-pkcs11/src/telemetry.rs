//! Metrics of the PKCS#11 backend, through the [`metrics`] facade (the embedding service
//! installs the exporter; the store's own metrics are in `strongroom_store::telemetry`).
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `strongroom_pkcs11_failed_attempts_total` | counter | `failure` | attempts of a call that failed with a failure the backend recovers from (each followed by a retry, or by the call's error when it was the last attempt) |
//! | `strongroom_pkcs11_reinitializations_total` | counter | none | recoveries of a module's library (`C_Finalize` + `C_Initialize`, once for every backend on it) that succeeded |
//! | `strongroom_pkcs11_recovery_failures_total` | counter | none | recoveries whose `C_Initialize` failed (the device is still down; the next call tries again) |
//! | `strongroom_pkcs11_reconnects_total` | counter | none | times a backend found its token again after a recovery, with a new session pool |
//! | `strongroom_pkcs11_sessions_opened_total` | counter | none | sessions opened (a pool opens them on demand, and again after a reconnect) |
//!
//! `failure` is the class of the PKCS#11 return code: `session_lost` (a closed or invalid
//! session), `device_lost` (a device error, a removed device or token, an uninitialized
//! library), `logged_out`, `stale_handle` (a key handle the token no longer knows). The calls
//! that finally fail are counted by the store (`strongroom_backend_errors_total`, `kind=device`).
//! No label holds a token label, a PIN, a key label or key material.
//!
//! The counters match [`PoolStats`](crate::PoolStats): `reconnects_total` its
//! `reinitializations` and `sessions_opened_total` its `sessions_opened`, summed over backends.

/// Counter: failed attempts, by `failure`.
pub const FAILED_ATTEMPTS: &str = "strongroom_pkcs11_failed_attempts_total";
/// Counter: successful recoveries of a library.
pub const REINITIALIZATIONS: &str = "strongroom_pkcs11_reinitializations_total";
/// Counter: recoveries whose re-initialize failed.
pub const RECOVERY_FAILURES: &str = "strongroom_pkcs11_recovery_failures_total";
/// Counter: reconnects of a backend after a recovery.
pub const RECONNECTS: &str = "strongroom_pkcs11_reconnects_total";
/// Counter: sessions opened.
pub const SESSIONS_OPENED: &str = "strongroom_pkcs11_sessions_opened_total";

/// Describes these metrics to the installed recorder (optional).
pub fn describe() {
    metrics::describe_counter!(
        FAILED_ATTEMPTS,
        "PKCS#11 call attempts that failed and are recovered from, by class of failure"
    );
    metrics::describe_counter!(
        REINITIALIZATIONS,
        "PKCS#11 library recoveries that succeeded"
    );
    metrics::describe_counter!(RECOVERY_FAILURES, "PKCS#11 library recoveries that failed");
    metrics::describe_counter!(
        RECONNECTS,
        "Reconnects of a backend to its token after a recovery"
    );
    metrics::describe_counter!(SESSIONS_OPENED, "PKCS#11 sessions opened");
}
