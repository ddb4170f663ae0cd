//! The embedded software backend, strongroom's default.
//!
//! Root keys live in one key file ([`KEY_FILE_NAME`]) in a directory, in the format documented
//! in [`keyfile`]. Every change is written atomically: a temporary file with mode 0600 is
//! written and fsynced, renamed over the key file, and the directory is fsynced, so after a crash
//! the file is either the old one or the new one. A file that other users can read or write, a
//! wrong format or a damaged file is refused with an error that says what to do. An exclusive
//! lock ([`LOCK_FILE_NAME`]) keeps a second process from opening the same key file.
//!
//! Keys are wrapped with context-bound AES-KWP (RFC 5649); see [`crate::crypto`].
//!
//! **What it does not protect against**: the key file holds root key material in the clear,
//! guarded only by file permissions. Anyone who can read it (root, a backup, a disk image, a
//! process running as the same user) holds every root key, and the root key material is in this
//! process's memory while the backend is open. It is for development, tests and deployments
//! whose threat model accepts that; use an HSM through PKCS#11 where it does not.

pub mod keyfile;

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use zeroize::Zeroizing;

use crate::backend::{Backend, BackendInfo, Capabilities, HealthCheck, RootKeyInfo, RootStatus};
use crate::blob::{WrapAlg, WrappedKey, WrappingKeyRef};
use crate::crypto;
use crate::error::{BackendError, KeyFileProblem};
use crate::id::RootKeyId;
use crate::secret::Key256;
use keyfile::{Entry, KeyFile, KeyFileParseError};

/// File name of the key file inside the backend's directory.
pub const KEY_FILE_NAME: &str = "soft-root-keys";
/// File name of the lock file inside the backend's directory.
pub const LOCK_FILE_NAME: &str = "soft-root-keys.lock";
const TMP_SUFFIX: &str = ".tmp";
const KIND: &str = "soft";

/// The embedded software backend. Cheap to clone; clones share one key file.
#[derive(Clone, Debug)]
pub struct SoftBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    path: PathBuf,
    state: RwLock<KeyFile>,
    /// Opened with [`SoftBackend::open_shared`]: root keys are used, never changed.
    shared: bool,
    // Held for the backend's lifetime; the OS releases it when the file closes.
    _lock: File,
}

impl SoftBackend {
    /// Creates a new, empty key file in `dir` (which must exist).
    ///
    /// # Errors
    /// [`KeyFileProblem::AlreadyExists`] if there is one, [`BackendError::Locked`] if another
    /// process holds the directory, or an I/O error.
    pub fn create(dir: impl AsRef<Path>) -> Result<Self, BackendError> {
        let dir = dir.as_ref().to_path_buf();
        let lock = take_lock(&dir, false)?;
        let path = dir.join(KEY_FILE_NAME);
        if path.exists() {
            return Err(BackendError::KeyFile {
                path,
                problem: KeyFileProblem::AlreadyExists,
            });
        }
        let file = KeyFile::new()?;
        write_atomically(&dir, &path, &file.to_bytes())?;
        Ok(Self::from_parts(dir, path, file, lock, false))
    }

