//! The raw calls against a real SoftHSM2 token, beside cryptoki on the same library: the same
//! sessions and objects, the same results, and cryptoki's errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use strongroom_pkcs11_raw::{CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD, RawModule};
use strongroom_test_support::softhsm::Token;
use zeroize::Zeroizing;

fn setup(token: &Token) -> (Pkcs11, RawModule, Session) {
    let ctx = Pkcs11::new(&token.module).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let raw = RawModule::load(&token.module).unwrap();
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let s = ctx.open_rw_session(slot).unwrap();
    s.login(
        UserType::User,
        Some(&AuthPin::new(token.user_pin.clone().into())),
    )
    .unwrap();
    (ctx, raw, s)
}

fn wrapping_key(s: &Session) -> ObjectHandle {
    s.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(false),
            Attribute::ValueLen(32.into()),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
        ],
    )
    .unwrap()
}

fn secret_template() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ]
}

strongroom_test_support::softhsm_tests! {
    fn the_raw_list_is_the_modules_whole_list(token) {
        let (ctx, raw, _s) = setup(token);
        let slot = ctx.get_slots_with_token().unwrap()[0];
        let codes = raw.mechanism_list(slot).unwrap();
        assert!(codes.contains(&CKM_AES_KEY_WRAP_PAD), "SoftHSM2 lists KWP as 0x210A");
        let known = ctx.get_mechanism_list(slot).unwrap();
        assert!(known.len() <= codes.len());
        for m in &known {
            assert!(codes.contains(&(*m).into()), "{m} missing from the raw list");
        }
    }

    fn raw_and_cryptoki_wraps_are_interchangeable(token) {
        let (_ctx, raw, s) = setup(token);
        let kek = wrapping_key(&s);
        let value = Zeroizing::new(vec![0x42u8; 40]);
        let mut t = secret_template();
        t.push(Attribute::Value(value.to_vec()));
        let obj = s.create_object(&t).unwrap();
        // Raw wrap, cryptoki unwrap.
        let wrapped = raw.wrap_key(&s, CKM_AES_KEY_WRAP_PAD, kek, obj).unwrap();
        assert_eq!(wrapped.len(), 48);
        let back = s.unwrap_key(&Mechanism::AesKeyWrapPad, kek, &wrapped, &secret_template()).unwrap();
        let attrs = s.get_attributes(back, &[AttributeType::Value]).unwrap();
        assert!(matches!(attrs.as_slice(), [Attribute::Value(v)] if v[..] == value[..]));
        // cryptoki wrap, raw unwrap and raw read into a zeroizing buffer.
        let wrapped = s.wrap_key(&Mechanism::AesKeyWrapPad, kek, obj).unwrap();
        let h = raw.unwrap_key(&s, CKM_AES_KEY_WRAP_PAD, kek, &wrapped, &secret_template()).unwrap();
        let mut out = Zeroizing::new([0u8; 64]);
        let n = raw.read_value(&s, h, &mut out[..]).unwrap();
        assert_eq!(&out[..n], &value[..]);
        // The handle is cryptoki's too.
        s.destroy_object(h).unwrap();
        assert!(raw.read_value(&s, h, &mut out[..]).is_err());
        // A value that does not fit is an error, not a short read.
        let h = raw.unwrap_key(&s, CKM_AES_KEY_WRAP_PAD, kek, &wrapped, &secret_template()).unwrap();
        let e = raw.read_value(&s, h, &mut out[..8]).unwrap_err();
        assert!(matches!(e, Error::Pkcs11(RvError::BufferTooSmall, Function::GetAttributeValue)), "{e}");
    }

    fn failures_are_cryptoki_errors_with_the_function(token) {
        let (_ctx, raw, s) = setup(token);
        let kek = wrapping_key(&s);
        let mut t = secret_template();
        t.push(Attribute::Value(vec![7u8; 40]));
        let obj = s.create_object(&t).unwrap();
        // SoftHSM2 implements RFC 5649 only under 0x210A.
        let e = raw.wrap_key(&s, CKM_AES_KEY_WRAP_KWP, kek, obj).unwrap_err();
        assert!(matches!(e, Error::Pkcs11(RvError::MechanismInvalid, Function::WrapKey)), "{e}");
        let mut wrapped = raw.wrap_key(&s, CKM_AES_KEY_WRAP_PAD, kek, obj).unwrap();
        wrapped[3] ^= 1;
        let e = raw.unwrap_key(&s, CKM_AES_KEY_WRAP_PAD, kek, &wrapped, &secret_template()).unwrap_err();
        assert!(matches!(e, Error::Pkcs11(_, Function::UnwrapKey)), "{e}");
    }
}
