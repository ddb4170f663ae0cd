//! Backend errors.
//!
//! Every message names the problem and what to do next. None carries key material, a PIN or
//! plaintext: the fields are names, versions, paths, codes and fixed strings. Integrity failures
//! are opaque on purpose.

use std::path::PathBuf;

use crate::blob::WrapAlg;
use crate::format::FormatError;
use crate::id::RootKeyId;
use crate::rng::RandomError;
use crate::state::TransitionError;

/// A boxed error kept as the source of a device failure (for example a `cryptoki` error that
/// holds the PKCS#11 return code and the function that failed).
pub type ErrorSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend does not offer this operation.
    #[error("the {backend} backend cannot {operation}")]
    NotSupported {
        /// The backend kind.
        backend: &'static str,
        /// The operation.
        operation: &'static str,
    },
    /// No such root key version in the backend.
    #[error(
        "root key {root} does not exist in the backend; `strongroom root list` shows the root keys it has"
    )]
    RootNotFound {
        /// The root version.
        root: RootKeyId,
    },
    /// The root key version already exists.
    #[error(
        "root key {root} already exists in the backend; choose another name, or rotate the root key to make a new version"
    )]
    RootExists {
        /// The root version.
        root: RootKeyId,
    },
    /// The root key version is disabled, so every wrap and unwrap under it is refused.
    #[error("root key {root} is disabled; enable it (`strongroom root enable {}`) to restore access", .root.name)]
    RootDisabled {
        /// The root version.
        root: RootKeyId,
    },
    /// The root key version was destroyed; what it wrapped is unrecoverable.
    #[error(
        "root key {root} was destroyed; keys wrapped under it are unrecoverable (crypto-shredded)"
    )]
    RootDestroyed {
        /// The root version.
        root: RootKeyId,
    },
    /// The root key version is unusable in the HSM for a reason strongroom did not cause: it was
    /// disabled, restricted or deleted outside strongroom. This is never reported as corruption.
    #[error(
        "root key {root} is unavailable in the HSM: {reason}; it was changed outside strongroom: re-enable or restore it in the HSM (strongroom retries on the next use)"
    )]
    RootUnavailable {
        /// The root version.
        root: RootKeyId,
        /// What the HSM reported.
        reason: String,
    },
    /// A wrapped key failed its integrity check: altered, corrupted, wrapped under another root
    /// key, or presented with the wrong context. Deliberately says no more.
    #[error(
        "a wrapped key failed its integrity check: it was altered, corrupted, or does not belong here"
    )]
    Integrity,
    /// The blob uses an algorithm this backend cannot unwrap.
    #[error(
        "this {backend} backend cannot unwrap keys wrapped with {alg}; open the store with the backend that wrapped them"
    )]
    UnsupportedAlgorithm {
        /// The backend kind.
        backend: &'static str,
        /// The blob's algorithm.
        alg: WrapAlg,
    },
    /// The blob was wrapped by a keyring KEK, not a root key, so a backend cannot unwrap it.
    #[error("this key is wrapped by a keyring KEK, not by a root key; unwrap it with the KEK")]
    NotRootWrapped,
    /// A byte format was invalid.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// No randomness.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// A state change that the key's current state does not allow.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The soft backend's key file is unusable.
    #[error("soft-backend key file {path}: {problem}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: KeyFileProblem,
    },
    /// Another process holds the backend's lock.
    #[error(
        "{path} is locked by another strongroom process; stop it, or use another data directory"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The soft key file is open shared (by the replicas of a fleet on one machine): its root
    /// keys are used, not changed.
    #[error(
        "the soft key file {path} is open shared by several processes (replicas of a fleet): root keys change only in a process that has it alone; stop the replicas first (a fleet in production keeps its root keys in an HSM, which every replica shares)"
    )]
    SharedKeyFile {
        /// The key file.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}{}", io_hint(.source))]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Logging in to the token failed (for example, a wrong PIN).
    #[error("login to token {token} failed: {failure}")]
    Login {
        /// The token.
        token: String,
        /// Why.
        failure: LoginFailure,
    },
    /// The backend's configuration is wrong (a missing module, an unknown token label).
    #[error("{0}")]
    Config(String),
    /// The backend's keys are claimed by another store than the caller expected (see
    /// [`crate::Backend::set_store_claim`]).
    #[error("the backend's keys are claimed by store {store} (at {location})")]
    ClaimedByAnother {
        /// The store id that claims them, in hex.
        store: String,
        /// Where that store was created.
        location: String,
    },
    /// The device failed (or is absent) during an operation; the source keeps the detail (for
    /// PKCS#11, the return code and the function).
    #[error("the HSM failed during {operation}: {detail}")]
    Device {
        /// The operation.
        operation: &'static str,
        /// What happened and what to do.
        detail: String,
        /// The underlying error.
        #[source]
        source: Option<ErrorSource>,
    },
}

