//! Stores written before the sealed catalog keep opening: a copy of one made by an earlier
//! release (`tests/data/legacy-store-v1`, see its README) is upgraded once, at its first open,
//! and keeps every state, record and audit entry; from then on it is held to the sealed
//! catalog like any new store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use common::{copy_dir, raw_sled};
use strongroom_core::{Backend, KeyState, KeyringName, RootKeyName, SoftBackend};
use strongroom_store::{AuditOp, Store, StoreError, StoreOptions};

fn kr(s: &str) -> KeyringName {
    KeyringName::new(s).unwrap()
}

fn rn(s: &str) -> RootKeyName {
    RootKeyName::new(s).unwrap()
}

/// A fresh copy of the legacy store (the key file with the mode the soft backend requires).
fn legacy_copy() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/legacy-store-v1"),
        d.path(),
    );
    let key_file = d.path().join(strongroom_core::soft::KEY_FILE_NAME);
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    d
}

fn open(dir: &Path) -> Result<Store, StoreError> {
    let backend: Arc<dyn Backend> = Arc::new(SoftBackend::open(dir).unwrap());
    Store::open(dir, backend, StoreOptions::default())
}

fn upgrades(s: &Store) -> usize {
    s.audit_entries(1)
        .filter(|e| e.as_ref().unwrap().op == AuditOp::CatalogUpgraded)
        .count()
}

#[test]
fn a_store_from_before_the_sealed_catalog_is_upgraded_once_and_keeps_everything() {
    let d = legacy_copy();
    let legacy_entries = {
        let db = sled::open(d.path().join("db")).unwrap();
        let t = db.open_tree("keyrings").unwrap();
        let n = t.iter().count();
        assert!(
            t.iter().all(|r| r.unwrap().1[0] == 1),
            "the fixture holds unsealed version-1 entries"
        );
        n
    };
    assert_eq!(legacy_entries, 4);
    let s = open(d.path()).unwrap();
    assert_eq!(upgrades(&s), 1, "upgraded at its first open");
    // Every state as it was.
    assert_eq!(
        s.get(&kr("payroll"), b"alice").unwrap().unwrap().expose(),
        b"salary=100000"
    );
    assert_eq!(
        s.get(&kr("tenant"), b"doc").unwrap().unwrap().expose(),
        b"contract",
        "a KEK blob of format 1 (no root in its context) still opens"
    );
    assert!(matches!(
        s.get(&kr("off"), b"k").unwrap_err(),
        StoreError::KeyringDisabled { .. }
    ));
    assert!(matches!(
        s.keyring(&kr("doomed")).unwrap().state,
        KeyState::PendingDestruction { .. }
    ));
    assert_eq!(
        s.root(&rn("acme2")).unwrap().versions[0].1,
        KeyState::Disabled
    );
    assert!(s.verify_audit().unwrap().is_ok());
    // Work goes on: the old KEK is rewrapped in the new format by a root rotation.
    s.rotate_root(&rn("acme"), &mut |_| {}).unwrap();
    s.purge_key_cache();
    assert_eq!(
        s.get(&kr("tenant"), b"doc").unwrap().unwrap().expose(),
        b"contract"
    );
    drop(s);

    // Once only; and sealed on disk.
    let s = open(d.path()).unwrap();
    assert_eq!(upgrades(&s), 1);
    drop(s);
    let off_sealed = {
        let db = raw_sled(&strongroom_store::database_dir(d.path()).unwrap());
        let t = db.open_tree("keyrings").unwrap();
        assert!(t.iter().all(|r| r.unwrap().1[0] == 2), "every entry sealed");
        t.get("off").unwrap().unwrap().to_vec()
    };
    // From now on the catalog is held like any other: `off` turned back on is refused.
    {
        let db = raw_sled(&strongroom_store::database_dir(d.path()).unwrap());
        let t = db.open_tree("keyrings").unwrap();
        let (body, mac) = off_sealed.split_at(off_sealed.len() - 32);
        let mut e = strongroom_store::format::KeyringEntry::parse(body).unwrap();
        e.state = KeyState::Enabled;
        t.insert("off", [e.to_bytes(), mac.to_vec()].concat())
            .unwrap();
        db.flush().unwrap();
    }
    let e = open(d.path()).unwrap_err();
    assert!(
        matches!(e, StoreError::CatalogIntegrity { .. })
            && e.to_string().contains("keyring entry off"),
        "{e}"
    );
}

#[test]
fn an_upgraded_store_refuses_its_old_unsealed_entries_put_back() {
    let d = legacy_copy();
    let old_off = {
        let db = sled::open(d.path().join("db")).unwrap();
        db.open_tree("keyrings")
            .unwrap()
            .get("off")
            .unwrap()
            .unwrap()
            .to_vec()
    };
    drop(open(d.path()).unwrap());
    {
        let db = raw_sled(&strongroom_store::database_dir(d.path()).unwrap());
        db.open_tree("keyrings")
            .unwrap()
            .insert("off", old_off)
            .unwrap();
        db.flush().unwrap();
    }
    let e = open(d.path()).unwrap_err();
    assert!(
        matches!(e, StoreError::CatalogIntegrity { .. })
            && e.to_string().contains("keyring entry off"),
        "{e}"
    );
}
