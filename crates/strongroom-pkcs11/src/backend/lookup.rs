//! Finding strongroom's objects in the token (callers hold the admin lock), root records,
//! and the cache of root key handles (checked again after a recovery before use).

use super::*;

impl Pkcs11Backend {
    pub(super) fn cached_key(&self, id: &RootKeyId) -> Option<CachedKey> {
        lock(&self.inner.keys).get(id).cloned()
    }

    /// Caches the handle of `id`'s key, found in `generation`, with its label and id as the
    /// token reports them now.
    pub(super) fn cache_key(
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

    pub(super) fn forget_key(&self, id: &RootKeyId) {
        lock(&self.inner.keys).remove(id);
    }

    pub(super) fn forget_all_keys(&self) {
        lock(&self.inner.keys).clear();
    }

    pub(super) fn label_and_id(
        s: &Session,
        h: ObjectHandle,
    ) -> Result<(Vec<u8>, Vec<u8>), CkError> {
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

    /// The value of data object `h` (empty if the token gives none).
    pub(super) fn data_value(s: &Session, h: ObjectHandle) -> Result<Vec<u8>, CkError> {
        Ok(s.get_attributes(h, &[AttributeType::Value])?
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v) => Some(v),
                _ => None,
            })
            .unwrap_or_default())
    }

    pub(super) fn find(s: &Session, template: &[Attribute]) -> Result<Vec<ObjectHandle>, CkError> {
        s.find_objects(template)
    }

    pub(super) fn find_one(
        s: &Session,
        template: &[Attribute],
        what: &str,
    ) -> OpResult<Option<ObjectHandle>> {
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

    pub(super) fn record_template(&self, id: &RootKeyId) -> Vec<Attribute> {
        vec![
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(APPLICATION.to_vec()),
            Attribute::Label(self.inner.labels.root(id).into_bytes()),
        ]
    }

    pub(super) fn key_template(&self, locator: &KeyLocator, id: &RootKeyId) -> Vec<Attribute> {
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

    pub(super) fn read_record(
        &self,
        s: &Session,
        h: ObjectHandle,
        id: &RootKeyId,
    ) -> OpResult<RootRecord> {
        let value = Self::data_value(s, h)?;
        RootRecord::parse(&value).map_err(|why| {
            OpError::Final(BackendError::Config(format!(
                "the token's record of root key {id} is unreadable ({why}); restore it or delete the data object labelled {}",
                self.inner.labels.root(id)
            )))
        })
    }

    pub(super) fn locate(&self, s: &Session, id: &RootKeyId) -> OpResult<Located> {
        let record_objects = Self::find(s, &self.record_template(id))?;
        let mut record: Option<RootRecord> = None;
        for h in &record_objects {
            let r = self.read_record(s, *h, id)?;
            if record.as_ref().is_none_or(|best| r.seq > best.seq) {
                record = Some(r);
            }
        }
        let locator = locator_of(record.as_ref());
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
    pub(super) fn write_record(
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

    pub(super) fn read_usage(s: &Session, key: ObjectHandle) -> Result<Usage, CkError> {
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
    pub(super) fn alg_for(&self, usage: Usage) -> Option<WrapAlg> {
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
    pub(super) fn resolve(
        &self,
        generation: &Generation,
        s: &Session,
        id: &RootKeyId,
    ) -> OpResult<CachedKey> {
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
    pub(super) fn not_permitted(
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
}
