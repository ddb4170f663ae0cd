//! Which wrap mechanisms the token has, under which codes, and the calls that use them.
//!
//! The list a token gives is not the whole truth as strongroom sees it: RFC 5649 key wrap (KWP)
//! is listed as `CKM_AES_KEY_WRAP_PAD` (0x210A, PKCS#11 2.40; SoftHSM2 does this) by some tokens
//! and as `CKM_AES_KEY_WRAP_KWP` (0x210B, PKCS#11 3.0) by others, and some tokens leave out of
//! the list mechanisms they accept. So the list is read raw (through
//! `strongroom-pkcs11-raw`: `cryptoki` 0.12's `get_mechanism_list` silently drops codes it does
//! not know, 0x210B among them), and every wrap mechanism it does not show is tried once at
//! open, on a session key that is destroyed right after: a round trip that works makes the
//! mechanism usable, whatever the list said. KWP is taken as 0x210A when the token lists it,
//! else as 0x210B when it lists that, else whichever of the two passes the trial (0x210A
//! first). What was found, under which code and how, is kept for `doctor` (the "mechanisms"
//! health check).
//!
//! Calls with a code `cryptoki` can express (GCM, KW, KWP as 0x210A) go through `cryptoki`;
//! KWP as 0x210B goes through `strongroom-pkcs11-raw` ([`wrap_key`], [`unwrap_value`]: the one
//! place that chooses). Both codes name the same algorithm, so a KWP blob does not record the
//! code it was made under (only its algorithm, `aes-kwp`): a blob written under one opens under
//! the other.
//!
//! Known limit: `cryptoki` 0.12 cannot put 0x210B in `CKA_ALLOWED_MECHANISMS`, so a KWP root made
//! on a token that uses 0x210B is restricted by its usage flags (wrap and unwrap only), not to
//! the one mechanism (see [`Mechs::allowed_mechanism`]).

use std::fmt;

use cryptoki::context::Pkcs11;
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use strongroom_core::crypto::NONCE_LEN;
use strongroom_core::{BackendError, WrapAlg, rng};
use strongroom_pkcs11_raw::{CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD, RawModule};
use zeroize::Zeroizing;

use crate::error::device;
use crate::objects::Usage;

pub(crate) const GCM_TAG_BITS: u64 = 128;

/// How a wrap mechanism was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// In the mechanism list (and not tried).
    Listed,
    /// Not in the token's mechanism list, but a trial round trip worked.
    Probed,
    /// Neither listed nor working.
    Missing,
}

/// A PKCS#11 mechanism code.
pub(crate) type Code = strongroom_pkcs11_raw::CK_MECHANISM_TYPE;

/// The code of RFC 5649 key wrap on this token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KwpCode {
    /// `CKM_AES_KEY_WRAP_PAD` (0x210A, PKCS#11 2.40), called through `cryptoki`.
    Pad,
    /// `CKM_AES_KEY_WRAP_KWP` (0x210B, PKCS#11 3.0), called through `strongroom-pkcs11-raw`.
    Kwp,
}

impl KwpCode {
    pub(crate) fn code(self) -> Code {
        match self {
            Self::Pad => CKM_AES_KEY_WRAP_PAD,
            Self::Kwp => CKM_AES_KEY_WRAP_KWP,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Pad => "CKM_AES_KEY_WRAP_PAD (0x210A)",
            Self::Kwp => "CKM_AES_KEY_WRAP_KWP (0x210B)",
        }
    }
}

/// Mechanisms the token offers that strongroom can use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mechs {
    pub gcm: Found,
    pub kwp: Found,
    /// The code KWP is used under (meaningful when `kwp` is not `Missing`).
    pub kwp_code: KwpCode,
    pub kw: Found,
    pub ecb: bool,
    pub oaep: bool,
    pub rsa_gen: bool,
}

impl Mechs {
    pub(crate) fn offers(self, alg: WrapAlg) -> bool {
        self.found(alg) != Found::Missing
    }

    /// The code wraps with `alg` use on this token.
    pub(crate) fn code(self, alg: WrapAlg) -> Code {
        match alg {
            WrapAlg::AesKwp => self.kwp_code.code(),
            _ => mechanism_type(alg).into(),
        }
    }

