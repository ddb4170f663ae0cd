//! The store end to end on the soft backend: opening, records, the key lifecycle, the cache,
//! re-encryption, crypto-shredding, backup.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Fixture, get_string, kr, rn};
use strongroom_core::{
    Backend, BackendError, DekVersion, KekVersion, KeyState, RootKeyId, RootStatus, RootVersion,
    SoftBackend,
};
use strongroom_store::{
    BatchOp, DownPolicy, MAX_KEY_LEN, MAX_VALUE_LEN, PendingJob, Progress, Store, StoreError,
    StoreOptions,
};
use strongroom_test_support::wrappers::TestBackend;

fn no_progress() -> impl FnMut(Progress) {
    |_| {}
}

#[test]
fn the_handle_is_send_sync_clone() {
    fn assert<T: Send + Sync + Clone + 'static>() {}
    assert::<Store>();
}

#[test]
fn create_open_and_refusals() {
    let mut fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    assert_eq!(s.meta().backend_kind, "soft");
    s.create_keyring(&kr("payroll"), None).unwrap();
    s.put(&kr("payroll"), b"alice", b"100").unwrap();
    let s = fx.reopen();
    assert_eq!(
        get_string(s, &kr("payroll"), "alice").as_deref(),
        Some("100")
    );

    // Another store cannot be created over it. While it is open on PostgreSQL, a second
    // engine on its schema is refused outright (one process per store)...
    if common::on_postgres() {
        let schema = common::pg_schema_of(fx.dir.path()).unwrap();
        let e = strongroom_postgres::PgEngine::connect(&common::pg_config(&schema)).unwrap_err();
        assert_eq!(e.kind(), strongroom_store::EngineErrorKind::Refused, "{e}");
        assert!(e.to_string().contains("another process"), "{e}");
        fx.store = None;
    }
    // ...and once closed (or on sled, at any time) the store that is there is named.
    let e = common::create(
        fx.dir.path(),
        fx.backend.clone(),
        &rn("x"),
        StoreOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, StoreError::AlreadyExists { .. }), "{e}");

    // Another backend instance (a foreign key file) is refused.
    let other_dir = tempfile::tempdir().unwrap();
    let other: Arc<dyn Backend> = Arc::new(SoftBackend::create(other_dir.path()).unwrap());
    fx.store = None;
    let e = common::open(fx.dir.path(), other, StoreOptions::default()).unwrap_err();
    assert!(matches!(e, StoreError::WrongBackend { .. }), "{e}");
    assert!(e.to_string().contains("its own backend"), "{e}");

    // No store here.
    let e = common::open(
        other_dir.path(),
        fx.backend.clone(),
        StoreOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, StoreError::NotAStore { .. }), "{e}");
    assert!(e.to_string().contains("strongroom init"));

    // A newer format is refused, not misread.
    fx.with_raw_db_unchecked(|db| {
        let meta = db.tree("meta");
        let mut m = meta.get(b"store").unwrap();
        m[4] = 9;
        meta.insert(b"store", m);
    });
    let e = fx.open().unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::NewerFormat {
                found: 9,
                supported: 1,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn records_put_get_delete_list_batch_and_limits() {
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    let k = kr("app");
    s.create_keyring(&k, None).unwrap();
    for i in 0..20 {
        s.put(
            &k,
            format!("user/{i:02}").as_bytes(),
            format!("v{i}").as_bytes(),
        )
        .unwrap();
    }
    s.put(&k, b"other", b"x").unwrap();
    s.put(&k, b"", b"empty key is a key").unwrap();
    s.put(&k, b"bin", &[0u8, 255, 10, 13]).unwrap();
    assert_eq!(
        s.get(&k, b"bin").unwrap().unwrap().expose(),
        &[0u8, 255, 10, 13]
    );
    assert_eq!(get_string(s, &k, ""), Some("empty key is a key".into()));
    assert_eq!(s.list(&k, b"user/").unwrap().len(), 20);
    assert_eq!(
        s.list(&k, b"user/1").unwrap(),
        (10..20)
            .map(|i| format!("user/{i}").into_bytes())
            .collect::<Vec<_>>()
    );
    assert!(s.delete(&k, b"user/00").unwrap());
    assert!(!s.delete(&k, b"user/00").unwrap());
    assert_eq!(s.get(&k, b"user/00").unwrap().map(|p| p.len()), None);
    s.put(&k, b"user/01", b"overwritten").unwrap();
    assert_eq!(get_string(s, &k, "user/01").as_deref(), Some("overwritten"));

    s.batch(
        &k,
        &[
            BatchOp::Put(b"b1".to_vec(), b"1".to_vec()),
            BatchOp::Put(b"b2".to_vec(), b"2".to_vec()),
            BatchOp::Delete(b"other".to_vec()),
        ],
    )
    .unwrap();
    assert_eq!(get_string(s, &k, "b2").as_deref(), Some("2"));
    assert!(s.get(&k, b"other").unwrap().is_none());
    // A batch with one bad op applies nothing.
    let e = s
        .batch(
            &k,
            &[
                BatchOp::Put(b"b3".to_vec(), b"3".to_vec()),
                BatchOp::Put(vec![b'k'; MAX_KEY_LEN + 1], b"x".to_vec()),
            ],
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::TooLarge { .. }), "{e}");
    assert!(s.get(&k, b"b3").unwrap().is_none());

    let e = s.put(&k, &vec![b'k'; MAX_KEY_LEN + 1], b"v").unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::TooLarge {
                what: "a record key",
                ..
            }
        ),
        "{e}"
    );
    let e = s
        .put(&k, b"big", &vec![0u8; MAX_VALUE_LEN + 1])
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::TooLarge {
                what: "a record value",
                ..
            }
        ),
        "{e}"
    );
    s.put(&k, b"max", &vec![7u8; MAX_VALUE_LEN]).unwrap();
    assert_eq!(s.get(&k, b"max").unwrap().unwrap().len(), MAX_VALUE_LEN);
    // Puts seal through a per-thread buffer, kept between puts up to 64 KiB and dropped beyond:
    // after a value it keeps (60 KiB) and after one it drops (16 MiB), a small value is exactly
    // itself and the large ones are untouched.
    s.put(&k, b"sixty", &vec![6u8; 60 << 10]).unwrap();
    s.put(&k, b"small", b"tiny").unwrap();
    assert_eq!(s.get(&k, b"small").unwrap().unwrap().expose(), b"tiny");
    s.put(&k, b"max", &vec![7u8; MAX_VALUE_LEN]).unwrap();
    s.put(&k, b"small", b"tinier").unwrap();
    assert_eq!(s.get(&k, b"small").unwrap().unwrap().expose(), b"tinier");
    let sixty = s.get(&k, b"sixty").unwrap().unwrap();
    assert!(sixty.len() == 60 << 10 && sixty.expose().iter().all(|b| *b == 6));
    let max = s.get(&k, b"max").unwrap().unwrap();
    assert!(max.len() == MAX_VALUE_LEN && max.expose().iter().all(|b| *b == 7));

    let e = s.get(&kr("nope"), b"x").unwrap_err();
    assert!(matches!(e, StoreError::KeyringNotFound { .. }), "{e}");
}

