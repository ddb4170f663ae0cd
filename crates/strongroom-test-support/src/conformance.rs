//! The backend conformance suite: the same cases for every backend.
//!
//! Each case is a public function taking a backend; [`backend_conformance_tests!`](crate::backend_conformance_tests)
//! expands to one `#[test]` per case, so a failure names the case. Cases adapt to what
//! [`Backend::describe`] says the backend can do: an operation a backend does not offer must
//! fail with [`BackendError::NotSupported`], and that is checked too.

use strongroom_core::blob::{WrappedKey, WrappingKeyRef};
use strongroom_core::{
    Backend, BackendError, KekVersion, Key256, KeyringName, RootKeyId, RootKeyName, RootStatus,
    RootVersion,
};

/// A root key id from a name and a version.
#[must_use]
pub fn rid(name: &str, version: u32) -> RootKeyId {
    RootKeyId::new(
        RootKeyName::new(name).unwrap(),
        RootVersion::new(version).unwrap(),
    )
}

/// A unique root name per call, so cases sharing a long-lived backend never collide.
#[must_use]
pub fn fresh_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn generate(b: &dyn Backend, prefix: &str) -> RootKeyId {
    let id = rid(&fresh_name(prefix), 1);
    let info = b.generate_root(&id).expect("generate_root");
    assert_eq!(info.id, id);
    assert_eq!(info.status, RootStatus::Enabled);
    id
}

/// Asserts that an error's `Display` and `Debug` show none of `secrets` (in hex or raw).
pub fn assert_no_secret_in(err: &BackendError, secrets: &[&[u8]]) {
    let shown = format!("{err} {err:?}").to_lowercase();
    for s in secrets {
        let hex: String = s.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            !shown.contains(&hex[..16.min(hex.len())]),
            "secret (hex) in error: {shown}"
        );
        if let Ok(text) = std::str::from_utf8(s)
            && text.len() >= 6
        {
            assert!(
                !shown.contains(&text.to_lowercase()),
                "secret (text) in error: {shown}"
            );
        }
    }
}

/// `describe` is consistent: a kind, an instance id, at least one algorithm.
pub fn describe_is_consistent(b: &dyn Backend) {
    let info = b.describe();
    assert!(!info.kind.is_empty());
    assert!(!info.instance_id.is_empty());
    assert!(info.capabilities.preferred_alg().is_some());
    assert_eq!(b.describe(), info, "describe must be stable");
    let checks = b.health().expect("health");
    assert!(!checks.is_empty());
    assert!(checks.iter().all(|c| c.ok), "health: {checks:?}");
}

/// A generated root shows up in `find_root` and `list_roots`; a second generate of the same
/// version is refused.
pub fn generate_find_list(b: &dyn Backend) {
    assert!(
        b.describe().capabilities.generate,
        "conformance needs generate"
    );
    let id = generate(b, "gen");
    let found = b
        .find_root(&id)
        .unwrap()
        .expect("generated root must be found");
    assert_eq!(found.status, RootStatus::Enabled);
    assert!(b.list_roots().unwrap().iter().any(|r| r.id == id));
    assert!(
        b.find_root(&rid(&fresh_name("absent"), 1))
            .unwrap()
            .is_none()
    );
    let again = b.generate_root(&id).unwrap_err();
    assert!(matches!(again, BackendError::RootExists { .. }), "{again}");
}

/// Wrap then unwrap returns the same key, and the blob names the root and the preferred
/// algorithm; two wraps of one key differ or are equal as the algorithm dictates, and both open.
pub fn wrap_unwrap_round_trip(b: &dyn Backend) {
    let id = generate(b, "rt");
    let key = Key256::generate().unwrap();
    let blob = b.wrap(&id, &key, b"keyring=payroll;kek=1").unwrap();
    assert_eq!(blob.root(), Some(&id));
    assert_eq!(Some(blob.alg()), b.describe().capabilities.preferred_alg());
    assert!(b.describe().capabilities.wrap_algs.contains(&blob.alg()));
    // The blob survives serialization.
    let blob = WrappedKey::parse(&blob.to_bytes()).unwrap();
    let back = b.unwrap(&blob, b"keyring=payroll;kek=1").unwrap();
    assert!(back.ct_eq(&key));
    // The wrapped payload is not the key in the clear.
    assert!(!blob.payload().windows(32).any(|w| w == key.expose_bytes()));
    let blob2 = b.wrap(&id, &key, b"keyring=payroll;kek=1").unwrap();
    assert!(
        b.unwrap(&blob2, b"keyring=payroll;kek=1")
            .unwrap()
            .ct_eq(&key)
    );
    // An empty context is a context like any other.
    let blob3 = b.wrap(&id, &key, b"").unwrap();
    assert!(b.unwrap(&blob3, b"").unwrap().ct_eq(&key));
}

