//! The first format of `strongroom.conf` (format 1, before it was TOML), still read as it was:
//! one `key = value` per line, values unquoted; `#` starts a comment line; keys are fixed;
//! unknown and repeated keys are errors. strongroom writes only the TOML format now, but a store
//! made before keeps its file and opens as before.
//!
//! ```text
//! format = 1
//! backend = pkcs11
//! primary-root = service
//! pkcs11.module = /usr/lib/softhsm/libsofthsm2.so
//! pkcs11.token = my-token
//! pkcs11.pin-env = STRONGROOM_PIN
//! pkcs11.namespace = strongroom-3f9a01bc
//! cache-ttl-secs = 300
//! destruction-delay-secs = 604800
//! audit-data-access = false
//! ```
//!
//! (`pkcs11.slot = N` instead of `pkcs11.token`, `pkcs11.pin-file = PATH` instead of
//! `pkcs11.pin-env`; no trailing comments.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use strongroom_core::RootKeyName;
use strongroom_pkcs11::objects::{DEFAULT_NAMESPACE, check_namespace};
use strongroom_pkcs11::{PinSource, TokenSelector};

use super::{BackendConfig, Config, ConfigError};

/// Whether `text` says it is a format-1 file (a `format = 1` line).
pub(super) fn is_format_1(text: &str) -> bool {
    text.lines().any(|l| {
        l.split_once('=')
            .is_some_and(|(k, v)| k.trim() == "format" && v.trim() == "1")
    })
}

/// Parses a format-1 file.
///
/// # Errors
/// [`ConfigError`] naming the line and the problem.
pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
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
    if fv != "1" {
        return Err(err(
            fl,
            format!(
                "format {fv} is not supported (this strongroom reads formats 1 and 2); upgrade strongroom"
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
            let token =
                match (get("pkcs11.token"), get("pkcs11.slot")) {
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
    Ok(Config {
        storage: super::StorageConfig::Sled,
        backend,
        primary_root,
        cache_ttl: Duration::from_secs(num("cache-ttl-secs", 300)?),
        destruction_delay: Duration::from_secs(num("destruction-delay-secs", 7 * 86400)?),
        audit_data_access,
    })
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
