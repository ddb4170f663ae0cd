//! Online backup and restore.
//!
//! A backup is a consistent copy of every tree. Reads and writes go on while it runs: it holds
//! the lifecycle lock shared, so key changes (and a DEK rollover a put would need) wait for it,
//! while records keep changing. That is consistent because every record is sealed on its own
//! under a DEK that cannot change meanwhile: the copy holds, for each record, its value from
//! some moment of the run. The job tree (DEK use counters, job cursors) is copied before the
//! records, so a restored re-encryption redoes a little rather than skips. With data-access
//! auditing on, every write also appends to the audit log, and the log and the records must
//! agree entry for entry: the backup then holds the lock exclusively, as before (reads and
//! writes wait). Everything in it stays sealed:
//! records are ciphertext, KEKs and DEKs are wrapped, the audit log is MACed. What it does not
//! contain is any root key: restoring needs the same backend (the same HSM token, or a copy of
//! the soft backend's key file, which must be backed up separately and kept secret).
//!
//! ```text
//! "SRBK" | ver=3 | meta len u32 | store meta | tree count u8 |
//!   per tree: name (u8 len) | (key len u32 | key | value len u32 | value)* | 0xFFFFFFFF |
//!   anchor len u8 | anchor (the audit anchor for the head copied, MACed) |
//! SHA-256 of every byte before it
//! ```
//! Version 2 gave each tree's entry count before its entries (a tree that changed during the
//! copy could not be written); version 3 ends each tree with a marker instead. Version 1 had
//! no anchor: a store restored from one opens once with `strongroom audit accept-rollback`
//! ([`Store::open_accepting_rollback`]). All three are read.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::audit::{self, AuditOp};
use crate::commit::Effects;
use crate::engine::sled::current_db_dir;
use crate::engine::{Engine, SledEngine};
use crate::error::StoreError;
use crate::format::StoreMeta;
use crate::storage::{ALL_TREES, Storage, TreeId, WriteBatch};
use crate::store::Store;

const MAGIC: &[u8; 4] = b"SRBK";
const VERSION: u8 = 3;
/// Ends a tree's entries (version 3): no key is this long.
const END_OF_TREE: u32 = u32::MAX;
/// The order trees are copied in: the job tree before the records (see the module docs).
const BACKUP_ORDER: [TreeId; 8] = [
    TreeId::Meta,
    TreeId::Roots,
    TreeId::Keyrings,
    TreeId::Keks,
    TreeId::Deks,
    TreeId::Audit,
    TreeId::Jobs,
    TreeId::Records,
];

/// What a backup holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupReport {
    /// Entries copied, over all trees.
    pub entries: u64,
    /// Bytes written.
    pub bytes: u64,
}

struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.hash.update(b);
        self.bytes += b.len() as u64;
        self.inner.write_all(b)
    }
}

fn len32(n: usize) -> std::io::Result<[u8; 4]> {
    u32::try_from(n).map(u32::to_be_bytes).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "entry larger than 4 GiB")
    })
}

impl Store {
    /// Writes a consistent backup of the store to `path` (atomically: a temporary file renamed
    /// into place). Reads and writes go on while it runs (key changes wait); with data-access
    /// auditing on, they wait too (see the module docs). The backup's audit entry is written
    /// once it is complete.
    ///
    /// # Errors
    /// A storage or I/O error (a partial backup is removed).
    pub fn backup(&self, path: impl AsRef<Path>) -> Result<BackupReport, StoreError> {
        let path = path.as_ref().to_path_buf();
        self.audited(
            AuditOp::BackupTaken,
            format!("backup {}", path.display()),
            || {
                let report = if self.inner.options.audit_data_access {
                    let w = self.write_lifecycle();
                    let report = self.write_backup(&path)?;
                    self.commit_backup(&w, &path, &report)?;
                    report
                } else {
                    let shared = self.read_lifecycle();
                    let report = self.write_backup(&path)?;
                    drop(shared);
                    let w = self.write_lifecycle();
                    self.commit_backup(&w, &path, &report)?;
                    report
                };
                Ok(report)
            },
        )
    }