/// A damaged keyring id counter must never hand out an id in use: the new keyring would
/// overwrite that keyring's KEK and DEK and share its records.
#[test]
fn a_damaged_keyring_id_counter_is_refused_and_loses_nothing() {
    let mut fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    for name in ["a", "b"] {
        s.create_keyring(&kr(name), None).unwrap();
        s.put(&kr(name), b"k", name.as_bytes()).unwrap();
    }
    s.flush().unwrap();
    for damage in [None, Some(&[0u8, 1][..]), Some(&1u64.to_be_bytes()[..])] {
        let s = fx.with_raw_db(|db| {
            let meta = db.tree("meta");
            match damage {
                None => {
                    meta.remove("next_keyring_id");
                }
                Some(v) => meta.insert("next_keyring_id", v),
            }
        });
        let e = s.create_keyring(&kr("c"), None).unwrap_err();
        assert!(
            matches!(&e, StoreError::Corrupt { what, .. } if what == "the keyring id counter"),
            "{damage:?}: {e}"
        );
        assert!(s.keyring(&kr("c")).is_err(), "nothing was created");
        for name in ["a", "b"] {
            assert_eq!(get_string(s, &kr(name), "k").as_deref(), Some(name));
        }
    }
    // A DEK use counter of the wrong length is damage, not a fresh count of zero.
    let s = fx.with_raw_db(|db| {
        let mut key = b"uses/".to_vec();
        key.extend_from_slice(&1u64.to_be_bytes());
        key.extend_from_slice(&1u32.to_be_bytes());
        let jobs = db.tree("jobs");
        assert!(jobs.get(&key).is_some(), "keyring a's DEK 1 counter");
        jobs.insert(key, [0u8, 0, 7]);
    });
    for e in [
        s.put(&kr("a"), b"k2", b"v").unwrap_err(),
        s.dek_uses(&kr("a"), DekVersion::FIRST).unwrap_err(),
    ] {
        assert!(
            matches!(&e, StoreError::Corrupt { what, .. } if what == "the use counter of DEK v1"),
            "{e}"
        );
    }
    assert_eq!(get_string(s, &kr("a"), "k").as_deref(), Some("a"));
    // Two keyring entries under one id (a copied entry) are refused at open: the copy's seal
    // names `a`, not `z`.
    fx.with_raw_db_unchecked(|db| {
        let keyrings = db.tree("keyrings");
        let a = keyrings.get("a").unwrap();
        keyrings.insert("z", a);
    });
    let e = fx.open().unwrap_err();
    assert!(
        matches!(&e, StoreError::CatalogIntegrity { what } if what == "keyring entry z"),
        "{e}"
    );
}

/// A put from a thread-local destructor that runs after the store's own per-thread seal buffer
/// is gone (destructors run in reverse order of first use) must still write, not panic.
#[test]
fn a_put_while_the_thread_shuts_down_still_writes() {
    struct PutOnDrop(Store);
    impl Drop for PutOnDrop {
        fn drop(&mut self) {
            self.0.put(&kr("app"), b"last words", b"bye").unwrap();
        }
    }
    thread_local! {
        static GUARD: std::cell::RefCell<Option<PutOnDrop>> = const { std::cell::RefCell::new(None) };
    }
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    s.create_keyring(&kr("app"), None).unwrap();
    let t = s.clone();
    std::thread::spawn(move || {
        // First use of GUARD, then of the store's buffer: GUARD is destroyed last.
        GUARD.with_borrow_mut(|g| *g = Some(PutOnDrop(t.clone())));
        t.put(&kr("app"), b"first", b"hello").unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(get_string(s, &kr("app"), "first").as_deref(), Some("hello"));
    assert_eq!(
        get_string(s, &kr("app"), "last words").as_deref(),
        Some("bye")
    );
}

#[test]
fn values_moved_truncated_or_altered_fail_with_an_integrity_error_naming_the_record() {
    let mut fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    s.create_keyring(&kr("a"), None).unwrap();
    s.create_keyring(&kr("b"), None).unwrap();
    s.put(&kr("a"), b"alice", b"secret-a").unwrap();
    s.put(&kr("a"), b"bob", b"secret-b").unwrap();
    s.put(&kr("b"), b"alice", b"other").unwrap();
    let s = fx.with_raw_db(|db| {
        let rec = db.tree("records");
        let key = |id: u64, k: &[u8]| [&id.to_be_bytes()[..], k].concat();
        let alice = rec.get(key(1, b"alice")).unwrap();
        // a/alice's value copied over a/bob (moved to another key) and b/alice (another keyring).
        rec.insert(key(1, b"bob"), &alice);
        rec.insert(key(2, b"alice"), &alice);
        // a/carol: truncated; a/dave: one bit flipped in the ciphertext; a/erin: header bit.
        rec.insert(key(1, b"carol"), &alice[..alice.len() - 1]);
        let mut flipped = alice.clone();
        flipped[20] ^= 0x10;
        rec.insert(key(1, b"dave"), flipped);
        let mut header = alice.clone();
        header[3] ^= 0x01;
        rec.insert(key(1, b"erin"), header);
    });
    assert_eq!(
        get_string(s, &kr("a"), "alice").as_deref(),
        Some("secret-a")
    );
    for (ring, key) in [
        ("a", "bob"),
        ("b", "alice"),
        ("a", "carol"),
        ("a", "dave"),
        ("a", "erin"),
    ] {
        let e = s.get(&kr(ring), key.as_bytes()).unwrap_err();
        assert!(
            matches!(&e, StoreError::RecordIntegrity { key: k, .. } if k == key),
            "{ring}/{key}: {e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(key) && msg.contains(ring) && !msg.contains("secret"),
            "{msg}"
        );
        assert!(e.is_integrity());
    }
}

#[test]
fn dek_rotation_reencryption_and_retirement() {
    let mut fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    let k = kr("ring");
    s.create_keyring(&k, None).unwrap();
    for i in 0..600 {
        s.put(
            &k,
            format!("r{i:04}").as_bytes(),
            format!("value {i}").as_bytes(),
        )
        .unwrap();
    }
    assert_eq!(s.rotate_dek(&k).unwrap(), DekVersion::new(2).unwrap());
    s.put(&k, b"new", b"under v2").unwrap();
    assert_eq!(get_string(s, &k, "r0000").as_deref(), Some("value 0"));
    assert_eq!(s.keyring(&k).unwrap().dek_versions.len(), 2);

    // Interrupt the re-encryption after its first batch (a panic in the progress callback stands
    // in for a crash or a Ctrl-C); a second run resumes where it stopped.
    let mut seen = Vec::new();
    let interrupted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.reencrypt(&k, &mut |p| {
            seen.push(p);
            if p.done >= 256 {
                panic!("interrupted");
            }
        })
    }));
    assert!(interrupted.is_err());
    assert!(
        s.pending_jobs()
            .unwrap()
            .contains(&PendingJob::Reencrypt(k.clone()))
    );
    let s = fx.reopen();
    assert!(
        s.pending_jobs()
            .unwrap()
            .contains(&PendingJob::Reencrypt(k.clone()))
    );
    let mut last = Progress { done: 0, total: 0 };
    let report = s.reencrypt(&k, &mut |p| last = p).unwrap();
    assert!(report.resumed);
    // 601 records: the first run did one batch of 256 before it was interrupted.
    assert_eq!(report.reencrypted + report.skipped + 256, 601, "{report:?}");
    assert_eq!(last.done, last.total);
    assert_eq!(report.retired, [DekVersion::FIRST]);
    assert_eq!(
        s.keyring(&k).unwrap().dek_versions,
        [DekVersion::new(2).unwrap()]
    );
    assert!(s.pending_jobs().unwrap().is_empty());
    for i in (0..600).step_by(37) {
        assert_eq!(
            get_string(s, &k, &format!("r{i:04}")),
            Some(format!("value {i}"))
        );
    }
    assert_eq!(
        s.verify_audit().unwrap().unwrap().entries,
        s.audit_entries(1).count() as u64
    );
}

