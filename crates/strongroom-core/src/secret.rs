//! Secret key material.
//!
//! Every key strongroom holds in memory (a KEK, a DEK, the audit MAC key, a soft-backend root key)
//! lives in a [`Key256`]: heap-allocated through [`secrecy::SecretBox`], zeroized on drop, with a
//! `Debug` that prints nothing of the material and no `Clone` (a copy is made only through
//! [`Key256::duplicate`], so every duplicate is visible in the code). The only way to read the
//! bytes is [`Key256::expose_bytes`], and each caller says why in a comment.

use std::fmt;

use secrecy::{ExposeSecret, ExposeSecretMut, SecretBox};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::rng::{self, RandomError};

/// Length in bytes of every symmetric key in the hierarchy (AES-256).
pub const KEY_LEN: usize = 32;

/// A 256-bit symmetric key. Zeroized on drop; never printed.
pub struct Key256(SecretBox<[u8; KEY_LEN]>);

/// The input to [`Key256::from_slice_zeroizing`] was not [`KEY_LEN`] bytes long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("key material must be exactly {KEY_LEN} bytes, got {found}")]
pub struct KeyLengthError {
    /// The length that was presented.
    pub found: usize,
}

impl Key256 {
    /// A fresh random key straight from the operating system's CSPRNG.
    ///
    /// Keys are rare and long-lived, so they come from the OS directly rather than from the
    /// userspace generator that produces nonces.
    ///
    /// # Errors
    /// [`RandomError`] when the OS cannot provide randomness.
    pub fn generate() -> Result<Self, RandomError> {
        let mut boxed = SecretBox::<[u8; KEY_LEN]>::default();
        rng::os_fill(boxed.expose_secret_mut())?;
        Ok(Self(boxed))
    }

    /// Builds a key from `src`, then zeroizes `src`, so the caller's buffer does not outlive its
    /// purpose as a second copy of the material.
    ///
    /// # Errors
    /// [`KeyLengthError`] when `src` is not exactly [`KEY_LEN`] bytes (`src` is zeroized anyway).
    pub fn from_slice_zeroizing(src: &mut [u8]) -> Result<Self, KeyLengthError> {
        let found = src.len();
        if found != KEY_LEN {
            src.zeroize();
            return Err(KeyLengthError { found });
        }
        let mut boxed = SecretBox::<[u8; KEY_LEN]>::default();
        boxed.expose_secret_mut().copy_from_slice(src);
        src.zeroize();
        Ok(Self(boxed))
    }

    /// Plain bytes of the key. **Conversion to plain bytes**: callers hand the slice to a cipher
    /// (AES key schedule, HMAC) or to the soft backend's key file writer, and keep no copy.
    #[must_use]
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        self.0.expose_secret()
    }

    /// An explicit second copy of the key (for example to put one copy in a cache and hand the
    /// other to the caller). Both copies zeroize on drop.
    #[must_use]
    pub fn duplicate(&self) -> Self {
        let mut boxed = SecretBox::<[u8; KEY_LEN]>::default();
        boxed
            .expose_secret_mut()
            .copy_from_slice(self.expose_bytes());
        Self(boxed)
    }

    /// Constant-time equality of two keys (for tests and self-checks; never needed to decide
    /// anything an attacker controls).
    #[must_use]
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.expose_bytes().ct_eq(other.expose_bytes()).into()
    }
}

impl fmt::Debug for Key256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key256([REDACTED])")
    }
}

/// Overwrites with zeros every byte `v` holds and every byte of its spare capacity, then empties
/// it (its allocation is kept, and freed by its drop as usual).
///
/// `Zeroizing<Vec<u8>>` zeroizes a vector one byte at a time with volatile writes (about 0.4 us
/// per KiB here); this fills the slice in bulk and then puts it behind `zeroize`'s optimization
/// barrier, the way `zeroize` itself clears a `[u8]`, at memset speed. What a reallocation
/// left behind earlier is out of its reach, as it is of every zeroizing type.
pub fn wipe(v: &mut Vec<u8>) {
    zero_in_place(v);
    v.clear();
}

/// [`wipe`] without the emptying: every byte held and spare is zero, the length is kept.
fn zero_in_place(v: &mut Vec<u8>) {
    v.as_mut_slice().zeroize();
    v.spare_capacity_mut().zeroize();
}

/// Decrypted record bytes. Zeroized on drop (in bulk: [`wipe`]); `Debug` prints only the length.
pub struct Plaintext(Vec<u8>);

impl Plaintext {
    /// Wraps decrypted bytes. The vector is zeroized when the `Plaintext` drops.
    #[must_use]
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Wraps decrypted bytes already held in a zeroizing vector.
    #[must_use]
    pub fn from_zeroizing(mut bytes: Zeroizing<Vec<u8>>) -> Self {
        Self(std::mem::take(&mut *bytes))
    }

    /// The plaintext bytes. **Conversion to plain bytes**: this is the value the caller stored;
    /// handing it back is the point of a read.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The bytes, for a cipher that decrypts in place: they become plaintext only there.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }

    /// The plaintext as a vector that is still zeroized on drop.
    #[must_use]
    pub fn into_zeroizing(mut self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(std::mem::take(&mut self.0))
    }

    /// Length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the plaintext is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for Plaintext {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext([REDACTED; {} bytes])", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_material() {
        let mut raw = [0xABu8; KEY_LEN];
        let key = Key256::from_slice_zeroizing(&mut raw).unwrap();
        assert_eq!(raw, [0u8; KEY_LEN], "source buffer must be zeroized");
        let shown = format!("{key:?} {:?}", Plaintext::new(vec![0xAB; 4]));
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
        assert!(shown.contains("REDACTED"));
    }

    #[test]
    fn wipe_zeroes_in_place_and_empties() {
        let mut v = Vec::with_capacity(4096);
        v.extend_from_slice(&[0xA5u8; 3000]);
        let (ptr, cap) = (v.as_ptr(), v.capacity());
        zero_in_place(&mut v);
        assert_eq!(v.len(), 3000);
        assert!(v.iter().all(|b| *b == 0), "every held byte is zero");
        assert_eq!((v.as_ptr(), v.capacity()), (ptr, cap), "in place");
        v.fill(0x5A);
        wipe(&mut v);
        assert!(v.is_empty());
        assert_eq!((v.as_ptr(), v.capacity()), (ptr, cap), "in place");
        let p = Plaintext::new(vec![1, 2, 3]);
        assert_eq!(p.into_zeroizing().as_slice(), &[1, 2, 3]);
        let p = Plaintext::from_zeroizing(Zeroizing::new(vec![4, 5]));
        assert_eq!(p.expose(), &[4, 5]);
    }

    #[test]
    fn wrong_length_is_rejected_and_zeroized() {
        let mut short = vec![7u8; 31];
        assert_eq!(
            Key256::from_slice_zeroizing(&mut short).unwrap_err(),
            KeyLengthError { found: 31 }
        );
        assert!(short.iter().all(|b| *b == 0));
        assert!(Key256::from_slice_zeroizing(&mut []).is_err());
        assert!(Key256::from_slice_zeroizing(&mut [1u8; 33]).is_err());
    }

    #[test]
    fn generated_keys_differ_and_duplicate_is_equal() {
        let a = Key256::generate().unwrap();
        let b = Key256::generate().unwrap();
        assert!(!a.ct_eq(&b));
        assert!(a.ct_eq(&a.duplicate()));
    }
}