/// A blob relabelled to name another existing root fails with an integrity error; a blob naming
/// a root the backend does not hold fails with `RootNotFound` (or `RootUnavailable`).
pub fn wrong_root_fails(b: &dyn Backend) {
    let a = generate(b, "wa");
    let other = generate(b, "wb");
    let key = Key256::generate().unwrap();
    let blob = b.wrap(&a, &key, b"ctx").unwrap();
    let moved = WrappedKey::new(
        blob.alg(),
        WrappingKeyRef::Root(other),
        blob.payload().to_vec(),
    )
    .unwrap();
    let e = b.unwrap(&moved, b"ctx").unwrap_err();
    assert!(matches!(e, BackendError::Integrity), "{e}");
    let missing = WrappedKey::new(
        blob.alg(),
        WrappingKeyRef::Root(rid(&fresh_name("nosuch"), 1)),
        blob.payload().to_vec(),
    )
    .unwrap();
    let e = b.unwrap(&missing, b"ctx").unwrap_err();
    assert!(
        matches!(
            e,
            BackendError::RootNotFound { .. } | BackendError::RootUnavailable { .. }
        ),
        "{e}"
    );
    let e = b
        .wrap(&rid(&fresh_name("nosuch"), 1), &key, b"ctx")
        .unwrap_err();
    assert!(e.is_key_unavailable(), "{e}");
}

/// Every single-bit flip of the payload fails with the opaque integrity error, which shows no
/// key or context bytes.
pub fn tampered_blob_fails_opaquely(b: &dyn Backend) {
    let id = generate(b, "tamper");
    let key = Key256::generate().unwrap();
    let ctx = b"secret-context-bytes";
    let blob = b.wrap(&id, &key, ctx).unwrap();
    for i in 0..blob.payload().len() {
        for bit in [0u8, 3, 7] {
            let mut p = blob.payload().to_vec();
            p[i] ^= 1 << bit;
            let bad = WrappedKey::new(blob.alg(), blob.wrapped_by().clone(), p).unwrap();
            let e = b.unwrap(&bad, ctx).unwrap_err();
            assert!(
                matches!(e, BackendError::Integrity),
                "byte {i} bit {bit}: {e}"
            );
            assert_no_secret_in(&e, &[key.expose_bytes(), ctx]);
        }
    }
    // The backend still works after a burst of failures.
    assert!(b.unwrap(&blob, ctx).unwrap().ct_eq(&key));
}

/// Unwrapping with another context fails with the integrity error.
pub fn context_mismatch_fails(b: &dyn Backend) {
    let id = generate(b, "ctx");
    let key = Key256::generate().unwrap();
    let blob = b.wrap(&id, &key, b"keyring=a;kek=1").unwrap();
    for wrong in [
        &b"keyring=a;kek=2"[..],
        b"keyring=b;kek=1",
        b"",
        b"keyring=a;kek=1\0",
    ] {
        let e = b.unwrap(&blob, wrong).unwrap_err();
        assert!(matches!(e, BackendError::Integrity), "{e}");
    }
}

/// A disabled root refuses wrap and unwrap with `RootDisabled`; enabling restores both.
pub fn disabled_root_fails(b: &dyn Backend) {
    let id = generate(b, "dis");
    if !b.describe().capabilities.disable {
        assert!(matches!(
            b.disable_root(&id),
            Err(BackendError::NotSupported { .. })
        ));
        return;
    }
    let key = Key256::generate().unwrap();
    let blob = b.wrap(&id, &key, b"c").unwrap();
    b.disable_root(&id).unwrap();
    assert_eq!(
        b.find_root(&id).unwrap().unwrap().status,
        RootStatus::Disabled
    );
    let e = b.unwrap(&blob, b"c").unwrap_err();
    assert!(matches!(e, BackendError::RootDisabled { .. }), "{e}");
    assert!(
        e.to_string().contains("enable"),
        "error must say what to do: {e}"
    );
    let e = b.wrap(&id, &key, b"c").unwrap_err();
    assert!(matches!(e, BackendError::RootDisabled { .. }), "{e}");
    b.enable_root(&id).unwrap();
    assert!(b.unwrap(&blob, b"c").unwrap().ct_eq(&key));
}

