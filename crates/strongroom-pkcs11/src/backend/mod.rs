//! [`Pkcs11Backend`]: the [`Backend`] trait on a PKCS#11 token.
//!
//! Where things are:
//! - this file: the backend, `open`, the trait surface and shared helpers;
//! - `library`: the process-wide library context (one per module), its generation and
//!   recovery; `session`: one backend's session pool in one generation and the login;
//! - `runner`: running an operation with retries, backoff and recovery;
//! - `lookup`: finding objects and root records in the token, the key handle cache;
//! - `wrapping`: wrap and unwrap under a root, and the canary that tells bad data from a
//!   failing device; `mechanisms`: which wrap mechanisms the token has;
//! - `lifecycle`: generating, importing, adopting, disabling, enabling and destroying roots;
//! - `byok`: the RSA-OAEP import key and imports under it;
//! - `status`: health checks and the list of roots;
//! - `claim`: which store the namespace's keys belong to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Limit;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use strongroom_core::blob::{WrapAlg, WrappedKey, WrappingKeyRef};
use strongroom_core::crypto::{
    BOUND_PLAINTEXT_LEN, BOUND_WRAPPED_LEN, NONCE_LEN, bind_context, unbind_context,
};
use strongroom_core::{
    Backend, BackendError, BackendInfo, Capabilities, HealthCheck, ImportKey, Key256, RootKeyId,
    RootKeyInfo, RootStatus, rng,
};

use crate::config::{Pin, Pkcs11Config};
use crate::der;
use crate::error::{Failure, classify, connection_lost, describe, device, rv};
use crate::library::{LibState, Library, find_slot, library};
use crate::mechanisms::{self, GCM_TAG_BITS, Mechs, mechanism_type, usage_for};
use crate::objects::{APPLICATION, KeyLocator, Labels, RecordState, RootRecord, Usage};
use crate::pin_state::PinState;
use crate::session::{CachedKey, CheckoutError, Generation, Lease};

mod anchor;
mod byok;
mod claim;
mod lifecycle;
mod lookup;
mod runner;
mod status;
mod wrapping;

const KIND: &str = "pkcs11";

/// A root-key backend on a PKCS#11 token. Cheap to clone; clones share one session pool.
#[derive(Clone)]
pub struct Pkcs11Backend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("module", &self.inner.config.module)
            .field("token", &self.inner.token_label)
            .field("serial", &self.inner.serial)
            .finish_non_exhaustive()
    }
}

/// Counters of the session pool, for health checks and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// The current generation (1 + the number of re-initializations).
    pub generation: u64,
    /// Sessions open now.
    pub open: usize,
    /// Sessions idle in the pool now.
    pub idle: usize,
    /// Most sessions the pool will open.
    pub cap: usize,
    /// Sessions opened since the backend was made.
    pub sessions_opened: u64,
    /// Re-initializations of the library since the backend was made, after which this backend
    /// found its token again (the library is shared: another backend's recovery counts too).
    pub reinitializations: u64,
}

struct Inner {
    config: Pkcs11Config,
    labels: Labels,
    pin: Pin,
    token_label: String,
    serial: String,
    description: String,
    mechs: Mechs,
    /// Wrap algorithms in order of preference, those the token offers.
    algs: Vec<WrapAlg>,
    cap: usize,
    /// The module's library context, shared with every backend on the module in this process.
    lib: Arc<Library>,
    /// This backend's sessions in the library's current generation (replaced, without closing
    /// anything, when the library has moved on).
    local: Mutex<Option<Arc<Generation>>>,
    /// Root key handles found so far (checked again after a recovery before use).
    keys: Mutex<HashMap<RootKeyId, CachedKey>>,
    /// Serializes administrative calls (generate, create, destroy, find) on the token.
    /// SoftHSM2 quirk: `C_GenerateKey` racing `C_FindObjects` in other threads failed 2-5% of
    /// the time and left stray objects (SoftHSMv2 issue 573, fixed in 2.7.0).
    admin: Mutex<()>,
    sessions_opened: AtomicU64,
    /// New generations this backend moved to (recoveries of the library, by it or another
    /// backend, after which it found its token again).
    reconnects: AtomicU64,
}

