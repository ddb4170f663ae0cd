//! Small helpers the commands share: name parsing, hex, progress, and how a job or a
//! compaction is described. Depends on nothing else in the binary but its errors.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use strongroom_cli::config::{DEFAULT_PG_POOL, DEFAULT_PG_SCHEMA, StorageConfig, UrlSource};
use strongroom_cli::parse_duration;
use strongroom_core::{KeyState, KeyringName, RootKeyName};
use strongroom_store::{PendingJob, Progress};

use crate::error::CliError;

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn kr(s: &str) -> Result<KeyringName, CliError> {
    Ok(KeyringName::new(s)?)
}

pub fn rn(s: &str) -> Result<RootKeyName, CliError> {
    Ok(RootKeyName::new(s)?)
}

pub fn progress_to(pb: &indicatif::ProgressBar) -> impl FnMut(Progress) + '_ {
    |p| {
        pb.set_length(p.total);
        pb.set_position(p.done);
    }
}

/// A destroy command's `--after DURATION`, if given.
pub fn waiting_period(after: Option<&str>) -> Result<Option<std::time::Duration>, CliError> {
    after
        .map(parse_duration)
        .transpose()
        .map_err(CliError::Usage)
}

pub fn state_text(s: KeyState) -> String {
    s.to_string()
}

pub fn short_state(s: KeyState) -> &'static str {
    match s {
        KeyState::Enabled => "enabled",
        KeyState::Disabled => "disabled",
        KeyState::PendingDestruction { .. } => "pending-destruction",
        KeyState::Destroyed => "destroyed",
    }
}

pub fn compact_line(r: &strongroom_store::CompactReport) -> String {
    format!(
        "compacted: {} live entries copied into a fresh database (generation {}), the old files ({} bytes) overwritten with zeros and removed, in {:.1} s",
        r.entries,
        r.generation,
        r.shredded_bytes,
        r.elapsed.as_secs_f64()
    )
}

pub fn describe_job(j: &PendingJob) -> String {
    match j {
        PendingJob::Reencrypt(k) => format!(
            "re-encryption of keyring {k} (run `strongroom resume` or `strongroom reencrypt {k}`)"
        ),
        PendingJob::Rewrap { root, keks } => format!(
            "{keks} KEKs still under an old version of root key {root} (run `strongroom resume`)"
        ),
        PendingJob::Purge(id) => {
            format!("purge of destroyed keyring #{id} (finishes at the next open)")
        }
        PendingJob::DueKeyringDestruction(k) => format!(
            "keyring {k} is due for destruction but could not be destroyed yet (run `strongroom resume`)"
        ),
        PendingJob::BackendDestroy(r) => format!(
            "root key {r} is destroyed in the store but not yet in the backend (run `strongroom resume`)"
        ),
        PendingJob::DueRootDestruction(r) => format!(
            "root key {r} is due for destruction but could not be destroyed yet (run `strongroom resume`)"
        ),
        PendingJob::Move { keyring, from, to } => format!(
            "move of keyring {keyring} from root key {from} to {to}: its records are not all re-encrypted yet, and it still depends on {from} (run `strongroom resume`)"
        ),
        PendingJob::Compact => "compaction: what a destruction or a move removed is still in the database's files (run `strongroom resume` or `strongroom compact`)".into(),
    }
}

pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::Other(format!("writing {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| CliError::Other(format!("writing {}: {e}", path.display())))
}

/// Which AES-256-GCM implementation this build seals records with, and what that means.
pub fn record_cipher() -> String {
    let engine = strongroom_core::crypto::GCM_ENGINE;
    if engine == "ring" {
        format!(
            "AES-256-GCM by {engine} (built with the `ring` feature: faster, but DEK key schedules are not zeroized when dropped)"
        )
    } else {
        format!("AES-256-GCM by {engine}")
    }
}

/// A fresh private directory under the system temp dir.
pub fn temp_dir() -> Result<std::path::PathBuf, CliError> {
    let mut r = [0u8; 8];
    strongroom_core::rng::os_fill(&mut r).map_err(|e| CliError::Other(e.to_string()))?;
    let dir = std::env::temp_dir().join(format!("strongroom-{}", hex(&r)));
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&dir)
        .map_err(|e| CliError::Other(format!("creating {}: {e}", dir.display())))?;
    Ok(dir)
}

/// The `[storage]` section `--storage postgres` and its flags describe (`init`, `migrate`).
///
/// # Errors
/// A usage error when neither (or an empty) `--pg-url-env` nor `--pg-url-file` says where the
/// URL comes from.
pub fn pg_storage(a: &crate::cli::PgArgs) -> Result<StorageConfig, CliError> {
    let url = match (&a.pg_url_env, &a.pg_url_file) {
        (Some(v), _) if !v.is_empty() => UrlSource::Env(v.clone()),
        (None, Some(f)) => {
            UrlSource::File(std::path::absolute(f).map_err(|e| {
                CliError::Usage(format!("cannot make {} absolute: {e}", f.display()))
            })?)
        }
        _ => {
            return Err(CliError::Usage(
                "say where the PostgreSQL URL comes from: --pg-url-env VAR or --pg-url-file FILE (never on the command line: it may hold a password)".into(),
            ));
        }
    };
    Ok(StorageConfig::Postgres {
        url,
        schema: a
            .pg_schema
            .clone()
            .unwrap_or_else(|| DEFAULT_PG_SCHEMA.to_owned()),
        pool_size: DEFAULT_PG_POOL,
        fleet: None,
    })
}

/// The PostgreSQL flags given, for a usage error where they do not apply.
pub fn pg_flags_given(a: &crate::cli::PgArgs) -> Vec<&'static str> {
    [
        ("--pg-url-env", a.pg_url_env.is_some()),
        ("--pg-url-file", a.pg_url_file.is_some()),
        ("--pg-schema", a.pg_schema.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect()
}

/// `path` made absolute against the current directory (without resolving symlinks): the
/// configuration must name the same file whichever directory later commands run in.
pub fn absolute(path: &Path) -> Result<std::path::PathBuf, CliError> {
    std::path::absolute(path)
        .map_err(|e| CliError::Usage(format!("cannot make {} absolute: {e}", path.display())))
}
