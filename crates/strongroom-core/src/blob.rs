//! The wrapped-key blob: a key wrapped under a root key version or a keyring's KEK version.
//!
//! Every blob names what wrapped it and how, so that rotation can be incremental (any mix of old
//! and new wrappings stays readable while the old version exists) and a later change of a
//! backend's preferred mechanism leaves old blobs readable.
//!
//! # Format, versions 1 and 2 (integers big-endian)
//! ```text
//! offset  size  field
//! 0       4     magic "SRWK"
//! 4       1     format version: 1 = wrapped with a context of the caller's choosing
//!                               2 = the same layout; the caller's context also binds the
//!                                   wrapping key (root name and version): a blob is bound to
//!                                   the root that wrapped it, not only to where it lives
//! 5       1     algorithm: 1 = AES-KWP, context-bound (RFC 5649)
//!                          2 = AES-KW, context-bound (RFC 3394)
//!                          3 = AES-256-GCM, context as AAD
//! 6       1     wrapping key kind: 1 = root key version, 2 = keyring KEK version
//! 7       1     name length n (1..=64)
//! 8       n     name (root key name or keyring name; A-Z a-z 0-9 . _ -)
//! 8+n     4     wrapping key version (>= 1)
//! 12+n    2     payload length m; must equal the algorithm's length for a 256-bit key
//! 14+n    m     payload: KW/KWP: the 56-byte wrap of key ‖ context tag
//!                        GCM: 12-byte nonce ‖ 32-byte ciphertext ‖ 16-byte tag
//! ```
//! Nothing may follow the payload. The version byte is not authenticated by the wrap itself,
//! but it chooses the context the caller rebuilds, so a changed version fails to unwrap.

use std::fmt;

use crate::crypto::{BOUND_WRAPPED_LEN, NONCE_LEN, TAG_LEN};
use crate::format::{FormatError, Reader, put_name};
use crate::id::{KekVersion, KeyringName, RootKeyId, RootKeyName, RootVersion};
use crate::secret::KEY_LEN;

const MAGIC: &[u8; 4] = b"SRWK";
/// The newest blob format version this build writes (it reads 1 and 2).
pub const BLOB_FORMAT_VERSION: u8 = 2;
/// The first blob format version: a context of the caller's choosing.
pub const BLOB_FORMAT_V1: u8 = 1;
const WHAT: &str = "wrapped-key blob";

/// How a key was wrapped.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum WrapAlg {
    /// AES-KWP (RFC 5649) of `key ‖ context tag` (see [`crate::crypto`]).
    AesKwp,
    /// AES-KW (RFC 3394) of `key ‖ context tag`.
    AesKw,
    /// AES-256-GCM of the key with a random 96-bit nonce and the context as AAD.
    AesGcm,
}

impl WrapAlg {
    /// Every algorithm this build knows.
    pub const ALL: [WrapAlg; 3] = [WrapAlg::AesKwp, WrapAlg::AesKw, WrapAlg::AesGcm];

    /// The code stored in a blob.
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Self::AesKwp => 1,
            Self::AesKw => 2,
            Self::AesGcm => 3,
        }
    }

    /// The algorithm for a stored code.
    #[must_use]
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.code() == code)
    }

    /// Exact payload length of a wrapped 256-bit key under this algorithm.
    #[must_use]
    pub fn payload_len(self) -> usize {
        match self {
            Self::AesKwp | Self::AesKw => BOUND_WRAPPED_LEN,
            Self::AesGcm => NONCE_LEN + KEY_LEN + TAG_LEN,
        }
    }

    /// A short name for humans and `--json` output (`aes-kwp`, `aes-kw`, `aes-gcm`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::AesKwp => "aes-kwp",
            Self::AesKw => "aes-kw",
            Self::AesGcm => "aes-gcm",
        }
    }
}

impl fmt::Display for WrapAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The key that wrapped a blob.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum WrappingKeyRef {
    /// A root key version in a backend.
    Root(RootKeyId),
    /// A version of a keyring's KEK.
    Kek {
        /// The keyring.
        keyring: KeyringName,
        /// The KEK version.
        version: KekVersion,
    },
}

