//! What every command works from: the global arguments, the output, and the one way to read
//! the store's configuration, build its backend and open the store (each once per command).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strongroom_cli::config::{BackendConfig, CONFIG_FILE, Config, StorageConfig, UrlSource};
use strongroom_core::{Backend, SoftBackend};
use strongroom_pkcs11::Pkcs11Backend;
use strongroom_postgres::{PgConfig, PgEngine};
use strongroom_store::{Engine, EngineError, Store, StoreError, StoreOptions};

use crate::cli::Cli;
use crate::error::CliError;
use crate::output::Out;

/// How the command line loosens the backend's own safety checks (each one an explicit flag).
#[derive(Clone, Copy, Debug, Default)]
pub struct Overrides {
    /// `--allow-final-pin-try`.
    pub final_pin_try: bool,
    /// `--allow-weak-adoption`.
    pub weak_adoption: bool,
}

/// A command's context: the parsed command line and where its output goes.
pub struct Context<'a> {
    pub cli: &'a Cli,
    pub out: &'a Out,
    /// `--data`, `STRONGROOM_DATA` or the default ([`default_data_dir`]).
    data: Option<PathBuf>,
}

/// The data directory when neither `--data` nor `STRONGROOM_DATA` names one:
/// `$XDG_DATA_HOME/strongroom` (when it is an absolute path, as the XDG spec asks), else
/// `$HOME/.local/share/strongroom`; never relative to the current directory.
pub fn default_data_dir(
    xdg_data_home: Option<&std::ffi::OsStr>,
    home: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    if let Some(x) = xdg_data_home.map(Path::new)
        && x.is_absolute()
    {
        return Some(x.join("strongroom"));
    }
    home.map(Path::new)
        .filter(|h| h.is_absolute())
        .map(|h| h.join(".local/share/strongroom"))
}

impl<'a> Context<'a> {
    pub fn new(cli: &'a Cli, out: &'a Out) -> Self {
        let data = cli.data.clone().or_else(|| {
            default_data_dir(
                std::env::var_os("XDG_DATA_HOME").as_deref(),
                std::env::var_os("HOME").as_deref(),
            )
        });
        Self { cli, out, data }
    }

    /// The data directory.
    ///
    /// # Errors
    /// A usage error when none is given and there is no home directory to put the default in.
    pub fn data(&self) -> Result<&Path, CliError> {
        self.data.as_deref().ok_or_else(|| {
            CliError::Usage(
                "no data directory: give --data DIR or set STRONGROOM_DATA (the default, under $XDG_DATA_HOME or $HOME, needs one of them set to an absolute path)".into(),
            )
        })
    }

