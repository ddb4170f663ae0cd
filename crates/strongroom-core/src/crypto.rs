//! Software cryptography: AES-KW/KWP key wrapping bound to a context, and AES-256-GCM.
//!
//! # Context binding for key wrap
//! AES-KW (RFC 3394) and AES-KWP (RFC 5649) authenticate what they wrap but take no associated
//! data. strongroom binds a wrapped key to its context (which keyring, which version, which kind
//! of key) by wrapping `key ‖ context_tag` (48 bytes) instead of the bare 32-byte key, where
//!
//! ```text
//! context_tag = SHA-256("strongroom/wrap-context/v1" ‖ 0x00 ‖ context)[0..16]
//! ```
//!
//! Unwrapping checks the tag in constant time. A blob moved to another context fails exactly like
//! a tampered one: with the opaque [`IntegrityError`]. The wrapped length for a 256-bit key is
//! then always [`BOUND_WRAPPED_LEN`] (56) bytes for both KW and KWP, and anything else is refused
//! before any cipher runs.
//!
//! # Length checks
//! `aes-kw` 0.3.1 unwraps the 8-byte blobs `a6a6a6a6a6a6a6a6` (KW) and `a65959a600000000` (KWP)
//! to an empty key under any KEK, and wraps an empty key without complaint. Every function here
//! checks lengths first: wrapped inputs of impossible length are refused, and an unwrapped key of
//! any length but the expected one is an integrity error.

use aes_gcm::KeyInit;
use aes_kw::{KwAes256, KwpAes256};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::secret::{KEY_LEN, Key256};

pub mod gcm;
#[cfg(feature = "ring")]
pub use gcm::RingGcm;
pub use gcm::{DefaultGcmEngine, GCM_ENGINE, Gcm, GcmEngine, RustCryptoGcm};

/// Length of the context tag appended to a key before it is wrapped.
pub const CONTEXT_TAG_LEN: usize = 16;
/// Length of `key ‖ context_tag`, the plaintext of every strongroom key wrap.
pub const BOUND_PLAINTEXT_LEN: usize = KEY_LEN + CONTEXT_TAG_LEN;
/// Length of a context-bound KW or KWP wrap of a 256-bit key (48 bytes plus the 8-byte IV).
pub const BOUND_WRAPPED_LEN: usize = BOUND_PLAINTEXT_LEN + 8;
/// AES-GCM nonce length (96 bits).
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length (128 bits).
pub const TAG_LEN: usize = 16;

/// Authenticated decryption or unwrap failed. Deliberately opaque: it does not say whether the
/// key, the context, the nonce or the data was wrong, so it cannot serve as an oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "integrity check failed: the data was altered, corrupted, or opened with the wrong key or context"
)]
pub struct IntegrityError;

/// A plaintext or AAD beyond what AES-GCM can seal under one nonce (2^36 - 32 bytes of
/// plaintext, 2^61 - 1 of AAD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the value is too long for AES-GCM (at most 2^36 - 32 bytes under one nonce)")]
pub struct GcmLengthError;

const CONTEXT_DOMAIN: &[u8] = b"strongroom/wrap-context/v1\0";

/// The 16-byte tag that binds a wrapped key to its context (see the module docs).
#[must_use]
pub fn context_tag(context: &[u8]) -> [u8; CONTEXT_TAG_LEN] {
    let digest = Sha256::new()
        .chain_update(CONTEXT_DOMAIN)
        .chain_update(context)
        .finalize();
    let mut tag = [0u8; CONTEXT_TAG_LEN];
    tag.copy_from_slice(&digest[..CONTEXT_TAG_LEN]);
    tag
}

/// `key ‖ context_tag(context)`: the plaintext a context-bound wrap protects. Public so that a
/// backend whose wrap happens elsewhere (a PKCS#11 token's KW/KWP) builds the same bytes.
#[must_use]
pub fn bind_context(key: &Key256, context: &[u8]) -> Zeroizing<[u8; BOUND_PLAINTEXT_LEN]> {
    let mut out = Zeroizing::new([0u8; BOUND_PLAINTEXT_LEN]);
    // Conversion to plain bytes: the key is copied into a zeroizing buffer that is wrapped at once.
    out[..KEY_LEN].copy_from_slice(key.expose_bytes());
    out[KEY_LEN..].copy_from_slice(&context_tag(context));
    out
}

/// The inverse of [`bind_context`]: checks the length and the tag, then returns the key.
///
/// # Errors
/// [`IntegrityError`] when `bound` is not [`BOUND_PLAINTEXT_LEN`] bytes or its tag does not match
/// `context`.
pub fn unbind_context(bound: &[u8], context: &[u8]) -> Result<Key256, IntegrityError> {
    if bound.len() != BOUND_PLAINTEXT_LEN {
        return Err(IntegrityError);
    }
    let expected = context_tag(context);
    if !bool::from(bound[KEY_LEN..].ct_eq(&expected)) {
        return Err(IntegrityError);
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&bound[..KEY_LEN]);
    Key256::from_slice_zeroizing(&mut key[..]).map_err(|_| IntegrityError)
}

