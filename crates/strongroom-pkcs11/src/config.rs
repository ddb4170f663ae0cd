//! Configuration of the PKCS#11 backend: module, token, PIN source, limits.
//!
//! The PIN is read from an environment variable or a file into a [`SecretString`], when the
//! backend opens, and kept only in memory (for re-login after a lost session). strongroom never
//! stores it and never takes it from a command-line argument.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use secrecy::SecretString;
use strongroom_core::{BackendError, LoginFailure, WrapAlg};
use zeroize::Zeroizing;

/// Which token to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token with this label (`CKA_LABEL` of the token, as `pkcs11-tool -L` shows it).
    Label(String),
    /// The token in this slot id.
    Slot(u64),
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Label(l) => write!(f, "label {l:?}"),
            Self::Slot(s) => write!(f, "slot {s}"),
        }
    }
}

/// Where the user PIN comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// An environment variable, by name.
    Env(String),
    /// A file (one line; a trailing newline is ignored). Neither its group nor other users may
    /// read or write it (mode `0600` or `0400`).
    File(PathBuf),
}

impl fmt::Display for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(v) => write!(f, "environment variable {v}"),
            Self::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

impl PinSource {
    /// Reads the PIN.
    ///
    /// # Errors
    /// [`BackendError::Config`] when the variable is unset or empty, or the file is missing,
    /// unreadable, empty, or readable or writable by its group or other users.
    pub fn load(&self) -> Result<SecretString, BackendError> {
        let pin = match self {
            Self::Env(var) => {
                let v = std::env::var(var).map_err(|_| {
                    BackendError::Config(format!(
                        "the PKCS#11 PIN variable {var} is not set (or not UTF-8); export it before starting strongroom"
                    ))
                })?;
                Zeroizing::new(v)
            }
            Self::File(path) => read_pin_file(path)?,
        };
        let trimmed = pin.strip_suffix('\n').unwrap_or(&pin);
        let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Err(BackendError::Config(format!(
                "the PKCS#11 PIN from {self} is empty"
            )));
        }
        Ok(SecretString::from(trimmed.to_owned()))
    }
}

