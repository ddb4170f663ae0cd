//! The configuration file `strongroom.conf` in the data directory, written by `strongroom init`:
//! TOML, read through `serde` with unknown keys refused (a typo must not silently change the
//! backend). It never holds a PIN: only where to find one.
//!
//! ```toml
//! # strongroom configuration, written by `strongroom init`.
//! format = 2
//! backend = "pkcs11"                 # or "soft"
//! primary-root = "service"           # protects the audit log
//! cache-ttl-secs = 300               # how long an outside revocation takes to bite
//! destruction-delay-secs = 604800    # default waiting period of a scheduled destruction
//! audit-data-access = false          # also audit every record read/write/delete
//!
//! [pkcs11]                           # only with backend = "pkcs11"
//! module = "/usr/lib/softhsm/libsofthsm2.so"   # an absolute path
//! token = "my-token"                 # or slot = 3
//! pin-env = "STRONGROOM_PIN"         # or pin-file = "/run/secrets/pin"
//! namespace = "strongroom-3f9a01bc"  # labels in the token; default "strongroom"
//!
//! [storage]                          # absent: sled in the data directory
//! engine = "postgres"                # or "sled"
//! url-env = "STRONGROOM_PG_URL"      # or url-file = "/run/secrets/pg-url" (never the URL)
//! schema = "strongroom"              # the PostgreSQL schema holding the store's tables
//! pool-size = 8                      # connections
//! fleet = true                       # replicas share the schema (default false: one process)
//! fleet-poll-ms = 1000               # how often a replica checks for another's key change
//! ```
//!
//! `format`, `backend` and `primary-root` are required; the rest have the defaults shown. Files
//! written before the TOML format (format 1: `key = value` lines, values unquoted) are still
//! read as they were (`config/legacy.rs`); `Config::to_text` always writes TOML.

mod legacy;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strongroom_core::RootKeyName;
use strongroom_pkcs11::objects::{DEFAULT_NAMESPACE, check_namespace};
use strongroom_pkcs11::{PinSource, Pkcs11Config, TokenSelector};

/// File name of the configuration in the data directory.
pub const CONFIG_FILE: &str = "strongroom.conf";
/// The format `to_text` writes (TOML). Format 1 is the line format before it (`legacy`).
const FORMAT: u32 = 2;
/// File name, in the data directory, of the PKCS#11 refused-PIN state (a salted fingerprint
/// per token serial; never the PIN).
pub const PIN_STATE_FILE: &str = "pkcs11-refused-pins";
const DEFAULT_CACHE_TTL_SECS: u64 = 300;
const DEFAULT_DESTRUCTION_DELAY_SECS: u64 = 7 * 86_400;

/// Which backend a store uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendConfig {
    /// The embedded software backend (key file in the data directory).
    Soft,
    /// A PKCS#11 token.
    Pkcs11 {
        /// Module path.
        module: PathBuf,
        /// The token.
        token: TokenSelector,
        /// Where the PIN comes from.
        pin: PinSource,
        /// The namespace of the store's labels in the token ([`Pkcs11Config::namespace`]).
        namespace: String,
    },
}

/// Where the PostgreSQL URL comes from (it may hold a password: never the file itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlSource {
    /// An environment variable.
    Env(String),
    /// The first line of a file.
    File(PathBuf),
}

/// Which storage engine a store uses.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum StorageConfig {
    /// sled in the data directory (the embedded default).
    #[default]
    Sled,
    /// A PostgreSQL database.
    Postgres {
        /// Where the URL comes from.
        url: UrlSource,
        /// The PostgreSQL schema holding the store's tables.
        schema: String,
        /// Connections in the pool.
        pool_size: usize,
        /// `Some(poll)`: replicas of a fleet share the schema (no exclusive lock), each
        /// checking every `poll` whether another changed the key states
        /// ([`strongroom_store::StoreOptions::fleet_poll`]); `None`: one process at a time.
        fleet: Option<Duration>,
    },
}

/// The default fleet poll interval.
pub const DEFAULT_FLEET_POLL: Duration = Duration::from_secs(1);

