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
use crate::format::{FormatError, Reader};
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

/// A sealed record split into its header and body, parsed once: the store reads the DEK version
/// from it to pick the cipher, and the cipher opens it without parsing it again.
#[derive(Clone, Copy)]
pub struct SealedRecord<'a> {
    /// The parsed header.
    pub header: RecordHeader,
    /// The header as stored: the AAD binds these bytes (a strict parse makes them the ones
    /// [`RecordHeader::to_bytes`] would give).
    raw_header: &'a [u8; RECORD_HEADER_LEN],
    /// Ciphertext and tag.
    body: &'a [u8],
}

impl std::fmt::Debug for SealedRecord<'_> {
    // Sealed bytes are not secret, but no Debug output shows stored bytes: the header and the
    // body's length.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SealedRecord({:?}, {} body bytes)",
            self.header,
            self.body.len()
        )
    }
}

impl<'a> SealedRecord<'a> {
    /// Parses a sealed record ([`RecordHeader::parse`]).
    ///
    /// # Errors
    /// [`FormatError`] naming the first field that is wrong.
    pub fn parse(sealed: &'a [u8]) -> Result<Self, FormatError> {
        let (header, body) = RecordHeader::parse(sealed)?;
        let raw_header =
            sealed
                .first_chunk::<RECORD_HEADER_LEN>()
                .ok_or(FormatError::Truncated {
                    what: WHAT,
                    field: "header",
                    needed: RECORD_HEADER_LEN,
                    left: sealed.len(),
                })?;
        Ok(Self {
            header,
            raw_header,
            body,
        })
    }
}

/// The AAD of a record (see the module docs).
#[must_use]
pub fn record_aad(
    keyring: &KeyringName,
    record_key: &[u8],
    header: &[u8; RECORD_HEADER_LEN],
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(aad_len(keyring, record_key));
    push_aad(&mut aad, keyring, record_key, header);
    aad
}

fn aad_len(keyring: &KeyringName, record_key: &[u8]) -> usize {
    AAD_DOMAIN.len() + 1 + keyring.as_str().len() + 4 + record_key.len() + RECORD_HEADER_LEN
}

fn push_aad(
    aad: &mut impl Sink,
    keyring: &KeyringName,
    record_key: &[u8],
    header: &[u8; RECORD_HEADER_LEN],
) {
    aad.put(AAD_DOMAIN);
    let name = keyring.as_str().as_bytes();
    // Names are at most 64 bytes (`MAX_NAME_LEN`), record keys far below 4 GiB.
    aad.put(&[u8::try_from(name.len()).unwrap_or(u8::MAX)]);
    aad.put(name);
    aad.put(
        &u32::try_from(record_key.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    aad.put(record_key);
    aad.put(header);
}

/// Where an AAD is built.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// AADs up to this length are built on the stack (a 64-byte keyring name and a record key of
/// up to 150 bytes); longer ones in an allocation.
const STACK_AAD: usize = 256;

/// Calls `f` with the AAD of a record, built on the stack when it fits in [`STACK_AAD`].
fn with_aad<R>(
    keyring: &KeyringName,
    record_key: &[u8],
    header: &[u8; RECORD_HEADER_LEN],
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    let len = aad_len(keyring, record_key);
    if len > STACK_AAD {
        return f(&record_aad(keyring, record_key, header));
    }
    let mut buf = [0u8; STACK_AAD];
    let mut w = StackWriter {
        buf: &mut buf,
        len: 0,
    };
    push_aad(&mut w, keyring, record_key, header);
    let n = w.len;
    debug_assert_eq!(n, len);
    f(&buf[..n])
}

/// Appends into a fixed buffer that the caller has sized ([`aad_len`]).
struct StackWriter<'b> {
    buf: &'b mut [u8; STACK_AAD],
    len: usize,
}

impl Sink for StackWriter<'_> {
    fn put(&mut self, bytes: &[u8]) {
        // In bounds: `with_aad` checked the total length first.
        if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }
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
        self.seal_append(keyring, record_key, plaintext, out)
    }

    /// Like [`RecordCipher::seal`], appending the sealed record to `out`, so that a batch can
    /// seal all its values back to back into one buffer. On failure `out` is as it was.
    ///
    /// # Errors
    /// As [`RecordCipher::seal`].
    pub fn seal_append(
        &self,
        keyring: &KeyringName,
        record_key: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let start = out.len();
        let header = RecordHeader::fresh(self.version)?;
        let hb = header.to_bytes();
        out.reserve(RECORD_OVERHEAD + plaintext.len());
        out.extend_from_slice(&hb);
        with_aad(keyring, record_key, &hb, |aad| {
            self.gcm.seal_into(&header.nonce, aad, plaintext, out)
        })
        .inspect_err(|_| out.truncate(start))?;
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
        let record = SealedRecord::parse(sealed).map_err(|_| IntegrityError)?;
        self.open_parsed(keyring, record_key, &record)
    }

    /// [`RecordCipher::open`] of a record parsed already.
    ///
    /// # Errors
    /// As [`RecordCipher::open`].
    pub fn open_parsed(
        &self,
        keyring: &KeyringName,
        record_key: &[u8],
        record: &SealedRecord<'_>,
    ) -> Result<Plaintext, IntegrityError> {
        if record.header.dek_version != self.version {
            return Err(IntegrityError);
        }
        with_aad(keyring, record_key, record.raw_header, |aad| {
            self.gcm.open(&record.header.nonce, aad, record.body)
        })
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
    fn stack_and_heap_aads_agree() {
        let kr = KeyringName::new("k".repeat(crate::id::MAX_NAME_LEN)).unwrap();
        let h = [7u8; RECORD_HEADER_LEN];
        // Both sides of the stack limit, and far beyond it.
        for key_len in [0, 1, 149, 150, 151, 152, 1024] {
            let key = vec![0x33u8; key_len];
            let heap = record_aad(&kr, &key, &h);
            assert_eq!(heap.len(), aad_len(&kr, &key));
            with_aad(&kr, &key, &h, |aad| assert_eq!(aad, &heap[..], "{key_len}"));
            let c = cipher(1, 4);
            let sealed = c.seal(&kr, &key, b"v").unwrap();
            assert_eq!(c.open(&kr, &key, &sealed).unwrap().expose(), b"v");
        }
        // The layout, spelled out once.
        let short = KeyringName::new("ab").unwrap();
        let mut want = b"strongroom/record/v1\0".to_vec();
        want.extend_from_slice(&[2, b'a', b'b', 0, 0, 0, 1, b'z']);
        want.extend_from_slice(&h);
        with_aad(&short, b"z", &h, |aad| assert_eq!(aad, &want[..]));
    }

    #[test]
    fn seal_append_puts_records_back_to_back() {
        let c = cipher(2, 9);
        let kr = KeyringName::new("payroll").unwrap();
        let mut buf = b"prefix".to_vec();
        c.seal_append(&kr, b"a", b"first", &mut buf).unwrap();
        c.seal_append(&kr, b"b", b"second value", &mut buf).unwrap();
        assert_eq!(&buf[..6], b"prefix");
        let first = &buf[6..6 + RECORD_OVERHEAD + 5];
        let second = &buf[6 + RECORD_OVERHEAD + 5..];
        assert_eq!(c.open(&kr, b"a", first).unwrap().expose(), b"first");
        assert_eq!(c.open(&kr, b"b", second).unwrap().expose(), b"second value");
        assert!(c.open(&kr, b"a", second).is_err());
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
