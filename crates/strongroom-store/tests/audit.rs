//! The audit log: every key operation is in it, in order, with its actor and outcome; and a
//! changed, removed, reordered or truncated entry, or an altered head, is found by verification,
//! which names the first broken entry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DbCopy, Fixture, RawDb, kr, rn};
use strongroom_store::{AuditOp, Outcome, StoreOptions};

fn populated() -> Fixture {
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store().with_actor("ops:alice");
    s.create_keyring(&kr("payroll"), None).unwrap();
    s.rotate_kek(&kr("payroll")).unwrap();
    s.rotate_dek(&kr("payroll")).unwrap();
    s.disable_keyring(&kr("payroll")).unwrap();
    // Refused: already disabled. Refusals are audited too.
    s.disable_keyring(&kr("payroll")).unwrap_err();
    s.enable_keyring(&kr("payroll")).unwrap();
    s.create_root(&rn("acme")).unwrap();
    s.with_actor("ops:bob")
        .create_keyring(&kr("hr"), Some(&rn("acme")))
        .unwrap();
    fx
}

fn entries(fx: &Fixture) -> Vec<strongroom_store::AuditEntry> {
    fx.store().audit_entries(1).map(Result::unwrap).collect()
}

#[test]
fn every_key_operation_is_recorded_in_order() {
    let fx = populated();
    let e = entries(&fx);
    let ops: Vec<(AuditOp, Outcome)> = e.iter().map(|e| (e.op, e.outcome)).collect();
    assert_eq!(
        ops,
        [
            (AuditOp::StoreCreated, Outcome::Ok),
            (AuditOp::KeyringCreated, Outcome::Ok),
            (AuditOp::KekRotated, Outcome::Ok),
            (AuditOp::DekRotated, Outcome::Ok),
            (AuditOp::KeyringDisabled, Outcome::Ok),
            (AuditOp::KeyringDisabled, Outcome::Refused),
            (AuditOp::KeyringEnabled, Outcome::Ok),
            (AuditOp::RootCreated, Outcome::Ok),
            (AuditOp::KeyringCreated, Outcome::Ok),
        ]
    );
    assert_eq!(
        e.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<u64>>()
    );
    assert_eq!(e[1].actor, "ops:alice");
    assert_eq!(e[1].target, "keyring payroll");
    assert_eq!(e[8].actor, "ops:bob");
    assert!(e[8].detail.contains("acme/v1"), "{}", e[8].detail);
    assert!(e[5].detail.contains("cannot disable"), "{}", e[5].detail);
    let report = fx.store().verify_audit().unwrap().unwrap();
    assert_eq!(report.entries, 9);
    assert_eq!(report.head.seq, 9);
    assert_eq!(report.head.hash, e[8].hash());
}

fn audit_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn broken_at(fx: &Fixture) -> (u64, String) {
    let b = fx.store().verify_audit().unwrap().unwrap_err();
    (b.seq, b.problem)
}

#[test]
fn a_changed_entry_is_found() {
    let mut fx = populated();
    fx.with_raw_db(|db| {
        let t = db.tree("audit");
        let mut v = t.get(audit_key(4)).unwrap();
        // Change one byte of the actor ("ops:alice" -> "ops:alicf").
        let at = v.windows(9).position(|w| w == b"ops:alice").unwrap() + 8;
        v[at] ^= 0x07;
        t.insert(audit_key(4), v);
    });
    let (seq, why) = broken_at(&fx);
    assert_eq!(seq, 4);
    assert!(why.contains("MAC"), "{why}");
}

#[test]
fn a_removed_entry_is_found() {
    let mut fx = populated();
    fx.with_raw_db(|db| {
        assert!(db.tree("audit").remove(audit_key(5)));
    });
    let (seq, why) = broken_at(&fx);
    assert_eq!(seq, 5);
    assert!(why.contains("missing"), "{why}");
}

#[test]
fn reordered_entries_are_found() {
    let mut fx = populated();
    fx.with_raw_db(|db| {
        let t = db.tree("audit");
        let a = t.get(audit_key(2)).unwrap();
        let b = t.get(audit_key(3)).unwrap();
        t.insert(audit_key(2), b);
        t.insert(audit_key(3), a);
    });
    assert_eq!(broken_at(&fx).0, 2);
}

