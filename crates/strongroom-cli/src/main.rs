//! `strongroom`: the operator's command line for a strongroom store.
#![forbid(unsafe_code)]

mod bench;
mod cli;
mod doctor;
mod error;
mod ops;
mod output;
mod tour;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let out = output::Out::new(cli.json);
    let outcome = ops::run(&cli, &out);
    std::process::exit(out.finish(outcome));
}
