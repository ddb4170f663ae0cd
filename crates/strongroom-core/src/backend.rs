//! The backend trait: where root keys live.
//!
//! A backend holds root key versions and wraps and unwraps key material under them. Root key
//! material never crosses this trait: a backend receives a key to wrap and returns a
//! [`WrappedKey`], or receives a blob and returns the key inside it. The one required method
//! that is not an operation, [`Backend::describe`], says what the backend can do; every optional
//! operation defaults to [`BackendError::NotSupported`].
//!
//! Backends must be safe to call from many threads at once.

use std::fmt;

use crate::blob::{WrapAlg, WrappedKey};
use crate::error::BackendError;
use crate::id::RootKeyId;
use crate::secret::Key256;

/// What a backend can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Can generate new root key versions.
    pub generate: bool,
    /// Can import root key material given in plaintext ([`Backend::import_root`]).
    pub import_plain: bool,
    /// Can import root key material wrapped under a backend-held import key
    /// ([`Backend::import_key`], [`Backend::import_wrapped_root`]): bring your own key.
    pub import_wrapped: bool,
    /// Can adopt a key that another tool created ([`Backend::adopt_root`]).
    pub adopt: bool,
    /// Can disable and re-enable a root key version in the backend itself.
    pub disable: bool,
    /// Can destroy a root key version.
    pub destroy: bool,
    /// Algorithms the backend can unwrap, in order of preference.
    pub wrap_algs: Vec<WrapAlg>,
    /// Root key material is held outside this process (an HSM), not in its memory.
    pub hardware: bool,
}

impl Capabilities {
    /// The algorithm new wraps use: the first of [`Capabilities::wrap_algs`].
    #[must_use]
    pub fn preferred_alg(&self) -> Option<WrapAlg> {
        self.wrap_algs.first().copied()
    }
}

/// A description of a backend instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    /// The kind of backend: `soft`, `pkcs11`, ...
    pub kind: &'static str,
    /// A stable identifier of this instance (the soft backend's key-file id, a token's serial
    /// number). A store records it and refuses to open with another instance.
    pub instance_id: String,
    /// Human-readable description of the instance (a path, a token label).
    pub description: String,
    /// What it can do.
    pub capabilities: Capabilities,
}

/// The state of a root key version as the backend sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RootStatus {
    /// Usable.
    Enabled,
    /// Present but refused until enabled.
    Disabled,
    /// Material erased.
    Destroyed,
    /// The backend holds a record of it but cannot use it: deleted or restricted outside
    /// strongroom (for example in the HSM's own tools).
    Unavailable,
}

impl fmt::Display for RootStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
            Self::Destroyed => "destroyed",
            Self::Unavailable => "unavailable",
        })
    }
}

/// A root key version held by a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootKeyInfo {
    /// Name and version.
    pub id: RootKeyId,
    /// State in the backend.
    pub status: RootStatus,
    /// Where an operator finds it (a PKCS#11 label and id, a key-file path).
    pub locator: String,
}

/// A public key under which a customer wraps root key material for import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportKey {
    /// The import key's handle for [`Backend::import_wrapped_root`].
    pub id: String,
    /// The mechanism the customer must use, e.g. `RSA-OAEP (SHA-256, MGF1-SHA-256)`.
    pub mechanism: String,
    /// The public key as DER `SubjectPublicKeyInfo`.
    pub public_key_der: Vec<u8>,
}

/// One line of a health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, or what to do.
    pub detail: String,
}

/// A root-key backend. See the module docs.
pub trait Backend: Send + Sync {
    /// What this backend is and can do.
    fn describe(&self) -> BackendInfo;

    /// Checks that the backend is reachable and working, one line per check.
    ///
    /// # Errors
    /// [`BackendError`] when the check itself cannot run.
    fn health(&self) -> Result<Vec<HealthCheck>, BackendError>;

    /// Every root key version the backend holds for strongroom.
    ///
    /// # Errors
    /// [`BackendError`] when the backend cannot be read.
    fn list_roots(&self) -> Result<Vec<RootKeyInfo>, BackendError>;

    /// One root key version, if the backend holds it.
    ///
    /// # Errors
    /// [`BackendError`] when the backend cannot be read.
    fn find_root(&self, id: &RootKeyId) -> Result<Option<RootKeyInfo>, BackendError> {
        Ok(self.list_roots()?.into_iter().find(|r| &r.id == id))
    }

    /// Wraps `key` under root version `root`, binding `context`.
    ///
    /// # Errors
    /// [`BackendError::RootNotFound`], [`BackendError::RootDisabled`],
    /// [`BackendError::RootDestroyed`], [`BackendError::RootUnavailable`], or a device error.
    fn wrap(
        &self,
        root: &RootKeyId,
        key: &Key256,
        context: &[u8],
    ) -> Result<WrappedKey, BackendError>;

