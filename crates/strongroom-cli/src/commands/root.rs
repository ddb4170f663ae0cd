//! Root keys: `root create|rotate|list|disable|enable|retire|destroy|cancel-destroy`.

use strongroom_cli::json::Json;
use strongroom_core::{RootKeyId, RootVersion};

use crate::cli::{DestroyArgs, RootCmd};
use crate::common::*;
use crate::context::Context;
use crate::context::Overrides;
use crate::error::CliError;
use crate::output::confirm;

pub fn run(ctx: &Context<'_>, cmd: &RootCmd) -> Result<(), CliError> {
    let s = match cmd {
        RootCmd::Create {
            allow_weak_adoption: true,
            ..
        } => ctx.open_with(Overrides {
            weak_adoption: true,
            ..ctx.overrides()
        })?,
        _ => ctx.open()?,
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
            ctx.out.result(
                || format!("root key {n}/v1 created"),
                || Json::obj([("root", Json::str(&n)), ("version", Json::Num(1))]),
            )?;
        }
        RootCmd::Rotate { name } => {
            let n = rn(name)?;
            let pb = ctx.out.progress(&format!("rewrapping KEKs under {n}"));
            let mut total = 0;
            let v = s.rotate_root(&n, &mut |p| {
                total = p.total;
                progress_to(&pb)(p);
            })?;
            pb.finish_and_clear();
            ctx.out.result(
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
            ctx.out.result(
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
            ctx.out.result(|| format!("root key {n} disabled: every keyring under it is refused until it is enabled"), || Json::obj([("root", Json::str(&n)), ("state", Json::str("disabled"))]))?;
        }
        RootCmd::Enable { name } => {
            let n = rn(name)?;
            s.enable_root(&n)?;
            ctx.out.result(
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
            ctx.out.result(
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
                ctx.out.result(
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
                ctx.out.result(
                    || format!("root key {n} will be destroyed at {when}; until then everything under it is refused; cancel with `strongroom root cancel-destroy {n}`"),
                    || Json::obj([("root", Json::str(&n)), ("state", Json::str("pending destruction")), ("not_before", Json::str(when))]),
                )?;
            }
        }
        RootCmd::CancelDestroy { name } => {
            let n = rn(name)?;
            s.cancel_root_destruction(&n)?;
            ctx.out.result(|| format!("destruction of root key {n} cancelled; it is disabled: enable it with `strongroom root enable {n}`"), || Json::obj([("root", Json::str(&n)), ("state", Json::str("disabled"))]))?;
        }
    }
    Ok(())
}
