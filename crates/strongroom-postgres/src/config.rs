//! Where the database is and how to reach it: the connection URL (a secret: it may hold the
//! password), the TLS settings, the schema and the pool.
//!
//! The URL is a libpq URL (`postgres://user:password@host:port/database?param=value`) or a
//! libpq key/value string (`host=... user=... dbname=...`). strongroom reads the TLS parameters
//! itself (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) and hands the rest to the client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::error::config_error;
use strongroom_store::EngineError;

/// How the connection is protected (libpq's `sslmode`, the modes strongroom supports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, without checking its certificate (libpq's default).
    Prefer,
    /// TLS, without checking the server's certificate (protects against eavesdropping only).
    Require,
    /// TLS, the server's certificate checked against the root certificate and its name against
    /// the host connected to: what a deployment should use.
    VerifyFull,
}

impl SslMode {
    /// Parses libpq's spelling.
    ///
    /// # Errors
    /// An unknown or unsupported mode, saying which are supported.
    pub fn parse(s: &str) -> Result<Self, EngineError> {
        match s {
            "disable" => Ok(Self::Disable),
            "prefer" | "allow" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-full" => Ok(Self::VerifyFull),
            "verify-ca" => Err(config_error(
                "sslmode=verify-ca (the certificate checked but not the host name) is not supported: use sslmode=verify-full",
            )),
            other => Err(config_error(format!(
                "unknown sslmode {other:?}: use disable, prefer, require or verify-full"
            ))),
        }
    }

    /// libpq's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// TLS settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// The mode.
    pub mode: SslMode,
    /// The root certificate(s) (PEM) the server's certificate must chain to (`verify-full`).
    pub root_cert: Option<PathBuf>,
    /// A client certificate (PEM) for servers that authenticate clients by certificate.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            mode: SslMode::Prefer,
            root_cert: None,
            client_cert: None,
            client_key: None,
        }
    }
}

/// Everything the engine needs to reach its database.
///
/// Its `Debug` output never shows the URL (which may hold a password).
#[derive(Clone)]
pub struct PgConfig {
    /// The URL without the TLS parameters.
    url: SecretString,
    /// TLS.
    pub tls: TlsSettings,
    /// The PostgreSQL schema that holds the store's tables (one store per schema; created if
    /// missing). Lower-case letters, digits and `_`, starting with a letter or `_`.
    pub schema: String,
    /// Connections in the pool (each one server process).
    pub pool_size: usize,
    /// How long connecting, and any one statement, may take before the call fails as
    /// unavailable.
    pub timeout: Duration,
    /// How long a caller waits for a free connection when all are busy.
    pub checkout_timeout: Duration,
    /// How many times a transaction that lost a serialization conflict or a deadlock
    /// (SQLSTATE 40001, 40P01) is run again, with a growing random backoff, before the
    /// conflict is returned.
    pub max_retries: u32,
    /// One process at a time on the store (default): the engine holds a session advisory lock
    /// on a connection of its own while it is open (and takes it again after a server restart)
    /// and refuses to work without it. A store's in-memory state (its verified catalog, its
    /// key cache, its DEK counters) then assumes no other process changes the database under it.
    ///
    /// `false` is a replica of a fleet: the engine says it is shared
    /// ([`Engine::shared`](strongroom_store::Engine::shared)), and the store follows the
    /// key-state generation that every key change moves on (`strongroom_store`'s fleet
    /// module, `StoreOptions::fleet_poll`). Work in progress: DEK use counters, the audit
    /// anchor and job leases are not yet fleet-wide (see the README).
    pub exclusive: bool,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &"(redacted)")
            .field("tls", &self.tls)
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The default schema.
pub const DEFAULT_SCHEMA: &str = "strongroom";