/// An operation's failure: a raw PKCS#11 error (which the runner may retry) or a final answer.
enum OpError {
    Ck(CkError),
    Final(BackendError),
}

impl From<CkError> for OpError {
    fn from(e: CkError) -> Self {
        Self::Ck(e)
    }
}

impl From<BackendError> for OpError {
    fn from(e: BackendError) -> Self {
        Self::Final(e)
    }
}

type OpResult<T> = Result<T, OpError>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs a step of `open` that reads from the token, again after a device error (with the
/// configured attempts and backoff): a token that fails to describe itself once is no reason
/// to fail the open, nor to call it missing.
fn open_retrying<T>(
    config: &Pkcs11Config,
    mut step: impl FnMut() -> Result<T, BackendError>,
) -> Result<T, BackendError> {
    let attempts = config.attempts.max(1);
    let mut attempt = 0;
    loop {
        match step() {
            Err(BackendError::Device { .. }) if attempt + 1 < attempts => {
                let factor = 4u32.saturating_pow(attempt.min(6));
                std::thread::sleep(config.backoff.saturating_mul(factor));
                attempt += 1;
            }
            r => return r,
        }
    }
}

fn usage_attrs(u: Usage) -> Vec<Attribute> {
    vec![
        Attribute::Encrypt(u.encrypt),
        Attribute::Decrypt(u.decrypt),
        Attribute::Wrap(u.wrap),
        Attribute::Unwrap(u.unwrap),
    ]
}

/// The template of a root key object: a sensitive, non-extractable AES key on the token,
/// permitted exactly what `alg` needs, and only `allowed_mechanism` when given (see
/// `Mechs::allowed_mechanism`: none for a token that says KWP as 0x210B).
fn root_template(
    labels: &Labels,
    id: &RootKeyId,
    alg: WrapAlg,
    allowed_mechanism: Option<MechanismType>,
    value_len: bool,
) -> Vec<Attribute> {
    let label = labels.root(id).into_bytes();
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(true),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::Label(label.clone()),
        Attribute::Id(label),
    ];
    // SoftHSM2 quirk: an unwrap template must not carry CKA_VALUE_LEN (CKR_ATTRIBUTE_READ_ONLY);
    // generate needs it.
    if value_len {
        t.push(Attribute::ValueLen(32.into()));
    }
    t.extend(usage_attrs(usage_for(alg)));
    if let Some(m) = allowed_mechanism {
        t.push(Attribute::AllowedMechanisms(vec![m]));
    }
    t
}

/// Whether a token refused a template because of `CKA_ALLOWED_MECHANISMS` (or something in it
/// that it does not know), so the template is worth trying again without it.
fn refuses_allowed_mechanisms(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::AttributeTypeInvalid
                | RvError::AttributeValueInvalid
                | RvError::TemplateInconsistent,
            _,
        )
    )
}

/// Zeroizes any key material (`CKA_VALUE`) left in a template or attribute list.
fn scrub(attrs: &mut [Attribute]) {
    for a in attrs {
        if let Attribute::Value(v) = a {
            v.zeroize();
        }
    }
}

fn oaep_params(sha256: bool) -> Mechanism<'static> {
    let (hash, mgf) = if sha256 {
        (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256)
    } else {
        (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1)
    };
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()))
}

/// What the token holds for one root version.
struct Located {
    /// The record in force, if any.
    record: Option<RootRecord>,
    /// Every record object of this root version (normally one; see [`RootRecord`]).
    record_objects: Vec<ObjectHandle>,
    key: Option<ObjectHandle>,
}

impl Located {
    fn state(&self) -> Option<RecordState> {
        self.record.as_ref().map(|r| r.state)
    }

    /// Where the root's key is: as its record says, else under strongroom's own label.
    fn locator(&self) -> KeyLocator {
        locator_of(self.record.as_ref())
    }
}

/// Where a root's key is, by its record (none: strongroom's own label). The one place that
/// decides it: every lookup, change and listing goes through here.
fn locator_of(record: Option<&RootRecord>) -> KeyLocator {
    record.map_or(KeyLocator::Managed, |r| r.key.clone())
}

