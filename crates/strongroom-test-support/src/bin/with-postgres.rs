//! Runs a command with a throwaway PostgreSQL server: starts one in a temporary directory (as
//! the tests do: `initdb`, `pg_ctl`, a free loopback port; as the unprivileged `postgres`
//! user when run as root), puts its URL in `STRONGROOM_PG_URL`, runs the command, stops the
//! server and removes its files, and exits with the command's status.
//!
//! ```sh
//! cargo run -p strongroom-test-support --bin with-postgres -- \
//!     target/release/strongroom bench --replicas 3 --pg-url-env STRONGROOM_PG_URL
//! ```

use std::process::{Command, ExitCode};

use strongroom_test_support::pg::PgServer;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: with-postgres COMMAND [ARGS...] (the URL is in STRONGROOM_PG_URL)");
        return ExitCode::from(2);
    };
    let server = PgServer::start();
    let status = Command::new(&program)
        .args(args)
        .env("STRONGROOM_PG_URL", server.url())
        .status();
    drop(server);
    match status {
        Ok(s) => ExitCode::from(u8::try_from(s.code().unwrap_or(1)).unwrap_or(1)),
        Err(e) => {
            eprintln!(
                "with-postgres: cannot run {}: {e}",
                program.to_string_lossy()
            );
            ExitCode::from(127)
        }
    }
}
