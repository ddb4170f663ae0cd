//! Property tests for the core formats and crypto.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use strongroom_core::backend::RootStatus;
use strongroom_core::blob::{WrapAlg, WrappedKey, WrappingKeyRef};
use strongroom_core::crypto::{self, Gcm, IntegrityError, NONCE_LEN};
use strongroom_core::record::{RecordCipher, RecordHeader};
use strongroom_core::soft::keyfile::{Entry, KeyFile};
use strongroom_core::{
    Backend, BackendError, DekVersion, KekVersion, Key256, KeyringName, RootKeyId, RootKeyName,
    RootVersion, SoftBackend,
};

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
}

fn key() -> impl Strategy<Value = Key256> {
    any::<[u8; 32]>().prop_map(|mut b| Key256::from_slice_zeroizing(&mut b).unwrap())
}

fn wrapping_ref() -> impl Strategy<Value = WrappingKeyRef> {
    prop_oneof![
        (name(), 1..=u32::MAX).prop_map(|(n, v)| WrappingKeyRef::Root(RootKeyId::new(
            RootKeyName::new(n).unwrap(),
            RootVersion::new(v).unwrap()
        ))),
        (name(), 1..=u32::MAX).prop_map(|(n, v)| WrappingKeyRef::Kek {
            keyring: KeyringName::new(n).unwrap(),
            version: KekVersion::new(v).unwrap(),
        }),
    ]
}

fn blob() -> impl Strategy<Value = WrappedKey> {
    (prop::sample::select(WrapAlg::ALL.to_vec()), wrapping_ref()).prop_flat_map(|(alg, by)| {
        prop::collection::vec(any::<u8>(), alg.payload_len())
            .prop_map(move |p| WrappedKey::new(alg, by.clone(), p).unwrap())
    })
}

