//! `strongroom`: the operator's command line for a strongroom store.
#![forbid(unsafe_code)]
// A command-line program prints: that is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

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
    let code = match ops::run(&cli, &out) {
        Ok(()) => 0,
        Err(e) => {
            out.error(&e);
            e.exit_code()
        }
    };
    std::process::exit(code);
}
