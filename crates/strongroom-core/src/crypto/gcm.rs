//! AES-256-GCM for records, with a choice of implementation.
//!
//! [`Gcm`] is what the rest of strongroom uses. Its *engine* is the AES-GCM implementation
//! underneath, chosen when strongroom is built:
//!
//! - [`RustCryptoGcm`] (`aes-gcm`, the default): pure Rust, its AES and GHASH key schedules are
//!   zeroized on drop;
//! - `RingGcm` (cargo feature `ring`): `ring`'s assembly, two to four times faster on a
//!   kilobyte and more, but its key schedule is **not** zeroized when dropped (ring offers no way
//!   to), so an expanded DEK may outlive its cache entry in freed memory.
//!
//! Both produce the same bytes (standard AES-256-GCM, 96-bit nonce, 128-bit tag), so a store
//! written by one build opens with the other; the known-answer tests and a differential property
//! run against every engine compiled in.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use zeroize::Zeroize;

use super::{GcmLengthError, IntegrityError, NONCE_LEN, TAG_LEN};
use crate::secret::{Key256, Plaintext};

/// An AES-256-GCM implementation that seals and opens in place with a detached tag.
///
/// Implemented by [`RustCryptoGcm`] and, with the `ring` feature, `RingGcm`; [`Gcm`] adds the
/// buffer handling, which is the same for all.
pub trait GcmEngine: Send + Sync + Sized {
    /// A short name for reports (`aes-gcm`, `ring`).
    const NAME: &'static str;

    /// The engine keyed with `key`, its key schedule expanded once.
    fn with_key(key: &Key256) -> Self;

    /// Encrypts `buf` in place and returns the tag.
    ///
    /// # Errors
    /// [`GcmLengthError`] beyond GCM's limits; `buf` may then hold anything and the caller
    /// zeroizes it.
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], GcmLengthError>;

    /// Authenticates `buf` against `tag` and decrypts it in place.
    ///
    /// # Errors
    /// [`IntegrityError`] when the tag does not match; `buf` then holds no plaintext the caller
    /// may use (it zeroizes it either way).
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), IntegrityError>;
}

/// The engine [`Gcm`] uses in this build: `RingGcm` with the `ring` feature, otherwise
/// [`RustCryptoGcm`].
#[cfg(not(feature = "ring"))]
pub type DefaultGcmEngine = RustCryptoGcm;
/// The engine [`Gcm`] uses in this build: `RingGcm` with the `ring` feature, otherwise
/// [`RustCryptoGcm`].
#[cfg(feature = "ring")]
pub type DefaultGcmEngine = RingGcm;

/// The name of the engine records are sealed with in this build (`aes-gcm` or `ring`).
pub const GCM_ENGINE: &str = DefaultGcmEngine::NAME;

/// RustCrypto's `aes-gcm` (AES-NI/VAES and CLMUL when the CPU has them, detected at run time).
/// Its key schedules zeroize on drop.
pub struct RustCryptoGcm(Aes256Gcm);

impl GcmEngine for RustCryptoGcm {
    const NAME: &'static str = "aes-gcm";

    fn with_key(key: &Key256) -> Self {
        // Conversion to plain bytes: into the AES/GHASH key schedule, which zeroizes on drop.
        Self(Aes256Gcm::new(key.expose_bytes().into()))
    }

    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], GcmLengthError> {
        let n: &Nonce<aes_gcm::aead::consts::U12> = nonce.into();
        self.0
            .encrypt_inout_detached(n, aad, buf.into())
            .map(Into::into)
            .map_err(|_| GcmLengthError)
    }

    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), IntegrityError> {
        let n: &Nonce<aes_gcm::aead::consts::U12> = nonce.into();
        // On failure the buffer still holds ciphertext only: aes-gcm checks the tag before it
        // applies the keystream.
        self.0
            .decrypt_inout_detached(n, aad, buf.into(), tag.into())
            .map_err(|_| IntegrityError)
    }
}

