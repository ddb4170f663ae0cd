//! Which wrap mechanisms the token has: its mechanism list, checked by trial.
//!
//! The list a token gives is not the whole truth as strongroom sees it: `cryptoki` 0.12's
//! `get_mechanism_list` silently drops codes it does not know, and RFC 5649 key wrap (KWP) is
//! listed as `CKM_AES_KEY_WRAP_PAD` (0x210A, PKCS#11 2.40; SoftHSM2 does this) by some tokens and
//! as `CKM_AES_KEY_WRAP_KWP` (0x210B, PKCS#11 3.0) by others, a code `cryptoki` 0.12 neither
//! lists nor can call. So every wrap mechanism the list does not show is tried once at open, on a
//! session key that is destroyed right after: a round trip that works makes the mechanism
//! usable, whatever the list said. What was found, and how, is kept for `doctor` (the
//! "mechanisms" health check).
//!
//! Known limit: a token that accepts RFC 5649 only under 0x210B cannot be used for KWP through
//! `cryptoki` 0.12 (the backend has no unsafe code to call it directly); such a token still
//! gets AES-GCM or AES-KW, and the health check says why KWP is missing.

use std::fmt;

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use strongroom_core::crypto::NONCE_LEN;
use strongroom_core::{BackendError, WrapAlg, rng};
use zeroize::Zeroizing;

use crate::error::device;
use crate::objects::Usage;

pub(crate) const GCM_TAG_BITS: u64 = 128;

/// How a wrap mechanism was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// In the mechanism list (and not tried).
    Listed,
    /// Not in the list as `cryptoki` reads it, but a trial round trip worked.
    Probed,
    /// Neither listed nor working.
    Missing,
}

/// Mechanisms the token offers that strongroom can use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mechs {
    pub gcm: Found,
    pub kwp: Found,
    pub kw: Found,
    pub ecb: bool,
    pub oaep: bool,
    pub rsa_gen: bool,
}

impl Mechs {
    pub(crate) fn offers(self, alg: WrapAlg) -> bool {
        self.found(alg) != Found::Missing
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
                WrapAlg::AesKwp => "CKM_AES_KEY_WRAP_PAD (0x210A)",
                _ => "CKM_AES_KEY_WRAP (0x2109)",
            };
            parts.push(match self.found(alg) {
                Found::Listed => format!("{} as {code}, listed", alg.name()),
                Found::Probed => format!(
                    "{} as {code}, not in the mechanism list as read but a trial round trip worked",
                    alg.name()
                ),
                Found::Missing if alg == WrapAlg::AesKwp => format!(
                    "{}: not usable (the token refused {code}; a token that offers RFC 5649 only as CKM_AES_KEY_WRAP_KWP (0x210B) cannot be used for it through cryptoki 0.12)",
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

pub(crate) fn mechanism_type(alg: WrapAlg) -> MechanismType {
    match alg {
        WrapAlg::AesGcm => MechanismType::AES_GCM,
        WrapAlg::AesKwp => MechanismType::AES_KEY_WRAP_PAD,
        _ => MechanismType::AES_KEY_WRAP,
    }
}

pub(crate) fn wrap_mechanism(alg: WrapAlg) -> Mechanism<'static> {
    if alg == WrapAlg::AesKwp {
        Mechanism::AesKeyWrapPad
    } else {
        Mechanism::AesKeyWrap
    }
}

/// Reads the mechanism list and tries every wrap mechanism it does not show (see the module
/// docs).
///
/// # Errors
/// A device error when the list cannot be read or no session can be opened for a trial.
pub(crate) fn probe(ctx: &Pkcs11, slot: Slot) -> Result<Mechs, BackendError> {
    let list = ctx
        .get_mechanism_list(slot)
        .map_err(|e| device("read the mechanism list", e, "check the HSM"))?;
    let has = |t: MechanismType| list.contains(&t);
    let mut mechs = Mechs {
        gcm: Found::Missing,
        kwp: Found::Missing,
        kw: Found::Missing,
        ecb: has(MechanismType::AES_ECB),
        oaep: has(MechanismType::RSA_PKCS_OAEP),
        rsa_gen: has(MechanismType::RSA_PKCS_KEY_PAIR_GEN),
    };
    let mut session: Option<Session> = None;
    for alg in [WrapAlg::AesGcm, WrapAlg::AesKwp, WrapAlg::AesKw] {
        let found = if has(mechanism_type(alg)) {
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
            match session.as_ref().map(|s| trial(s, alg)) {
                Some(true) => Found::Probed,
                _ => Found::Missing,
            }
        };
        match alg {
            WrapAlg::AesGcm => mechs.gcm = found,
            WrapAlg::AesKwp => mechs.kwp = found,
            _ => mechs.kw = found,
        }
    }
    Ok(mechs)
}

/// One round trip with `alg` under a fresh session key; any failure means "not usable".
fn trial(s: &Session, alg: WrapAlg) -> bool {
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
                    .and_then(|o| s.wrap_key(&wrap_mechanism(alg), key, *o).ok());
                if let Ok(o) = obj {
                    let _ = s.destroy_object(o);
                }
                wrapped
                    .and_then(|w| s.unwrap_key(&wrap_mechanism(alg), key, &w, &template).ok())
                    .is_some_and(|h| {
                        let attrs = s.get_attributes(h, &[AttributeType::Value]);
                        let _ = s.destroy_object(h);
                        let mut attrs = attrs.unwrap_or_default();
                        let same =
                            matches!(attrs.as_slice(), [Attribute::Value(v)] if v[..] == probe[..]);
                        for a in &mut attrs {
                            if let Attribute::Value(v) = a {
                                zeroize::Zeroize::zeroize(v);
                            }
                        }
                        same
                    })
            }
        };
    let _ = s.destroy_object(key);
    ok
}
