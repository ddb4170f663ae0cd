//! One library context per PKCS#11 module per process, shared by every backend on it.
//!
//! A PKCS#11 library is initialized once per process, and `C_Finalize` ends every session of
//! every caller in the process; after a re-initialize, session and object handle numbers start
//! over and an old number can name another caller's session or object (measured on SoftHSM2:
//! numbering restarts at 1). So backends on the same module (any namespace, any token) must not
//! each keep a context and recover on their own: one backend's re-initialize would leave the
//! others using handles that now name its sessions and keys (issue 11: two tenants' keys
//! swapped).
//!
//! [`library`] hands every backend on a module (by canonical path) the same [`Library`]: the
//! `cryptoki` context, a generation number and the one recovery. Every call holds a read lock
//! on the generation for its whole attempt; a recovery takes the write lock, so it waits for the
//! calls of every backend in flight, then finalizes and initializes once for all and bumps the
//! generation. Each backend notices the new generation on its next call, forgets its sessions
//! (never closing them: their numbers are void) and re-finds its slot and key handles
//! (see `crate::session`).
//!
//! A library also holds the module's own function list ([`RawModule`], from
//! `strongroom-pkcs11-raw`, loaded from the same path: the same library, so the same sessions
//! and objects), for the calls `cryptoki` 0.12 cannot make (the whole mechanism list, key wrap
//! under `CKM_AES_KEY_WRAP_KWP`).
//!
//! The registry keeps each library for the life of the process and never finalizes it: a
//! backend being dropped never pulls the library from under another, and a backend opened later
//! in the process finds it initialized by strongroom, so it can still recover by re-initializing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::slot::Slot;
use strongroom_core::BackendError;
use strongroom_pkcs11_raw::RawModule;

use crate::config::TokenSelector;
use crate::error::device;
use crate::telemetry;

/// Where a library is in its life: which initialization, and whether it is usable.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LibState {
    /// The generation: 1 + the number of recoveries.
    pub id: u64,
    /// Set when a recovery finalized the library and initializing it again failed: no session
    /// of any backend is valid, and calls fail with this (so that the next call recovers again).
    pub lost: Option<(RvError, Function)>,
}

/// The shared context of one module (see the module docs).
pub(crate) struct Library {
    pub ctx: Pkcs11,
    /// The same module's function list, for what `ctx` cannot call.
    pub raw: RawModule,
    /// Whether strongroom's `C_Initialize` is the one in force. Only then does a recovery
    /// finalize: a library another part of the process initialized is not pulled from under it.
    owns: AtomicBool,
    state: RwLock<LibState>,
    recovery: Mutex<()>,
    reinitializations: AtomicU64,
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<Library>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Arc<Library>>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

fn init_args() -> CInitializeArgs {
    // SoftHSM2 quirk (and the standard's advice for threaded callers): without
    // CKF_OS_LOCKING_OK, 16 threads crashed SoftHSM2 in 4 of 4 runs and one run wiped the token.
    CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)
}

