//! One module per command group, each working from the [`Context`] and none depending on
//! another.

mod audit;
mod backup;
mod bench;
mod bench_fleet;
mod docs;
mod doctor;
mod init;
mod jobs;
mod keyring;
mod migrate;
mod records;
mod root;
mod tour;

use crate::cli::Cmd;
use crate::context::Context;
use crate::error::CliError;

/// Runs the command the command line names.
pub fn run(ctx: &Context<'_>) -> Result<(), CliError> {
    match &ctx.cli.cmd {
        Cmd::Init(args) => init::run(ctx, args),
        Cmd::Root(cmd) => root::run(ctx, cmd),
        Cmd::Keyring(cmd) => keyring::run(ctx, cmd),
        Cmd::Put {
            keyring,
            key,
            key_hex,
            value,
        } => records::put(ctx, keyring, key, *key_hex, value.as_ref()),
        Cmd::Get {
            keyring,
            key,
            key_hex,
        } => records::get(ctx, keyring, key, *key_hex),
        Cmd::Delete {
            keyring,
            key,
            key_hex,
        } => records::delete(ctx, keyring, key, *key_hex),
        Cmd::List { keyring, prefix } => records::list(ctx, keyring, prefix),
        Cmd::Reencrypt { keyring } => records::reencrypt(ctx, keyring),
        Cmd::Jobs => jobs::jobs(ctx),
        Cmd::Resume => jobs::resume(ctx),
        Cmd::Compact => jobs::compact(ctx),
        Cmd::Audit(cmd) => audit::run(ctx, cmd),
        Cmd::Doctor => doctor::run(ctx),
        Cmd::Bench(args) => bench::run(ctx, args),
        Cmd::BenchReplica(args) => bench_fleet::replica(args),
        Cmd::Tour => tour::run(ctx),
        Cmd::Backup { file } => backup::backup(ctx, file),
        Cmd::Completions { shell } => docs::completions(ctx, *shell),
        Cmd::Man => docs::man(ctx),
        Cmd::Restore { file, config } => backup::restore(ctx, file, config),
        Cmd::Migrate(args) => migrate::run(ctx, args),
    }
}