#[test]
fn a_refused_reencryption_leaves_no_unfinished_job() {
    // Found by the store-model fuzzer.
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    let k = kr("ring");
    s.create_keyring(&k, None).unwrap();
    s.disable_keyring(&k).unwrap();
    assert!(matches!(
        s.reencrypt(&k, &mut no_progress()).unwrap_err(),
        StoreError::KeyringDisabled { .. }
    ));
    assert!(s.pending_jobs().unwrap().is_empty());
}

#[test]
fn one_job_has_one_runner_and_is_free_again_when_it_ends_however_it_ends() {
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    let k = kr("ring");
    s.create_keyring(&k, None).unwrap();
    for i in 0..600 {
        s.put(&k, format!("r{i:04}").as_bytes(), b"v").unwrap();
    }
    s.rotate_dek(&k).unwrap();
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let (tried_tx, tried) = std::sync::mpsc::channel::<()>();
    let report = std::thread::scope(|scope| {
        let ring = &k;
        let runner = scope.spawn(move || {
            let mut first = true;
            s.reencrypt(ring, &mut |p| {
                // After the first batch: another thread tries the same job meanwhile.
                if first && p.done > 0 {
                    first = false;
                    started_tx.send(()).unwrap();
                    tried.recv().unwrap();
                }
            })
        });
        started.recv().unwrap();
        let e = s.reencrypt(&k, &mut no_progress()).unwrap_err();
        assert!(
            matches!(&e, StoreError::JobBusy { replica, .. } if replica == "this process"),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("re-encryption of keyring ring"),
            "{e}"
        );
        // Another keyring's job is another job.
        s.create_keyring(&kr("other"), None).unwrap();
        s.reencrypt(&kr("other"), &mut no_progress()).unwrap();
        tried_tx.send(()).unwrap();
        runner.join().unwrap().unwrap()
    });
    assert_eq!(report.reencrypted, 600, "{report:?}");
    // Ended: free again. A run that fails (the keyring disabled) or panics frees it too.
    s.reencrypt(&k, &mut no_progress()).unwrap();
    s.rotate_dek(&k).unwrap();
    assert!(
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.reencrypt(&k, &mut |_| panic!("interrupted"))
        }))
        .is_err()
    );
    s.disable_keyring(&k).unwrap();
    assert!(matches!(
        s.reencrypt(&k, &mut no_progress()).unwrap_err(),
        StoreError::KeyringDisabled { .. }
    ));
    s.enable_keyring(&k).unwrap();
    let resumed = s.reencrypt(&k, &mut no_progress()).unwrap();
    assert!(resumed.resumed && resumed.reencrypted > 0, "{resumed:?}");
    // On an engine no other process shares, nothing of the lease is stored.
    if !common::on_postgres() {
        assert!(s.job_leases().unwrap().is_empty());
    }
}

#[test]
fn kek_rotation_touches_no_record() {
    let mut fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    let k = kr("ring");
    s.create_keyring(&k, None).unwrap();
    s.put(&k, b"x", b"1").unwrap();
    s.rotate_dek(&k).unwrap();
    s.put(&k, b"y", b"2").unwrap();
    s.flush().unwrap();
    let snapshot = |fx: &mut Fixture| {
        let mut out = Vec::new();
        fx.with_raw_db_unchecked(|db| {
            out = db
                .tree("records")
                .iter()
                .into_iter()
                .map(|(_, v)| v)
                .collect();
        });
        out
    };
    let before = snapshot(&mut fx);
    let s = fx.reopen();
    assert_eq!(s.rotate_kek(&k).unwrap(), KekVersion::new(2).unwrap());
    let info = s.keyring(&k).unwrap();
    assert_eq!(
        info.kek_versions
            .iter()
            .map(|(v, _)| *v)
            .collect::<Vec<_>>(),
        [KekVersion::new(2).unwrap()]
    );
    s.purge_key_cache();
    assert_eq!(get_string(s, &k, "x").as_deref(), Some("1"));
    assert_eq!(get_string(s, &k, "y").as_deref(), Some("2"));
    assert_eq!(
        snapshot(&mut fx),
        before,
        "records are byte-for-byte unchanged"
    );
    let s = fx.reopen();
    assert_eq!(get_string(s, &k, "y").as_deref(), Some("2"));
}

#[test]
fn root_rotation_rewraps_keks_and_old_versions_retire_only_when_unused() {
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    s.create_root(&rn("acme")).unwrap();
    for i in 0..5 {
        let name = kr(&format!("t{i}"));
        s.create_keyring(&name, Some(&rn("acme"))).unwrap();
        s.put(&name, b"k", format!("v{i}").as_bytes()).unwrap();
        s.rotate_kek(&name).unwrap();
    }
    let mut ticks = Vec::new();
    let v2 = s.rotate_root(&rn("acme"), &mut |p| ticks.push(p)).unwrap();
    assert_eq!(v2, RootVersion::new(2).unwrap());
    assert_eq!(ticks.last().unwrap(), &Progress { done: 5, total: 5 });
    for i in 0..5 {
        let info = s.keyring(&kr(&format!("t{i}"))).unwrap();
        assert!(
            info.kek_versions
                .iter()
                .all(|(_, r)| r.as_ref().unwrap().version == v2),
            "{info:?}"
        );
    }
    // Readable through the new version only: retire v1, and everything still opens.
    s.retire_root_version(&rn("acme"), RootVersion::FIRST)
        .unwrap();
    s.purge_key_cache();
    for i in 0..5 {
        assert_eq!(
            get_string(s, &kr(&format!("t{i}")), "k"),
            Some(format!("v{i}"))
        );
    }
    let backend_roots = fx.backend.list_roots().unwrap();
    let v1 = RootKeyId::new(rn("acme"), RootVersion::FIRST);
    assert_eq!(
        backend_roots.iter().find(|r| r.id == v1).unwrap().status,
        RootStatus::Destroyed
    );
    // The current version cannot be retired.
    let e = s.retire_root_version(&rn("acme"), v2).unwrap_err();
    assert!(matches!(e, StoreError::InUse(_)), "{e}");

    // A rewrap interrupted half-way is finished by running it again.
    s.rotate_root(&rn("acme"), &mut no_progress()).unwrap();
    let e = s.retire_root_version(&rn("acme"), v2);
    assert!(e.is_ok(), "everything was rewrapped: {e:?}");

    // The primary root rotates too, and takes the audit key with it.
    s.rotate_root(&rn("service"), &mut no_progress()).unwrap();
    s.retire_root_version(&rn("service"), RootVersion::FIRST)
        .unwrap();
    assert!(s.verify_audit().unwrap().is_ok());
}

