//! Unfinished work: `jobs`, `resume` and `compact`.

use serde::Serialize;
use strongroom_store::PendingJob;

use crate::common::{compact_line, describe_job, progress_to};
use crate::context::Context;
use crate::error::CliError;

/// One unfinished job in `jobs --json`.
#[derive(Serialize)]
struct Job {
    /// What kind of work: `reencrypt`, `rewrap`, `purge`, `keyring-destruction`,
    /// `backend-destroy`, `root-destruction`, `move` or `compact`.
    job: &'static str,
    /// The keyring it is about, if one.
    keyring: Option<String>,
    /// The root key it is about, if one (for a move: the root it moves to).
    root: Option<String>,
    /// What it is and how to finish it.
    description: String,
}

impl Job {
    fn of(j: &PendingJob) -> Self {
        let s = |x: &dyn std::fmt::Display| Some(x.to_string());
        let (job, keyring, root) = match j {
            PendingJob::Reencrypt(k) => ("reencrypt", s(k), None),
            PendingJob::Rewrap { root, .. } => ("rewrap", None, s(root)),
            PendingJob::Purge(_) => ("purge", None, None),
            PendingJob::DueKeyringDestruction(k) => ("keyring-destruction", s(k), None),
            PendingJob::BackendDestroy(r) => ("backend-destroy", None, s(r)),
            PendingJob::DueRootDestruction(r) => ("root-destruction", None, s(r)),
            PendingJob::Move { keyring, to, .. } => ("move", s(keyring), s(to)),
            PendingJob::Compact => ("compact", None, None),
        };
        Self {
            job,
            keyring,
            root,
            description: describe_job(j),
        }
    }
}

/// One job `resume --json` ran: the job (as `jobs --json` gives it), whether it finished, and
/// the line the text view prints for it.
#[derive(Serialize)]
struct Outcome {
    #[serde(flatten)]
    job: Job,
    finished: bool,
    result: String,
}

impl Outcome {
    fn of(j: &PendingJob, r: &Result<String, CliError>) -> Self {
        Self {
            job: Job::of(j),
            finished: r.is_ok(),
            result: match r {
                Ok(line) => line.clone(),
                Err(e) => format!("not finished: {}: {e}", describe_job(j)),
            },
        }
    }
}

/// `compact --json`.
#[derive(Serialize)]
struct Compact {
    generation: u64,
    entries: u64,
    dropped: u64,
    shredded_bytes: u64,
    millis: u64,
}

pub fn jobs(ctx: &Context<'_>) -> Result<(), CliError> {
    let s = ctx.open()?;
    let jobs = s.pending_jobs()?;
    let lines: Vec<String> = jobs.iter().map(describe_job).collect();
    ctx.out.result(
        || {
            if lines.is_empty() {
                "no unfinished work".into()
            } else {
                lines.join("\n")
            }
        },
        || jobs.iter().map(Job::of).collect::<Vec<_>>(),
    )?;
    Ok(())
}

pub fn compact(ctx: &Context<'_>) -> Result<(), CliError> {
    let s = ctx.open()?;
    let r = s.compact()?;
    ctx.out.result(
        || compact_line(&r),
        || Compact {
            generation: r.generation,
            entries: r.entries,
            dropped: r.dropped,
            shredded_bytes: r.shredded_bytes,
            millis: u64::try_from(r.elapsed.as_millis()).unwrap_or(u64::MAX),
        },
    )?;
    Ok(())
}

pub fn resume(ctx: &Context<'_>) -> Result<(), CliError> {
    let s = ctx.open()?;
    let jobs = s.pending_jobs()?;
    let mut done = Vec::new();
    // A job that cannot run now (a disabled key, say) is reported, and the others still run.
    let mut first_failure: Option<CliError> = None;
    let mut due_run = false;
    for j in &jobs {
        let r: Result<String, CliError> = match j {
            PendingJob::Reencrypt(k) => {
                let pb = ctx.out.progress(&format!("re-encrypting {k}"));
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
                let pb = ctx.out.progress(&format!("rewrapping KEKs under {root}"));
                let r = s.rewrap_root(root, &mut progress_to(&pb));
                pb.finish_and_clear();
                r.map(|n| format!("root key {root}: {n} KEKs rewrapped"))
                    .map_err(CliError::from)
            }
            PendingJob::Move { keyring, to, .. } => {
                let pb = ctx.out.progress(&format!("moving {keyring}"));
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
        done.push(Outcome::of(j, &r));
        if let Err(e) = r {
            first_failure.get_or_insert(e);
        }
    }
    if jobs.contains(&PendingJob::Compact) || s.pending_jobs()?.contains(&PendingJob::Compact) {
        let r = match s.finish_compaction() {
            Ok(Some(r)) => Ok(compact_line(&r)),
            Ok(None) => Ok("compaction: done".into()),
            Err(e) => Err(CliError::from(e)),
        };
        done.push(Outcome::of(&PendingJob::Compact, &r));
        if let Err(e) = r {
            first_failure.get_or_insert(e);
        }
    }
    ctx.out.result(
        || {
            if done.is_empty() {
                "no unfinished work".into()
            } else {
                done.iter()
                    .map(|o| o.result.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        },
        || &done,
    )?;
    first_failure.map_or(Ok(()), Err)
}
