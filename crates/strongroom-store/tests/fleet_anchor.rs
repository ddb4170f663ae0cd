//! A fleet's audit anchor in the HSM (issue 13): replicas of one store on a shared PostgreSQL
//! schema and a SoftHSM2 token keep the anchor as a data object in the token, where whoever can
//! write the database cannot rewrite it. A replica on a new machine (an empty directory) opens
//! on it; the database put back to an older copy of itself (which undoes a disable, with its
//! audit entries) is refused by every replica, new or old, until a rollback is accepted, which
//! anchors the store anew for all of them. An anchor object that is not the store's (its MAC
//! fails) does not count.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;
use std::sync::Arc;

use strongroom_core::{Backend, KeyringName, RootKeyName};
use strongroom_pkcs11::Pkcs11Backend;
use strongroom_postgres::{PgConfig, PgEngine};
use strongroom_store::{Store, StoreError, StoreOptions};
use strongroom_test_support::pg;
use strongroom_test_support::softhsm::Token;
use strongroom_test_support::softhsm_tests;

fn backend(token: &Token) -> Arc<Pkcs11Backend> {
    common::pkcs11_backend(token)
}

fn shared(url: &str, schema: &str) -> PgConfig {
    common::pg_config_at(url, schema, false)
}

fn k() -> KeyringName {
    KeyringName::new("payroll").unwrap()
}

fn open(dir: &Path, cfg: &PgConfig, b: &Arc<Pkcs11Backend>) -> Result<Store, StoreError> {
    Store::open_on(
        dir,
        Box::new(PgEngine::connect(cfg).unwrap()),
        Arc::clone(b) as Arc<dyn Backend>,
        StoreOptions {
            replica: "replica".into(),
            ..StoreOptions::default()
        },
    )
}