    fn commit_backup(
        &self,
        w: &crate::commit::KeyChange<'_>,
        path: &Path,
        report: &BackupReport,
    ) -> Result<(), StoreError> {
        self.commit(
            w,
            AuditOp::BackupTaken,
            format!("backup {}", path.display()),
            format!("{} entries, {} bytes", report.entries, report.bytes),
            |_| Ok(()),
            Effects::none(),
        )
        .map(|_| ())
    }

    fn write_backup(&self, path: &Path) -> Result<BackupReport, StoreError> {
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        let io = |op: &'static str| {
            let p = tmp.clone();
            move |source| StoreError::Io {
                op,
                path: p,
                source,
            }
        };
        let result = (|| {
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&tmp)
                .map_err(io("create backup file"))?;
            let mut w = HashingWriter {
                inner: BufWriter::new(file),
                hash: Sha256::new(),
                bytes: 0,
            };
            let meta = self.inner.meta.to_bytes();
            w.put(MAGIC).map_err(io("write"))?;
            w.put(&[VERSION]).map_err(io("write"))?;
            w.put(&len32(meta.len()).map_err(io("write"))?)
                .map_err(io("write"))?;
            w.put(&meta).map_err(io("write"))?;
            w.put(&[u8::try_from(ALL_TREES.len()).unwrap_or(0)])
                .map_err(io("write"))?;
            let mut entries = 0u64;
            // The audit head as copied (the metadata goes first): the log is copied up to it
            // and the anchor vouches for it, even if an entry is appended meanwhile (a key
            // operation refused before it took the lock records its refusal).
            let mut head: Option<audit::AuditHead> = None;
            for t in BACKUP_ORDER {
                let name = t.name().as_bytes();
                w.put(&[u8::try_from(name.len()).unwrap_or(0)])
                    .map_err(io("write"))?;
                w.put(name).map_err(io("write"))?;
                for item in self.inner.storage.iter(t) {
                    let (k, v) = item?;
                    if t == TreeId::Meta && k == audit::HEAD_KEY {
                        head = audit::head_of(&v);
                    }
                    // Replicas' reports of themselves and their leases on jobs describe the
                    // running fleet, not the store: a restored store starts without them (its
                    // unfinished jobs themselves are kept, and resume).
                    if t == TreeId::Meta && k.starts_with(crate::fleet::SEEN_PREFIX)
                        || t == TreeId::Jobs && k.starts_with(crate::lease::LEASE_PREFIX)
                    {
                        continue;
                    }
                    if t == TreeId::Audit {
                        let seq = <[u8; 8]>::try_from(k.as_slice()).map(u64::from_be_bytes);
                        if seq.is_ok_and(|seq| head.is_none_or(|h| seq > h.seq)) {
                            break;
                        }
                    }
                    w.put(&len32(k.len()).map_err(io("write"))?)
                        .map_err(io("write"))?;
                    w.put(&k).map_err(io("write"))?;
                    w.put(&len32(v.len()).map_err(io("write"))?)
                        .map_err(io("write"))?;
                    w.put(&v).map_err(io("write"))?;
                    entries += 1;
                }
                w.put(&END_OF_TREE.to_be_bytes()).map_err(io("write"))?;
            }
            // The anchor of what was copied, so that a restore opens without taking it for a
            // rolled-back store (the key to MAC it is not available at restore time).
            let key = self.audit_key()?;
            let anchor = head
                .map(|h| {
                    audit::anchor_bytes(
                        &key,
                        h,
                        self.inner
                            .catalog_sealed
                            .load(std::sync::atomic::Ordering::Acquire),
                    )
                })
                .unwrap_or_default();
            w.put(&[u8::try_from(anchor.len()).unwrap_or(0)])
                .map_err(io("write"))?;
            w.put(&anchor).map_err(io("write"))?;
            let sum = w.hash.clone().finalize();
            w.inner.write_all(&sum).map_err(io("write"))?;
            let bytes = w.bytes + 32;
            let file = w.inner.into_inner().map_err(|e| StoreError::Io {
                op: "write",
                path: tmp.clone(),
                source: e.into_error(),
            })?;
            file.sync_all().map_err(io("fsync"))?;
            fs::rename(&tmp, path).map_err(io("rename into place"))?;
            Ok(BackupReport { entries, bytes })
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Restores a backup into `dir`, which must not hold a store. Open the result with
    /// [`Store::open`] and the same backend. Returns the restored store's identity.
    ///
    /// # Errors
    /// [`StoreError::BadBackup`] for a damaged or foreign file (nothing is left in `dir`),
    /// [`StoreError::AlreadyExists`], or an I/O or storage error.
    pub fn restore(
        backup: impl AsRef<Path>,
        dir: impl AsRef<Path>,
    ) -> Result<StoreMeta, StoreError> {
        Self::restore_inner(backup.as_ref(), dir.as_ref(), None)
    }

    /// [`Store::restore`] into another engine (a backup made on either engine restores into
    /// either), which must be empty; `dir` is the store's local directory (the audit anchor is
    /// written there). Open the result with [`Store::open_on`].
    ///
    /// # Errors
    /// As [`Store::restore`]; a failed restore leaves the engine empty again.
    pub fn restore_into(
        backup: impl AsRef<Path>,
        dir: impl AsRef<Path>,
        engine: Box<dyn Engine>,
    ) -> Result<StoreMeta, StoreError> {
        Self::restore_inner(backup.as_ref(), dir.as_ref(), Some(engine))
    }

    fn restore_inner(
        backup: &Path,
        dir: &Path,
        engine: Option<Box<dyn Engine>>,
    ) -> Result<StoreMeta, StoreError> {
        let db_dir = current_db_dir(dir)?;
        match &engine {
            None if db_dir.exists() => {
                return Err(StoreError::AlreadyExists {
                    path: dir.to_path_buf(),
                });
            }
            Some(e) => {
                for t in ALL_TREES {
                    if e.count(t).map_err(|source| StoreError::Storage {
                        while_doing: "looking for a store",
                        source,
                    })? > 0
                    {
                        return Err(StoreError::AlreadyExists {
                            path: PathBuf::from(e.info().location),
                        });
                    }
                }
            }
            None => {}
        }
        if dir.join(crate::store::ANCHOR_FILE).exists() {
            return Err(StoreError::AlreadyExists {
                path: dir.to_path_buf(),
            });
        }
        let bad = |why: &str| StoreError::BadBackup {
            path: backup.to_path_buf(),
            why: why.to_owned(),
        };
        // The checksum is verified before anything is written.
        verify_checksum(backup)?;
        let file = File::open(backup).map_err(|source| StoreError::Io {
            op: "open backup",
            path: backup.to_path_buf(),
            source,
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut r = BufReader::new(file).take(size.saturating_sub(32));
        let mut read = |n: usize| -> Result<Vec<u8>, StoreError> {
            // A length field larger than what is left is damage: refused before anything is
            // allocated for it (the file says how much to allocate, up to 4 GiB).
            if u64::try_from(n).map_or(true, |n| n > r.limit()) {
                return Err(bad("it ends early"));
            }
            let mut b = vec![0u8; n];
            r.read_exact(&mut b).map_err(|_| bad("it ends early"))?;
            Ok(b)
        };
        if read(4)? != MAGIC {
            return Err(bad("not a strongroom backup"));
        }
        let v = read(1)?[0];
        if !(1..=VERSION).contains(&v) {
            return Err(bad(&format!(
                "backup format version {v} is not supported (this build reads {VERSION})"
            )));
        }
        let meta_len = u32::from_be_bytes(read(4)?.try_into().unwrap_or([0; 4])) as usize;
        let meta = StoreMeta::parse(&read(meta_len)?).map_err(|e| bad(&e.to_string()))?;
        let trees = read(1)?[0];
        fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            op: "create directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let sled = engine.is_none();
        let storage = Storage::new(match engine {
            Some(e) => e,
            None => Box::new(SledEngine::create(dir)?),
        });
        let outcome = (|| {
            let mut seen = Vec::new();
            let mut meta_batch = None;
            for _ in 0..trees {
                let n = usize::from(read(1)?[0]);
                let name =
                    String::from_utf8(read(n)?).map_err(|_| bad("a tree name is not UTF-8"))?;
                let t = ALL_TREES
                    .into_iter()
                    .find(|t| t.name() == name)
                    .ok_or_else(|| bad(&format!("unknown tree {name:?}")))?;
                if seen.contains(&t) {
                    return Err(bad(&format!("tree {name:?} appears twice")));
                }
                seen.push(t);
                // Version 3 ends each tree with a marker; versions 1 and 2 count its entries.
                let count = if v >= 3 {
                    u64::MAX
                } else {
                    u64::from_be_bytes(read(8)?.try_into().unwrap_or([0; 8]))
                };
                let mut batch = WriteBatch::default();
                for i in 0..count {
                    let kl = u32::from_be_bytes(read(4)?.try_into().unwrap_or([0; 4]));
                    if v >= 3 && kl == END_OF_TREE {
                        break;
                    }
                    let k = read(kl as usize)?;
                    let vl = u32::from_be_bytes(read(4)?.try_into().unwrap_or([0; 4])) as usize;
                    let v = read(vl)?;
                    batch.insert(k, v);
                    // The metadata (a few entries) goes in last, below.
                    if i % 4096 == 4095 && t != TreeId::Meta {
                        storage.apply_batch(t, std::mem::take(&mut batch), "restoring")?;
                    }
                }
                if t == TreeId::Meta {
                    meta_batch = Some(batch);
                } else {
                    storage.apply_batch(t, batch, "restoring")?;
                }
            }
            // The metadata last: a restore that stops halfway leaves no store that opens.
            if let Some(batch) = meta_batch.take() {
                storage.apply_batch(TreeId::Meta, batch, "restoring")?;
            }
            let anchor = if v >= 2 {
                let n = usize::from(read(1)?[0]);
                let a = read(n)?;
                if !a.is_empty() && audit::parse_anchor(&a).is_none() {
                    return Err(bad("its audit anchor is malformed"));
                }
                a
            } else {
                Vec::new()
            };
            if read(1).is_ok() {
                return Err(bad("it has bytes after its last tree"));
            }
            if storage
                .get(TreeId::Meta, crate::store::META_KEY)?
                .as_deref()
                != Some(meta.to_bytes().as_slice())
            {
                return Err(bad("its metadata and its contents disagree"));
            }
            storage.flush()?;
            if !anchor.is_empty() {
                let path = dir.join(crate::store::ANCHOR_FILE);
                let io = |source| StoreError::Io {
                    op: "write the audit anchor",
                    path: path.clone(),
                    source,
                };
                let mut f = OpenOptions::new()
                    .create_new(true)
                    .write(true)
                    .open(&path)
                    .map_err(io)?;
                f.write_all(&anchor).map_err(io)?;
                f.sync_all().map_err(io)?;
            }
            Ok(())
        })();
        if let Err(e) = outcome {
            if sled {
                drop(storage);
                let _ = fs::remove_dir_all(&db_dir);
            } else {
                // The engine was empty: emptied again.
                for t in ALL_TREES {
                    let keys: Vec<Vec<u8>> = storage
                        .iter(t)
                        .filter_map(|r| r.ok().map(|(k, _)| k))
                        .collect();
                    for k in keys {
                        let _ = storage.remove(t, k);
                    }
                }
            }
            return Err(e);
        }
        Ok(meta)
    }
}

fn verify_checksum(path: &Path) -> Result<(), StoreError> {
    let bad = |why: &str| StoreError::BadBackup {
        path: path.to_path_buf(),
        why: why.to_owned(),
    };
    let file = File::open(path).map_err(|source| StoreError::Io {
        op: "open backup",
        path: path.to_path_buf(),
        source,
    })?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size < 32 + 10 {
        return Err(bad("too short"));
    }
    let mut r = BufReader::new(file);
    let mut hash = Sha256::new();
    let mut left = size - 32;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        r.read_exact(&mut buf[..n])
            .map_err(|_| bad("it ends early"))?;
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    let mut sum = [0u8; 32];
    r.read_exact(&mut sum).map_err(|_| bad("it ends early"))?;
    if hash.finalize().as_slice() != sum {
        return Err(bad(
            "its checksum does not match: it is damaged or was altered",
        ));
    }
    Ok(())
}
