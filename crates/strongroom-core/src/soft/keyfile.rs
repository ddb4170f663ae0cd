//! The soft backend's key file.
//!
//! # Format, version 1 (integers big-endian)
//! ```text
//! offset  size  field
//! 0       4     magic "SRKF"
//! 4       1     format version = 1
//! 5       16    instance id (random; names this key file, a store records it)
//! 21      4     entry count n
//! 25      ...   n entries, sorted by (name, version), no duplicates:
//!                 1+len  root key name (length byte, then the name)
//!                 4      version (>= 1)
//!                 1      status: 1 = enabled, 2 = disabled, 3 = destroyed
//!                 32     key material (absent when destroyed)
//! end-32  32    SHA-256 of every byte before it
//! ```
//! The checksum detects damage, not tampering: anyone who can write the file can also fix the
//! checksum. The key file is protected only by the file system; see the README's security model.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::backend::RootStatus;
use crate::format::{FormatError, Reader, put_name};
use crate::id::{RootKeyId, RootKeyName, RootVersion};
use crate::secret::{KEY_LEN, Key256};

const MAGIC: &[u8; 4] = b"SRKF";
/// The key-file format version this build writes and reads.
pub const KEYFILE_FORMAT_VERSION: u8 = 1;
const WHAT: &str = "soft-backend key file";
const CHECKSUM_LEN: usize = 32;

/// Why a key file failed to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFileParseError {
    /// The checksum does not match the contents.
    Checksum,
    /// The contents are not a valid key file.
    Format(FormatError),
}

impl From<FormatError> for KeyFileParseError {
    fn from(e: FormatError) -> Self {
        Self::Format(e)
    }
}

/// One root key version in the file.
#[derive(Debug)]
pub struct Entry {
    /// Enabled, disabled or destroyed.
    pub status: RootStatus,
    /// The material; `None` once destroyed.
    pub material: Option<Key256>,
}

/// The parsed contents of a key file.
#[derive(Debug)]
pub struct KeyFile {
    /// Random id of this key file.
    pub instance_id: [u8; 16],
    /// Root key versions.
    pub entries: BTreeMap<RootKeyId, Entry>,
}

impl KeyFile {
    /// An empty key file with a fresh random instance id.
    ///
    /// # Errors
    /// [`crate::rng::RandomError`] when the OS has no randomness.
    pub fn new() -> Result<Self, crate::rng::RandomError> {
        let mut instance_id = [0u8; 16];
        crate::rng::os_fill(&mut instance_id)?;
        Ok(Self {
            instance_id,
            entries: BTreeMap::new(),
        })
    }

