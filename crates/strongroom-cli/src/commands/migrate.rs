//! `migrate`: the store copied into the other engine (sled in the data directory, or a
//! PostgreSQL database), every entry verified, then `strongroom.conf` switched to it.

use std::path::Path;

use serde::Serialize;
use strongroom_cli::config::{CONFIG_FILE, StorageConfig};
use strongroom_postgres::PgEngine;
use strongroom_store::{Engine, SledEngine};

use crate::cli::{MigrateArgs, StorageKind};
use crate::common::{pg_flags_given, pg_storage, progress_to, write_private};
use crate::context::{Context, connecting, pg_config};
use crate::error::CliError;

#[derive(Serialize)]
struct Migrated {
    from: String,
    to: String,
    to_location: String,
    entries: u64,
    bytes: u64,
    source_shredded: bool,
}

fn describe(s: &StorageConfig) -> &'static str {
    match s {
        StorageConfig::Sled => "sled",
        StorageConfig::Postgres { .. } => "postgres",
    }
}

pub fn run(ctx: &Context<'_>, a: &MigrateArgs) -> Result<(), CliError> {
    let data = ctx.data()?;
    let mut config = ctx.config()?;
    let target = match a.to {
        StorageKind::Sled => {
            if !pg_flags_given(&a.pg).is_empty() {
                return Err(CliError::Usage(
                    "--pg-url-env, --pg-url-file and --pg-schema apply to --to postgres".into(),
                ));
            }
            StorageConfig::Sled
        }
        StorageKind::Postgres => pg_storage(&a.pg)?,
    };
    if describe(&target) == describe(&config.storage) {
        return Err(CliError::Usage(format!(
            "the store is on {} already; migrate moves it to the other engine",
            describe(&target)
        )));
    }
    let store = ctx.open()?;
    let target_engine: Box<dyn Engine> = match &target {
        StorageConfig::Sled => Box::new(SledEngine::create(data).map_err(|e| match e {
            strongroom_store::StoreError::AlreadyExists { .. } => CliError::Usage(format!(
                "{} holds a sled database already (left by an earlier migration?): move it away, or shred it, before migrating back",
                data.display()
            )),
            other => other.into(),
        })?),
        pg @ StorageConfig::Postgres { .. } => {
            Box::new(PgEngine::connect(&pg_config(pg)?).map_err(connecting)?)
        }
    };
    let pb = ctx.out.progress("copying and verifying entries");
    let report = store.migrate_into(&*target_engine, &mut progress_to(&pb));
    pb.finish_and_clear();
    let report = report?;
    let from = std::mem::replace(&mut config.storage, target);
    let from_engine = store.engine_info();
    drop(store);
    drop(target_engine);
    // The switch: the configuration now names the new engine (written beside, then renamed
    // over the old one).
    let conf = data.join(CONFIG_FILE);
    let tmp = data.join(format!("{CONFIG_FILE}.migrate"));
    let _ = std::fs::remove_file(&tmp);
    write_private(&tmp, config.to_text().as_bytes())?;
    std::fs::rename(&tmp, &conf)
        .map_err(|e| CliError::Other(format!("switching {}: {e}", conf.display())))?;
    // On the disk before anything of the old copy is shredded: a crash must never leave a
    // configuration naming a copy that is gone.
    std::fs::File::open(data)
        .and_then(|d| d.sync_all())
        .map_err(|e| CliError::Other(format!("syncing {}: {e}", data.display())))?;
    let shredded = if a.shred_source {
        shred_source(data, &from)?;
        true
    } else {
        false
    };
    ctx.out.result(
        || {
            let mut t = format!(
                "{} entries ({} bytes) copied from {} into {} ({}) and verified; {} now uses it",
                report.entries,
                report.bytes,
                describe(&from),
                report.to.kind,
                report.to.location,
                conf.display()
            );
            if shredded {
                t.push_str(&format!("\nthe {} copy was shredded", describe(&from)));
            } else {
                t.push_str(&format!(
                    "\nnote: the {} copy ({}) is still there, sealed, and is not shredded by later destructions: remove it with `strongroom migrate` ... --shred-source next time, or by hand",
                    describe(&from),
                    from_engine.location
                ));
            }
            t
        },
        || Migrated {
            from: describe(&from).into(),
            to: report.to.kind.into(),
            to_location: report.to.location.clone(),
            entries: report.entries,
            bytes: report.bytes,
            source_shredded: shredded,
        },
    )?;
    Ok(())
}

/// Removes the copy the store was migrated from.
fn shred_source(data: &Path, from: &StorageConfig) -> Result<(), CliError> {
    match from {
        StorageConfig::Sled => {
            strongroom_store::engine::sled::shred_database(data)?;
        }
        pg @ StorageConfig::Postgres { .. } => {
            let engine = PgEngine::connect(&pg_config(pg)?).map_err(connecting)?;
            engine
                .compact(&|_, _| false, std::time::Duration::from_secs(30))
                .map_err(|source| {
                    CliError::Store(strongroom_store::StoreError::Storage {
                        while_doing: "emptying the PostgreSQL copy",
                        source,
                    })
                })?;
        }
    }
    Ok(())
}
