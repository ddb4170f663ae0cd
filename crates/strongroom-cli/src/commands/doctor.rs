//! `strongroom doctor`: each line OK, WARN or FAIL, with the fix for anything not OK.

use serde::Serialize;
use strongroom_cli::escape_controls;
use strongroom_core::{Backend, KeyState, RootKeyId, RootStatus};
use strongroom_store::Store;

use crate::common::{describe_job, hex, record_cipher};
use crate::context::Context;
use crate::error::CliError;
use crate::output::Out;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

/// One check in `doctor --json`.
#[derive(Serialize)]
struct CheckJson<'a> {
    /// `OK`, `WARN` or `FAIL`.
    status: &'static str,
    /// What was checked (without the text view's indentation).
    check: &'a str,
    detail: &'a str,
}

struct Line {
    status: Status,
    name: String,
    detail: String,
}

#[derive(Default)]
struct Report(Vec<Line>);

impl Report {
    fn add(&mut self, status: Status, name: impl Into<String>, detail: impl Into<String>) {
        self.0.push(Line {
            status,
            name: name.into(),
            detail: detail.into(),
        });
    }

    fn print(&self, out: &Out) -> Result<(), CliError> {
        out.result(
            || {
                self.0
                    .iter()
                    .map(|l| format!("{:<5} {:<22} {}", l.status.as_str(), l.name, l.detail))
                    .collect::<Vec<_>>()
                    .join("\n")
            },
            || {
                self.0
                    .iter()
                    .map(|l| CheckJson {
                        status: l.status.as_str(),
                        check: l.name.trim(),
                        detail: &l.detail,
                    })
                    .collect::<Vec<_>>()
            },
        )?;
        let fails = self.0.iter().filter(|l| l.status == Status::Fail).count();
        if fails > 0 {
            return Err(CliError::Checks(format!(
                "doctor found {fails} problem{}; the FAIL lines above say what to do",
                if fails == 1 { "" } else { "s" }
            )));
        }
        Ok(())
    }
}