#[test]
fn moving_a_keyring_to_its_own_root_and_back() {
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    let k = kr("tenant");
    s.create_keyring(&k, None).unwrap();
    s.put(&k, b"doc", b"contract").unwrap();
    s.rotate_kek(&k).unwrap();
    s.rotate_kek(&k).unwrap();
    s.rotate_dek(&k).unwrap();
    s.put(&k, b"doc2", b"annex").unwrap();
    s.create_root(&rn("byok")).unwrap();
    let before = s.keyring(&k).unwrap();
    let m = s.move_keyring(&k, &rn("byok"), &mut |_| {}).unwrap();
    assert_eq!(m.from, Some(rn("service")));
    assert_eq!(
        m.reencrypted, 2,
        "both records re-encrypted under the fresh DEK"
    );
    let info = s.keyring(&k).unwrap();
    assert_eq!(info.root, rn("byok"));
    // Fresh keys: one KEK, newer than any before, under byok; one DEK, newer than any before.
    assert_eq!(info.kek_versions.len(), 1, "{:?}", info.kek_versions);
    assert!(info.current_kek > before.current_kek);
    assert_eq!(info.kek_versions[0].1.as_ref().unwrap().name, rn("byok"));
    assert_eq!(info.dek_versions, vec![info.current_dek]);
    assert!(info.current_dek > before.current_dek);
    assert_eq!(info.moving_from, None);
    assert_eq!(info.former_roots, vec![rn("service")]);
    assert!(s.pending_jobs().unwrap().is_empty());
    assert_eq!(get_string(s, &k, "doc2").as_deref(), Some("annex"));
    // The service's root no longer matters to the tenant; the tenant's own root does.
    s.disable_root(&rn("service")).unwrap();
    s.purge_key_cache();
    assert_eq!(get_string(s, &k, "doc").as_deref(), Some("contract"));
    s.disable_root(&rn("byok")).unwrap();
    assert!(matches!(
        s.get(&k, b"doc").unwrap_err(),
        StoreError::RootDisabled { .. }
    ));
    s.enable_root(&rn("byok")).unwrap();
    s.enable_root(&rn("service")).unwrap();
    s.move_keyring(&k, &rn("service"), &mut |_| {}).unwrap();
    assert_eq!(
        s.keyring(&k).unwrap().former_roots,
        vec![rn("service"), rn("byok")]
    );
    s.disable_root(&rn("byok")).unwrap();
    s.purge_key_cache();
    assert_eq!(get_string(s, &k, "doc").as_deref(), Some("contract"));
}

#[test]
fn disabling_keyrings_and_roots_takes_effect_at_once() {
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    let k = kr("payroll");
    s.create_keyring(&k, None).unwrap();
    s.put(&k, b"alice", b"100").unwrap();
    assert_eq!(get_string(s, &k, "alice").as_deref(), Some("100"));
    assert!(s.cached_keys() > 0);
    s.disable_keyring(&k).unwrap();
    assert_eq!(s.cached_keys(), 0, "a local disable purges the cache");
    let e = s.get(&k, b"alice").unwrap_err();
    assert!(matches!(e, StoreError::KeyringDisabled { .. }), "{e}");
    assert!(
        e.to_string().contains("strongroom keyring enable payroll"),
        "{e}"
    );
    assert!(e.is_access_refused());
    assert!(matches!(
        s.put(&k, b"bob", b"1").unwrap_err(),
        StoreError::KeyringDisabled { .. }
    ));
    assert!(matches!(
        s.list(&k, b"").unwrap_err(),
        StoreError::KeyringDisabled { .. }
    ));
    assert!(matches!(
        s.disable_keyring(&k).unwrap_err(),
        StoreError::Transition(_)
    ));
    s.enable_keyring(&k).unwrap();
    assert_eq!(get_string(s, &k, "alice").as_deref(), Some("100"));

    // A root disabled in the store is disabled in the backend too.
    s.create_root(&rn("acme")).unwrap();
    let t = kr("tenant");
    s.create_keyring(&t, Some(&rn("acme"))).unwrap();
    s.put(&t, b"x", b"y").unwrap();
    s.disable_root(&rn("acme")).unwrap();
    assert!(matches!(
        s.get(&t, b"x").unwrap_err(),
        StoreError::RootDisabled { .. }
    ));
    let id = RootKeyId::new(rn("acme"), RootVersion::FIRST);
    assert_eq!(
        fx.backend.find_root(&id).unwrap().unwrap().status,
        RootStatus::Disabled
    );
    assert_eq!(
        get_string(s, &k, "alice").as_deref(),
        Some("100"),
        "other roots are unaffected"
    );
    s.enable_root(&rn("acme")).unwrap();
    assert_eq!(get_string(s, &t, "x").as_deref(), Some("y"));
}

#[test]
fn scheduled_destruction_can_be_cancelled_until_it_falls_due() {
    let mut fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    let k = kr("tenant");
    s.create_keyring(&k, None).unwrap();
    s.put(&k, b"a", b"1").unwrap();
    let when = s.schedule_keyring_destruction(&k, None).unwrap();
    let week = strongroom_core::Timestamp::now().saturating_add(Duration::from_secs(7 * 86400));
    assert!(
        when.unix_secs().abs_diff(week.unix_secs()) <= 2,
        "default waiting period is 7 days"
    );
    let e = s.get(&k, b"a").unwrap_err();
    assert!(
        matches!(e, StoreError::KeyringPendingDestruction { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("cancel-destroy"));
    assert!(s.run_due_destructions().unwrap().is_empty(), "not due yet");
    s.cancel_keyring_destruction(&k).unwrap();
    assert!(
        matches!(
            s.get(&k, b"a").unwrap_err(),
            StoreError::KeyringDisabled { .. }
        ),
        "cancel leaves it disabled"
    );
    s.enable_keyring(&k).unwrap();
    assert_eq!(get_string(s, &k, "a").as_deref(), Some("1"));

    // Due now: destroyed at the next open.
    s.schedule_keyring_destruction(&k, Some(Duration::ZERO))
        .unwrap();
    let s = fx.reopen();
    assert!(matches!(
        s.get(&k, b"a").unwrap_err(),
        StoreError::KeyringDestroyed { .. }
    ));
    assert_eq!(s.keyring(&k).unwrap().state, KeyState::Destroyed);
    assert!(matches!(
        s.cancel_keyring_destruction(&k).unwrap_err(),
        StoreError::Transition(_)
    ));
}

#[test]
fn a_due_destruction_that_cannot_run_does_not_lock_the_store() {
    let mut fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    let k = kr("due");
    s.create_keyring(&k, None).unwrap();
    s.put(&k, b"a", b"1").unwrap();
    s.create_root(&rn("other")).unwrap();
    let other = kr("other-data");
    s.create_keyring(&other, Some(&rn("other"))).unwrap();
    s.put(&other, b"b", b"2").unwrap();
    s.schedule_keyring_destruction(&k, Some(Duration::ZERO))
        .unwrap();
    // With the primary root disabled the audit key is out of reach, so the destruction (an
    // audited key operation) cannot be carried out at open; the store must open anyway. Its
    // catalog cannot be verified either (the catalog key derives from the audit key), so no
    // record is served until the primary root is usable again.
    s.disable_root(&rn("service")).unwrap();
    let s = fx.reopen();
    let e = s.get(&other, b"b").unwrap_err();
    assert!(
        matches!(e, StoreError::AuditUnavailable { .. }) && e.to_string().contains("catalog"),
        "{e}"
    );
    assert!(
        s.pending_jobs()
            .unwrap()
            .contains(&PendingJob::DueKeyringDestruction(k.clone())),
        "the due destruction is listed as unfinished work"
    );
    assert!(s.run_due_destructions().is_err());
    s.enable_root(&rn("service")).unwrap();
    assert_eq!(get_string(s, &other, "b").as_deref(), Some("2"));
    assert!(matches!(
        s.get(&k, b"a").unwrap_err(),
        StoreError::KeyringPendingDestruction { .. }
    ));
    let d = s.run_due_destructions().unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].keyring, k);
    assert_eq!(d[0].records, 1, "the records purged are counted");
    assert_eq!(s.keyring(&k).unwrap().state, KeyState::Destroyed);
    assert!(s.pending_jobs().unwrap().is_empty());
    assert!(s.verify_audit().unwrap().is_ok());
}