/// The default PostgreSQL schema.
pub const DEFAULT_PG_SCHEMA: &str = "strongroom";
/// The default connection pool size.
pub const DEFAULT_PG_POOL: usize = 8;

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The backend.
    pub backend: BackendConfig,
    /// The storage engine.
    pub storage: StorageConfig,
    /// The store's primary root key.
    pub primary_root: RootKeyName,
    /// Cache TTL.
    pub cache_ttl: Duration,
    /// Default waiting period of a scheduled destruction.
    pub destruction_delay: Duration,
    /// Audit data access too.
    pub audit_data_access: bool,
}

/// A configuration file that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line, 0 for the whole file.
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

impl std::error::Error for ConfigError {}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{CONFIG_FILE}: {}", self.problem)
        } else {
            write!(f, "{CONFIG_FILE} line {}: {}", self.line, self.problem)
        }
    }
}

/// The TOML file, as `serde` reads and writes it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    format: u32,
    backend: String,
    primary_root: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_ttl_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    destruction_delay_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    audit_data_access: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pkcs11: Option<Pkcs11Table>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    storage: Option<StorageTable>,
}

/// The `[storage]` table.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct StorageTable {
    engine: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schema: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pool_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fleet: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fleet_poll_ms: Option<u64>,
}

/// The `[pkcs11]` table.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Pkcs11Table {
    module: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slot: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pin_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pin_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
}

/// The 1-based line of the first line of `text` that sets `key` (0 if none): where a value
/// that parsed as TOML but is not acceptable is.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

