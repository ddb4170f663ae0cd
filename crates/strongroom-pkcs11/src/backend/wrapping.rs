//! Wrapping and unwrapping under a root key on the token, and telling bad data from a failing
//! device whatever code the token returns (the canary).
//!
//! A blob records its algorithm (`aes-gcm`, `aes-kwp`, `aes-kw`; see `strongroom_core::blob`),
//! never the PKCS#11 mechanism code it was made with. For KWP that is deliberate: RFC 5649 key
//! wrap is `CKM_AES_KEY_WRAP_PAD` (0x210A) on some tokens and `CKM_AES_KEY_WRAP_KWP` (0x210B) on
//! others, one algorithm under two codes, so the bytes are the same and a blob written under
//! one code opens under the other (tested: `tests/personalities.rs`,
//! `kwp_blobs_open_under_either_code`). Each call uses the code the token offers now
//! (`Mechs::code`), through `mechanisms::wrap_key` and `mechanisms::unwrap_value`.

use super::*;

impl Pkcs11Backend {
    /// Tells a tampered input from a failing device after `CKR_GENERAL_ERROR`, which SoftHSM2
    /// returns for both: a known-good round trip under the same key must work if the device
    /// does. `Ok(())` means the device works (so the input was bad).
    pub(super) fn canary(&self, s: &Session, k: &CachedKey) -> Result<(), CkError> {
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
                let code = self.inner.mechs.code(alg);
                let raw = &self.inner.lib.raw;
                let mut tmpl = Self::tmp_secret_template(self.inner.labels.tmp());
                tmpl.push(Attribute::Value(probe.to_vec()));
                let obj = s.create_object(&tmpl);
                scrub(&mut tmpl);
                let obj = obj?;
                let wrapped = mechanisms::wrap_key(raw, s, code, k.handle, obj);
                let _ = s.destroy_object(obj);
                let back = mechanisms::unwrap_value(
                    raw,
                    s,
                    code,
                    k.handle,
                    &wrapped?,
                    &Self::tmp_secret_template(self.inner.labels.tmp()),
                )?;
                if back[..] == probe[..] {
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
    pub(super) fn failed_unwrap(
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
    pub(super) fn key_gone_or_device(
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

    /// A session-object template for a temporary extractable generic secret.
    pub(super) fn tmp_secret_template(label: Vec<u8>) -> Vec<Attribute> {
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
    pub(super) fn remove_strays(&self, s: &Session, label: &[u8]) {
        let _admin = lock(&self.inner.admin);
        if let Ok(strays) = Self::find(s, &[Attribute::Label(label.to_vec())]) {
            for h in strays {
                let _ = s.destroy_object(h);
            }
        }
    }

    pub(super) fn gcm_wrap(
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

    pub(super) fn kw_wrap(
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
        let wrapped = mechanisms::wrap_key(
            &self.inner.lib.raw,
            s,
            self.inner.mechs.code(k.alg),
            k.handle,
            obj,
        );
        let _ = s.destroy_object(obj);
        wrapped
    }

    /// Unwraps with the blob's mechanism; `Ok(Err(()))` is a failed integrity check.
    pub(super) fn unwrap_payload(
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
                let value = match mechanisms::unwrap_value(
                    &self.inner.lib.raw,
                    s,
                    self.inner.mechs.code(alg),
                    k.handle,
                    p,
                    &Self::tmp_secret_template(label.clone()),
                ) {
                    Ok(v) => v,
                    Err(e) => {
                        self.remove_strays(s, &label);
                        return Err(e);
                    }
                };
                Ok(if value.len() == BOUND_PLAINTEXT_LEN {
                    unbind_context(&value, context).map_err(|_| ())
                } else {
                    Err(())
                })
            }
        }
    }
}
