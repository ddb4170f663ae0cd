//! Sealed records: a value encrypted under a keyring's DEK with AES-256-GCM.
//!
//! # Format, version 1 (integers big-endian)
//! ```text
//! offset  size  field
//! 0       1     format version = 1
//! 1       4     DEK version (>= 1)
//! 5       12    nonce (96 bits from the CSPRNG)
//! 17      n     ciphertext (n = plaintext length)
//! 17+n    16    GCM tag
//! ```
//! The first 17 bytes are the *header*. The AAD binds the value to where it lives and to its
//! header:
//! ```text
//! AAD = "strongroom/record/v1" ‖ 0x00
//!       ‖ u8 len(keyring) ‖ keyring name
//!       ‖ u32 len(record key) ‖ record key
//!       ‖ header (17 bytes)
//! ```
//! so a value copied to another record key or keyring, truncated, or altered in any byte
//! (header included) fails to open with an [`IntegrityError`], never yielding wrong plaintext.

use crate::crypto::{Gcm, GcmLengthError, IntegrityError, NONCE_LEN, TAG_LEN};
use crate::format::{FormatError, Reader, put_name};
use crate::id::{DekVersion, KeyringName};
use crate::rng::{self, RandomError};
use crate::secret::{Key256, Plaintext};

/// The record format version this build writes and reads.
pub const RECORD_FORMAT_VERSION: u8 = 1;
/// Length of the record header.
pub const RECORD_HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
/// Sealed length overhead: header plus tag.
pub const RECORD_OVERHEAD: usize = RECORD_HEADER_LEN + TAG_LEN;
const WHAT: &str = "sealed record";
const AAD_DOMAIN: &[u8] = b"strongroom/record/v1\0";

/// The parsed header of a sealed record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecordHeader {
    /// The DEK version that sealed the record.
    pub dek_version: DekVersion,
    /// The GCM nonce.
    pub nonce: [u8; NONCE_LEN],
}

impl RecordHeader {
    /// A header with a fresh random nonce.
    ///
    /// # Errors
    /// [`RandomError`] when the CSPRNG cannot be seeded.
    pub fn fresh(dek_version: DekVersion) -> Result<Self, RandomError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng::fill_nonce(&mut nonce)?;
        Ok(Self { dek_version, nonce })
    }

    /// The 17 header bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut out = [0u8; RECORD_HEADER_LEN];
        out[0] = RECORD_FORMAT_VERSION;
        out[1..5].copy_from_slice(&self.dek_version.get().to_be_bytes());
        out[5..].copy_from_slice(&self.nonce);
        out
    }

    /// Parses the header of a sealed record and returns it with the rest (ciphertext and tag),
    /// which must be at least a tag long.
    ///
    /// # Errors
    /// [`FormatError`] naming the first field that is wrong.
    pub fn parse(sealed: &[u8]) -> Result<(Self, &[u8]), FormatError> {
        let mut r = Reader::new(WHAT, sealed);
        r.expect_version(RECORD_FORMAT_VERSION)?;
        let v = r.u32("DEK version")?;
        let dek_version =
            DekVersion::new(v).map_err(|e| r.invalid("DEK version", e.to_string()))?;
        let nonce = r.array::<NONCE_LEN>("nonce")?;
        if r.remaining() < TAG_LEN {
            return Err(FormatError::Truncated {
                what: WHAT,
                field: "tag",
                needed: TAG_LEN,
                left: r.remaining(),
            });
        }
        Ok((Self { dek_version, nonce }, r.rest()))
    }
}