#[test]
fn a_genuine_entry_moved_to_another_place_is_found() {
    // Entry 8's genuine bytes (a valid MAC) stored in place of entry 7.
    let mut fx = populated();
    fx.with_raw_db(|db| {
        let t = db.tree("audit");
        let e8 = t.get(audit_key(8)).unwrap();
        t.insert(audit_key(7), e8);
    });
    let (seq, why) = broken_at(&fx);
    assert_eq!(seq, 7);
    assert!(
        why.contains("stored as 7") || why.contains("chain"),
        "{why}"
    );
}

#[test]
fn a_truncated_tail_is_found() {
    let mut fx = populated();
    fx.with_raw_db(|db| {
        let t = db.tree("audit");
        assert!(t.remove(audit_key(9)));
        assert!(t.remove(audit_key(8)));
    });
    let (seq, why) = broken_at(&fx);
    assert_eq!(seq, 8);
    assert!(why.contains("removed from the end"), "{why}");
}

#[test]
fn an_altered_head_is_found_at_open() {
    // Its hash changed: the head's MAC fails. The head vouches for the catalog (its digest), so
    // the store refuses to open rather than trust a catalog it cannot check.
    let mut fx = populated();
    let e = reopen_after(&mut fx, |db| {
        let meta = db.tree("meta");
        let mut h = meta.get(b"audit_head").unwrap();
        h[20] ^= 1;
        meta.insert(b"audit_head", h);
    })
    .unwrap_err();
    assert!(
        matches!(e, strongroom_store::StoreError::CatalogIntegrity { .. })
            && e.to_string().contains("audit log's head"),
        "{e}"
    );
}