#[test]
fn destroy_now_erases_every_wrapped_key_and_record_of_the_keyring() {
    let mut fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    let k = kr("gone");
    s.create_keyring(&k, None).unwrap();
    for i in 0..50 {
        s.put(&k, format!("r{i}").as_bytes(), b"sensitive").unwrap();
    }
    s.create_keyring(&kr("kept"), None).unwrap();
    s.put(&kr("kept"), b"r", b"stays").unwrap();
    let info = s.keyring(&k).unwrap();
    assert!(!info.dek_versions.is_empty());
    // An unfinished re-encryption of it, which the destruction must not leave behind.
    s.rotate_dek(&k).unwrap();
    let interrupted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.reencrypt(&k, &mut |_| panic!("interrupted"))
    }));
    assert!(interrupted.is_err());
    assert!(
        s.pending_jobs()
            .unwrap()
            .contains(&PendingJob::Reencrypt(k.clone()))
    );
    let report = s.destroy_keyring_now(&k).unwrap();
    assert_eq!(report.records, 50);
    assert!(
        s.pending_jobs().unwrap().is_empty(),
        "{:?}",
        s.pending_jobs()
    );
    let e = s.get(&k, b"r1").unwrap_err();
    assert!(matches!(e, StoreError::KeyringDestroyed { .. }), "{e}");
    assert!(e.to_string().contains("crypto-shredded"));
    let info = s.keyring(&k).unwrap();
    assert!(
        info.dek_versions.is_empty() && info.kek_versions.is_empty(),
        "wrapped keys erased"
    );
    assert!(matches!(
        s.create_keyring(&k, None).unwrap_err(),
        StoreError::KeyringExists {
            destroyed: true,
            ..
        }
    ));
    assert_eq!(get_string(s, &kr("kept"), "r").as_deref(), Some("stays"));
    // Nothing of it is left in the database: no records, no wrapped keys.
    fx.with_raw_db_unchecked(|db| {
        let prefix = 1u64.to_be_bytes();
        for tree in ["records", "keks", "deks"] {
            assert_eq!(db.tree(tree).scan_prefix(prefix).len(), 0, "{tree}");
        }
        // No bookkeeping of it either: use counters, jobs.
        let leftovers: Vec<Vec<u8>> = db
            .tree("jobs")
            .iter()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| {
                [&b"uses/"[..], b"reencrypt/", b"purge/"]
                    .iter()
                    .any(|p| k.starts_with(&[*p, &prefix[..]].concat()))
            })
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let all: Vec<u8> = db
            .tree("records")
            .iter()
            .into_iter()
            .flat_map(|(_, v)| v)
            .collect();
        assert!(!all.windows(9).any(|w| w == b"sensitive"));
    });
}

#[test]
fn destroying_a_tenant_root_destroys_its_keyrings_and_the_backend_key() {
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    s.create_root(&rn("tenant-root")).unwrap();
    s.create_keyring(&kr("t1"), Some(&rn("tenant-root")))
        .unwrap();
    s.put(&kr("t1"), b"a", b"b").unwrap();
    let e = s.destroy_root_now(&rn("service")).unwrap_err();
    assert!(
        matches!(e, StoreError::InUse(_)) && e.to_string().contains("audit"),
        "{e}"
    );
    let d = s.destroy_root_now(&rn("tenant-root")).unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].keyring.as_str(), d[0].records), ("t1", 1));
    assert!(matches!(
        s.get(&kr("t1"), b"a").unwrap_err(),
        StoreError::KeyringDestroyed { .. }
    ));
    let id = RootKeyId::new(rn("tenant-root"), RootVersion::FIRST);
    assert_eq!(
        fx.backend.find_root(&id).unwrap().unwrap().status,
        RootStatus::Destroyed
    );
    assert!(s.verify_audit().unwrap().is_ok());
}

#[test]
fn a_root_destruction_the_backend_failed_is_listed_and_finished_later() {
    let mut fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    s.create_root(&rn("tenant-root")).unwrap();
    s.create_keyring(&kr("t1"), Some(&rn("tenant-root")))
        .unwrap();
    s.put(&kr("t1"), b"a", b"b").unwrap();
    fx.backend.set_admin_down(true);
    let e = s.destroy_root_now(&rn("tenant-root")).unwrap_err();
    assert!(e.to_string().contains("strongroom resume"), "{e}");
    // The store counts it destroyed at once; the backend still holds the key.
    assert!(matches!(
        s.get(&kr("t1"), b"a").unwrap_err(),
        StoreError::KeyringDestroyed { .. }
    ));
    let id = RootKeyId::new(rn("tenant-root"), RootVersion::FIRST);
    assert_eq!(
        fx.backend.find_root(&id).unwrap().unwrap().status,
        RootStatus::Enabled
    );
    let job = PendingJob::BackendDestroy(rn("tenant-root"));
    assert!(s.pending_jobs().unwrap().contains(&job));
    // The job survives a restart, and a second call finishes it.
    let s = fx.reopen();
    assert!(s.pending_jobs().unwrap().contains(&job));
    fx.backend.set_admin_down(false);
    let s = fx.store();
    s.destroy_root_now(&rn("tenant-root")).unwrap();
    assert_eq!(
        fx.backend.find_root(&id).unwrap().unwrap().status,
        RootStatus::Destroyed
    );
    assert!(s.pending_jobs().unwrap().is_empty());
    assert!(s.verify_audit().unwrap().is_ok());
}