fn io_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            "; free some space and retry: nothing was changed"
        }
        std::io::ErrorKind::FileTooLarge => "; the file size limit was hit: nothing was changed",
        std::io::ErrorKind::PermissionDenied => "; check the directory's owner and permissions",
        std::io::ErrorKind::NotFound => "; check the path",
        _ => "",
    }
}

impl BackendError {
    /// An [`BackendError::Io`] for `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True for the errors that mean "the key cannot be used now" rather than "the data is bad"
    /// or "the device failed": disabled, destroyed, missing or unavailable root keys.
    #[must_use]
    pub fn is_key_unavailable(&self) -> bool {
        matches!(
            self,
            Self::RootDisabled { .. }
                | Self::RootDestroyed { .. }
                | Self::RootNotFound { .. }
                | Self::RootUnavailable { .. }
        )
    }
}

/// Why a login failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoginFailure {
    /// The PIN is wrong.
    #[error(
        "wrong PIN (CKR_PIN_INCORRECT); check the PIN strongroom was given (the token may lock the PIN after more failures)"
    )]
    WrongPin,
    /// The PIN is locked after too many failures.
    #[error(
        "the PIN is locked (CKR_PIN_LOCKED); the token's security officer must unlock or reset it"
    )]
    PinLocked,
    /// The PIN has expired and must be changed.
    #[error("the PIN has expired (CKR_PIN_EXPIRED); change it with the token's tools")]
    PinExpired,
    /// The token refused this PIN before, and strongroom did not try it again: every try spends
    /// one of the token's PIN attempts, and enough of them lock the PIN.
    #[error(
        "the token refused this PIN earlier ({0}); strongroom does not try it again, since each try spends one of the token's PIN attempts: give strongroom the right PIN and reopen the store"
    )]
    RefusedEarlier(Box<LoginFailure>),
    /// Anything else, with the token's return code.
    #[error("{0}")]
    Other(String),
}

/// What is wrong with a soft-backend key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileProblem {
    /// The file does not exist.
    #[error(
        "no key file here; create a store with `strongroom init`, or point --data at an existing one"
    )]
    Missing,
    /// The file already exists where a new one was to be created.
    #[error("a key file already exists here; open it instead of creating a new one")]
    AlreadyExists,
    /// The file can be read or written by users other than its owner.
    #[error(
        "it has mode {mode:o} and is accessible to other users, so strongroom refuses it; if nobody else can have copied it, `chmod 600` it, otherwise rotate every root key in it"
    )]
    Permissions {
        /// The file's permission bits.
        mode: u32,
    },
    /// Not a regular file.
    #[error("it is not a regular file")]
    NotAFile,
    /// The checksum does not match: the file was damaged.
    #[error("it is corrupt (checksum mismatch); restore it from a backup")]
    Checksum,
    /// The bytes are not a valid key file.
    #[error("{0}; restore it from a backup")]
    Format(FormatError),
}