    /// The actor recorded in the audit log.
    pub fn actor(&self) -> String {
        self.cli
            .actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "cli".into())
    }

    /// The overrides the global flags ask for.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            final_pin_try: self.cli.allow_final_pin_try,
            weak_adoption: false,
        }
    }

    /// The configuration of the store in the data directory.
    pub fn config(&self) -> Result<Config, CliError> {
        let data = self.data()?;
        let path = data.join(CONFIG_FILE);
        if let Err(e) = std::fs::symlink_metadata(&path)
            && e.kind() == std::io::ErrorKind::NotFound
        {
            return Err(CliError::NotFound(format!(
                "no strongroom store at {} (no {CONFIG_FILE}); create one with `strongroom init`, or point --data (or STRONGROOM_DATA) at an existing store",
                data.display()
            )));
        }
        // It names the module that gets loaded: refused if others can change it.
        let text = Config::read_checked(&path).map_err(|e| CliError::Usage(e.to_string()))?;
        Config::parse(&text).map_err(|e| CliError::Other(format!("{e} (in {})", data.display())))
    }

    /// The backend a configuration names. A PKCS#11 backend remembers a PIN the token refused
    /// in the data directory, so that no later process tries it again.
    pub fn backend(
        &self,
        config: &Config,
        overrides: Overrides,
    ) -> Result<Arc<dyn Backend>, CliError> {
        let data = self.data()?;
        Ok(match &config.backend {
            BackendConfig::Soft => Arc::new(SoftBackend::open(data)?),
            BackendConfig::Pkcs11 { .. } => {
                let mut c = config
                    .pkcs11_in(data)
                    .ok_or_else(|| CliError::Other("internal: no PKCS#11 configuration".into()))?;
                c.allow_final_pin_try = overrides.final_pin_try;
                c.allow_weak_adoption = overrides.weak_adoption;
                Arc::new(Pkcs11Backend::open(c)?)
            }
        })
    }

    /// The store options a configuration and the command line give.
    pub fn options(&self, config: &Config) -> StoreOptions {
        StoreOptions {
            actor: self.actor(),
            cache_ttl: config.cache_ttl,
            destruction_delay: config.destruction_delay,
            audit_data_access: config.audit_data_access,
            fleet_poll: match &config.storage {
                StorageConfig::Postgres {
                    fleet: Some(poll), ..
                } => *poll,
                _ => StoreOptions::default().fleet_poll,
            },
            replica: match &config.storage {
                StorageConfig::Postgres { fleet: Some(_), .. } => replica_name(),
                _ => String::new(),
            },
            // A command names its process in the audit log; only a long-running replica
            // (`bench --replicas`) reports itself seen.
            report_seen: false,
            ..StoreOptions::default()
        }
    }

    /// The storage engine a configuration names: `None` for sled in the data directory, else
    /// the engine, connected.
    pub fn engine(&self, config: &Config) -> Result<Option<Box<dyn Engine>>, CliError> {
        match &config.storage {
            StorageConfig::Sled => Ok(None),
            StorageConfig::Postgres { .. } => {
                let pg = pg_config(&config.storage)?;
                Ok(Some(Box::new(PgEngine::connect(&pg).map_err(connecting)?)))
            }
        }
    }

    /// Opens the store in the data directory with its configured backend.
    pub fn open(&self) -> Result<Store, CliError> {
        self.open_with(self.overrides())
    }

    /// [`Context::open`], with the backend's checks loosened as `overrides` says.
    pub fn open_with(&self, overrides: Overrides) -> Result<Store, CliError> {
        let config = self.config()?;
        let backend = self.backend(&config, overrides)?;
        let options = self.options(&config);
        Ok(match self.engine(&config)? {
            None => Store::open(self.data()?, backend, options)?,
            Some(engine) => Store::open_on(self.data()?, engine, backend, options)?,
        })
    }
}

/// A PostgreSQL engine's connection error as the CLI reports it.
pub fn connecting(source: EngineError) -> CliError {
    CliError::Store(StoreError::Storage {
        while_doing: "connecting to PostgreSQL",
        source,
    })
}

/// This process's name as a replica of a fleet: `STRONGROOM_REPLICA` when set (a stable name,
/// e.g. the pod's), else `<host>-<pid>`.
#[must_use]
pub fn replica_name() -> String {
    if let Ok(v) = std::env::var("STRONGROOM_REPLICA")
        && !v.trim().is_empty()
    {
        return v.trim().to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}", std::process::id())
}

/// The PostgreSQL configuration of a `[storage]` section (the URL read from where it says).
pub fn pg_config(storage: &StorageConfig) -> Result<PgConfig, CliError> {
    let StorageConfig::Postgres {
        url,
        schema,
        pool_size,
        fleet,
    } = storage
    else {
        return Err(CliError::Other("internal: not a PostgreSQL store".into()));
    };
    let mut c = match url {
        UrlSource::Env(var) => PgConfig::from_env(var),
        UrlSource::File(path) => PgConfig::from_file(path),
    }
    .and_then(|c| c.with_schema(schema))
    .map_err(|e| CliError::Usage(e.to_string()))?;
    c.pool_size = *pool_size;
    // A fleet's replicas share the schema: none takes the exclusive lock.
    c.exclusive = fleet.is_none();
    Ok(c)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::ffi::OsStr;
    use std::path::Path;

    use super::default_data_dir;

    #[test]
    fn the_default_data_directory_is_never_relative() {
        let d = |x: Option<&str>, h: Option<&str>| {
            default_data_dir(x.map(OsStr::new), h.map(OsStr::new))
        };
        assert_eq!(
            d(Some("/x"), Some("/home/a")).unwrap(),
            Path::new("/x/strongroom")
        );
        assert_eq!(
            d(None, Some("/home/a")).unwrap(),
            Path::new("/home/a/.local/share/strongroom")
        );
        // A relative XDG_DATA_HOME is ignored (the XDG spec), and so is a relative HOME.
        assert_eq!(
            d(Some("rel"), Some("/home/a")).unwrap(),
            Path::new("/home/a/.local/share/strongroom")
        );
        assert_eq!(d(Some(""), Some("rel")), None);
        assert_eq!(d(None, None), None);
    }
}
