//! `completions` and `man`: the shell completion scripts and the manual page, generated from
//! the command-line grammar (so they never drift from it).

use std::io::Write;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::context::Context;
use crate::error::CliError;

/// `strongroom completions SHELL`: the script on stdout.
pub fn completions(_ctx: &Context<'_>, shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "strongroom", &mut script);
    write_all(&script)
}

/// `strongroom man`: the manual page (roff) on stdout; `man/strongroom.1` is this output,
/// checked in (a test keeps it current).
pub fn man(_ctx: &Context<'_>) -> Result<(), CliError> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(CliError::Output)?;
    write_all(&page)
}

fn write_all(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(CliError::Output)
}
