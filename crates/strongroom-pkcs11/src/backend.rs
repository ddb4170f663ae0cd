//! [`Pkcs11Backend`]: the [`Backend`] trait on a PKCS#11 token.

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
use crate::mechanisms::{self, GCM_TAG_BITS, Mechs, mechanism_type, usage_for, wrap_mechanism};
use crate::objects::{APPLICATION, KeyLocator, Labels, RecordState, RootRecord, Usage};
use crate::pin_state::PinState;
use crate::session::{CachedKey, CheckoutError, Generation, Lease};

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
/// permitted exactly what `alg` needs.
fn root_template(
    labels: &Labels,
    id: &RootKeyId,
    alg: WrapAlg,
    allowed_mechanisms: bool,
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
    if allowed_mechanisms {
        t.push(Attribute::AllowedMechanisms(vec![mechanism_type(alg)]));
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
        let gen_id = lib.read().id;
        let slot = open_retrying(&config, || find_slot(&ctx, &config.token))?;
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
        let mechs = open_retrying(&config, || mechanisms::probe(&ctx, slot))?;
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

    /// This backend's sessions in the library generation `st`: the ones it has, or (when the
    /// library was recovered since) a new pool on the slot found again. The old pool is dropped
    /// without closing its sessions (their handle numbers are void), and cached key handles are
    /// checked again before use ([`Self::resolve`]).
    fn generation(&self, st: &LibState) -> OpResult<Arc<Generation>> {
        if let Some((rv, function)) = st.lost {
            return Err(OpError::Ck(CkError::Pkcs11(rv, function)));
        }
        let mut local = lock(&self.inner.local);
        if let Some(g) = local.as_ref()
            && g.id == st.id
        {
            return Ok(Arc::clone(g));
        }
        *local = None;
        let ctx = &self.inner.lib.ctx;
        let slot = match find_slot(ctx, &self.inner.config.token) {
            Ok(slot) => slot,
            // The token was there when the backend opened: its absence now is a device
            // condition (pulled, or the HSM is still coming back), not a configuration mistake.
            Err(BackendError::Config(_)) => {
                return Err(OpError::Ck(CkError::Pkcs11(
                    RvError::TokenNotPresent,
                    Function::GetSlotList,
                )));
            }
            Err(other) => {
                return Err(match other {
                    BackendError::Device {
                        source: Some(source),
                        ..
                    } => match source.downcast::<CkError>() {
                        Ok(ck) => OpError::Ck(*ck),
                        Err(_) => OpError::Ck(CkError::Pkcs11(
                            RvError::DeviceError,
                            Function::GetTokenInfo,
                        )),
                    },
                    other => OpError::Final(other),
                });
            }
        };
        let info = ctx.get_token_info(slot)?;
        if info.serial_number().trim_end() != self.inner.serial {
            return Err(OpError::Final(BackendError::Config(format!(
                "after reconnecting, the token labelled {} has serial {}, not {}: another token was inserted; strongroom refuses to use it",
                self.inner.token_label,
                info.serial_number().trim_end(),
                self.inner.serial
            ))));
        }
        let g = Arc::new(Generation::new(st.id, ctx.clone(), slot, self.inner.cap));
        *local = Some(Arc::clone(&g));
        self.inner.reconnects.fetch_add(1, Ordering::Relaxed);
        Ok(g)
    }

    fn checkout<'g>(&self, generation: &'g Generation) -> Result<Lease<'g>, CheckoutError> {
        let lease = generation.checkout(
            &self.inner.pin,
            &self.inner.token_label,
            self.inner.config.checkout_timeout,
        )?;
        if lease.fresh {
            self.inner.sessions_opened.fetch_add(1, Ordering::Relaxed);
        }
        Ok(lease)
    }

    fn backoff(&self, attempt: u32) {
        let factor = 4u32.saturating_pow(attempt.min(6));
        std::thread::sleep(self.inner.config.backoff.saturating_mul(factor));
    }

    /// Runs `op` on a pooled session with recovery: a lost session is replaced, a lost device
    /// recovered (one re-initialize of the shared library for every backend on it), a
    /// logged-out application logged in again, a stale key handle looked up again; each with
    /// bounded attempts and backoff. `op` gets `retry = true` on every attempt after the first.
    /// Operations that change the token (generate, create, destroy) are never repeated blind:
    /// each attempt starts by reading what is in the token, under the admin lock, and a retry
    /// finishes or refuses according to what the failed attempt left there.
    fn run<T>(
        &self,
        operation: &'static str,
        mut op: impl FnMut(&Generation, &Lease<'_>, bool) -> OpResult<T>,
    ) -> Result<T, BackendError> {
        let attempts = self.inner.config.attempts.max(1);
        let mut last: Option<CkError> = None;
        for attempt in 0..attempts {
            // Held for the whole attempt: no recovery (by any backend) runs under this call.
            let lib_state = self.inner.lib.read();
            let gen_id = lib_state.id;
            let result = match self.generation(&lib_state) {
                Ok(generation) => match self.checkout(&generation) {
                    Ok(mut lease) => {
                        let r = op(&generation, &lease, attempt > 0);
                        if let Err(OpError::Ck(e)) = &r {
                            match classify(e) {
                                Failure::SessionLost | Failure::DeviceLost => lease.forget(),
                                _ => {}
                            }
                        }
                        drop(lease);
                        r
                    }
                    Err(CheckoutError::Backend(e)) => return Err(e),
                    Err(CheckoutError::Ck(e)) => Err(OpError::Ck(e)),
                },
                Err(e) => Err(e),
            };
            drop(lib_state);
            let e = match result {
                Ok(v) => return Ok(v),
                Err(OpError::Final(e)) => return Err(e),
                Err(OpError::Ck(e)) => e,
            };
            match classify(&e) {
                // A lost session: another session may be fine; if they are all gone, the next
                // attempt's checkout or call fails the same way and the one after
                // re-initializes. A lost device: back off and re-initialize.
                failure @ (Failure::SessionLost | Failure::DeviceLost)
                    if failure == Failure::DeviceLost || attempt > 0 =>
                {
                    // Backing off before every re-initialize keeps a device that keeps
                    // failing from being hammered (bounded: attempts x backoff).
                    self.backoff(attempt);
                    if let Err(re) = self.inner.lib.recover(gen_id, &e)
                        && attempt + 1 == attempts
                    {
                        // The caller's operation failed; say so with the device's answer,
                        // and why reconnecting did not help (e.g. the token is not back).
                        let why = match re {
                            BackendError::Device {
                                operation, detail, ..
                            } => format!("{operation}: {detail}"),
                            other => other.to_string(),
                        };
                        return Err(device(
                            operation,
                            e,
                            &format!(
                                "the device's last answer; reconnecting failed after {attempts} attempts ({why}); strongroom reconnects on the next call"
                            ),
                        ));
                    }
                }
                Failure::SessionLost | Failure::DeviceLost => {}
                Failure::LoggedOut => {
                    // The next checkout sees the logged-out state and logs in again.
                }
                Failure::StaleHandle => self.forget_all_keys(),
                Failure::BadData | Failure::NotPermitted | Failure::Other => {
                    return Err(device(operation, e, "the HSM refused the call"));
                }
            }
            last = Some(e);
        }
        Err(match last {
            Some(e) => device(
                operation,
                e,
                &format!(
                    "gave up after {attempts} attempts with reconnects; check the HSM; strongroom reconnects on the next call"
                ),
            ),
            None => BackendError::Device {
                operation,
                detail: "no attempt was made".into(),
                source: None,
            },
        })
    }

    // ----- the root key handle cache -----

    fn cached_key(&self, id: &RootKeyId) -> Option<CachedKey> {
        lock(&self.inner.keys).get(id).cloned()
    }

    /// Caches the handle of `id`'s key, found in `generation`, with its label and id as the
    /// token reports them now.
    fn cache_key(
        &self,
        generation: &Generation,
        s: &Session,
        id: &RootKeyId,
        handle: ObjectHandle,
        alg: WrapAlg,
    ) -> Result<CachedKey, CkError> {
        let (label, key_id) = Self::label_and_id(s, handle)?;
        let usage = Self::read_usage(s, handle)?;
        // A token that does not keep CKA_ALLOWED_MECHANISMS (or an empty list): usage decides.
        let allowed: Vec<MechanismType> = s
            .get_attributes(handle, &[AttributeType::AllowedMechanisms])
            .ok()
            .and_then(|attrs| {
                attrs.into_iter().find_map(|a| match a {
                    Attribute::AllowedMechanisms(m) => Some(m),
                    _ => None,
                })
            })
            .unwrap_or_default();
        let permits = [WrapAlg::AesGcm, WrapAlg::AesKwp, WrapAlg::AesKw]
            .into_iter()
            .filter(|a| usage.permits(usage_for(*a)))
            .filter(|a| allowed.is_empty() || allowed.contains(&mechanism_type(*a)))
            .collect();
        let k = CachedKey {
            handle,
            alg,
            generation: generation.id,
            label,
            id: key_id,
            permits,
        };
        lock(&self.inner.keys).insert(id.clone(), k.clone());
        Ok(k)
    }

    fn forget_key(&self, id: &RootKeyId) {
        lock(&self.inner.keys).remove(id);
    }

    fn forget_all_keys(&self) {
        lock(&self.inner.keys).clear();
    }

    fn label_and_id(s: &Session, h: ObjectHandle) -> Result<(Vec<u8>, Vec<u8>), CkError> {
        let attrs = s.get_attributes(
            h,
            &[
                AttributeType::Class,
                AttributeType::Label,
                AttributeType::Id,
            ],
        )?;
        let mut label = None;
        let mut id = None;
        let mut secret = false;
        for a in attrs {
            match a {
                Attribute::Class(c) => secret = c == ObjectClass::SECRET_KEY,
                Attribute::Label(l) => label = Some(l),
                Attribute::Id(i) => id = Some(i),
                _ => {}
            }
        }
        if !secret {
            // Not a secret key: the handle names something else.
            return Err(CkError::Pkcs11(
                RvError::KeyHandleInvalid,
                Function::GetAttributeValue,
            ));
        }
        Ok((label.unwrap_or_default(), id.unwrap_or_default()))
    }

    // ----- finding things in the token (callers hold the admin lock) -----

    fn find(s: &Session, template: &[Attribute]) -> Result<Vec<ObjectHandle>, CkError> {
        s.find_objects(template)
    }

    fn find_one(s: &Session, template: &[Attribute], what: &str) -> OpResult<Option<ObjectHandle>> {
        let found = Self::find(s, template)?;
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            many => Err(OpError::Final(BackendError::Config(format!(
                "{} objects in the token match {what}; remove the duplicates (pkcs11-tool --list-objects --login shows them)",
                many.len()
            )))),
        }
    }

    fn record_template(&self, id: &RootKeyId) -> Vec<Attribute> {
        vec![
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(APPLICATION.to_vec()),
            Attribute::Label(self.inner.labels.root(id).into_bytes()),
        ]
    }

    fn key_template(&self, locator: &KeyLocator, id: &RootKeyId) -> Vec<Attribute> {
        let mut t = vec![Attribute::Class(ObjectClass::SECRET_KEY)];
        match locator {
            KeyLocator::Managed => {
                t.push(Attribute::Label(self.inner.labels.root(id).into_bytes()))
            }
            KeyLocator::Label(l) => t.push(Attribute::Label(l.clone().into_bytes())),
            KeyLocator::Id(i) => t.push(Attribute::Id(i.clone())),
        }
        t
    }

    fn read_record(&self, s: &Session, h: ObjectHandle, id: &RootKeyId) -> OpResult<RootRecord> {
        let attrs = s.get_attributes(h, &[AttributeType::Value])?;
        let value = attrs
            .into_iter()
            .find_map(|a| {
                if let Attribute::Value(v) = a {
                    Some(v)
                } else {
                    None
                }
            })
            .unwrap_or_default();
        RootRecord::parse(&value).map_err(|why| {
            OpError::Final(BackendError::Config(format!(
                "the token's record of root key {id} is unreadable ({why}); restore it or delete the data object labelled {}",
                self.inner.labels.root(id)
            )))
        })
    }

    fn locate(&self, s: &Session, id: &RootKeyId) -> OpResult<Located> {
        let record_objects = Self::find(s, &self.record_template(id))?;
        let mut record: Option<RootRecord> = None;
        for h in &record_objects {
            let r = self.read_record(s, *h, id)?;
            if record.as_ref().is_none_or(|best| r.seq > best.seq) {
                record = Some(r);
            }
        }
        let locator = record
            .as_ref()
            .map_or(KeyLocator::Managed, |r| r.key.clone());
        let key = Self::find_one(
            s,
            &self.key_template(&locator, id),
            &format!("key {locator} of {id}"),
        )?;
        Ok(Located {
            record,
            record_objects,
            key,
        })
    }

    /// Puts `state` and `key` in force as a new record after those in `found`, then removes the
    /// old record objects (see [`RootRecord`] for why records are replaced, not changed).
    fn write_record(
        &self,
        s: &Session,
        id: &RootKeyId,
        found: &Located,
        state: RecordState,
        key: KeyLocator,
    ) -> Result<(), CkError> {
        let record = RootRecord {
            // Saturating: the old sequence number comes from a token object (a forged one may
            // say u64::MAX); the records it replaces are removed right after.
            seq: found.record.as_ref().map_or(1, |r| r.seq.saturating_add(1)),
            state,
            key,
        };
        let mut t = self.record_template(id);
        t.extend([
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Modifiable(true),
            Attribute::Value(record.to_bytes()),
        ]);
        s.create_object(&t)?;
        for old in &found.record_objects {
            // A leftover is harmless (the highest sequence wins) and goes with the next change.
            let _ = s.destroy_object(*old);
        }
        Ok(())
    }

    fn read_usage(s: &Session, key: ObjectHandle) -> Result<Usage, CkError> {
        let attrs = s.get_attributes(
            key,
            &[
                AttributeType::Encrypt,
                AttributeType::Decrypt,
                AttributeType::Wrap,
                AttributeType::Unwrap,
            ],
        )?;
        let mut u = Usage::default();
        for a in attrs {
            match a {
                Attribute::Encrypt(b) => u.encrypt = b,
                Attribute::Decrypt(b) => u.decrypt = b,
                Attribute::Wrap(b) => u.wrap = b,
                Attribute::Unwrap(b) => u.unwrap = b,
                _ => {}
            }
        }
        Ok(u)
    }

    /// The algorithm new wraps under a key with `usage` use: the most preferred one it permits.
    fn alg_for(&self, usage: Usage) -> Option<WrapAlg> {
        self.inner
            .algs
            .iter()
            .copied()
            .find(|a| usage.permits(usage_for(*a)))
    }

    /// Resolves a root version to a usable key handle, from the cache or the token. A handle
    /// cached in an earlier generation of the library (before a recovery) is used only after
    /// the object it names now proves to be the same key: a secret key with the label and id
    /// it had.
    fn resolve(&self, generation: &Generation, s: &Session, id: &RootKeyId) -> OpResult<CachedKey> {
        if let Some(mut k) = self.cached_key(id) {
            if k.generation == generation.id {
                return Ok(k);
            }
            match Self::label_and_id(s, k.handle) {
                Ok((label, key_id)) if label == k.label && key_id == k.id => {
                    k.generation = generation.id;
                    lock(&self.inner.keys).insert(id.clone(), k.clone());
                    return Ok(k);
                }
                Ok(_) => self.forget_key(id),
                Err(e) => match classify(&e) {
                    Failure::SessionLost | Failure::DeviceLost | Failure::LoggedOut => {
                        return Err(e.into());
                    }
                    _ => self.forget_key(id),
                },
            }
        }
        let _admin = lock(&self.inner.admin);
        let found = self.locate(s, id)?;
        match found.state() {
            Some(RecordState::Destroyed) => {
                return Err(BackendError::RootDestroyed { root: id.clone() }.into());
            }
            Some(RecordState::Disabled { .. }) => {
                return Err(BackendError::RootDisabled { root: id.clone() }.into());
            }
            _ => {}
        }
        let Some(handle) = found.key else {
            return Err(if found.record.is_some() {
                BackendError::RootUnavailable {
                    root: id.clone(),
                    reason: "its key object is missing from the token (deleted outside strongroom)"
                        .into(),
                }
            } else {
                BackendError::RootNotFound { root: id.clone() }
            }
            .into());
        };
        let usage = Self::read_usage(s, handle)?;
        let alg = self.alg_for(usage).ok_or_else(|| BackendError::RootUnavailable {
            root: id.clone(),
            reason: format!(
                "the token does not permit the key to encrypt or wrap (usage: {}); it was disabled or restricted outside strongroom",
                if usage.none() { "none".to_owned() } else { usage.to_string() }
            ),
        })?;
        Ok(self.cache_key(generation, s, id, handle, alg)?)
    }

    /// The answer to `CKR_KEY_FUNCTION_NOT_PERMITTED`: disabled by strongroom, or restricted
    /// outside it.
    fn not_permitted(
        &self,
        generation: &Generation,
        s: &Session,
        id: &RootKeyId,
        e: &CkError,
    ) -> OpError {
        let _ = generation;
        self.forget_key(id);
        let _admin = lock(&self.inner.admin);
        let disabled_here = matches!(
            self.locate(s, id).map(|f| f.state()),
            Ok(Some(RecordState::Disabled { .. }))
        );
        OpError::Final(if disabled_here {
            BackendError::RootDisabled { root: id.clone() }
        } else {
            BackendError::RootUnavailable {
                root: id.clone(),
                reason: format!(
                    "{}: the HSM refuses this use of the key; it was disabled or restricted outside strongroom",
                    describe(e)
                ),
            }
        })
    }

    /// Tells a tampered input from a failing device after `CKR_GENERAL_ERROR`, which SoftHSM2
    /// returns for both: a known-good round trip under the same key must work if the device
    /// does. `Ok(())` means the device works (so the input was bad).
    fn canary(&self, s: &Session, k: &CachedKey) -> Result<(), CkError> {
        let mut probe = Zeroizing::new([0u8; 32]);
        let _ = rng::fill_nonce(&mut probe[..]);
        match k.alg {
            WrapAlg::AesGcm => {
                let mut iv = [0u8; NONCE_LEN];
                // Never a fixed IV under a root key: without our generator, the token's.
                if rng::fill_nonce(&mut iv).is_err() {
                    s.generate_random_slice(&mut iv)?;
                }
                let ct = s.encrypt(
                    &Mechanism::AesGcm(GcmParams::new(&mut iv, b"canary", GCM_TAG_BITS.into())?),
                    k.handle,
                    &probe[..],
                )?;
                // The IV as the token left it (a token may write the IV it used back).
                let mut back = s.decrypt(
                    &Mechanism::AesGcm(GcmParams::new(&mut iv, b"canary", GCM_TAG_BITS.into())?),
                    k.handle,
                    &ct,
                )?;
                let same = back[..] == probe[..];
                back.zeroize();
                if same {
                    Ok(())
                } else {
                    Err(CkError::Pkcs11(RvError::DeviceError, Function::Decrypt))
                }
            }
            alg => {
                let mut tmpl = Self::tmp_secret_template(self.inner.labels.tmp());
                tmpl.push(Attribute::Value(probe.to_vec()));
                let obj = s.create_object(&tmpl);
                scrub(&mut tmpl);
                let obj = obj?;
                let wrapped = s.wrap_key(&wrap_mechanism(alg), k.handle, obj);
                let _ = s.destroy_object(obj);
                let h = s.unwrap_key(
                    &wrap_mechanism(alg),
                    k.handle,
                    &wrapped?,
                    &Self::tmp_secret_template(self.inner.labels.tmp()),
                )?;
                let mut attrs = s.get_attributes(h, &[AttributeType::Value]);
                let _ = s.destroy_object(h);
                let same =
                    matches!(attrs.as_deref(), Ok([Attribute::Value(v)]) if v[..] == probe[..]);
                if let Ok(a) = attrs.as_mut() {
                    scrub(a);
                }
                if same {
                    Ok(())
                } else {
                    Err(CkError::Pkcs11(RvError::DeviceError, Function::UnwrapKey))
                }
            }
        }
    }

    /// What a failed unwrap or decrypt under `k` means, whatever code the token returned
    /// (tokens differ: a tampered blob is `CKR_GENERAL_ERROR` on SoftHSM2, and
    /// `CKR_DEVICE_ERROR`, `CKR_ENCRYPTED_DATA_INVALID` or `CKR_WRAPPED_KEY_INVALID` on
    /// others; a deleted key is `CKR_OBJECT_HANDLE_INVALID` on SoftHSM2 and `CKR_GENERAL_ERROR`
    /// on others):
    /// - a code that says the connection is gone (session, token, library) goes to the runner,
    ///   which recovers; a stale key handle goes to the runner, which looks the key up again;
    /// - anything else runs the canary, a known-good round trip under the same key on the same
    ///   session. If it works, the device works: `again` tries the call once more (so a one-off
    ///   glitch is not mistaken for tampering) and a second failure is an integrity error, with
    ///   no retry and no recovery. If the canary fails, the key is looked up again: a missing
    ///   key is unavailable, a moved one is looked up again, and otherwise the device is at
    ///   fault.
    fn failed_unwrap(
        &self,
        generation: &Generation,
        s: &Session,
        root: &RootKeyId,
        k: &CachedKey,
        e: CkError,
        again: impl FnOnce() -> Result<Result<Key256, ()>, CkError>,
    ) -> OpResult<Key256> {
        match classify(&e) {
            Failure::NotPermitted => return Err(self.not_permitted(generation, s, root, &e)),
            Failure::StaleHandle => return Err(e.into()),
            _ if connection_lost(&e) => return Err(e.into()),
            _ => {}
        }
        match self.canary(s, k) {
            Ok(()) => match again() {
                Ok(Ok(key)) => Ok(key),
                Err(again) if connection_lost(&again) => Err(again.into()),
                Ok(Err(())) | Err(_) => Err(BackendError::Integrity.into()),
            },
            Err(canary) if connection_lost(&canary) => Err(canary.into()),
            Err(canary) => Err(self.key_gone_or_device(s, root, k, canary)),
        }
    }

    /// After a call under `k` failed in a way that bad input cannot explain: looks the key up
    /// again. Missing: the root is unavailable (deleted outside strongroom), not a device
    /// failure. Another handle: the runner looks it up again. The same: the device is at fault
    /// (`e` goes to the runner).
    fn key_gone_or_device(
        &self,
        s: &Session,
        root: &RootKeyId,
        k: &CachedKey,
        e: CkError,
    ) -> OpError {
        self.forget_key(root);
        let _admin = lock(&self.inner.admin);
        match self.locate(s, root) {
            Ok(found) => match found.key {
                None if found.record.is_some() => OpError::Final(BackendError::RootUnavailable {
                    root: root.clone(),
                    reason: "its key object is missing from the token (deleted outside strongroom)"
                        .into(),
                }),
                None => OpError::Final(BackendError::RootNotFound { root: root.clone() }),
                Some(h) if h != k.handle => OpError::Ck(CkError::Pkcs11(
                    RvError::KeyHandleInvalid,
                    Function::FindObjects,
                )),
                Some(_) => OpError::Ck(e),
            },
            // The lookup failed too: its error says more about the connection.
            Err(lookup) => lookup,
        }
    }

    /// The import key's canary: a random value encrypted under the import public key must
    /// unwrap under the private key to itself. `Ok(())` means the device works.
    fn import_canary(
        &self,
        s: &Session,
        private: ObjectHandle,
        public: ObjectHandle,
        mech: &Mechanism<'_>,
    ) -> Result<(), CkError> {
        let mut probe = Zeroizing::new([0u8; 32]);
        let _ = rng::fill_nonce(&mut probe[..]);
        let ct = s.encrypt(mech, public, &probe[..])?;
        let label = self.inner.labels.tmp();
        let h = match s.unwrap_key(
            mech,
            private,
            &ct,
            &Self::tmp_secret_template(label.clone()),
        ) {
            Ok(h) => h,
            Err(e) => {
                self.remove_strays(s, &label);
                return Err(e);
            }
        };
        let mut attrs = s.get_attributes(h, &[AttributeType::Value]);
        let _ = s.destroy_object(h);
        let same = matches!(attrs.as_deref(), Ok([Attribute::Value(v)]) if v[..] == probe[..]);
        if let Ok(a) = attrs.as_mut() {
            scrub(a);
        }
        if same {
            Ok(())
        } else {
            Err(CkError::Pkcs11(RvError::DeviceError, Function::UnwrapKey))
        }
    }

    /// A session-object template for a temporary extractable generic secret.
    fn tmp_secret_template(label: Vec<u8>) -> Vec<Attribute> {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Label(label),
        ]
    }

    /// Destroys session objects a failed call left under `label`.
    /// SoftHSM2 quirk: a failed `C_UnwrapKey` can leave a stray object behind.
    fn remove_strays(&self, s: &Session, label: &[u8]) {
        let _admin = lock(&self.inner.admin);
        if let Ok(strays) = Self::find(s, &[Attribute::Label(label.to_vec())]) {
            for h in strays {
                let _ = s.destroy_object(h);
            }
        }
    }

    fn gcm_wrap(
        s: &Session,
        k: &CachedKey,
        key: &Key256,
        context: &[u8],
    ) -> Result<Vec<u8>, CkError> {
        let mut iv = [0u8; NONCE_LEN];
        rng::fill_nonce(&mut iv)
            .map_err(|_| CkError::Pkcs11(RvError::RandomNoRng, Function::Encrypt))?;
        // Conversion to plain bytes: the key goes into the token's C_Encrypt, nowhere else.
        let ct = s.encrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut iv, context, GCM_TAG_BITS.into())?),
            k.handle,
            key.expose_bytes(),
        )?;
        // The IV is read after the call: the parameters hand the token a mutable IV, and a
        // token that writes back the IV it used must have that one stored.
        let mut payload = Vec::with_capacity(NONCE_LEN + ct.len());
        payload.extend_from_slice(&iv);
        payload.extend_from_slice(&ct);
        Ok(payload)
    }

    fn kw_wrap(
        &self,
        s: &Session,
        k: &CachedKey,
        key: &Key256,
        context: &[u8],
    ) -> Result<Vec<u8>, CkError> {
        let bound = bind_context(key, context);
        let mut tmpl = Self::tmp_secret_template(self.inner.labels.tmp());
        tmpl.push(Attribute::Value(bound.to_vec()));
        let obj = s.create_object(&tmpl);
        scrub(&mut tmpl);
        let obj = obj?;
        let wrapped = s.wrap_key(&wrap_mechanism(k.alg), k.handle, obj);
        let _ = s.destroy_object(obj);
        wrapped
    }

    /// Unwraps with the blob's mechanism; `Ok(Err(()))` is a failed integrity check.
    fn unwrap_payload(
        &self,
        s: &Session,
        k: &CachedKey,
        blob: &WrappedKey,
        context: &[u8],
    ) -> Result<Result<Key256, ()>, CkError> {
        let p = blob.payload();
        match blob.alg() {
            WrapAlg::AesGcm => {
                let mut iv = [0u8; NONCE_LEN];
                iv.copy_from_slice(&p[..NONCE_LEN]);
                let mut plain = s.decrypt(
                    &Mechanism::AesGcm(GcmParams::new(&mut iv, context, GCM_TAG_BITS.into())?),
                    k.handle,
                    &p[NONCE_LEN..],
                )?;
                // A wrong length (impossible for an authentic blob) is refused; either way the
                // whole buffer cryptoki allocated (its full capacity) is zeroized.
                let key = Key256::from_slice_zeroizing(&mut plain).map_err(|_| ());
                plain.zeroize();
                Ok(key)
            }
            alg => {
                let label = self.inner.labels.tmp();
                let h = match s.unwrap_key(
                    &wrap_mechanism(alg),
                    k.handle,
                    p,
                    &Self::tmp_secret_template(label.clone()),
                ) {
                    Ok(h) => h,
                    Err(e) => {
                        self.remove_strays(s, &label);
                        return Err(e);
                    }
                };
                // cryptoki reads the value into a buffer of its own, which it frees without
                // zeroizing (README: security model); the attribute it returns is scrubbed below.
                let attrs = s.get_attributes(h, &[AttributeType::Value]);
                let _ = s.destroy_object(h);
                let mut attrs = attrs?;
                let result = match attrs.as_slice() {
                    [Attribute::Value(v)] if v.len() == BOUND_PLAINTEXT_LEN => {
                        unbind_context(v, context).map_err(|_| ())
                    }
                    _ => Err(()),
                };
                scrub(&mut attrs);
                Ok(result)
            }
        }
    }

    fn info_for(&self, id: &RootKeyId, status: RootStatus, locator: &KeyLocator) -> RootKeyInfo {
        RootKeyInfo {
            id: id.clone(),
            status,
            locator: match locator {
                KeyLocator::Managed => {
                    format!("PKCS#11 secret key labelled {}", self.inner.labels.root(id))
                }
                other => format!("PKCS#11 secret key {other} (adopted)"),
            },
        }
    }

    /// What an operator checks about a key object: type and length, sensitivity,
    /// extractability, permitted operations.
    fn key_attributes(s: &Session, h: ObjectHandle) -> String {
        let Ok(attrs) = s.get_attributes(
            h,
            &[
                AttributeType::ValueLen,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
            ],
        ) else {
            return "attributes unreadable".into();
        };
        let mut parts = Vec::new();
        for a in attrs {
            match a {
                Attribute::ValueLen(l) => parts.push(format!("AES-{}", usize::from(l) * 8)),
                Attribute::Sensitive(b) => {
                    parts.push(if b { "sensitive" } else { "NOT sensitive" }.to_owned())
                }
                Attribute::Extractable(b) => {
                    parts.push(if b { "EXTRACTABLE" } else { "not extractable" }.to_owned())
                }
                Attribute::NeverExtractable(true) => parts.push("never extractable".to_owned()),
                _ => {}
            }
        }
        if let Ok(u) = Self::read_usage(s, h) {
            parts.push(format!(
                "usage {}",
                if u.none() {
                    "none".to_owned()
                } else {
                    u.to_string()
                }
            ));
        }
        parts.join(", ")
    }

    fn with_attributes(
        mut info: RootKeyInfo,
        s: &Session,
        key: Option<ObjectHandle>,
    ) -> RootKeyInfo {
        if let Some(h) = key {
            info.locator = format!("{} ({})", info.locator, Self::key_attributes(s, h));
        }
        info
    }

    fn status_of(
        &self,
        s: &Session,
        record: Option<&RootRecord>,
        key: Option<ObjectHandle>,
    ) -> RootStatus {
        match (record.map(|r| r.state), key) {
            (Some(RecordState::Destroyed), _) => RootStatus::Destroyed,
            (Some(RecordState::Disabled { .. }), _) => RootStatus::Disabled,
            (_, None) => RootStatus::Unavailable,
            (_, Some(k)) => match Self::read_usage(s, k) {
                Ok(u) if self.alg_for(u).is_some() => RootStatus::Enabled,
                _ => RootStatus::Unavailable,
            },
        }
    }

    /// Creates a root key object from `make`, then its record; removes the key if the record
    /// cannot be written (create, record the mapping, roll back on failure). On a retry after a
    /// lost connection it first checks what the failed attempt left.
    fn create_root(
        &self,
        operation: &'static str,
        id: &RootKeyId,
        mut make: impl FnMut(&Session) -> OpResult<ObjectHandle>,
    ) -> Result<RootKeyInfo, BackendError> {
        self.run(operation, |generation, s, retry| {
            let _admin = lock(&self.inner.admin);
            let found = self.locate(s, id)?;
            if let Some(record) = &found.record {
                // On a retry, an enabled record of a managed key, with a root-shaped key under
                // our label, is what our failed attempt wrote before its reply was lost: done.
                if retry
                    && record.state == RecordState::Enabled
                    && record.key == KeyLocator::Managed
                    && let Some(handle) = found.key
                    && Self::is_root_shaped(s, handle)?
                {
                    let usage = Self::read_usage(s, handle)?;
                    if let Some(alg) = self.alg_for(usage) {
                        self.cache_key(generation, s, id, handle, alg)?;
                    }
                    return Ok(self.info_for(id, RootStatus::Enabled, &KeyLocator::Managed));
                }
                return Err(BackendError::RootExists { root: id.clone() }.into());
            }
            let handle = match found.key {
                // On a retry, a key under this label with no record is what our failed attempt
                // made before its connection was lost: finish it if it is the key we would
                // have made. Anything else under our label is not ours to trust.
                Some(h) if retry && Self::is_root_shaped(s, h)? => h,
                Some(_) => {
                    return Err(BackendError::Config(format!(
                        "the token holds a key labelled {} with no strongroom record; adopt it (`adopt_root`) if it is meant to be this root key, or delete it",
                        self.inner.labels.root(id)
                    ))
                    .into());
                }
                None => make(s)?,
            };
            if let Err(e) = self.write_record(s, id, &found, RecordState::Enabled, KeyLocator::Managed) {
                // Roll back only when the token refused the record. After a lost session or
                // device the record may have been written (the reply was lost): the key stays,
                // and the retry finishes with what it finds.
                if !matches!(classify(&e), Failure::SessionLost | Failure::DeviceLost) {
                    let _ = s.destroy_object(handle);
                }
                return Err(e.into());
            }
            let usage = Self::read_usage(s, handle)?;
            if let Some(alg) = self.alg_for(usage) {
                self.cache_key(generation, s, id, handle, alg)?;
            }
            Ok(self.info_for(id, RootStatus::Enabled, &KeyLocator::Managed))
        })
    }

    /// Whether a key object has the attributes strongroom gives its root keys.
    fn is_root_shaped(s: &Session, h: ObjectHandle) -> Result<bool, CkError> {
        let attrs = s.get_attributes(
            h,
            &[
                AttributeType::KeyType,
                AttributeType::Token,
                AttributeType::Sensitive,
                AttributeType::Extractable,
            ],
        )?;
        Ok(attrs.iter().all(|a| match a {
            Attribute::KeyType(t) => *t == KeyType::AES,
            Attribute::Token(b) | Attribute::Sensitive(b) => *b,
            Attribute::Extractable(b) => !*b,
            _ => true,
        }))
    }

    /// The BYOK import key pair: (private, public), made on first use.
    fn import_pair(&self, s: &Session, create: bool) -> OpResult<(ObjectHandle, ObjectHandle)> {
        let import = self.inner.labels.import();
        let label = import.as_bytes().to_vec();
        let private = Self::find_one(
            s,
            &[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(label.clone()),
            ],
            &import,
        )?;
        let public = Self::find_one(
            s,
            &[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Label(label.clone()),
            ],
            &import,
        )?;
        match (private, public) {
            (Some(p), Some(q)) => Ok((p, q)),
            (None, None) if create => {
                if !(self.inner.mechs.rsa_gen && self.inner.mechs.oaep) {
                    return Err(OpError::Final(self.not_supported("import wrapped root key material (the token lacks RSA key generation or RSA-OAEP)")));
                }
                let bits = self.inner.config.import_key_bits;
                let (public, private) = s.generate_key_pair(
                    &Mechanism::RsaPkcsKeyPairGen,
                    &[
                        Attribute::Token(true),
                        Attribute::Private(false),
                        Attribute::Encrypt(true),
                        Attribute::Wrap(true),
                        Attribute::Verify(false),
                        Attribute::ModulusBits(u64::from(bits).into()),
                        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                        Attribute::Label(label.clone()),
                        Attribute::Id(label.clone()),
                    ],
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Unwrap(true),
                        Attribute::Decrypt(false),
                        Attribute::Sign(false),
                        Attribute::Label(label.clone()),
                        Attribute::Id(label),
                    ],
                )?;
                Ok((private, public))
            }
            (None, None) => Err(OpError::Final(BackendError::Config(
                "the token has no BYOK import key; ask strongroom for one first (`import_key`)"
                    .into(),
            ))),
            _ => Err(OpError::Final(BackendError::Config(format!(
                "the token holds half of the import key pair {import}; delete the remaining half and request a new import key"
            )))),
        }
    }

    /// Whether the token's RSA-OAEP takes SHA-256 (else SHA-1), by a test encryption under the
    /// import public key.
    /// SoftHSM2 quirk: SoftHSM 2.6 supports RSA-OAEP with SHA-1 and MGF1-SHA-1 only (SHA-256 is
    /// CKR_ARGUMENTS_BAD).
    fn oaep_sha256(s: &Session, public: ObjectHandle) -> Result<bool, CkError> {
        match s.encrypt(&oaep_params(true), public, &[0u8; 32]) {
            Ok(_) => Ok(true),
            Err(CkError::Pkcs11(
                RvError::ArgumentsBad | RvError::MechanismParamInvalid | RvError::MechanismInvalid,
                _,
            )) => s
                .encrypt(&oaep_params(false), public, &[0u8; 32])
                .map(|_| false),
            Err(e) => Err(e),
        }
    }

    fn modify_root(
        &self,
        operation: &'static str,
        id: &RootKeyId,
        mut change: impl FnMut(&Generation, &Session, Located) -> OpResult<()>,
    ) -> Result<(), BackendError> {
        self.run(operation, |generation, s, _| {
            let _admin = lock(&self.inner.admin);
            let _ = generation;
            self.forget_key(id);
            let found = self.locate(s, id)?;
            if found.record.is_none() && found.key.is_none() {
                return Err(BackendError::RootNotFound { root: id.clone() }.into());
            }
            let r = change(generation, s, found);
            let _ = generation;
            self.forget_key(id);
            r
        })
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
        let mut checks = Vec::new();
        let lib_state = self.inner.lib.read();
        let ctx = &self.inner.lib.ctx;
        let lib = ctx.get_library_info();
        checks.push(HealthCheck {
            name: "PKCS#11 module".into(),
            ok: lib.is_ok(),
            detail: match lib {
                Ok(l) => format!(
                    "{} ({} {}.{})",
                    self.inner.config.module.display(),
                    l.manufacturer_id().trim_end(),
                    l.library_version().major(),
                    l.library_version().minor()
                ),
                Err(e) => describe(&e),
            },
        });
        let slot = lock(&self.inner.local).as_ref().map(|g| g.slot);
        let token = match slot {
            Some(slot) => ctx.get_token_info(slot),
            None => Err(CkError::Pkcs11(
                RvError::TokenNotPresent,
                Function::GetTokenInfo,
            )),
        };
        checks.push(HealthCheck {
            name: "token".into(),
            ok: token.as_ref().is_ok_and(|t| !t.user_pin_locked()),
            detail: match &token {
                Ok(t) if t.user_pin_locked() => format!(
                    "{}: the user PIN is locked; the security officer must unlock it",
                    self.inner.description
                ),
                Ok(t) if t.user_pin_final_try() => format!(
                    "{}: one PIN attempt left before it locks (CKF_USER_PIN_FINAL_TRY); strongroom will not log in until it is reset",
                    self.inner.description
                ),
                Ok(t) if t.user_pin_count_low() => format!(
                    "{}: the token has counted wrong PINs (CKF_USER_PIN_COUNT_LOW); check the PIN source",
                    self.inner.description
                ),
                Ok(_) => self.inner.description.clone(),
                Err(e) => format!("{}; check that the token is present", describe(e)),
            },
        });
        drop(lib_state);
        let login = self.run("log in", |_, s, _| {
            Ok(s.get_session_info()?.session_state())
        });
        checks.push(HealthCheck {
            name: "login".into(),
            ok: login.is_ok(),
            detail: match login {
                Ok(state) => format!("logged in as user ({state:?} session)"),
                Err(e) => e.to_string(),
            },
        });
        checks.push(HealthCheck {
            name: "mechanisms".into(),
            ok: true,
            detail: format!(
                "found: {}; new root keys use {}; usable: {}",
                self.inner.mechs,
                self.inner.algs[0],
                self.inner
                    .algs
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        let st = self.stats();
        checks.push(HealthCheck {
            name: "sessions".into(),
            ok: true,
            detail: format!(
                "{} open, {} idle, at most {}; {} opened in all; {} reconnects; the library (shared by every backend on the module in this process) is in generation {} after {} re-initializations",
                st.open,
                st.idle,
                st.cap,
                st.sessions_opened,
                st.reinitializations,
                st.generation,
                self.inner.lib.reinitializations()
            ),
        });
        let roots = self.list_roots();
        checks.push(HealthCheck {
            name: "root keys".into(),
            ok: roots.as_ref().is_ok_and(|r| r.iter().all(|k| k.status != RootStatus::Unavailable)),
            detail: match roots {
                Ok(r) => {
                    let bad: Vec<String> = r.iter().filter(|k| k.status == RootStatus::Unavailable).map(|k| k.id.to_string()).collect();
                    if bad.is_empty() {
                        format!("{} root key version{}", r.len(), if r.len() == 1 { "" } else { "s" })
                    } else {
                        format!("unavailable (changed outside strongroom): {}; restore or re-enable them in the HSM", bad.join(", "))
                    }
                }
                Err(e) => e.to_string(),
            },
        });
        Ok(checks)
    }

    fn list_roots(&self) -> Result<Vec<RootKeyInfo>, BackendError> {
        self.run("list root keys", |_, s, _| {
            let _admin = lock(&self.inner.admin);
            let mut out: Vec<RootKeyInfo> = Vec::new();
            let records = Self::find(
                s,
                &[
                    Attribute::Class(ObjectClass::DATA),
                    Attribute::Application(APPLICATION.to_vec()),
                ],
            )?;
            let mut ids: Vec<RootKeyId> = Vec::new();
            for h in records {
                let attrs = s.get_attributes(h, &[AttributeType::Label])?;
                if let Some(id) = attrs.iter().find_map(|a| match a {
                    Attribute::Label(l) => {
                        self.inner.labels.parse_root(&String::from_utf8_lossy(l))
                    }
                    _ => None,
                }) && !ids.contains(&id)
                {
                    ids.push(id);
                }
            }
            for id in ids {
                let found = self.locate(s, &id)?;
                let locator = found
                    .record
                    .as_ref()
                    .map_or(KeyLocator::Managed, |r| r.key.clone());
                let info = self.info_for(
                    &id,
                    self.status_of(s, found.record.as_ref(), found.key),
                    &locator,
                );
                out.push(Self::with_attributes(info, s, found.key));
            }
            for h in Self::find(
                s,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::Token(true),
                ],
            )? {
                let attrs = s.get_attributes(h, &[AttributeType::Label])?;
                let Some(id) = attrs.iter().find_map(|a| match a {
                    Attribute::Label(l) => {
                        self.inner.labels.parse_root(&String::from_utf8_lossy(l))
                    }
                    _ => None,
                }) else {
                    continue;
                };
                if !out.iter().any(|r| r.id == id) {
                    let info =
                        self.info_for(&id, self.status_of(s, None, Some(h)), &KeyLocator::Managed);
                    out.push(Self::with_attributes(info, s, Some(h)));
                }
            }
            out.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(out)
        })
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
        let alg = self.inner.algs[0];
        self.create_root("generate a root key", id, |s| {
            let attempt = s.generate_key(
                &Mechanism::AesKeyGen,
                &root_template(&self.inner.labels, id, alg, true, true),
            );
            match attempt {
                Ok(h) => Ok(h),
                // A token that does not know CKA_ALLOWED_MECHANISMS: the usage flags still
                // restrict the key to its operations.
                Err(e) if refuses_allowed_mechanisms(&e) => Ok(s.generate_key(
                    &Mechanism::AesKeyGen,
                    &root_template(&self.inner.labels, id, alg, false, true),
                )?),
                Err(e) => {
                    // Remove a half-made object the failed call may have left.
                    if let Ok(strays) = Self::find(s, &self.key_template(&KeyLocator::Managed, id))
                    {
                        for h in strays {
                            let _ = s.destroy_object(h);
                        }
                    }
                    Err(e.into())
                }
            }
        })
    }

    fn import_root(&self, id: &RootKeyId, material: &Key256) -> Result<RootKeyInfo, BackendError> {
        let alg = self.inner.algs[0];
        self.create_root("import a root key", id, |s| {
            let create = |allowed_mechanisms: bool| {
                let mut t = root_template(&self.inner.labels, id, alg, allowed_mechanisms, false);
                // Conversion to plain bytes: into the token's C_CreateObject; scrubbed right
                // after.
                t.push(Attribute::Value(material.expose_bytes().to_vec()));
                let r = s.create_object(&t);
                scrub(&mut t);
                r
            };
            match create(true) {
                // As in generate: a token without CKA_ALLOWED_MECHANISMS.
                Err(e) if refuses_allowed_mechanisms(&e) => Ok(create(false)?),
                r => Ok(r?),
            }
        })
    }

    fn import_key(&self) -> Result<ImportKey, BackendError> {
        self.run("make the BYOK import key", |_, s, _| {
            let _admin = lock(&self.inner.admin);
            let (_, public) = self.import_pair(s, true)?;
            let attrs = s.get_attributes(
                public,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )?;
            let mut modulus = Vec::new();
            let mut exponent = Vec::new();
            for a in attrs {
                match a {
                    Attribute::Modulus(m) => modulus = m,
                    Attribute::PublicExponent(e) => exponent = e,
                    _ => {}
                }
            }
            let sha256 = Self::oaep_sha256(s, public)?;
            Ok(ImportKey {
                id: self.inner.labels.import(),
                mechanism: if sha256 {
                    "RSA-OAEP with SHA-256 and MGF1-SHA-256, empty label".into()
                } else {
                    "RSA-OAEP with SHA-1 and MGF1-SHA-1, empty label".into()
                },
                public_key_der: der::rsa_spki(&modulus, &exponent),
            })
        })
    }

    fn import_wrapped_root(
        &self,
        id: &RootKeyId,
        wrapped: &[u8],
        check_value: &[u8; 3],
    ) -> Result<RootKeyInfo, BackendError> {
        if !self.describe().capabilities.import_wrapped {
            return Err(self.not_supported("import wrapped root key material"));
        }
        let alg = self.inner.algs[0];
        self.create_root("import a wrapped root key", id, |s| {
            let (private, public) = self.import_pair(s, false)?;
            let mech = oaep_params(Self::oaep_sha256(s, public)?);
            // First unwrap into a temporary session key and check its key check value (the
            // first 3 bytes of AES-ECB(key, 0^128)); only a key that matches becomes a root key.
            // SoftHSM2 quirk: an unwrapped AES key reports CKA_VALUE_LEN 0 and an empty
            // CKA_CHECK_VALUE, and accepts 16 or 48 bytes as "AES", so neither the length nor
            // the token's check value can be trusted; the check value computed here catches any
            // key but the customer's.
            let tmp = s.unwrap_key(
                &mech,
                private,
                wrapped,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::Token(false),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Label(self.inner.labels.tmp()),
                ],
            );
            let tmp = match tmp {
                Ok(h) => h,
                // As for unwrap (see `failed_unwrap`): whatever the code, unless it says the
                // connection or the handle is gone, a known-good round trip under the import
                // key tells bad material (integrity) from a failing device.
                Err(e) if classify(&e) == Failure::StaleHandle || connection_lost(&e) => {
                    return Err(e.into());
                }
                Err(e) => {
                    return Err(match self.import_canary(s, private, public, &mech) {
                        Ok(()) => BackendError::Integrity.into(),
                        Err(canary) if connection_lost(&canary) => canary.into(),
                        Err(_) => e.into(),
                    });
                }
            };
            let kcv = s.encrypt(&Mechanism::AesEcb, tmp, &[0u8; 16]);
            let _ = s.destroy_object(tmp);
            let matches = match kcv {
                Ok(block) => bool::from(block[..3].ct_eq(&check_value[..])),
                Err(e)
                    if matches!(
                        rv(&e),
                        Some(
                            RvError::KeySizeRange
                                | RvError::KeyTypeInconsistent
                                | RvError::MechanismInvalid
                        )
                    ) =>
                {
                    false
                }
                Err(e) => return Err(e.into()),
            };
            if !matches {
                return Err(BackendError::Integrity.into());
            }
            let unwrap = |allowed_mechanisms: bool| {
                s.unwrap_key(
                    &mech,
                    private,
                    wrapped,
                    &root_template(&self.inner.labels, id, alg, allowed_mechanisms, false),
                )
            };
            match unwrap(true) {
                // As in generate: a token without CKA_ALLOWED_MECHANISMS.
                Err(e) if refuses_allowed_mechanisms(&e) => Ok(unwrap(false)?),
                r => Ok(r?),
            }
        })
    }

    fn adopt_root(&self, id: &RootKeyId, selector: &str) -> Result<RootKeyInfo, BackendError> {
        let locator = KeyLocator::from_selector(selector).map_err(|why| {
            BackendError::Config(format!(
                "cannot adopt {selector:?}: {why}; give a label, `label:LABEL` or `id:HEX`"
            ))
        })?;
        self.run("adopt a root key", |generation, s, retry| {
            let _admin = lock(&self.inner.admin);
            let found = self.locate(s, id)?;
            // A retry of this call that finds its own record (the first attempt wrote it, then
            // its reply was lost) is checked and finished like the first; anything else already
            // there, including the same adoption asked for again, is refused.
            let again = retry
                && found
                    .record
                    .as_ref()
                    .is_some_and(|r| r.key == locator && r.state == RecordState::Enabled);
            if !again && (found.record.is_some() || found.key.is_some()) {
                return Err(BackendError::RootExists { root: id.clone() }.into());
            }
            let key = Self::find_one(s, &self.key_template(&locator, id), &locator.to_string())?.ok_or_else(|| {
                BackendError::Config(format!(
                    "no secret key {locator} in token {}; `pkcs11-tool --list-objects --login` lists its keys",
                    self.inner.token_label
                ))
            })?;
            let attrs = s.get_attributes(key, &[AttributeType::KeyType, AttributeType::ValueLen, AttributeType::Sensitive, AttributeType::Extractable, AttributeType::NeverExtractable, AttributeType::AlwaysSensitive, AttributeType::Token])?;
            let mut aes = false;
            let mut len = 0usize;
            let mut sensitive = false;
            let mut extractable = true;
            // Unread (a token that does not report them) counts as false.
            let mut never_extractable = false;
            let mut always_sensitive = false;
            let mut token_object = false;
            for a in attrs {
                match a {
                    Attribute::KeyType(t) => aes = t == KeyType::AES,
                    Attribute::ValueLen(l) => len = l.into(),
                    Attribute::Sensitive(b) => sensitive = b,
                    Attribute::Extractable(b) => extractable = b,
                    Attribute::NeverExtractable(b) => never_extractable = b,
                    Attribute::AlwaysSensitive(b) => always_sensitive = b,
                    Attribute::Token(b) => token_object = b,
                    _ => {}
                }
            }
            let refuse = |why: &str| -> OpError {
                BackendError::Config(format!(
                    "cannot adopt key {locator}: {why}; strongroom adopts only sensitive, non-extractable AES-256 keys (e.g. `pkcs11-tool --keygen --key-type AES:32 --sensitive`)"
                ))
                .into()
            };
            if !aes || len != 32 {
                return Err(refuse(&format!("it is not a 256-bit AES key (type AES: {aes}, length {len} bytes)")));
            }
            if !sensitive || extractable {
                return Err(refuse("it is extractable or not sensitive"));
            }
            if !self.inner.config.allow_weak_adoption {
                let mut weak = Vec::new();
                if !never_extractable {
                    weak.push("not CKA_NEVER_EXTRACTABLE (it was extractable once)");
                }
                if !always_sensitive {
                    weak.push("not CKA_ALWAYS_SENSITIVE (it was readable once)");
                }
                if !token_object {
                    weak.push("not a token object (it disappears with the session)");
                }
                if !weak.is_empty() {
                    return Err(BackendError::Config(format!(
                        "cannot adopt key {locator}: it is {}; its material may exist outside the HSM. Generate a new key in the HSM, or adopt it anyway with the allow_weak_adoption option (recorded in the audit log)",
                        weak.join(", ")
                    ))
                    .into());
                }
            }
            let usage = Self::read_usage(s, key)?;
            let alg = self.alg_for(usage).ok_or_else(|| refuse(&format!("it permits neither encrypt+decrypt nor wrap+unwrap (usage: {usage})")))?;
            if !again {
                self.write_record(s, id, &found, RecordState::Enabled, locator.clone())?;
            }
            self.cache_key(generation, s, id, key, alg)?;
            Ok(self.info_for(id, RootStatus::Enabled, &locator))
        })
    }

    fn disable_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.modify_root("disable a root key", id, |_, s, found| {
            let locator = found
                .record
                .as_ref()
                .map_or(KeyLocator::Managed, |r| r.key.clone());
            match found.state() {
                Some(RecordState::Destroyed) => {
                    return Err(BackendError::RootDestroyed { root: id.clone() }.into());
                }
                Some(RecordState::Disabled { .. }) => {
                    // Disabled already; but a disable interrupted between its two steps (record
                    // written, usage flags not yet off) is finished here.
                    if let Some(key) = found.key
                        && !Self::read_usage(s, key)?.none()
                    {
                        s.update_attributes(key, &usage_attrs(Usage::default()))?;
                    }
                    return Err(BackendError::RootDisabled { root: id.clone() }.into());
                }
                Some(RecordState::Enabled) | None => {}
            }
            let key = found.key.ok_or_else(|| BackendError::RootUnavailable {
                root: id.clone(),
                reason: "its key object is missing from the token (deleted outside strongroom)"
                    .into(),
            })?;
            let restore = Self::read_usage(s, key)?;
            // Record first: from here on every use is refused as disabled, even if turning the
            // usage flags off fails or the process dies before it does.
            self.write_record(s, id, &found, RecordState::Disabled { restore }, locator)?;
            s.update_attributes(key, &usage_attrs(Usage::default()))?;
            Ok(())
        })
    }

    fn enable_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.modify_root("enable a root key", id, |_, s, found| {
            let locator = found
                .record
                .as_ref()
                .map_or(KeyLocator::Managed, |r| r.key.clone());
            let restore = match found.state() {
                Some(RecordState::Destroyed) => {
                    return Err(BackendError::RootDestroyed { root: id.clone() }.into());
                }
                Some(RecordState::Disabled { restore }) if !restore.none() => Some(restore),
                _ => None,
            };
            let key = found.key.ok_or_else(|| BackendError::RootUnavailable {
                root: id.clone(),
                reason: "its key object is missing from the token (deleted outside strongroom)"
                    .into(),
            })?;
            if self.alg_for(Self::read_usage(s, key)?).is_none() {
                // Only usage that strongroom itself recorded is put back. A key made unusable
                // outside strongroom could have been a wrap/unwrap (KW/KWP) key or an
                // encrypt/decrypt (GCM) one: guessing would grant it rights it never had and
                // could take away the ones its blobs need.
                let restore = restore.ok_or_else(|| BackendError::RootUnavailable {
                    root: id.clone(),
                    reason: "its usage was turned off outside strongroom, which has no record of what it was; set CKA_WRAP and CKA_UNWRAP (for AES-KW/KWP) or CKA_ENCRYPT and CKA_DECRYPT (for AES-GCM) on it in the HSM as before, then enable it again".into(),
                })?;
                s.update_attributes(key, &usage_attrs(restore))?;
            }
            if found.state() != Some(RecordState::Enabled) {
                self.write_record(s, id, &found, RecordState::Enabled, locator)?;
            }
            Ok(())
        })
    }

    fn destroy_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.modify_root("destroy a root key", id, |_, s, found| {
            let locator = found
                .record
                .as_ref()
                .map_or(KeyLocator::Managed, |r| r.key.clone());
            // Record first, so a crash between the two steps leaves the root refused as
            // destroyed; running destroy again removes the key object.
            if found.state() != Some(RecordState::Destroyed) {
                self.write_record(s, id, &found, RecordState::Destroyed, locator)?;
            }
            if let Some(key) = found.key {
                match s.destroy_object(key) {
                    Ok(()) | Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
    }
}

impl Drop for Inner {
    /// Closes this backend's idle sessions if they belong to the library's current generation
    /// (after a recovery their numbers may name other backends' sessions). The library itself
    /// is never finalized: other backends in the process may be using it (see
    /// [`crate::library`]).
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
            true,
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
            false,
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
