//! The session pool of one backend in one generation of the library.
//!
//! A `Generation` is what one backend holds during one initialization of the shared library
//! (see `crate::library`): the slot and the pooled sessions. When the library is recovered
//! (finalized and initialized again, once for every backend on it), each backend starts a new
//! generation on its next call. Sessions of an old generation are never used again and never
//! closed, because after a re-initialize the same handle numbers can name other sessions
//! (measured on SoftHSM2: numbering restarts at 1). Sessions are opened without close-on-drop
//! for that reason; the pool closes them itself, and only while their generation is current.
//!
//! Every operation holds a read lock on the library's generation for its whole attempt; a
//! recovery takes the write lock, so it waits for in-flight calls of every backend and no call
//! ever runs on a stale handle.

use std::ops::Deref;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use strongroom_core::{BackendError, LoginFailure, WrapAlg};

use crate::config::Pin;
use crate::error::{Failure, classify, describe};

/// A root key handle, as last resolved.
#[derive(Clone, Debug)]
pub(crate) struct CachedKey {
    pub handle: ObjectHandle,
    /// The algorithm new wraps under this key use.
    pub alg: WrapAlg,
    /// The generation in which the handle was found or last checked. In any other generation
    /// it is checked again (class, label and id) before use: after a re-initialize a handle
    /// number may name another object.
    pub generation: u64,
    /// The key's `CKA_LABEL` and `CKA_ID` when it was found.
    pub label: Vec<u8>,
    pub id: Vec<u8>,
    /// The algorithms the key may be used with: by its usage flags and, where the token keeps
    /// it, `CKA_ALLOWED_MECHANISMS`. A blob of any other algorithm is refused as altered
    /// before any token call.
    pub permits: Vec<WrapAlg>,
}

struct PoolState {
    idle: Vec<Session>,
    open: usize,
    /// Most sessions the token let this pool open: lowered to the number open when
    /// `C_OpenSession` answers `CKR_SESSION_COUNT` (other applications may hold the rest, so
    /// the token's advertised limit is no promise). Holds for the rest of the generation.
    limit: usize,
}