    /// What a root key for `alg` gets in `CKA_ALLOWED_MECHANISMS`: the code this token uses for
    /// `alg`, if `cryptoki` can express it; `None` for KWP as 0x210B (`cryptoki` 0.12 cannot
    /// make a `MechanismType` of it), so such a root is restricted by its usage flags only.
    pub(crate) fn allowed_mechanism(self, alg: WrapAlg) -> Option<MechanismType> {
        MechanismType::try_from(self.code(alg)).ok()
    }

    fn found(self, alg: WrapAlg) -> Found {
        match alg {
            WrapAlg::AesGcm => self.gcm,
            WrapAlg::AesKwp => self.kwp,
            WrapAlg::AesKw => self.kw,
            _ => Found::Missing,
        }
    }
}

impl fmt::Display for Mechs {
    /// One line for `doctor`: each wrap mechanism, its code and how it was found.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for alg in [WrapAlg::AesGcm, WrapAlg::AesKwp, WrapAlg::AesKw] {
            let code = match alg {
                WrapAlg::AesGcm => "CKM_AES_GCM (0x1087)",
                WrapAlg::AesKwp => self.kwp_code.describe(),
                _ => "CKM_AES_KEY_WRAP (0x2109)",
            };
            parts.push(match self.found(alg) {
                Found::Listed => format!("{} as {code}, listed", alg.name()),
                Found::Probed => format!(
                    "{} as {code}, not in the mechanism list as read but a trial round trip worked",
                    alg.name()
                ),
                Found::Missing if alg == WrapAlg::AesKwp => format!(
                    "{}: not offered (neither CKM_AES_KEY_WRAP_PAD (0x210A) nor CKM_AES_KEY_WRAP_KWP (0x210B) is listed or works in a trial round trip)",
                    alg.name()
                ),
                Found::Missing => format!("{}: not offered", alg.name()),
            });
        }
        f.write_str(&parts.join("; "))
    }
}

pub(crate) fn usage_for(alg: WrapAlg) -> Usage {
    match alg {
        WrapAlg::AesGcm => Usage {
            encrypt: true,
            decrypt: true,
            ..Usage::default()
        },
        _ => Usage {
            wrap: true,
            unwrap: true,
            ..Usage::default()
        },
    }
}

/// The `cryptoki` mechanism type of `alg`, KWP as 0x210A: what a `CKA_ALLOWED_MECHANISMS` read
/// through `cryptoki` can show (it cannot read 0x210B).
pub(crate) fn mechanism_type(alg: WrapAlg) -> MechanismType {
    match alg {
        WrapAlg::AesGcm => MechanismType::AES_GCM,
        WrapAlg::AesKwp => MechanismType::AES_KEY_WRAP_PAD,
        _ => MechanismType::AES_KEY_WRAP,
    }
}

/// The `cryptoki` mechanism for a key-wrap code, if `cryptoki` knows it.
fn cryptoki_wrap_mechanism(code: Code) -> Option<Mechanism<'static>> {
    match code {
        CKM_AES_KEY_WRAP_PAD => Some(Mechanism::AesKeyWrapPad),
        c if c == Code::from(MechanismType::AES_KEY_WRAP) => Some(Mechanism::AesKeyWrap),
        _ => None,
    }
}

/// `C_WrapKey` of `key` under `wrapping` with the key-wrap mechanism `code` (KW or KWP, either
/// code): through `cryptoki` when it knows the code, else through `raw`.
pub(crate) fn wrap_key(
    raw: &RawModule,
    s: &Session,
    code: Code,
    wrapping: ObjectHandle,
    key: ObjectHandle,
) -> Result<Vec<u8>, CkError> {
    match cryptoki_wrap_mechanism(code) {
        Some(m) => s.wrap_key(&m, wrapping, key),
        None => raw.wrap_key(s, code, wrapping, key),
    }
}

/// The longest value [`unwrap_value`] reads (strongroom unwraps 40-byte values).
const MAX_UNWRAPPED: usize = 64;