/// AES-256-KWP (RFC 5649) of `key ‖ context_tag` under `kek`.
#[must_use]
pub fn kwp_wrap_bound(kek: &Key256, key: &Key256, context: &[u8]) -> [u8; BOUND_WRAPPED_LEN] {
    let plain = bind_context(key, context);
    // Conversion to plain bytes: the KEK goes into the AES key schedule, which zeroizes on drop.
    let cipher = KwpAes256::new(kek.expose_bytes().into());
    let mut out = [0u8; BOUND_WRAPPED_LEN];
    // Infallible: 48 bytes of input always fit the 56-byte output and are within KWP's limits.
    let _ = cipher.wrap_key(&plain[..], &mut out);
    out
}

/// Unwraps a [`kwp_wrap_bound`] blob.
///
/// # Errors
/// [`IntegrityError`] for a wrong length, a wrong KEK, a wrong context or altered bytes.
pub fn kwp_unwrap_bound(
    kek: &Key256,
    wrapped: &[u8],
    context: &[u8],
) -> Result<Key256, IntegrityError> {
    if wrapped.len() != BOUND_WRAPPED_LEN {
        return Err(IntegrityError);
    }
    let cipher = KwpAes256::new(kek.expose_bytes().into());
    let mut buf = Zeroizing::new([0u8; BOUND_WRAPPED_LEN - 8]);
    let plain = cipher
        .unwrap_key(wrapped, &mut buf[..])
        .map_err(|_| IntegrityError)?;
    unbind_context(plain, context)
}

/// AES-256-KW (RFC 3394) of `key ‖ context_tag` under `kek` (48 bytes is a whole number of
/// semiblocks, so no padding is needed).
#[must_use]
pub fn kw_wrap_bound(kek: &Key256, key: &Key256, context: &[u8]) -> [u8; BOUND_WRAPPED_LEN] {
    let plain = bind_context(key, context);
    let cipher = KwAes256::new(kek.expose_bytes().into());
    let mut out = [0u8; BOUND_WRAPPED_LEN];
    // Infallible: 48 bytes is a multiple of 8 and at least 16, and the output is 56 bytes.
    let _ = cipher.wrap_key(&plain[..], &mut out);
    out
}

/// Unwraps a [`kw_wrap_bound`] blob.
///
/// # Errors
/// [`IntegrityError`] for a wrong length, a wrong KEK, a wrong context or altered bytes.
pub fn kw_unwrap_bound(
    kek: &Key256,
    wrapped: &[u8],
    context: &[u8],
) -> Result<Key256, IntegrityError> {
    if wrapped.len() != BOUND_WRAPPED_LEN {
        return Err(IntegrityError);
    }
    let cipher = KwAes256::new(kek.expose_bytes().into());
    let mut buf = Zeroizing::new([0u8; BOUND_WRAPPED_LEN - 8]);
    let plain = cipher
        .unwrap_key(wrapped, &mut buf[..])
        .map_err(|_| IntegrityError)?;
    unbind_context(plain, context)
}

/// Raw AES-KW and AES-KWP with keys as byte slices, for known-answer tests and differential
/// fuzzing. The engine itself uses only the context-bound functions above.
///
/// Lengths are checked before any cipher runs: KW wraps 16 bytes or more in whole 8-byte
/// semiblocks and unwraps 24 bytes or more; KWP wraps 1 byte or more and unwraps 16 bytes or
/// more; both unwrap only whole semiblocks; and KWP refuses to return an empty key.
pub mod hazmat {
    use aes_gcm::KeyInit;
    use aes_kw::{KwAes128, KwAes192, KwAes256, KwpAes128, KwpAes192, KwpAes256};
    use zeroize::Zeroizing;

    /// Why a raw wrap or unwrap was refused.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    #[non_exhaustive]
    pub enum KeyWrapError {
        /// The KEK was not 16, 24 or 32 bytes.
        #[error("KEK must be 16, 24 or 32 bytes, got {0}")]
        KekLength(usize),
        /// The input length is impossible for this mode and direction.
        #[error("input of {0} bytes has an impossible length for this key-wrap mode")]
        InputLength(usize),
        /// Unwrap failed its integrity check.
        #[error("integrity check failed")]
        Integrity,
    }