/// A destroyed root refuses wrap and unwrap with `RootDestroyed`, for good.
pub fn destroyed_root_fails(b: &dyn Backend) {
    let id = generate(b, "des");
    if !b.describe().capabilities.destroy {
        assert!(matches!(
            b.destroy_root(&id),
            Err(BackendError::NotSupported { .. })
        ));
        return;
    }
    let key = Key256::generate().unwrap();
    let blob = b.wrap(&id, &key, b"c").unwrap();
    b.destroy_root(&id).unwrap();
    let e = b.unwrap(&blob, b"c").unwrap_err();
    assert!(matches!(e, BackendError::RootDestroyed { .. }), "{e}");
    let e = b.wrap(&id, &key, b"c").unwrap_err();
    assert!(matches!(e, BackendError::RootDestroyed { .. }), "{e}");
    assert!(
        b.enable_root(&id).is_err(),
        "a destroyed root must not come back"
    );
    assert!(b.unwrap(&blob, b"c").is_err());
}

/// A KEK-wrapped blob is refused by a backend, which only unwraps root-wrapped blobs.
pub fn kek_wrapped_blob_is_refused(b: &dyn Backend) {
    let id = generate(b, "kekref");
    let key = Key256::generate().unwrap();
    let blob = b.wrap(&id, &key, b"c").unwrap();
    let as_kek = WrappedKey::new(
        blob.alg(),
        WrappingKeyRef::Kek {
            keyring: KeyringName::new("payroll").unwrap(),
            version: KekVersion::FIRST,
        },
        blob.payload().to_vec(),
    )
    .unwrap();
    assert!(matches!(
        b.unwrap(&as_kek, b"c"),
        Err(BackendError::NotRootWrapped)
    ));
}

/// Several threads wrap and unwrap at once under two roots; every key comes back intact.
pub fn concurrent_wrap_unwrap_n(b: &dyn Backend, threads: usize, per_thread: usize) {
    let roots = [generate(b, "mt"), generate(b, "mt")];
    std::thread::scope(|s| {
        for t in 0..threads {
            let roots = &roots;
            s.spawn(move || {
                for i in 0..per_thread {
                    let root = &roots[(t + i) % 2];
                    let key = Key256::generate().unwrap();
                    let ctx = format!("t{t}/i{i}");
                    let blob = b.wrap(root, &key, ctx.as_bytes()).unwrap();
                    assert!(b.unwrap(&blob, ctx.as_bytes()).unwrap().ct_eq(&key));
                }
            });
        }
    });
}

/// [`concurrent_wrap_unwrap_n`] with 8 threads of 200 round trips each.
pub fn concurrent_wrap_unwrap(b: &dyn Backend) {
    concurrent_wrap_unwrap_n(b, 8, 200);
}

/// Expands to one `#[test]` per conformance case.
///
/// - `backend_conformance_tests!(make_fixture())`: `make_fixture()` makes a fresh
///   [`BackendFixture`](crate::BackendFixture) for each case.
/// - `backend_conformance_tests!(isolated |token| make_fixture(token))`: each case runs in a
///   process of its own with a SoftHSM2 token of its own ([`crate::softhsm::isolated`]).
#[macro_export]
macro_rules! backend_conformance_tests {
    (isolated $make:expr) => {
        $crate::backend_conformance_tests!(@cases (isolated $make));
    };
    (@cases $how:tt) => {
        $crate::backend_conformance_tests!(@case $how describe_is_consistent);
        $crate::backend_conformance_tests!(@case $how generate_find_list);
        $crate::backend_conformance_tests!(@case $how wrap_unwrap_round_trip);
        $crate::backend_conformance_tests!(@case $how wrong_root_fails);
        $crate::backend_conformance_tests!(@case $how tampered_blob_fails_opaquely);
        $crate::backend_conformance_tests!(@case $how context_mismatch_fails);
        $crate::backend_conformance_tests!(@case $how disabled_root_fails);
        $crate::backend_conformance_tests!(@case $how destroyed_root_fails);
        $crate::backend_conformance_tests!(@case $how kek_wrapped_blob_is_refused);
        $crate::backend_conformance_tests!(@case $how concurrent_wrap_unwrap);
    };
    (@case (plain $fixture:expr) $case:ident) => {
        #[test]
        fn $case() {
            let fixture = $fixture;
            $crate::conformance::$case($crate::BackendFixture::backend(&fixture));
        }
    };
    (@case (isolated $make:expr) $case:ident) => {
        #[test]
        fn $case() {
            $crate::softhsm::isolated(concat!(module_path!(), "::", stringify!($case)), |token| {
                let fixture = ($make)(token);
                $crate::conformance::$case($crate::BackendFixture::backend(&fixture));
            });
        }
    };
    ($fixture:expr) => {
        $crate::backend_conformance_tests!(@cases (plain $fixture));
    };
}
