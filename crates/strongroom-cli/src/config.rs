//! The configuration file `strongroom.conf` in the data directory, written by `strongroom init`.
//!
//! One `key = value` per line; `#` starts a comment line; keys are fixed; unknown keys and
//! repeated keys are errors (a typo must not silently change the backend). It never holds a
//! PIN: only where to find one.
//!
//! ```text
//! # strongroom configuration, written by `strongroom init`
//! format = 1
//! backend = pkcs11
//! primary-root = service
//! pkcs11.module = /usr/lib/softhsm/libsofthsm2.so
//! pkcs11.token = my-token            (or pkcs11.slot = 3)
//! pkcs11.pin-env = STRONGROOM_PIN    (or pkcs11.pin-file = /run/secrets/pin)
//! pkcs11.namespace = strongroom-3f9a01bc   (labels in the token; default strongroom)
//! cache-ttl-secs = 300
//! destruction-delay-secs = 604800
//! audit-data-access = false
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use strongroom_core::RootKeyName;
use strongroom_pkcs11::objects::{DEFAULT_NAMESPACE, check_namespace};
use strongroom_pkcs11::{PinSource, Pkcs11Config, TokenSelector};

/// File name of the configuration in the data directory.
pub const CONFIG_FILE: &str = "strongroom.conf";
const FORMAT: u32 = 1;
/// File name, in the data directory, of the PKCS#11 refused-PIN state (a salted fingerprint
/// per token serial; never the PIN).
pub const PIN_STATE_FILE: &str = "pkcs11-refused-pins";

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

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The backend.
    pub backend: BackendConfig,
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