fn read_pin_file(path: &Path) -> Result<Zeroizing<String>, BackendError> {
    let mut f =
        std::fs::File::open(path).map_err(|e| BackendError::io("open PIN file", path, e))?;
    let meta = f
        .metadata()
        .map_err(|e| BackendError::io("stat PIN file", path, e))?;
    if !meta.is_file() {
        return Err(BackendError::Config(format!(
            "PIN file {} is not a regular file",
            path.display()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o066 != 0 {
        return Err(BackendError::Config(format!(
            "PIN file {} has mode {mode:o}: its group or other users can read or write it; `chmod 600` it (and change the PIN if others may have read it)",
            path.display()
        )));
    }
    if meta.len() > 4096 {
        return Err(BackendError::Config(format!(
            "PIN file {} is larger than 4 KiB; it should hold only the PIN",
            path.display()
        )));
    }
    let mut s = Zeroizing::new(String::new());
    f.read_to_string(&mut s)
        .map_err(|e| BackendError::io("read PIN file", path, e))?;
    Ok(s)
}

/// Configuration of a [`crate::Pkcs11Backend`].
#[derive(Clone, Debug)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token.
    pub token: TokenSelector,
    /// Where the user PIN comes from.
    pub pin: PinSource,
    /// Most sessions the pool opens (it also respects the token's own limit). Default 16.
    pub max_sessions: usize,
    /// Wrap algorithms to use for new root keys, in order of preference; each is used only if
    /// the token offers it. Default: AES-GCM, then AES-KWP, then AES-KW.
    pub preference: Vec<WrapAlg>,
    /// Attempts for an idempotent operation through session and device failures. Default 4.
    pub attempts: u32,
    /// Backoff before the first retry; it grows fourfold each time. Default 25 ms.
    pub backoff: Duration,
    /// How long to wait for a free session before giving up. Default 30 s.
    pub checkout_timeout: Duration,
    /// RSA modulus size of the BYOK import key pair made by [`strongroom_core::Backend::import_key`].
    /// Default 3072.
    pub import_key_bits: u32,
    /// The first part of every label strongroom gives a token object (`<namespace>/<root>/v<N>`),
    /// and part of the backend's instance id. Stores that share a token must each have their
    /// own: a backend sees only its namespace's keys. 1 to 64 letters, digits, `.`, `_` or `-`.
    /// Default `strongroom` ([`crate::objects::DEFAULT_NAMESPACE`]).
    pub namespace: String,
    /// A file in which a PIN the token refused is remembered, per token serial, by a salted
    /// fingerprint (never the PIN), so that later processes do not try the same PIN again and
    /// spend the token's attempts; a different PIN is tried. Put it in the store's data
    /// directory. Default `None`: only the process that saw the refusal remembers it.
    pub pin_state: Option<PathBuf>,
    /// Log in even when the token reports `CKF_USER_PIN_FINAL_TRY` (one attempt left before the
    /// PIN locks). Default `false`: strongroom refuses to spend the last attempt.
    pub allow_final_pin_try: bool,
    /// Adopt keys that are not marked `CKA_NEVER_EXTRACTABLE` and `CKA_ALWAYS_SENSITIVE`, or are
    /// not token objects (their material was, or may have been, outside the HSM once). Default
    /// `false`. Callers should record in their audit log that it was set.
    pub allow_weak_adoption: bool,
}

impl Pkcs11Config {
    /// A configuration with the defaults documented on each field.
    #[must_use]
    pub fn new(module: impl Into<PathBuf>, token: TokenSelector, pin: PinSource) -> Self {
        Self {
            module: module.into(),
            token,
            pin,
            max_sessions: 16,
            preference: vec![WrapAlg::AesGcm, WrapAlg::AesKwp, WrapAlg::AesKw],
            attempts: 4,
            backoff: Duration::from_millis(25),
            checkout_timeout: Duration::from_secs(30),
            import_key_bits: 3072,
            namespace: crate::objects::DEFAULT_NAMESPACE.to_owned(),
            pin_state: None,
            allow_final_pin_try: false,
            allow_weak_adoption: false,
        }
    }
}

/// Hides the PIN in debug output of anything that holds one.
pub(crate) struct Pin {
    secret: SecretString,
    /// The serial of the token the PIN is for.
    pub serial: String,
    /// Where refused PINs are remembered across processes.
    pub state: Option<crate::pin_state::PinState>,
    /// Log in even at `CKF_USER_PIN_FINAL_TRY`.
    pub allow_final_try: bool,
    /// Set when the token refused this PIN (wrong, locked, expired). No `C_Login` is tried with
    /// it after that: each would spend one of the token's PIN attempts, and a backend that logs
    /// in again on every checkout would lock the PIN within a few operations.
    refused: OnceLock<LoginFailure>,
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin([REDACTED])")
    }
}

impl Pin {
    pub(crate) fn new(secret: SecretString) -> Self {
        Self {
            secret,
            serial: String::new(),
            state: None,
            allow_final_try: false,
            refused: OnceLock::new(),
        }
    }

    pub(crate) fn expose(&self) -> &SecretString {
        &self.secret
    }

    /// Why the token refused this PIN, if it did.
    pub(crate) fn refused(&self) -> Option<&LoginFailure> {
        self.refused.get()
    }

    /// Records that the token refused this PIN (the first reason is kept).
    pub(crate) fn refuse(&self, why: LoginFailure) {
        let _ = self.refused.set(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pin_from_file_trims_one_newline_and_checks_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "1234\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            PinSource::File(p.clone()).load().unwrap().expose_secret(),
            "1234"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = PinSource::File(p.clone()).load().unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert!(!e.to_string().contains("1234"));
        for mode in [0o640, 0o620, 0o602, 0o660] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = PinSource::File(p.clone()).load().unwrap_err();
            assert!(e.to_string().contains("chmod 600"), "{mode:o}: {e}");
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(PinSource::File(p.clone()).load().is_ok());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, "\n").unwrap();
        assert!(
            PinSource::File(p)
                .load()
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        let e = PinSource::File(dir.path().join("absent"))
            .load()
            .unwrap_err();
        assert!(matches!(e, BackendError::Io { .. }), "{e}");
    }

    #[test]
    fn pin_from_missing_env_says_what_to_do() {
        let e = PinSource::Env("STRONGROOM_TEST_SURELY_UNSET_PIN".into())
            .load()
            .unwrap_err();
        assert!(e.to_string().contains("export it"), "{e}");
    }

    #[test]
    fn pin_debug_is_redacted() {
        let p = Pin::new(SecretString::from("hunter2".to_owned()));
        assert_eq!(format!("{p:?}"), "Pin([REDACTED])");
    }
}
