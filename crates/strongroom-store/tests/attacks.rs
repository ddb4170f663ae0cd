//! Attacks on crypto-shredding, moves, the authenticated catalog and one store per namespace,
//! found by an adversarial review: each test reproduces one attack that worked on the code it
//! was written against (the `FINDING` in its doc comment) and asserts the behaviour that stops it
//! (its `Correct:`), which the code has now. Three findings are limits documented in README
//! instead (sled's unlinked blob files, record keys in a data-access audit log, sled's
//! process-wide transaction lock).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Fixture, RawDb, kr, rn};
use strongroom_core::{KeyState, WrappedKey};
use strongroom_store::format::KeyringEntry;
use strongroom_store::{PendingJob, Store, StoreError, StoreOptions};
use strongroom_test_support::disk::Needles;

// ----- helpers -----

fn db_dir(fx: &Fixture) -> PathBuf {
    strongroom_store::database_dir(fx.dir.path()).unwrap()
}

/// Closes the store, applies `edit` to the raw database (what someone who can write the data
/// directory or the database but holds no key can do), and opens the store again.
fn edit_and_open(fx: &mut Fixture, edit: impl FnOnce(&RawDb)) -> Result<Store, StoreError> {
    fx.with_raw_db_unchecked(edit);
    // The engine's lock is released a moment after the last handle drops.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match fx.open() {
            Err(StoreError::Storage { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// A sealed catalog value split into the entry and its MAC.
fn unseal(v: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (body, mac) = v.split_at(v.len() - 32);
    (body.to_vec(), mac.to_vec())
}

/// A keyring entry as a version-1 (pre-sealing, unsealed) store wrote it.
fn as_v1_keyring(e: &KeyringEntry) -> Vec<u8> {
    let e = KeyringEntry {
        moving_from: None,
        former_roots: Vec::new(),
        ..e.clone()
    };
    let mut v1 = e.to_bytes();
    v1.truncate(v1.len() - 2);
    v1[0] = 1;
    v1
}

/// A store with keyring `off` (under the primary root) holding a record, then disabled.
fn store_with_disabled_keyring() -> Fixture {
    let fx = Fixture::new(StoreOptions::default());
    let s = fx.store();
    s.create_keyring(&kr("off"), None).unwrap();
    s.put(&kr("off"), b"alice", b"salary=100000").unwrap();
    s.disable_keyring(&kr("off")).unwrap();
    assert!(s.get(&kr("off"), b"alice").unwrap_err().is_access_refused());
    s.flush().unwrap();
    fx
}

// ===================== the authenticated catalog =====================

/// FINDING (high): the audit anchor file is, byte for byte, a valid version-1 audit head
/// (`seq | hash | HMAC(audit key, "strongroom/audit/head/v1" ‖ seq ‖ hash)`), and a version-1
/// head is what marks a store "from before the sealed catalog". Someone who can write the data
/// directory but holds no key copies `audit-anchor` over the head in the database, rewrites every
/// catalog entry in the unsealed version-1 format with whatever state they like, and the store
/// opens: it even *seals* the forged entries with fresh MACs in its one-time "upgrade" commit, and
/// `verify_audit` is clean afterwards. Here a disabled keyring is turned back on and read.
///
/// Correct: once a store's catalog is sealed it can never be treated as a pre-sealing store
/// again (a downgraded head, or unsealed entries, are a `CatalogIntegrity` error at open); the
/// anchor must not be a valid head (give it its own MAC domain).
#[test]
fn a_catalog_downgraded_with_the_anchor_as_its_head_is_refused() {
    let mut fx = store_with_disabled_keyring();
    let anchor = std::fs::read(fx.dir.path().join(strongroom_store::ANCHOR_FILE)).unwrap();
    assert_eq!(
        anchor.len(),
        73,
        "a version-2 anchor, with a MAC domain of its own"
    );
    let r = edit_and_open(&mut fx, |db| {
        let meta = db.tree("meta");
        assert_eq!(meta.get("audit_head").unwrap().len(), 104, "a v2 head");
        meta.insert("audit_head", &anchor);
        let roots = db.tree("roots");
        for (k, v) in roots.iter() {
            let (mut body, _) = unseal(&v);
            body[0] = 1;
            roots.insert(k, body);
        }
        let keyrings = db.tree("keyrings");
        for (k, v) in keyrings.iter() {
            let (body, _) = unseal(&v);
            let mut e = KeyringEntry::parse(&body).unwrap();
            e.state = KeyState::Enabled;
            keyrings.insert(k, as_v1_keyring(&e));
        }
    });
    match r {
        Err(e) => assert!(
            e.is_integrity(),
            "refused, but not as an integrity error: {e}"
        ),
        Ok(s) => {
            let read = s.get(&kr("off"), b"alice");
            let audit_clean = s.verify_audit().map(|r| r.is_ok());
            panic!(
                "a downgraded catalog opened: read of the disabled keyring = {:?}, verify_audit clean = {audit_clean:?}",
                read.map(|p| p.map(|p| String::from_utf8_lossy(p.expose()).into_owned()))
            );
        }
    }
}

/// FINDING (high): a damaged wrapped audit key makes `Store::open` skip the catalog check
/// (`store.audit_key().ok()` in `Store::open` swallows the `KeyIntegrity` error as if the primary
/// root were merely disabled), and the unverified catalog is then believed for every read and
/// write. Someone who can write the database flips one byte of `meta/audit_key` and the state
/// byte of a disabled keyring (keeping its old, now wrong, MAC): the store opens and serves the
/// disabled keyring's plaintext.
///
/// Correct: an audit key that fails its integrity check (or a primary root that is missing)
/// is an integrity error at open; and while the catalog cannot be verified, nothing that
/// depends on it (keyring state, root assignment) should be served - or at least not a state
/// that differs from what the store last verified.
#[test]
fn a_damaged_audit_key_is_refused_at_open_and_never_skips_the_catalog_check() {
    let mut fx = store_with_disabled_keyring();
    let r = edit_and_open(&mut fx, |db| {
        let meta = db.tree("meta");
        let mut blob = meta.get("audit_key").unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 0x01;
        meta.insert("audit_key", blob);
        let keyrings = db.tree("keyrings");
        let (body, mac) = unseal(&keyrings.get("off").unwrap());
        let mut e = KeyringEntry::parse(&body).unwrap();
        e.state = KeyState::Enabled;
        keyrings.insert("off", [e.to_bytes(), mac].concat());
    });
    match r {
        Err(e) => assert!(
            e.is_integrity(),
            "refused, but not as an integrity error: {e}"
        ),
        Ok(s) => {
            let read = s.get(&kr("off"), b"alice");
            assert!(
                read.is_err(),
                "a tampered catalog was believed: the disabled keyring served {:?}",
                read.map(|p| p.map(|p| String::from_utf8_lossy(p.expose()).into_owned()))
            );
        }
    }
}

/// FINDING (high): the jobs tree is not authenticated, and a `backend-destroy/<root>` entry in
/// it is reported by `pending_jobs` as `PendingJob::BackendDestroy(root)` whatever the
/// (authenticated) catalog says about that root. Its documented way to finish is
/// `Store::destroy_root_now`, which is exactly what `strongroom resume` calls for it
/// (`crates/strongroom-cli/src/ops.rs`, `PendingJob::BackendDestroy(r) => s.destroy_root_now(r)`):
/// someone who can write the database (no key needed) plants the entry, and the operator's next
/// routine `strongroom resume` destroys a live tenant root in the HSM and every keyring under it.
///
/// Correct: a backend-destroy job is only believed for a root the verified catalog already has
/// as destroyed (like `finish_purges` only purges keyrings the catalog says are destroyed);
/// otherwise it is an integrity error naming the job, never a pending destruction.
#[test]
fn a_forged_backend_destroy_job_never_destroys_a_live_root() {
    let mut fx = Fixture::new(StoreOptions::default());
    fx.store().create_root(&rn("tenant")).unwrap();
    fx.store()
        .create_keyring(&kr("t"), Some(&rn("tenant")))
        .unwrap();
    fx.store().put(&kr("t"), b"doc", b"contract").unwrap();
    fx.store().flush().unwrap();
    let s = edit_and_open(&mut fx, |db| {
        db.tree("jobs").insert(b"backend-destroy/tenant", b"");
    })
    .expect("opens");
    let jobs = s.pending_jobs().unwrap();
    // What `strongroom resume` does with the job list.
    for j in &jobs {
        if let PendingJob::BackendDestroy(r) = j {
            let _ = s.destroy_root_now(r);
        }
    }
    let alive = s.get(&kr("t"), b"doc");
    assert!(
        !jobs.contains(&PendingJob::BackendDestroy(rn("tenant"))),
        "a forged job was listed as a pending backend destruction of an enabled root; after `resume`, a read of the tenant's keyring gives {:?}",
        alive.map(|p| p.is_some())
    );
}

/// FINDING (medium): a missing `audit-anchor` is taken for "a store that never had a key
/// operation", although every store writes one at creation. So the documented rollback check
/// is switched off by deleting a file: someone who kept an older copy of one sealed keyring
/// entry and of the audit head (read from the database at any earlier time) puts them back,
/// cuts the audit log back to that head, deletes the anchor, and the store opens with the
/// keyring enabled again; `verify_audit` reports nothing. (README: "someone who can write the
/// database ... cannot ... put back an older copy of one: the store refuses to open".)
///
/// Correct: a store whose audit log is not empty and whose anchor is missing is refused at open
/// (or at least `verify_audit` reports the missing anchor); e.g. record in the MACed head that
/// an anchor has been written.
#[test]
fn deleting_the_anchor_does_not_hide_an_old_catalog_put_back() {
    let mut fx = Fixture::new(StoreOptions::default());
    fx.store().create_keyring(&kr("live"), None).unwrap();
    fx.store()
        .put(&kr("live"), b"alice", b"salary=100000")
        .unwrap();
    fx.store().flush().unwrap();
    // What a reader of the database keeps while `live` is enabled.
    let mut old: Option<(Vec<u8>, Vec<u8>, u64)> = None;
    fx.with_raw_db(|db| {
        let head = db.tree("meta").get("audit_head").unwrap();
        let entry = db.tree("keyrings").get("live").unwrap();
        let seq = u64::from_be_bytes(head[..8].try_into().unwrap());
        old = Some((head, entry, seq));
    });
    let (old_head, old_entry, old_seq) = old.unwrap();
    fx.store().disable_keyring(&kr("live")).unwrap();
    fx.store().flush().unwrap();
    std::fs::remove_file(fx.dir.path().join(strongroom_store::ANCHOR_FILE)).unwrap();
    let r = edit_and_open(&mut fx, |db| {
        db.tree("meta").insert("audit_head", &old_head);
        db.tree("keyrings").insert("live", &old_entry);
        let audit = db.tree("audit");
        for (k, _) in audit.range_from((old_seq + 1).to_be_bytes()) {
            audit.remove(k);
        }
    });
    match r {
        Err(e) => assert!(
            e.is_integrity() || matches!(e, StoreError::RolledBack { .. }),
            "{e}"
        ),
        Ok(s) => {
            let read = s.get(&kr("live"), b"alice");
            let audit_clean = s.verify_audit().map(|r| r.is_ok());
            panic!(
                "a rolled-back catalog opened without its anchor: read of the disabled keyring = {:?}, verify_audit clean = {audit_clean:?}",
                read.map(|p| p.map(|p| String::from_utf8_lossy(p.expose()).into_owned()))
            );
        }
    }
}

// ===================== bytes left on disk =====================

/// The sealed records and wrapped keys of keyring `name`, from the raw database.
fn needles_of(fx: &mut Fixture, name: &str) -> Needles {
    let mut needles = Needles::new();
    fx.with_raw_db(|db| {
        let entry =
            KeyringEntry::parse_stored(&db.tree("keyrings").get(name.as_bytes()).unwrap()).unwrap();
        let prefix = entry.id.to_be_bytes();
        for tree in ["keks", "deks"] {
            for (k, v) in db.tree(tree).scan_prefix(prefix) {
                needles.add(
                    format!("{name} {tree} {k:?}"),
                    WrappedKey::parse(&v).unwrap().payload(),
                );
            }
        }
        for (k, v) in db.tree("records").scan_prefix(prefix) {
            needles.add(
                format!("{name} record {:?}", String::from_utf8_lossy(&k[8..])),
                &v[5..],
            );
        }
    });
    needles
}
// ===================== one store per namespace (PKCS#11, SoftHSM2) =====================

mod pkcs11 {
    use std::sync::{Arc, Barrier};

    use strongroom_pkcs11::Pkcs11Backend;
    use strongroom_store::{StoreError, StoreOptions};
    use strongroom_test_support::softhsm::Token;
    use strongroom_test_support::softhsm_tests;
    use strongroom_test_support::wrappers::TestBackend;

    use super::{common, kr, rn};

    fn backend(token: &Token) -> Arc<Pkcs11Backend> {
        common::pkcs11_backend(token)
    }

    softhsm_tests! {
        // FINDING (medium): the "interrupted init in the same directory is taken over" rule
        // looks only at the claim's path string. A store whose data directory was moved (a
        // disk migration, `mv`, a restore elsewhere) or deleted leaves a claim naming a path
        // with no database; the next `init` at that path takes the namespace over: it
        // replaces the claim and *adopts* the first store's enabled primary root `service/v1`
        // (`ensure_backend_root`: RootExists + enabled = "ours from an interrupted attempt").
        // Two stores now share one root (what issue 10 item 5 is about), and the first one is
        // refused at its next open (its keys "belong to another store").
        //
        // Correct: take over only what an interrupted init can have left (e.g. a marker file
        // in the directory written before the claim, naming the store id the claim holds), or
        // refuse and name the store id and path the claim holds.
        fn a_create_where_a_moved_store_was_is_refused(token) {
            let dir = tempfile::tempdir().unwrap();
            let (a, moved) = (dir.path().join("a"), dir.path().join("moved"));
            let b = backend(token);
            let sa = common::create(&a, b.clone(), &rn("service"), StoreOptions::default()).unwrap();
            sa.create_keyring(&kr("k"), None).unwrap();
            sa.put(&kr("k"), b"alice", b"salary=100000").unwrap();
            sa.flush().unwrap();
            drop(sa);
            std::fs::rename(&a, &moved).unwrap();
            // The first store, moved, still opens before anything else happens.
            drop(common::open(&moved, b.clone(), StoreOptions::default()).unwrap());

            let r = common::create(&a, b.clone(), &rn("service"), StoreOptions::default());
            match r {
                Err(e) => assert!(matches!(e, StoreError::KeysOfAnotherStore { .. }), "{e}"),
                Ok(sb) => {
                    let first = common::open(&moved, b.clone(), StoreOptions::default()).map(|_| ());
                    panic!(
                        "a second store was created on the first store's namespace, sharing its primary root {:?}; the first store now opens as: {first:?}",
                        sb.roots().iter().map(|r| r.name.to_string()).collect::<Vec<_>>()
                    );
                }
            }
        }

        // FINDING (low): `claim_backend` reads the claim and lists the roots, then writes its
        // claim: two inits on one namespace at the same time both see an empty namespace, both
        // write a claim (the last one wins), and the second `generate_root(service/v1)` finds
        // the first's key and adopts it. Both stores are created and share one primary root.
        // (Made deterministic here by holding both inits at `set_store_claim`.)
        //
        // Correct: at most one of two concurrent inits succeeds: create the claim object
        // atomically (`C_CreateObject` of a label that must not exist, checked after), or
        // re-read the claim after generating the primary root and refuse if it is not ours;
        // never adopt an existing primary root in `create` unless the claim was ours before.
        fn two_concurrent_creates_on_one_namespace_never_share_a_root(token) {
            let dir = tempfile::tempdir().unwrap();
            let b = backend(token);
            let both = Arc::new(Barrier::new(2));
            let run = |name: &str| {
                let gate = TestBackend::new(b.clone());
                let both = both.clone();
                gate.before_claim(move || {
                    both.wait();
                });
                let path = dir.path().join(name);
                std::thread::spawn(move || {
                    common::create(&path, gate, &rn("service"), StoreOptions::default())
                        .map(|s| hex(&s.meta().store_id))
                })
            };
            let (x, y) = (run("x"), run("y"));
            let (x, y) = (x.join().unwrap(), y.join().unwrap());
            assert!(
                x.is_err() || y.is_err(),
                "both concurrent inits created a store on the same namespace (sharing service/v1): {x:?} {y:?}"
            );
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}

// ===================== compaction that does not finish =====================

/// `chattr` on one file (the test runs as root, so permission bits would not stop a write; the
/// immutable attribute does).
fn chattr(flag: &str, path: &Path) {
    let ok = std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "chattr {flag} {}", path.display());
}

/// FINDING (low): a compaction whose shredding of the old generation fails (an I/O error after
/// the switch; simulated with an immutable file) has already dropped its job: the job key is
/// never copied into the new generation. `destroy_keyring_now` returns the error, but from then
/// on `pending_jobs` is empty, `finish_compaction` (what `strongroom resume` and `compact` run)
/// reports nothing to do, and a later compaction shreds only its own predecessor: the old
/// generation, with every byte of the destroyed keyring, stays in the data directory until the
/// process happens to reopen the store (`shred_other_generations` at open). A long-running
/// service never does.
///
/// Correct: the job (or a "shred db.<N>" job) stays until the old generation is gone, and every
/// compaction (and `finish_compaction`) shreds every generation other than the current one.
#[test]
fn a_compaction_whose_shredding_fails_keeps_its_job() {
    // sled's generation files (an immutable file in the old one): on sled in both modes.
    let mut fx = Fixture::on_sled(StoreOptions::default());
    let gone = kr("payroll");
    fx.store().create_keyring(&gone, None).unwrap();
    for i in 0..20 {
        fx.store()
            .put(&gone, format!("r{i}").as_bytes(), &[b'v'; 1024])
            .unwrap();
    }
    fx.store().flush().unwrap();
    let needles = needles_of(&mut fx, "payroll");
    let old_gen = db_dir(&fx);
    let stuck = old_gen.join("conf");
    chattr("+i", &stuck);
    let r = fx.store().destroy_keyring_now(&gone);
    chattr("-i", &stuck);
    assert!(r.is_err(), "the shredding failed: {r:?}");
    assert_ne!(db_dir(&fx), old_gen, "the switch happened");
    // The failure is over (the file can be written again); the operator runs `resume`.
    let pending = fx.store().pending_jobs().unwrap();
    let finished = fx.store().finish_compaction().unwrap();
    let left = needles.find_in_dir(fx.dir.path());
    assert!(
        left.is_empty(),
        "{} of {} destroyed byte strings are still in {} (pending jobs: {pending:?}, finish_compaction: {finished:?})",
        left.len(),
        needles.len(),
        old_gen.display()
    );
}

// ===================== a compaction racing a destruction =====================

mod race {
    use std::sync::Arc;
    use std::time::Duration;

    use strongroom_core::{Backend, SoftBackend};
    use strongroom_store::{Store, StoreOptions};
    use strongroom_test_support::wrappers::TestBackend;

    use super::common::{self, Fixture};
    use super::{kr, needles_of, rn};

    /// FINDING (low): a compaction computes the set of destroyed keyrings whose entries it leaves
    /// behind when it starts, but drops the `compact` job key when it copies, possibly much
    /// later (it waits up to 10 s for scans in flight). A destruction committed while it waits
    /// (its keys removed, its records not yet purged, its own `compact` job written) is copied
    /// into the new generation records and all; the destruction then purges the records from the
    /// *new* generation (sled keeps the bytes in its log) and finds no `compact` job, so it
    /// never compacts. The destroyed keyring's sealed records stay in the current generation's
    /// files, and `pending_jobs` is empty. (Two lifecycle calls from two threads of a service:
    /// `compact` or any destruction or move, and a root's destruction. Here an audit iterator
    /// holds the compaction off while the destruction starts.)
    ///
    /// Correct: the copy filter decides from the catalog as it is when the copy starts (under
    /// the slot's write lock), and a `compact` job written after the filter's decision is kept
    /// (e.g. a generation counter in the job, or re-check for pending jobs after the switch).
    #[test]
    fn a_destruction_during_a_compaction_still_leaves_nothing_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let soft: Arc<dyn Backend> = Arc::new(SoftBackend::create(dir.path()).unwrap());
        let backend = TestBackend::new(soft);
        let options = StoreOptions::default();
        let store =
            Store::create(dir.path(), backend.clone(), &rn("service"), options.clone()).unwrap();
        // What is left in sled's files: on sled in both modes.
        let mut fx = Fixture {
            dir,
            backend,
            store: Some(store),
            options,
            engine: common::EngineKind::Sled,
        };
        fx.store().create_root(&rn("acme")).unwrap();
        fx.store()
            .create_keyring(&kr("y"), Some(&rn("acme")))
            .unwrap();
        for i in 0..20 {
            fx.store()
                .put(&kr("y"), format!("r{i}").as_bytes(), &[b'v'; 1024])
                .unwrap();
        }
        fx.store().flush().unwrap();
        let needles = needles_of(&mut fx, "y");
        let s = fx.store().clone();

        // Someone reads the audit log; meanwhile a compaction starts and waits for the read.
        let reading = s.audit_entries(1);
        let compaction = {
            let s = s.clone();
            std::thread::spawn(move || s.compact())
        };
        std::thread::sleep(Duration::from_millis(300));
        // The tenant's root is destroyed meanwhile (it waits for the compaction: the compaction
        // holds key changes off from the moment it decides what to leave behind).
        let destruction = {
            let s = s.clone();
            std::thread::spawn(move || s.destroy_root_now(&rn("acme")))
        };
        std::thread::sleep(Duration::from_millis(300));
        // The read ends; the waiting compaction runs, then the destruction, which compacts.
        drop(reading);
        compaction.join().unwrap().unwrap();
        let destroyed = destruction.join().unwrap().unwrap();
        assert_eq!(destroyed.len(), 1);

        let pending = s.pending_jobs().unwrap();
        let left = needles.find_in_dir(fx.dir.path());
        assert!(
            left.is_empty(),
            "{} of {} byte strings of the destroyed keyring are still on disk, e.g. {:?}; pending jobs: {pending:?}",
            left.len(),
            needles.len(),
            left.first()
        );
    }
}

// ===================== store metadata outside the catalog =====================

/// FINDING (medium): the store's metadata (`meta/store`), and in it the name of the primary
/// root, is neither sealed nor in the catalog digest. Someone who can write the database (no
/// key) renames the primary root there to a tenant's root: the store opens without a word, every
/// keyring created without `--root` now lands under the tenant's root (a key the tenant controls
/// in their own HSM, and may destroy), and the real primary root - which wraps the audit key -
/// is no longer protected from `root destroy` (its destruction would make every key operation
/// of the store fail for good), while the tenant's root now is.
///
/// Correct: the metadata (at least the primary root's name) is authenticated like the catalog
/// (sealed, and in the digest), or cross-checked against the root the wrapped audit key names;
/// a change is an integrity error at open.
#[test]
fn metadata_naming_another_primary_root_is_refused() {
    let mut fx = Fixture::new(StoreOptions::default());
    fx.store().create_root(&rn("tenant")).unwrap();
    fx.store().flush().unwrap();
    let r = edit_and_open(&mut fx, |db| {
        let t = db.tree("meta");
        let mut m = strongroom_store::format::StoreMeta::parse(&t.get("store").unwrap()).unwrap();
        m.primary_root = rn("tenant");
        t.insert("store", m.to_bytes());
    });
    let s = match r {
        Err(e) => {
            assert!(
                e.is_integrity(),
                "refused, but not as an integrity error: {e}"
            );
            return;
        }
        Ok(s) => s,
    };
    let new = s.create_keyring(&kr("new-customer"), None).unwrap();
    let primary: Vec<String> = s
        .roots()
        .iter()
        .filter(|r| r.primary)
        .map(|r| r.name.to_string())
        .collect();
    let service_destroyable = s
        .schedule_root_destruction(&rn("service"), Some(Duration::from_secs(3600)))
        .is_ok();
    panic!(
        "changed metadata was believed: a default keyring went under root {}, the store calls {primary:?} primary, scheduling service's destruction allowed: {service_destroyable}",
        new.root
    );
}

/// FINDING (low): `Store::create` checks only that the *current* generation's directory does
/// not exist. In a store directory whose `db-current` is missing (lost, or a copy made without
/// it) but whose database lives in `db.<N>`, `Store::open` says "not a store", and
/// `Store::create` goes ahead - and its `Storage::open` zeroes and deletes `db.<N>`, the whole
/// existing database, as "a leftover of an interrupted compaction". (The CLI's `init` is
/// protected by its own checks of `strongroom.conf` and `audit-anchor`; a library user is not.)
///
/// Correct: `create` refuses a directory holding any generation (`db`, `db.<N>`), and `open`
/// of a directory with generations but no `db-current` is a "damaged" error naming them,
/// never "not a store"; nothing is ever shredded unless `db-current` names another generation.
#[test]
fn create_never_shreds_a_database_whose_db_current_is_missing() {
    // sled's generation directories and `db-current`: on sled in both modes.
    let mut fx = Fixture::on_sled(StoreOptions::default());
    fx.store().create_keyring(&kr("k"), None).unwrap();
    fx.store()
        .put(&kr("k"), b"alice", b"salary=100000")
        .unwrap();
    fx.store().compact().unwrap();
    fx.store().flush().unwrap();
    fx.store = None;
    let gen1 = fx.dir.path().join("db.1");
    assert!(gen1.is_dir());
    std::fs::remove_file(fx.dir.path().join(strongroom_store::CURRENT_DB_FILE)).unwrap();
    let opened = Store::open(fx.dir.path(), fx.backend.clone(), fx.options.clone()).map(|_| ());
    let created = Store::create(
        fx.dir.path(),
        fx.backend.clone(),
        &rn("other"),
        StoreOptions::default(),
    )
    .map(|_| ());
    assert!(
        gen1.is_dir(),
        "the existing database db.1 was shredded by Store::create (open said {opened:?}; create said {created:?})"
    );
}

// ===================== data-access auditing and sled's transactions =====================
// ===================== a second opener during a compaction =====================

/// FINDING (high, data loss): `Storage::open` shreds every generation directory other than the
/// one `db-current` names *before* it tries to take sled's lock - and gives up waiting for the
/// lock after 5 s and shreds anyway. A second opener of the same directory (the operator's
/// `strongroom jobs`/`doctor`/`audit verify` while the service runs, which should just fail
/// with "locked"; or a second `Store::open` in the same process) that starts while the running
/// store compacts reads `db-current` from before the switch and zeroes and deletes the new
/// generation the running store is writing - and is about to switch to, and then runs on, its
/// files unlinked. Everything is gone: at the next open the store is "not a store", or empty.
///
/// Correct: nothing is shredded by an opener that does not hold the store (take a lock on the
/// store directory itself, e.g. a `lock` file, before reading `db-current` or touching any
/// generation), and never a directory whose sled lock someone holds.
#[test]
fn a_second_open_during_a_compaction_is_refused_and_shreds_nothing() {
    // sled's generation directories: on sled in both modes.
    let mut fx = Fixture::on_sled(StoreOptions::default());
    let k = kr("k");
    fx.store().create_keyring(&k, None).unwrap();
    for b in 0..40 {
        let ops: Vec<strongroom_store::BatchOp> = (0..1000)
            .map(|i| {
                strongroom_store::BatchOp::Put(format!("r{b}/{i}").into_bytes(), vec![b'v'; 200])
            })
            .collect();
        fx.store().batch(&k, &ops).unwrap();
    }
    fx.store().put(&k, b"alice", b"salary=100000").unwrap();
    fx.store().flush().unwrap();
    let s = fx.store().clone();
    let compaction = std::thread::spawn(move || s.compact().map(|r| r.generation));
    let next = fx.dir.path().join("db.1");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !next.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction started"
        );
        std::thread::yield_now();
    }
    // A second opener, while the copy runs: it must fail (the store is in use) and touch nothing.
    let second = Store::open(fx.dir.path(), fx.backend.clone(), fx.options.clone()).map(|_| ());
    let compacted = compaction.join().unwrap();
    let still_there = fx.store().get(&k, b"alice").map(|v| v.is_some());
    fx.store().flush().map_err(|e| e.to_string()).ok();
    fx.store = None;
    let reopened = Store::open(fx.dir.path(), fx.backend.clone(), fx.options.clone())
        .and_then(|s| s.get(&k, b"alice").map(|v| v.map(|v| v.expose().to_vec())));
    assert!(
        matches!(&reopened, Ok(Some(v)) if v == b"salary=100000"),
        "after a second open during a compaction the store is lost: reopened = {reopened:?} (second open: {second:?}; compaction: {compacted:?}; the running store read alice as {still_there:?})"
    );
}