    /// Opens the key file in `dir`.
    ///
    /// # Errors
    /// [`BackendError::KeyFile`] when it is missing, accessible to other users, damaged or in an
    /// unknown format; [`BackendError::Locked`]; or an I/O error.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, BackendError> {
        let dir = dir.as_ref().to_path_buf();
        let lock = take_lock(&dir, false)?;
        let path = dir.join(KEY_FILE_NAME);
        let file = read_key_file(&path)?;
        // A temporary file left by a crash mid-write is stale: the rename never happened.
        let _ = fs::remove_file(tmp_path(&path));
        Ok(Self::from_parts(dir, path, file, lock, false))
    }

    /// Opens the key file in `dir` shared with other processes that open it shared (the
    /// replicas of a fleet on one machine, in development and tests): each uses the root keys
    /// as they were when it opened; none can change them ([`BackendError::SharedKeyFile`]),
    /// and a process that opens it alone ([`SoftBackend::open`]) waits for all of them to
    /// close it, and they for it.
    ///
    /// # Errors
    /// As [`SoftBackend::open`].
    pub fn open_shared(dir: impl AsRef<Path>) -> Result<Self, BackendError> {
        let dir = dir.as_ref().to_path_buf();
        let lock = take_lock(&dir, true)?;
        let path = dir.join(KEY_FILE_NAME);
        let file = read_key_file(&path)?;
        Ok(Self::from_parts(dir, path, file, lock, true))
    }

    /// Opens the key file in `dir`, creating it if there is none.
    ///
    /// # Errors
    /// As [`SoftBackend::open`] and [`SoftBackend::create`].
    pub fn open_or_create(dir: impl AsRef<Path>) -> Result<Self, BackendError> {
        if dir.as_ref().join(KEY_FILE_NAME).exists() {
            Self::open(dir)
        } else {
            Self::create(dir)
        }
    }

    fn from_parts(dir: PathBuf, path: PathBuf, file: KeyFile, lock: File, shared: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir,
                path,
                state: RwLock::new(file),
                shared,
                _lock: lock,
            }),
        }
    }

    /// Path of the key file.
    #[must_use]
    pub fn key_file_path(&self) -> &Path {
        &self.inner.path
    }

    fn read(&self) -> RwLockReadGuard<'_, KeyFile> {
        // A panic while holding the lock cannot leave the key file half-changed in memory:
        // every writer applies its change only after the new file is durable.
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The key file for changing: refused when it is open shared.
    fn write(&self) -> Result<RwLockWriteGuard<'_, KeyFile>, BackendError> {
        if self.inner.shared {
            return Err(BackendError::SharedKeyFile {
                path: self.inner.path.clone(),
            });
        }
        Ok(self.inner.state.write().unwrap_or_else(|p| p.into_inner()))
    }

    /// Applies `change` to a copy of the entry's status and material, persists the whole file,
    /// and only then updates memory: a failed write changes nothing.
    fn change_entry(
        &self,
        id: &RootKeyId,
        change: impl FnOnce(&Entry) -> Result<Entry, BackendError>,
    ) -> Result<(), BackendError> {
        let mut state = self.write()?;
        let entry = state
            .entries
            .get(id)
            .ok_or_else(|| BackendError::RootNotFound { root: id.clone() })?;
        let new = change(entry)?;
        // The file's bytes with the change (put in place just to serialize, then taken out
        // again); memory takes the change only once those bytes are durable.
        let Some(old) = state.entries.insert(id.clone(), new) else {
            return Err(BackendError::RootNotFound { root: id.clone() });
        };
        let bytes = state.to_bytes();
        let Some(new) = state.entries.insert(id.clone(), old) else {
            return Err(BackendError::RootNotFound { root: id.clone() });
        };
        write_atomically(&self.inner.dir, &self.inner.path, &bytes)?;
        state.entries.insert(id.clone(), new);
        Ok(())
    }

    fn insert_new(&self, id: &RootKeyId, material: Key256) -> Result<RootKeyInfo, BackendError> {
        let mut state = self.write()?;
        if state.entries.contains_key(id) {
            return Err(BackendError::RootExists { root: id.clone() });
        }
        // As in `change_entry`: serialized with the new entry, which memory keeps only once
        // the file is durable.
        state.entries.insert(
            id.clone(),
            Entry {
                status: RootStatus::Enabled,
                material: Some(material),
            },
        );
        let bytes = state.to_bytes();
        let Some(entry) = state.entries.remove(id) else {
            return Err(BackendError::RootNotFound { root: id.clone() });
        };
        write_atomically(&self.inner.dir, &self.inner.path, &bytes)?;
        state.entries.insert(id.clone(), entry);
        Ok(self.info_of(id, RootStatus::Enabled))
    }

    fn info_of(&self, id: &RootKeyId, status: RootStatus) -> RootKeyInfo {
        RootKeyInfo {
            id: id.clone(),
            status,
            locator: format!("{} entry {id}", self.inner.path.display()),
        }
    }

    /// Runs `f` with the material of an enabled root version, or returns the state error.
    fn with_root<T>(
        &self,
        id: &RootKeyId,
        f: impl FnOnce(&Key256) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let state = self.read();
        let entry = state
            .entries
            .get(id)
            .ok_or_else(|| BackendError::RootNotFound { root: id.clone() })?;
        match (&entry.status, &entry.material) {
            (RootStatus::Enabled, Some(k)) => f(k),
            (RootStatus::Disabled, _) => Err(BackendError::RootDisabled { root: id.clone() }),
            _ => Err(BackendError::RootDestroyed { root: id.clone() }),
        }
    }
}