impl PgConfig {
    /// A configuration from a URL; TLS parameters in it (`sslmode`, `sslrootcert`, `sslcert`,
    /// `sslkey`) are taken out and read by strongroom.
    ///
    /// # Errors
    /// A URL the client cannot parse, or unsupported TLS parameters. The error never repeats
    /// the URL.
    pub fn from_url(url: &str) -> Result<Self, EngineError> {
        let (rest, tls) = split_tls(url)?;
        // Parsed once now, so that a bad URL is reported here rather than at connect.
        rest.parse::<tokio_postgres::Config>().map_err(|e| {
            config_error(format!(
                "the PostgreSQL URL is not valid ({}): expected postgres://user:password@host:port/database or host=... user=... dbname=...",
                crate::error::redacted_parse_error(&e)
            ))
        })?;
        Ok(Self {
            url: SecretString::from(rest),
            tls,
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: 8,
            timeout: Duration::from_secs(30),
            checkout_timeout: Duration::from_secs(30),
            max_retries: 30,
            exclusive: true,
        })
    }

    /// The URL from the environment variable `var`.
    ///
    /// # Errors
    /// The variable is unset or not UTF-8, or as [`PgConfig::from_url`].
    pub fn from_env(var: &str) -> Result<Self, EngineError> {
        let url = std::env::var(var).map_err(|_| {
            config_error(format!(
                "the environment variable {var} should hold the PostgreSQL URL, and it is unset (or not UTF-8)"
            ))
        })?;
        let url = zeroize::Zeroizing::new(url);
        Self::from_url(url.trim())
    }

    /// The URL from the first line of the file at `path` (readable by the service's user only).
    ///
    /// # Errors
    /// The file cannot be read, or as [`PgConfig::from_url`].
    pub fn from_file(path: &Path) -> Result<Self, EngineError> {
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            config_error(format!(
                "the PostgreSQL URL file {} could not be read: {e}",
                path.display()
            ))
        })?);
        let line = text.lines().next().unwrap_or("").trim();
        if line.is_empty() {
            return Err(config_error(format!(
                "the PostgreSQL URL file {} is empty: its first line should be the URL",
                path.display()
            )));
        }
        Self::from_url(line)
    }

    /// The same configuration with another schema.
    ///
    /// # Errors
    /// A schema name that is not a plain lower-case identifier.
    pub fn with_schema(mut self, schema: &str) -> Result<Self, EngineError> {
        check_schema(schema)?;
        schema.clone_into(&mut self.schema);
        Ok(self)
    }

    /// The client's configuration (with the password).
    pub(crate) fn client_config(&self) -> Result<tokio_postgres::Config, EngineError> {
        let mut c: tokio_postgres::Config = self.url.expose_secret().parse().map_err(|e| {
            config_error(format!(
                "the PostgreSQL URL is not valid ({})",
                crate::error::redacted_parse_error(&e)
            ))
        })?;
        c.ssl_mode(match self.tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        if c.get_application_name().is_none() {
            c.application_name("strongroom");
        }
        c.connect_timeout(self.timeout);
        Ok(c)
    }

    /// Where the database is, without the password: `host:port/database as user`.
    #[must_use]
    pub fn location(&self) -> String {
        let Ok(c) = self.url.expose_secret().parse::<tokio_postgres::Config>() else {
            return "(unparsable URL)".into();
        };
        let host = c
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect::<Vec<_>>()
            .join(",");
        let port = c
            .get_ports()
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        // Shown in errors, `doctor`, and the audit log: a part that looks like anything but a
        // host, a database or a user name (a password with an unencoded `@` or `:` in it ends
        // up in the host or the user) is not shown.
        let plain = |s: &str| {
            if s.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'.' | b'-' | b'_' | b'/' | b',' | b'[' | b']')
            }) {
                s.to_owned()
            } else {
                "(not shown)".to_owned()
            }
        };
        format!(
            "{}:{}/{} as {} (schema {})",
            plain(&host),
            if port.is_empty() { "5432".into() } else { port },
            plain(c.get_dbname().unwrap_or("(default database)")),
            plain(c.get_user().unwrap_or("(default user)")),
            self.schema
        )
    }
}

/// Checks a schema name: lower-case letters, digits and `_`, starting with a letter or `_`, not
/// `pg_...`, at most 63 bytes (strongroom quotes it in every statement, so reserved words are
/// fine).
///
/// # Errors
/// A name outside those rules, saying them.
pub fn check_schema(s: &str) -> Result<(), EngineError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(config_error(format!(
            "the schema name {s:?} is not allowed: use lower-case letters, digits and _, starting with a letter or _ (not pg_), at most 63 characters"
        )))
    }
}