    /// Unwraps `blob` (which names its root version and algorithm), checking `context`.
    ///
    /// # Errors
    /// [`BackendError::Integrity`] for a tampered blob, a wrong root or a wrong context; the root
    /// state errors of [`Backend::wrap`]; [`BackendError::UnsupportedAlgorithm`]; or a device
    /// error.
    fn unwrap(&self, blob: &WrappedKey, context: &[u8]) -> Result<Key256, BackendError>;

    /// Generates a new root key version.
    ///
    /// # Errors
    /// [`BackendError::RootExists`], [`BackendError::NotSupported`], or a device error.
    fn generate_root(&self, id: &RootKeyId) -> Result<RootKeyInfo, BackendError> {
        let _ = id;
        Err(self.not_supported("generate a root key"))
    }

    /// Imports root key material given in plaintext.
    ///
    /// # Errors
    /// [`BackendError::NotSupported`] unless the backend allows it.
    fn import_root(&self, id: &RootKeyId, material: &Key256) -> Result<RootKeyInfo, BackendError> {
        let _ = (id, material);
        Err(self.not_supported("import plaintext root key material"))
    }

    /// The public key a customer wraps root key material under for
    /// [`Backend::import_wrapped_root`], made on first use.
    ///
    /// # Errors
    /// [`BackendError::NotSupported`] unless the backend allows it.
    fn import_key(&self) -> Result<ImportKey, BackendError> {
        Err(self.not_supported("import wrapped root key material"))
    }

    /// Imports root key material wrapped under the backend's import key; the material is
    /// unwrapped inside the backend and never seen by strongroom. `check_value` is the key check
    /// value the customer computed from their key: the first 3 bytes of AES-256-ECB(key, 0^128)
    /// (the PKCS#11 `CKA_CHECK_VALUE` definition). The import is refused unless the unwrapped key
    /// has that check value, so a wrong, truncated or corrupted key never becomes a root key.
    ///
    /// # Errors
    /// [`BackendError::NotSupported`] unless the backend allows it; [`BackendError::Integrity`]
    /// when the wrapped material does not unwrap or does not match `check_value`.
    fn import_wrapped_root(
        &self,
        id: &RootKeyId,
        wrapped: &[u8],
        check_value: &[u8; 3],
    ) -> Result<RootKeyInfo, BackendError> {
        let _ = (id, wrapped, check_value);
        Err(self.not_supported("import wrapped root key material"))
    }

    /// Adopts a key that already exists in the backend (made by another tool), found by
    /// `selector` (a label, or `id:` and a hex object id), as root version `id`.
    ///
    /// # Errors
    /// [`BackendError::NotSupported`] unless the backend allows it.
    fn adopt_root(&self, id: &RootKeyId, selector: &str) -> Result<RootKeyInfo, BackendError> {
        let _ = (id, selector);
        Err(self.not_supported("adopt an existing key"))
    }