impl Backend for SoftBackend {
    fn describe(&self) -> BackendInfo {
        BackendInfo {
            kind: KIND,
            instance_id: hex_id(&self.read().instance_id),
            description: format!("key file {}", self.inner.path.display()),
            capabilities: Capabilities {
                generate: true,
                import_plain: true,
                import_wrapped: false,
                adopt: false,
                disable: true,
                destroy: true,
                wrap_algs: vec![WrapAlg::AesKwp],
                hardware: false,
            },
        }
    }

    fn health(&self) -> Result<Vec<HealthCheck>, BackendError> {
        let mut checks = Vec::new();
        let on_disk = read_key_file(&self.inner.path);
        checks.push(HealthCheck {
            name: "key file readable".into(),
            ok: on_disk.is_ok(),
            detail: match &on_disk {
                Ok(_) => format!("{} (mode 0600, checksum OK)", self.inner.path.display()),
                Err(e) => e.to_string(),
            },
        });
        if let Ok(f) = on_disk {
            let same = f.instance_id == self.read().instance_id;
            checks.push(HealthCheck {
                name: "key file unchanged".into(),
                ok: same,
                detail: if same {
                    "the file on disk is the one this process opened".into()
                } else {
                    "the key file on disk was replaced by another one while open; restore the original".into()
                },
            });
        }
        Ok(checks)
    }

    fn list_roots(&self) -> Result<Vec<RootKeyInfo>, BackendError> {
        Ok(self
            .read()
            .entries
            .iter()
            .map(|(id, e)| self.info_of(id, e.status))
            .collect())
    }

    fn wrap(
        &self,
        root: &RootKeyId,
        key: &Key256,
        context: &[u8],
    ) -> Result<WrappedKey, BackendError> {
        let payload = self.with_root(root, |rk| Ok(crypto::kwp_wrap_bound(rk, key, context)))?;
        Ok(WrappedKey::new(
            WrapAlg::AesKwp,
            WrappingKeyRef::Root(root.clone()),
            payload.to_vec(),
        )?)
    }

    fn unwrap(&self, blob: &WrappedKey, context: &[u8]) -> Result<Key256, BackendError> {
        let root = blob.root().ok_or(BackendError::NotRootWrapped)?;
        if blob.alg() != WrapAlg::AesKwp {
            return Err(BackendError::UnsupportedAlgorithm {
                backend: KIND,
                alg: blob.alg(),
            });
        }
        self.with_root(root, |rk| {
            crypto::kwp_unwrap_bound(rk, blob.payload(), context)
                .map_err(|_| BackendError::Integrity)
        })
    }

    fn generate_root(&self, id: &RootKeyId) -> Result<RootKeyInfo, BackendError> {
        self.insert_new(id, Key256::generate()?)
    }

    fn import_root(&self, id: &RootKeyId, material: &Key256) -> Result<RootKeyInfo, BackendError> {
        self.insert_new(id, material.duplicate())
    }

    fn disable_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.change_entry(id, |e| match (e.status, &e.material) {
            (RootStatus::Enabled, Some(k)) => Ok(Entry {
                status: RootStatus::Disabled,
                material: Some(k.duplicate()),
            }),
            (RootStatus::Disabled, _) => Err(BackendError::RootDisabled { root: id.clone() }),
            _ => Err(BackendError::RootDestroyed { root: id.clone() }),
        })
    }

    fn enable_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.change_entry(id, |e| match (e.status, &e.material) {
            (RootStatus::Disabled | RootStatus::Enabled, Some(k)) => Ok(Entry {
                status: RootStatus::Enabled,
                material: Some(k.duplicate()),
            }),
            _ => Err(BackendError::RootDestroyed { root: id.clone() }),
        })
    }

    fn destroy_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        // The old entry (and its material) is dropped, and so zeroized, once the file without it
        // is durable.
        self.change_entry(id, |_| {
            Ok(Entry {
                status: RootStatus::Destroyed,
                material: None,
            })
        })
    }
}