/// `C_UnwrapKey` of `wrapped` under `unwrapping` with the key-wrap mechanism `code` into a
/// session object made from `template` (which must make it extractable and not sensitive),
/// then its value, and the object destroyed. Through `cryptoki` when it knows the code (which
/// reads the value into a buffer of its own that it frees without zeroizing; the copy it hands
/// back is scrubbed), else through `raw`, which reads it straight into a zeroizing buffer.
pub(crate) fn unwrap_value(
    raw: &RawModule,
    s: &Session,
    code: Code,
    unwrapping: ObjectHandle,
    wrapped: &[u8],
    template: &[Attribute],
) -> Result<Zeroizing<Vec<u8>>, CkError> {
    match cryptoki_wrap_mechanism(code) {
        Some(m) => {
            let h = s.unwrap_key(&m, unwrapping, wrapped, template)?;
            let attrs = s.get_attributes(h, &[AttributeType::Value]);
            let _ = s.destroy_object(h);
            let mut attrs = attrs?;
            let value = match attrs.as_slice() {
                [Attribute::Value(v)] => Zeroizing::new(v.clone()),
                _ => Zeroizing::new(Vec::new()),
            };
            for a in &mut attrs {
                if let Attribute::Value(v) = a {
                    zeroize::Zeroize::zeroize(v);
                }
            }
            Ok(value)
        }
        None => {
            let h = raw.unwrap_key(s, code, unwrapping, wrapped, template)?;
            let mut value = Zeroizing::new(vec![0u8; MAX_UNWRAPPED]);
            let read = raw.read_value(s, h, &mut value[..]);
            let _ = s.destroy_object(h);
            value.truncate(read?);
            Ok(value)
        }
    }
}

/// Reads the mechanism list (raw: every code) and tries every wrap mechanism it does not show
/// (see the module docs).
///
/// # Errors
/// A device error when the list cannot be read or no session can be opened for a trial.
pub(crate) fn probe(ctx: &Pkcs11, raw: &RawModule, slot: Slot) -> Result<Mechs, BackendError> {
    let list = raw
        .mechanism_list(slot)
        .map_err(|e| device("read the mechanism list", e, "check the HSM"))?;
    let has = |c: Code| list.contains(&c);
    let mut mechs = Mechs {
        gcm: Found::Missing,
        kwp: Found::Missing,
        // 0x210A when listed (cryptoki calls it), else 0x210B when listed.
        kwp_code: if !has(CKM_AES_KEY_WRAP_PAD) && has(CKM_AES_KEY_WRAP_KWP) {
            KwpCode::Kwp
        } else {
            KwpCode::Pad
        },
        kw: Found::Missing,
        ecb: has(MechanismType::AES_ECB.into()),
        oaep: has(MechanismType::RSA_PKCS_OAEP.into()),
        rsa_gen: has(MechanismType::RSA_PKCS_KEY_PAIR_GEN.into()),
    };
    let mut session: Option<Session> = None;
    for alg in [WrapAlg::AesGcm, WrapAlg::AesKwp, WrapAlg::AesKw] {
        let found = if has(mechs.code(alg)) {
            Found::Listed
        } else {
            if session.is_none() {
                // A public session is enough for session objects; closed when dropped.
                session = Some(ctx.open_rw_session(slot).map_err(|e| {
                    device(
                        "open a session to try the wrap mechanisms",
                        e,
                        "check the HSM",
                    )
                })?);
            }
            // KWP under either code, 0x210A first.
            let codes: &[Option<KwpCode>] = if alg == WrapAlg::AesKwp {
                &[Some(KwpCode::Pad), Some(KwpCode::Kwp)]
            } else {
                &[None]
            };
            let mut found = Found::Missing;
            for code in codes {
                if let Some(c) = code {
                    mechs.kwp_code = *c;
                }
                if session
                    .as_ref()
                    .is_some_and(|s| trial(raw, s, alg, mechs.code(alg)))
                {
                    found = Found::Probed;
                    break;
                }
            }
            if alg == WrapAlg::AesKwp && found == Found::Missing {
                mechs.kwp_code = KwpCode::Pad;
            }
            found
        };
        match alg {
            WrapAlg::AesGcm => mechs.gcm = found,
            WrapAlg::AesKwp => mechs.kwp = found,
            _ => mechs.kw = found,
        }
    }
    Ok(mechs)
}