const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

fn set_tls(tls: &mut TlsSettings, key: &str, value: &str) -> Result<(), EngineError> {
    match key {
        "sslmode" => tls.mode = SslMode::parse(value)?,
        "sslrootcert" => tls.root_cert = Some(PathBuf::from(value)),
        "sslcert" => tls.client_cert = Some(PathBuf::from(value)),
        "sslkey" => tls.client_key = Some(PathBuf::from(value)),
        _ => {}
    }
    Ok(())
}

/// Splits the TLS parameters off a URL or key/value string.
fn split_tls(url: &str) -> Result<(String, TlsSettings), EngineError> {
    let mut tls = TlsSettings::default();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), tls));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if TLS_KEYS.contains(&k) {
                set_tls(&mut tls, k, &percent_decode(v)?)?;
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((rest, tls))
    } else {
        // key=value pairs separated by spaces (values with spaces are quoted: kept as they are
        // unless they are TLS keys, which strongroom reads unquoted).
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            match token.split_once('=') {
                Some((k, v)) if TLS_KEYS.contains(&k) => {
                    set_tls(&mut tls, k, v.trim_matches('\''))?;
                }
                _ => kept.push(token),
            }
        }
        Ok((kept.join(" "), tls))
    }
}

fn percent_decode(s: &str) -> Result<String, EngineError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| config_error("a TLS parameter in the URL has a bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| config_error("a TLS parameter in the URL is not UTF-8"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_a_url() {
        let c = PgConfig::from_url(
            "postgres://app:s3cret@db.example:5433/keys?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(c.tls.mode, SslMode::VerifyFull);
        assert_eq!(c.tls.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(
            c.url.expose_secret(),
            "postgres://app:s3cret@db.example:5433/keys?application_name=x"
        );
        assert_eq!(
            c.location(),
            "db.example:5433/keys as app (schema strongroom)"
        );
    }

    #[test]
    fn tls_parameters_are_taken_out_of_key_value_strings() {
        let c = PgConfig::from_url(
            "host=/run/pg user=app dbname=keys sslmode=require sslcert=/c.pem sslkey=/k.pem",
        )
        .unwrap();
        assert_eq!(c.tls.mode, SslMode::Require);
        assert_eq!(c.tls.client_cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(c.tls.client_key.as_deref(), Some(Path::new("/k.pem")));
        assert_eq!(c.url.expose_secret(), "host=/run/pg user=app dbname=keys");
    }

    #[test]
    fn neither_debug_nor_errors_show_the_password() {
        let c = PgConfig::from_url("postgres://app:hunter2pw@h/db").unwrap();
        assert!(!format!("{c:?}").contains("hunter2pw"));
        assert!(!c.location().contains("hunter2pw"));
        let e = PgConfig::from_url("postgres://app:hunter2pw@h:notaport/db").unwrap_err();
        assert!(!e.to_string().contains("hunter2pw"), "{e}");
        let e = PgConfig::from_url("postgres://app:hunter2pw@h/db?sslmode=verify-ca").unwrap_err();
        assert!(e.to_string().contains("verify-full"), "{e}");
        assert!(!e.to_string().contains("hunter2pw"), "{e}");
    }

    #[test]
    fn a_password_with_an_unencoded_at_sign_never_shows_in_the_location() {
        let c = PgConfig::from_url("postgres://app:hunter2@pw@h/db").unwrap();
        assert!(!c.location().contains("pw"), "{}", c.location());
        let c = PgConfig::from_url("postgres://app:p:w@h/db").unwrap();
        assert!(!c.location().contains("p:w"), "{}", c.location());
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["strongroom", "_x", "tenant_42"] {
            check_schema(ok).unwrap();
        }
        for bad in [
            "",
            "Upper",
            "1abc",
            "a-b",
            "a;drop",
            "pg_catalog",
            &"a".repeat(64),
        ] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }
}
