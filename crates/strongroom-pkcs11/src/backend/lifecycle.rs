//! Root key lifecycle helpers: creating a root (key, then record, with roll back), changing
//! one, and describing roots for `list_roots` and `doctor`.

use super::*;

impl Pkcs11Backend {
    pub(super) fn info_for(
        &self,
        id: &RootKeyId,
        status: RootStatus,
        locator: &KeyLocator,
    ) -> RootKeyInfo {
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
    pub(super) fn key_attributes(s: &Session, h: ObjectHandle) -> String {
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

    pub(super) fn with_attributes(
        mut info: RootKeyInfo,
        s: &Session,
        key: Option<ObjectHandle>,
    ) -> RootKeyInfo {
        if let Some(h) = key {
            info.locator = format!("{} ({})", info.locator, Self::key_attributes(s, h));
        }
        info
    }

    pub(super) fn status_of(
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
    pub(super) fn create_root(
        &self,
        operation: &'static str,
        id: &RootKeyId,
        mut make: impl FnMut(&Session) -> OpResult<ObjectHandle>,
    ) -> Result<RootKeyInfo, BackendError> {
        self.run_admin(operation, |generation, s, retry| {
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
    pub(super) fn is_root_shaped(s: &Session, h: ObjectHandle) -> Result<bool, CkError> {
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

    pub(super) fn modify_root(
        &self,
        operation: &'static str,
        id: &RootKeyId,
        mut change: impl FnMut(&Generation, &Session, Located) -> OpResult<()>,
    ) -> Result<(), BackendError> {
        self.run_admin(operation, |generation, s, _| {
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

    pub(super) fn generate(&self, id: &RootKeyId) -> Result<RootKeyInfo, BackendError> {
        let alg = self.inner.algs[0];
        self.create_root("generate a root key", id, |s| {
            let attempt = s.generate_key(
                &Mechanism::AesKeyGen,
                &root_template(
                    &self.inner.labels,
                    id,
                    alg,
                    self.inner.mechs.allowed_mechanism(alg),
                    true,
                ),
            );
            match attempt {
                Ok(h) => Ok(h),
                // A token that does not know CKA_ALLOWED_MECHANISMS: the usage flags still
                // restrict the key to its operations.
                Err(e) if refuses_allowed_mechanisms(&e) => Ok(s.generate_key(
                    &Mechanism::AesKeyGen,
                    &root_template(&self.inner.labels, id, alg, None, true),
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

    pub(super) fn import_plain(
        &self,
        id: &RootKeyId,
        material: &Key256,
    ) -> Result<RootKeyInfo, BackendError> {
        let alg = self.inner.algs[0];
        self.create_root("import a root key", id, |s| {
            let create = |allowed: Option<MechanismType>| {
                let mut t = root_template(&self.inner.labels, id, alg, allowed, false);
                // Conversion to plain bytes: into the token's C_CreateObject; scrubbed right
                // after.
                t.push(Attribute::Value(material.expose_bytes().to_vec()));
                let r = s.create_object(&t);
                scrub(&mut t);
                r
            };
            match create(self.inner.mechs.allowed_mechanism(alg)) {
                // As in generate: a token without CKA_ALLOWED_MECHANISMS.
                Err(e) if refuses_allowed_mechanisms(&e) => Ok(create(None)?),
                r => Ok(r?),
            }
        })
    }

    pub(super) fn adopt(
        &self,
        id: &RootKeyId,
        selector: &str,
    ) -> Result<RootKeyInfo, BackendError> {
        let locator = KeyLocator::from_selector(selector).map_err(|why| {
            BackendError::Config(format!(
                "cannot adopt {selector:?}: {why}; give a label, `label:LABEL` or `id:HEX`"
            ))
        })?;
        self.run_admin("adopt a root key", |generation, s, retry| {
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

    pub(super) fn disable(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.modify_root("disable a root key", id, |_, s, found| {
            let locator = found.locator();
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

    pub(super) fn enable(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.modify_root("enable a root key", id, |_, s, found| {
            let locator = found.locator();
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

    pub(super) fn destroy(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.modify_root("destroy a root key", id, |_, s, found| {
            let locator = found.locator();
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