impl Pkcs11Backend {
    /// Loads the module, finds the token, reads the PIN and logs in.
    ///
    /// # Errors
    /// [`BackendError::Config`] for a missing module, an unknown token or a bad PIN source;
    /// [`BackendError::Login`] for a wrong or locked PIN; a device error otherwise.
    pub fn open(config: Pkcs11Config) -> Result<Self, BackendError> {
        let labels = Labels::new(&config.namespace).map_err(BackendError::Config)?;
        let mut pin = Pin::new(config.pin.load()?);
        let lib = library(&config.module)?;
        let ctx = lib.ctx.clone();
        // The generation the slot was found in; a recovery before the first call makes the
        // backend look again.
        let mut gen_id = lib.read().id;
        let mut slot = open_retrying(&config, || find_slot(&ctx, &config.token));
        // Many PKCS#11 libraries list only the tokens they saw when they were initialized: a
        // token plugged in later, or (SoftHSM2) one whose files another process was writing
        // at that moment, which it leaves out or cannot describe (`C_GetTokenInfo` answering
        // CKR_GENERAL_ERROR; SoftHSMv2 issue #757, seen here when replicas of a fleet start
        // while others write the audit anchor). A token not found, or not described after the
        // retries, is looked for again after the library is initialized anew, a few times,
        // while no other backend of this process uses it (they would all have to open new
        // sessions).
        let mut rescans = 0u32;
        while let Err(BackendError::Config(_) | BackendError::Device { .. }) = &slot {
            if rescans >= 3 || Arc::strong_count(&lib) > 2 {
                break;
            }
            std::thread::sleep(config.backoff.saturating_mul(4u32.pow(rescans)));
            rescans += 1;
            lib.recover(
                gen_id,
                &CkError::Pkcs11(RvError::TokenNotPresent, Function::GetSlotList),
            )?;
            gen_id = lib.read().id;
            slot = open_retrying(&config, || find_slot(&ctx, &config.token));
        }
        let slot = slot?;
        let info = open_retrying(&config, || {
            ctx.get_token_info(slot)
                .map_err(|e| device("read token information", e, "check the HSM"))
        })?;
        let token_label = info.label().trim_end().to_owned();
        let serial = info.serial_number().trim_end().to_owned();
        pin.serial.clone_from(&serial);
        pin.state = config.pin_state.as_ref().map(PinState::new);
        pin.allow_final_try = config.allow_final_pin_try;
        // The pool opens read-write sessions: the token's RW limit binds too.
        let limit = |l: Limit| match l {
            Limit::Max(n) => usize::try_from(n).unwrap_or(usize::MAX).max(1),
            Limit::Infinite | Limit::Unavailable => usize::MAX,
        };
        let token_cap = limit(info.max_session_count()).min(limit(info.max_rw_session_count()));
        let cap = config.max_sessions.clamp(1, token_cap);
        let mechs = open_retrying(&config, || mechanisms::probe(&ctx, &lib.raw, slot))?;
        let algs: Vec<WrapAlg> = config
            .preference
            .iter()
            .copied()
            .filter(|a| mechs.offers(*a))
            .collect();
        if algs.is_empty() {
            return Err(BackendError::Config(format!(
                "token {token_label} offers none of the wrap mechanisms strongroom can use ({}); use a token with AES-GCM, AES-KWP or AES-KW",
                config
                    .preference
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let description = format!(
            "token {token_label:?} (serial {serial}, {} {}) via {}",
            info.manufacturer_id().trim_end(),
            info.model().trim_end(),
            config.module.display()
        );
        let backend = Self {
            inner: Arc::new(Inner {
                labels,
                pin,
                token_label,
                serial,
                description,
                mechs,
                algs,
                cap,
                local: Mutex::new(Some(Arc::new(Generation::new(gen_id, ctx, slot, cap)))),
                keys: Mutex::new(HashMap::new()),
                admin: Mutex::new(()),
                sessions_opened: AtomicU64::new(0),
                reconnects: AtomicU64::new(0),
                lib,
                config,
            }),
        };
        // Log in now, so a wrong PIN is reported at open and not at the first use.
        backend.run("log in", |_, _, _| Ok(()))?;
        Ok(backend)
    }

    /// Pool counters.
    #[must_use]
    pub fn stats(&self) -> PoolStats {
        let generation = self.inner.lib.read().id;
        let local = lock(&self.inner.local).clone();
        let (open, idle, cap) = match local {
            Some(g) if g.id == generation => g.pool_stats(),
            _ => (0, 0, self.inner.cap),
        };
        PoolStats {
            generation,
            open,
            idle,
            cap,
            sessions_opened: self.inner.sessions_opened.load(Ordering::Relaxed),
            reinitializations: self.inner.reconnects.load(Ordering::Relaxed),
        }
    }

    /// The wrap algorithms in use, in order of preference (new root keys use the first).
    #[must_use]
    pub fn algorithms(&self) -> &[WrapAlg] {
        &self.inner.algs
    }

    /// The token's label.
    #[must_use]
    pub fn token_label(&self) -> &str {
        &self.inner.token_label
    }
}

impl Backend for Pkcs11Backend {
    fn describe(&self) -> BackendInfo {
        let i = &self.inner;
        BackendInfo {
            kind: KIND,
            instance_id: format!(
                "pkcs11:serial={};namespace={}",
                i.serial,
                i.labels.namespace()
            ),
            description: i.description.clone(),
            capabilities: Capabilities {
                generate: true,
                import_plain: true,
                import_wrapped: i.mechs.oaep && i.mechs.rsa_gen && i.mechs.ecb,
                adopt: true,
                disable: true,
                destroy: true,
                wrap_algs: i.algs.clone(),
                hardware: true,
            },
        }
    }

    fn health(&self) -> Result<Vec<HealthCheck>, BackendError> {
        self.check_health()
    }

    fn list_roots(&self) -> Result<Vec<RootKeyInfo>, BackendError> {
        self.list()
    }

    fn wrap(
        &self,
        root: &RootKeyId,
        key: &Key256,
        context: &[u8],
    ) -> Result<WrappedKey, BackendError> {
        let (alg, payload) = self.run("wrap a key", |generation, s, _| {
            let k = self.resolve(generation, s, root)?;
            let r = match k.alg {
                WrapAlg::AesGcm => Self::gcm_wrap(s, &k, key, context),
                _ => self.kw_wrap(s, &k, key, context),
            };
            match r {
                Ok(p) => Ok((k.alg, p)),
                Err(e) => match classify(&e) {
                    Failure::NotPermitted => Err(self.not_permitted(generation, s, root, &e)),
                    Failure::StaleHandle => Err(e.into()),
                    _ if connection_lost(&e) => Err(e.into()),
                    // The input is ours, so not bad data: the key is gone, or the device fails.
                    _ => Err(self.key_gone_or_device(s, root, &k, e)),
                },
            }
        })?;
        WrappedKey::new(alg, WrappingKeyRef::Root(root.clone()), payload).map_err(|e| {
            BackendError::Device {
                operation: "wrap a key",
                detail: format!(
                    "the token returned a wrapped key of unexpected length ({e}); check the HSM"
                ),
                source: None,
            }
        })
    }

    fn unwrap(&self, blob: &WrappedKey, context: &[u8]) -> Result<Key256, BackendError> {
        let root = blob.root().ok_or(BackendError::NotRootWrapped)?;
        debug_assert!(
            blob.payload().len() == blob.alg().payload_len()
                && BOUND_WRAPPED_LEN <= blob.payload().len()
        );
        self.run("unwrap a key", |generation, s, _| {
            let k = self.resolve(generation, s, root)?;
            // A blob whose algorithm the root may not be used with (e.g. its algorithm byte was
            // changed, KWP <-> KW) was altered: refused before any token call, whatever the
            // token would have answered.
            if !k.permits.contains(&blob.alg()) {
                return Err(BackendError::Integrity.into());
            }
            if !self.inner.mechs.offers(blob.alg()) {
                return Err(BackendError::UnsupportedAlgorithm {
                    backend: KIND,
                    alg: blob.alg(),
                }
                .into());
            }
            // The key's mechanism for new wraps may differ from the blob's; unwrap with the blob's.
            let k = CachedKey {
                alg: blob.alg(),
                ..k
            };
            match self.unwrap_payload(s, &k, blob, context) {
                Ok(Ok(key)) => Ok(key),
                Ok(Err(())) => Err(BackendError::Integrity.into()),
                Err(e) => self.failed_unwrap(generation, s, root, &k, e, || {
                    self.unwrap_payload(s, &k, blob, context)
                }),
            }
        })
    }

    fn generate_root(&self, id: &RootKeyId) -> Result<RootKeyInfo, BackendError> {
        self.generate(id)
    }

    fn import_root(&self, id: &RootKeyId, material: &Key256) -> Result<RootKeyInfo, BackendError> {
        self.import_plain(id, material)
    }

    fn import_key(&self) -> Result<ImportKey, BackendError> {
        self.make_import_key()
    }

    fn import_wrapped_root(
        &self,
        id: &RootKeyId,
        wrapped: &[u8],
        check_value: &[u8; 3],
    ) -> Result<RootKeyInfo, BackendError> {
        self.import_wrapped(id, wrapped, check_value)
    }

    fn adopt_root(&self, id: &RootKeyId, selector: &str) -> Result<RootKeyInfo, BackendError> {
        self.adopt(id, selector)
    }

    fn disable_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.disable(id)
    }

    fn enable_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.enable(id)
    }

    fn destroy_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.destroy(id)
    }

    fn store_claim(&self) -> Result<Option<strongroom_core::StoreClaim>, BackendError> {
        self.read_claim()
    }

    fn set_store_claim(
        &self,
        claim: &strongroom_core::StoreClaim,
        replacing: Option<&strongroom_core::StoreClaim>,
    ) -> Result<(), BackendError> {
        self.write_claim(claim, replacing)
    }

    fn audit_anchors(&self) -> Result<Vec<Vec<u8>>, BackendError> {
        self.read_anchors()
    }

    fn put_audit_anchor(&self, anchor: &[u8], replacing: &[Vec<u8>]) -> Result<(), BackendError> {
        self.write_anchor(anchor, replacing)
    }
}

impl Drop for Inner {
    /// Closes this backend's idle sessions if they belong to the library's current generation
    /// (after a recovery their numbers may name other backends' sessions). The library itself
    /// is never finalized: other backends in the process may be using it (see
    /// `library`).
    fn drop(&mut self) {
        let st = self.lib.read();
        let local = self
            .local
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(g) = local
            && g.id == st.id
            && st.lost.is_none()
        {
            g.close_idle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strongroom_core::{RootKeyName, RootVersion};

    #[test]
    fn templates_make_sensitive_non_extractable_keys() {
        let id = RootKeyId::new(RootKeyName::new("acme").unwrap(), RootVersion::FIRST);
        let t = root_template(
            &Labels::new("strongroom").unwrap(),
            &id,
            WrapAlg::AesGcm,
            Some(MechanismType::AES_GCM),
            true,
        );
        for must in [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Label(b"strongroom/acme/v1".to_vec()),
        ] {
            assert!(t.contains(&must), "missing {must:?}");
        }
        let t = root_template(
            &Labels::new("strongroom").unwrap(),
            &id,
            WrapAlg::AesKwp,
            None,
            false,
        );
        assert!(t.contains(&Attribute::Wrap(true)) && t.contains(&Attribute::Encrypt(false)));
        assert!(
            !t.iter()
                .any(|a| matches!(a, Attribute::ValueLen(_) | Attribute::AllowedMechanisms(_)))
        );
    }

    #[test]
    fn scrub_zeroizes_values() {
        let mut t = vec![Attribute::Value(vec![7; 32]), Attribute::Token(true)];
        scrub(&mut t);
        // `Vec::zeroize` overwrites the whole allocation, then clears the vector.
        assert_eq!(t[0], Attribute::Value(Vec::new()));
    }
}
