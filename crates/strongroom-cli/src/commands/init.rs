//! `init`: a new store, its configuration and its first root key.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use strongroom_cli::config::{BackendConfig, CONFIG_FILE, Config, StorageConfig};
use strongroom_core::{Backend, RootKeyName, SoftBackend};
use strongroom_pkcs11::objects::check_namespace;
use strongroom_pkcs11::{PinSource, TokenSelector};
use strongroom_store::{Store, StoreOptions};

use crate::cli::{BackendKind, InitArgs, StorageKind};
use crate::common::{absolute, hex, pg_flags_given, pg_storage, rn, write_private};

/// `init --json`.
#[derive(Serialize)]
struct Init {
    store_id: String,
    data: String,
    backend: String,
    backend_instance: String,
    primary_root: String,
    storage: String,
    storage_location: String,
}
use crate::context::Context;
use crate::context::Overrides;
use crate::error::CliError;

/// A namespace of its own for a new store's labels in the token: `strongroom-` and 8 random
/// hex digits (so two stores on one token never share keys).
fn fresh_namespace() -> Result<String, CliError> {
    let mut r = [0u8; 4];
    strongroom_core::rng::os_fill(&mut r)
        .map_err(|e| CliError::Other(format!("choosing a namespace: {e}")))?;
    Ok(format!("strongroom-{}", hex(&r)))
}

/// What `init` may create in the data directory (and so removes again when it fails).
const INIT_MAKES: [&str; 7] = [
    CONFIG_FILE,
    strongroom_store::DB_DIR,
    strongroom_store::LOCK_FILE,
    strongroom_store::STORE_ID_FILE,
    strongroom_store::ANCHOR_FILE,
    strongroom_core::soft::KEY_FILE_NAME,
    strongroom_core::soft::LOCK_FILE_NAME,
];