fn hex_id(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(TMP_SUFFIX);
    PathBuf::from(p)
}

/// The directory's lock: exclusive, or `shared` with other shared openers.
fn take_lock(dir: &Path, shared: bool) -> Result<File, BackendError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| BackendError::io("open lock file", &path, e))?;
    // Waits a moment before calling the directory taken, as the store's own lock does: a
    // process that spawns children shares, between a child's fork and its exec, every open file
    // description it holds (flock locks belong to those), so a backend closed a moment ago can
    // still look held for that moment. (CI saw it: a crash test's child refused while another
    // test thread in the same process was spawning its own child.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let taken = if shared {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match taken {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(TryLockError::WouldBlock) => return Err(BackendError::Locked { path }),
            Err(TryLockError::Error(e)) => return Err(BackendError::io("lock", &path, e)),
        }
    }
}

fn read_key_file(path: &Path) -> Result<KeyFile, BackendError> {
    let key_file_err = |problem| BackendError::KeyFile {
        path: path.to_path_buf(),
        problem,
    };
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(key_file_err(KeyFileProblem::Missing));
        }
        Err(e) => return Err(BackendError::io("open", path, e)),
    };
    let meta = f
        .metadata()
        .map_err(|e| BackendError::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(key_file_err(KeyFileProblem::NotAFile));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(key_file_err(KeyFileProblem::Permissions { mode }));
    }
    // Size is bounded before reading: the biggest sane key file is far below 64 MiB.
    if meta.len() > 64 << 20 {
        return Err(key_file_err(KeyFileProblem::Format(
            crate::format::FormatError::BadLength {
                what: "soft-backend key file",
                field: "file",
                expected: 64 << 20,
                found: usize::try_from(meta.len()).unwrap_or(usize::MAX),
            },
        )));
    }
    let mut bytes = Zeroizing::new(Vec::new());
    f.read_to_end(&mut bytes)
        .map_err(|e| BackendError::io("read", path, e))?;
    KeyFile::parse(&bytes).map_err(|e| {
        key_file_err(match e {
            KeyFileParseError::Checksum => KeyFileProblem::Checksum,
            KeyFileParseError::Format(f) => KeyFileProblem::Format(f),
        })
    })
}