#[test]
fn a_scheduled_root_destruction_disables_the_key_in_the_backend_until_it_falls_due() {
    let mut fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    let root = rn("tenant-root");
    let k = kr("t1");
    s.create_root(&root).unwrap();
    s.create_keyring(&k, Some(&root)).unwrap();
    s.put(&k, b"a", b"b").unwrap();
    let id = RootKeyId::new(root.clone(), RootVersion::FIRST);
    let status = |fx: &Fixture| fx.backend.find_root(&id).unwrap().unwrap().status;

    s.schedule_root_destruction(&root, None).unwrap();
    assert_eq!(
        status(&fx),
        RootStatus::Disabled,
        "disabled in the backend too"
    );
    let e = s.get(&k, b"a").unwrap_err();
    assert!(
        matches!(e, StoreError::RootPendingDestruction { .. }) && e.is_access_refused(),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("root cancel-destroy tenant-root"),
        "{e}"
    );
    s.cancel_root_destruction(&root).unwrap();
    assert_eq!(
        status(&fx),
        RootStatus::Disabled,
        "cancel leaves it disabled"
    );
    s.enable_root(&root).unwrap();
    assert_eq!(status(&fx), RootStatus::Enabled);
    assert_eq!(get_string(s, &k, "a").as_deref(), Some("b"));

    // A backend that fails the disable: scheduled in the store all the same, and `disable_root`
    // finishes the backend's part.
    fx.backend.set_admin_down(true);
    let e = s.schedule_root_destruction(&root, None).unwrap_err();
    assert!(e.to_string().contains("root disable"), "{e}");
    assert!(matches!(
        s.roots()
            .into_iter()
            .find(|r| r.name == root)
            .unwrap()
            .versions[0]
            .1,
        KeyState::PendingDestruction { .. }
    ));
    assert_eq!(status(&fx), RootStatus::Enabled);
    fx.backend.set_admin_down(false);
    s.disable_root(&root).unwrap();
    assert_eq!(status(&fx), RootStatus::Disabled);
    assert!(
        matches!(
            s.roots()
                .into_iter()
                .find(|r| r.name == root)
                .unwrap()
                .versions[0]
                .1,
            KeyState::PendingDestruction { .. }
        ),
        "still pending destruction"
    );

    // Due: destroyed at the next open, in the store and in the backend.
    s.cancel_root_destruction(&root).unwrap();
    s.schedule_root_destruction(&root, Some(Duration::ZERO))
        .unwrap();
    fx.reopen();
    let s = fx.store();
    assert!(matches!(
        s.get(&k, b"a").unwrap_err(),
        StoreError::KeyringDestroyed { .. }
    ));
    assert_eq!(status(&fx), RootStatus::Destroyed);
    assert!(s.pending_jobs().unwrap().is_empty());
    assert!(s.verify_audit().unwrap().is_ok());
}

