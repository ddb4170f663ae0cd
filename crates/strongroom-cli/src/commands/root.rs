//! Root keys: `root create|rotate|list|disable|enable|retire|destroy|cancel-destroy`.

use std::collections::BTreeMap;

use serde::Serialize;
use strongroom_core::{RootKeyId, RootVersion};
use strongroom_store::PendingJob;

use crate::cli::{DestroyArgs, RootCmd};
use crate::common::{progress_to, rn, short_state, state_text, waiting_period};

/// `root create --json` (`version` is 1) and `root rotate --json` (with `rewrapped`).
#[derive(Serialize)]
struct Version {
    root: String,
    version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    rewrapped: Option<u64>,
    /// KEKs still under older versions after a rotation (its rewrap left to another runner).
    #[serde(skip_serializing_if = "Option::is_none")]
    rewrap_pending: Option<u64>,
}

/// One root key in `root list --json`.
#[derive(Serialize)]
struct RootJson {
    name: String,
    current: Option<u32>,
    keyrings: usize,
    primary: bool,
    versions: Vec<VersionState>,
}

#[derive(Serialize)]
struct VersionState {
    version: u32,
    state: String,
}

/// `root disable|enable|cancel-destroy --json`, and `root destroy --json` (with `not_before`
/// when scheduled, `keyrings` and `former_roots` when destroyed now).
#[derive(Serialize)]
struct State {
    root: String,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keyrings: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    former_roots: Option<BTreeMap<String, Vec<String>>>,
}

impl State {
    fn of(root: &impl std::fmt::Display, state: &'static str) -> Self {
        Self {
            root: root.to_string(),
            state,
            not_before: None,
            keyrings: None,
            former_roots: None,
        }
    }
}

/// `root retire --json`.
#[derive(Serialize)]
struct Retired {
    root: String,
    retired: u32,
}
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
                || Version {
                    root: n.to_string(),
                    version: 1,
                    rewrapped: None,
                    rewrap_pending: None,
                },
            )?;
        }
        RootCmd::Rotate { name } => {
            let n = rn(name)?;
            let pb = ctx.out.progress(&format!("rewrapping KEKs under {n}"));
            let mut done = 0;
            let v = s.rotate_root(&n, &mut |p| {
                done = p.done;
                progress_to(&pb)(p);
            })?;
            pb.finish_and_clear();
            // The rotation is done; its rewrap may not be (another replica runs it, or it gave
            // way to other replicas' key changes): what is left is said, not counted as done.
            let left = s.pending_jobs()?.into_iter().find_map(|j| match j {
                PendingJob::Rewrap { root, keks } if root == n => Some(keks),
                _ => None,
            });
            let keks = |k: u64| format!("{k} KEK{}", if k == 1 { "" } else { "s" });
            ctx.out.result(
                || {
                    let mut t = format!("root key {n} rotated to {v}; {} rewrapped under it", keks(done));
                    if let Some(k) = left {
                        t.push_str(&format!(
                            "; {} still under older versions (another replica may be rewrapping them: `strongroom jobs`; `strongroom resume` finishes them)",
                            keks(k)
                        ));
                    }
                    t
                },
                || Version {
                    root: n.to_string(),
                    version: v.get(),
                    rewrapped: Some(done),
                    rewrap_pending: left,
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
                    roots
                        .iter()
                        .map(|r| RootJson {
                            name: r.name.to_string(),
                            current: r.current.map(|v| v.get()),
                            keyrings: r.keyrings,
                            primary: r.primary,
                            versions: r
                                .versions
                                .iter()
                                .map(|(v, st)| VersionState {
                                    version: v.get(),
                                    state: state_text(*st),
                                })
                                .collect(),
                        })
                        .collect::<Vec<_>>()
                },
            )?;
        }
        RootCmd::Disable { name } => {
            let n = rn(name)?;
            s.disable_root(&n)?;
            ctx.out.result(|| format!("root key {n} disabled: every keyring under it is refused until it is enabled"), || State::of(&n, "disabled"))?;
        }
        RootCmd::Enable { name } => {
            let n = rn(name)?;
            s.enable_root(&n)?;
            ctx.out.result(
                || format!("root key {n} enabled"),
                || State::of(&n, "enabled"),
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
                || Retired {
                    root: n.to_string(),
                    retired: v.get(),
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
                    || State {
                        keyrings: Some(d.iter().map(|x| x.keyring.to_string()).collect()),
                        former_roots: Some(
                            d.iter()
                                .filter(|x| !x.former_roots.is_empty())
                                .map(|x| {
                                    (
                                        x.keyring.to_string(),
                                        x.former_roots.iter().map(ToString::to_string).collect(),
                                    )
                                })
                                .collect(),
                        ),
                        ..State::of(&n, "destroyed")
                    },
                )?;
            } else {
                let after = waiting_period(after.as_deref())?;
                let when = s.schedule_root_destruction(&n, after)?;
                ctx.out.result(
                    || format!("root key {n} will be destroyed at {when}; until then everything under it is refused; cancel with `strongroom root cancel-destroy {n}`"),
                    || State { not_before: Some(when.to_string()), ..State::of(&n, "pending destruction") },
                )?;
            }
        }
        RootCmd::CancelDestroy { name } => {
            let n = rn(name)?;
            s.cancel_root_destruction(&n)?;
            ctx.out.result(|| format!("destruction of root key {n} cancelled; it is disabled: enable it with `strongroom root enable {n}`"), || State::of(&n, "disabled"))?;
        }
    }
    Ok(())
}
