//! `backup` and `restore`.

use std::path::Path;

use crate::common::{hex, write_private};

/// `backup --json`.
#[derive(Serialize)]
struct Backup {
    file: String,
    entries: u64,
    bytes: u64,
}

/// `restore --json`.
#[derive(Serialize)]
struct Restore {
    store_id: String,
    data: String,
}
use crate::context::Context;
use crate::error::CliError;
use serde::Serialize;
use strongroom_cli::config::{CONFIG_FILE, Config};
use strongroom_store::Store;

pub fn backup(ctx: &Context<'_>, file: &Path) -> Result<(), CliError> {
    let data = ctx.data()?;
    let s = ctx.open()?;
    let r = s.backup(file)?;
    let soft = s.meta().backend_kind == "soft";
    ctx.out.result(
        || {
            let mut t = format!("backup written to {} ({} entries, {} bytes; everything in it is sealed)", file.display(), r.entries, r.bytes);
            if soft {
                t.push_str(&format!(
                    "\nnote: it holds no root key; back up the soft backend's key file {} separately, and keep it secret",
                    data.join(strongroom_core::soft::KEY_FILE_NAME).display()
                ));
            }
            t
        },
        || Backup { file: file.display().to_string(), entries: r.entries, bytes: r.bytes },
    )?;
    Ok(())
}

pub fn restore(ctx: &Context<'_>, file: &Path, config: &Path) -> Result<(), CliError> {
    let data = ctx.data()?;
    let text = std::fs::read_to_string(config)
        .map_err(|e| CliError::Other(format!("reading {}: {e}", config.display())))?;
    let parsed = Config::parse(&text).map_err(|e| CliError::Usage(e.to_string()))?;
    if data.join(CONFIG_FILE).exists() {
        return Err(CliError::Usage(format!(
            "{} already holds a store configuration; restore into an empty directory",
            data.display()
        )));
    }
    // Into the engine the configuration names (a backup restores into either engine).
    let meta = match ctx.engine(&parsed)? {
        None => Store::restore(file, data)?,
        Some(engine) => {
            std::fs::create_dir_all(data)
                .map_err(|e| CliError::Other(format!("creating {}: {e}", data.display())))?;
            Store::restore_into(file, data, engine)?
        }
    };
    write_private(&data.join(CONFIG_FILE), text.as_bytes())?;
    ctx.out.result(
        || format!("store {} restored into {}; open it with its own backend (for soft: copy its key file here)", hex(&meta.store_id), data.display()),
        || Restore { store_id: hex(&meta.store_id), data: data.display().to_string() },
    )?;
    Ok(())
}