pub fn run(ctx: &Context<'_>) -> Result<(), CliError> {
    let data = ctx.data()?;
    let out = ctx.out;
    let mut r = Report::default();
    let config = match ctx.config() {
        Ok(c) => {
            r.add(
                Status::Ok,
                "configuration",
                format!(
                    "{}",
                    data.join(strongroom_cli::config::CONFIG_FILE).display()
                ),
            );
            c
        }
        Err(e) => {
            r.add(Status::Fail, "configuration", e.to_string());
            return r.print(out);
        }
    };
    r.add(Status::Ok, "record cipher", record_cipher());
    let backend = match ctx.backend(&config, ctx.overrides()) {
        Ok(b) => b,
        Err(e) => {
            r.add(Status::Fail, "backend", e.to_string());
            return r.print(out);
        }
    };
    let info = backend.describe();
    r.add(
        Status::Ok,
        "backend",
        format!("{}: {}", info.kind, info.description),
    );
    match backend.health() {
        Ok(checks) => {
            for c in checks {
                r.add(
                    if c.ok { Status::Ok } else { Status::Fail },
                    format!("  {}", c.name),
                    c.detail,
                );
            }
        }
        Err(e) => r.add(Status::Fail, "  health", e.to_string()),
    }
    r.add(
        Status::Ok,
        "  root key protection",
        format!(
            "new wraps use {}; {}",
            info.capabilities
                .preferred_alg()
                .map_or("none".into(), |a| a.to_string()),
            if info.capabilities.hardware {
                "root keys never leave the HSM"
            } else {
                "root keys are in a local key file (see the README's security model)"
            }
        ),
    );
    let engine: Option<Box<dyn strongroom_store::Engine>> = match &config.storage {
        strongroom_cli::config::StorageConfig::Sled => {
            r.add(Status::Ok, "storage", format!("sled in {}", data.display()));
            None
        }
        storage @ strongroom_cli::config::StorageConfig::Postgres { .. } => {
            match crate::context::pg_config(storage).and_then(|c| {
                strongroom_postgres::PgEngine::connect(&c).map_err(crate::context::connecting)
            }) {
                Ok(pg) => {
                    r.add(
                        Status::Ok,
                        "storage",
                        format!("PostgreSQL, {}", pg.config().location()),
                    );
                    match pg.server_version() {
                        Ok(v) => r.add(Status::Ok, "  server version", v),
                        Err(e) => r.add(Status::Fail, "  server version", e.to_string()),
                    }
                    match pg.tls_in_use() {
                        Ok(Some(v)) => r.add(
                            Status::Ok,
                            "  TLS",
                            format!("{v}, sslmode={}", pg.config().tls.mode.as_str()),
                        ),
                        Ok(None) => r.add(
                            Status::Warn,
                            "  TLS",
                            "the connection is not encrypted: add sslmode=verify-full&sslrootcert=<CA file> to the URL (the store's values are sealed, but the database password and the access pattern are not)",
                        ),
                        Err(e) => r.add(Status::Fail, "  TLS", e.to_string()),
                    }
                    if pg.config().tls.mode != strongroom_postgres::SslMode::VerifyFull
                        && pg.config().tls.mode != strongroom_postgres::SslMode::Disable
                    {
                        r.add(
                            Status::Warn,
                            "  TLS verification",
                            format!(
                                "sslmode={} encrypts but does not check the server's certificate: use sslmode=verify-full with sslrootcert",
                                pg.config().tls.mode.as_str()
                            ),
                        );
                    }
                    match pg.schema_version() {
                        Ok(v) if v == strongroom_postgres::SCHEMA_VERSION => r.add(
                            Status::Ok,
                            "  schema version",
                            format!("{v} (this build's)"),
                        ),
                        Ok(v) => r.add(
                            Status::Fail,
                            "  schema version",
                            format!(
                                "{v}, this build reads {}",
                                strongroom_postgres::SCHEMA_VERSION
                            ),
                        ),
                        Err(e) => r.add(Status::Fail, "  schema version", e.to_string()),
                    }
                    Some(Box::new(pg))
                }
                Err(e) => {
                    r.add(Status::Fail, "storage", e.to_string());
                    return r.print(out);
                }
            }
        }
    };
    let opened = match engine {
        None => Store::open(data, std::sync::Arc::clone(&backend), ctx.options(&config)),
        Some(e) => Store::open_on(
            data,
            e,
            std::sync::Arc::clone(&backend),
            ctx.options(&config),
        ),
    };
    let store = match opened {
        Ok(s) => s,
        Err(e) => {
            r.add(Status::Fail, "store", e.to_string());
            return r.print(out);
        }
    };
    let m = store.meta();
    r.add(
        Status::Ok,
        "store",
        format!(
            "format {}, id {}, created {}, {} bytes on disk",
            strongroom_store::format::STORE_FORMAT_VERSION,
            hex(&m.store_id),
            m.created,
            store.size_on_disk().unwrap_or(0)
        ),
    );
    if let strongroom_cli::config::StorageConfig::Postgres {
        fleet: Some(poll), ..
    } = &config.storage
    {
        fleet_lines(&mut r, &store, *poll);
    }
    for root in store.roots() {
        for (v, state) in &root.versions {
            let id = RootKeyId::new(root.name.clone(), *v);
            let want = match state {
                KeyState::Destroyed => {
                    // Destroyed in the store: the backend must not still hold a usable key.
                    if let Ok(Some(b)) = backend.find_root(&id)
                        && b.status != RootStatus::Destroyed
                        && b.status != RootStatus::Unavailable
                    {
                        r.add(
                            Status::Fail,
                            format!("root {id}"),
                            format!("destroyed in the store but {} in the backend: run `strongroom resume` to destroy it there", b.status),
                        );
                    }
                    continue;
                }
                KeyState::Enabled => RootStatus::Enabled,
                _ => RootStatus::Disabled,
            };
            match backend.find_root(&id) {
                Ok(Some(b)) if b.status == want || (want == RootStatus::Disabled && !info.capabilities.disable) => {
                    r.add(Status::Ok, format!("root {id}"), format!("{} ({})", b.status, b.locator));
                }
                Ok(Some(b)) => r.add(
                    Status::Fail,
                    format!("root {id}"),
                    format!(
                        "the store has it {state}, the backend reports it {}: it was changed outside strongroom; {}",
                        b.status,
                        if b.status == RootStatus::Unavailable || b.status == RootStatus::Destroyed {
                            "restore it in the HSM from its backup, or destroy what depends on it"
                        } else {
                            "run `strongroom root enable` / `disable` to bring them in line"
                        }
                    ),
                ),
                Ok(None) => r.add(Status::Fail, format!("root {id}"), "missing from the backend: restore it in the HSM (or the soft key file from its backup)"),
                Err(e) => r.add(Status::Fail, format!("root {id}"), e.to_string()),
            }
        }
    }
    match store.verify_audit() {
        Ok(Ok(a)) => r.add(Status::Ok, "audit log", format!("{} entries; chain and MACs verify", a.entries)),
        Ok(Err(b)) => r.add(Status::Fail, "audit log", format!("{b}; the log was tampered with: keep this store for investigation and restore from a backup")),
        Err(e) => r.add(Status::Fail, "audit log", e.to_string()),
    }
    match store.pending_jobs() {
        Ok(jobs) if jobs.is_empty() => r.add(Status::Ok, "unfinished work", "none"),
        Ok(jobs) => {
            for j in jobs {
                r.add(Status::Warn, "unfinished work", describe_job(&j));
            }
        }
        Err(e) => r.add(Status::Fail, "unfinished work", e.to_string()),
    }
    r.print(out)
}

