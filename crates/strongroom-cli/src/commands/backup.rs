//! `backup` and `restore`.

use std::path::Path;

use crate::common::*;
use crate::context::Context;
use crate::error::CliError;
use strongroom_cli::config::{CONFIG_FILE, Config};
use strongroom_cli::json::Json;
use strongroom_store::Store;

pub fn backup(ctx: &Context<'_>, file: &Path) -> Result<(), CliError> {
    let s = ctx.open()?;
    let r = s.backup(file)?;
    let soft = s.meta().backend_kind == "soft";
    ctx.out.result(
        || {
            let mut t = format!("backup written to {} ({} entries, {} bytes; everything in it is sealed)", file.display(), r.entries, r.bytes);
            if soft {
                t.push_str(&format!(
                    "\nnote: it holds no root key; back up the soft backend's key file {} separately, and keep it secret",
                    ctx.data().join(strongroom_core::soft::KEY_FILE_NAME).display()
                ));
            }
            t
        },
        || Json::obj([("file", Json::str(file.display())), ("entries", Json::Num(r.entries)), ("bytes", Json::Num(r.bytes))]),
    )?;
    Ok(())
}

pub fn restore(ctx: &Context<'_>, file: &Path, config: &Path) -> Result<(), CliError> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| CliError::Other(format!("reading {}: {e}", config.display())))?;
    Config::parse(&text).map_err(|e| CliError::Usage(e.to_string()))?;
    if ctx.data().join(CONFIG_FILE).exists() {
        return Err(CliError::Usage(format!(
            "{} already holds a store configuration; restore into an empty directory",
            ctx.data().display()
        )));
    }
    let meta = Store::restore(file, ctx.data())?;
    write_private(&ctx.data().join(CONFIG_FILE), text.as_bytes())?;
    ctx.out.result(
        || format!("store {} restored into {}; open it with its own backend (for soft: copy its key file here)", hex(&meta.store_id), ctx.data().display()),
        || Json::obj([("store_id", Json::Str(hex(&meta.store_id))), ("data", Json::str(ctx.data().display()))]),
    )?;
    Ok(())
}