/// Writes `bytes` to `path` atomically: temp file (0600), fsync, rename, fsync the directory.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), BackendError> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| BackendError::io("create", &tmp, e))?;
        // An old temp file could have had other permission bits; `mode` applies only on create.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| BackendError::io("chmod", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| BackendError::io("write", &tmp, e))?;
        f.sync_all()
            .map_err(|e| BackendError::io("fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| BackendError::io("rename into place", path, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| BackendError::io("fsync directory", dir, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{RootKeyName, RootVersion};

    fn rid(n: &str, v: u32) -> RootKeyId {
        RootKeyId::new(RootKeyName::new(n).unwrap(), RootVersion::new(v).unwrap())
    }

    #[test]
    fn persists_across_reopen_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key256::generate().unwrap();
        let blob = {
            let b = SoftBackend::create(dir.path()).unwrap();
            b.generate_root(&rid("acme", 1)).unwrap();
            b.generate_root(&rid("acme", 2)).unwrap();
            b.disable_root(&rid("acme", 2)).unwrap();
            b.wrap(&rid("acme", 1), &key, b"ctx").unwrap()
        };
        let path = dir.path().join(KEY_FILE_NAME);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(!tmp_path(&path).exists());
        let b = SoftBackend::open(dir.path()).unwrap();
        assert!(b.unwrap(&blob, b"ctx").unwrap().ct_eq(&key));
        let roots = b.list_roots().unwrap();
        assert_eq!(roots.len(), 2);
        assert_eq!(roots[1].status, RootStatus::Disabled);
    }

    #[test]
    fn refuses_wide_permissions_wrong_format_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        drop(SoftBackend::create(dir.path()).unwrap());
        let path = dir.path().join(KEY_FILE_NAME);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = SoftBackend::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                e,
                BackendError::KeyFile {
                    problem: KeyFileProblem::Permissions { mode: 0o644 },
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

        let good = fs::read(&path).unwrap();
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        fs::write(&path, &bad).unwrap();
        let e = SoftBackend::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                e,
                BackendError::KeyFile {
                    problem: KeyFileProblem::Checksum,
                    ..
                }
            ),
            "{e}"
        );

        fs::write(&path, b"{\"keys\": []}").unwrap();
        let e = SoftBackend::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                e,
                BackendError::KeyFile {
                    problem: KeyFileProblem::Format(_),
                    ..
                }
            ),
            "{e}"
        );

        fs::remove_file(&path).unwrap();
        let e = SoftBackend::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                e,
                BackendError::KeyFile {
                    problem: KeyFileProblem::Missing,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_second_opener_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let first = SoftBackend::create(dir.path()).unwrap();
        assert!(matches!(
            SoftBackend::open(dir.path()),
            Err(BackendError::Locked { .. })
        ));
        drop(first);
        SoftBackend::open(dir.path()).unwrap();
    }

    #[test]
    fn shared_openers_use_the_keys_and_never_change_them() {
        let dir = tempfile::tempdir().unwrap();
        let alone = SoftBackend::create(dir.path()).unwrap();
        let root = rid("acme", 1);
        alone.generate_root(&root).unwrap();
        let key = Key256::generate().unwrap();
        let wrapped = alone.wrap(&root, &key, b"ctx").unwrap();
        // Shared openers wait for the one that has it alone...
        assert!(matches!(
            SoftBackend::open_shared(dir.path()),
            Err(BackendError::Locked { .. })
        ));
        drop(alone);
        // ...then coexist, and unwrap what it wrapped.
        let a = SoftBackend::open_shared(dir.path()).unwrap();
        let b = SoftBackend::open_shared(dir.path()).unwrap();
        for x in [&a, &b] {
            assert!(x.unwrap(&wrapped, b"ctx").unwrap().ct_eq(&key));
        }
        // Changes are refused, and the file stays as it was.
        let before = fs::read(dir.path().join(KEY_FILE_NAME)).unwrap();
        for e in [
            a.generate_root(&rid("acme", 2)).map(|_| ()),
            a.disable_root(&root),
            b.destroy_root(&root),
        ] {
            assert!(
                matches!(e, Err(BackendError::SharedKeyFile { .. })),
                "{e:?}"
            );
        }
        assert_eq!(fs::read(dir.path().join(KEY_FILE_NAME)).unwrap(), before);
        assert_eq!(a.list_roots().unwrap()[0].status, RootStatus::Enabled);
        // One that wants it alone waits for every shared opener.
        assert!(matches!(
            SoftBackend::open(dir.path()),
            Err(BackendError::Locked { .. })
        ));
        drop(a);
        drop(b);
        SoftBackend::open(dir.path()).unwrap();
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = SoftBackend::create(dir.path()).unwrap();
        b.generate_root(&rid("acme", 1)).unwrap();
        // Make the temp file impossible to create: a directory in its place.
        let tmp = tmp_path(&dir.path().join(KEY_FILE_NAME));
        fs::create_dir(&tmp).unwrap();
        assert!(matches!(
            b.generate_root(&rid("acme", 2)),
            Err(BackendError::Io { .. })
        ));
        assert!(matches!(
            b.disable_root(&rid("acme", 1)),
            Err(BackendError::Io { .. })
        ));
        assert_eq!(b.list_roots().unwrap().len(), 1);
        assert_eq!(b.list_roots().unwrap()[0].status, RootStatus::Enabled);
        fs::remove_dir(&tmp).unwrap();
        drop(b);
        let b = SoftBackend::open(dir.path()).unwrap();
        assert_eq!(b.list_roots().unwrap().len(), 1);
    }
}
