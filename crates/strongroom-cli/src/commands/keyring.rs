//! Keyrings: `keyring create|list|show|rotate|move|disable|enable|destroy|cancel-destroy`.

use serde::Serialize;
use strongroom_core::KeyState;

use crate::cli::{DestroyArgs, KeyringCmd};
use crate::common::{kr, progress_to, rn, short_state, state_text, waiting_period};

/// A keyring in `keyring list --json`, and `keyring show --json` (with `records`).
#[derive(Serialize)]
struct KeyringJson {
    name: String,
    state: String,
    root: String,
    kek: u32,
    dek: u32,
    dek_versions: Vec<u32>,
    created: String,
    moving_from: Option<String>,
    former_roots: Vec<String>,
}

impl KeyringJson {
    fn of(k: &strongroom_store::KeyringInfo) -> Self {
        Self {
            name: k.name.to_string(),
            state: state_text(k.state),
            root: k.root.to_string(),
            kek: k.current_kek.get(),
            dek: k.current_dek.get(),
            dek_versions: k.dek_versions.iter().map(|v| v.get()).collect(),
            created: k.created.to_string(),
            moving_from: k.moving_from.as_ref().map(ToString::to_string),
            former_roots: k.former_roots.iter().map(ToString::to_string).collect(),
        }
    }
}

/// `keyring show --json`.
#[derive(Serialize)]
struct Show {
    #[serde(flatten)]
    keyring: KeyringJson,
    /// How many records it holds, or `null` when it cannot be read now.
    records: Option<usize>,
}

/// `keyring create --json`.
#[derive(Serialize)]
struct Created {
    keyring: String,
    root: String,
}

/// `keyring rotate --json`: `kek` or `dek`, the new version.
#[derive(Serialize)]
struct Rotated {
    keyring: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    kek: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dek: Option<u32>,
}

/// `keyring move --json`.
#[derive(Serialize)]
struct Moved {
    keyring: String,
    root: String,
    /// The root it was under, or `null` when it was under `root` already.
    from: Option<String>,
    reencrypted: u64,
}

/// `keyring disable|enable|cancel-destroy|destroy --json` (`not_before` when a destruction is
/// scheduled, `records_purged` when it is destroyed now).
#[derive(Serialize)]
struct State {
    keyring: String,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    records_purged: Option<u64>,
}

impl State {
    fn of(keyring: &impl std::fmt::Display, state: &'static str) -> Self {
        Self {
            keyring: keyring.to_string(),
            state,
            not_before: None,
            records_purged: None,
        }
    }
}
use crate::context::Context;
use crate::error::CliError;
use crate::output::confirm;

pub fn run(ctx: &Context<'_>, cmd: &KeyringCmd) -> Result<(), CliError> {
    let s = ctx.open()?;
    match cmd {
        KeyringCmd::Create { name, root } => {
            let n = kr(name)?;
            let r = root.as_deref().map(rn).transpose()?;
            let info = s.create_keyring(&n, r.as_ref())?;
            ctx.out.result(
                || format!("keyring {n} created under root key {}", info.root),
                || Created {
                    keyring: n.to_string(),
                    root: info.root.to_string(),
                },
            )?;
        }
        KeyringCmd::List => {
            let list = s.keyrings()?;
            ctx.out.result(
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
                || list.iter().map(KeyringJson::of).collect::<Vec<_>>(),
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
            ctx.out.result(
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
                || Show {
                    keyring: KeyringJson::of(&k),
                    records,
                },
            )?;
        }
        KeyringCmd::Rotate { name, dek, .. } => {
            let n = kr(name)?;
            if *dek {
                let v = s.rotate_dek(&n)?;
                ctx.out.result(|| format!("keyring {n}: new records use DEK {v}; `strongroom reencrypt {n}` moves the old ones"), || Rotated { keyring: n.to_string(), kek: None, dek: Some(v.get()) })?;
            } else {
                let v = s.rotate_kek(&n)?;
                ctx.out.result(|| format!("keyring {n}: KEK rotated to {v}; its DEKs were rewrapped, no record was touched"), || Rotated { keyring: n.to_string(), kek: Some(v.get()), dek: None })?;
            }
        }
        KeyringCmd::Move { name, root } => {
            let (n, r) = (kr(name)?, rn(root)?);
            let pb = ctx.out.progress(&format!("moving {n} to {r}"));
            let m = s.move_keyring(&n, &r, &mut progress_to(&pb));
            pb.finish_and_clear();
            let m = m?;
            ctx.out.result(
                || match &m.from {
                    Some(from) => format!(
                        "keyring {n} moved to root key {r}: fresh KEK and DEK, {} records re-encrypted, its keys under {from} erased and the database compacted\nnote: copies of the store made before the move (backups, snapshots) still open while root key {from} lives",
                        m.reencrypted
                    ),
                    None => format!("keyring {n} is under root key {r} already"),
                },
                || Moved {
                    keyring: n.to_string(),
                    root: r.to_string(),
                    from: m.from.as_ref().map(ToString::to_string),
                    reencrypted: m.reencrypted,
                },
            )?;
        }
        KeyringCmd::Disable { name } => {
            let n = kr(name)?;
            s.disable_keyring(&n)?;
            ctx.out.result(
                || format!("keyring {n} disabled"),
                || State::of(&n, "disabled"),
            )?;
        }
        KeyringCmd::Enable { name } => {
            let n = kr(name)?;
            s.enable_keyring(&n)?;
            ctx.out.result(
                || format!("keyring {n} enabled"),
                || State::of(&n, "enabled"),
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
                ctx.out.result(
                    || {
                        format!(
                            "keyring {n} destroyed: its wrapped keys and {} records erased, and the database rewritten without them (its old files overwritten and removed)\nnote: copies made before (backups, snapshots) still open while root key {root} lives; destroying {root} is the shred no copy undoes",
                            d.records
                        )
                    },
                    || State {
                        records_purged: Some(d.records),
                        ..State::of(&n, "destroyed")
                    },
                )?;
            } else {
                let after = waiting_period(after.as_deref())?;
                let when = s.schedule_keyring_destruction(&n, after)?;
                ctx.out.result(
                    || format!("keyring {n} will be destroyed at {when}; until then it is refused; cancel with `strongroom keyring cancel-destroy {n}`"),
                    || State { not_before: Some(when.to_string()), ..State::of(&n, "pending destruction") },
                )?;
            }
        }
        KeyringCmd::CancelDestroy { name } => {
            let n = kr(name)?;
            s.cancel_keyring_destruction(&n)?;
            ctx.out.result(|| format!("destruction of keyring {n} cancelled; it is disabled: enable it with `strongroom keyring enable {n}`"), || State::of(&n, "disabled"))?;
        }
    }
    Ok(())
}
