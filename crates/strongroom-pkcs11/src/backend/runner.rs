//! The call runner: every operation runs on a pooled session of the library's current
//! generation, with bounded retries, backoff and (through the shared library) recovery.

use super::*;

impl Pkcs11Backend {
    /// This backend's sessions in the library generation `st`: the ones it has, or (when the
    /// library was recovered since) a new pool on the slot found again. The old pool is dropped
    /// without closing its sessions (their handle numbers are void), and cached key handles are
    /// checked again before use ([`Self::resolve`]).
    pub(super) fn generation(&self, st: &LibState) -> OpResult<Arc<Generation>> {
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
        metrics::counter!(crate::telemetry::RECONNECTS).increment(1);
        Ok(g)
    }

    pub(super) fn checkout<'g>(
        &self,
        generation: &'g Generation,
    ) -> Result<Lease<'g>, CheckoutError> {
        let lease = generation.checkout(
            &self.inner.pin,
            &self.inner.token_label,
            self.inner.config.checkout_timeout,
        )?;
        if lease.fresh {
            self.inner.sessions_opened.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::telemetry::SESSIONS_OPENED).increment(1);
        }
        Ok(lease)
    }

    pub(super) fn backoff(&self, attempt: u32) {
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
    pub(super) fn run<T>(
        &self,
        operation: &'static str,
        op: impl FnMut(&Generation, &Lease<'_>, bool) -> OpResult<T>,
    ) -> Result<T, BackendError> {
        self.run_with(operation, false, op)
    }

    /// [`Self::run`] for an operation that changes the token and reads it first on every
    /// attempt (so it is safe to repeat): a `CKR_GENERAL_ERROR` is also tried again, after a
    /// backoff and without a re-initialize. SoftHSM2 answers `CKR_GENERAL_ERROR` now and then
    /// when two sessions create token objects at the same moment (seen with two stores on one
    /// token generating keys together); a token that means it by a lasting failure gives the
    /// same answer every attempt, and the caller gets it.
    pub(super) fn run_admin<T>(
        &self,
        operation: &'static str,
        op: impl FnMut(&Generation, &Lease<'_>, bool) -> OpResult<T>,
    ) -> Result<T, BackendError> {
        self.run_with(operation, true, op)
    }

    fn run_with<T>(
        &self,
        operation: &'static str,
        repeat_general_errors: bool,
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
            let failure = classify(&e);
            match failure {
                Failure::SessionLost => {
                    metrics::counter!(crate::telemetry::FAILED_ATTEMPTS, "failure" => "session_lost")
                        .increment(1);
                }
                Failure::DeviceLost => {
                    metrics::counter!(crate::telemetry::FAILED_ATTEMPTS, "failure" => "device_lost")
                        .increment(1);
                }
                Failure::LoggedOut => {
                    metrics::counter!(crate::telemetry::FAILED_ATTEMPTS, "failure" => "logged_out")
                        .increment(1);
                }
                Failure::StaleHandle => {
                    metrics::counter!(crate::telemetry::FAILED_ATTEMPTS, "failure" => "stale_handle")
                        .increment(1);
                }
                Failure::BadData | Failure::NotPermitted | Failure::Other => {}
            }
            match failure {
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
                Failure::BadData
                    if repeat_general_errors
                        && rv(&e) == Some(RvError::GeneralError)
                        && attempt + 1 < attempts =>
                {
                    self.backoff(attempt);
                }
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
}
