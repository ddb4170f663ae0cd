//! Records: `put`, `get`, `delete`, `list` and `reencrypt`.

use std::io::Write;

use strongroom_cli::json::Json;

use crate::cli::SecretArg;
use crate::common::*;
use crate::context::Context;
use crate::error::CliError;

pub fn put(
    ctx: &Context<'_>,
    keyring: &str,
    key: &str,
    value: Option<&SecretArg>,
) -> Result<(), CliError> {
    let s = ctx.open()?;
    // The value is plaintext: zeroized when this command is done with it.
    let value = match value {
        Some(v) => zeroize::Zeroizing::new(v.as_bytes().to_vec()),
        None => {
            strongroom_cli::read_secret(std::io::stdin().lock(), strongroom_store::MAX_VALUE_LEN)
                .map_err(|e| CliError::Other(format!("reading the value from stdin: {e}")))?
        }
    };
    s.put_durable(&kr(keyring)?, key.as_bytes(), &value)?;
    ctx.out.result(String::new, || {
        Json::obj([
            ("keyring", Json::str(keyring)),
            ("key", Json::str(key)),
            ("bytes", Json::Num(value.len() as u64)),
        ])
    })?;
    Ok(())
}

pub fn get(ctx: &Context<'_>, keyring: &str, key: &str) -> Result<(), CliError> {
    let s = ctx.open()?;
    let value = s
        .get(&kr(keyring)?, key.as_bytes())?
        .ok_or_else(|| CliError::NotFound(format!("no record {key:?} in keyring {keyring}")))?;
    if ctx.out.json_mode() {
        let text = std::str::from_utf8(value.expose()).ok();
        ctx.out.result(String::new, || {
            Json::obj([
                ("keyring", Json::str(keyring)),
                ("key", Json::str(key)),
                ("value", text.map_or(Json::Null, Json::str)),
                (
                    "value_hex",
                    Json::Str(value.expose().iter().map(|b| format!("{b:02x}")).collect()),
                ),
            ])
        })?;
    } else {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(value.expose())
            .and_then(|()| stdout.flush())
            .map_err(CliError::Output)?;
    }
    Ok(())
}

pub fn delete(ctx: &Context<'_>, keyring: &str, key: &str) -> Result<(), CliError> {
    let s = ctx.open()?;
    if !s.delete(&kr(keyring)?, key.as_bytes())? {
        return Err(CliError::NotFound(format!(
            "no record {key:?} in keyring {keyring}"
        )));
    }
    s.flush()?;
    ctx.out
        .result(String::new, || Json::obj([("deleted", Json::str(key))]))?;
    Ok(())
}

pub fn list(ctx: &Context<'_>, keyring: &str, prefix: &str) -> Result<(), CliError> {
    let s = ctx.open()?;
    let keys = s.list(&kr(keyring)?, prefix.as_bytes())?;
    let shown: Vec<String> = keys.iter().map(|k| k.escape_ascii().to_string()).collect();
    ctx.out.result(
        || shown.join("\n"),
        || Json::Arr(shown.iter().map(Json::str).collect()),
    )?;
    Ok(())
}

pub fn reencrypt(ctx: &Context<'_>, keyring: &str) -> Result<(), CliError> {
    let s = ctx.open()?;
    let pb = ctx.out.progress(&format!("re-encrypting {keyring}"));
    let report = s.reencrypt(&kr(keyring)?, &mut progress_to(&pb))?;
    pb.finish_and_clear();
    let retired: Vec<String> = report.retired.iter().map(ToString::to_string).collect();
    ctx.out.result(
        || {
            format!(
                "keyring {keyring}: {} records re-encrypted, {} already current{}; DEK versions retired: {}",
                report.reencrypted,
                report.skipped,
                if report.resumed { " (resumed)" } else { "" },
                if retired.is_empty() { "none".into() } else { retired.join(", ") }
            )
        },
        || {
            Json::obj([
                ("keyring", Json::str(keyring)),
                ("reencrypted", Json::Num(report.reencrypted)),
                ("skipped", Json::Num(report.skipped)),
                ("resumed", Json::Bool(report.resumed)),
                ("retired", Json::Arr(retired.iter().map(Json::str).collect())),
            ])
        },
    )?;
    Ok(())
}