/// `ring`'s AES-256-GCM (cargo feature `ring`). Faster, but its key schedule is not zeroized on
/// drop; see the [module docs](crate::crypto::gcm).
#[cfg(feature = "ring")]
pub struct RingGcm(ring::aead::LessSafeKey);

#[cfg(feature = "ring")]
impl GcmEngine for RingGcm {
    const NAME: &'static str = "ring";

    fn with_key(key: &Key256) -> Self {
        // Conversion to plain bytes: ring copies the key into its own schedule, which it does not
        // zeroize (documented on the type and in the README's security model).
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key.expose_bytes())
            // Infallible: AES_256_GCM takes exactly a 32-byte key, which `Key256` always is.
            .unwrap_or_else(|_| unreachable!("ring refused a 256-bit AES-GCM key"));
        Self(ring::aead::LessSafeKey::new(unbound))
    }

    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], GcmLengthError> {
        let tag = self
            .0
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                buf,
            )
            .map_err(|_| GcmLengthError)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), IntegrityError> {
        // On failure ring overwrites the decrypted bytes with zeros before it returns.
        self.0
            .open_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                ring::aead::Tag::from(*tag),
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| IntegrityError)
    }
}

/// An AES-256-GCM cipher with its key schedule expanded once, for sealing many values under one
/// key (the store keeps one per cached DEK). `E` is the implementation underneath; the default is
/// this build's [`DefaultGcmEngine`].
pub struct Gcm<E: GcmEngine = DefaultGcmEngine>(E);

impl Gcm {
    /// A cipher for `key` on this build's engine ([`GCM_ENGINE`]).
    #[must_use]
    pub fn new(key: &Key256) -> Self {
        Self::with_engine(key)
    }
}

impl<E: GcmEngine> Gcm<E> {
    /// A cipher for `key` on engine `E` (`Gcm::<RustCryptoGcm>::with_engine(&key)`), for tests and
    /// benchmarks that compare engines.
    #[must_use]
    pub fn with_engine(key: &Key256) -> Self {
        Self(E::with_key(key))
    }

    /// Encrypts `plaintext` with `nonce` and `aad`; returns `ciphertext ‖ tag`.
    ///
    /// The caller guarantees `nonce` is fresh for this key (the store draws it at random and
    /// rotates the DEK long before the random-nonce bound).
    ///
    /// # Errors
    /// [`GcmLengthError`] beyond GCM's limits (far above the store's own size limits).
    pub fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, GcmLengthError> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        self.seal_into(nonce, aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// Like [`Gcm::seal`], appending `ciphertext ‖ tag` to `out`. On failure `out` is as it was
    /// (the plaintext copied into it for in-place encryption is zeroized first).
    ///
    /// # Errors
    /// [`GcmLengthError`] beyond GCM's limits.
    pub fn seal_into(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), GcmLengthError> {
        let start = out.len();
        // One allocation at most; a reallocation here moves only what `out` held before (not
        // secret), and the plaintext copied in is encrypted in place or zeroized.
        out.reserve(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        match self.0.seal_in_place(nonce, aad, &mut out[start..]) {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Ok(())
            }
            Err(e) => {
                out[start..].zeroize();
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Decrypts and authenticates `ciphertext ‖ tag`.
    ///
    /// # Errors
    /// [`IntegrityError`] for any altered byte, wrong key, nonce or AAD, or an input shorter than
    /// the tag. No partial plaintext is ever returned.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<Plaintext, IntegrityError> {
        let ct_len = ciphertext_and_tag
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(IntegrityError)?;
        let (ct, tag) = ciphertext_and_tag.split_at(ct_len);
        let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| IntegrityError)?;
        // Zeroized on drop whether the open succeeds or not.
        let mut out = Plaintext::new(ct.to_vec());
        self.0.open_in_place(nonce, aad, out.bytes_mut(), tag)?;
        Ok(out)
    }
}

impl<E: GcmEngine> std::fmt::Debug for Gcm<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gcm<{}>([REDACTED])", E::NAME)
    }
}