/// Initializes the library; `Ok(true)` if this call did it, `Ok(false)` if it already was.
fn initialize(ctx: &Pkcs11) -> Result<bool, CkError> {
    match ctx.initialize(init_args()) {
        Ok(()) => Ok(true),
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The process's library context for `module`: the one every backend on it shares, loaded and
/// initialized on first use.
///
/// # Errors
/// [`BackendError::Config`] when the module is missing or is no PKCS#11 library; a device error
/// when `C_Initialize` fails (nothing is kept then, so the next open tries again).
pub(crate) fn library(module: &Path) -> Result<Arc<Library>, BackendError> {
    let path = std::fs::canonicalize(module).map_err(|_| {
        BackendError::Config(format!(
            "PKCS#11 module {} does not exist; check the module path (SoftHSM2 on Debian: /usr/lib/softhsm/libsofthsm2.so, package softhsm2)",
            module.display()
        ))
    })?;
    let mut libs = registry()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(lib) = libs.get(&path) {
        return Ok(Arc::clone(lib));
    }
    let ctx = Pkcs11::new(&path).map_err(|e| {
        BackendError::Config(format!(
            "cannot load PKCS#11 module {}: {e}; check that it is a PKCS#11 library for this machine",
            module.display()
        ))
    })?;
    // The library cryptoki just loaded (dlopen of a loaded path returns it): its function list.
    let raw = RawModule::load(&path).map_err(|e| {
        BackendError::Config(format!(
            "cannot read the function list of PKCS#11 module {}: {e}; check that it is a PKCS#11 library for this machine",
            module.display()
        ))
    })?;
    let owns = initialize(&ctx).map_err(|e| {
        device(
            "initialize the PKCS#11 library",
            e,
            "check the module and its configuration",
        )
    })?;
    let lib = Arc::new(Library {
        ctx,
        raw,
        owns: AtomicBool::new(owns),
        state: RwLock::new(LibState { id: 1, lost: None }),
        recovery: Mutex::new(()),
        reinitializations: AtomicU64::new(0),
    });
    libs.insert(path, Arc::clone(&lib));
    Ok(lib)
}

impl Library {
    /// Holds the current generation for one attempt of a call (a recovery waits for it).
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, LibState> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Recoveries since the library was loaded in this process.
    pub(crate) fn reinitializations(&self) -> u64 {
        self.reinitializations.load(Ordering::Relaxed)
    }

    /// Finalizes and initializes the library again, unless some caller already did since
    /// generation `failed` (one recovery for any number of failing threads and backends).
    /// `cause` is the failure that called for it.
    ///
    /// A library strongroom did not initialize is not finalized (another part of the process
    /// uses it); the generation still moves on, so every backend drops its sessions and opens
    /// new ones.
    pub(crate) fn recover(&self, failed: u64, cause: &CkError) -> Result<(), BackendError> {
        let _one = self
            .recovery
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut st = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if st.id != failed {
            return Ok(());
        }
        if self.owns.load(Ordering::Relaxed) {
            // Every backend's sessions from here on are dropped without C_CloseSession: after
            // the re-initialize their handle numbers may name other sessions.
            let _ = self.ctx.clone().finalize();
        }
        // From here on the old sessions and handles are void even if the initialize fails (a
        // pulled token, a device still down): the generation is lost until a later recovery
        // succeeds, so that nothing runs on a handle a re-initialized library may have reused.
        st.id += 1;
        st.lost = Some(match cause {
            CkError::Pkcs11(rv, function) => (*rv, *function),
            _ => (RvError::GeneralError, Function::Initialize),
        });
        match initialize(&self.ctx) {
            Ok(did) => {
                if did {
                    // The library had been finalized (by us, or by someone else in the
                    // process): strongroom's initialize is the one in force now.
                    self.owns.store(true, Ordering::Relaxed);
                }
                st.lost = None;
                self.reinitializations.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(telemetry::REINITIALIZATIONS).increment(1);
                Ok(())
            }
            Err(e) => {
                metrics::counter!(telemetry::RECOVERY_FAILURES).increment(1);
                Err(device(
                    "re-initialize the PKCS#11 library",
                    e,
                    "check the HSM connection; strongroom retries on the next call",
                ))
            }
        }
    }
}

/// The slot of the token `sel` names.
///
/// A slot whose `C_GetTokenInfo` fails is not skipped: that is a device condition (measured: 3
/// of 12 concurrent CLI calls once failed with "no token with label" while the token was
/// there), reported as a device error, which callers retry.
///
/// # Errors
/// [`BackendError::Config`] when no token or several tokens match; a device error when listing
/// slots or reading a token's information fails.
pub(crate) fn find_slot(ctx: &Pkcs11, sel: &TokenSelector) -> Result<Slot, BackendError> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| device("list slots", e, "check the HSM connection"))?;
    let mut labels = Vec::new();
    let mut found = Vec::new();
    for slot in slots {
        if let TokenSelector::Slot(id) = sel
            && slot.id() != *id
        {
            continue;
        }
        let info = ctx.get_token_info(slot).map_err(|e| {
            device(
                "read token information",
                e,
                "the HSM did not describe a token it lists; check the HSM connection (strongroom retries)",
            )
        })?;
        let label = info.label().trim_end().to_owned();
        let hit = match sel {
            TokenSelector::Label(l) => *l == label,
            TokenSelector::Slot(_) => true,
        };
        if hit {
            found.push(slot);
        }
        labels.push(label);
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(BackendError::Config(format!(
            "no token with {sel} (tokens present: {}); check the token setting, or create one (SoftHSM2: `softhsm2-util --init-token --free --label NAME`)",
            if labels.is_empty() {
                "none".to_owned()
            } else {
                labels.join(", ")
            }
        ))),
        many => Err(BackendError::Config(format!(
            "{} tokens match {sel}; select the token by slot instead",
            many.len()
        ))),
    }
}