softhsm_tests! {
    fn a_fleet_s_database_put_back_is_caught_by_the_anchor_in_the_hsm(token) {
        let url = pg::shared().url();
        let schema = pg::unique_schema();
        let cfg = shared(&url, &schema);
        let b = backend(token);
        let first = tempfile::tempdir().unwrap();
        let a = Store::create_on(
            first.path(),
            Box::new(PgEngine::connect(&cfg).unwrap()),
            Arc::clone(&b) as Arc<dyn Backend>,
            &RootKeyName::new("service").unwrap(),
            StoreOptions { replica: "a".into(), ..StoreOptions::default() },
        )
        .unwrap();
        a.create_keyring(&k(), None).unwrap();
        a.put(&k(), b"alice", b"100").unwrap();
        // The anchor is a data object in the token, one value, and no file stands in for it.
        let anchors = b.audit_anchors().unwrap();
        assert_eq!(anchors.len(), 1, "{anchors:?}");
        let head = a.verify_audit().unwrap().unwrap().entries;
        assert_eq!(a.anchor_in_backend(), Some(Some(head)), "at the log's last entry");
        assert!(!first.path().join(strongroom_store::ANCHOR_FILE).exists());
        assert!(token
            .pkcs11_tool(&["--list-objects", "--type", "data"])
            .contains("strongroom/anchor"));

        // A replica on a new machine: an empty directory, anchored by the token's.
        let fresh = tempfile::tempdir().unwrap();
        let r = open(fresh.path(), &cfg, &b).unwrap();
        assert_eq!(r.get(&k(), b"alice").unwrap().unwrap().expose(), b"100");
        drop(r);

        // Someone with the database's credentials keeps a copy; the keyring is disabled (a
        // revocation, audited and anchored), then the copy is put back: enabled again, as if
        // the disable had never happened.
        let raw = PgEngine::connect(&cfg).unwrap();
        let copy = common::dump(&raw);
        a.disable_keyring(&k()).unwrap();
        drop(a);
        common::replace_all(&raw, &copy);

        // Refused by every replica: a new one (no file at all) and the first.
        for dir in [tempfile::tempdir().unwrap().path().to_path_buf(), first.path().to_path_buf()] {
            let e = open(&dir, &cfg, &b).unwrap_err();
            assert!(matches!(e, StoreError::RolledBack { .. }), "{e:?}");
            assert!(e.to_string().contains("the audit anchor the backend keeps"), "{e}");
            assert!(e.is_integrity());
        }


        // Accepted on purpose: audited, and anchored anew for the whole fleet.
        let accepted = Store::open_on_accepting_rollback(
            fresh.path(),
            Box::new(PgEngine::connect(&cfg).unwrap()),
            Arc::clone(&b) as Arc<dyn Backend>,
            StoreOptions::default(),
        )
        .unwrap();
        assert_eq!(accepted.get(&k(), b"alice").unwrap().unwrap().expose(), b"100");
        assert!(accepted.verify_audit().unwrap().is_ok());
        drop(accepted);
        for dir in [first.path(), fresh.path()] {
            let r = open(dir, &cfg, &b).unwrap();
            assert!(r.verify_audit().unwrap().is_ok());
        }
    }

    fn an_anchor_in_the_hsm_that_is_not_the_store_s_does_not_count(token) {
        let url = pg::shared().url();
        let schema = pg::unique_schema();
        let cfg = shared(&url, &schema);
        let b = backend(token);
        let dir = tempfile::tempdir().unwrap();
        let a = Store::create_on(
            dir.path(),
            Box::new(PgEngine::connect(&cfg).unwrap()),
            Arc::clone(&b) as Arc<dyn Backend>,
            &RootKeyName::new("service").unwrap(),
            StoreOptions::default(),
        )
        .unwrap();
        a.create_keyring(&k(), None).unwrap();
        drop(a);
        // The genuine anchor replaced by one with another MAC (not this store's): there is no
        // anchor of this store now, which is what a new replica says.
        let genuine = b.audit_anchors().unwrap().remove(0);
        let mut forged = genuine.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        b.put_audit_anchor(&forged, &[genuine]).unwrap();
        let e = open(dir.path(), &cfg, &b).unwrap_err();
        assert!(matches!(e, StoreError::AnchorMissing { .. }), "{e:?}");
        assert!(e.to_string().contains("the audit anchor the backend keeps"), "{e}");
        // Accepted on purpose, it is anchored anew, and the one that was not its own is gone.
        drop(
            Store::open_on_accepting_rollback(
                dir.path(),
                Box::new(PgEngine::connect(&cfg).unwrap()),
                Arc::clone(&b) as Arc<dyn Backend>,
                StoreOptions::default(),
            )
            .unwrap(),
        );
        assert!(open(dir.path(), &cfg, &b).is_ok());
        assert!(!b.audit_anchors().unwrap().contains(&forged));
    }

    fn a_job_s_steps_anchor_in_the_hsm_at_most_once_a_second(token) {
        let url = pg::shared().url();
        let schema = pg::unique_schema();
        let cfg = shared(&url, &schema);
        let b = strongroom_test_support::wrappers::TestBackend::new(backend(token));
        let dir = tempfile::tempdir().unwrap();
        let a = Store::create_on(
            dir.path(),
            Box::new(PgEngine::connect(&cfg).unwrap()),
            Arc::clone(&b) as Arc<dyn Backend>,
            &RootKeyName::new("service").unwrap(),
            StoreOptions::default(),
        )
        .unwrap();
        for i in 0..40 {
            a.create_keyring(&KeyringName::new(format!("k{i}")).unwrap(), None).unwrap();
        }
        // A key change anchors at once: one write each.
        let before = b.anchor_writes();
        a.disable_keyring(&KeyringName::new("k0").unwrap()).unwrap();
        assert_eq!(b.anchor_writes(), before + 1);
        // A root rotation: one key change, then 41 KEKs rewrapped, one commit each.
        let before = b.anchor_writes();
        let started = std::time::Instant::now();
        a.rotate_root(&RootKeyName::new("service").unwrap(), &mut |_| {}).unwrap();
        let writes = b.anchor_writes() - before;
        let most = 2 + started.elapsed().as_secs();
        assert!(writes <= most, "{writes} anchor writes for one rotation (at most {most})");
        // The anchor may be a few steps behind the log, never ahead: a new replica opens, and
        // the next key change brings it to the head.
        drop(a);
        let r = open(tempfile::tempdir().unwrap().path(), &cfg, &backend(token)).unwrap();
        r.enable_keyring(&KeyringName::new("k0").unwrap()).unwrap();
        let head = r.verify_audit().unwrap().unwrap().entries;
        assert_eq!(r.anchor_in_backend(), Some(Some(head)));
    }
}
