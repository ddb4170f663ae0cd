//! Human or JSON output, and progress bars on a terminal.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

use crate::error::CliError;

/// Where a command's output goes.
///
/// Human output is written as it comes (and a failed write ends the command with
/// [`CliError::Output`]). JSON output is one document: the result is held until the command
/// ends, and [`Out::finish`] writes either it or, when the command failed, the error with the
/// result so far inside.
pub struct Out {
    json: bool,
    /// JSON mode: the command's result, written by [`Out::finish`].
    pending: RefCell<Option<Value>>,
}

/// The JSON document of a command that failed (see the README's exit codes).
#[derive(Serialize)]
struct ErrorDoc {
    /// The message (what went wrong and what to do).
    error: String,
    /// The exit code's stable name: `other`, `usage`, `not_found`, `access_refused`,
    /// `integrity`, `backend` or `aborted`.
    kind: &'static str,
    exit_code: i32,
    /// The command's result so far, when it had one before it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
}

/// Writes `text` and a line break to stdout, flushed (so a failure is seen here).
fn write_line(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}").and_then(|()| stdout.flush())
}

/// One line on stderr; if even that fails there is nowhere left to say so.
fn say_on_stderr(e: &CliError) {
    let _ = writeln!(std::io::stderr().lock(), "strongroom: error: {e}");
}

impl Out {
    pub fn new(json: bool) -> Self {
        Self {
            json,
            pending: RefCell::new(None),
        }
    }

    pub fn json_mode(&self) -> bool {
        self.json
    }

    /// A result: `human` on a terminal-friendly line, or `json` in JSON mode (the command's one
    /// document; a command gives one result).
    ///
    /// # Errors
    /// [`CliError::Output`] when stdout cannot be written.
    pub fn result<T: Serialize>(
        &self,
        human: impl FnOnce() -> String,
        json: impl FnOnce() -> T,
    ) -> Result<(), CliError> {
        if self.json {
            let doc = serde_json::to_value(json())
                .map_err(|e| CliError::Other(format!("internal: writing the JSON result: {e}")))?;
            *self.pending.borrow_mut() = Some(doc);
            return Ok(());
        }
        let text = human();
        if text.is_empty() {
            return Ok(());
        }
        write_line(&text).map_err(CliError::Output)
    }

    /// A line of human output (nothing in JSON mode).
    ///
    /// # Errors
    /// [`CliError::Output`] when stdout cannot be written.
    pub fn line(&self, text: &str) -> Result<(), CliError> {
        if self.json {
            return Ok(());
        }
        write_line(text).map_err(CliError::Output)
    }

    /// Ends the command: writes the JSON document (the result, or the error with the result so
    /// far under `"result"`) or the error's line on stderr, and returns the exit code. A closed
    /// stdout is a quiet end, with the command's own exit code.
    pub fn finish(self, outcome: Result<(), CliError>) -> i32 {
        let code = outcome
            .as_ref()
            .err()
            .map_or(0, |e| if e.is_broken_pipe() { 0 } else { e.exit_code() });
        if !self.json {
            if let Err(e) = &outcome
                && !e.is_broken_pipe()
            {
                say_on_stderr(e);
            }
            return code;
        }
        let result = self.pending.into_inner();
        let doc = match &outcome {
            Ok(()) => result,
            Err(e) if e.is_broken_pipe() => None,
            Err(e) => serde_json::to_value(ErrorDoc {
                error: e.to_string(),
                kind: e.kind(),
                exit_code: e.exit_code(),
                result,
            })
            .ok(),
        };
        let Some(doc) = doc else { return code };
        match write_line(&doc.to_string()) {
            Ok(()) => code,
            Err(w) if w.kind() == std::io::ErrorKind::BrokenPipe => code,
            Err(w) => {
                // Stdout is unusable: say so on stderr (the command's own error if it failed).
                match outcome {
                    Err(e) => say_on_stderr(&e),
                    Ok(()) => {
                        let e = CliError::Output(w);
                        say_on_stderr(&e);
                        return e.exit_code();
                    }
                }
                code
            }
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
    {
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "{question} Type 'yes' to confirm: ");
        let _ = stderr.flush();
    }
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
