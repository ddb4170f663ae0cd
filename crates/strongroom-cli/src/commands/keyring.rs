//! Keyrings: `keyring create|list|show|rotate|move|disable|enable|destroy|cancel-destroy`.

use strongroom_cli::json::Json;
use strongroom_core::KeyState;

use crate::cli::{DestroyArgs, KeyringCmd};
use crate::common::*;
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
                || Json::obj([("keyring", Json::str(&n)), ("root", Json::str(&info.root))]),
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
                ctx.out.result(|| format!("keyring {n}: new records use DEK {v}; `strongroom reencrypt {n}` moves the old ones"), || Json::obj([("keyring", Json::str(&n)), ("dek", Json::Num(v.get().into()))]))?;
            } else {
                let v = s.rotate_kek(&n)?;
                ctx.out.result(|| format!("keyring {n}: KEK rotated to {v}; its DEKs were rewrapped, no record was touched"), || Json::obj([("keyring", Json::str(&n)), ("kek", Json::Num(v.get().into()))]))?;
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
            ctx.out.result(
                || format!("keyring {n} disabled"),
                || Json::obj([("keyring", Json::str(&n)), ("state", Json::str("disabled"))]),
            )?;
        }
        KeyringCmd::Enable { name } => {
            let n = kr(name)?;
            s.enable_keyring(&n)?;
            ctx.out.result(
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
                ctx.out.result(
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
                ctx.out.result(
                    || format!("keyring {n} will be destroyed at {when}; until then it is refused; cancel with `strongroom keyring cancel-destroy {n}`"),
                    || Json::obj([("keyring", Json::str(&n)), ("state", Json::str("pending destruction")), ("not_before", Json::str(when))]),
                )?;
            }
        }
        KeyringCmd::CancelDestroy { name } => {
            let n = kr(name)?;
            s.cancel_keyring_destruction(&n)?;
            ctx.out.result(|| format!("destruction of keyring {n} cancelled; it is disabled: enable it with `strongroom keyring enable {n}`"), || Json::obj([("keyring", Json::str(&n)), ("state", Json::str("disabled"))]))?;
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
