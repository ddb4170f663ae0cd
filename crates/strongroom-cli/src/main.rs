//! `strongroom`: the operator's command line for a strongroom store.
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod common;
mod context;
mod error;
mod output;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let out = output::Out::new(cli.json);
    let outcome = commands::run(&context::Context::new(&cli, &out));
    std::process::exit(out.finish(outcome));
}
