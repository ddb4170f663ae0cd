//! Shared pieces of strongroom's byte formats: the parse error and a bounds-checked reader.
//!
//! Every format is versioned, big-endian, length-prefixed where lengths vary, and parsed in one
//! pass into types; nothing is trusted before it has been checked, and trailing bytes are an
//! error. The formats themselves are documented next to their parsers ([`crate::blob`],
//! [`crate::record`], [`crate::soft`]).

/// A byte string is not a valid instance of a strongroom format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The magic bytes at the start are wrong: this is not the kind of data it was taken for.
    #[error("not a strongroom {what} (wrong magic bytes)")]
    BadMagic {
        /// The format that was expected.
        what: &'static str,
    },
    /// Written by a newer (or unknown) version of the format.
    #[error(
        "{what} format version {found} is not supported (this build reads version {supported}); upgrade strongroom to read it"
    )]
    UnsupportedVersion {
        /// The format.
        what: &'static str,
        /// Version found in the data.
        found: u8,
        /// Version this build reads.
        supported: u8,
    },
    /// The data ends before the format does.
    #[error("{what} is truncated: {field} needs {needed} more bytes, {left} left")]
    Truncated {
        /// The format.
        what: &'static str,
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        left: usize,
    },
    /// Bytes follow the end of the format.
    #[error("{what} has {count} unexpected bytes after its end")]
    TrailingBytes {
        /// The format.
        what: &'static str,
        /// How many.
        count: usize,
    },
    /// A code (algorithm, kind, state) that this build does not know.
    #[error("{what} has an unknown {field} code {code}")]
    UnknownCode {
        /// The format.
        what: &'static str,
        /// The field.
        field: &'static str,
        /// The code found.
        code: u32,
    },
    /// A field has a length that this format does not allow.
    #[error("{what}: {field} is {found} bytes, expected {expected}")]
    BadLength {
        /// The format.
        what: &'static str,
        /// The field.
        field: &'static str,
        /// Expected length.
        expected: usize,
        /// Length found.
        found: usize,
    },
    /// A field's value is invalid (a zero version, a bad name).
    #[error("{what}: invalid {field}: {reason}")]
    Invalid {
        /// The format.
        what: &'static str,
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// A cursor over bytes whose every read is bounds-checked and names the field it reads. Shared
/// by the parsers of every strongroom crate.
#[derive(Debug)]
pub struct Reader<'a> {
    what: &'static str,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, for format `what` (named in errors).
    #[must_use]
    pub fn new(what: &'static str, buf: &'a [u8]) -> Self {
        Self { what, buf }
    }

    /// The format being read.
    #[must_use]
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The next `n` bytes.
    ///
    /// # Errors
    /// [`FormatError::Truncated`] when fewer are left.
    pub fn bytes(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], FormatError> {
        if self.buf.len() < n {
            return Err(FormatError::Truncated {
                what: self.what,
                field,
                needed: n,
                left: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    ///
    /// # Errors
    /// [`FormatError::Truncated`] when fewer are left.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(field, N)?);
        Ok(out)
    }

    /// One byte.
    ///
    /// # Errors
    /// [`FormatError::Truncated`] at the end.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, FormatError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A big-endian `u16`.
    ///
    /// # Errors
    /// [`FormatError::Truncated`] when fewer bytes are left.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, FormatError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// A big-endian `u32`.
    ///
    /// # Errors
    /// [`FormatError::Truncated`] when fewer bytes are left.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, FormatError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// A big-endian `u64`.
    ///
    /// # Errors
    /// [`FormatError::Truncated`] when fewer bytes are left.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, FormatError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Consumes `magic`.
    ///
    /// # Errors
    /// [`FormatError::BadMagic`] when the data does not start with it.
    pub fn expect_magic(&mut self, magic: &[u8]) -> Result<(), FormatError> {
        if self.buf.len() < magic.len() || &self.buf[..magic.len()] != magic {
            return Err(FormatError::BadMagic { what: self.what });
        }
        self.buf = &self.buf[magic.len()..];
        Ok(())
    }

    /// Consumes a version byte that must equal `supported`.
    ///
    /// # Errors
    /// [`FormatError::UnsupportedVersion`] otherwise.
    pub fn expect_version(&mut self, supported: u8) -> Result<(), FormatError> {
        let found = self.u8("format version")?;
        if found != supported {
            return Err(FormatError::UnsupportedVersion {
                what: self.what,
                found,
                supported,
            });
        }
        Ok(())
    }

    /// A name: one length byte, then that many UTF-8 bytes, validated by `parse`.
    ///
    /// # Errors
    /// [`FormatError`] when truncated, not UTF-8, or refused by `parse`.
    pub fn name<T, E: std::fmt::Display>(
        &mut self,
        field: &'static str,
        parse: impl FnOnce(String) -> Result<T, E>,
    ) -> Result<T, FormatError> {
        let len = usize::from(self.u8(field)?);
        let raw = self.bytes(field, len)?;
        let s = std::str::from_utf8(raw).map_err(|_| self.invalid(field, "not UTF-8".into()))?;
        parse(s.to_owned()).map_err(|e| self.invalid(field, e.to_string()))
    }

    /// A [`FormatError::Invalid`] for `field`.
    #[must_use]
    pub fn invalid(&self, field: &'static str, reason: String) -> FormatError {
        FormatError::Invalid {
            what: self.what,
            field,
            reason,
        }
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// How many bytes are left.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Ends the parse.
    ///
    /// # Errors
    /// [`FormatError::TrailingBytes`] when bytes are left.
    pub fn finish(self) -> Result<(), FormatError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FormatError::TrailingBytes {
                what: self.what,
                count: self.buf.len(),
            })
        }
    }
}

/// Appends a name as one length byte and its bytes. Names are at most
/// [`crate::id::MAX_NAME_LEN`] bytes, so the length always fits.
pub fn put_name(out: &mut Vec<u8>, name: &str) {
    debug_assert!(name.len() <= crate::id::MAX_NAME_LEN);
    out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name.as_bytes());
}
