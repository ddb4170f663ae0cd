//! Crypto-shredding, checked on the disk: after a destruction, no byte sequence of the destroyed
//! keyring's wrapped KEKs, wrapped DEKs or sealed records is left in any file under the store
//! directory (read raw, not through the store). Each test first checks that the same scan finds
//! every needle before the destruction, so a scan that cannot see is caught. These are about
//! sled's files: they run on sled whatever `STRONGROOM_TEST_ENGINE` says.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Fixture, get_string, kr, rn};
use strongroom_core::{KeyringName, WrappedKey};
use strongroom_store::StoreOptions;
use strongroom_store::format::KeyringEntry;
use strongroom_test_support::disk::Needles;

/// A value of `len` bytes that differs per (keyring, index).
fn value(tag: &str, i: usize, len: usize) -> Vec<u8> {
    let mut v = format!("{tag}/{i}/").into_bytes();
    v.resize(len, b'.');
    v
}

/// Every wrapped KEK and DEK payload and every sealed record (from its nonce on: the random
/// part) of the keyrings `names`, read from the raw database.
fn needles_of(fx: &mut Fixture, names: &[&str]) -> Needles {
    let mut needles = Needles::new();
    fx.with_raw_db(|db| {
        let keyrings = db.tree("keyrings");
        for name in names {
            let entry =
                KeyringEntry::parse_stored(&keyrings.get(name.as_bytes()).unwrap()).unwrap();
            let prefix = entry.id.to_be_bytes();
            for tree in ["keks", "deks"] {
                for (k, v) in db.tree(tree).scan_prefix(prefix) {
                    let blob = WrappedKey::parse(&v).unwrap();
                    needles.add(format!("{name} {tree} {k:?}"), blob.payload());
                }
            }
            for (k, v) in db.tree("records").scan_prefix(prefix) {
                needles.add(
                    format!("{name} record {:?}", String::from_utf8_lossy(&k[8..])),
                    &v[5..],
                );
            }
        }
    });
    needles
}

fn fill(fx: &Fixture, k: &KeyringName, n: usize) {
    for i in 0..n {
        fx.store()
            .put(k, format!("r{i}").as_bytes(), &value(k.as_str(), i, 1024))
            .unwrap();
    }
}

fn assert_all_present(fx: &Fixture, needles: &Needles) {
    let found = fx_scan(fx, needles);
    assert_eq!(
        found.len(),
        needles.len(),
        "the scan must see every needle before the destruction"
    );
}

fn fx_scan(fx: &Fixture, needles: &Needles) -> Vec<strongroom_test_support::disk::Found> {
    needles.find_in_dir(fx.dir.path())
}

fn assert_none_left(fx: &Fixture, needles: &Needles, when: &str) {
    let found = fx_scan(fx, needles);
    assert!(
        found.is_empty(),
        "{when}: {} of {} destroyed byte strings are still on disk, e.g. {:?}",
        found.len(),
        needles.len(),
        found.first()
    );
}

#[test]
fn destroying_a_keyring_now_leaves_none_of_its_bytes_in_any_file() {
    let mut fx = Fixture::on_sled(StoreOptions::default());
    let (gone, kept) = (kr("payroll"), kr("kept"));
    // Under the primary root, which can never be destroyed: the store's own shred must hold.
    fx.store().create_keyring(&gone, None).unwrap();
    fx.store().create_keyring(&kept, None).unwrap();
    fill(&fx, &gone, 20);
    fill(&fx, &kept, 20);
    // More versions of its keys, and records under two DEKs.
    fx.store().rotate_kek(&gone).unwrap();
    fx.store().rotate_dek(&gone).unwrap();
    fx.store()
        .put(&gone, b"late", &value("late", 0, 300))
        .unwrap();
    fx.store().flush().unwrap();
    let needles = needles_of(&mut fx, &["payroll"]);
    assert_eq!(needles.len(), 21 + 1 + 2, "21 records, 1 KEK, 2 DEKs");
    assert_all_present(&fx, &needles);

    let d = fx.store().destroy_keyring_now(&gone).unwrap();
    assert_eq!(d.records, 21);
    assert!(fx.store().pending_jobs().unwrap().is_empty());
    assert_none_left(&fx, &needles, "right after the destruction");

    // The rest of the store carries on, on the new generation.
    fill(&fx, &kept, 200);
    fx.reopen();
    fx.store().rotate_kek(&kept).unwrap();
    assert_none_left(
        &fx,
        &needles,
        "after more writes, a reopen and a KEK rotation",
    );
    for i in [0, 19, 199] {
        assert_eq!(
            fx.store()
                .get(&kept, format!("r{i}").as_bytes())
                .unwrap()
                .unwrap()
                .expose(),
            value("kept", i, 1024).as_slice()
        );
    }
    assert!(fx.store().verify_audit().unwrap().is_ok());
}