/// A fleet: the key-state generation, and the replicas seen lately with the generation each
/// serves (one behind the database for up to the poll interval after a key change).
fn fleet_lines(r: &mut Report, store: &Store, poll: std::time::Duration) {
    let generation = match store.generations() {
        Ok((stored, _)) => stored,
        Err(e) => {
            r.add(Status::Fail, "fleet", e.to_string());
            return;
        }
    };
    r.add(
        Status::Ok,
        "fleet",
        format!(
            "key-state generation {generation}; replicas check it every {} ms",
            poll.as_millis()
        ),
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    match store.replicas() {
        Ok(seen) if seen.is_empty() => r.add(
            Status::Ok,
            "  replicas",
            "none has reported itself yet (a replica reports about once a second while it runs)",
        ),
        Ok(seen) => {
            // Recent: within a few report periods and poll intervals.
            let recent_ms = 5_000 + 3 * u64::try_from(poll.as_millis()).unwrap_or(u64::MAX);
            for s in seen {
                let ago = now_ms.saturating_sub(s.seen_unix_ms);
                let name = format!("  replica {}", escape_controls(&s.name));
                if ago > recent_ms {
                    // Stopped, or cannot reach the database: not an error of the fleet.
                    r.add(
                        Status::Ok,
                        name,
                        format!(
                            "last seen {:.1} s ago at generation {} (not running)",
                            ago as f64 / 1000.0,
                            s.generation
                        ),
                    );
                } else if s.generation == generation {
                    r.add(
                        Status::Ok,
                        name,
                        format!(
                            "seen {:.1} s ago, serving generation {}",
                            ago as f64 / 1000.0,
                            s.generation
                        ),
                    );
                } else {
                    r.add(
                        Status::Warn,
                        name,
                        format!(
                            "seen {:.1} s ago, serving generation {} of {generation}: it takes the newer key states in at its next poll; if this stays, it cannot reload them (see its log)",
                            ago as f64 / 1000.0,
                            s.generation
                        ),
                    );
                }
            }
        }
        Err(e) => r.add(Status::Fail, "  replicas", e.to_string()),
    }
    match store.anchor_in_backend() {
        Some(Some(seq)) => r.add(
            Status::Ok,
            "  audit anchor",
            format!("kept in the HSM, at entry {seq} (genuine)"),
        ),
        Some(None) => r.add(
            Status::Warn,
            "  audit anchor",
            "kept in the HSM, but none there verifies now (none written yet, removed, or the HSM or the audit key cannot be read): a new replica refuses to open until a key change writes it again",
        ),
        None => r.add(
            Status::Ok,
            "  audit anchor",
            "a file in each replica's data directory (the backend keeps none: a replica on a new machine needs the file of one that ran before)",
        ),
    }
    // Jobs running now, and by whom; a lease that ran out is a replica that died mid-job
    // (the next runner takes it over and resumes).
    match store.job_leases() {
        Ok(leases) => {
            for l in leases {
                let name = format!("  job {}", escape_controls(&l.job));
                let who = escape_controls(&l.replica);
                if l.expired {
                    r.add(
                        Status::Warn,
                        name,
                        format!(
                            "its lease (held by {who}) ran out: that replica died or stalled mid-job; `strongroom jobs resume` (or any replica's next run of it) takes it over"
                        ),
                    );
                } else {
                    r.add(
                        Status::Ok,
                        name,
                        format!(
                            "running on {who}, lease until {:.1} s from now",
                            l.expires_in_ms as f64 / 1000.0
                        ),
                    );
                }
            }
        }
        Err(e) => r.add(Status::Fail, "  jobs", e.to_string()),
    }
}