impl Config {
    /// Serializes (the format in the module docs).
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut s = String::from(
            "# strongroom configuration, written by `strongroom init`.\n# It never holds a PIN, only where to find one.\n",
        );
        let _ = writeln!(s, "format = {FORMAT}");
        match &self.backend {
            BackendConfig::Soft => s.push_str("backend = soft\n"),
            BackendConfig::Pkcs11 {
                module,
                token,
                pin,
                namespace,
            } => {
                s.push_str("backend = pkcs11\n");
                let _ = writeln!(s, "pkcs11.module = {}", module.display());
                match token {
                    TokenSelector::Label(l) => {
                        let _ = writeln!(s, "pkcs11.token = {l}");
                    }
                    TokenSelector::Slot(n) => {
                        let _ = writeln!(s, "pkcs11.slot = {n}");
                    }
                }
                match pin {
                    PinSource::Env(v) => {
                        let _ = writeln!(s, "pkcs11.pin-env = {v}");
                    }
                    PinSource::File(p) => {
                        let _ = writeln!(s, "pkcs11.pin-file = {}", p.display());
                    }
                }
                let _ = writeln!(s, "pkcs11.namespace = {namespace}");
            }
        }
        let _ = writeln!(s, "primary-root = {}", self.primary_root);
        let _ = writeln!(s, "cache-ttl-secs = {}", self.cache_ttl.as_secs());
        let _ = writeln!(
            s,
            "destruction-delay-secs = {}",
            self.destruction_delay.as_secs()
        );
        let _ = writeln!(s, "audit-data-access = {}", self.audit_data_access);
        s
    }

    /// Parses.
    ///
    /// # Errors
    /// [`ConfigError`] naming the line and the problem.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let err = |line: usize, problem: String| ConfigError { line, problem };
        let mut kv: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| err(n, format!("expected `key = value`, found {line:?}")))?;
            let (k, v) = (k.trim(), v.trim());
            if !KEYS.contains(&k) {
                return Err(err(
                    n,
                    format!("unknown key {k:?} (known: {})", KEYS.join(", ")),
                ));
            }
            if v.is_empty() {
                return Err(err(n, format!("{k} has no value")));
            }
            if kv.insert(k, (n, v)).is_some() {
                return Err(err(n, format!("{k} is set twice")));
            }
        }
        let get = |k: &str| kv.get(k).copied();
        let need = |k: &str| get(k).ok_or_else(|| err(0, format!("{k} is missing")));
        let (fl, fv) = need("format")?;
        if fv != FORMAT.to_string() {
            return Err(err(
                fl,
                format!(
                    "format {fv} is not supported (this strongroom reads format {FORMAT}); upgrade strongroom"
                ),
            ));
        }
        let num = |k: &str, default: u64| -> Result<u64, ConfigError> {
            match get(k) {
                None => Ok(default),
                Some((l, v)) => v.parse::<u64>().map_err(|_| {
                    err(
                        l,
                        format!("{k} must be a whole number of seconds, found {v:?}"),
                    )
                }),
            }
        };
        let (bl, bv) = need("backend")?;
        let backend = match bv {
            "soft" => {
                if let Some(k) = KEYS
                    .iter()
                    .find(|k| k.starts_with("pkcs11.") && get(k).is_some())
                {
                    return Err(err(
                        get(k).map_or(0, |x| x.0),
                        format!("{k} is set but the backend is soft"),
                    ));
                }
                BackendConfig::Soft
            }
            "pkcs11" => {
                let (module_line, module) = need("pkcs11.module")?;
                let module = PathBuf::from(module);
                if !module.is_absolute() {
                    // A relative module path loads whatever library is at that name in the
                    // directory strongroom happens to run in.
                    return Err(err(
                        module_line,
                        format!(
                            "pkcs11.module must be an absolute path, found {:?}",
                            module.display().to_string()
                        ),
                    ));
                }
                let token = match (get("pkcs11.token"), get("pkcs11.slot")) {
                    (Some((_, l)), None) => TokenSelector::Label(l.to_owned()),
                    (None, Some((l, s))) => TokenSelector::Slot(s.parse().map_err(|_| {
                        err(l, format!("pkcs11.slot must be a number, found {s:?}"))
                    })?),
                    (Some((l, _)), Some(_)) => {
                        return Err(err(l, "set pkcs11.token or pkcs11.slot, not both".into()));
                    }
                    (None, None) => {
                        return Err(err(0, "pkcs11.token (or pkcs11.slot) is missing".into()));
                    }
                };
                let pin = match (get("pkcs11.pin-env"), get("pkcs11.pin-file")) {
                    (Some((_, v)), None) => PinSource::Env(v.to_owned()),
                    (None, Some((_, f))) => PinSource::File(PathBuf::from(f)),
                    (Some((l, _)), Some(_)) => {
                        return Err(err(
                            l,
                            "set pkcs11.pin-env or pkcs11.pin-file, not both".into(),
                        ));
                    }
                    (None, None) => {
                        return Err(err(
                            0,
                            "pkcs11.pin-env (or pkcs11.pin-file) is missing".into(),
                        ));
                    }
                };
                let namespace = match get("pkcs11.namespace") {
                    None => DEFAULT_NAMESPACE.to_owned(),
                    Some((l, n)) => {
                        check_namespace(n).map_err(|e| err(l, e))?;
                        n.to_owned()
                    }
                };
                BackendConfig::Pkcs11 {
                    module,
                    token,
                    pin,
                    namespace,
                }
            }
            other => {
                return Err(err(
                    bl,
                    format!("backend must be soft or pkcs11, found {other:?}"),
                ));
            }
        };
        let (rl, rv) = need("primary-root")?;
        let primary_root = RootKeyName::new(rv).map_err(|e| err(rl, e.to_string()))?;
        let audit_data_access = match get("audit-data-access") {
            None | Some((_, "false")) => false,
            Some((_, "true")) => true,
            Some((l, v)) => {
                return Err(err(
                    l,
                    format!("audit-data-access must be true or false, found {v:?}"),
                ));
            }
        };
        Ok(Self {
            backend,
            primary_root,
            cache_ttl: Duration::from_secs(num("cache-ttl-secs", 300)?),
            destruction_delay: Duration::from_secs(num("destruction-delay-secs", 7 * 86400)?),
            audit_data_access,
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

const KEYS: &[&str] = &[
    "format",
    "backend",
    "primary-root",
    "pkcs11.module",
    "pkcs11.token",
    "pkcs11.slot",
    "pkcs11.pin-env",
    "pkcs11.pin-file",
    "pkcs11.namespace",
    "cache-ttl-secs",
    "destruction-delay-secs",
    "audit-data-access",
];

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
    fn errors_name_the_line() {
        let good = sample().to_text();
        for (bad, want) in [
            (
                good.replace("backend = pkcs11", "backend = hsm"),
                "backend must be soft or pkcs11",
            ),
            (
                good.replace("format = 1", "format = 2"),
                "upgrade strongroom",
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
        assert!(
            Config::parse("")
                .unwrap_err()
                .to_string()
                .contains("format is missing")
        );
    }

    #[test]
    fn a_hand_written_pkcs11_config_without_a_namespace_gets_the_default() {
        let text = sample()
            .to_text()
            .replace("pkcs11.namespace = strongroom-0123abcd\n", "");
        let c = Config::parse(&text).unwrap();
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