#[test]
fn a_scheduled_destruction_falling_due_leaves_none_of_its_bytes_in_any_file() {
    let mut fx = Fixture::on_sled(StoreOptions::default());
    let gone = kr("later");
    fx.store().create_keyring(&gone, None).unwrap();
    fx.store().create_keyring(&kr("kept"), None).unwrap();
    fill(&fx, &gone, 20);
    fill(&fx, &kr("kept"), 5);
    fx.store()
        .schedule_keyring_destruction(&gone, Some(Duration::from_secs(2)))
        .unwrap();
    fx.store().flush().unwrap();
    let needles = needles_of(&mut fx, &["later"]);
    assert_all_present(&fx, &needles);
    // Falls due; carried out at the next open.
    std::thread::sleep(Duration::from_millis(2100));
    let s = fx.reopen();
    assert!(
        s.pending_jobs().unwrap().is_empty(),
        "{:?}",
        s.pending_jobs()
    );
    assert_none_left(&fx, &needles, "after the due destruction at open");
    assert_eq!(
        get_string(fx.store(), &kr("kept"), "r1").map(|s| s.len()),
        Some(1024)
    );
}

#[test]
fn destroying_a_root_leaves_none_of_its_keyrings_bytes_in_any_file() {
    let mut fx = Fixture::on_sled(StoreOptions::default());
    fx.store().create_root(&rn("acme")).unwrap();
    for name in ["acme-a", "acme-b"] {
        fx.store()
            .create_keyring(&kr(name), Some(&rn("acme")))
            .unwrap();
        fill(&fx, &kr(name), 10);
    }
    fx.store().create_keyring(&kr("kept"), None).unwrap();
    fill(&fx, &kr("kept"), 10);
    // A root rotation: the KEKs are rewrapped under v2, the v1 wrappings removed.
    fx.store().rotate_root(&rn("acme"), &mut |_| {}).unwrap();
    fx.store().flush().unwrap();
    let needles = needles_of(&mut fx, &["acme-a", "acme-b"]);
    assert_all_present(&fx, &needles);
    let d = fx.store().destroy_root_now(&rn("acme")).unwrap();
    assert_eq!(d.len(), 2);
    assert_none_left(&fx, &needles, "after the root's destruction");
    assert_eq!(
        get_string(fx.store(), &kr("kept"), "r3").map(|s| s.len()),
        Some(1024)
    );
}

/// A restore of `backup` beside the soft key file as it is now.
fn restore_now(
    fx: &Fixture,
    backup: &std::path::Path,
) -> (tempfile::TempDir, strongroom_store::Store) {
    let dir = tempfile::tempdir().unwrap();
    strongroom_store::Store::restore(backup, dir.path()).unwrap();
    let key_file = strongroom_core::soft::KEY_FILE_NAME;
    std::fs::copy(fx.dir.path().join(key_file), dir.path().join(key_file)).unwrap();
    let backend: std::sync::Arc<dyn strongroom_core::Backend> =
        std::sync::Arc::new(strongroom_core::SoftBackend::open(dir.path()).unwrap());
    let s = strongroom_store::Store::open(dir.path(), backend, StoreOptions::default()).unwrap();
    (dir, s)
}

#[test]
fn a_move_cuts_the_old_root_and_destroying_the_new_root_leaves_nothing_on_disk() {
    let mut fx = Fixture::on_sled(StoreOptions::default());
    let k = kr("payroll");
    fx.store().create_keyring(&k, None).unwrap();
    fill(&fx, &k, 20);
    fx.store().create_root(&rn("acme")).unwrap();
    fx.store().flush().unwrap();
    let out = tempfile::tempdir().unwrap();
    let before_move = out.path().join("before-move.backup");
    fx.store().backup(&before_move).unwrap();
    // Everything of the keyring from its time under `service`: KEK, DEK, records.
    let old = needles_of(&mut fx, &["payroll"]);
    assert_all_present(&fx, &old);

    let m = fx
        .store()
        .move_keyring(&k, &rn("acme"), &mut |_| {})
        .unwrap();
    assert_eq!(m.reencrypted, 20);
    // The move made fresh keys and re-encrypted: nothing from before it is left on disk, so
    // the primary root `service` (which can never be destroyed) no longer opens this keyring.
    assert_none_left(&fx, &old, "after the move");
    let after_move = out.path().join("after-move.backup");
    fx.store().backup(&after_move).unwrap();
    let new = needles_of(&mut fx, &["payroll"]);
    assert_all_present(&fx, &new);

    let d = fx.store().destroy_root_now(&rn("acme")).unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].former_roots,
        vec![rn("service")],
        "reported: older copies depend on service"
    );
    assert_none_left(&fx, &new, "after the new root's destruction");
    assert_none_left(&fx, &old, "after the new root's destruction");

    // A backup taken after the move: its KEK is under acme, destroyed in the backend.
    let (_d1, restored) = restore_now(&fx, &after_move);
    let e = restored.get(&k, b"r1").unwrap_err();
    assert!(
        matches!(
            e,
            strongroom_store::StoreError::RootDestroyed { .. }
                | strongroom_store::StoreError::Backend { .. }
        ),
        "{e}"
    );
    drop(restored);
    // The documented limit: a backup taken before the move is only as gone as `service`.
    let (_d2, restored) = restore_now(&fx, &before_move);
    assert_eq!(
        restored.get(&k, b"r1").unwrap().unwrap().expose(),
        value("payroll", 1, 1024).as_slice()
    );
}
