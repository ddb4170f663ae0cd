//! Identities: root key names and versions, keyring names, KEK and DEK versions.
//!
//! Names are parsed once, at the edge, into types that can only hold valid names: 1 to 64
//! ASCII characters from `A-Z a-z 0-9 . _ -`, starting with a letter or digit. That keeps them
//! safe to put in file names, PKCS#11 labels, log lines and error messages, and makes their byte
//! encoding (one length byte, then the bytes) unambiguous.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

/// Longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// A name was empty, too long, or used a character outside `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {what} name {shown:?}: {problem}; use 1 to {MAX_NAME_LEN} characters from A-Z a-z 0-9 . _ - starting with a letter or digit"
)]
pub struct NameError {
    what: &'static str,
    shown: String,
    problem: &'static str,
}

fn check_name(what: &'static str, s: &str) -> Result<(), NameError> {
    let err = |problem| NameError {
        what,
        // Show at most the first 80 characters of what was given, escaped by `{:?}`.
        shown: s.chars().take(80).collect(),
        problem,
    };
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(err("it is too long"));
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(err("it must start with a letter or digit"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(err("it contains a character that is not allowed"));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $ty(String);

        impl $ty {
            /// Parses and validates a name.
            ///
            /// # Errors
            /// [`NameError`] when the name breaks the naming rules of this module.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                check_name($what, &s)?;
                Ok(Self(s))
            }

            /// The name as a string slice.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.0)
            }
        }
    };
}

name_type!(
    /// The name of a root key (all its versions share it), e.g. `acme`.
    RootKeyName,
    "root key"
);
name_type!(
    /// The name of a keyring, the unit of tenancy and revocation, e.g. `payroll`.
    KeyringName,
    "keyring"
);

/// A version number was zero; versions start at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("key versions start at 1; 0 is not a version")]
pub struct VersionError;

macro_rules! version_type {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $ty(NonZeroU32);

        impl $ty {
            /// Version 1, the first version of every key.
            pub const FIRST: Self = Self(NonZeroU32::MIN);

            /// A version from its number.
            ///
            /// # Errors
            /// [`VersionError`] for 0.
            pub fn new(n: u32) -> Result<Self, VersionError> {
                NonZeroU32::new(n).map(Self).ok_or(VersionError)
            }

            /// The version number.
            #[must_use]
            pub fn get(self) -> u32 {
                self.0.get()
            }

            /// The version after this one, or `None` at `u32::MAX`.
            #[must_use]
            pub fn next(self) -> Option<Self> {
                self.0.checked_add(1).map(Self)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&format!("v{}", self.0))
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($ty), self.0)
            }
        }
    };
}

version_type!(
    /// A version of a root key. Each rotation makes a new version, a new backend object.
    RootVersion
);
version_type!(
    /// A version of a keyring's key-encryption key.
    KekVersion
);
version_type!(
    /// A version of a keyring's data-encryption key.
    DekVersion
);

/// One version of one root key: what a wrapped blob names as its wrapping key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct RootKeyId {
    /// The root key's name.
    pub name: RootKeyName,
    /// The version.
    pub version: RootVersion,
}

impl RootKeyId {
    /// A root key id from its parts.
    #[must_use]
    pub fn new(name: RootKeyName, version: RootVersion) -> Self {
        Self { name, version }
    }
}

impl fmt::Display for RootKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{}/v{}", self.name.as_str(), self.version.get()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        for ok in ["a", "acme", "Acme-2.prod_eu", "0", &"x".repeat(64)] {
            RootKeyName::new(ok).unwrap();
            KeyringName::new(ok).unwrap();
        }
        for bad in ["", "-a", ".a", "a b", "a/b", "é", "a\0", &"x".repeat(65)] {
            let err = KeyringName::new(bad).unwrap_err();
            assert!(err.to_string().contains("keyring name"), "{err}");
        }
    }

    #[test]
    fn versions_start_at_one() {
        assert_eq!(RootVersion::new(0), Err(VersionError));
        assert_eq!(KekVersion::FIRST.get(), 1);
        assert_eq!(DekVersion::new(7).unwrap().next().unwrap().get(), 8);
        assert_eq!(DekVersion::new(u32::MAX).unwrap().next(), None);
        let id = RootKeyId::new(
            RootKeyName::new("acme").unwrap(),
            RootVersion::new(3).unwrap(),
        );
        assert_eq!(id.to_string(), "acme/v3");
        // Width and alignment apply, as for strings (tables line up).
        assert_eq!(
            format!("[{:<6}][{:>4}][{:<9}]", id.name, id.version, id),
            "[acme  ][  v3][acme/v3  ]"
        );
    }
}