    macro_rules! by_kek_len {
        ($kek:expr, $t128:ty, $t192:ty, $t256:ty, |$c:ident| $body:expr) => {
            match $kek.len() {
                16 => {
                    let $c =
                        <$t128>::new_from_slice($kek).map_err(|_| KeyWrapError::KekLength(16))?;
                    $body
                }
                24 => {
                    let $c =
                        <$t192>::new_from_slice($kek).map_err(|_| KeyWrapError::KekLength(24))?;
                    $body
                }
                32 => {
                    let $c =
                        <$t256>::new_from_slice($kek).map_err(|_| KeyWrapError::KekLength(32))?;
                    $body
                }
                n => Err(KeyWrapError::KekLength(n)),
            }
        };
    }

    /// AES-KW (RFC 3394) wrap.
    ///
    /// # Errors
    /// [`KeyWrapError`] for a bad KEK or input length.
    pub fn kw_wrap(kek: &[u8], key: &[u8]) -> Result<Vec<u8>, KeyWrapError> {
        if key.len() < 16 || !key.len().is_multiple_of(8) {
            return Err(KeyWrapError::InputLength(key.len()));
        }
        let mut out = vec![0u8; key.len() + 8];
        by_kek_len!(kek, KwAes128, KwAes192, KwAes256, |c| {
            c.wrap_key(key, &mut out)
                .map_err(|_| KeyWrapError::InputLength(key.len()))?;
            Ok(out)
        })
    }

