//! The commands.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use strongroom_cli::config::{BackendConfig, CONFIG_FILE, Config};
use strongroom_cli::json::Json;
use strongroom_cli::{escape_controls, parse_duration};
use strongroom_core::{
    Backend, KeyState, KeyringName, RootKeyId, RootKeyName, RootVersion, SoftBackend,
};
use strongroom_pkcs11::objects::check_namespace;
use strongroom_pkcs11::{PinSource, Pkcs11Backend, TokenSelector};
use strongroom_store::{PendingJob, Progress, Store, StoreOptions};

use crate::cli::{AuditCmd, BackendKind, Cli, Cmd, DestroyArgs, InitArgs, KeyringCmd, RootCmd};
use crate::error::CliError;
use crate::output::{Out, confirm};

/// Runs the command line.
pub fn run(cli: &Cli, out: &Out) -> Result<(), CliError> {
    match &cli.cmd {
        Cmd::Init(args) => init(cli, out, args),
        Cmd::Root(cmd) => root(cli, out, cmd),
        Cmd::Keyring(cmd) => keyring(cli, out, cmd),
        Cmd::Put {
            keyring,
            key,
            value,
        } => {
            let s = open(cli)?;
            // The value is plaintext: zeroized when this command is done with it.
            let value = match value {
                Some(v) => zeroize::Zeroizing::new(v.as_bytes().to_vec()),
                None => strongroom_cli::read_secret(
                    std::io::stdin().lock(),
                    strongroom_store::MAX_VALUE_LEN,
                )
                .map_err(|e| CliError::Other(format!("reading the value from stdin: {e}")))?,
            };
            s.put_durable(&kr(keyring)?, key.as_bytes(), &value)?;
            out.result(String::new, || {
                Json::obj([
                    ("keyring", Json::str(keyring)),
                    ("key", Json::str(key)),
                    ("bytes", Json::Num(value.len() as u64)),
                ])
            })?;
            Ok(())
        }
        Cmd::Get { keyring, key } => {
            let s = open(cli)?;
            let value = s.get(&kr(keyring)?, key.as_bytes())?.ok_or_else(|| {
                CliError::NotFound(format!("no record {key:?} in keyring {keyring}"))
            })?;
            if out.json_mode() {
                let text = std::str::from_utf8(value.expose()).ok();
                out.result(String::new, || {
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
        Cmd::Delete { keyring, key } => {
            let s = open(cli)?;
            if !s.delete(&kr(keyring)?, key.as_bytes())? {
                return Err(CliError::NotFound(format!(
                    "no record {key:?} in keyring {keyring}"
                )));
            }
            s.flush()?;
            out.result(String::new, || Json::obj([("deleted", Json::str(key))]))?;
            Ok(())
        }
        Cmd::List { keyring, prefix } => {
            let s = open(cli)?;
            let keys = s.list(&kr(keyring)?, prefix.as_bytes())?;
            let shown: Vec<String> = keys.iter().map(|k| k.escape_ascii().to_string()).collect();
            out.result(
                || shown.join("\n"),
                || Json::Arr(shown.iter().map(Json::str).collect()),
            )?;
            Ok(())
        }
        Cmd::Reencrypt { keyring } => {
            let s = open(cli)?;
            let pb = out.progress(&format!("re-encrypting {keyring}"));
            let report = s.reencrypt(&kr(keyring)?, &mut progress_to(&pb))?;
            pb.finish_and_clear();
            let retired: Vec<String> = report.retired.iter().map(ToString::to_string).collect();
            out.result(
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
        Cmd::Jobs => {
            let s = open(cli)?;
            let jobs = s.pending_jobs()?;
            let lines: Vec<String> = jobs.iter().map(describe_job).collect();
            out.result(
                || {
                    if lines.is_empty() {
                        "no unfinished work".into()
                    } else {
                        lines.join("\n")
                    }
                },
                || Json::Arr(lines.iter().map(Json::str).collect()),
            )?;
            Ok(())
        }
        Cmd::Resume => resume(cli, out),
        Cmd::Compact => {
            let s = open(cli)?;
            let r = s.compact()?;
            out.result(
                || compact_line(&r),
                || {
                    Json::obj([
                        ("generation", Json::Num(r.generation)),
                        ("entries", Json::Num(r.entries)),
                        ("dropped", Json::Num(r.dropped)),
                        ("shredded_bytes", Json::Num(r.shredded_bytes)),
                        (
                            "millis",
                            Json::Num(u64::try_from(r.elapsed.as_millis()).unwrap_or(u64::MAX)),
                        ),
                    ])
                },
            )?;
            Ok(())
        }
        Cmd::Audit(cmd) => audit(cli, out, cmd),
        Cmd::Doctor => crate::doctor::run(cli, out),
        Cmd::Bench(args) => crate::bench::run(out, args),
        Cmd::Tour => crate::tour::run(out),
        Cmd::Backup { file } => {
            let s = open(cli)?;
            let r = s.backup(file)?;
            let soft = s.meta().backend_kind == "soft";
            out.result(
                || {
                    let mut t = format!("backup written to {} ({} entries, {} bytes; everything in it is sealed)", file.display(), r.entries, r.bytes);
                    if soft {
                        t.push_str(&format!(
                            "\nnote: it holds no root key; back up the soft backend's key file {} separately, and keep it secret",
                            cli.data.join(strongroom_core::soft::KEY_FILE_NAME).display()
                        ));
                    }
                    t
                },
                || Json::obj([("file", Json::str(file.display())), ("entries", Json::Num(r.entries)), ("bytes", Json::Num(r.bytes))]),
            )?;
            Ok(())
        }
        Cmd::Restore { file, config } => {
            let text = std::fs::read_to_string(config)
                .map_err(|e| CliError::Other(format!("reading {}: {e}", config.display())))?;
            Config::parse(&text).map_err(|e| CliError::Usage(e.to_string()))?;
            if cli.data.join(CONFIG_FILE).exists() {
                return Err(CliError::Usage(format!(
                    "{} already holds a store configuration; restore into an empty directory",
                    cli.data.display()
                )));
            }
            let meta = Store::restore(file, &cli.data)?;
            write_private(&cli.data.join(CONFIG_FILE), text.as_bytes())?;
            out.result(
                || format!("store {} restored into {}; open it with its own backend (for soft: copy its key file here)", hex(&meta.store_id), cli.data.display()),
                || Json::obj([("store_id", Json::Str(hex(&meta.store_id))), ("data", Json::str(cli.data.display()))]),
            )?;
            Ok(())
        }
    }
}

fn compact_line(r: &strongroom_store::CompactReport) -> String {
    format!(
        "compacted: {} live entries copied into a fresh database (generation {}), the old files ({} bytes) overwritten with zeros and removed, in {:.1} s",
        r.entries,
        r.generation,
        r.shredded_bytes,
        r.elapsed.as_secs_f64()
    )
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn kr(s: &str) -> Result<KeyringName, CliError> {
    Ok(KeyringName::new(s)?)
}

pub(crate) fn rn(s: &str) -> Result<RootKeyName, CliError> {
    Ok(RootKeyName::new(s)?)
}

fn progress_to(pb: &indicatif::ProgressBar) -> impl FnMut(Progress) + '_ {
    |p| {
        pb.set_length(p.total);
        pb.set_position(p.done);
    }
}

/// A destroy command's `--after DURATION`, if given.
fn waiting_period(after: Option<&str>) -> Result<Option<std::time::Duration>, CliError> {
    after
        .map(parse_duration)
        .transpose()
        .map_err(CliError::Usage)
}

pub(crate) fn describe_job(j: &PendingJob) -> String {
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

/// The actor recorded in the audit log.
pub(crate) fn actor(cli: &Cli) -> String {
    cli.actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".into())
}

/// The configuration of the store in the data directory.
pub(crate) fn read_config(data: &Path) -> Result<Config, CliError> {
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

/// How the command line loosens the backend's own safety checks (each one an explicit flag).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Overrides {
    /// `--allow-final-pin-try`.
    pub final_pin_try: bool,
    /// `--allow-weak-adoption`.
    pub weak_adoption: bool,
}

impl Overrides {
    pub(crate) fn of(cli: &Cli) -> Self {
        Self {
            final_pin_try: cli.allow_final_pin_try,
            weak_adoption: false,
        }
    }
}

/// The backend a configuration names. A PKCS#11 backend remembers a PIN the token refused in
/// the data directory, so that no later process tries it again.
pub(crate) fn backend(
    config: &Config,
    data: &Path,
    overrides: Overrides,
) -> Result<Arc<dyn Backend>, CliError> {
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

pub(crate) fn options(cli: &Cli, config: &Config) -> StoreOptions {
    StoreOptions {
        actor: actor(cli),
        cache_ttl: config.cache_ttl,
        destruction_delay: config.destruction_delay,
        audit_data_access: config.audit_data_access,
        ..StoreOptions::default()
    }
}

/// Opens the store in the data directory with its configured backend.
pub(crate) fn open(cli: &Cli) -> Result<Store, CliError> {
    open_with(cli, Overrides::of(cli))
}

/// [`open`], with the backend's checks loosened as `overrides` says.
pub(crate) fn open_with(cli: &Cli, overrides: Overrides) -> Result<Store, CliError> {
    let config = read_config(&cli.data)?;
    let backend = backend(&config, &cli.data, overrides)?;
    Ok(Store::open(&cli.data, backend, options(cli, &config))?)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
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

/// `path` made absolute against the current directory (without resolving symlinks): the
/// configuration must name the same file whichever directory later commands run in.
fn absolute(path: &Path) -> Result<std::path::PathBuf, CliError> {
    std::path::absolute(path)
        .map_err(|e| CliError::Usage(format!("cannot make {} absolute: {e}", path.display())))
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
    let config = Config {
        backend,
        primary_root: root.clone(),
        cache_ttl: StoreOptions::default().cache_ttl,
        destruction_delay: StoreOptions::default().destruction_delay,
        audit_data_access: false,
    };
    // Whatever is written must read back the same (a value with leading or trailing spaces or a
    // line break would not).
    if Config::parse(&config.to_text()).as_ref() != Ok(&config) {
        return Err(CliError::Usage(
            "a value given to init (module path, token label, PIN variable or file) has leading or trailing spaces or a line break, which strongroom.conf cannot hold".into(),
        ));
    }
    Ok(config)
}

fn init(cli: &Cli, out: &Out, a: &InitArgs) -> Result<(), CliError> {
    let data = &cli.data;
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
            BackendConfig::Pkcs11 { .. } => backend(
                &config,
                data,
                Overrides {
                    weak_adoption: a.allow_weak_adoption,
                    ..Overrides::of(cli)
                },
            )?,
        };
        let store = match &a.adopt_root {
            Some(sel) => Store::create_adopting(
                data,
                Arc::clone(&backend),
                &root,
                sel,
                options(cli, &config),
            )?,
            None => Store::create(data, Arc::clone(&backend), &root, options(cli, &config))?,
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
    out.result(
        || {
            format!(
                "created store {} in {} on {}; primary root key {root}/v1",
                hex(&store.meta().store_id),
                data.display(),
                info.description
            )
        },
        || {
            Json::obj([
                ("store_id", Json::Str(hex(&store.meta().store_id))),
                ("data", Json::str(data.display())),
                ("backend", Json::str(info.kind)),
                ("backend_instance", Json::Str(info.instance_id.clone())),
                ("primary_root", Json::str(&root)),
            ])
        },
    )?;
    Ok(())
}

fn state_text(s: KeyState) -> String {
    s.to_string()
}

fn root(cli: &Cli, out: &Out, cmd: &RootCmd) -> Result<(), CliError> {
    let s = match cmd {
        RootCmd::Create {
            allow_weak_adoption: true,
            ..
        } => open_with(
            cli,
            Overrides {
                weak_adoption: true,
                ..Overrides::of(cli)
            },
        )?,
        _ => open(cli)?,
    };
    match cmd {
        RootCmd::Create {
            name,
            adopt,
            allow_weak_adoption,
        } => {
            let n = rn(name)?;
            if let Some(sel) = adopt {
                s.backend()
                    .adopt_root(&RootKeyId::new(n.clone(), RootVersion::FIRST), sel)?;
            }
            s.create_root(&n)?;
            if let Some(sel) = adopt {
                s.record_adoption(&n, sel, *allow_weak_adoption)?;
            }
            out.result(
                || format!("root key {n}/v1 created"),
                || Json::obj([("root", Json::str(&n)), ("version", Json::Num(1))]),
            )?;
        }
        RootCmd::Rotate { name } => {
            let n = rn(name)?;
            let pb = out.progress(&format!("rewrapping KEKs under {n}"));
            let mut total = 0;
            let v = s.rotate_root(&n, &mut |p| {
                total = p.total;
                progress_to(&pb)(p);
            })?;
            pb.finish_and_clear();
            out.result(
                || {
                    format!(
                        "root key {n} rotated to {v}; {total} KEK{} rewrapped under it",
                        if total == 1 { "" } else { "s" }
                    )
                },
                || {
                    Json::obj([
                        ("root", Json::str(&n)),
                        ("version", Json::Num(v.get().into())),
                        ("rewrapped", Json::Num(total)),
                    ])
                },
            )?;
        }
        RootCmd::List => {
            let roots = s.roots();
            out.result(
                || {
                    let mut t = format!(
                        "{:<24} {:<8} {:<9} {}\n",
                        "ROOT", "CURRENT", "KEYRINGS", "VERSIONS"
                    );
                    for r in &roots {
                        let versions: Vec<String> = r
                            .versions
                            .iter()
                            .map(|(v, st)| format!("{v}:{}", short_state(*st)))
                            .collect();
                        t.push_str(&format!(
                            "{:<24} {:<8} {:<9} {}{}\n",
                            r.name,
                            r.current.map_or("-".into(), |v| v.to_string()),
                            r.keyrings,
                            versions.join(" "),
                            if r.primary {
                                "  (primary: protects the audit log)"
                            } else {
                                ""
                            }
                        ));
                    }
                    t.trim_end().to_owned()
                },
                || {
                    Json::Arr(
                        roots
                            .iter()
                            .map(|r| {
                                Json::obj([
                                    ("name", Json::str(&r.name)),
                                    (
                                        "current",
                                        r.current.map_or(Json::Null, |v| Json::Num(v.get().into())),
                                    ),
                                    ("keyrings", Json::Num(r.keyrings as u64)),
                                    ("primary", Json::Bool(r.primary)),
                                    (
                                        "versions",
                                        Json::Arr(
                                            r.versions
                                                .iter()
                                                .map(|(v, st)| {
                                                    Json::obj([
                                                        ("version", Json::Num(v.get().into())),
                                                        ("state", Json::Str(state_text(*st))),
                                                    ])
                                                })
                                                .collect(),
                                        ),
                                    ),
                                ])
                            })
                            .collect(),
                    )
                },
            )?;
        }
        RootCmd::Disable { name } => {
            let n = rn(name)?;
            s.disable_root(&n)?;
            out.result(|| format!("root key {n} disabled: every keyring under it is refused until it is enabled"), || Json::obj([("root", Json::str(&n)), ("state", Json::str("disabled"))]))?;
        }
        RootCmd::Enable { name } => {
            let n = rn(name)?;
            s.enable_root(&n)?;
            out.result(
                || format!("root key {n} enabled"),
                || Json::obj([("root", Json::str(&n)), ("state", Json::str("enabled"))]),
            )?;
        }
        RootCmd::Retire {
            name,
            old: version,
            yes,
        } => {
            let n = rn(name)?;
            let v = version
                .trim_start_matches('v')
                .parse::<u32>()
                .ok()
                .and_then(|n| RootVersion::new(n).ok())
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "{version:?} is not a root key version; give a number like 1 (or v1)"
                    ))
                })?;
            confirm(
                &format!("Destroy version {v} of root key {n} in the backend, irreversibly?"),
                *yes,
            )?;
            s.retire_root_version(&n, v)?;
            out.result(
                || format!("root key {n}/{v} retired (destroyed in the backend)"),
                || {
                    Json::obj([
                        ("root", Json::str(&n)),
                        ("retired", Json::Num(v.get().into())),
                    ])
                },
            )?;
        }
        RootCmd::Destroy {
            name,
            when: DestroyArgs { after, now, yes },
        } => {
            let n = rn(name)?;
            if *now {
                confirm(
                    &format!(
                        "Destroy root key {n} and every keyring under it NOW? It is destroyed in the backend, and what it protected becomes unrecoverable, in every copy."
                    ),
                    *yes,
                )?;
                let d = s.destroy_root_now(&n)?;
                out.result(
                    || {
                        let mut t = format!(
                            "root key {n} destroyed; {} keyrings under it crypto-shredded",
                            d.len()
                        );
                        for x in d.iter().filter(|x| !x.former_roots.is_empty()) {
                            let f: Vec<String> = x.former_roots.iter().map(ToString::to_string).collect();
                            t.push_str(&format!(
                                "\nnote: keyring {} lived under root key {} before a move: copies of the store older than that move are only as gone as {}",
                                x.keyring,
                                f.join(", "),
                                f.join(" and ")
                            ));
                        }
                        t
                    },
                    || {
                        Json::obj([
                            ("root", Json::str(&n)),
                            ("state", Json::str("destroyed")),
                            (
                                "keyrings",
                                Json::Arr(d.iter().map(|x| Json::str(&x.keyring)).collect()),
                            ),
                            (
                                "former_roots",
                                Json::Obj(
                                    d.iter()
                                        .filter(|x| !x.former_roots.is_empty())
                                        .map(|x| {
                                            (
                                                x.keyring.to_string(),
                                                Json::Arr(x.former_roots.iter().map(Json::str).collect()),
                                            )
                                        })
                                        .collect(),
                                ),
                            ),
                        ])
                    },
                )?;
            } else {
                let after = waiting_period(after.as_deref())?;
                let when = s.schedule_root_destruction(&n, after)?;
                out.result(
                    || format!("root key {n} will be destroyed at {when}; until then everything under it is refused; cancel with `strongroom root cancel-destroy {n}`"),
                    || Json::obj([("root", Json::str(&n)), ("state", Json::str("pending destruction")), ("not_before", Json::str(when))]),
                )?;
            }
        }
        RootCmd::CancelDestroy { name } => {
            let n = rn(name)?;
            s.cancel_root_destruction(&n)?;
            out.result(|| format!("destruction of root key {n} cancelled; it is disabled: enable it with `strongroom root enable {n}`"), || Json::obj([("root", Json::str(&n)), ("state", Json::str("disabled"))]))?;
        }
    }
    Ok(())
}

fn short_state(s: KeyState) -> &'static str {
    match s {
        KeyState::Enabled => "enabled",
        KeyState::Disabled => "disabled",
        KeyState::PendingDestruction { .. } => "pending-destruction",
        KeyState::Destroyed => "destroyed",
    }
}

fn keyring(cli: &Cli, out: &Out, cmd: &KeyringCmd) -> Result<(), CliError> {
    let s = open(cli)?;
    match cmd {
        KeyringCmd::Create { name, root } => {
            let n = kr(name)?;
            let r = root.as_deref().map(rn).transpose()?;
            let info = s.create_keyring(&n, r.as_ref())?;
            out.result(
                || format!("keyring {n} created under root key {}", info.root),
                || Json::obj([("keyring", Json::str(&n)), ("root", Json::str(&info.root))]),
            )?;
        }
        KeyringCmd::List => {
            let list = s.keyrings()?;
            out.result(
                || {
                    let mut t = format!(
                        "{:<24} {:<22} {:<20} {:<5} {}\n",
                        "KEYRING", "STATE", "ROOT", "KEK", "DEK"
                    );
                    for k in &list {
                        t.push_str(&format!(
                            "{:<24} {:<22} {:<20} {:<5} {}\n",
                            k.name,
                            short_state(k.state),
                            k.root,
                            k.current_kek,
                            k.current_dek
                        ));
                    }
                    t.trim_end().to_owned()
                },
                || Json::Arr(list.iter().map(keyring_json).collect()),
            )?;
        }
        KeyringCmd::Show { name } => {
            let n = kr(name)?;
            let k = s.keyring(&n)?;
            let records = if k.state == KeyState::Enabled {
                s.list(&n, b"").ok().map(|l| l.len())
            } else {
                None
            };
            out.result(
                || {
                    let keks: Vec<String> = k.kek_versions.iter().map(|(v, r)| format!("{v} (under {})", r.as_ref().map_or("?".into(), ToString::to_string))).collect();
                    let deks: Vec<String> = k.dek_versions.iter().map(ToString::to_string).collect();
                    let mut t = format!(
                        "keyring   {}\nstate     {}\nroot      {}\nKEK       {} [{}]\nDEK       {} [{}]\nrecords   {}\ncreated   {}",
                        k.name,
                        k.state,
                        k.root,
                        k.current_kek,
                        keks.join(", "),
                        k.current_dek,
                        deks.join(", "),
                        records.map_or("(not readable now)".into(), |n| n.to_string()),
                        k.created
                    );
                    if let Some(from) = &k.moving_from {
                        t.push_str(&format!("\nmoving    from {from}: its older records still depend on {from} until the move finishes (`strongroom resume`)"));
                    }
                    if !k.former_roots.is_empty() {
                        let f: Vec<String> = k.former_roots.iter().map(ToString::to_string).collect();
                        t.push_str(&format!("\nformerly  under {} (copies made before its move depend on them)", f.join(", ")));
                    }
                    t
                },
                || {
                    let mut j = keyring_json(&k);
                    if let Json::Obj(f) = &mut j {
                        f.push(("records".into(), records.map_or(Json::Null, |n| Json::Num(n as u64))));
                    }
                    j
                },
            )?;
        }
        KeyringCmd::Rotate { name, dek, .. } => {
            let n = kr(name)?;
            if *dek {
                let v = s.rotate_dek(&n)?;
                out.result(|| format!("keyring {n}: new records use DEK {v}; `strongroom reencrypt {n}` moves the old ones"), || Json::obj([("keyring", Json::str(&n)), ("dek", Json::Num(v.get().into()))]))?;
            } else {
                let v = s.rotate_kek(&n)?;
                out.result(|| format!("keyring {n}: KEK rotated to {v}; its DEKs were rewrapped, no record was touched"), || Json::obj([("keyring", Json::str(&n)), ("kek", Json::Num(v.get().into()))]))?;
            }
        }
        KeyringCmd::Move { name, root } => {
            let (n, r) = (kr(name)?, rn(root)?);
            let pb = out.progress(&format!("moving {n} to {r}"));
            let m = s.move_keyring(&n, &r, &mut progress_to(&pb));
            pb.finish_and_clear();
            let m = m?;
            out.result(
                || match &m.from {
                    Some(from) => format!(
                        "keyring {n} moved to root key {r}: fresh KEK and DEK, {} records re-encrypted, its keys under {from} erased and the database compacted\nnote: copies of the store made before the move (backups, snapshots) still open while root key {from} lives",
                        m.reencrypted
                    ),
                    None => format!("keyring {n} is under root key {r} already"),
                },
                || {
                    Json::obj([
                        ("keyring", Json::str(&n)),
                        ("root", Json::str(&r)),
                        ("from", m.from.as_ref().map_or(Json::Null, Json::str)),
                        ("reencrypted", Json::Num(m.reencrypted)),
                    ])
                },
            )?;
        }
        KeyringCmd::Disable { name } => {
            let n = kr(name)?;
            s.disable_keyring(&n)?;
            out.result(
                || format!("keyring {n} disabled"),
                || Json::obj([("keyring", Json::str(&n)), ("state", Json::str("disabled"))]),
            )?;
        }
        KeyringCmd::Enable { name } => {
            let n = kr(name)?;
            s.enable_keyring(&n)?;
            out.result(
                || format!("keyring {n} enabled"),
                || Json::obj([("keyring", Json::str(&n)), ("state", Json::str("enabled"))]),
            )?;
        }
        KeyringCmd::Destroy {
            name,
            when: DestroyArgs { after, now, yes },
        } => {
            let n = kr(name)?;
            if *now {
                confirm(
                    &format!(
                        "Destroy keyring {n} NOW? Its keys and records are erased from this store for good (copies made before, such as backups, stay readable while its root key lives)."
                    ),
                    *yes,
                )?;
                let root = s.keyring(&n)?.root;
                let d = s.destroy_keyring_now(&n)?;
                out.result(
                    || {
                        format!(
                            "keyring {n} destroyed: its wrapped keys and {} records erased, and the database rewritten without them (its old files overwritten and removed)\nnote: copies made before (backups, snapshots) still open while root key {root} lives; destroying {root} is the shred no copy undoes",
                            d.records
                        )
                    },
                    || {
                        Json::obj([
                            ("keyring", Json::str(&n)),
                            ("state", Json::str("destroyed")),
                            ("records_purged", Json::Num(d.records)),
                        ])
                    },
                )?;
            } else {
                let after = waiting_period(after.as_deref())?;
                let when = s.schedule_keyring_destruction(&n, after)?;
                out.result(
                    || format!("keyring {n} will be destroyed at {when}; until then it is refused; cancel with `strongroom keyring cancel-destroy {n}`"),
                    || Json::obj([("keyring", Json::str(&n)), ("state", Json::str("pending destruction")), ("not_before", Json::str(when))]),
                )?;
            }
        }
        KeyringCmd::CancelDestroy { name } => {
            let n = kr(name)?;
            s.cancel_keyring_destruction(&n)?;
            out.result(|| format!("destruction of keyring {n} cancelled; it is disabled: enable it with `strongroom keyring enable {n}`"), || Json::obj([("keyring", Json::str(&n)), ("state", Json::str("disabled"))]))?;
        }
    }
    Ok(())
}

fn keyring_json(k: &strongroom_store::KeyringInfo) -> Json {
    Json::obj([
        ("name", Json::str(&k.name)),
        ("state", Json::Str(state_text(k.state))),
        ("root", Json::str(&k.root)),
        ("kek", Json::Num(k.current_kek.get().into())),
        ("dek", Json::Num(k.current_dek.get().into())),
        (
            "dek_versions",
            Json::Arr(
                k.dek_versions
                    .iter()
                    .map(|v| Json::Num(v.get().into()))
                    .collect(),
            ),
        ),
        ("created", Json::str(k.created)),
        (
            "moving_from",
            k.moving_from.as_ref().map_or(Json::Null, Json::str),
        ),
        (
            "former_roots",
            Json::Arr(k.former_roots.iter().map(Json::str).collect()),
        ),
    ])
}

fn resume(cli: &Cli, out: &Out) -> Result<(), CliError> {
    let s = open(cli)?;
    let jobs = s.pending_jobs()?;
    let mut done = Vec::new();
    // A job that cannot run now (a disabled key, say) is reported, and the others still run.
    let mut first_failure: Option<CliError> = None;
    let mut due_run = false;
    for j in &jobs {
        let r: Result<String, CliError> = match j {
            PendingJob::Reencrypt(k) => {
                let pb = out.progress(&format!("re-encrypting {k}"));
                let r = s.reencrypt(k, &mut progress_to(&pb));
                pb.finish_and_clear();
                r.map(|r| {
                    format!(
                        "keyring {k}: re-encryption finished ({} records)",
                        r.reencrypted
                    )
                })
                .map_err(CliError::from)
            }
            PendingJob::Rewrap { root, .. } => {
                let pb = out.progress(&format!("rewrapping KEKs under {root}"));
                let r = s.rewrap_root(root, &mut progress_to(&pb));
                pb.finish_and_clear();
                r.map(|n| format!("root key {root}: {n} KEKs rewrapped"))
                    .map_err(CliError::from)
            }
            PendingJob::Move { keyring, to, .. } => {
                let pb = out.progress(&format!("moving {keyring}"));
                let r = s.move_keyring(keyring, to, &mut progress_to(&pb));
                pb.finish_and_clear();
                r.map(|m| {
                    format!(
                        "keyring {keyring}: move to root key {to} finished ({} records re-encrypted)",
                        m.reencrypted
                    )
                })
                .map_err(CliError::from)
            }
            PendingJob::Purge(_) => Ok(describe_job(j)),
            // After every other job (a destruction run above compacts by itself).
            PendingJob::Compact => continue,
            PendingJob::BackendDestroy(r) => s
                .finish_root_destruction(r)
                .map(|_| format!("root key {r}: destroyed in the backend"))
                .map_err(CliError::from),
            PendingJob::DueKeyringDestruction(_) | PendingJob::DueRootDestruction(_) => {
                if due_run {
                    continue;
                }
                due_run = true;
                s.run_due_destructions()
                    .map(|d| {
                        let mut lines: Vec<String> = d
                            .iter()
                            .map(|d| format!("keyring {}: destroyed", d.keyring))
                            .collect();
                        if lines.is_empty() {
                            lines.push("due destructions carried out".into());
                        }
                        lines.join("\n")
                    })
                    .map_err(CliError::from)
            }
        };
        match r {
            Ok(line) => done.push(line),
            Err(e) => {
                done.push(format!("not finished: {}: {e}", describe_job(j)));
                first_failure.get_or_insert(e);
            }
        }
    }
    if jobs.contains(&PendingJob::Compact) || s.pending_jobs()?.contains(&PendingJob::Compact) {
        match s.finish_compaction() {
            Ok(Some(r)) => done.push(compact_line(&r)),
            Ok(None) => done.push("compaction: done".into()),
            Err(e) => {
                done.push(format!(
                    "not finished: {}: {e}",
                    describe_job(&PendingJob::Compact)
                ));
                first_failure.get_or_insert(e.into());
            }
        }
    }
    out.result(
        || {
            if done.is_empty() {
                "no unfinished work".into()
            } else {
                done.join("\n")
            }
        },
        || Json::Arr(done.iter().map(Json::str).collect()),
    )?;
    first_failure.map_or(Ok(()), Err)
}

fn audit(cli: &Cli, out: &Out, cmd: &AuditCmd) -> Result<(), CliError> {
    if let AuditCmd::AcceptRollback { yes } = cmd {
        confirm(
            "Accept this database as it is, although its audit anchor says it lost key operations (or the anchor is gone)? Only if you put an older copy in place on purpose.",
            *yes,
        )?;
        let config = read_config(&cli.data)?;
        let backend = backend(&config, &cli.data, Overrides::of(cli))?;
        let s = Store::open_accepting_rollback(&cli.data, backend, options(cli, &config))?;
        let head = s.verify_audit()?.map_err(CliError::Audit)?;
        return out.result(
            || {
                format!(
                    "accepted: the store's audit log now ends at entry {} (recorded), and the anchor says so",
                    head.entries
                )
            },
            || Json::obj([("accepted", Json::Bool(true)), ("entries", Json::Num(head.entries))]),
        );
    }
    let s = open(cli)?;
    match cmd {
        AuditCmd::Verify => match s.verify_audit()? {
            Ok(r) => out.result(
                || {
                    format!(
                        "audit log OK: {} entries, every MAC and link verified; head #{} {}",
                        r.entries,
                        r.head.seq,
                        hex(&r.head.hash)
                    )
                },
                || {
                    Json::obj([
                        ("ok", Json::Bool(true)),
                        ("entries", Json::Num(r.entries)),
                        ("head_seq", Json::Num(r.head.seq)),
                        ("head_hash", Json::Str(hex(&r.head.hash))),
                    ])
                },
            )?,
            Err(b) => return Err(CliError::Audit(b)),
        },
        // Handled above, before the store is opened the ordinary way.
        AuditCmd::AcceptRollback { .. } => {}
        AuditCmd::Log { since, limit } => {
            let (from_seq, from_time) = match since.parse::<u64>() {
                Ok(seq) => (seq, 0),
                Err(_) => (
                    1,
                    strongroom_cli::parse_time(since).map_err(CliError::Usage)?,
                ),
            };
            let entries: Vec<strongroom_store::AuditEntry> = s
                .audit_entries(from_seq)
                .filter(|e| e.as_ref().map_or(true, |e| e.time.unix_secs() >= from_time))
                .take(limit.unwrap_or(usize::MAX))
                .collect::<Result<_, _>>()?;
            out.result(
                || {
                    entries
                        .iter()
                        .map(|e| {
                            format!(
                                "#{:<5} {} {:<12} {:<26} {:<8} {}{}",
                                e.seq,
                                e.time,
                                // Escaped: an actor, target or detail with a line break or
                                // an escape sequence must not forge a line.
                                escape_controls(&e.actor),
                                e.op,
                                e.outcome.as_str(),
                                escape_controls(&e.target),
                                if e.detail.is_empty() {
                                    String::new()
                                } else {
                                    format!(" ({})", escape_controls(&e.detail))
                                }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                || {
                    Json::Arr(
                        entries
                            .iter()
                            .map(|e| {
                                Json::obj([
                                    ("seq", Json::Num(e.seq)),
                                    ("time", Json::str(e.time)),
                                    ("actor", Json::str(&e.actor)),
                                    ("op", Json::str(e.op)),
                                    ("outcome", Json::str(e.outcome.as_str())),
                                    ("target", Json::str(&e.target)),
                                    ("detail", Json::str(&e.detail)),
                                ])
                            })
                            .collect(),
                    )
                },
            )?;
        }
    }
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