/// The 1-based line of a byte offset.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Config {
    /// Serializes as TOML (the format in the module docs).
    #[must_use]
    pub fn to_text(&self) -> String {
        let pkcs11 = match &self.backend {
            BackendConfig::Soft => None,
            BackendConfig::Pkcs11 {
                module,
                token,
                pin,
                namespace,
            } => Some(Pkcs11Table {
                module: module.to_string_lossy().into_owned(),
                token: match token {
                    TokenSelector::Label(l) => Some(l.clone()),
                    TokenSelector::Slot(_) => None,
                },
                slot: match token {
                    TokenSelector::Slot(n) => Some(*n),
                    TokenSelector::Label(_) => None,
                },
                pin_env: match pin {
                    PinSource::Env(v) => Some(v.clone()),
                    PinSource::File(_) => None,
                },
                pin_file: match pin {
                    PinSource::File(p) => Some(p.to_string_lossy().into_owned()),
                    PinSource::Env(_) => None,
                },
                namespace: Some(namespace.clone()),
            }),
        };
        let file = File {
            format: FORMAT,
            backend: match self.backend {
                BackendConfig::Soft => "soft".into(),
                BackendConfig::Pkcs11 { .. } => "pkcs11".into(),
            },
            primary_root: self.primary_root.to_string(),
            cache_ttl_secs: Some(self.cache_ttl.as_secs()),
            destruction_delay_secs: Some(self.destruction_delay.as_secs()),
            audit_data_access: Some(self.audit_data_access),
            pkcs11,
            storage: match &self.storage {
                StorageConfig::Sled => None,
                StorageConfig::Postgres {
                    url,
                    schema,
                    pool_size,
                    fleet,
                } => Some(StorageTable {
                    engine: "postgres".into(),
                    url_env: match url {
                        UrlSource::Env(v) => Some(v.clone()),
                        UrlSource::File(_) => None,
                    },
                    url_file: match url {
                        UrlSource::File(p) => Some(p.to_string_lossy().into_owned()),
                        UrlSource::Env(_) => None,
                    },
                    schema: Some(schema.clone()),
                    pool_size: Some(*pool_size),
                    fleet: fleet.map(|_| true),
                    fleet_poll_ms: fleet.map(|p| u64::try_from(p.as_millis()).unwrap_or(u64::MAX)),
                }),
            },
        };
        let body = toml::to_string(&file).unwrap_or_else(|e| {
            // Only a number past TOML's range (2^63 - 1 seconds) gets here; `parse` refuses
            // the result, so `init` refuses the configuration.
            format!("# not representable in TOML: {e}\n")
        });
        format!(
            "# strongroom configuration, written by `strongroom init`.\n# It never holds a PIN, only where to find one.\n{body}"
        )
    }

    /// Parses: TOML (format 2, or a TOML file that says format 1), or a format-1 file of
    /// `key = value` lines as strongroom wrote before (`config/legacy.rs`).
    ///
    /// # Errors
    /// [`ConfigError`] naming the line (where known) and the problem.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let file: File = match toml::from_str(text) {
            Ok(f) => f,
            // A format-1 file is not TOML (its values are unquoted).
            Err(_) if legacy::is_format_1(text) => return legacy::parse(text),
            Err(e) => {
                return Err(ConfigError {
                    line: e.span().map_or(0, |s| line_at(text, s.start)),
                    problem: e.message().trim_end().to_owned(),
                });
            }
        };
        Self::from_file(text, file)
    }

    /// The configuration a TOML file holds, every value checked.
    fn from_file(text: &str, f: File) -> Result<Self, ConfigError> {
        let err = |key: &str, problem: String| ConfigError {
            line: line_of(text, key),
            problem,
        };
        if f.format != FORMAT && f.format != 1 {
            return Err(err(
                "format",
                format!(
                    "format {} is not supported (this strongroom reads formats 1 and 2); upgrade strongroom",
                    f.format
                ),
            ));
        }
        let nonempty = |key: &str, v: String| {
            if v.is_empty() {
                Err(err(key, format!("pkcs11.{key} is empty")))
            } else {
                Ok(v)
            }
        };
        let backend = match (f.backend.as_str(), f.pkcs11) {
            ("soft", None) => BackendConfig::Soft,
            ("soft", Some(_)) => {
                return Err(err(
                    "module",
                    "a [pkcs11] table is set but the backend is soft".into(),
                ));
            }
            ("pkcs11", None) => {
                return Err(err(
                    "backend",
                    "the backend is pkcs11 but the [pkcs11] table (module, token, pin-env) is missing".into(),
                ));
            }
            ("pkcs11", Some(p)) => {
                let module = PathBuf::from(nonempty("module", p.module)?);
                if !module.is_absolute() {
                    // A relative module path loads whatever library is at that name in the
                    // directory strongroom happens to run in.
                    return Err(err(
                        "module",
                        format!(
                            "pkcs11.module must be an absolute path, found {:?}",
                            module.display().to_string()
                        ),
                    ));
                }
                let token = match (p.token, p.slot) {
                    (Some(l), None) => TokenSelector::Label(nonempty("token", l)?),
                    (None, Some(s)) => TokenSelector::Slot(s),
                    (Some(_), Some(_)) => {
                        return Err(err("slot", "set pkcs11 token or slot, not both".into()));
                    }
                    (None, None) => {
                        return Err(err(
                            "module",
                            "pkcs11.token (or pkcs11.slot) is missing".into(),
                        ));
                    }
                };
                let pin = match (p.pin_env, p.pin_file) {
                    (Some(v), None) => PinSource::Env(nonempty("pin-env", v)?),
                    (None, Some(f)) => PinSource::File(PathBuf::from(nonempty("pin-file", f)?)),
                    (Some(_), Some(_)) => {
                        return Err(err(
                            "pin-file",
                            "set pkcs11 pin-env or pin-file, not both".into(),
                        ));
                    }
                    (None, None) => {
                        return Err(err(
                            "module",
                            "pkcs11.pin-env (or pkcs11.pin-file) is missing".into(),
                        ));
                    }
                };
                let namespace = match p.namespace {
                    None => DEFAULT_NAMESPACE.to_owned(),
                    Some(n) => {
                        check_namespace(&n).map_err(|e| err("namespace", e))?;
                        n
                    }
                };
                BackendConfig::Pkcs11 {
                    module,
                    token,
                    pin,
                    namespace,
                }
            }
            (other, _) => {
                return Err(err(
                    "backend",
                    format!("backend must be \"soft\" or \"pkcs11\", found {other:?}"),
                ));
            }
        };
        let primary_root =
            RootKeyName::new(f.primary_root).map_err(|e| err("primary-root", e.to_string()))?;
        let storage = match f.storage {
            None => StorageConfig::Sled,
            Some(t) if t.engine == "sled" => {
                if t.url_env.is_some()
                    || t.url_file.is_some()
                    || t.schema.is_some()
                    || t.pool_size.is_some()
                    || t.fleet.is_some()
                    || t.fleet_poll_ms.is_some()
                {
                    return Err(err(
                        "engine",
                        "storage.url-env, url-file, schema, pool-size, fleet and fleet-poll-ms apply to engine = \"postgres\" only (a sled store belongs to one process)".into(),
                    ));
                }
                StorageConfig::Sled
            }
            Some(t) if t.engine == "postgres" => {
                let url = match (t.url_env, t.url_file) {
                    (Some(v), None) if !v.is_empty() => UrlSource::Env(v),
                    (None, Some(f)) if !f.is_empty() => {
                        let p = PathBuf::from(f);
                        if !p.is_absolute() {
                            return Err(err(
                                "url-file",
                                "storage.url-file must be an absolute path".into(),
                            ));
                        }
                        UrlSource::File(p)
                    }
                    (Some(_), Some(_)) => {
                        return Err(err(
                            "url-file",
                            "set storage url-env or url-file, not both".into(),
                        ));
                    }
                    _ => {
                        return Err(err(
                            "engine",
                            "engine = \"postgres\" needs storage.url-env (the variable holding the URL) or storage.url-file (a file holding it); the URL itself never goes in this file".into(),
                        ));
                    }
                };
                let schema = t.schema.unwrap_or_else(|| DEFAULT_PG_SCHEMA.to_owned());
                if strongroom_postgres::check_schema(&schema).is_err() {
                    return Err(err(
                        "schema",
                        format!(
                            "storage.schema {schema:?} is not allowed: lower-case letters, digits and _, starting with a letter or _ (not pg_)"
                        ),
                    ));
                }
                let pool_size = t.pool_size.unwrap_or(DEFAULT_PG_POOL);
                if pool_size == 0 || pool_size > 1000 {
                    return Err(err(
                        "pool-size",
                        format!("storage.pool-size must be 1 to 1000, found {pool_size}"),
                    ));
                }
                let fleet = match (t.fleet, t.fleet_poll_ms) {
                    (Some(true), ms) => {
                        let poll = ms.map_or(DEFAULT_FLEET_POLL, Duration::from_millis);
                        if poll > Duration::from_secs(3600) {
                            return Err(err(
                                "fleet-poll-ms",
                                format!(
                                    "storage.fleet-poll-ms is the bound on how long a revocation takes to reach every replica: {} ms is over an hour; use 1000 (0: check before every operation)",
                                    poll.as_millis()
                                ),
                            ));
                        }
                        Some(poll)
                    }
                    (_, Some(_)) => {
                        return Err(err(
                            "fleet-poll-ms",
                            "storage.fleet-poll-ms applies to a fleet: set fleet = true too".into(),
                        ));
                    }
                    (Some(false) | None, None) => None,
                };
                StorageConfig::Postgres {
                    url,
                    schema,
                    pool_size,
                    fleet,
                }
            }
            Some(t) => {
                return Err(err(
                    "engine",
                    format!(
                        "storage.engine must be \"sled\" or \"postgres\", found {:?}",
                        t.engine
                    ),
                ));
            }
        };
        Ok(Self {
            backend,
            storage,
            primary_root,
            cache_ttl: Duration::from_secs(f.cache_ttl_secs.unwrap_or(DEFAULT_CACHE_TTL_SECS)),
            destruction_delay: Duration::from_secs(
                f.destruction_delay_secs
                    .unwrap_or(DEFAULT_DESTRUCTION_DELAY_SECS),
            ),
            audit_data_access: f.audit_data_access.unwrap_or(false),
        })
    }

    /// Reads `strongroom.conf` at `path`, refusing a file that its group or other users can
    /// write (it names the PKCS#11 module strongroom loads, i.e. code it runs, and where the
    /// PIN is), or that is not a regular file.
    ///
    /// # Errors
    /// The file's problem, or the I/O error.
    pub fn read_checked(path: &std::path::Path) -> Result<String, ConfigError> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| ConfigError {
            line: 0,
            problem: format!("cannot read {}: {e}", path.display()),
        })?;
        if !meta.is_file() {
            return Err(ConfigError {
                line: 0,
                problem: format!("{} is not a regular file", path.display()),
            });
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o022 != 0 {
            return Err(ConfigError {
                line: 0,
                problem: format!(
                    "{} has mode {mode:o}: its group or other users can change it, and with it the PKCS#11 module strongroom loads; `chmod go-w` it (and check its contents)",
                    path.display()
                ),
            });
        }
        std::fs::read_to_string(path).map_err(|e| ConfigError {
            line: 0,
            problem: format!("cannot read {}: {e}", path.display()),
        })
    }

    /// The PKCS#11 backend configuration of the store in `data`, if this is a PKCS#11 store:
    /// as [`Self::pkcs11`], with refused PINs remembered across processes in
    /// `data/`[`PIN_STATE_FILE`] ([`Pkcs11Config::pin_state`]).
    #[must_use]
    pub fn pkcs11_in(&self, data: &std::path::Path) -> Option<Pkcs11Config> {
        self.pkcs11().map(|c| Pkcs11Config {
            pin_state: Some(data.join(PIN_STATE_FILE)),
            ..c
        })
    }

    /// The PKCS#11 backend configuration, if this is a PKCS#11 store.
    #[must_use]
    pub fn pkcs11(&self) -> Option<Pkcs11Config> {
        match &self.backend {
            BackendConfig::Pkcs11 {
                module,
                token,
                pin,
                namespace,
            } => Some(Pkcs11Config {
                namespace: namespace.clone(),
                ..Pkcs11Config::new(module.clone(), token.clone(), pin.clone())
            }),
            BackendConfig::Soft => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Config {
        Config {
            backend: BackendConfig::Pkcs11 {
                module: "/usr/lib/softhsm/libsofthsm2.so".into(),
                token: TokenSelector::Label("my token".into()),
                pin: PinSource::Env("STRONGROOM_PIN".into()),
                namespace: "strongroom-0123abcd".into(),
            },
            storage: StorageConfig::Sled,
            primary_root: RootKeyName::new("service").unwrap(),
            cache_ttl: Duration::from_secs(60),
            destruction_delay: Duration::from_secs(3600),
            audit_data_access: true,
        }
    }

    #[test]
    fn round_trip() {
        let c = sample();
        assert_eq!(Config::parse(&c.to_text()).unwrap(), c);
        let soft = Config {
            backend: BackendConfig::Soft,
            ..sample()
        };
        assert_eq!(Config::parse(&soft.to_text()).unwrap(), soft);
        let slot = Config {
            backend: BackendConfig::Pkcs11 {
                module: "/m.so".into(),
                token: TokenSelector::Slot(7),
                pin: PinSource::File("/p".into()),
                namespace: DEFAULT_NAMESPACE.into(),
            },
            ..sample()
        };
        assert_eq!(Config::parse(&slot.to_text()).unwrap(), slot);
    }

    #[test]
    fn fleet_settings_round_trip_and_refusals() {
        let base = "format = 2\nbackend = \"soft\"\nprimary-root = \"service\"\n[storage]\nengine = \"postgres\"\nurl-env = \"PG\"\n";
        let fleet = |c: &Config| match &c.storage {
            StorageConfig::Postgres { fleet, .. } => *fleet,
            StorageConfig::Sled => panic!("not postgres"),
        };
        // Alone by default; `fleet = true` polls every second unless told otherwise.
        assert_eq!(fleet(&Config::parse(base).unwrap()), None);
        let c = Config::parse(&format!("{base}fleet = true\n")).unwrap();
        assert_eq!(fleet(&c), Some(DEFAULT_FLEET_POLL));
        let c = Config::parse(&format!("{base}fleet = true\nfleet-poll-ms = 250\n")).unwrap();
        assert_eq!(fleet(&c), Some(Duration::from_millis(250)));
        assert_eq!(Config::parse(&c.to_text()).unwrap(), c);
        assert_eq!(
            fleet(&Config::parse(&format!("{base}fleet = false\n")).unwrap()),
            None
        );
        for (bad, want) in [
            (format!("{base}fleet-poll-ms = 250\n"), "set fleet = true too"),
            (
                format!("{base}fleet = true\nfleet-poll-ms = 3600001\n"),
                "over an hour",
            ),
            (
                "format = 2\nbackend = \"soft\"\nprimary-root = \"service\"\n[storage]\nengine = \"sled\"\nfleet = true\n".into(),
                "belongs to one process",
            ),
        ] {
            let e = Config::parse(&bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    /// What `strongroom init` wrote for [`sample`] before the TOML format.
    const LEGACY: &str = "# strongroom configuration, written by `strongroom init`.
# It never holds a PIN, only where to find one.
format = 1
backend = pkcs11
pkcs11.module = /usr/lib/softhsm/libsofthsm2.so
pkcs11.token = my token
pkcs11.pin-env = STRONGROOM_PIN
pkcs11.namespace = strongroom-0123abcd
primary-root = service
cache-ttl-secs = 60
destruction-delay-secs = 3600
audit-data-access = true
";

    #[test]
    fn writes_toml_that_serde_reads_back() {
        let text = sample().to_text();
        assert!(text.contains("format = 2\n"), "{text}");
        assert!(text.contains("backend = \"pkcs11\"\n"), "{text}");
        assert!(text.contains("[pkcs11]\n"), "{text}");
        assert!(text.contains("token = \"my token\"\n"), "{text}");
        // Values TOML quotes are kept exactly, spaces and line breaks too.
        let odd = Config {
            backend: BackendConfig::Pkcs11 {
                module: "/opt/my hsm/lib.so".into(),
                token: TokenSelector::Label(" label with \"quotes\"\nand a break ".into()),
                pin: PinSource::File("/run/pin # not a comment".into()),
                namespace: DEFAULT_NAMESPACE.into(),
            },
            ..sample()
        };
        assert_eq!(Config::parse(&odd.to_text()).unwrap(), odd);
    }

    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").unwrap() + 8;
        let example = &readme[start..];
        let example = &example[..example.find("```").unwrap()];
        let c = Config::parse(example).unwrap_or_else(|e| panic!("{e}\n{example}"));
        assert_eq!(c.pkcs11().unwrap().namespace, "strongroom-1a927ee9");
    }

    #[test]
    fn old_line_format_files_still_read_as_before() {
        assert_eq!(Config::parse(LEGACY).unwrap(), sample());
        let soft = "format = 1\nbackend = soft\nprimary-root = service\n";
        let c = Config::parse(soft).unwrap();
        assert_eq!(c.backend, BackendConfig::Soft);
        assert_eq!(c.cache_ttl, Duration::from_secs(300));
        // And what is read is written back as TOML, which reads the same.
        assert_eq!(Config::parse(&c.to_text()).unwrap(), c);
    }

    #[test]
    fn hand_written_toml_with_comments_and_dotted_keys() {
        let text = r#"
format = 2   # the TOML format
backend = "soft"   # the issue's example
primary-root = "service"
"#;
        assert_eq!(Config::parse(text).unwrap().backend, BackendConfig::Soft);
        let dotted = r#"format = 2
backend = "pkcs11"
primary-root = "service"
pkcs11.module = "/m.so"
pkcs11.slot = 3
pkcs11.pin-file = "/p"
"#;
        let c = Config::parse(dotted).unwrap();
        assert_eq!(c.pkcs11().unwrap().namespace, DEFAULT_NAMESPACE);
        assert_eq!(
            c.backend,
            BackendConfig::Pkcs11 {
                module: "/m.so".into(),
                token: TokenSelector::Slot(3),
                pin: PinSource::File("/p".into()),
                namespace: DEFAULT_NAMESPACE.into(),
            }
        );
    }

    #[test]
    fn toml_errors_name_the_line() {
        let good = sample().to_text();
        for (bad, want, line) in [
            (
                good.replace("backend = \"pkcs11\"", "backend = \"hsm\""),
                "backend must be \"soft\" or \"pkcs11\"",
                4,
            ),
            (
                good.replace("format = 2", "format = 3"),
                "upgrade strongroom",
                3,
            ),
            (
                format!("{good}backnd = \"soft\"\n"),
                "unknown field `backnd`",
                0,
            ),
            (
                good.replace("format = 2\n", "format = 2\nbackend = \"soft\"\n"),
                "duplicate key",
                0,
            ),
            (
                good.replace("pin-env = \"STRONGROOM_PIN\"\n", ""),
                "pin-env (or pkcs11.pin-file) is missing",
                0,
            ),
            (
                good.replace("cache-ttl-secs = 60", "cache-ttl-secs = \"soon\""),
                "invalid type",
                0,
            ),
            (
                good.replace("primary-root = \"service\"", "primary-root = \"bad name\""),
                "invalid root key name",
                5,
            ),
            (format!("{good}just words\n"), "", 0),
            (
                good.replace("strongroom-0123abcd", "a/b"),
                "namespace \"a/b\" may hold only",
                0,
            ),
            (
                good.replace("backend = \"pkcs11\"", "backend = \"soft\""),
                "[pkcs11] table is set but the backend is soft",
                0,
            ),
            (
                good.replace("token = \"my token\"", "token = \"\""),
                "pkcs11.token is empty",
                0,
            ),
            (
                good.replace("/usr/lib/softhsm/libsofthsm2.so", "lib/softhsm2.so"),
                "absolute",
                0,
            ),
        ] {
            let e = Config::parse(&bad).unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
            assert!(e.line > 0, "{want}: {e} has no line");
            if line > 0 {
                assert_eq!(e.line, line, "{want}: {e}");
            }
        }
        assert!(
            Config::parse("")
                .unwrap_err()
                .to_string()
                .contains("missing field `format`")
        );
    }

    #[test]
    fn legacy_errors_name_the_line() {
        let good = LEGACY;
        for (bad, want) in [
            (
                good.replace("backend = pkcs11", "backend = hsm"),
                "backend must be soft or pkcs11",
            ),
            (format!("{good}backnd = soft\n"), "unknown key \"backnd\""),
            (format!("{good}backend = soft\n"), "set twice"),
            (
                good.replace("pkcs11.pin-env = STRONGROOM_PIN\n", ""),
                "pin-env (or pkcs11.pin-file) is missing",
            ),
            (
                good.replace("cache-ttl-secs = 60", "cache-ttl-secs = soon"),
                "whole number",
            ),
            (
                good.replace("primary-root = service", "primary-root = bad name"),
                "invalid root key name",
            ),
            (format!("{good}just words\n"), "expected `key = value`"),
            (
                good.replace("strongroom-0123abcd", "a/b"),
                "namespace \"a/b\" may hold only",
            ),
            (
                good.replace("backend = pkcs11", "backend = soft"),
                "pkcs11.module is set but the backend is soft",
            ),
        ] {
            let e = Config::parse(&bad).unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn a_hand_written_pkcs11_config_without_a_namespace_gets_the_default() {
        let text = sample()
            .to_text()
            .replace("namespace = \"strongroom-0123abcd\"\n", "");
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.pkcs11().unwrap().namespace, DEFAULT_NAMESPACE);
        let c =
            Config::parse(&LEGACY.replace("pkcs11.namespace = strongroom-0123abcd\n", "")).unwrap();
        assert_eq!(c.pkcs11().unwrap().namespace, DEFAULT_NAMESPACE);
        assert_eq!(
            sample().pkcs11().unwrap().namespace,
            "strongroom-0123abcd",
            "the configured namespace reaches the backend"
        );
    }

    #[test]
    fn pkcs11_in_keeps_refused_pins_in_the_data_directory() {
        let c = sample()
            .pkcs11_in(std::path::Path::new("/srv/store"))
            .unwrap();
        assert_eq!(
            c.pin_state.as_deref(),
            Some(std::path::Path::new("/srv/store/pkcs11-refused-pins"))
        );
        assert_eq!(c.namespace, "strongroom-0123abcd");
        assert_eq!(sample().pkcs11().unwrap().pin_state, None);
    }

    #[test]
    fn relative_module_paths_are_refused() {
        let text = "format = 1\nbackend = pkcs11\nprimary-root = service\npkcs11.module = lib/softhsm2.so\npkcs11.token = t\npkcs11.pin-env = P\n";
        let e = Config::parse(text).unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.problem.contains("absolute"), "{e}");
        let text = "format = 2\nbackend = \"pkcs11\"\nprimary-root = \"service\"\n[pkcs11]\nmodule = \"lib/softhsm2.so\"\ntoken = \"t\"\npin-env = \"P\"\n";
        let e = Config::parse(text).unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert!(e.problem.contains("absolute"), "{e}");
    }

    #[test]
    fn config_files_others_can_write_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CONFIG_FILE);
        std::fs::write(&p, sample().to_text()).unwrap();
        for ok in [0o600, 0o644, 0o640, 0o400] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(ok)).unwrap();
            let text = Config::read_checked(&p).unwrap_or_else(|e| panic!("{ok:o}: {e}"));
            assert_eq!(Config::parse(&text).unwrap(), sample());
        }
        for bad in [0o620, 0o602, 0o666, 0o660] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(bad)).unwrap();
            let e = Config::read_checked(&p).unwrap_err();
            assert!(e.problem.contains("chmod go-w"), "{bad:o}: {e}");
        }
        assert!(
            Config::read_checked(dir.path())
                .unwrap_err()
                .problem
                .contains("not a regular file")
        );
    }

    #[test]
    fn never_holds_a_pin() {
        assert!(!sample().to_text().to_lowercase().contains("pin ="));
    }
}