impl fmt::Display for WrappingKeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Root(id) => write!(f, "root key {id}"),
            Self::Kek { keyring, version } => write!(f, "KEK {version} of keyring {keyring}"),
        }
    }
}

/// A wrapped 256-bit key, with the algorithm and wrapping key it names. The payload is
/// ciphertext; a `WrappedKey` holds nothing secret.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WrappedKey {
    format: u8,
    alg: WrapAlg,
    wrapped_by: WrappingKeyRef,
    payload: Vec<u8>,
}

impl WrappedKey {
    /// A blob from its parts.
    ///
    /// # Errors
    /// [`FormatError::BadLength`] when the payload is not the algorithm's exact length.
    pub fn new(
        alg: WrapAlg,
        wrapped_by: WrappingKeyRef,
        payload: Vec<u8>,
    ) -> Result<Self, FormatError> {
        if payload.len() != alg.payload_len() {
            return Err(FormatError::BadLength {
                what: WHAT,
                field: "payload",
                expected: alg.payload_len(),
                found: payload.len(),
            });
        }
        Ok(Self {
            format: BLOB_FORMAT_V1,
            alg,
            wrapped_by,
            payload,
        })
    }

    /// The same blob marked as format version 2: the context it was wrapped with binds its
    /// wrapping key too (the caller's promise; see the module docs).
    #[must_use]
    pub fn bound_to_wrapping_key(mut self) -> Self {
        self.format = 2;
        self
    }

    /// The format version (1, or 2 when the context binds the wrapping key).
    #[must_use]
    pub fn format_version(&self) -> u8 {
        self.format
    }

    /// How the key was wrapped.
    #[must_use]
    pub fn alg(&self) -> WrapAlg {
        self.alg
    }

    /// What wrapped it.
    #[must_use]
    pub fn wrapped_by(&self) -> &WrappingKeyRef {
        &self.wrapped_by
    }

    /// The root key version that wrapped it, if a root key did.
    #[must_use]
    pub fn root(&self) -> Option<&RootKeyId> {
        match &self.wrapped_by {
            WrappingKeyRef::Root(id) => Some(id),
            WrappingKeyRef::Kek { .. } => None,
        }
    }

