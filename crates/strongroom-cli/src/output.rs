//! Human or JSON output, and progress bars on a terminal.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use strongroom_cli::json::Json;

use crate::error::CliError;

/// Where a command's output goes.
pub struct Out {
    json: bool,
}

impl Out {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    pub fn json_mode(&self) -> bool {
        self.json
    }

    /// A result: `human` on a terminal-friendly line, or `json` in JSON mode.
    pub fn result(&self, human: impl FnOnce() -> String, json: impl FnOnce() -> Json) {
        let mut stdout = std::io::stdout().lock();
        let text = if self.json {
            json().to_string()
        } else {
            human()
        };
        if !text.is_empty() {
            let _ = writeln!(stdout, "{text}");
        }
    }

    /// The one line a failure prints (JSON on stdout in JSON mode).
    pub fn error(&self, e: &CliError) {
        if self.json {
            println!(
                "{}",
                Json::obj([
                    ("error", Json::str(e)),
                    (
                        "exit_code",
                        Json::Num(u64::try_from(e.exit_code()).unwrap_or(1))
                    )
                ])
            );
        } else {
            eprintln!("strongroom: error: {e}");
        }
    }

    /// A progress bar on a terminal (hidden otherwise, and in JSON mode).
    pub fn progress(&self, what: &str) -> ProgressBar {
        if self.json || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new(0);
        pb.set_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta} left; interrupt safely, `strongroom resume` continues)")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_message(what.to_owned());
        pb
    }
}

/// Asks on a terminal; refuses without `--yes` elsewhere.
pub fn confirm(question: &str, yes: bool) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Aborted(format!(
            "not confirmed (no terminal to ask on): {question} Pass --yes to confirm in a script"
        )));
    }
    eprint!("{question} Type 'yes' to confirm: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(CliError::Aborted(
            "not confirmed; nothing was changed".into(),
        ))
    }
}
