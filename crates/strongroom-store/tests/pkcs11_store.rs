//! The store on the PKCS#11 backend against a real SoftHSM2 token (each test in its own process
//! with its own token): the hierarchy, a tenant's root key disabled and enabled in the HSM, root
//! rotation, crypto-shredding and the audit, with root keys that never leave the token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use strongroom_core::{Backend, KeyringName, RootKeyId, RootKeyName, RootStatus, RootVersion};
use strongroom_pkcs11::{PinSource, Pkcs11Backend, Pkcs11Config, TokenSelector};
use strongroom_store::{Store, StoreError, StoreOptions};
use strongroom_test_support::softhsm::Token;
use strongroom_test_support::softhsm_tests;

fn backend(token: &Token) -> Arc<Pkcs11Backend> {
    Arc::new(
        Pkcs11Backend::open(Pkcs11Config::new(
            &token.module,
            TokenSelector::Label(token.label.clone()),
            PinSource::File(token.pin_file()),
        ))
        .unwrap(),
    )
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
        let s = Store::create(dir.path(), b.clone(), &rn("service"), StoreOptions::default()).unwrap();
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
        let s = Store::open(dir.path(), b.clone(), StoreOptions::default()).unwrap();
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
        let s = Store::create(dir.path(), b.clone(), &rn("service"), options).unwrap();
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
}