/// Whether anything (a file, a directory, even a dangling symlink) is at `path`.
fn occupied(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Refuses a data directory that holds a store, or part of one: a key file or an audit anchor
/// may be the only copy of something, and `init` must never overwrite or remove it.
fn check_init_target(data: &Path) -> Result<(), CliError> {
    if occupied(&data.join(CONFIG_FILE))
        || occupied(&data.join(strongroom_store::DB_DIR))
        || occupied(&data.join(strongroom_store::CURRENT_DB_FILE))
    {
        return Err(CliError::Usage(format!(
            "{} already holds a strongroom store; use it, or choose another --data",
            data.display()
        )));
    }
    for f in [
        strongroom_core::soft::KEY_FILE_NAME,
        strongroom_store::ANCHOR_FILE,
    ] {
        if occupied(&data.join(f)) {
            return Err(CliError::Usage(format!(
                "{f} already exists in {} but no store does; it may be the only copy of a store's keys: move it somewhere safe (or restore the store it belongs to), or choose another --data",
                data.display()
            )));
        }
    }
    Ok(())
}

/// Removes what a failed `init` created: the data directory if it made it, else those of
/// [`INIT_MAKES`] not in `keep` (what was there before, or what this run did not make).
fn undo_init(data: &Path, created_dir: bool, keep: &[&str]) {
    if created_dir {
        let _ = std::fs::remove_dir_all(data);
        return;
    }
    for f in INIT_MAKES.iter().filter(|f| !keep.contains(f)) {
        let p = data.join(f);
        let _ = if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
    }
}

/// The configuration `init` writes, from its arguments: every mistake in them is found here,
/// before anything is created.
fn init_config(a: &InitArgs, root: &RootKeyName) -> Result<Config, CliError> {
    let backend = match a.backend {
        BackendKind::Soft => {
            let pkcs11_only: Vec<&str> = [
                ("--module", a.module.is_some()),
                ("--token", a.token.is_some()),
                ("--slot", a.slot.is_some()),
                ("--pin-env", a.pin_env.is_some()),
                ("--pin-file", a.pin_file.is_some()),
                ("--namespace", a.namespace.is_some()),
                ("--adopt-root", a.adopt_root.is_some()),
            ]
            .into_iter()
            .filter_map(|(flag, given)| given.then_some(flag))
            .collect();
            if !pkcs11_only.is_empty() {
                let (verb, pronoun) = if pkcs11_only.len() == 1 {
                    ("applies", "it")
                } else {
                    ("apply", "them")
                };
                return Err(CliError::Usage(format!(
                    "{} only {verb} to --backend pkcs11; add --backend pkcs11, or leave {pronoun} out for the soft backend",
                    pkcs11_only.join(", ")
                )));
            }
            BackendConfig::Soft
        }
        BackendKind::Pkcs11 => {
            // (An empty --module or --pin-file is refused by the argument parser.)
            for (flag, value, what) in [
                (
                    "--token",
                    a.token.as_ref().map(String::is_empty),
                    "the token's label (or --slot ID)",
                ),
                (
                    "--pin-env",
                    a.pin_env.as_ref().map(String::is_empty),
                    "the name of the variable that holds the PIN",
                ),
                (
                    "--namespace",
                    a.namespace.as_ref().map(String::is_empty),
                    "a namespace, or leave it out for a fresh one",
                ),
                (
                    "--adopt-root",
                    a.adopt_root.as_ref().map(String::is_empty),
                    "the key's label, label:LABEL or id:HEX",
                ),
            ] {
                if value == Some(true) {
                    return Err(CliError::Usage(format!("{flag} is empty; give {what}")));
                }
            }
            BackendConfig::Pkcs11 {
                module: absolute(a.module.as_deref().ok_or_else(|| {
                    CliError::Usage("--module is required with --backend pkcs11".into())
                })?)?,
                token: match (&a.token, a.slot) {
                    (Some(l), _) => TokenSelector::Label(l.clone()),
                    (None, Some(s)) => TokenSelector::Slot(s),
                    (None, None) => {
                        return Err(CliError::Usage(
                            "give the token with --token LABEL (or --slot ID)".into(),
                        ));
                    }
                },
                pin: match (&a.pin_env, &a.pin_file) {
                    (Some(v), _) => PinSource::Env(v.clone()),
                    (None, Some(f)) => PinSource::File(absolute(f)?),
                    (None, None) => {
                        return Err(CliError::Usage(
                            "say where the PIN comes from: --pin-env VAR or --pin-file FILE (never on the command line)".into(),
                        ));
                    }
                },
                namespace: match &a.namespace {
                    Some(n) => {
                        check_namespace(n).map_err(CliError::Usage)?;
                        n.clone()
                    }
                    None => fresh_namespace()?,
                },
            }
        }
    };
    let storage = match a.storage {
        StorageKind::Sled => {
            let pg_only = pg_flags_given(&a.pg);
            if !pg_only.is_empty() {
                return Err(CliError::Usage(format!(
                    "{} only apply to --storage postgres",
                    pg_only.join(", ")
                )));
            }
            StorageConfig::Sled
        }
        StorageKind::Postgres => pg_storage(&a.pg)?,
    };
    let config = Config {
        storage,
        backend,
        primary_root: root.clone(),
        cache_ttl: StoreOptions::default().cache_ttl,
        destruction_delay: StoreOptions::default().destruction_delay,
        audit_data_access: false,
    };
    // A value with spaces around it or a line break in it is a slip (no token label, variable
    // or path of that shape is meant): refused, though TOML could hold it.
    if [
        a.module.as_deref().and_then(Path::to_str),
        a.token.as_deref(),
        a.pin_env.as_deref(),
        a.pin_file.as_deref().and_then(Path::to_str),
        a.pg.pg_url_env.as_deref(),
        a.pg.pg_url_file.as_deref().and_then(Path::to_str),
        a.pg.pg_schema.as_deref(),
    ]
    .into_iter()
    .flatten()
    .any(|v| v.trim() != v || v.contains('\n'))
    {
        return Err(CliError::Usage(
            "a value given to init (module path, token label, PIN variable or file) has leading or trailing spaces or a line break; give it without them".into(),
        ));
    }
    // Whatever is written must read back the same (a path that is not UTF-8 would not, nor a
    // schema name PostgreSQL would need quoted).
    if let Err(e) = Config::parse(&config.to_text()) {
        return Err(CliError::Usage(e.problem));
    }
    if Config::parse(&config.to_text()).as_ref() != Ok(&config) {
        return Err(CliError::Usage(
            "a path given to init (module or PIN file) is not valid UTF-8, which strongroom.conf cannot hold".into(),
        ));
    }
    Ok(config)
}
pub fn run(ctx: &Context<'_>, a: &InitArgs) -> Result<(), CliError> {
    let data = ctx.data()?;
    let root = rn(&a.root)?;
    let config = init_config(a, &root)?;
    check_init_target(data)?;
    let created_dir = !occupied(data);
    let existed: Vec<&str> = INIT_MAKES
        .iter()
        .copied()
        .filter(|f| occupied(&data.join(f)))
        .collect();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data)
        .map_err(|e| CliError::Other(format!("creating {}: {e}", data.display())))?;
    // Set once this run has written a key file: one that was there before is never removed, even
    // one that appeared after the check above.
    let mut made_key_file = false;
    let result = (|| {
        let backend: Arc<dyn Backend> = match &config.backend {
            BackendConfig::Soft => {
                let b = SoftBackend::create(data)?;
                made_key_file = true;
                Arc::new(b)
            }
            BackendConfig::Pkcs11 { .. } => ctx.backend(
                &config,
                Overrides {
                    weak_adoption: a.allow_weak_adoption,
                    ..ctx.overrides()
                },
            )?,
        };
        let options = ctx.options(&config);
        let store = match (ctx.engine(&config)?, &a.adopt_root) {
            (None, Some(sel)) => {
                Store::create_adopting(data, Arc::clone(&backend), &root, sel, options)?
            }
            (None, None) => Store::create(data, Arc::clone(&backend), &root, options)?,
            (Some(e), Some(sel)) => {
                Store::create_adopting_on(data, e, Arc::clone(&backend), &root, sel, options)?
            }
            (Some(e), None) => Store::create_on(data, e, Arc::clone(&backend), &root, options)?,
        };
        if let Some(sel) = &a.adopt_root {
            store.record_adoption(&root, sel, a.allow_weak_adoption)?;
        }
        write_private(&data.join(CONFIG_FILE), config.to_text().as_bytes())?;
        Ok((store, backend))
    })();
    let (store, backend) = match result {
        Ok(x) => x,
        Err(e) => {
            // Leave nothing half-made behind (a generated or adopted root key stays in the HSM:
            // strongroom does not destroy keys on its own).
            let mut keep = existed;
            if !made_key_file {
                keep.push(strongroom_core::soft::KEY_FILE_NAME);
            }
            undo_init(data, created_dir, &keep);
            return Err(e);
        }
    };
    let info = backend.describe();
    ctx.out.result(
        || {
            let e = store.engine_info();
            format!(
                "created store {} in {} on {}; primary root key {root}/v1; records in {}",
                hex(&store.meta().store_id),
                data.display(),
                info.description,
                if e.kind == "sled" {
                    "sled (embedded)".to_owned()
                } else {
                    format!("{} ({})", e.kind, e.location)
                }
            )
        },
        || Init {
            store_id: hex(&store.meta().store_id),
            data: data.display().to_string(),
            backend: info.kind.to_string(),
            backend_instance: info.instance_id.clone(),
            primary_root: root.to_string(),
            storage: store.engine_info().kind.to_owned(),
            storage_location: store.engine_info().location,
        },
    )?;
    Ok(())
}
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn undo_init_removes_only_what_init_created() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("notes.txt"), b"mine").unwrap();
        std::fs::write(d.join(strongroom_core::soft::LOCK_FILE_NAME), b"").unwrap();
        let existed: Vec<&str> = INIT_MAKES
            .iter()
            .copied()
            .filter(|f| occupied(&d.join(f)))
            .collect();
        // What a run that failed late had made.
        std::fs::write(d.join(strongroom_core::soft::KEY_FILE_NAME), b"k").unwrap();
        std::fs::write(d.join(strongroom_store::ANCHOR_FILE), b"a").unwrap();
        std::fs::create_dir(d.join(strongroom_store::DB_DIR)).unwrap();
        std::fs::write(d.join(strongroom_store::DB_DIR).join("conf"), b"").unwrap();
        std::fs::write(d.join(CONFIG_FILE), b"c").unwrap();
        undo_init(d, false, &existed);
        assert_eq!(names(d), ["notes.txt", "soft-root-keys.lock"]);
        // A directory init made itself goes entirely.
        let sub = d.join("new");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join(CONFIG_FILE), b"c").unwrap();
        undo_init(&sub, true, &[]);
        assert!(!occupied(&sub));
    }
}
