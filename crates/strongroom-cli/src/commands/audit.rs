//! The audit log: `audit verify`, `audit log` and `audit accept-rollback`.

use strongroom_cli::escape_controls;
use strongroom_cli::json::Json;
use strongroom_store::Store;

use crate::cli::AuditCmd;
use crate::common::*;
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
        let s = Store::open_accepting_rollback(ctx.data(), backend, ctx.options(&config))?;
        let head = s.verify_audit()?.map_err(CliError::Audit)?;
        return ctx.out.result(
            || {
                format!(
                    "accepted: the store's audit log now ends at entry {} (recorded), and the anchor says so",
                    head.entries
                )
            },
            || Json::obj([("accepted", Json::Bool(true)), ("entries", Json::Num(head.entries))]),
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
