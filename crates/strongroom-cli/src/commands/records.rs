//! Records: `put`, `get`, `delete`, `list` and `reencrypt`.

use std::io::Write;

use serde::Serialize;
use strongroom_cli::{escape_key, parse_hex};

use crate::cli::SecretArg;
use crate::common::{hex, kr, progress_to};
use crate::context::Context;
use crate::error::CliError;

/// A record key as the JSON output gives it: as text when it is valid UTF-8 (else `null`), and
/// always as hex (what `--key-hex` takes).
#[derive(Serialize)]
struct KeyJson {
    key: Option<String>,
    key_hex: String,
}

impl KeyJson {
    fn of(key: &[u8]) -> Self {
        Self {
            key: std::str::from_utf8(key).ok().map(str::to_owned),
            key_hex: hex(key),
        }
    }
}

/// The record key a command was given: text, or hex with `--key-hex`.
fn record_key(key: &str, key_hex: bool) -> Result<Vec<u8>, CliError> {
    if key_hex {
        parse_hex(key).map_err(|e| CliError::Usage(format!("--key-hex: {e}")))
    } else {
        Ok(key.as_bytes().to_vec())
    }
}

fn no_record(key: &[u8], keyring: &str) -> CliError {
    CliError::NotFound(format!(
        "no record \"{}\" in keyring {keyring}",
        escape_key(key)
    ))
}

/// `put --json`.
#[derive(Serialize)]
struct Put<'a> {
    keyring: &'a str,
    #[serde(flatten)]
    key: KeyJson,
    bytes: usize,
}

pub fn put(
    ctx: &Context<'_>,
    keyring: &str,
    key: &str,
    key_hex: bool,
    value: Option<&SecretArg>,
) -> Result<(), CliError> {
    let key = record_key(key, key_hex)?;
    let s = ctx.open()?;
    // The value is plaintext: zeroized when this command is done with it.
    let value = match value {
        Some(v) => zeroize::Zeroizing::new(v.as_bytes().to_vec()),
        None => {
            strongroom_cli::read_secret(std::io::stdin().lock(), strongroom_store::MAX_VALUE_LEN)
                .map_err(|e| CliError::Other(format!("reading the value from stdin: {e}")))?
        }
    };
    s.put_durable(&kr(keyring)?, &key, &value)?;
    ctx.out.result(String::new, || Put {
        keyring,
        key: KeyJson::of(&key),
        bytes: value.len(),
    })?;
    Ok(())
}

/// `get --json`: the value, which the user asked for.
#[derive(Serialize)]
struct Get<'a> {
    keyring: &'a str,
    #[serde(flatten)]
    key: KeyJson,
    /// The value as text when it is valid UTF-8, else `null`.
    value: Option<&'a str>,
    value_hex: String,
}

pub fn get(ctx: &Context<'_>, keyring: &str, key: &str, key_hex: bool) -> Result<(), CliError> {
    let key = record_key(key, key_hex)?;
    let s = ctx.open()?;
    let value = s
        .get(&kr(keyring)?, &key)?
        .ok_or_else(|| no_record(&key, keyring))?;
    if ctx.out.json_mode() {
        ctx.out.result(String::new, || Get {
            keyring,
            key: KeyJson::of(&key),
            value: std::str::from_utf8(value.expose()).ok(),
            value_hex: hex(value.expose()),
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

/// `delete --json`.
#[derive(Serialize)]
struct Delete<'a> {
    keyring: &'a str,
    /// The deleted record's key as text, or `null` when it is not valid UTF-8.
    deleted: Option<String>,
    key_hex: String,
}

pub fn delete(ctx: &Context<'_>, keyring: &str, key: &str, key_hex: bool) -> Result<(), CliError> {
    let key = record_key(key, key_hex)?;
    let s = ctx.open()?;
    if !s.delete(&kr(keyring)?, &key)? {
        return Err(no_record(&key, keyring));
    }
    s.flush()?;
    ctx.out.result(String::new, || {
        let k = KeyJson::of(&key);
        Delete {
            keyring,
            deleted: k.key,
            key_hex: k.key_hex,
        }
    })?;
    Ok(())
}

pub fn list(ctx: &Context<'_>, keyring: &str, prefix: &str) -> Result<(), CliError> {
    let s = ctx.open()?;
    let keys = s.list(&kr(keyring)?, prefix.as_bytes())?;
    ctx.out.result(
        || {
            keys.iter()
                .map(|k| escape_key(k))
                .collect::<Vec<_>>()
                .join("\n")
        },
        || keys.iter().map(|k| KeyJson::of(k)).collect::<Vec<_>>(),
    )?;
    Ok(())
}

/// `reencrypt --json`.
#[derive(Serialize)]
struct Reencrypt<'a> {
    keyring: &'a str,
    reencrypted: u64,
    skipped: u64,
    resumed: bool,
    retired: Vec<String>,
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
        || Reencrypt {
            keyring,
            reencrypted: report.reencrypted,
            skipped: report.skipped,
            resumed: report.resumed,
            retired: retired.clone(),
        },
    )?;
    Ok(())
}