    /// AES-KW (RFC 3394) unwrap.
    ///
    /// # Errors
    /// [`KeyWrapError`] for a bad KEK or input length, or a failed integrity check.
    pub fn kw_unwrap(kek: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyWrapError> {
        if wrapped.len() < 24 || !wrapped.len().is_multiple_of(8) {
            return Err(KeyWrapError::InputLength(wrapped.len()));
        }
        let mut out = Zeroizing::new(vec![0u8; wrapped.len() - 8]);
        by_kek_len!(kek, KwAes128, KwAes192, KwAes256, |c| {
            let n = c
                .unwrap_key(wrapped, &mut out)
                .map_err(|_| KeyWrapError::Integrity)?
                .len();
            out.truncate(n);
            Ok(out)
        })
    }

    /// AES-KWP (RFC 5649) wrap.
    ///
    /// # Errors
    /// [`KeyWrapError`] for a bad KEK or an empty (or over 2^32 - 1 byte) key.
    pub fn kwp_wrap(kek: &[u8], key: &[u8]) -> Result<Vec<u8>, KeyWrapError> {
        if key.is_empty() || u32::try_from(key.len()).is_err() {
            return Err(KeyWrapError::InputLength(key.len()));
        }
        let mut out = vec![0u8; key.len().div_ceil(8) * 8 + 8];
        by_kek_len!(kek, KwpAes128, KwpAes192, KwpAes256, |c| {
            let n = c
                .wrap_key(key, &mut out)
                .map_err(|_| KeyWrapError::InputLength(key.len()))?
                .len();
            out.truncate(n);
            Ok(out)
        })
    }

    /// AES-KWP (RFC 5649) unwrap. An unwrap that yields an empty key is an integrity failure.
    ///
    /// # Errors
    /// [`KeyWrapError`] for a bad KEK or input length, or a failed integrity check.
    pub fn kwp_unwrap(kek: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyWrapError> {
        if wrapped.len() < 16 || !wrapped.len().is_multiple_of(8) {
            return Err(KeyWrapError::InputLength(wrapped.len()));
        }
        let mut out = Zeroizing::new(vec![0u8; wrapped.len() - 8]);
        by_kek_len!(kek, KwpAes128, KwpAes192, KwpAes256, |c| {
            let n = c
                .unwrap_key(wrapped, &mut out)
                .map_err(|_| KeyWrapError::Integrity)?
                .len();
            if n == 0 {
                return Err(KeyWrapError::Integrity);
            }
            out.truncate(n);
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key256 {
        Key256::from_slice_zeroizing(&mut [b; KEY_LEN]).unwrap()
    }

    #[test]
    fn bound_wraps_round_trip_and_bind_the_context() {
        let (kek, k) = (key(1), key(2));
        for (wrap, unwrap) in [
            (
                kwp_wrap_bound as fn(&Key256, &Key256, &[u8]) -> [u8; 56],
                kwp_unwrap_bound as fn(&Key256, &[u8], &[u8]) -> Result<Key256, IntegrityError>,
            ),
            (kw_wrap_bound, kw_unwrap_bound),
        ] {
            let w = wrap(&kek, &k, b"ctx-a");
            assert!(unwrap(&kek, &w, b"ctx-a").unwrap().ct_eq(&k));
            assert_eq!(unwrap(&kek, &w, b"ctx-b").unwrap_err(), IntegrityError);
            assert_eq!(unwrap(&key(3), &w, b"ctx-a").unwrap_err(), IntegrityError);
            assert_eq!(
                unwrap(&kek, &w[..48], b"ctx-a").unwrap_err(),
                IntegrityError
            );
        }
        // KW and KWP are different modes: one's blob does not open under the other.
        let w = kwp_wrap_bound(&kek, &k, b"c");
        assert!(kw_unwrap_bound(&kek, &w, b"c").is_err());
    }

    #[test]
    fn aes_kw_empty_key_blobs_are_refused() {
        // Measured: aes-kw 0.3.1 unwraps these to an empty key under any KEK.
        let kek = [9u8; 32];
        let kw_empty = hex::decode("a6a6a6a6a6a6a6a6").unwrap();
        let kwp_empty = hex::decode("a65959a600000000").unwrap();
        assert_eq!(
            hazmat::kw_unwrap(&kek, &kw_empty).unwrap_err(),
            hazmat::KeyWrapError::InputLength(8)
        );
        assert_eq!(
            hazmat::kwp_unwrap(&kek, &kwp_empty).unwrap_err(),
            hazmat::KeyWrapError::InputLength(8)
        );
        assert_eq!(
            hazmat::kwp_wrap(&kek, &[]).unwrap_err(),
            hazmat::KeyWrapError::InputLength(0)
        );
        assert_eq!(
            hazmat::kw_wrap(&kek, &[]).unwrap_err(),
            hazmat::KeyWrapError::InputLength(0)
        );
        assert_eq!(
            hazmat::kw_wrap(&kek, &[0; 8]).unwrap_err(),
            hazmat::KeyWrapError::InputLength(8)
        );
        assert_eq!(
            hazmat::kw_unwrap(&kek, &[0; 17]).unwrap_err(),
            hazmat::KeyWrapError::InputLength(17)
        );
        // And the engine's own entry points refuse them before any cipher runs.
        let k = key(4);
        assert_eq!(
            kw_unwrap_bound(&k, &kw_empty, b"").unwrap_err(),
            IntegrityError
        );
        assert_eq!(
            kwp_unwrap_bound(&k, &kwp_empty, b"").unwrap_err(),
            IntegrityError
        );
        // A well-formed 16-byte KWP blob of a 1..8-byte key is still not a 256-bit key.
        let short = hazmat::kwp_wrap(k.expose_bytes(), &[1, 2, 3]).unwrap();
        assert_eq!(short.len(), 16);
        assert_eq!(
            kwp_unwrap_bound(&k, &short, b"").unwrap_err(),
            IntegrityError
        );
        // A valid 56-byte KWP wrap of 41..48 bytes that is not a bound key fails its length check.
        let odd = hazmat::kwp_wrap(k.expose_bytes(), &[7u8; 47]).unwrap();
        assert_eq!(odd.len(), 56);
        assert_eq!(kwp_unwrap_bound(&k, &odd, b"").unwrap_err(), IntegrityError);
        // An unbound 32-byte key wrapped by KWP (40 bytes) is an impossible length.
        let bare = hazmat::kwp_wrap(k.expose_bytes(), &[7u8; 32]).unwrap();
        assert_eq!(
            kwp_unwrap_bound(&k, &bare, b"").unwrap_err(),
            IntegrityError
        );
    }

    #[test]
    fn hazmat_refuses_bad_kek_lengths() {
        assert_eq!(
            hazmat::kwp_wrap(&[0; 31], &[1; 32]).unwrap_err(),
            hazmat::KeyWrapError::KekLength(31)
        );
        assert_eq!(
            hazmat::kw_unwrap(&[], &[0; 24]).unwrap_err(),
            hazmat::KeyWrapError::KekLength(0)
        );
    }

    #[test]
    fn gcm_round_trip_and_opaque_failure() {
        let g = Gcm::new(&key(5));
        let nonce = [3u8; NONCE_LEN];
        let sealed = g.seal(&nonce, b"aad", b"hello").unwrap();
        assert_eq!(sealed.len(), 5 + TAG_LEN);
        assert_eq!(g.open(&nonce, b"aad", &sealed).unwrap().expose(), b"hello");
        assert_eq!(
            g.open(&nonce, b"aad!", &sealed).unwrap_err(),
            IntegrityError
        );
        assert_eq!(
            g.open(&[4; NONCE_LEN], b"aad", &sealed).unwrap_err(),
            IntegrityError
        );
        assert_eq!(
            g.open(&nonce, b"aad", &sealed[..TAG_LEN - 1]).unwrap_err(),
            IntegrityError
        );
        assert_eq!(
            Gcm::new(&key(6)).open(&nonce, b"aad", &sealed).unwrap_err(),
            IntegrityError
        );
        let empty = g.seal(&nonce, b"", b"").unwrap();
        assert!(g.open(&nonce, b"", &empty).unwrap().is_empty());
    }
}
