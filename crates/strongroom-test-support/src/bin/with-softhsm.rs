//! Runs a command with a throwaway SoftHSM2 token: makes one in a temporary directory (its own
//! `softhsm2.conf` and token directory, never the system's), runs the command with
//! `SOFTHSM2_CONF` pointing there and the placeholders `{module}`, `{token}` and `{pin-file}`
//! in its arguments replaced by the SoftHSM2 module, the token's label and a file holding its
//! user PIN, removes the token, and exits with the command's status.
//!
//! ```sh
//! with-postgres with-softhsm target/release/strongroom bench --replicas 3 \
//!     --pg-url-env STRONGROOM_PG_URL \
//!     --pkcs11-module {module} --pkcs11-token {token} --pkcs11-pin-file {pin-file}
//! ```

use std::ffi::OsString;
use std::process::{Command, ExitCode};

use strongroom_test_support::softhsm::Token;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!(
            "usage: with-softhsm COMMAND [ARGS...] ({{module}}, {{token}}, {{pin-file}} in ARGS are replaced)"
        );
        return ExitCode::from(2);
    };
    let token = Token::create("strongroom-bench");
    let module = token.module.clone().into_os_string();
    let pin_file = token.pin_file().into_os_string();
    let args: Vec<OsString> = args
        .map(|a| match a.to_str() {
            Some("{module}") => module.clone(),
            Some("{token}") => OsString::from(&token.label),
            Some("{pin-file}") => pin_file.clone(),
            _ => a,
        })
        .collect();
    let status = Command::new(&program).args(args).envs(token.env()).status();
    drop(token);
    match status {
        Ok(s) => ExitCode::from(u8::try_from(s.code().unwrap_or(1)).unwrap_or(1)),
        Err(e) => {
            eprintln!(
                "with-softhsm: cannot run {}: {e}",
                program.to_string_lossy()
            );
            ExitCode::from(127)
        }
    }
}
