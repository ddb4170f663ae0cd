//! Moving a store between engines: every entry copied into an empty engine, then compared
//! entry by entry with the source before the move is reported done.
//!
//! The audit log and its anchor carry over as they are: the copy is the same database (same
//! store id, same audit chain, the same head the anchor file in the store directory vouches
//! for), on another engine. The migration's own audit entry is committed in the source before
//! the copy, so the target holds it too.

use std::time::{Duration, Instant};

use crate::audit::AuditOp;
use crate::commit::Effects;
use crate::engine::{ALL_TREES, BatchChange, Engine, EngineInfo, TreeId};
use crate::error::StoreError;
use crate::lifecycle::Progress;
use crate::store::Store;

/// Entries written per batch into the target.
const BATCH: usize = 1024;

/// What a migration copied.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrateReport {
    /// Entries copied (and verified).
    pub entries: u64,
    /// Bytes of keys and values copied.
    pub bytes: u64,
    /// The engine they went to.
    pub to: EngineInfo,
    /// How long it took.
    pub elapsed: Duration,
}

fn storage(while_doing: &'static str) -> impl FnOnce(crate::EngineError) -> StoreError {
    move |source| StoreError::Storage {
        while_doing,
        source,
    }
}

impl Store {
    /// Copies the whole store into `target`, which must be empty, and verifies every entry
    /// (both sides scanned in key order and compared byte for byte) before returning. Key
    /// operations, reads and writes wait while it runs. The store itself is not changed but
    /// for the migration's audit entry; open the copy with [`Store::open_on`] and the same
    /// directory and backend. `progress` gets entries copied, then entries verified; it runs
    /// while the store is locked, so it must not call the store.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] when `target` holds anything; a storage error on either
    /// side; [`StoreError::InUse`] when the verification finds a difference (nothing in the
    /// source was changed; empty the target before trying again).
    pub fn migrate_into(
        &self,
        target: &dyn Engine,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<MigrateReport, StoreError> {
        let started = Instant::now();
        let w = self.write_lifecycle();
        for t in ALL_TREES {
            if target
                .count(t)
                .map_err(storage("looking into the target"))?
                > 0
            {
                return Err(StoreError::AlreadyExists {
                    path: target.info().location.into(),
                });
            }
        }
        let to = target.info();
        self.commit(
            &w,
            AuditOp::Migrated,
            "store".into(),
            format!(
                "copying from {} at {} into {} at {} (verified entry by entry before it is used)",
                self.engine_info().kind,
                self.engine_info().location,
                to.kind,
                to.location
            ),
            |_| Ok(()),
            Effects::none(),
        )?;
        let storage_ = &self.inner.storage;
        let total: u64 = ALL_TREES
            .iter()
            .map(|t| storage_.len(*t))
            .sum::<Result<u64, _>>()?;
        // The metadata last: until it is there, a copy that stops halfway (a full disk, a lost
        // connection) is no store at all (`NotAStore` at open), never a store missing records.
        let order: Vec<TreeId> = ALL_TREES
            .iter()
            .copied()
            .filter(|t| *t != TreeId::Meta)
            .chain([TreeId::Meta])
            .collect();
        let copied = (|| {
            let (mut entries, mut bytes) = (0u64, 0u64);
            for &t in &order {
                let mut batch = Vec::with_capacity(BATCH);
                for item in storage_.iter(t) {
                    let (k, v) = item?;
                    bytes += (k.len() + v.len()) as u64;
                    batch.push(BatchChange::Insert(k, v));
                    if batch.len() == BATCH {
                        entries += batch.len() as u64;
                        target
                            .apply_batch(t, std::mem::take(&mut batch))
                            .map_err(storage("writing into the target"))?;
                        progress(Progress {
                            done: entries,
                            total: total * 2,
                        });
                    }
                }
                entries += batch.len() as u64;
                if !batch.is_empty() {
                    target
                        .apply_batch(t, batch)
                        .map_err(storage("writing into the target"))?;
                }
            }
            Ok::<_, StoreError>((entries, bytes))
        })();
        let (entries, bytes) = match copied {
            Ok(x) => x,
            Err(e) => return Err(self.undo_partial_copy(target, e)),
        };
        target.flush().map_err(storage("flushing the target"))?;
        // Verification: both sides, in key order, entry by entry.
        let mut verified = 0u64;
        for t in ALL_TREES {
            let mut theirs = target.scan(t, b"", b"");
            for ours in storage_.iter(t) {
                let ours = ours?;
                let same = match theirs.next() {
                    Some(Ok(kv)) => kv == ours,
                    Some(Err(e)) => return Err(storage("verifying the target")(e)),
                    None => false,
                };
                if !same {
                    return Err(self.undo_partial_copy(
                        target,
                        StoreError::InUse(format!(
                            "the copy differs from the store in tree {} (at entry {verified}): the store changed during the migration, or the target was written by someone else; migrate again",
                            t.name()
                        )),
                    ));
                }
                verified += 1;
                if verified.is_multiple_of(BATCH as u64) {
                    progress(Progress {
                        done: entries + verified,
                        total: total * 2,
                    });
                }
            }
            if theirs.next().is_some() {
                return Err(self.undo_partial_copy(
                    target,
                    StoreError::InUse(format!(
                        "the copy holds more entries than the store in tree {}: migrate again",
                        t.name()
                    )),
                ));
            }
        }
        progress(Progress {
            done: entries + verified,
            total: entries + verified,
        });
        Ok(MigrateReport {
            entries,
            bytes,
            to,
            elapsed: started.elapsed(),
        })
    }

    /// Empties `target` after a copy into it failed with `e` (it was empty before): `e` as it
    /// was when that worked; when it did not, an error saying what is left there and how to
    /// remove it.
    fn undo_partial_copy(&self, target: &dyn Engine, e: StoreError) -> StoreError {
        let mut left = 0u64;
        for t in ALL_TREES {
            let keys: Vec<Vec<u8>> = target
                .scan(t, b"", b"")
                .filter_map(|r| r.ok().map(|(k, _)| k))
                .collect();
            for k in keys {
                if target.remove(t, &k).is_err() {
                    left += 1;
                }
            }
            left += target.count(t).unwrap_or(1).min(1);
        }
        if left == 0 {
            return e;
        }
        StoreError::InUse(format!(
            "the migration failed ({e}), and the partial copy could not be removed from {}: it holds no store metadata, so it never opens as a store; empty it (for PostgreSQL: DROP SCHEMA ... CASCADE) before migrating again",
            target.info().location
        ))
    }
}