#[test]
fn a_head_moved_back_is_refused_at_open_by_the_anchor() {
    // The head claims the log ends at entry 7 (as if the last two operations never happened):
    // the anchor kept outside the database says 9, so the store refuses to open.
    let mut fx = populated();
    let e = reopen_after(&mut fx, |db| {
        let meta = db.tree("meta");
        let mut h = meta.get(b"audit_head").unwrap();
        h[..8].copy_from_slice(&7u64.to_be_bytes());
        meta.insert(b"audit_head", h);
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            strongroom_store::StoreError::RolledBack {
                anchored: 9,
                found: 7,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_integrity());
    assert!(e.to_string().contains("Restore it from a backup"), "{e}");
}

#[test]
fn an_older_copy_of_the_database_is_refused_unless_accepted() {
    let mut fx = populated();
    fx.store = None;
    let old = DbCopy::take(fx.dir.path());
    let s = fx.reopen();
    // The keyring is destroyed; then the old copy of the database (with its keys) is put back.
    s.destroy_keyring_now(&kr("hr")).unwrap();
    fx.store = None;
    old.put_back(fx.dir.path());
    let e = fx.open().unwrap_err();
    assert!(
        matches!(e, strongroom_store::StoreError::RolledBack { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains(strongroom_store::ANCHOR_FILE), "{e}");
    // Deleting the anchor does not hide it any more.
    let anchor = fx.dir.path().join(strongroom_store::ANCHOR_FILE);
    let kept = std::fs::read(&anchor).unwrap();
    std::fs::remove_file(&anchor).unwrap();
    let e = fx.open().unwrap_err();
    assert!(
        matches!(e, strongroom_store::StoreError::AnchorMissing { .. }) && e.is_integrity(),
        "{e:?}"
    );
    std::fs::write(&anchor, kept).unwrap();
    // An operator who put the copy back on purpose accepts it, and that is recorded.
    let s =
        common::open_accepting_rollback(fx.dir.path(), fx.backend.clone(), StoreOptions::default())
            .unwrap();
    assert!(s.verify_audit().unwrap().is_ok());
    let last = s.audit_entries(1).last().unwrap().unwrap();
    assert_eq!(last.op, AuditOp::RollbackAccepted);
    drop(s);
    fx.reopen();
}

#[test]
fn an_untouched_log_keeps_verifying_across_reopen_and_new_entries() {
    let mut fx = populated();
    let s = fx.reopen();
    s.rotate_kek(&kr("hr")).unwrap();
    assert_eq!(s.verify_audit().unwrap().unwrap().entries, 10);
}

/// Closes the store, lets `f` change its database, and tries to open it again.
fn reopen_after(
    fx: &mut Fixture,
    f: impl FnOnce(&RawDb),
) -> Result<strongroom_store::Store, strongroom_store::StoreError> {
    fx.with_raw_db_unchecked(f);
    fx.open()
}

fn cut_head(db: &RawDb) {
    let meta = db.tree("meta");
    let h = meta.get(b"audit_head").unwrap();
    meta.insert(b"audit_head", &h[..20]);
}

#[test]
fn a_damaged_head_is_an_integrity_failure_not_a_fresh_log() {
    let mut fx = populated();
    let e = reopen_after(&mut fx, cut_head).unwrap_err();
    assert!(e.is_integrity(), "{e:?}");
    assert!(e.to_string().contains("audit log's head"), "{e}");

    // Without the anchor too: the head vouches for the catalog, so a store whose head is
    // damaged is refused at open (never a fresh chain, never an unchecked catalog).
    std::fs::remove_file(fx.dir.path().join(strongroom_store::ANCHOR_FILE)).unwrap();
    let e = fx.open().unwrap_err();
    assert!(
        e.is_integrity() && e.to_string().contains("audit log's head"),
        "{e}"
    );
    // The damaged head is still there, unchanged, for whoever looks at it.
    let db = RawDb::open(fx.dir.path());
    let head = db.tree("meta").get(b"audit_head");
    assert_eq!(head.map(|h| h.len()), Some(20));
}

#[test]
fn a_forged_anchor_fails_verification() {
    let mut fx = populated();
    let path = fx.dir.path().join(strongroom_store::ANCHOR_FILE);
    let mut anchor = std::fs::read(&path).unwrap();
    assert_eq!(
        anchor.len(),
        73,
        "a version-2 anchor: the catalog is sealed"
    );
    fx.store().verify_audit().unwrap().unwrap();
    // Same sequence and hash (so the rollback check passes), a MAC it cannot know: refused at
    // open, since the anchor also says whether the catalog must be sealed.
    anchor[72] ^= 1;
    std::fs::write(&path, &anchor).unwrap();
    fx.store = None;
    let e = fx.open().unwrap_err();
    assert!(
        matches!(e, strongroom_store::StoreError::CatalogIntegrity { .. })
            && e.to_string().contains("fails its MAC"),
        "{e}"
    );
}

#[test]
fn an_unreadable_anchor_is_an_error_not_a_missing_one() {
    let mut fx = populated();
    let path = fx.dir.path().join(strongroom_store::ANCHOR_FILE);
    fx.store = None;
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap(); // reading it fails with EISDIR
    let e = fx.open().unwrap_err();
    assert!(
        matches!(&e, strongroom_store::StoreError::Io { op, .. } if op.contains("anchor")),
        "{e:?}"
    );
}

fn audited() -> StoreOptions {
    StoreOptions {
        audit_data_access: true,
        ..StoreOptions::default()
    }
}

#[test]
fn data_access_is_audited_record_by_record() {
    let fx = Fixture::new(audited());
    let s = fx.store().with_actor("app");
    let k = kr("payroll");
    s.create_keyring(&k, None).unwrap();
    let before = entries(&fx).len();
    s.put(&k, b"alice", b"salary=100000").unwrap();
    assert!(s.get(&k, b"alice").unwrap().is_some());
    assert!(s.get(&k, b"nobody").unwrap().is_none());
    s.batch(
        &k,
        &[
            strongroom_store::BatchOp::Put(b"bob".to_vec(), b"1".to_vec()),
            strongroom_store::BatchOp::Delete(b"alice".to_vec()),
        ],
    )
    .unwrap();
    assert!(!s.delete(&k, b"alice").unwrap());
    let got: Vec<(AuditOp, String, String)> = entries(&fx)[before..]
        .iter()
        .map(|e| (e.op, e.target.clone(), e.detail.clone()))
        .collect();
    let rec = |k: &str| format!("record {k} in keyring payroll");
    assert_eq!(
        got,
        [
            (AuditOp::RecordWritten, rec("alice"), "13 bytes".into()),
            (AuditOp::RecordRead, rec("alice"), "13 bytes".into()),
            (AuditOp::RecordRead, rec("nobody"), "not found".into()),
            (AuditOp::RecordWritten, rec("bob"), "1 bytes".into()),
            (AuditOp::RecordDeleted, rec("alice"), "deleted".into()),
            (AuditOp::RecordDeleted, rec("alice"), "not found".into()),
        ]
    );
    assert!(entries(&fx)[before..].iter().all(|e| e.actor == "app"));
    assert!(s.verify_audit().unwrap().is_ok());
}

/// A write and its audit entry commit together: when the entry cannot be written (here, the
/// primary root that protects the audit key is disabled), the write does not land either.
#[test]
fn an_audited_write_does_not_land_without_its_entry() {
    let mut fx = Fixture::new(audited());
    let s = fx.store();
    s.create_root(&rn("tenant")).unwrap();
    let t = kr("tenant-data");
    s.create_keyring(&t, Some(&rn("tenant"))).unwrap();
    s.put(&t, b"before", b"1").unwrap();
    s.disable_root(&rn("service")).unwrap();
    // A fresh process: the audit key is not in memory any more, and cannot be unwrapped.
    let s = fx.reopen();
    for e in [
        s.put(&t, b"x", b"v").unwrap_err(),
        s.delete(&t, b"before").map(|_| ()).unwrap_err(),
        s.batch(
            &t,
            &[strongroom_store::BatchOp::Put(b"y".to_vec(), b"w".to_vec())],
        )
        .unwrap_err(),
    ] {
        assert!(
            matches!(e, strongroom_store::StoreError::AuditUnavailable { .. }),
            "{e}"
        );
    }
    // Nothing of the refused writes landed. (While the primary root is unusable the catalog
    // cannot be verified, so the store reads nothing at all: it is enabled again first.)
    assert!(s.get(&t, b"before").unwrap_err().is_access_refused());
    s.enable_root(&rn("service")).unwrap();
    fx.options = StoreOptions::default();
    let s = fx.reopen();
    assert!(s.get(&t, b"x").unwrap().is_none());
    assert!(s.get(&t, b"y").unwrap().is_none());
    assert_eq!(s.get(&t, b"before").unwrap().unwrap().expose(), b"1");
}

#[test]
fn concurrent_audited_writers_keep_one_unbroken_chain() {
    let fx = Fixture::new(audited());
    let s = fx.store().clone();
    let k = kr("busy");
    s.create_keyring(&k, None).unwrap();
    let before = entries(&fx).len();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (s, k) = (s.clone(), k.clone());
            std::thread::spawn(move || {
                for i in 0..100 {
                    s.put(&k, format!("{t}/{i}").as_bytes(), b"v").unwrap();
                    s.get(&k, format!("{t}/{i}").as_bytes()).unwrap().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let e = entries(&fx);
    assert_eq!(e.len() - before, 800, "one entry per put and per get");
    assert!(s.verify_audit().unwrap().is_ok());
}

#[test]
fn each_reencryption_batch_and_each_rewrap_step_commits_with_its_own_entry() {
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    let k = kr("big");
    s.create_keyring(&k, None).unwrap();
    for i in 0..600 {
        s.put(&k, format!("r{i:04}").as_bytes(), b"v").unwrap();
    }
    s.rotate_dek(&k).unwrap();
    let before = entries(&fx).len();
    s.reencrypt(&k, &mut |_| {}).unwrap();
    let batches: Vec<String> = entries(&fx)[before..]
        .iter()
        .filter(|e| e.op == AuditOp::Reencrypted)
        .map(|e| e.detail.clone())
        .collect();
    // Batches of 256: 256 + 256 + 88, then the summary.
    assert_eq!(batches.len(), 4, "{batches:#?}");
    assert!(
        batches[0].starts_with("batch of 256 records up to r0255"),
        "{}",
        batches[0]
    );
    assert!(
        batches[2].starts_with("batch of 88 records up to r0599"),
        "{}",
        batches[2]
    );
    assert!(batches[3].contains("600 re-encrypted"), "{}", batches[3]);

    s.create_root(&rn("acme")).unwrap();
    for t in ["t1", "t2", "t3"] {
        s.create_keyring(&kr(t), Some(&rn("acme"))).unwrap();
    }
    let before = entries(&fx).len();
    assert_eq!(s.rotate_root(&rn("acme"), &mut |_| {}).unwrap().get(), 2);
    let steps: Vec<String> = entries(&fx)[before..]
        .iter()
        .filter(|e| e.op == AuditOp::RootRewrapped)
        .map(|e| e.detail.clone())
        .collect();
    assert_eq!(steps.len(), 3, "{steps:#?}");
    for t in ["t1", "t2", "t3"] {
        assert!(
            steps
                .iter()
                .any(|d| d == &format!("KEK v1 of keyring {t} rewrapped under acme/v2")),
            "{t}: {steps:#?}"
        );
    }
    assert!(s.verify_audit().unwrap().is_ok());
}
