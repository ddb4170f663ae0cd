//! What the backend reports about the token and its roots: health checks for `doctor`, and the
//! list of root keys.

use super::*;

impl Pkcs11Backend {
    pub(super) fn check_health(&self) -> Result<Vec<HealthCheck>, BackendError> {
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

    pub(super) fn list(&self) -> Result<Vec<RootKeyInfo>, BackendError> {
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
                let locator = found.locator();
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
}
