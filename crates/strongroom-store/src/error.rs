//! Store errors. Each says what happened and what to do; none carries key material or plaintext.
//! Integrity failures name the record or key that failed (which is not secret) and nothing else.

use std::path::PathBuf;

use strongroom_core::{
    BackendError, FormatError, KeyringName, RootKeyName, Timestamp, TransitionError,
};

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed; `while_doing` says what the store was doing.
    #[error("{while_doing}: {source}")]
    Backend {
        /// What the store was doing.
        while_doing: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// No keyring by that name.
    #[error("keyring {name} does not exist; `strongroom keyring list` shows the keyrings")]
    KeyringNotFound {
        /// The name.
        name: KeyringName,
    },
    /// A keyring by that name exists (or existed: destroyed names are not reused).
    #[error("keyring {name} already exists{}", if *.destroyed { " (destroyed; its name is not reused, choose another)" } else { "" })]
    KeyringExists {
        /// The name.
        name: KeyringName,
        /// Whether it was destroyed.
        destroyed: bool,
    },
    /// The keyring is disabled: no reads or writes until it is enabled.
    #[error(
        "keyring {name} is disabled; enable it (`strongroom keyring enable {name}`) to read or write its records"
    )]
    KeyringDisabled {
        /// The name.
        name: KeyringName,
    },
    /// The keyring is scheduled for destruction: no reads or writes; the destruction can still be
    /// cancelled.
    #[error(
        "keyring {name} is scheduled for destruction at {not_before}; cancel it (`strongroom keyring cancel-destroy {name}`) to keep the data"
    )]
    KeyringPendingDestruction {
        /// The name.
        name: KeyringName,
        /// When it will be destroyed.
        not_before: Timestamp,
    },
    /// The keyring was destroyed: its keys and records are gone from this store and its files.
    /// (Copies made before, such as backups, open only while its root key lives.)
    #[error(
        "keyring {name} was destroyed (crypto-shredded): its keys and records are gone from this store"
    )]
    KeyringDestroyed {
        /// The name.
        name: KeyringName,
    },
    /// No root key by that name in the store.
    #[error(
        "root key {name} does not exist in this store; `strongroom root list` shows the root keys"
    )]
    RootNotFound {
        /// The name.
        name: RootKeyName,
    },
    /// A root key by that name exists.
    #[error("root key {name} already exists; rotate it to make a new version")]
    RootExists {
        /// The name.
        name: RootKeyName,
    },
    /// The root key is disabled, so every keyring under it is unreadable until it is enabled.
    #[error(
        "root key {name} is disabled; enable it (`strongroom root enable {name}`) to restore access to the keyrings under it"
    )]
    RootDisabled {
        /// The name.
        name: RootKeyName,
    },
    /// The root key is scheduled for destruction: every keyring under it is refused; the
    /// destruction can still be cancelled.
    #[error(
        "root key {name} is scheduled for destruction at {not_before}; cancel it (`strongroom root cancel-destroy {name}`, then `strongroom root enable {name}`) to keep the keyrings under it"
    )]
    RootPendingDestruction {
        /// The name.
        name: RootKeyName,
        /// When it will be destroyed.
        not_before: Timestamp,
    },
    /// The root key (all its versions) was destroyed.
    #[error("root key {name} was destroyed; keyrings under it are unrecoverable")]
    RootDestroyed {
        /// The name.
        name: RootKeyName,
    },
    /// A key change was computed from key states another replica of the store changed in the
    /// meantime (a fleet on a shared database): nothing was changed.
    #[error(
        "{what}: another replica of this store changed the key states meanwhile; nothing was changed, and this replica has reloaded them: check the state and retry"
    )]
    Conflict {
        /// The change that was refused.
        what: String,
    },
    /// A job (a re-encryption, a rewrap, a compaction, the due destructions) is being run by
    /// another runner: another thread of this process, or another replica of the fleet whose
    /// lease on it has not expired.
    #[error(
        "{job} is being run by {replica}{}: wait for it to finish (`strongroom jobs` lists what is left); if that replica died, its lease runs out and the job can be taken over then",
        .retry_after_ms.map(|ms| format!(" (its lease runs for another {ms} ms unless renewed)")).unwrap_or_default()
    )]
    JobBusy {
        /// The job.
        job: String,
        /// Who runs it: a replica's name, or `this process`.
        replica: String,
        /// When its lease runs out unless renewed (for a replica of the fleet).
        retry_after_ms: Option<u64>,
    },
    /// This runner's lease on a job was taken over by another replica (this one was stalled or
    /// cut off from the database for longer than the lease): it wrote nothing more, and the
    /// other carries the job on from its last committed step.
    #[error(
        "{job}: this replica's lease on the job ran out and {replica} took it over (this replica was stalled or cut off for longer than the lease); the step in progress was not written, and the job carries on there"
    )]
    LeaseLost {
        /// The job.
        job: String,
        /// Who holds the lease now (`none`: nobody, it was released).
        replica: String,
    },
    /// The operation would leave something without a key (a root version still wrapping KEKs,
    /// the root that protects the audit log).
    #[error("{0}")]
    InUse(String),
    /// A sealed record failed its integrity check.
    #[error(
        "record {key} in keyring {keyring} failed its integrity check: it was altered, truncated, moved from another key, or is corrupt; restore it from a backup"
    )]
    RecordIntegrity {
        /// The keyring.
        keyring: KeyringName,
        /// The record key, shown escaped.
        key: String,
    },
    /// A wrapped key in the store failed its integrity check.
    #[error(
        "{what} failed its integrity check: the store file was altered or is corrupt; restore the store from a backup"
    )]
    KeyIntegrity {
        /// Which key.
        what: String,
    },
    /// A catalog entry (a root key's or a keyring's state, deadline, root assignment,
    /// versions) was changed, removed, added or replaced by an older copy outside strongroom.
    #[error(
        "{what} failed its integrity check: the catalog was changed outside strongroom (an entry altered, removed, added, or replaced by an older copy); restore the store from a backup"
    )]
    CatalogIntegrity {
        /// Which entry, or what about the catalog.
        what: String,
    },
    /// The backend's keys belong to another store (one store per PKCS#11 namespace).
    #[error(
        "{what}: a second store on the same keys would share its root keys (disabling one's primary root would lock the other out); choose another namespace (`strongroom init --namespace NAME`), or use that store"
    )]
    KeysOfAnotherStore {
        /// Whose keys they are.
        what: String,
    },
    /// The audit anchor outside the database is missing, but the log has entries.
    #[error(
        "the store at {path} has no audit anchor ({anchor}) but its audit log holds {found} entries: the anchor was removed, which would hide an older copy of the database put in place. Restore the anchor (or the store from a backup); if an older copy was put in place on purpose, accept it with `strongroom audit accept-rollback`"
    )]
    AnchorMissing {
        /// The store directory.
        path: PathBuf,
        /// The anchor file.
        anchor: PathBuf,
        /// The last entry the database has.
        found: u64,
    },
    /// The store is open elsewhere (another process, or another handle in this one).
    #[error(
        "the store at {path} is open in another process (or another handle of this one); close that first"
    )]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// A stored structure did not parse.
    #[error("{what} in the store is unreadable: {source}; restore the store from a backup")]
    Corrupt {
        /// What.
        what: String,
        /// The parse error.
        #[source]
        source: FormatError,
    },
    /// A value or key is too large.
    #[error("{what} is {found} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// What.
        what: &'static str,
        /// The limit.
        limit: usize,
        /// The size given.
        found: usize,
    },
    /// The store was written by a newer strongroom.
    #[error(
        "the store at {path} has format version {found}; this strongroom reads version {supported}; upgrade strongroom"
    )]
    NewerFormat {
        /// The store directory.
        path: PathBuf,
        /// Found.
        found: u8,
        /// Supported.
        supported: u8,
    },
    /// The store was created with another backend (or another key file, or another token).
    #[error(
        "the store at {path} belongs to backend {expected}, but it was opened with {found}; open it with its own backend (its key file, or its token and pkcs11.namespace)"
    )]
    WrongBackend {
        /// The store directory.
        path: PathBuf,
        /// What the store records.
        expected: String,
        /// What was given.
        found: String,
    },
    /// No store here.
    #[error(
        "no strongroom store at {path}; create one with `strongroom init`, or point --data at an existing store"
    )]
    NotAStore {
        /// The directory.
        path: PathBuf,
    },
    /// A store already exists here.
    #[error("a strongroom store already exists at {path}; open it instead")]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// The lifecycle state does not allow this.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The audit key cannot be unwrapped (its root is disabled or unavailable), so key operations
    /// cannot be audited and are refused.
    #[error(
        "the audit log's key is protected by root key {root}, which cannot be used now ({reason}); enable it (`strongroom root enable {root}`) first"
    )]
    AuditUnavailable {
        /// The root protecting the audit key.
        root: RootKeyName,
        /// Why.
        reason: String,
    },
    /// The database lost key operations that were acknowledged (its log was damaged, or an
    /// older copy of its files was put in place): detected against the audit anchor file.
    #[error(
        "the store at {path} lost acknowledged key operations: its audit log ends at entry {found} but {anchor} records entry {anchored}; its database log was damaged or an older copy of its files was put in place. Restore it from a backup; if an older copy was put in place on purpose, accept it with `strongroom audit accept-rollback`"
    )]
    RolledBack {
        /// The store directory.
        path: PathBuf,
        /// The anchor file (or, for the anchor a fleet keeps in its backend, what it is).
        anchor: PathBuf,
        /// The last entry the anchor vouches for.
        anchored: u64,
        /// The last entry the database has (or the entry where it diverges).
        found: u64,
    },
    /// The database's files are damaged so badly that opening them failed inside sled.
    #[error(
        "the database at {path} could not be opened: {why}; its files are damaged: restore the store from a backup"
    )]
    Damaged {
        /// The database directory.
        path: PathBuf,
        /// What the engine reported.
        why: String,
    },
    /// The storage engine failed.
    #[error("storage error while {while_doing}: {source}")]
    Storage {
        /// What the store was doing.
        while_doing: &'static str,
        /// The engine's error (its kind says what the caller can do).
        #[source]
        source: crate::engine::EngineError,
    },
    /// A file operation failed (backup, restore).
    #[error("{op} {path}: {source}")]
    Io {
        /// What.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A backup file is not valid.
    #[error("backup {path} is not valid: {why}")]
    BadBackup {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Randomness unavailable.
    #[error(transparent)]
    Random(#[from] strongroom_core::RandomError),
}

impl StoreError {
    pub(crate) fn backend(while_doing: impl Into<String>) -> impl FnOnce(BackendError) -> Self {
        let while_doing = while_doing.into();
        move |source| Self::Backend {
            while_doing,
            source,
        }
    }

    /// True when the data is fine but cannot be reached now because a key is disabled, pending
    /// destruction, destroyed or unavailable.
    #[must_use]
    pub fn is_access_refused(&self) -> bool {
        match self {
            Self::KeyringDisabled { .. }
            | Self::KeyringPendingDestruction { .. }
            | Self::KeyringDestroyed { .. }
            | Self::RootDisabled { .. }
            | Self::RootPendingDestruction { .. }
            | Self::RootDestroyed { .. }
            | Self::AuditUnavailable { .. } => true,
            Self::Backend { source, .. } => source.is_key_unavailable(),
            _ => false,
        }
    }

    /// True for integrity failures (tampered or corrupt data).
    #[must_use]
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            Self::RecordIntegrity { .. }
                | Self::KeyIntegrity { .. }
                | Self::CatalogIntegrity { .. }
                | Self::Corrupt { .. }
                | Self::RolledBack { .. }
                | Self::AnchorMissing { .. }
                | Self::Damaged { .. }
        )
    }
}

impl StoreError {
    /// The error of sealing a value of `len` bytes.
    pub(crate) fn from_seal(e: strongroom_core::SealError, len: usize) -> Self {
        match e {
            strongroom_core::SealError::Random(r) => Self::Random(r),
            // Unreachable through the store, whose value limit is far below GCM's.
            strongroom_core::SealError::TooLong(_) => Self::TooLarge {
                what: "the value",
                limit: crate::records::MAX_VALUE_LEN,
                found: len,
            },
        }
    }
}