/// One initialization of the library (see the module docs).
pub(crate) struct Generation {
    pub id: u64,
    pub ctx: Pkcs11,
    pub slot: Slot,
    pool: Mutex<PoolState>,
    freed: Condvar,
    cap: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent at every await point of a panic: a session
    // list and counters updated in single statements.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a checkout failed.
pub(crate) enum CheckoutError {
    /// A PKCS#11 call failed.
    Ck(CkError),
    /// Logging in failed, or no session came free in time.
    Backend(BackendError),
}

impl Generation {
    pub(crate) fn new(id: u64, ctx: Pkcs11, slot: Slot, cap: usize) -> Self {
        Self {
            id,
            ctx,
            slot,
            pool: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
                limit: usize::MAX,
            }),
            freed: Condvar::new(),
            cap: cap.max(1),
        }
    }

    /// (sessions open, sessions idle, cap).
    pub(crate) fn pool_stats(&self) -> (usize, usize, usize) {
        let p = lock(&self.pool);
        (p.open, p.idle.len(), self.cap.min(p.limit))
    }

    /// A session from the pool: an idle one that still answers and is logged in, or a new one
    /// while fewer than `cap` are open, or the next one freed within `timeout`.
    pub(crate) fn checkout(
        &self,
        pin: &Pin,
        token: &str,
        timeout: Duration,
    ) -> Result<Lease<'_>, CheckoutError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut pool = lock(&self.pool);
            if let Some(s) = pool.idle.pop() {
                drop(pool);
                match self.check(&s, pin, token) {
                    Ok(()) => return Ok(Lease::new(self, s, false)),
                    Err(CheckoutError::Ck(e)) if classify(&e) == Failure::SessionLost => {
                        // Dead session: drop it without C_CloseSession (its handle is void).
                        drop(s);
                        lock(&self.pool).open -= 1;
                        continue;
                    }
                    Err(e) => {
                        // A login failure leaves the session valid: close it rather than leave
                        // it open on the token. After a device error its handle may be void.
                        self.discard(s, matches!(e, CheckoutError::Backend(_)));
                        return Err(e);
                    }
                }
            }
            if pool.open < self.cap.min(pool.limit) {
                pool.open += 1;
                drop(pool);
                let opened = self.ctx.open_rw_session_no_drop(self.slot);
                match opened {
                    Ok(s) => {
                        return match login(self, &s, pin, token) {
                            Ok(()) => Ok(Lease::new(self, s, true)),
                            Err(e) => {
                                self.discard(s, true);
                                Err(e)
                            }
                        };
                    }
                    Err(e) => {
                        let mut pool = lock(&self.pool);
                        pool.open -= 1;
                        if matches!(e, CkError::Pkcs11(RvError::SessionCount, _)) && pool.open > 0 {
                            // The token has no session to spare, but this pool holds some: use
                            // only those from now on, and wait for one to come back (within
                            // the timeout) instead of failing.
                            pool.limit = pool.open;
                            continue;
                        }
                        drop(pool);
                        self.freed.notify_one();
                        return Err(CheckoutError::Ck(e));
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CheckoutError::Backend(BackendError::Device {
                    operation: "checkout a session",
                    detail: format!(
                        "all {} sessions stayed busy for {timeout:?}; raise max_sessions or lower the load",
                        self.cap.min(pool.limit)
                    ),
                    source: None,
                }));
            }
            let (_pool, _) = self
                .freed
                .wait_timeout(pool, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Checks a pooled session on checkout: it must answer `C_GetSessionInfo` and be logged in
    /// (someone may have called `C_Logout`, which logs out every session of the application).
    fn check(&self, s: &Session, pin: &Pin, token: &str) -> Result<(), CheckoutError> {
        let info = s.get_session_info().map_err(CheckoutError::Ck)?;
        match info.session_state() {
            SessionState::RwUser | SessionState::RoUser => Ok(()),
            _ => login(self, s, pin, token),
        }
    }

    /// Takes a session out of the pool for good; closes it if `close` (its handle is known good).
    pub(crate) fn discard(&self, s: Session, close: bool) {
        if close {
            let _ = s.close();
        }
        lock(&self.pool).open -= 1;
        self.freed.notify_one();
    }

    fn give_back(&self, s: Session) {
        lock(&self.pool).idle.push(s);
        self.freed.notify_one();
    }

    /// Closes every idle session (used when the backend shuts down cleanly).
    pub(crate) fn close_idle(&self) {
        let idle: Vec<Session> = std::mem::take(&mut lock(&self.pool).idle);
        for s in idle {
            self.discard(s, true);
        }
    }
}

fn refused_earlier(token: &str, why: LoginFailure) -> CheckoutError {
    CheckoutError::Backend(BackendError::Login {
        token: token.to_owned(),
        failure: LoginFailure::RefusedEarlier(Box::new(why)),
    })
}

/// Logs the application in through `s`, unless that would spend a PIN attempt for nothing:
/// - a PIN this process saw refused, or one the state file records as refused by this token
///   (in any process), is not tried again (until the PIN given changes);
/// - an application already logged in (login state is per application, not per session) does
///   not call `C_Login`;
/// - a token whose flags say the PIN is locked, or has one attempt left
///   (`CKF_USER_PIN_FINAL_TRY`, unless [`crate::Pkcs11Config::allow_final_pin_try`]), is
///   refused without a login attempt, with what to do.
///
/// `CKR_USER_ALREADY_LOGGED_IN` is success.
pub(crate) fn login(
    generation: &Generation,
    s: &Session,
    pin: &Pin,
    token: &str,
) -> Result<(), CheckoutError> {
    if let Some(earlier) = pin.refused() {
        return Err(refused_earlier(token, earlier.clone()));
    }
    if matches!(
        s.get_session_info()
            .map_err(CheckoutError::Ck)?
            .session_state(),
        SessionState::RwUser | SessionState::RoUser
    ) {
        return Ok(());
    }
    // Only before a real C_Login (once per process, and after a logout): the check derives a
    // PIN fingerprint, which is deliberately slow.
    if let Some(state) = &pin.state {
        match state.refused(&pin.serial, pin.expose()) {
            Ok(Some(why)) => {
                pin.refuse(why.clone());
                return Err(refused_earlier(token, why));
            }
            Ok(None) => {}
            Err(e) => return Err(CheckoutError::Backend(e)),
        }
    }
    let info = generation
        .ctx
        .get_token_info(generation.slot)
        .map_err(CheckoutError::Ck)?;
    if info.user_pin_locked() {
        return Err(CheckoutError::Backend(BackendError::Login {
            token: token.to_owned(),
            failure: LoginFailure::PinLocked,
        }));
    }
    if info.user_pin_final_try() && !pin.allow_final_try {
        return Err(CheckoutError::Backend(BackendError::Login {
            token: token.to_owned(),
            failure: LoginFailure::Other(format!(
                "the token (serial {}) has one user PIN attempt left before the PIN locks (CKF_USER_PIN_FINAL_TRY); strongroom does not spend it. Check the PIN strongroom is given; then log in once with the token's own tools to reset the count, or set allow_final_pin_try to let strongroom try",
                pin.serial
            )),
        }));
    }
    match s.login(UserType::User, Some(pin.expose())) {
        Ok(()) => {
            if let Some(state) = &pin.state {
                // The PIN works: a refusal recorded earlier (of another PIN) is void.
                let _ = state.clear(&pin.serial);
            }
            Ok(())
        }
        Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(
            rv @ (RvError::PinIncorrect
            | RvError::PinLocked
            | RvError::PinExpired
            | RvError::PinInvalid
            | RvError::PinLenRange),
            _,
        )) => {
            let failure = match rv {
                RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange => {
                    LoginFailure::WrongPin
                }
                RvError::PinLocked => LoginFailure::PinLocked,
                _ => LoginFailure::PinExpired,
            };
            pin.refuse(failure.clone());
            if let Some(state) = &pin.state
                && let Err(e) = state.record(&pin.serial, pin.expose(), &failure)
            {
                return Err(CheckoutError::Backend(BackendError::Login {
                    token: token.to_owned(),
                    failure: LoginFailure::Other(format!(
                        "{failure}; and it could not be recorded for other processes ({e})"
                    )),
                }));
            }
            Err(CheckoutError::Backend(BackendError::Login {
                token: token.to_owned(),
                failure,
            }))
        }
        Err(e) if matches!(classify(&e), Failure::Other) => {
            Err(CheckoutError::Backend(BackendError::Login {
                token: token.to_owned(),
                failure: LoginFailure::Other(describe(&e)),
            }))
        }
        Err(e) => Err(CheckoutError::Ck(e)),
    }
}

/// A session on loan from a generation's pool; returned (or closed, if marked broken) on drop.
pub(crate) struct Lease<'g> {
    generation: &'g Generation,
    session: Option<Session>,
    state: LeaseEnd,
    /// The session was opened for this lease (not taken from the pool).
    pub fresh: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LeaseEnd {
    Return,
    /// The session (or the whole library) is gone: drop it without any call.
    Forget,
}

impl<'g> Lease<'g> {
    fn new(generation: &'g Generation, s: Session, fresh: bool) -> Self {
        Self {
            generation,
            session: Some(s),
            state: LeaseEnd::Return,
            fresh,
        }
    }

    /// Drop the session without calling the library when the lease ends.
    pub(crate) fn forget(&mut self) {
        self.state = LeaseEnd::Forget;
    }
}

impl Deref for Lease<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        // Present from construction until drop.
        self.session
            .as_ref()
            .unwrap_or_else(|| unreachable!("lease without session"))
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            match self.state {
                LeaseEnd::Return => self.generation.give_back(s),
                LeaseEnd::Forget => self.generation.discard(s, false),
            }
        }
    }
}