/// One round trip with `alg` under `code` and a fresh session key; any failure means "not
/// usable".
fn trial(raw: &RawModule, s: &Session, alg: WrapAlg, code: Code) -> bool {
    let usage = usage_for(alg);
    let key = s.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(false),
            // Public, so that the trial needs no login (tokens make keys private by default).
            Attribute::Private(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(usage.encrypt),
            Attribute::Decrypt(usage.decrypt),
            Attribute::Wrap(usage.wrap),
            Attribute::Unwrap(usage.unwrap),
        ],
    );
    let Ok(key) = key else {
        return false;
    };
    let mut probe = Zeroizing::new([0u8; 40]);
    let ok = rng::fill_nonce(&mut probe[..]).is_ok()
        && match alg {
            WrapAlg::AesGcm => {
                let mut iv = [0u8; NONCE_LEN];
                let _ = rng::fill_nonce(&mut iv);
                GcmParams::new(&mut iv, b"probe", GCM_TAG_BITS.into())
                    .ok()
                    .and_then(|p| s.encrypt(&Mechanism::AesGcm(p), key, &probe[..]).ok())
                    .and_then(|ct| {
                        GcmParams::new(&mut iv, b"probe", GCM_TAG_BITS.into())
                            .ok()
                            .and_then(|p| s.decrypt(&Mechanism::AesGcm(p), key, &ct).ok())
                    })
                    .is_some_and(|back| Zeroizing::new(back)[..] == probe[..])
            }
            _ => {
                let template = [
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::Token(false),
                    Attribute::Private(false),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                ];
                let mut with_value = template.to_vec();
                with_value.push(Attribute::Value(probe.to_vec()));
                let obj = s.create_object(&with_value);
                if let Some(Attribute::Value(v)) = with_value.last_mut() {
                    zeroize::Zeroize::zeroize(v);
                }
                let wrapped = obj
                    .as_ref()
                    .ok()
                    .and_then(|o| wrap_key(raw, s, code, key, *o).ok());
                if let Ok(o) = obj {
                    let _ = s.destroy_object(o);
                }
                wrapped
                    .and_then(|w| unwrap_value(raw, s, code, key, &w, &template).ok())
                    .is_some_and(|v| v[..] == probe[..])
            }
        };
    let _ = s.destroy_object(key);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mechs(kwp_code: KwpCode, kwp: Found) -> Mechs {
        Mechs {
            gcm: Found::Listed,
            kwp,
            kwp_code,
            kw: Found::Missing,
            ecb: true,
            oaep: true,
            rsa_gen: true,
        }
    }

    #[test]
    fn kwp_is_used_and_shown_under_the_tokens_code() {
        let pad = mechs(KwpCode::Pad, Found::Listed);
        assert_eq!(pad.code(WrapAlg::AesKwp), 0x210A);
        assert_eq!(
            pad.allowed_mechanism(WrapAlg::AesKwp),
            Some(MechanismType::AES_KEY_WRAP_PAD)
        );
        assert!(
            pad.to_string()
                .contains("aes-kwp as CKM_AES_KEY_WRAP_PAD (0x210A), listed")
        );
        let kwp = mechs(KwpCode::Kwp, Found::Probed);
        assert_eq!(kwp.code(WrapAlg::AesKwp), 0x210B);
        assert_eq!(
            kwp.allowed_mechanism(WrapAlg::AesKwp),
            None,
            "cryptoki cannot say 0x210B"
        );
        assert_eq!(
            kwp.allowed_mechanism(WrapAlg::AesGcm),
            Some(MechanismType::AES_GCM)
        );
        let shown = kwp.to_string();
        assert!(
            shown.contains("aes-kwp as CKM_AES_KEY_WRAP_KWP (0x210B), not in the mechanism list"),
            "{shown}"
        );
        assert!(shown.contains("aes-kw: not offered"), "{shown}");
        let none = mechs(KwpCode::Pad, Found::Missing).to_string();
        assert!(
            none.contains("aes-kwp: not offered (neither") && none.contains("0x210B"),
            "{none}"
        );
    }

    #[test]
    fn only_codes_cryptoki_knows_go_through_cryptoki() {
        assert!(cryptoki_wrap_mechanism(CKM_AES_KEY_WRAP_PAD).is_some());
        assert!(cryptoki_wrap_mechanism(MechanismType::AES_KEY_WRAP.into()).is_some());
        assert!(cryptoki_wrap_mechanism(CKM_AES_KEY_WRAP_KWP).is_none());
    }
}