#[test]
fn an_hsm_that_is_down_is_a_backend_error_for_key_operations_not_a_disabled_audit_root() {
    let mut fx = Fixture::new(StoreOptions::default());
    let k = kr("k");
    fx.store().create_keyring(&k, None).unwrap();
    // Down before the store opens, so the audit key cannot be unwrapped.
    fx.backend.set_down(true);
    let s = fx.reopen();
    let e = s.disable_keyring(&k).unwrap_err();
    assert!(
        matches!(
            &e,
            StoreError::Backend {
                source: BackendError::Device { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("audit key"), "{e}");
    fx.backend.set_down(false);
    let s = fx.store();
    s.disable_keyring(&k).unwrap();
    // A disabled primary root is what AuditUnavailable means.
    s.disable_root(&rn("service")).unwrap();
    let s = fx.reopen();
    let e = s.enable_keyring(&k).unwrap_err();
    assert!(matches!(e, StoreError::AuditUnavailable { .. }), "{e:?}");
}

#[test]
fn rewrapping_a_disabled_keyrings_kek_leaves_nothing_of_it_cached() {
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    let k = kr("t");
    s.create_root(&rn("acme")).unwrap();
    s.create_keyring(&k, Some(&rn("acme"))).unwrap();
    s.put(&k, b"a", b"b").unwrap();
    s.disable_keyring(&k).unwrap();
    assert_eq!(s.cached_keys(), 0, "disabling purges the cache");
    s.rotate_root(&rn("acme"), &mut no_progress()).unwrap();
    assert_eq!(
        s.cached_keys(),
        0,
        "the KEK unwrapped for the rewrap stays out of the cache while the keyring is disabled"
    );
    s.enable_keyring(&k).unwrap();
    assert_eq!(get_string(s, &k, "a").as_deref(), Some("b"));
    assert!(s.cached_keys() > 0, "an enabled keyring's keys are cached");
}

#[test]
fn dek_rolls_over_by_itself_and_the_counter_survives_restart() {
    let mut fx = Fixture::new(StoreOptions {
        dek_rollover_after: 5,
        ..StoreOptions::default()
    });
    let s = fx.store();
    let k = kr("hot");
    s.create_keyring(&k, None).unwrap();
    for i in 0..12 {
        s.put(&k, format!("k{i}").as_bytes(), b"v").unwrap();
    }
    assert_eq!(
        s.keyring(&k).unwrap().current_dek,
        DekVersion::new(3).unwrap()
    );
    assert_eq!(s.dek_uses(&k, DekVersion::new(3).unwrap()).unwrap(), 2);
    s.put(&k, b"k12", b"v").unwrap();
    let s = fx.reopen();
    // After a restart the whole reserved block counts as used: never under-counted.
    assert!(s.dek_uses(&k, DekVersion::new(3).unwrap()).unwrap() >= 3);
    s.put(&k, b"k13", b"v").unwrap();
    assert_eq!(
        s.keyring(&k).unwrap().current_dek,
        DekVersion::new(4).unwrap()
    );
    for i in 0..14 {
        assert_eq!(get_string(s, &k, &format!("k{i}")).as_deref(), Some("v"));
    }
    let rotations = s
        .audit_entries(1)
        .filter(|e| e.as_ref().unwrap().detail.contains("automatic rollover"))
        .count();
    assert_eq!(rotations, 3);
}

#[test]
fn steady_state_makes_zero_backend_calls() {
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    let k = kr("busy");
    s.create_keyring(&k, None).unwrap();
    s.put(&k, b"warm", b"up").unwrap();
    s.get(&k, b"warm").unwrap();
    let before = fx.backend.crypto_calls();
    for i in 0..1000 {
        s.put(&k, format!("k{i}").as_bytes(), b"value").unwrap();
        assert!(s.get(&k, format!("k{i}").as_bytes()).unwrap().is_some());
    }
    assert_eq!(
        fx.backend.crypto_calls(),
        before,
        "1000 puts and 1000 gets made backend calls"
    );
}

#[test]
fn the_ttl_bounds_how_long_an_outside_revocation_takes_to_bite() {
    let fx = Fixture::new(StoreOptions {
        cache_ttl: Duration::from_millis(300),
        ..StoreOptions::default()
    });
    let s = fx.store();
    s.create_root(&rn("customer")).unwrap();
    let k = kr("tenant");
    s.create_keyring(&k, Some(&rn("customer"))).unwrap();
    s.put(&k, b"a", b"1").unwrap();
    get_string(s, &k, "a");
    // The customer disables the key in their HSM, not through strongroom.
    fx.backend
        .disable_root(&RootKeyId::new(rn("customer"), RootVersion::FIRST))
        .unwrap();
    assert_eq!(
        get_string(s, &k, "a").as_deref(),
        Some("1"),
        "within the TTL the cached key still serves"
    );
    std::thread::sleep(Duration::from_millis(350));
    let e = s.get(&k, b"a").unwrap_err();
    assert!(
        matches!(
            &e,
            StoreError::Backend {
                source: BackendError::RootDisabled { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_access_refused());
    assert_eq!(s.cached_keys(), 0, "the refused keyring's keys are purged");
    fx.backend
        .enable_root(&RootKeyId::new(rn("customer"), RootVersion::FIRST))
        .unwrap();
    assert_eq!(get_string(s, &k, "a").as_deref(), Some("1"));
}

#[test]
fn a_backend_outage_fails_closed_or_serves_cached_keys_for_a_grace_period() {
    for (policy, served) in [
        (DownPolicy::FailClosed, false),
        (
            DownPolicy::ServeCached {
                grace: Duration::from_secs(60),
            },
            true,
        ),
    ] {
        let fx = Fixture::new(StoreOptions {
            cache_ttl: Duration::from_millis(100),
            down_policy: policy,
            ..StoreOptions::default()
        });
        let s = fx.store();
        let k = kr("r");
        s.create_keyring(&k, None).unwrap();
        s.put(&k, b"a", b"1").unwrap();
        get_string(s, &k, "a");
        fx.backend.set_down(true);
        std::thread::sleep(Duration::from_millis(150));
        let r = s.get(&k, b"a");
        if served {
            assert_eq!(r.unwrap().unwrap().expose(), b"1", "{policy:?}");
        } else {
            let e = r.unwrap_err();
            assert!(
                matches!(
                    &e,
                    StoreError::Backend {
                        source: BackendError::Device { .. },
                        ..
                    }
                ),
                "{e:?}"
            );
        }
        fx.backend.set_down(false);
        assert_eq!(get_string(s, &k, "a").as_deref(), Some("1"));
    }
    // Past the grace period even ServeCached refuses.
    let fx = Fixture::new(StoreOptions {
        cache_ttl: Duration::from_millis(50),
        down_policy: DownPolicy::ServeCached {
            grace: Duration::from_millis(50),
        },
        ..StoreOptions::default()
    });
    let s = fx.store();
    s.create_keyring(&kr("r"), None).unwrap();
    s.put(&kr("r"), b"a", b"1").unwrap();
    fx.backend.set_down(true);
    std::thread::sleep(Duration::from_millis(150));
    assert!(s.get(&kr("r"), b"a").is_err());
}

#[test]
fn concurrent_writers_and_readers_while_another_thread_rotates() {
    let fx = Fixture::new(StoreOptions {
        dek_rollover_after: 500,
        ..StoreOptions::default()
    });
    let s = fx.store().clone();
    let k = kr("shared");
    s.create_keyring(&k, None).unwrap();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (s, k) = (s.clone(), k.clone());
            scope.spawn(move || {
                for i in 0..400 {
                    let key = format!("t{t}/{}", i % 50);
                    let value = format!("{t}-{i}");
                    s.put(&k, key.as_bytes(), value.as_bytes()).unwrap();
                    assert_eq!(
                        get_string(&s, &k, &key),
                        Some(value),
                        "a thread must read its own last write"
                    );
                }
            });
        }
        let (s, k) = (s.clone(), k.clone());
        scope.spawn(move || {
            for _ in 0..5 {
                s.rotate_kek(&k).unwrap();
                s.rotate_dek(&k).unwrap();
                s.reencrypt(&k, &mut |_| {}).unwrap();
            }
        });
    });
    for t in 0..4 {
        assert_eq!(
            get_string(&s, &k, &format!("t{t}/49")),
            Some(format!("{t}-399"))
        );
    }
    assert!(s.verify_audit().unwrap().is_ok());
}

#[test]
fn backup_and_restore_keep_everything_sealed() {
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    let k = kr("ring");
    s.create_keyring(&k, None).unwrap();
    for i in 0..300 {
        s.put(
            &k,
            format!("k{i}").as_bytes(),
            format!("plaintext-{i}").as_bytes(),
        )
        .unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("store.backup");
    std::thread::scope(|scope| {
        let (s2, k2) = (s.clone(), k.clone());
        scope.spawn(move || {
            for i in 300..400 {
                s2.put(
                    &k2,
                    format!("k{i}").as_bytes(),
                    format!("plaintext-{i}").as_bytes(),
                )
                .unwrap();
            }
        });
        let report = s.backup(&file).unwrap();
        assert!(report.entries > 300);
    });
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        !bytes.windows(10).any(|w| w == b"plaintext-"),
        "no plaintext in the backup"
    );

    // Restore next to a copy of the soft key file (which the backup does not hold).
    let restored = tempfile::tempdir().unwrap();
    let meta = common::restore(&file, restored.path()).unwrap();
    assert_eq!(&meta, s.meta());
    drop(fx.store);
    let key_file = fx.dir.path().join(strongroom_core::soft::KEY_FILE_NAME);
    std::fs::copy(
        &key_file,
        restored.path().join(strongroom_core::soft::KEY_FILE_NAME),
    )
    .unwrap();
    drop(fx.backend);
    let backend: Arc<dyn Backend> = Arc::new(SoftBackend::open(restored.path()).unwrap());
    let r = common::open(
        restored.path(),
        TestBackend::new(backend),
        StoreOptions::default(),
    )
    .unwrap();
    let n = r.list(&k, b"k").unwrap().len();
    assert!((300..=400).contains(&n), "{n}");
    for i in 0..300 {
        assert_eq!(
            get_string(&r, &k, &format!("k{i}")),
            Some(format!("plaintext-{i}"))
        );
    }
    assert!(r.verify_audit().unwrap().is_ok());

    // A damaged backup is refused and leaves nothing behind.
    let mut damaged = bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 1;
    let bad = out.path().join("bad.backup");
    std::fs::write(&bad, damaged).unwrap();
    let target = tempfile::tempdir().unwrap();
    let e = common::restore(&bad, target.path()).unwrap_err();
    assert!(matches!(e, StoreError::BadBackup { .. }), "{e}");
    assert!(!common::holds_data(target.path()));

    // Well-formed checksums over bad contents (the checksum is no MAC: anyone can write one):
    // refused by the parser with what is wrong, and nothing left behind.
    let body = &bytes[..bytes.len() - 32];
    let resum = |body: &[u8]| {
        use sha2::Digest;
        let mut f = body.to_vec();
        f.extend_from_slice(&sha2::Sha256::digest(body));
        f
    };
    let mut huge_meta = body[..5].to_vec();
    huge_meta.extend_from_slice(&u32::MAX.to_be_bytes());
    huge_meta.extend_from_slice(&[0u8; 64]);
    let mut trailing = body.to_vec();
    trailing.push(0);
    for (crafted, why) in [
        (huge_meta, "it ends early"),
        (trailing, "it has bytes after its last tree"),
    ] {
        std::fs::write(&bad, resum(&crafted)).unwrap();
        let target = tempfile::tempdir().unwrap();
        let e = common::restore(&bad, target.path()).unwrap_err();
        assert!(
            matches!(&e, StoreError::BadBackup { why: w, .. } if w == why),
            "{why}: {e}"
        );
        assert!(!common::holds_data(target.path()));
    }
}

/// The limit the README states, shown: a keyring destruction does not reach a backup made
/// before it while the root lives; destroying the root (the key in the backend) does.
#[test]
fn only_destroying_the_root_shreds_what_an_older_backup_holds() {
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    s.create_root(&rn("tenant")).unwrap();
    let k = kr("tenant-data");
    s.create_keyring(&k, Some(&rn("tenant"))).unwrap();
    s.put(&k, b"a", b"secret").unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("before.backup");
    s.backup(&file).unwrap();
    let key_file = fx.dir.path().join(strongroom_core::soft::KEY_FILE_NAME);
    // The backup restored beside the backend as it is now (same root keys).
    let restore_now = || {
        let dir = tempfile::tempdir().unwrap();
        common::restore(&file, dir.path()).unwrap();
        std::fs::copy(
            &key_file,
            dir.path().join(strongroom_core::soft::KEY_FILE_NAME),
        )
        .unwrap();
        let backend: Arc<dyn Backend> = Arc::new(SoftBackend::open(dir.path()).unwrap());
        let r = common::open(
            dir.path(),
            TestBackend::new(backend),
            StoreOptions::default(),
        )
        .unwrap();
        (dir, r)
    };

    s.destroy_keyring_now(&k).unwrap();
    assert!(matches!(
        s.get(&k, b"a").unwrap_err(),
        StoreError::KeyringDestroyed { .. }
    ));
    let (_d1, old) = restore_now();
    assert_eq!(
        get_string(&old, &k, "a").as_deref(),
        Some("secret"),
        "the older copy still reads while the root lives"
    );
    drop(old);

    s.destroy_root_now(&rn("tenant")).unwrap();
    let (_d2, old) = restore_now();
    let e = old.get(&k, b"a").unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::RootDestroyed { .. } | StoreError::Backend { .. }
        ),
        "{e}"
    );
}

#[test]
fn a_batch_holds_at_most_one_deks_quota_of_puts() {
    // Found by the store-model fuzzer: a larger batch rolled the DEK over without end.
    let fx = Fixture::new(StoreOptions {
        dek_rollover_after: 2,
        ..StoreOptions::default()
    });
    let s = fx.store();
    let k = kr("b");
    s.create_keyring(&k, None).unwrap();
    let puts = |n: u8| {
        (0..n)
            .map(|i| BatchOp::Put(vec![i], vec![i]))
            .collect::<Vec<_>>()
    };
    let e = s.batch(&k, &puts(3)).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::TooLarge {
                limit: 2,
                found: 3,
                ..
            }
        ),
        "{e}"
    );
    assert!(s.list(&k, b"").unwrap().is_empty(), "nothing applied");
    s.batch(&k, &puts(2)).unwrap();
    s.batch(&k, &puts(2)).unwrap();
    assert_eq!(s.list(&k, b"").unwrap().len(), 2);
    assert!(s.keyring(&k).unwrap().current_dek.get() <= 3);
}

