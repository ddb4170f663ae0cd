//! The client's errors as engine errors: a kind the store and its callers act on (retry a
//! conflict, wait out an unavailable server), plain words, and what to do next.

use strongroom_store::{EngineError, EngineErrorKind};
use tokio_postgres::error::SqlState;

/// A configuration mistake (bad URL, TLS files, schema name).
pub(crate) fn config_error(message: impl Into<String>) -> EngineError {
    EngineError::new(EngineErrorKind::Refused, message)
}

/// A URL parse error's text. The client's parse errors name the option, never its value, so
/// the password cannot appear; tested in `config.rs`.
pub(crate) fn redacted_parse_error(e: &tokio_postgres::Error) -> String {
    e.to_string()
}

/// True for SQLSTATEs that mean "run the transaction again": serialization failure and
/// deadlock.
pub(crate) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// The client's error, while doing `what`, as an engine error.
pub(crate) fn pg_error(what: &str, e: &tokio_postgres::Error) -> EngineError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let (kind, hint) = match code {
            "40001" | "40P01" => (
                EngineErrorKind::Conflict,
                "; the transaction lost a conflict with another one too many times in a row: retry it",
            ),
            // Connection exceptions, the server shutting down or starting.
            c if c.starts_with("08") || c == "57P01" || c == "57P02" || c == "57P03" => (
                EngineErrorKind::Unavailable,
                "; the database server is restarting or unreachable: retry in a moment (nothing this call did was committed)",
            ),
            "53100" => (
                EngineErrorKind::Io(std::io::ErrorKind::StorageFull),
                "; the database server's disk is full: free space on it; everything acknowledged before is intact",
            ),
            c if c.starts_with("53") => (
                EngineErrorKind::Unavailable,
                "; the database server is out of resources (connections, memory): retry later, or lower the pool size",
            ),
            "57014" => (
                EngineErrorKind::Unavailable,
                "; the statement timed out: the database is overloaded or a lock is held (a compaction?); retry",
            ),
            "55P03" => (
                EngineErrorKind::Conflict,
                "; a lock could not be taken in time (a compaction or another replica's long transaction): retry",
            ),
            c if c.starts_with("28") || c == "42501" => (
                EngineErrorKind::Refused,
                "; the database refused strongroom's user: check the user, its password and its privileges",
            ),
            c if c.starts_with("XX") => (
                EngineErrorKind::Corruption,
                "; the database server reports damage: see its log, and restore from a backup if needed",
            ),
            c if c.starts_with("42") || c.starts_with("3F") => (
                EngineErrorKind::Refused,
                "; the store's tables are not what this build expects: run `strongroom doctor`",
            ),
            _ => (EngineErrorKind::Other, ""),
        };
        // The server's message never holds values (strongroom binds them as parameters).
        return EngineError::new(
            kind,
            format!(
                "PostgreSQL refused {what}: {} (SQLSTATE {code})",
                db.message()
            ),
        )
        .with_hint(hint);
    }
    let chain = causes(e);
    if e.to_string().contains("TLS handshake") {
        return EngineError::new(
            EngineErrorKind::Refused,
            format!("the TLS handshake with PostgreSQL failed while {what}: {chain}"),
        )
        .with_hint("; check sslrootcert (the CA that signed the server's certificate), the host name in the URL (it must be in the certificate), and sslcert/sslkey if the server asks for a client certificate");
    }
    if e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()) {
        return EngineError::new(
            EngineErrorKind::Unavailable,
            format!("the connection to PostgreSQL broke while {what}: {chain}"),
        )
        .with_hint("; the database server is restarting or unreachable: retry in a moment (the engine reconnects by itself)");
    }
    EngineError::new(
        EngineErrorKind::Other,
        format!("PostgreSQL client error while {what}: {chain}"),
    )
}

/// The error and its causes, each once (the client's own Display omits them: "error
/// performing TLS handshake" says nothing of the certificate it did not like).
fn causes(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(s) = next {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        next = s.source();
    }
    text
}

/// A call that did not finish in time.
pub(crate) fn timed_out(what: &str, after: std::time::Duration) -> EngineError {
    EngineError::new(
        EngineErrorKind::Unavailable,
        format!("PostgreSQL did not answer within {after:?} while {what}"),
    )
    .with_hint("; the database server is overloaded, unreachable or restarting: retry in a moment")
}

/// The engine's background runtime is gone (the engine is being dropped).
pub(crate) fn engine_closed() -> EngineError {
    EngineError::new(
        EngineErrorKind::Unavailable,
        "the PostgreSQL engine is shutting down",
    )
}