    /// Serializes the file. The result holds key material and is zeroized on drop.
    #[must_use]
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        // The exact size, so the buffer never grows: a reallocation would leave a copy of the
        // key material behind in freed memory that nothing zeroizes.
        let size = MAGIC.len()
            + 1
            + self.instance_id.len()
            + 4
            + self
                .entries
                .keys()
                .map(|id| 1 + id.name.as_str().len() + 4 + 1 + 32)
                .sum::<usize>()
            + CHECKSUM_LEN;
        let mut out = Zeroizing::new(Vec::with_capacity(size));
        out.extend_from_slice(MAGIC);
        out.push(KEYFILE_FORMAT_VERSION);
        out.extend_from_slice(&self.instance_id);
        // At most u32::MAX entries: each generate adds one, and a file that size is unreadable anyway.
        out.extend_from_slice(
            &u32::try_from(self.entries.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for (id, e) in &self.entries {
            put_name(&mut out, id.name.as_str());
            out.extend_from_slice(&id.version.get().to_be_bytes());
            match (&e.status, &e.material) {
                (RootStatus::Destroyed, _) | (_, None) => out.push(3),
                (status, Some(k)) => {
                    out.push(if *status == RootStatus::Enabled { 1 } else { 2 });
                    // Conversion to plain bytes: written to the key file, which is the soft
                    // backend's whole storage (see the README's security model).
                    out.extend_from_slice(k.expose_bytes());
                }
            }
        }
        let sum = Sha256::digest(&out[..]);
        out.extend_from_slice(&sum);
        debug_assert!(out.len() <= size, "the key file buffer grew");
        out
    }

    /// Parses a key file, checking the checksum first and then every field.
    ///
    /// # Errors
    /// [`KeyFileParseError`] naming the problem.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyFileParseError> {
        let mut r = Reader::new(WHAT, bytes);
        r.expect_magic(MAGIC)?;
        r.expect_version(KEYFILE_FORMAT_VERSION)?;
        if bytes.len() < 4 + 1 + 16 + 4 + CHECKSUM_LEN {
            return Err(FormatError::Truncated {
                what: WHAT,
                field: "header and checksum",
                needed: 4 + 1 + 16 + 4 + CHECKSUM_LEN,
                left: bytes.len(),
            }
            .into());
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if !bool::from(Sha256::digest(body).as_slice().ct_eq(sum)) {
            return Err(KeyFileParseError::Checksum);
        }
        let mut r = Reader::new(WHAT, &body[5..]);
        let instance_id = r.array::<16>("instance id")?;
        let count = r.u32("entry count")?;
        let mut entries = BTreeMap::new();
        let mut last: Option<RootKeyId> = None;
        for _ in 0..count {
            let name = r.name("root key name", RootKeyName::new)?;
            let version = RootVersion::new(r.u32("root key version")?)
                .map_err(|e| r.invalid("root key version", e.to_string()))?;
            let id = RootKeyId::new(name, version);
            if last.as_ref().is_some_and(|l| *l >= id) {
                return Err(r
                    .invalid("entries", format!("{id} is out of order or repeated"))
                    .into());
            }
            let status = match r.u8("status")? {
                1 => RootStatus::Enabled,
                2 => RootStatus::Disabled,
                3 => RootStatus::Destroyed,
                code => {
                    return Err(FormatError::UnknownCode {
                        what: WHAT,
                        field: "status",
                        code: code.into(),
                    }
                    .into());
                }
            };
            let material = if status == RootStatus::Destroyed {
                None
            } else {
                let mut raw = Zeroizing::new(r.array::<KEY_LEN>("key material")?);
                Some(
                    Key256::from_slice_zeroizing(&mut raw[..])
                        .map_err(|e| r.invalid("key material", e.to_string()))?,
                )
            };
            last = Some(id.clone());
            entries.insert(id, Entry { status, material });
        }
        r.finish()?;
        Ok(Self {
            instance_id,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KeyFile {
        let mut f = KeyFile::new().unwrap();
        for (name, v, status) in [
            ("acme", 1, RootStatus::Enabled),
            ("acme", 2, RootStatus::Disabled),
            ("zeta", 1, RootStatus::Destroyed),
        ] {
            let id = RootKeyId::new(
                RootKeyName::new(name).unwrap(),
                RootVersion::new(v).unwrap(),
            );
            let material = (status != RootStatus::Destroyed).then(|| Key256::generate().unwrap());
            f.entries.insert(id, Entry { status, material });
        }
        f
    }

    #[test]
    fn round_trip() {
        let f = sample();
        let bytes = f.to_bytes();
        let g = KeyFile::parse(&bytes).unwrap();
        assert_eq!(g.instance_id, f.instance_id);
        assert_eq!(g.entries.len(), 3);
        for ((ia, a), (ib, b)) in f.entries.iter().zip(g.entries.iter()) {
            assert_eq!(ia, ib);
            assert_eq!(a.status, b.status);
            match (&a.material, &b.material) {
                (Some(x), Some(y)) => assert!(x.ct_eq(y)),
                (None, None) => {}
                _ => panic!("material mismatch for {ia}"),
            }
        }
        assert_eq!(g.to_bytes(), bytes);
    }

    #[test]
    fn serializing_never_reallocates_the_buffer_that_holds_key_material() {
        let mut f = sample();
        for st in f.entries.values_mut() {
            if st.material.is_none() {
                st.status = RootStatus::Enabled;
                st.material = Some(Key256::generate().unwrap());
            }
        }
        let bytes = f.to_bytes();
        // Allocated once at its final size: no reallocation left a copy behind.
        assert_eq!(bytes.capacity(), bytes.len());
    }

    #[test]
    fn damage_is_detected() {
        let bytes = sample().to_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0x01;
            assert!(KeyFile::parse(&b).is_err(), "flip at {i} accepted");
        }
        for cut in 0..bytes.len() {
            assert!(
                KeyFile::parse(&bytes[..cut]).is_err(),
                "cut at {cut} accepted"
            );
        }
        let mut b = bytes.to_vec();
        b[4] = 9;
        assert!(matches!(
            KeyFile::parse(&b),
            Err(KeyFileParseError::Format(FormatError::UnsupportedVersion {
                found: 9,
                ..
            }))
        ));
        assert!(matches!(
            KeyFile::parse(b"not a key file at all, just some text that is long enough"),
            Err(KeyFileParseError::Format(FormatError::BadMagic { .. }))
        ));
    }
}
