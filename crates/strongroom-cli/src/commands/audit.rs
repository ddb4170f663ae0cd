//! The audit log: `audit verify`, `audit log` and `audit accept-rollback`.

use serde::Serialize;
use strongroom_cli::escape_controls;
use strongroom_store::Store;

use crate::cli::AuditCmd;
use crate::common::hex;

/// `audit accept-rollback --json`.
#[derive(Serialize)]
struct Accepted {
    accepted: bool,
    entries: u64,
}

/// `audit verify --json`.
#[derive(Serialize)]
struct Verified {
    ok: bool,
    entries: u64,
    head_seq: u64,
    head_hash: String,
}

/// One entry of `audit log --json` (the text as recorded, unescaped).
#[derive(Serialize)]
struct Entry {
    seq: u64,
    time: String,
    actor: String,
    /// The replica of a fleet that wrote it; empty when the store named none.
    replica: String,
    op: String,
    outcome: String,
    target: String,
    detail: String,
}
use crate::context::Context;
use crate::error::CliError;
use crate::output::confirm;

pub fn run(ctx: &Context<'_>, cmd: &AuditCmd) -> Result<(), CliError> {
    if let AuditCmd::AcceptRollback { yes } = cmd {
        confirm(
            "Accept this database as it is, although its audit anchor says it lost key operations (or the anchor is gone)? Only if you put an older copy in place on purpose.",
            *yes,
        )?;
        let config = ctx.config()?;
        let backend = ctx.backend(&config, ctx.overrides())?;
        let s = Store::open_accepting_rollback(ctx.data()?, backend, ctx.options(&config))?;
        let head = s.verify_audit()?.map_err(CliError::Audit)?;
        return ctx.out.result(
            || {
                format!(
                    "accepted: the store's audit log now ends at entry {} (recorded), and the anchor says so",
                    head.entries
                )
            },
            || Accepted { accepted: true, entries: head.entries },
        );
    }
    let s = ctx.open()?;
    match cmd {
        AuditCmd::Verify => match s.verify_audit()? {
            Ok(r) => ctx.out.result(
                || {
                    format!(
                        "audit log OK: {} entries, every MAC and link verified; head #{} {}",
                        r.entries,
                        r.head.seq,
                        hex(&r.head.hash)
                    )
                },
                || Verified {
                    ok: true,
                    entries: r.entries,
                    head_seq: r.head.seq,
                    head_hash: hex(&r.head.hash),
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
            ctx.out.result(
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
                                if e.replica.is_empty() {
                                    escape_controls(&e.actor)
                                } else {
                                    format!(
                                        "{}@{}",
                                        escape_controls(&e.actor),
                                        escape_controls(&e.replica)
                                    )
                                },
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
                    entries
                        .iter()
                        .map(|e| Entry {
                            seq: e.seq,
                            time: e.time.to_string(),
                            actor: e.actor.clone(),
                            replica: e.replica.clone(),
                            op: e.op.to_string(),
                            outcome: e.outcome.as_str().to_owned(),
                            target: e.target.clone(),
                            detail: e.detail.clone(),
                        })
                        .collect::<Vec<_>>()
                },
            )?;
        }
    }
    Ok(())
}