    /// The wrapped bytes (ciphertext).
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Serializes to the format in the module docs, at its own format version.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 64 + self.payload.len());
        out.extend_from_slice(MAGIC);
        out.push(self.format);
        out.push(self.alg.code());
        let (kind, name, version) = match &self.wrapped_by {
            WrappingKeyRef::Root(id) => (1u8, id.name.as_str(), id.version.get()),
            WrappingKeyRef::Kek { keyring, version } => (2u8, keyring.as_str(), version.get()),
        };
        out.push(kind);
        put_name(&mut out, name);
        out.extend_from_slice(&version.to_be_bytes());
        // The payload length is one of the fixed lengths above, far below u16::MAX.
        out.extend_from_slice(
            &u16::try_from(self.payload.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses format version 1 or 2, checking every field.
    ///
    /// # Errors
    /// [`FormatError`] naming the first field that is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(WHAT, bytes);
        r.expect_magic(MAGIC)?;
        let format = r.u8("format version")?;
        if !(BLOB_FORMAT_V1..=BLOB_FORMAT_VERSION).contains(&format) {
            return Err(FormatError::UnsupportedVersion {
                what: WHAT,
                found: format,
                supported: BLOB_FORMAT_VERSION,
            });
        }
        let code = r.u8("algorithm")?;
        let alg = WrapAlg::from_code(code).ok_or(FormatError::UnknownCode {
            what: WHAT,
            field: "algorithm",
            code: code.into(),
        })?;
        let kind = r.u8("wrapping key kind")?;
        if !matches!(kind, 1 | 2) {
            return Err(FormatError::UnknownCode {
                what: WHAT,
                field: "wrapping key kind",
                code: kind.into(),
            });
        }
        let name: String = r.name("wrapping key name", Ok::<_, std::convert::Infallible>)?;
        let version = r.u32("wrapping key version")?;
        let wrapped_by = if kind == 1 {
            let version = RootVersion::new(version)
                .map_err(|e| r.invalid("wrapping key version", e.to_string()))?;
            let name = RootKeyName::new(name)
                .map_err(|e| r.invalid("wrapping key name", e.to_string()))?;
            WrappingKeyRef::Root(RootKeyId::new(name, version))
        } else {
            let version = KekVersion::new(version)
                .map_err(|e| r.invalid("wrapping key version", e.to_string()))?;
            let keyring = KeyringName::new(name)
                .map_err(|e| r.invalid("wrapping key name", e.to_string()))?;
            WrappingKeyRef::Kek { keyring, version }
        };
        let len = usize::from(r.u16("payload length")?);
        if len != alg.payload_len() {
            return Err(FormatError::BadLength {
                what: r.what(),
                field: "payload",
                expected: alg.payload_len(),
                found: len,
            });
        }
        let payload = r.bytes("payload", len)?.to_vec();
        r.finish()?;
        Ok(Self {
            format,
            alg,
            wrapped_by,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(alg: WrapAlg) -> WrappedKey {
        WrappedKey::new(
            alg,
            WrappingKeyRef::Root(RootKeyId::new(
                RootKeyName::new("acme").unwrap(),
                RootVersion::new(2).unwrap(),
            )),
            vec![0x5A; alg.payload_len()],
        )
        .unwrap()
    }

    #[test]
    fn golden_bytes() {
        let b = sample(WrapAlg::AesKwp).to_bytes();
        let mut want = hex::decode("5352574b01010104" /* SRWK v1 kwp root len4 */).unwrap();
        want.extend_from_slice(b"acme");
        want.extend_from_slice(&[0, 0, 0, 2, 0, 56]);
        want.extend_from_slice(&[0x5A; 56]);
        assert_eq!(b, want);
        assert_eq!(WrappedKey::parse(&b).unwrap(), sample(WrapAlg::AesKwp));
        // Version 2: the same layout, its version byte 2.
        let b2 = sample(WrapAlg::AesKwp).bound_to_wrapping_key().to_bytes();
        want[4] = 2;
        assert_eq!(b2, want);
        assert_ne!(
            WrappedKey::parse(&b2).unwrap(),
            sample(WrapAlg::AesKwp),
            "the format version is part of the blob"
        );
    }

    #[test]
    fn strict_checks() {
        let good = sample(WrapAlg::AesGcm).to_bytes();
        let mut extra = good.clone();
        extra.push(0);
        assert!(matches!(
            WrappedKey::parse(&extra),
            Err(FormatError::TrailingBytes { count: 1, .. })
        ));
        for cut in 0..good.len() {
            assert!(
                WrappedKey::parse(&good[..cut]).is_err(),
                "prefix of {cut} bytes parsed"
            );
        }
        let mut v2 = good.clone();
        v2[4] = 2;
        assert_eq!(WrappedKey::parse(&v2).unwrap().format_version(), 2);
        assert_eq!(WrappedKey::parse(&v2).unwrap().to_bytes(), v2);
        for bad in [0u8, 3, 255] {
            let mut b = good.clone();
            b[4] = bad;
            assert!(
                matches!(
                    WrappedKey::parse(&b),
                    Err(FormatError::UnsupportedVersion { found, .. }) if found == bad
                ),
                "{bad}"
            );
        }
        let mut alg = good.clone();
        alg[5] = 9;
        assert!(matches!(
            WrappedKey::parse(&alg),
            Err(FormatError::UnknownCode { code: 9, .. })
        ));
        let mut zero_version = good.clone();
        zero_version[8 + 4..8 + 8].copy_from_slice(&[0; 4]);
        assert!(matches!(
            WrappedKey::parse(&zero_version),
            Err(FormatError::Invalid { .. })
        ));
        // An 8-byte "empty key" payload is an impossible length, refused before any unwrap.
        let mut short = good[..12 + 4].to_vec();
        short.extend_from_slice(&8u16.to_be_bytes());
        short.extend_from_slice(&hex::decode("a65959a600000000").unwrap());
        assert!(matches!(
            WrappedKey::parse(&short),
            Err(FormatError::BadLength { found: 8, .. })
        ));
        assert!(
            WrappedKey::new(
                WrapAlg::AesKw,
                sample(WrapAlg::AesKw).wrapped_by.clone(),
                vec![0; 8]
            )
            .is_err()
        );
    }
}