/// One soft backend with one root, shared by the cases of a property (fsync per case is slow).
fn soft() -> &'static (tempfile::TempDir, SoftBackend, RootKeyId) {
    static S: std::sync::OnceLock<(tempfile::TempDir, SoftBackend, RootKeyId)> =
        std::sync::OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let b = SoftBackend::create(dir.path()).unwrap();
        let id = RootKeyId::new(RootKeyName::new("prop").unwrap(), RootVersion::FIRST);
        b.generate_root(&id).unwrap();
        (dir, b, id)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn gcm_round_trip(k in key(), nonce in any::<[u8; NONCE_LEN]>(),
                      aad in prop::collection::vec(any::<u8>(), 0..300),
                      pt in prop::collection::vec(any::<u8>(), 0..3000)) {
        let g = Gcm::new(&k);
        let sealed = g.seal(&nonce, &aad, &pt).unwrap();
        let opened = g.open(&nonce, &aad, &sealed).unwrap();
        prop_assert_eq!(opened.expose(), &pt[..]);
    }

    /// The `ring` engine is a drop-in for `aes-gcm`: the same bytes out, each opens the other's,
    /// and both refuse the same altered input.
    #[cfg(feature = "ring")]
    #[test]
    fn gcm_engines_agree(k in key(), nonce in any::<[u8; NONCE_LEN]>(),
                         aad in prop::collection::vec(any::<u8>(), 0..300),
                         pt in prop::collection::vec(any::<u8>(), 0..5000),
                         flip in any::<prop::sample::Index>()) {
        use strongroom_core::crypto::{RingGcm, RustCryptoGcm};
        let rc = Gcm::<RustCryptoGcm>::with_engine(&k);
        let ring = Gcm::<RingGcm>::with_engine(&k);
        let sealed = rc.seal(&nonce, &aad, &pt).unwrap();
        prop_assert_eq!(&ring.seal(&nonce, &aad, &pt).unwrap(), &sealed);
        let opened = ring.open(&nonce, &aad, &sealed).unwrap();
        prop_assert_eq!(opened.expose(), &pt[..]);
        let mut bad = sealed.clone();
        let i = flip.index(bad.len() * 8);
        bad[i / 8] ^= 1 << (i % 8);
        prop_assert_eq!(ring.open(&nonce, &aad, &bad).unwrap_err(), IntegrityError);
        prop_assert_eq!(rc.open(&nonce, &aad, &bad).unwrap_err(), IntegrityError);
    }

    #[test]
    fn record_round_trip(k in key(), v in 1..=u32::MAX, kr in name(),
                         rk in prop::collection::vec(any::<u8>(), 0..200),
                         pt in prop::collection::vec(any::<u8>(), 0..2000)) {
        let c = RecordCipher::new(DekVersion::new(v).unwrap(), &k);
        let kr = KeyringName::new(kr).unwrap();
        let sealed = c.seal(&kr, &rk, &pt).unwrap();
        let opened = c.open(&kr, &rk, &sealed).unwrap();
        prop_assert_eq!(opened.expose(), &pt[..]);
    }

    #[test]
    fn any_bit_flip_of_a_sealed_record_fails(k in key(), pt in prop::collection::vec(any::<u8>(), 0..200),
                                             bit in any::<prop::sample::Index>()) {
        let c = RecordCipher::new(DekVersion::FIRST, &k);
        let kr = KeyringName::new("kr").unwrap();
        let mut sealed = c.seal(&kr, b"rk", &pt).unwrap();
        let i = bit.index(sealed.len() * 8);
        sealed[i / 8] ^= 1 << (i % 8);
        prop_assert_eq!(c.open(&kr, b"rk", &sealed).unwrap_err(), IntegrityError);
    }

    #[test]
    fn any_bit_flip_of_a_kek_wrapped_payload_fails(kek in key(), k in key(),
                                                   ctx in prop::collection::vec(any::<u8>(), 0..64),
                                                   bit in 0usize..(56 * 8)) {
        let mut w = crypto::kwp_wrap_bound(&kek, &k, &ctx);
        prop_assert!(crypto::kwp_unwrap_bound(&kek, &w, &ctx).unwrap().ct_eq(&k));
        w[bit / 8] ^= 1 << (bit % 8);
        prop_assert_eq!(crypto::kwp_unwrap_bound(&kek, &w, &ctx).unwrap_err(), IntegrityError);
    }

    /// A flipped bit anywhere in a serialized root-wrapped blob never yields a key: the flip is
    /// caught by the parser, by the integrity check, or names a root key that does not exist.
    #[test]
    fn any_bit_flip_of_a_serialized_blob_never_unwraps(k in key(), bit in any::<prop::sample::Index>()) {
        let (_, b, id) = soft();
        let mut bytes = b.wrap(id, &k, b"ctx").unwrap().to_bytes();
        let i = bit.index(bytes.len() * 8);
        bytes[i / 8] ^= 1 << (i % 8);
        if let Ok(blob) = WrappedKey::parse(&bytes) {
            let e = b.unwrap(&blob, b"ctx").unwrap_err();
            let payload_flip = blob.root() == Some(id);
            prop_assert!(match e {
                BackendError::Integrity => true,
                BackendError::RootNotFound { .. } | BackendError::NotRootWrapped
                | BackendError::UnsupportedAlgorithm { .. } => !payload_flip,
                _ => false,
            }, "unexpected error {}", e);
        }
    }

    #[test]
    fn blob_parse_serialize_round_trip(b in blob()) {
        prop_assert_eq!(WrappedKey::parse(&b.to_bytes()).unwrap(), b);
    }

    #[test]
    fn record_header_round_trip(v in 1..=u32::MAX, nonce in any::<[u8; NONCE_LEN]>(),
                                body in prop::collection::vec(any::<u8>(), 16..64)) {
        let h = RecordHeader { dek_version: DekVersion::new(v).unwrap(), nonce };
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let (parsed, rest) = RecordHeader::parse(&bytes).unwrap();
        prop_assert_eq!(parsed, h);
        prop_assert_eq!(rest, &body[..]);
    }

    #[test]
    fn keyfile_round_trip(entries in prop::collection::btree_map(
        (name(), 1..=u32::MAX), (0u8..3, any::<[u8; 32]>()), 0..8)) {
        let mut f = KeyFile::new().unwrap();
        for ((n, v), (s, mut m)) in entries {
            let status = [RootStatus::Enabled, RootStatus::Disabled, RootStatus::Destroyed][usize::from(s)];
            let material = (status != RootStatus::Destroyed).then(|| Key256::from_slice_zeroizing(&mut m).unwrap());
            f.entries.insert(RootKeyId::new(RootKeyName::new(n).unwrap(), RootVersion::new(v).unwrap()), Entry { status, material });
        }
        let bytes = f.to_bytes();
        let g = KeyFile::parse(&bytes).unwrap();
        prop_assert_eq!(g.instance_id, f.instance_id);
        prop_assert_eq!(g.entries.keys().collect::<Vec<_>>(), f.entries.keys().collect::<Vec<_>>());
        prop_assert_eq!(&g.to_bytes()[..], &bytes[..]);
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = WrappedKey::parse(&bytes);
        let _ = RecordHeader::parse(&bytes);
        let _ = KeyFile::parse(&bytes);
    }

    #[test]
    fn parsers_never_panic_on_mutated_valid_bytes(b in blob(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                                                 cut in any::<prop::sample::Index>()) {
        let mut bytes = b.to_bytes();
        for (i, v) in edits {
            let n = bytes.len();
            bytes[i.index(n)] = v;
        }
        let n = bytes.len();
        bytes.truncate(cut.index(n + 1).max(1));
        let _ = WrappedKey::parse(&bytes);
    }
}
