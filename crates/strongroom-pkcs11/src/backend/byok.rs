//! BYOK: the RSA-OAEP import key pair made in the token, and its canary.

use super::*;

impl Pkcs11Backend {
    /// The import key's canary: a random value encrypted under the import public key must
    /// unwrap under the private key to itself. `Ok(())` means the device works.
    pub(super) fn import_canary(
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

    /// The BYOK import key pair: (private, public), made on first use.
    pub(super) fn import_pair(
        &self,
        s: &Session,
        create: bool,
    ) -> OpResult<(ObjectHandle, ObjectHandle)> {
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
    pub(super) fn oaep_sha256(s: &Session, public: ObjectHandle) -> Result<bool, CkError> {
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

    pub(super) fn make_import_key(&self) -> Result<ImportKey, BackendError> {
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

    pub(super) fn import_wrapped(
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
            let unwrap = |allowed: Option<MechanismType>| {
                s.unwrap_key(
                    &mech,
                    private,
                    wrapped,
                    &root_template(&self.inner.labels, id, alg, allowed, false),
                )
            };
            match unwrap(self.inner.mechs.allowed_mechanism(alg)) {
                // As in generate: a token without CKA_ALLOWED_MECHANISMS.
                Err(e) if refuses_allowed_mechanisms(&e) => Ok(unwrap(None)?),
                r => Ok(r?),
            }
        })
    }
}
