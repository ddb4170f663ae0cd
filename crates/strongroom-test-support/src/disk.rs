//! Promises about the disk, checked on the disk: find what should be gone in the raw files.
//!
//! [`Needles`] indexes every 16-byte window of the byte strings that must not survive (sealed
//! records, wrapped-key payloads); [`Needles::find_in_dir`] reads every file under a directory
//! and reports each needle any window of which it finds, with the file and the offset. A
//! fragment counts: a surviving 16-byte piece of a random ciphertext is as telling as the whole.
//! Use needles that are random (ciphertext, nonces, wrapped payloads), not format headers that
//! live entries share.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The window length: long enough that a random match is impossible, short enough to catch a
/// fragment.
pub const WINDOW: usize = 16;

/// Byte strings that must not be found, by name.
#[derive(Default)]
pub struct Needles {
    names: Vec<String>,
    windows: HashMap<[u8; WINDOW], usize>,
}

/// One needle found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The needle's name.
    pub needle: String,
    /// The file it was found in.
    pub file: PathBuf,
    /// Where in the file.
    pub offset: u64,
}

impl Needles {
    /// An empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` (at least [`WINDOW`] long) under `name`.
    ///
    /// # Panics
    /// If `bytes` is shorter than a window.
    pub fn add(&mut self, name: impl Into<String>, bytes: &[u8]) {
        assert!(
            bytes.len() >= WINDOW,
            "a needle needs {WINDOW} bytes at least"
        );
        let i = self.names.len();
        self.names.push(name.into());
        for w in bytes.windows(WINDOW) {
            self.windows
                .insert(<[u8; WINDOW]>::try_from(w).expect("a window"), i);
        }
    }

    /// How many needles.
    #[must_use]
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Every needle found in any file under `dir` (recursively), the first place each.
    ///
    /// # Panics
    /// On an I/O error reading the directory.
    #[must_use]
    pub fn find_in_dir(&self, dir: &Path) -> Vec<Found> {
        let mut found: Vec<Option<Found>> = vec![None; self.names.len()];
        self.walk(dir, &mut found);
        found.into_iter().flatten().collect()
    }

    fn walk(&self, dir: &Path, found: &mut [Option<Found>]) {
        for e in std::fs::read_dir(dir).expect("read dir") {
            let e = e.expect("dir entry");
            let kind = e.file_type().expect("file type");
            if kind.is_dir() {
                self.walk(&e.path(), found);
            } else if kind.is_file() {
                let bytes = std::fs::read(e.path()).expect("read file");
                for (at, w) in bytes.windows(WINDOW).enumerate() {
                    let w = <[u8; WINDOW]>::try_from(w).expect("a window");
                    if let Some(&i) = self.windows.get(&w)
                        && found[i].is_none()
                    {
                        found[i] = Some(Found {
                            needle: self.names[i].clone(),
                            file: e.path(),
                            offset: at as u64,
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_whole_needles_and_fragments_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let a: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        let b: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(91) ^ 0xc3).collect();
        let c: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(13) ^ 0x11).collect();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("whole"), [&b"xx"[..], &a, b"yy"].concat()).unwrap();
        // Only 20 bytes of b, deep in a subdirectory.
        std::fs::write(
            d.path().join("sub/frag"),
            [&[0u8; 100][..], &b[30..50]].concat(),
        )
        .unwrap();
        let mut n = Needles::new();
        n.add("a", &a);
        n.add("b", &b);
        n.add("c", &c);
        let mut found = n.find_in_dir(d.path());
        found.sort_by(|x, y| x.needle.cmp(&y.needle));
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!((found[0].needle.as_str(), found[0].offset), ("a", 2));
        assert_eq!((found[1].needle.as_str(), found[1].offset), ("b", 100));
        assert!(found[1].file.ends_with("sub/frag"));
    }
}