    /// Disables a root key version in the backend.
    ///
    /// # Errors
    /// [`BackendError::NotSupported`] unless the backend allows it.
    fn disable_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        let _ = id;
        Err(self.not_supported("disable a root key"))
    }

    /// Re-enables a disabled root key version.
    ///
    /// # Errors
    /// [`BackendError::NotSupported`] unless the backend allows it.
    fn enable_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        let _ = id;
        Err(self.not_supported("enable a root key"))
    }

    /// Destroys a root key version. Irreversible.
    ///
    /// # Errors
    /// [`BackendError::NotSupported`] unless the backend allows it.
    fn destroy_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        let _ = id;
        Err(self.not_supported("destroy a root key"))
    }

    /// Which store this backend's keys belong to, if one has claimed them. A backend whose keys
    /// several stores could reach (a namespace in a shared HSM token) records it, so that a
    /// second store never takes the first one's keys for its own; one whose keys live with a
    /// single store (the soft backend's key file is in the store directory) does not.
    ///
    /// # Errors
    /// [`BackendError::NotSupported`] for a backend that does not record it.
    fn store_claim(&self) -> Result<Option<StoreClaim>, BackendError> {
        Err(self.not_supported("record which store its keys belong to"))
    }

    /// Records that this backend's keys belong to `claim`, if the claim there now is
    /// `replacing` (`None`: no claim at all); a compare-and-set, so that of two stores claiming
    /// the same keys at once the second is refused instead of overwriting the first.
    ///
    /// # Errors
    /// [`BackendError::ClaimedByAnother`] when the claim there is not `replacing`;
    /// [`BackendError::NotSupported`] for a backend that does not record it.
    fn set_store_claim(
        &self,
        claim: &StoreClaim,
        replacing: Option<&StoreClaim>,
    ) -> Result<(), BackendError> {
        let _ = (claim, replacing);
        Err(self.not_supported("record which store its keys belong to"))
    }

    /// The audit anchors this backend keeps for the store: each the value of one record
    /// (opaque to the backend; the store MACs it), none if none was written. A backend that
    /// can keep them (an HSM, in a data object) keeps the anchor where whoever can write the
    /// store's database cannot rewrite it: what detects a database of a fleet put back to an
    /// older copy. Several may be there at once (two replicas wrote at the same moment, or a
    /// crash between a write and the removal of what it replaced); the store takes the newest
    /// that verifies.
    ///
    /// # Errors
    /// [`BackendError::NotSupported`] for a backend that does not keep them (the store then
    /// keeps its anchor in a file of its directory), or a device error.
    fn audit_anchors(&self) -> Result<Vec<Vec<u8>>, BackendError> {
        Err(self.not_supported("keep the audit anchor"))
    }

    /// Records `anchor`, then removes the anchors whose values are in `replacing` (those the
    /// store read before and that `anchor` supersedes; one another replica wrote meanwhile is
    /// left, and the newest wins when read).
    ///
    /// # Errors
    /// [`BackendError::NotSupported`] for a backend that does not keep them, or a device error.
    fn put_audit_anchor(&self, anchor: &[u8], replacing: &[Vec<u8>]) -> Result<(), BackendError> {
        let _ = (anchor, replacing);
        Err(self.not_supported("keep the audit anchor"))
    }

    /// The [`BackendError::NotSupported`] for `operation` on this backend.
    fn not_supported(&self, operation: &'static str) -> BackendError {
        BackendError::NotSupported {
            backend: self.describe().kind,
            operation,
        }
    }
}

/// The store a backend's keys belong to ([`Backend::store_claim`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreClaim {
    /// The store's id.
    pub store_id: [u8; 16],
    /// Where the store was created (its data directory), to name it to an operator.
    pub location: String,
}

impl<B: Backend + ?Sized> Backend for std::sync::Arc<B> {
    fn describe(&self) -> BackendInfo {
        (**self).describe()
    }
    fn health(&self) -> Result<Vec<HealthCheck>, BackendError> {
        (**self).health()
    }
    fn list_roots(&self) -> Result<Vec<RootKeyInfo>, BackendError> {
        (**self).list_roots()
    }
    fn find_root(&self, id: &RootKeyId) -> Result<Option<RootKeyInfo>, BackendError> {
        (**self).find_root(id)
    }
    fn wrap(
        &self,
        root: &RootKeyId,
        key: &Key256,
        context: &[u8],
    ) -> Result<WrappedKey, BackendError> {
        (**self).wrap(root, key, context)
    }
    fn unwrap(&self, blob: &WrappedKey, context: &[u8]) -> Result<Key256, BackendError> {
        (**self).unwrap(blob, context)
    }
    fn generate_root(&self, id: &RootKeyId) -> Result<RootKeyInfo, BackendError> {
        (**self).generate_root(id)
    }
    fn import_root(&self, id: &RootKeyId, material: &Key256) -> Result<RootKeyInfo, BackendError> {
        (**self).import_root(id, material)
    }
    fn import_key(&self) -> Result<ImportKey, BackendError> {
        (**self).import_key()
    }
    fn import_wrapped_root(
        &self,
        id: &RootKeyId,
        wrapped: &[u8],
        check_value: &[u8; 3],
    ) -> Result<RootKeyInfo, BackendError> {
        (**self).import_wrapped_root(id, wrapped, check_value)
    }
    fn adopt_root(&self, id: &RootKeyId, selector: &str) -> Result<RootKeyInfo, BackendError> {
        (**self).adopt_root(id, selector)
    }
    fn disable_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        (**self).disable_root(id)
    }
    fn enable_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        (**self).enable_root(id)
    }
    fn destroy_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        (**self).destroy_root(id)
    }
    fn store_claim(&self) -> Result<Option<StoreClaim>, BackendError> {
        (**self).store_claim()
    }
    fn set_store_claim(
        &self,
        claim: &StoreClaim,
        replacing: Option<&StoreClaim>,
    ) -> Result<(), BackendError> {
        (**self).set_store_claim(claim, replacing)
    }
    fn audit_anchors(&self) -> Result<Vec<Vec<u8>>, BackendError> {
        (**self).audit_anchors()
    }
    fn put_audit_anchor(&self, anchor: &[u8], replacing: &[Vec<u8>]) -> Result<(), BackendError> {
        (**self).put_audit_anchor(anchor, replacing)
    }
}
