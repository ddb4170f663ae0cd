//! The store on the PKCS#11 backend against a real SoftHSM2 token (each test in its own process
//! with its own token): the hierarchy, a tenant's root key disabled and enabled in the HSM, root
//! rotation, crypto-shredding and the audit, with root keys that never leave the token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use strongroom_core::{Backend, KeyringName, RootKeyId, RootKeyName, RootStatus, RootVersion};
use strongroom_pkcs11::{PinSource, Pkcs11Backend, Pkcs11Config, TokenSelector};
use strongroom_store::{StoreError, StoreOptions};
use strongroom_test_support::softhsm::Token;
use strongroom_test_support::softhsm_tests;

fn backend(token: &Token) -> Arc<Pkcs11Backend> {
    common::pkcs11_backend(token)
}

fn kr(s: &str) -> KeyringName {
    KeyringName::new(s).unwrap()
}

fn rn(s: &str) -> RootKeyName {
    RootKeyName::new(s).unwrap()
}

softhsm_tests! {
    fn the_hierarchy_on_an_hsm(token) {
        let dir = tempfile::tempdir().unwrap();
        let b = backend(token);
        let s = common::create(dir.path(), b.clone(), &rn("service"), StoreOptions::default()).unwrap();
        s.create_keyring(&kr("payroll"), None).unwrap();
        s.put(&kr("payroll"), b"alice", b"100").unwrap();
        s.create_root(&rn("tenant")).unwrap();
        s.create_keyring(&kr("t"), Some(&rn("tenant"))).unwrap();
        s.put(&kr("t"), b"doc", b"contract").unwrap();
        let info = s.keyring(&kr("payroll")).unwrap();
        assert_eq!(info.kek_versions[0].1.as_ref().unwrap().to_string(), "service/v1");

        // Disabled by strongroom: disabled in the token too.
        s.disable_root(&rn("tenant")).unwrap();
        let id = RootKeyId::new(rn("tenant"), RootVersion::FIRST);
        assert_eq!(b.find_root(&id).unwrap().unwrap().status, RootStatus::Disabled);
        assert!(matches!(s.get(&kr("t"), b"doc").unwrap_err(), StoreError::RootDisabled { .. }));
        s.enable_root(&rn("tenant")).unwrap();
        s.purge_key_cache();
        assert_eq!(s.get(&kr("t"), b"doc").unwrap().unwrap().expose(), b"contract");

        // Rotation makes a new token object and rewraps the KEK under it.
        let v2 = s.rotate_root(&rn("tenant"), &mut |_| {}).unwrap();
        s.retire_root_version(&rn("tenant"), RootVersion::FIRST).unwrap();
        assert_eq!(b.find_root(&id).unwrap().unwrap().status, RootStatus::Destroyed);
        s.purge_key_cache();
        assert_eq!(s.get(&kr("t"), b"doc").unwrap().unwrap().expose(), b"contract");
        let listing = token.pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
        assert!(listing.contains(&format!("strongroom/tenant/{v2}")), "{listing}");

        // Reopen (the store checks it is the same token).
        drop(s);
        let s = common::open(dir.path(), b.clone(), StoreOptions::default()).unwrap();
        assert_eq!(s.get(&kr("payroll"), b"alice").unwrap().unwrap().expose(), b"100");

        // Crypto-shredding the tenant: its root is destroyed in the token.
        s.destroy_root_now(&rn("tenant")).unwrap();
        assert!(matches!(s.get(&kr("t"), b"doc").unwrap_err(), StoreError::KeyringDestroyed { .. }));
        assert!(!token.pkcs11_tool(&["--list-objects", "--type", "secrkey"]).contains("strongroom/tenant/"));
        assert!(s.verify_audit().unwrap().is_ok());
    }

    fn a_root_disabled_in_the_hsm_is_refused_once_the_ttl_runs_out(token) {
        let dir = tempfile::tempdir().unwrap();
        let b = backend(token);
        let options = StoreOptions { cache_ttl: std::time::Duration::from_millis(200), ..StoreOptions::default() };
        let s = common::create(dir.path(), b.clone(), &rn("service"), options).unwrap();
        s.create_root(&rn("customer")).unwrap();
        s.create_keyring(&kr("c"), Some(&rn("customer"))).unwrap();
        s.put(&kr("c"), b"k", b"v").unwrap();
        // The customer disables the key in their HSM (here: through the backend, not the store).
        b.disable_root(&RootKeyId::new(rn("customer"), RootVersion::FIRST)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(250));
        let e = s.get(&kr("c"), b"k").unwrap_err();
        assert!(e.is_access_refused(), "{e}");
        assert!(!e.is_integrity());
        b.enable_root(&RootKeyId::new(rn("customer"), RootVersion::FIRST)).unwrap();
        assert_eq!(s.get(&kr("c"), b"k").unwrap().unwrap().expose(), b"v");
    }

    fn one_store_per_namespace(token) {
        let dir = tempfile::tempdir().unwrap();
        let (a, c, d) = (dir.path().join("a"), dir.path().join("c"), dir.path().join("d"));
        let b = backend(token);
        let sa = common::create(&a, b.clone(), &rn("service"), StoreOptions::default()).unwrap();
        sa.create_keyring(&kr("k"), None).unwrap();
        let claim = b.store_claim().unwrap().unwrap();
        assert_eq!(claim.store_id, sa.meta().store_id);
        drop(sa);
        // A second store on the same namespace is refused, naming the first; nothing is made.
        let e = common::create(&d, b.clone(), &rn("service"), StoreOptions::default()).unwrap_err();
        assert!(matches!(e, StoreError::KeysOfAnotherStore { .. }), "{e}");
        assert!(e.to_string().contains(&claim.location), "{e}");
        assert!(e.to_string().contains("--namespace"), "{e}");
        assert!(!common::holds_data(&d));
        assert_eq!(b.store_claim().unwrap().unwrap(), claim, "the claim is untouched");
        // The first store still opens and works.
        let sa = common::open(&a, b.clone(), StoreOptions::default()).unwrap();
        sa.put(&kr("k"), b"x", b"y").unwrap();
        drop(sa);

        // Another namespace on the same token: an init there that died after its claim and
        // its first key (its directory cleaned up) is taken over by the next init in the
        // same place, and refused anywhere else.
        let other = |ns: &str| {
            let mut c = Pkcs11Config::new(&token.module, TokenSelector::Label(token.label.clone()), PinSource::File(token.pin_file()));
            c.namespace = ns.into();
            Arc::new(Pkcs11Backend::open(c).unwrap())
        };
        let b2 = other("second");
        drop(common::create(&c, b2.clone(), &rn("service"), StoreOptions::default()).unwrap());
        // What a create that died after its claim leaves: the store-id file naming the claim.
        for e in std::fs::read_dir(&c).unwrap() {
            let e = e.unwrap();
            if e.file_name() != strongroom_store::STORE_ID_FILE {
                let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
        let e = common::create(&d, b2.clone(), &rn("service"), StoreOptions::default()).unwrap_err();
        assert!(matches!(e, StoreError::KeysOfAnotherStore { .. }), "{e}");
        let sc = common::create(&c, b2.clone(), &rn("service"), StoreOptions::default()).unwrap();
        sc.create_keyring(&kr("k"), None).unwrap();
        drop(sc);
        // A store moved elsewhere takes its store-id with it: a create at its old path is
        // refused, not handed its keys.
        let moved = dir.path().join("c-moved");
        std::fs::rename(&c, &moved).unwrap();
        let e = common::create(&c, b2.clone(), &rn("service"), StoreOptions::default()).unwrap_err();
        assert!(matches!(e, StoreError::KeysOfAnotherStore { .. }), "{e}");
        common::open(&moved, b2.clone(), StoreOptions::default()).unwrap();

        // Keys from before stores claimed their namespace count as another store's.
        let b3 = other("legacy");
        b3.generate_root(&RootKeyId::new(rn("service"), RootVersion::FIRST)).unwrap();
        let e = common::create(&d, b3.clone(), &rn("service"), StoreOptions::default()).unwrap_err();
        assert!(matches!(e, StoreError::KeysOfAnotherStore { .. }) && e.to_string().contains("service/v1"), "{e}");

        // A store whose keys another store has claimed meanwhile is refused at open.
        let mine = b.store_claim().unwrap();
        // A compare-and-set: refused unless it names the claim there now.
        let other = strongroom_core::StoreClaim { store_id: [9; 16], location: "/elsewhere".into() };
        assert!(matches!(b.set_store_claim(&other, None), Err(strongroom_core::BackendError::ClaimedByAnother { .. })));
        b.set_store_claim(&other, mine.as_ref()).unwrap();
        let e = common::open(&a, b.clone(), StoreOptions::default()).unwrap_err();
        assert!(matches!(e, StoreError::KeysOfAnotherStore { .. }) && e.to_string().contains("/elsewhere"), "{e}");
    }
}