/// The AAD of a record (see the module docs).
#[must_use]
pub fn record_aad(
    keyring: &KeyringName,
    record_key: &[u8],
    header: &[u8; RECORD_HEADER_LEN],
) -> Vec<u8> {
    let mut aad =
        Vec::with_capacity(AAD_DOMAIN.len() + 1 + 64 + 4 + record_key.len() + RECORD_HEADER_LEN);
    aad.extend_from_slice(AAD_DOMAIN);
    put_name(&mut aad, keyring.as_str());
    // Record keys are bounded by the store far below 4 GiB.
    aad.extend_from_slice(
        &u32::try_from(record_key.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    aad.extend_from_slice(record_key);
    aad.extend_from_slice(header);
    aad
}

/// Seals and opens records under one DEK version. Holds the expanded AES-GCM key schedule,
/// zeroized on drop.
#[derive(Debug)]
pub struct RecordCipher {
    version: DekVersion,
    gcm: Gcm,
}

/// Why a record could not be sealed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SealError {
    /// No nonce could be drawn.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The value is beyond AES-GCM's limits.
    #[error(transparent)]
    TooLong(#[from] GcmLengthError),
}

impl RecordCipher {
    /// A cipher for DEK `version` with material `dek`.
    #[must_use]
    pub fn new(version: DekVersion, dek: &Key256) -> Self {
        Self {
            version,
            gcm: Gcm::new(dek),
        }
    }

    /// The DEK version this cipher seals with.
    #[must_use]
    pub fn version(&self) -> DekVersion {
        self.version
    }

    /// Seals `plaintext` for `record_key` in `keyring`.
    ///
    /// # Errors
    /// [`SealError::Random`] when no nonce can be drawn, [`SealError::TooLong`] for a value
    /// beyond AES-GCM's limits.
    pub fn seal(
        &self,
        keyring: &KeyringName,
        record_key: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let mut out = Vec::with_capacity(RECORD_OVERHEAD + plaintext.len());
        self.seal_into(keyring, record_key, plaintext, &mut out)?;
        Ok(out)
    }

    /// Like [`RecordCipher::seal`], into `out` (cleared first), so that a caller sealing many
    /// values can reuse one buffer. On success `out` holds the sealed record, which is not
    /// secret; on failure it is empty.
    ///
    /// # Errors
    /// As [`RecordCipher::seal`].
    pub fn seal_into(
        &self,
        keyring: &KeyringName,
        record_key: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        out.clear();
        let header = RecordHeader::fresh(self.version)?;
        let hb = header.to_bytes();
        let aad = record_aad(keyring, record_key, &hb);
        out.reserve(RECORD_OVERHEAD + plaintext.len());
        out.extend_from_slice(&hb);
        self.gcm
            .seal_into(&header.nonce, &aad, plaintext, out)
            .inspect_err(|_| out.clear())?;
        Ok(())
    }

    /// Opens a sealed record that belongs at `record_key` in `keyring`.
    ///
    /// # Errors
    /// [`IntegrityError`] for a malformed record, a record sealed under another DEK version, or
    /// any altered, truncated or moved value.
    pub fn open(
        &self,
        keyring: &KeyringName,
        record_key: &[u8],
        sealed: &[u8],
    ) -> Result<Plaintext, IntegrityError> {
        let (header, body) = RecordHeader::parse(sealed).map_err(|_| IntegrityError)?;
        if header.dek_version != self.version {
            return Err(IntegrityError);
        }
        let aad = record_aad(keyring, record_key, &header.to_bytes());
        self.gcm.open(&header.nonce, &aad, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(v: u32, b: u8) -> RecordCipher {
        RecordCipher::new(
            DekVersion::new(v).unwrap(),
            &Key256::from_slice_zeroizing(&mut [b; 32]).unwrap(),
        )
    }

    #[test]
    fn round_trip_and_binding() {
        let c = cipher(3, 1);
        let kr = KeyringName::new("payroll").unwrap();
        let other = KeyringName::new("hr").unwrap();
        let sealed = c.seal(&kr, b"alice", b"salary=100").unwrap();
        assert_eq!(sealed.len(), RECORD_OVERHEAD + 10);
        assert_eq!(
            c.open(&kr, b"alice", &sealed).unwrap().expose(),
            b"salary=100"
        );
        assert_eq!(c.open(&kr, b"bob", &sealed).unwrap_err(), IntegrityError);
        assert_eq!(
            c.open(&other, b"alice", &sealed).unwrap_err(),
            IntegrityError
        );
        assert_eq!(
            cipher(3, 2).open(&kr, b"alice", &sealed).unwrap_err(),
            IntegrityError
        );
        assert_eq!(
            cipher(4, 1).open(&kr, b"alice", &sealed).unwrap_err(),
            IntegrityError
        );
        // Truncations, including to exactly header + tag, never open.
        for cut in 0..sealed.len() {
            assert!(c.open(&kr, b"alice", &sealed[..cut]).is_err());
        }
        let (h, body) = RecordHeader::parse(&sealed).unwrap();
        assert_eq!(h.dek_version.get(), 3);
        assert_eq!(body.len(), 10 + TAG_LEN);
        let again = c.seal(&kr, b"alice", b"salary=100").unwrap();
        assert_ne!(again, sealed, "nonces must differ");
    }

    #[test]
    fn seal_into_reuses_a_dirty_buffer() {
        let c = cipher(2, 9);
        let kr = KeyringName::new("payroll").unwrap();
        let mut buf = vec![0xEE; 5000];
        for value in [&b"a longer value than the next"[..], b"short", b""] {
            c.seal_into(&kr, b"k", value, &mut buf).unwrap();
            assert_eq!(buf.len(), RECORD_OVERHEAD + value.len());
            assert_eq!(c.open(&kr, b"k", &buf).unwrap().expose(), value);
        }
    }

    #[test]
    fn header_parse_is_strict() {
        assert!(matches!(
            RecordHeader::parse(&[]),
            Err(FormatError::Truncated { .. })
        ));
        let mut b = vec![2u8; RECORD_OVERHEAD];
        assert!(matches!(
            RecordHeader::parse(&b),
            Err(FormatError::UnsupportedVersion { found: 2, .. })
        ));
        b[0] = 1;
        b[1..5].copy_from_slice(&[0; 4]);
        assert!(matches!(
            RecordHeader::parse(&b),
            Err(FormatError::Invalid { .. })
        ));
        b[4] = 1;
        assert!(RecordHeader::parse(&b).is_ok());
        assert!(matches!(
            RecordHeader::parse(&b[..RECORD_OVERHEAD - 1]),
            Err(FormatError::Truncated { field: "tag", .. })
        ));
    }
}
