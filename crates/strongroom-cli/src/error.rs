//! The CLI's errors and their exit codes (listed in `--help` and the README).

use strongroom_core::BackendError;
use strongroom_store::{AuditBreak, StoreError};

/// Something that ends the command with a non-zero exit code and one line on stderr.
#[derive(Debug)]
pub enum CliError {
    Store(StoreError),
    Backend(BackendError),
    /// No such thing (exit 3).
    NotFound(String),
    /// Bad input that clap could not catch (exit 2).
    Usage(String),
    /// The audit chain is broken (exit 5).
    Audit(AuditBreak),
    /// A check failed (doctor, tour), already reported line by line (exit 1).
    Checks(String),
    /// A destructive command was not confirmed (exit 7).
    Aborted(String),
    /// Writing the output to stdout failed (exit 1, like other I/O failures; a closed pipe is not
    /// reported: see [`CliError::is_broken_pipe`]).
    Output(std::io::Error),
    /// Anything else (exit 1).
    Other(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Store(e) => write!(f, "{e}"),
            Self::Backend(e) => write!(f, "{e}"),
            Self::Audit(b) => write!(f, "{b}"),
            Self::Output(e) => write!(
                f,
                "writing the output failed: {e}; check where stdout goes (a full disk, a file that cannot be written)"
            ),
            Self::NotFound(s)
            | Self::Usage(s)
            | Self::Checks(s)
            | Self::Aborted(s)
            | Self::Other(s) => f.write_str(s),
        }
    }
}

/// The stable name of each exit code (the README's exit-code table).
pub const EXIT_KINDS: [(i32, &str); 8] = [
    (0, "ok"),
    (1, "other"),
    (2, "usage"),
    (3, "not_found"),
    (4, "access_refused"),
    (5, "integrity"),
    (6, "backend"),
    (7, "aborted"),
];

/// The stable name of an exit code.
pub fn exit_kind(code: i32) -> &'static str {
    EXIT_KINDS
        .iter()
        .find(|(c, _)| *c == code)
        .map_or("other", |(_, k)| k)
}

fn backend_code(e: &BackendError) -> i32 {
    use strongroom_core::error::KeyFileProblem;
    if e.is_key_unavailable() {
        4
    } else if matches!(
        e,
        BackendError::Integrity
            | BackendError::KeyFile {
                problem: KeyFileProblem::Checksum | KeyFileProblem::Format(_),
                ..
            }
    ) {
        // A damaged soft-backend key file is an integrity failure like a damaged store.
        5
    } else {
        6
    }
}

impl CliError {
    /// The exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Store(e) => match e {
                StoreError::KeyringNotFound { .. }
                | StoreError::RootNotFound { .. }
                | StoreError::NotAStore { .. } => 3,
                e if e.is_integrity() || matches!(e, StoreError::BadBackup { .. }) => 5,
                e if e.is_access_refused() => 4,
                StoreError::Backend { source, .. } => backend_code(source),
                StoreError::WrongBackend { .. } => 6,
                StoreError::KeysOfAnotherStore { .. } => 2,
                // A key or value over the limits is bad input.
                StoreError::TooLarge { .. } => 2,
                // Everything else (a state change the key's state does not allow, a key still
                // in use, a storage or I/O failure) is "other".
                _ => 1,
            },
            Self::Backend(e) => backend_code(e),
            Self::NotFound(_) => 3,
            Self::Usage(_) => 2,
            Self::Audit(_) => 5,
            Self::Aborted(_) => 7,
            Self::Checks(_) | Self::Output(_) | Self::Other(_) => 1,
        }
    }

    /// The exit code's stable name, for scripts (`kind` in a JSON error).
    pub fn kind(&self) -> &'static str {
        exit_kind(self.exit_code())
    }

    /// Whether this is stdout's reader going away (`strongroom ... | head -1`): the command
    /// ends quietly and successfully, like most Unix tools.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<BackendError> for CliError {
    fn from(e: BackendError) -> Self {
        Self::Backend(e)
    }
}

impl From<strongroom_core::id::NameError> for CliError {
    fn from(e: strongroom_core::id::NameError) -> Self {
        Self::Usage(e.to_string())
    }
}