#[test]
fn an_interrupted_move_keeps_the_old_root_until_it_is_finished() {
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    s.create_root(&rn("old")).unwrap();
    s.create_root(&rn("new")).unwrap();
    let k = kr("moving");
    s.create_keyring(&k, Some(&rn("old"))).unwrap();
    for i in 0..600 {
        s.put(
            &k,
            format!("r{i:04}").as_bytes(),
            format!("v{i}").as_bytes(),
        )
        .unwrap();
    }
    // Interrupted after its first batch.
    let mut batches = 0;
    let interrupted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.move_keyring(&k, &rn("new"), &mut |p| {
            if p.done > 0 {
                batches += 1;
                panic!("interrupted");
            }
        })
    }));
    assert!(interrupted.is_err());
    let info = s.keyring(&k).unwrap();
    assert_eq!(info.root, rn("new"));
    assert_eq!(
        info.moving_from,
        Some(rn("old")),
        "it still depends on the old root"
    );
    assert!(s.pending_jobs().unwrap().contains(&PendingJob::Move {
        keyring: k.clone(),
        from: rn("old"),
        to: rn("new"),
    }));
    // Reads of records not yet re-encrypted and writes under the new root go on.
    assert_eq!(get_string(s, &k, "r0599").as_deref(), Some("v599"));
    s.put(&k, b"during", b"the move").unwrap();
    // The old root cannot go while something depends on it; another move must wait.
    for e in [
        s.destroy_root_now(&rn("old")).unwrap_err(),
        s.schedule_root_destruction(&rn("old"), None).unwrap_err(),
        s.move_keyring(&k, &rn("service"), &mut |_| {}).unwrap_err(),
    ] {
        assert!(matches!(e, StoreError::InUse(_)), "{e}");
        assert!(e.to_string().contains("strongroom resume"), "{e}");
    }
    // Disabling the old root stops the records still under it, and the move's progress.
    s.disable_root(&rn("old")).unwrap();
    s.purge_key_cache();
    assert!(s.get(&k, b"r0599").unwrap_err().is_access_refused());
    assert!(s.move_keyring(&k, &rn("new"), &mut |_| {}).is_err());
    s.enable_root(&rn("old")).unwrap();
    // Finished by calling it again (what `strongroom resume` does).
    let m = s.move_keyring(&k, &rn("new"), &mut |_| {}).unwrap();
    assert!(m.resumed);
    assert!(
        s.pending_jobs().unwrap().is_empty(),
        "{:?}",
        s.pending_jobs()
    );
    let info = s.keyring(&k).unwrap();
    assert_eq!(info.moving_from, None);
    assert_eq!(info.kek_versions.len(), 1);
    // Nothing depends on `old` any more: it can be disabled, even destroyed, and every record
    // still reads.
    s.destroy_root_now(&rn("old")).unwrap();
    s.purge_key_cache();
    for i in [0, 255, 256, 599] {
        assert_eq!(
            get_string(s, &k, &format!("r{i:04}")),
            Some(format!("v{i}"))
        );
    }
    assert_eq!(get_string(s, &k, "during").as_deref(), Some("the move"));
    assert!(s.verify_audit().unwrap().is_ok());
}

#[test]
fn writers_and_readers_keep_working_while_a_keyring_moves() {
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store().clone();
    s.create_root(&rn("new")).unwrap();
    let k = kr("busy");
    s.create_keyring(&k, None).unwrap();
    for i in 0..2000 {
        s.put(&k, format!("a{i}").as_bytes(), b"before").unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (s, k, stop) = (s.clone(), k.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                s.put(&k, format!("b{n}").as_bytes(), format!("w{n}").as_bytes())
                    .unwrap();
                assert_eq!(
                    s.get(&k, format!("a{}", n % 2000).as_bytes())
                        .unwrap()
                        .unwrap()
                        .expose(),
                    b"before"
                );
                n += 1;
            }
            n
        })
    };
    let m = s.move_keyring(&k, &rn("new"), &mut |_| {}).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = worker.join().unwrap();
    assert!(written > 0);
    assert!(m.reencrypted >= 2000);
    s.disable_root(&rn("service")).unwrap();
    s.purge_key_cache();
    for n in (0..written).step_by(7) {
        assert_eq!(
            get_string(&s, &k, &format!("b{n}")),
            Some(format!("w{n}")),
            "a record written during the move"
        );
    }
    assert_eq!(get_string(&s, &k, "a1999").as_deref(), Some("before"));
}
