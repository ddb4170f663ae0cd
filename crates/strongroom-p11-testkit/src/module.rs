//! The fault-injecting PKCS#11 module: `C_GetFunctionList` and the functions it lists.
//!
//! Every function checks the fault plan (see the crate docs) and otherwise forwards its
//! arguments unchanged to the same function of the real module. The module keeps track of the
//! sessions opened through it, so that it can fail the ones a pulled token or a stuck device
//! took with it.

#![allow(non_snake_case)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use cryptoki_sys::*;

use crate::control::{CONTROL_ENV, DEFAULT_TARGET, TARGET_ENV, status_path};
use crate::plan::{Fault, FaultPlan, ckr_name};

/// The real module, loaded on first use and never unloaded.
struct Real {
    _lib: libloading::Library,
    list: CK_FUNCTION_LIST,
}

static REAL: OnceLock<Option<Real>> = OnceLock::new();

fn real() -> Option<&'static CK_FUNCTION_LIST> {
    REAL.get_or_init(load_real).as_ref().map(|r| &r.list)
}

fn load_real() -> Option<Real> {
    let path =
        std::env::var_os(TARGET_ENV).map_or_else(|| PathBuf::from(DEFAULT_TARGET), PathBuf::from);
    // SAFETY: loading a library runs its initializers. The library is the PKCS#11 module the
    // tester named in STRONGROOM_FAULT_TARGET (SoftHSM2 by default), loaded exactly as cryptoki
    // would load it; PKCS#11 modules are made to be loaded this way.
    let lib = match unsafe { libloading::Library::new(&path) } {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "strongroom fault module: cannot load the real module {}: {e}",
                path.display()
            );
            return None;
        }
    };
    type GetFunctionList = unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV;
    // SAFETY: every PKCS#11 module exports C_GetFunctionList with this signature (PKCS#11 2.40,
    // section 5.2); the symbol is used only while `lib` is loaded (it never is unloaded).
    let get: libloading::Symbol<'_, GetFunctionList> =
        match unsafe { lib.get(b"C_GetFunctionList\0") } {
            Ok(f) => f,
            Err(e) => {
                eprintln!(
                    "strongroom fault module: {} has no C_GetFunctionList: {e}",
                    path.display()
                );
                return None;
            }
        };
    let mut p: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: `p` is a valid place for the module to store its list pointer.
    let rv = unsafe { get(&raw mut p) };
    if rv != CKR_OK || p.is_null() {
        eprintln!(
            "strongroom fault module: C_GetFunctionList of {} returned {}",
            path.display(),
            ckr_name(rv)
        );
        return None;
    }
    // SAFETY: on CKR_OK the module stored a pointer to its function list, which stays valid
    // while the module is loaded; every module's list starts with the 2.40 layout read here.
    let list = unsafe { p.read_unaligned() };
    Some(Real { _lib: lib, list })
}

/// What a call names.
#[derive(Clone, Copy)]
enum Scope {
    None,
    Slot,
    Session(CK_SESSION_HANDLE),
}

/// A session the token took with it: it fails until the caller stops using it.
struct Dead {
    slot: CK_SLOT_ID,
    /// Still open in the real module (it is closed the next time the caller touches it).
    open_in_real: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

struct LiveRule {
    rule: crate::plan::Rule,
    remaining: Option<u64>,
}

#[derive(Default)]
struct State {
    file: Option<FileKey>,
    rules: Vec<LiveRule>,
    pulled: bool,
    stuck: bool,
    /// Bumped whenever the sessions open so far are killed (pull, stuck, finalize).
    epoch: u64,
    live: HashMap<CK_SESSION_HANDLE, CK_SLOT_ID>,
    /// `C_OpenSession` calls let through the cap and not yet returned: they count against it,
    /// or two threads could both pass the check and open one session too many.
    opening: u64,
    dead: HashMap<CK_SESSION_HANDLE, Dead>,
    counts: BTreeMap<(&'static str, String, &'static str), u64>,
    total: u64,
}

struct Control {
    control: Option<PathBuf>,
    state: Mutex<State>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

fn control() -> &'static Control {
    CONTROL.get_or_init(|| Control {
        control: std::env::var_os(CONTROL_ENV).map(PathBuf::from),
        state: Mutex::new(State::default()),
    })
}

fn lock(c: &Control) -> MutexGuard<'_, State> {
    // A panic cannot leave the state half-updated in a way that matters to a test module.
    c.state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// Re-reads the control file if it changed, and applies a pull or a reinsertion.
    fn refresh(&mut self, path: &std::path::Path) {
        let key = std::fs::metadata(path).ok().map(|m| FileKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        });
        if key != self.file {
            self.file = key;
            let plan = match key {
                None => FaultPlan::new(),
                Some(_) => match std::fs::read_to_string(path).map(|t| t.parse::<FaultPlan>()) {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => {
                        eprintln!(
                            "strongroom fault module: bad control file {}: {e}; no faults",
                            path.display()
                        );
                        FaultPlan::new()
                    }
                    // Replaced between stat and read: the next call sees the new one.
                    Err(_) => {
                        self.file = None;
                        FaultPlan::new()
                    }
                },
            };
            self.rules = plan
                .rules()
                .iter()
                .map(|r| LiveRule {
                    remaining: match r.fault {
                        Fault::StuckAfterDeviceError => Some(r.times.unwrap_or(1)),
                        _ => r.times,
                    },
                    rule: r.clone(),
                })
                .collect();
        }
        let pulled = self
            .rules
            .iter()
            .any(|r| r.rule.fault == Fault::TokenPulled);
        if pulled && !self.pulled {
            self.kill_sessions();
        }
        self.pulled = pulled;
    }

    /// Every session open now is gone (as a real token takes its sessions when it is pulled).
    fn kill_sessions(&mut self) {
        self.epoch += 1;
        for (h, slot) in self.live.drain() {
            self.dead.insert(
                h,
                Dead {
                    slot,
                    open_in_real: true,
                },
            );
        }
    }

    fn count(&mut self, kind: &'static str, rv: Option<CK_RV>, function: &'static str) {
        let code = rv.map_or_else(|| "-".to_owned(), ckr_name);
        *self.counts.entry((kind, code, function)).or_insert(0) += 1;
        self.total += 1;
    }

    fn write_status(&self, path: &std::path::Path) {
        let mut text = format!("total {}\n", self.total);
        for ((kind, code, function), n) in &self.counts {
            text.push_str(&format!("{kind} {code} {function} {n}\n"));
        }
        let status = status_path(path);
        let mut tmp = status.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(text.as_bytes()));
        if written.is_ok() {
            let _ = std::fs::rename(&tmp, &status);
        }
    }

    /// The fault for one call, if any (see the crate docs for the rules).
    fn decide(&mut self, function: &'static str, scope: Scope, verdict: &mut Verdict) {
        let names_session = matches!(scope, Scope::Session(_));
        for r in &mut self.rules {
            if let Fault::Latency(d) = r.rule.fault
                && r.rule.applies_to(function, names_session)
                && r.remaining != Some(0)
            {
                if let Some(n) = &mut r.remaining {
                    *n -= 1;
                }
                verdict.delay += d;
                verdict.counted.push(("latency", None));
            }
        }
        let injected: Option<(&'static str, CK_RV)> = 'decide: {
            match scope {
                Scope::Session(h) => {
                    if let Some(d) = self.dead.get_mut(&h) {
                        if d.open_in_real {
                            d.open_in_real = false;
                            verdict.close_real = Some(h);
                        }
                        if function == "C_CloseSession" {
                            self.dead.remove(&h);
                        }
                        break 'decide Some((
                            "token-pulled",
                            if self.pulled {
                                CKR_DEVICE_REMOVED
                            } else {
                                CKR_SESSION_HANDLE_INVALID
                            },
                        ));
                    }
                    if self.pulled {
                        break 'decide Some(("token-pulled", CKR_DEVICE_REMOVED));
                    }
                    if self.stuck {
                        break 'decide Some(("stuck", CKR_SESSION_HANDLE_INVALID));
                    }
                }
                Scope::Slot if self.pulled => {
                    break 'decide Some(("token-pulled", CKR_TOKEN_NOT_PRESENT));
                }
                Scope::Slot | Scope::None => {}
            }
            for r in &mut self.rules {
                if !r.rule.applies_to(function, names_session) || r.remaining == Some(0) {
                    continue;
                }
                let hit = match r.rule.fault {
                    Fault::Fail(rv) => Some(("fail", rv)),
                    Fault::LoseReply(rv) if !NOT_PLAIN.contains(&function) => {
                        Some(("lose-reply", rv))
                    }
                    Fault::StuckAfterDeviceError => Some(("stuck", CKR_DEVICE_ERROR)),
                    _ => None,
                };
                if let Some(hit) = hit {
                    if let Some(n) = &mut r.remaining {
                        *n -= 1;
                    }
                    if hit.0 == "stuck" {
                        self.stuck = true;
                        self.epoch += 1;
                    }
                    break 'decide Some(hit);
                }
            }
            if function == "C_OpenSession"
                && let Some(max) = self.cap()
                && self.live.len() as u64 + self.opening >= max
            {
                break 'decide Some(("session-cap", CKR_SESSION_COUNT));
            }
            None
        };
        for (i, r) in self.rules.iter().enumerate() {
            if let Fault::Remap { from, to } = r.rule.fault
                && r.rule.applies_to(function, names_session)
                && r.remaining != Some(0)
            {
                verdict.remaps.push((i, from, to));
            }
        }
        if function == "C_OpenSession" && injected.is_none() {
            // Released by `C_OpenSession` once the real call returned.
            self.opening += 1;
        }
        if let Some((kind, rv)) = injected {
            verdict.counted.push((kind, Some(rv)));
            verdict.ends_op = kind == "fail";
            if kind == "lose-reply" {
                verdict.lost_reply = Some(rv);
            } else {
                verdict.rv = Some(rv);
            }
        }
        verdict.pulled = self.pulled;
        verdict.epoch = self.epoch;
    }

    fn mechanisms(&self) -> Personality {
        let mut p = Personality::default();
        for r in &self.rules {
            match r.rule.fault {
                Fault::HideMechanism(m) => p.hide.push(m),
                Fault::ListMechanism(m) => p.list.push(m),
                Fault::RefuseMechanism(m) => p.refuse.push(m),
                Fault::TranslateMechanism { from, to } => p.translate.push((from, to)),
                _ => {}
            }
        }
        p
    }

    fn rw_session_limit(&self) -> Option<CK_ULONG> {
        self.rules
            .iter()
            .filter_map(|r| match r.rule.fault {
                Fault::RwSessionLimit(max) => Some(max),
                _ => None,
            })
            .min()
    }

    fn token_flags(&self) -> CK_FLAGS {
        self.rules
            .iter()
            .filter_map(|r| match r.rule.fault {
                Fault::TokenFlags(f) => Some(f),
                _ => None,
            })
            .fold(0, |a, b| a | b)
    }

    fn cap(&self) -> Option<u64> {
        self.rules
            .iter()
            .filter_map(|r| match r.rule.fault {
                Fault::SessionCap { max, .. } => Some(max),
                _ => None,
            })
            .min()
    }

    fn advertised_cap(&self) -> Option<u64> {
        self.rules
            .iter()
            .filter_map(|r| match r.rule.fault {
                Fault::SessionCap {
                    max,
                    advertised: true,
                } => Some(max),
                _ => None,
            })
            .min()
    }
}

/// The mechanism rules of the plan.
#[derive(Default)]
struct Personality {
    hide: Vec<CK_MECHANISM_TYPE>,
    list: Vec<CK_MECHANISM_TYPE>,
    refuse: Vec<CK_MECHANISM_TYPE>,
    /// (the caller's code, the real module's code)
    translate: Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_TYPE)>,
}

impl Personality {
    fn translated(&self, m: CK_MECHANISM_TYPE) -> Option<CK_MECHANISM_TYPE> {
        self.translate
            .iter()
            .find(|(from, _)| *from == m)
            .map(|(_, to)| *to)
    }
}

/// The functions with their own wrappers, where `lose-reply` does not apply.
const NOT_PLAIN: &[&str] = &[
    "C_Initialize",
    "C_Finalize",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
];

#[derive(Default)]
struct Verdict {
    /// Return this instead of calling.
    rv: Option<CK_RV>,
    /// Call, then return this (only the plain forwarders do; see the crate docs).
    lost_reply: Option<CK_RV>,
    /// The refused call would have ended the session's active operation (a `fail` rule).
    ends_op: bool,
    delay: Duration,
    /// Close this session in the real module (the token took it).
    close_real: Option<CK_SESSION_HANDLE>,
    pulled: bool,
    epoch: u64,
    counted: Vec<(&'static str, Option<CK_RV>)>,
    /// Remap rules for this call: (rule index, from, to).
    remaps: Vec<(usize, CK_RV, CK_RV)>,
}

/// The code a forwarded call returns: a lost reply's, else the real one, remapped by the
/// personality rules (each remap is counted as `remap TO FUNCTION`).
fn finish(function: &'static str, v: &Verdict, rv: CK_RV) -> CK_RV {
    let rv = v.lost_reply.unwrap_or(rv);
    let Some(&(i, _, to)) = v.remaps.iter().find(|(_, from, _)| *from == rv) else {
        return rv;
    };
    let c = control();
    if let Some(path) = &c.control {
        let mut st = lock(c);
        if let Some(r) = st.rules.get_mut(i)
            && let Some(n) = &mut r.remaining
        {
            *n = n.saturating_sub(1);
        }
        st.count("remap", Some(to), function);
        st.write_status(path);
    }
    to
}

/// The mechanism a call goes to the real module with, under the personality: `Err(rv)` when
/// it refuses the caller's mechanism (counted as `refuse-mechanism`), `Ok(Some(m))` a copy with
/// a translated code (counted as `translate-mechanism`), `Ok(None)` the caller's unchanged.
/// `session` and `key` are the call's, for the `CKA_ALLOWED_MECHANISMS` check of a translated
/// call (see [`Fault::TranslateMechanism`]).
///
/// # Safety
/// `mechanism` is null or points to a valid `CK_MECHANISM` (the caller's PKCS#11 contract).
unsafe fn personality_mechanism(
    function: &'static str,
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    key: Option<CK_OBJECT_HANDLE>,
) -> Result<Option<CK_MECHANISM>, CK_RV> {
    let c = control();
    let Some(path) = &c.control else {
        return Ok(None);
    };
    if mechanism.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null, and valid by this function's contract; only read.
    let mut m = unsafe { mechanism.read() };
    let p = lock(c).mechanisms();
    let refuse = |st: &mut State| {
        st.count("refuse-mechanism", Some(CKR_MECHANISM_INVALID), function);
        st.write_status(path);
        CKR_MECHANISM_INVALID
    };
    if p.refuse.contains(&m.mechanism) {
        return Err(refuse(&mut lock(c)));
    }
    let Some(to) = p.translated(m.mechanism) else {
        return Ok(None);
    };
    if let Some(key) = key
        && let Some(allowed) = allowed_mechanisms(session, key)
        && !allowed.is_empty()
        && !allowed.contains(&m.mechanism)
    {
        return Err(refuse(&mut lock(c)));
    }
    m.mechanism = to;
    let mut st = lock(c);
    st.count("translate-mechanism", None, function);
    st.write_status(path);
    Ok(Some(m))
}

/// `key`'s `CKA_ALLOWED_MECHANISMS` in the real module (`None` when it cannot be read).
fn allowed_mechanisms(
    session: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
) -> Option<Vec<CK_MECHANISM_TYPE>> {
    let f = real()?.C_GetAttributeValue?;
    let mut attr = CK_ATTRIBUTE {
        type_: CKA_ALLOWED_MECHANISMS,
        pValue: std::ptr::null_mut(),
        ulValueLen: 0,
    };
    // SAFETY: a length query: one attribute with a null value.
    let rv = unsafe { f(session, key, &raw mut attr, 1) };
    if rv != CKR_OK || attr.ulValueLen == CK_UNAVAILABLE_INFORMATION {
        return None;
    }
    let n = usize::try_from(attr.ulValueLen).ok()? / size_of::<CK_MECHANISM_TYPE>();
    if n == 0 {
        return Some(Vec::new());
    }
    let mut list: Vec<CK_MECHANISM_TYPE> = vec![0; n];
    attr.pValue = list.as_mut_ptr().cast();
    attr.ulValueLen = (n * size_of::<CK_MECHANISM_TYPE>()) as CK_ULONG;
    // SAFETY: the value points to `list`, writable for the `ulValueLen` bytes it says.
    let rv = unsafe { f(session, key, &raw mut attr, 1) };
    if rv != CKR_OK {
        return None;
    }
    list.truncate(usize::try_from(attr.ulValueLen).ok()? / size_of::<CK_MECHANISM_TYPE>());
    Some(list)
}

/// Checks the plan for a call to `function`; sleeps for added latency.
fn before(function: &'static str, scope: Scope) -> Verdict {
    let c = control();
    let mut v = Verdict::default();
    let Some(path) = &c.control else {
        return v;
    };
    {
        let mut st = lock(c);
        st.refresh(path);
        st.decide(function, scope, &mut v);
        if !v.counted.is_empty() {
            for (kind, rv) in &v.counted {
                st.count(kind, *rv, function);
            }
            st.write_status(path);
        }
    }
    if let Some(h) = v.close_real
        && let Some(close) = real().and_then(|l| l.C_CloseSession)
    {
        // SAFETY: `h` is a session the real module opened for this caller; the caller's thread
        // is the one using it (it is in this call), so no other call runs on it now.
        let _ = unsafe { close(h) };
    }
    if !v.delay.is_zero() {
        std::thread::sleep(v.delay);
    }
    v
}

/// What a call is forwarded to: the real module's function, or `CKR_GENERAL_ERROR` when the
/// real module could not be loaded (the reason went to standard error).
macro_rules! real_fn {
    ($name:ident) => {
        match real() {
            Some(list) => match list.$name {
                Some(f) => f,
                None => return CKR_FUNCTION_NOT_SUPPORTED,
            },
            None => return CKR_GENERAL_ERROR,
        }
    };
}

macro_rules! forward {
    ($scope:expr, $name:ident($($a:ident: $t:ty),*)) => {
        unsafe extern "C" fn $name($($a: $t),*) -> CK_RV {
            let v = before(stringify!($name), $scope);
            if let Some(rv) = v.rv {
                return rv;
            }
            let f = real_fn!($name);
            // SAFETY: the caller's arguments go unchanged to the real module's implementation of
            // the same PKCS#11 function, whose contract the caller upholds.
            let rv = unsafe { f($($a),*) };
            finish(stringify!($name), &v, rv)
        }
    };
}

macro_rules! forward_none {
    ($($name:ident($($a:ident: $t:ty),*);)*) => {
        $(forward!(Scope::None, $name($($a: $t),*));)*
    };
}

macro_rules! forward_slot {
    ($($name:ident($($a:ident: $t:ty),*);)*) => {
        $(forward!(Scope::Slot, $name($($a: $t),*));)*
    };
}

macro_rules! forward_session {
    ($($name:ident(arg1: CK_SESSION_HANDLE $(, $a:ident: $t:ty)*);)*) => {
        $(forward!(Scope::Session(arg1), $name(arg1: CK_SESSION_HANDLE $(, $a: $t)*));)*
    };
}

/// Single-part functions with output (`C_Encrypt`, `C_Decrypt`, ...): a refused call must end
/// the active operation in the real module too, as the standard says any failed call does
/// (except `CKR_BUFFER_TOO_SMALL` and length queries). The module runs the call into a scratch
/// buffer, wipes it and returns the fault.
macro_rules! forward_session_ending_op_out {
    ($($name:ident(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);)*) => {
        $(
            unsafe extern "C" fn $name(
                arg1: CK_SESSION_HANDLE,
                arg2: *mut CK_BYTE,
                arg3: CK_ULONG,
                arg4: *mut CK_BYTE,
                arg5: *mut CK_ULONG,
            ) -> CK_RV {
                let v = before(stringify!($name), Scope::Session(arg1));
                let f = real_fn!($name);
                if let Some(rv) = v.rv {
                    if v.ends_op {
                        let mut len: CK_ULONG = 0;
                        // SAFETY: a length query with the caller's input (readable for `arg3`
                        // bytes, as the caller promised) and a null output.
                        let q = unsafe { f(arg1, arg2, arg3, std::ptr::null_mut(), &raw mut len) };
                        if q == CKR_OK {
                            let mut scratch = vec![0u8; usize::try_from(len).unwrap_or(0).max(1)];
                            // SAFETY: the same input, and an output buffer of the length the
                            // module asked for (at least one byte, so never null).
                            let _ = unsafe { f(arg1, arg2, arg3, scratch.as_mut_ptr(), &raw mut len) };
                            wipe(&mut scratch);
                        }
                    }
                    return rv;
                }
                // SAFETY: the caller's arguments go unchanged to the real module's
                // implementation of the same PKCS#11 function, whose contract the caller
                // upholds.
                let rv = unsafe { f(arg1, arg2, arg3, arg4, arg5) };
                finish(stringify!($name), &v, rv)
            }
        )*
    };
}

/// `C_EncryptFinal` and the like: as above, with no input.
macro_rules! forward_session_ending_op_final {
    ($($name:ident(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: *mut CK_ULONG);)*) => {
        $(
            unsafe extern "C" fn $name(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: *mut CK_ULONG) -> CK_RV {
                let v = before(stringify!($name), Scope::Session(arg1));
                let f = real_fn!($name);
                if let Some(rv) = v.rv {
                    if v.ends_op {
                        let mut len: CK_ULONG = 0;
                        // SAFETY: a length query: null output, a valid length.
                        let q = unsafe { f(arg1, std::ptr::null_mut(), &raw mut len) };
                        if q == CKR_OK {
                            let mut scratch = vec![0u8; usize::try_from(len).unwrap_or(0).max(1)];
                            // SAFETY: an output buffer of the length the module asked for.
                            let _ = unsafe { f(arg1, scratch.as_mut_ptr(), &raw mut len) };
                            wipe(&mut scratch);
                        }
                    }
                    return rv;
                }
                // SAFETY: the caller's arguments go unchanged to the real module's
                // implementation of the same PKCS#11 function.
                let rv = unsafe { f(arg1, arg2, arg3) };
                finish(stringify!($name), &v, rv)
            }
        )*
    };
}

/// `C_Verify` and `C_VerifyFinal`: no output, so a refused call runs with the caller's own
/// arguments (to end the operation) and its result is dropped.
macro_rules! forward_session_ending_op_in {
    ($($name:ident(arg1: CK_SESSION_HANDLE $(, $a:ident: $t:ty)*);)*) => {
        $(
            unsafe extern "C" fn $name(arg1: CK_SESSION_HANDLE $(, $a: $t)*) -> CK_RV {
                let v = before(stringify!($name), Scope::Session(arg1));
                let f = real_fn!($name);
                if let Some(rv) = v.rv {
                    if v.ends_op {
                        // SAFETY: the caller's own arguments, which it promised are valid; only
                        // the result is replaced.
                        let _ = unsafe { f(arg1 $(, $a)*) };
                    }
                    return rv;
                }
                // SAFETY: the caller's arguments go unchanged to the real module's
                // implementation of the same PKCS#11 function.
                let rv = unsafe { f(arg1 $(, $a)*) };
                finish(stringify!($name), &v, rv)
            }
        )*
    };
}

/// Calls that take a mechanism: as [`forward_session`], and refused with
/// `CKR_MECHANISM_INVALID` when the personality refuses the mechanism, or forwarded with another
/// code when it translates it. `key` names the argument that is the call's key, if any.
macro_rules! forward_session_mech {
    ($($name:ident(arg1: CK_SESSION_HANDLE, arg2: *mut CK_MECHANISM $(, $a:ident: $t:ty)*) key $key:expr;)*) => {
        $(
            unsafe extern "C" fn $name(arg1: CK_SESSION_HANDLE, arg2: *mut CK_MECHANISM $(, $a: $t)*) -> CK_RV {
                let v = before(stringify!($name), Scope::Session(arg1));
                if let Some(rv) = v.rv {
                    return rv;
                }
                let key: Option<CK_OBJECT_HANDLE> = $key;
                // SAFETY: `arg2` is the caller's mechanism pointer: null or valid (the PKCS#11
                // contract of this function).
                let mut translated = match unsafe {
                    personality_mechanism(stringify!($name), arg1, arg2, key)
                } {
                    Err(rv) => return rv,
                    Ok(m) => m,
                };
                let arg2 = translated.as_mut().map_or(arg2, |m| m as *mut CK_MECHANISM);
                let f = real_fn!($name);
                // SAFETY: the caller's arguments go to the real module's implementation of the
                // same PKCS#11 function, whose contract the caller upholds; a translated
                // mechanism is a copy of the caller's (same parameter pointer) that lives until
                // the call returns.
                let rv = unsafe { f(arg1, arg2 $(, $a)*) };
                finish(stringify!($name), &v, rv)
            }
        )*
    };
}

unsafe extern "C" fn C_GetMechanismList(
    slot: CK_SLOT_ID,
    list: *mut CK_MECHANISM_TYPE,
    count: *mut CK_ULONG,
) -> CK_RV {
    let v = before("C_GetMechanismList", Scope::Slot);
    if let Some(rv) = v.rv {
        return rv;
    }
    let f = real_fn!(C_GetMechanismList);
    let Personality {
        hide, list: add, ..
    } = lock(control()).mechanisms();
    if hide.is_empty() && add.is_empty() {
        // SAFETY: forwarded unchanged to the real C_GetMechanismList.
        let rv = unsafe { f(slot, list, count) };
        return finish("C_GetMechanismList", &v, rv);
    }
    if count.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    // The personality's list: the real one, less the hidden mechanisms, plus the added ones.
    let mut n: CK_ULONG = 0;
    // SAFETY: a length query: null list, a valid count.
    let rv = unsafe { f(slot, std::ptr::null_mut(), &raw mut n) };
    if rv != CKR_OK {
        return finish("C_GetMechanismList", &v, rv);
    }
    let mut real_list: Vec<CK_MECHANISM_TYPE> = vec![0; usize::try_from(n).unwrap_or(0)];
    // SAFETY: a buffer of the `n` entries the module asked for.
    let rv = unsafe { f(slot, real_list.as_mut_ptr(), &raw mut n) };
    if rv != CKR_OK {
        return finish("C_GetMechanismList", &v, rv);
    }
    real_list.truncate(usize::try_from(n).unwrap_or(0));
    real_list.retain(|m| !hide.contains(m));
    for m in add {
        if !real_list.contains(&m) {
            real_list.push(m);
        }
    }
    let want = real_list.len() as CK_ULONG;
    // SAFETY: `count` is the caller's in/out count (non-null, checked above).
    let room = unsafe { count.read() };
    // SAFETY: as above.
    unsafe { count.write(want) };
    if list.is_null() {
        return CKR_OK;
    }
    if room < want {
        return CKR_BUFFER_TOO_SMALL;
    }
    // SAFETY: the caller's list has room for `room` >= `want` entries (PKCS#11 contract).
    unsafe { std::ptr::copy_nonoverlapping(real_list.as_ptr(), list, real_list.len()) };
    CKR_OK
}

unsafe extern "C" fn C_GetMechanismInfo(
    slot: CK_SLOT_ID,
    mechanism: CK_MECHANISM_TYPE,
    info: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    let v = before("C_GetMechanismInfo", Scope::Slot);
    if let Some(rv) = v.rv {
        return rv;
    }
    let p = lock(control()).mechanisms();
    if p.hide.contains(&mechanism) || p.refuse.contains(&mechanism) {
        return CKR_MECHANISM_INVALID;
    }
    let mechanism = p.translated(mechanism).unwrap_or(mechanism);
    let f = real_fn!(C_GetMechanismInfo);
    // SAFETY: forwarded unchanged to the real C_GetMechanismInfo.
    let rv = unsafe { f(slot, mechanism, info) };
    finish("C_GetMechanismInfo", &v, rv)
}

/// Overwrites a scratch buffer that may hold plaintext.
fn wipe(buf: &mut [u8]) {
    for b in buf.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference; a volatile write is not
        // optimized away.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

/// The fault module's function list (PKCS#11 2.40; the module exports no `C_GetInterface`).
///
/// # Safety
/// `list` must be null or valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    if list.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    // SAFETY: the caller passes a place for a pointer (checked non-null above). The list is a
    // static that callers only read (PKCS#11 forbids writing to it); the pointer is `*mut` only
    // because the C signature says so.
    unsafe { list.write(std::ptr::addr_of!(FUNCTION_LIST).cast_mut()) };
    CKR_OK
}

unsafe extern "C" fn C_Initialize(args: *mut c_void) -> CK_RV {
    let v = before("C_Initialize", Scope::None);
    if let Some(rv) = v.rv {
        return rv;
    }
    let f = real_fn!(C_Initialize);
    // SAFETY: forwarded unchanged to the real C_Initialize; the caller upholds its contract.
    unsafe { f(args) }
}

unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    let v = before("C_Finalize", Scope::None);
    if let Some(rv) = v.rv {
        return rv;
    }
    let f = real_fn!(C_Finalize);
    // SAFETY: forwarded unchanged to the real C_Finalize; the caller upholds its contract.
    let rv = unsafe { f(reserved) };
    if rv == CKR_OK {
        // Every session of the library is gone, stuck ones too; handle numbers start over.
        let mut st = lock(control());
        st.live.clear();
        st.dead.clear();
        st.stuck = false;
        st.epoch += 1;
    }
    rv
}

unsafe extern "C" fn C_GetSlotList(
    token_present: CK_BBOOL,
    slots: *mut CK_SLOT_ID,
    count: *mut CK_ULONG,
) -> CK_RV {
    let v = before("C_GetSlotList", Scope::None);
    if let Some(rv) = v.rv {
        return rv;
    }
    if v.pulled && token_present != 0 {
        if count.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        // SAFETY: `count` is the caller's in/out count (non-null, checked above).
        unsafe { count.write(0) };
        return CKR_OK;
    }
    let f = real_fn!(C_GetSlotList);
    // SAFETY: forwarded unchanged to the real C_GetSlotList; the caller upholds its contract.
    unsafe { f(token_present, slots, count) }
}

unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    let v = before("C_GetSlotInfo", Scope::None);
    if let Some(rv) = v.rv {
        return rv;
    }
    let f = real_fn!(C_GetSlotInfo);
    // SAFETY: forwarded unchanged to the real C_GetSlotInfo; the caller upholds its contract.
    let rv = unsafe { f(slot, info) };
    if rv == CKR_OK && v.pulled && !info.is_null() {
        // SAFETY: the real module just filled `*info` (a valid CK_SLOT_INFO the caller owns).
        unsafe { (*info).flags &= !CKF_TOKEN_PRESENT };
    }
    rv
}

unsafe extern "C" fn C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    let v = before("C_GetTokenInfo", Scope::Slot);
    if let Some(rv) = v.rv {
        return rv;
    }
    let f = real_fn!(C_GetTokenInfo);
    // SAFETY: forwarded unchanged to the real C_GetTokenInfo; the caller upholds its contract.
    let rv = unsafe { f(slot, info) };
    if rv == CKR_OK
        && !info.is_null()
        && let Ok(st) = control().state.lock()
    {
        let flags = st.token_flags();
        // SAFETY: the real module just filled `*info` (a valid CK_TOKEN_INFO the caller owns).
        unsafe { (*info).flags |= flags };
        if let Some(max) = st.rw_session_limit() {
            // SAFETY: as above.
            unsafe { (*info).ulMaxRwSessionCount = max };
        }
    }
    if rv == CKR_OK
        && !info.is_null()
        && let Some(max) = control()
            .state
            .lock()
            .ok()
            .and_then(|st| st.advertised_cap())
    {
        // SAFETY: the real module just filled `*info` (a valid CK_TOKEN_INFO the caller owns).
        unsafe {
            (*info).ulMaxSessionCount = max;
            (*info).ulMaxRwSessionCount = max;
        }
    }
    rv
}

unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    app: *mut c_void,
    notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    let v = before("C_OpenSession", Scope::Slot);
    if let Some(rv) = v.rv {
        return rv;
    }
    let f = real_fn!(C_OpenSession);
    // SAFETY: forwarded unchanged to the real C_OpenSession; the caller upholds its contract.
    let rv = unsafe { f(slot, flags, app, notify, session) };
    if control().control.is_some() {
        let mut st = lock(control());
        st.opening = st.opening.saturating_sub(1);
    }
    if rv == CKR_OK && !session.is_null() && control().control.is_some() {
        // SAFETY: on CKR_OK the real module wrote the new handle to the caller's `*session`.
        let h = unsafe { session.read() };
        let mut st = lock(control());
        st.dead.remove(&h);
        if st.epoch == v.epoch {
            st.live.insert(h, slot);
        } else {
            // The token went away while this session was being opened: it went with it.
            st.dead.insert(
                h,
                Dead {
                    slot,
                    open_in_real: true,
                },
            );
        }
    }
    rv
}

unsafe extern "C" fn C_CloseSession(session: CK_SESSION_HANDLE) -> CK_RV {
    let v = before("C_CloseSession", Scope::Session(session));
    if let Some(rv) = v.rv {
        return rv;
    }
    let f = real_fn!(C_CloseSession);
    // SAFETY: forwarded unchanged to the real C_CloseSession; the caller upholds its contract.
    let rv = unsafe { f(session) };
    if rv == CKR_OK && control().control.is_some() {
        lock(control()).live.remove(&session);
    }
    rv
}

unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    let v = before("C_CloseAllSessions", Scope::Slot);
    if let Some(rv) = v.rv {
        return rv;
    }
    let f = real_fn!(C_CloseAllSessions);
    // SAFETY: forwarded unchanged to the real C_CloseAllSessions; the caller upholds its
    // contract.
    let rv = unsafe { f(slot) };
    if rv == CKR_OK && control().control.is_some() {
        let mut st = lock(control());
        st.live.retain(|_, s| *s != slot);
        st.dead.retain(|_, d| d.slot != slot);
    }
    rv
}

forward_none! {
    C_GetInfo(arg1: *mut CK_INFO);
    C_WaitForSlotEvent(arg1: CK_FLAGS, arg2: *mut CK_SLOT_ID, arg3: *mut c_void);
}

forward_slot! {
    C_InitToken(arg1: CK_SLOT_ID, arg2: *mut CK_UTF8CHAR, arg3: CK_ULONG, arg4: *mut CK_UTF8CHAR);
}

forward_session! {
    C_InitPIN(arg1: CK_SESSION_HANDLE, arg2: *mut CK_UTF8CHAR, arg3: CK_ULONG);
    C_SetPIN(arg1: CK_SESSION_HANDLE, arg2: *mut CK_UTF8CHAR, arg3: CK_ULONG, arg4: *mut CK_UTF8CHAR, arg5: CK_ULONG);
    C_GetSessionInfo(arg1: CK_SESSION_HANDLE, arg2: *mut CK_SESSION_INFO);
    C_GetOperationState(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: *mut CK_ULONG);
    C_SetOperationState(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: CK_OBJECT_HANDLE, arg5: CK_OBJECT_HANDLE);
    C_Login(arg1: CK_SESSION_HANDLE, arg2: CK_USER_TYPE, arg3: *mut CK_UTF8CHAR, arg4: CK_ULONG);
    C_Logout(arg1: CK_SESSION_HANDLE);
    C_CreateObject(arg1: CK_SESSION_HANDLE, arg2: *mut CK_ATTRIBUTE, arg3: CK_ULONG, arg4: *mut CK_OBJECT_HANDLE);
    C_CopyObject(arg1: CK_SESSION_HANDLE, arg2: CK_OBJECT_HANDLE, arg3: *mut CK_ATTRIBUTE, arg4: CK_ULONG, arg5: *mut CK_OBJECT_HANDLE);
    C_DestroyObject(arg1: CK_SESSION_HANDLE, arg2: CK_OBJECT_HANDLE);
    C_GetObjectSize(arg1: CK_SESSION_HANDLE, arg2: CK_OBJECT_HANDLE, arg3: *mut CK_ULONG);
    C_GetAttributeValue(arg1: CK_SESSION_HANDLE, arg2: CK_OBJECT_HANDLE, arg3: *mut CK_ATTRIBUTE, arg4: CK_ULONG);
    C_SetAttributeValue(arg1: CK_SESSION_HANDLE, arg2: CK_OBJECT_HANDLE, arg3: *mut CK_ATTRIBUTE, arg4: CK_ULONG);
    C_FindObjectsInit(arg1: CK_SESSION_HANDLE, arg2: *mut CK_ATTRIBUTE, arg3: CK_ULONG);
    C_FindObjects(arg1: CK_SESSION_HANDLE, arg2: *mut CK_OBJECT_HANDLE, arg3: CK_ULONG, arg4: *mut CK_ULONG);
    C_FindObjectsFinal(arg1: CK_SESSION_HANDLE);
    C_EncryptUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
    C_DecryptUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
    C_DigestInit(arg1: CK_SESSION_HANDLE, arg2: *mut CK_MECHANISM);
    C_DigestUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG);
    C_DigestKey(arg1: CK_SESSION_HANDLE, arg2: CK_OBJECT_HANDLE);
    C_SignInit(arg1: CK_SESSION_HANDLE, arg2: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE);
    C_SignUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG);
    C_SignRecoverInit(arg1: CK_SESSION_HANDLE, arg2: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE);
    C_VerifyInit(arg1: CK_SESSION_HANDLE, arg2: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE);
    C_VerifyUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG);
    C_VerifyRecoverInit(arg1: CK_SESSION_HANDLE, arg2: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE);
    C_DigestEncryptUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
    C_DecryptDigestUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
    C_SignEncryptUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
    C_DecryptVerifyUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
    C_GenerateKeyPair(arg1: CK_SESSION_HANDLE, arg2: *mut CK_MECHANISM, arg3: *mut CK_ATTRIBUTE, arg4: CK_ULONG, arg5: *mut CK_ATTRIBUTE, arg6: CK_ULONG, arg7: *mut CK_OBJECT_HANDLE, arg8: *mut CK_OBJECT_HANDLE);
    C_DeriveKey(arg1: CK_SESSION_HANDLE, arg2: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE, arg4: *mut CK_ATTRIBUTE, arg5: CK_ULONG, arg6: *mut CK_OBJECT_HANDLE);
    C_SeedRandom(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG);
    C_GenerateRandom(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG);
    C_GetFunctionStatus(arg1: CK_SESSION_HANDLE);
    C_CancelFunction(arg1: CK_SESSION_HANDLE);
}

forward_session_mech! {
    C_EncryptInit(arg1: CK_SESSION_HANDLE, arg2: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE)
        key Some(arg3);
    C_DecryptInit(arg1: CK_SESSION_HANDLE, arg2: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE)
        key Some(arg3);
    C_GenerateKey(arg1: CK_SESSION_HANDLE, arg2: *mut CK_MECHANISM, arg3: *mut CK_ATTRIBUTE, arg4: CK_ULONG, arg5: *mut CK_OBJECT_HANDLE)
        key None;
    C_WrapKey(arg1: CK_SESSION_HANDLE, arg2: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE, arg4: CK_OBJECT_HANDLE, arg5: *mut CK_BYTE, arg6: *mut CK_ULONG)
        key Some(arg3);
    C_UnwrapKey(arg1: CK_SESSION_HANDLE, arg2: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE, arg4: *mut CK_BYTE, arg5: CK_ULONG, arg6: *mut CK_ATTRIBUTE, arg7: CK_ULONG, arg8: *mut CK_OBJECT_HANDLE)
        key Some(arg3);
}

forward_session_ending_op_out! {
    C_Encrypt(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
    C_Decrypt(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
    C_Digest(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
    C_Sign(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
    C_SignRecover(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
    C_VerifyRecover(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
}

forward_session_ending_op_final! {
    C_EncryptFinal(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: *mut CK_ULONG);
    C_DecryptFinal(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: *mut CK_ULONG);
    C_DigestFinal(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: *mut CK_ULONG);
    C_SignFinal(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: *mut CK_ULONG);
}

forward_session_ending_op_in! {
    C_Verify(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: CK_ULONG);
    C_VerifyFinal(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG);
}

static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION {
        major: 2,
        minor: 40,
    },
    C_Initialize: Some(C_Initialize),
    C_Finalize: Some(C_Finalize),
    C_GetInfo: Some(C_GetInfo),
    C_GetFunctionList: Some(C_GetFunctionList),
    C_GetSlotList: Some(C_GetSlotList),
    C_GetSlotInfo: Some(C_GetSlotInfo),
    C_GetTokenInfo: Some(C_GetTokenInfo),
    C_GetMechanismList: Some(C_GetMechanismList),
    C_GetMechanismInfo: Some(C_GetMechanismInfo),
    C_InitToken: Some(C_InitToken),
    C_InitPIN: Some(C_InitPIN),
    C_SetPIN: Some(C_SetPIN),
    C_OpenSession: Some(C_OpenSession),
    C_CloseSession: Some(C_CloseSession),
    C_CloseAllSessions: Some(C_CloseAllSessions),
    C_GetSessionInfo: Some(C_GetSessionInfo),
    C_GetOperationState: Some(C_GetOperationState),
    C_SetOperationState: Some(C_SetOperationState),
    C_Login: Some(C_Login),
    C_Logout: Some(C_Logout),
    C_CreateObject: Some(C_CreateObject),
    C_CopyObject: Some(C_CopyObject),
    C_DestroyObject: Some(C_DestroyObject),
    C_GetObjectSize: Some(C_GetObjectSize),
    C_GetAttributeValue: Some(C_GetAttributeValue),
    C_SetAttributeValue: Some(C_SetAttributeValue),
    C_FindObjectsInit: Some(C_FindObjectsInit),
    C_FindObjects: Some(C_FindObjects),
    C_FindObjectsFinal: Some(C_FindObjectsFinal),
    C_EncryptInit: Some(C_EncryptInit),
    C_Encrypt: Some(C_Encrypt),
    C_EncryptUpdate: Some(C_EncryptUpdate),
    C_EncryptFinal: Some(C_EncryptFinal),
    C_DecryptInit: Some(C_DecryptInit),
    C_Decrypt: Some(C_Decrypt),
    C_DecryptUpdate: Some(C_DecryptUpdate),
    C_DecryptFinal: Some(C_DecryptFinal),
    C_DigestInit: Some(C_DigestInit),
    C_Digest: Some(C_Digest),
    C_DigestUpdate: Some(C_DigestUpdate),
    C_DigestKey: Some(C_DigestKey),
    C_DigestFinal: Some(C_DigestFinal),
    C_SignInit: Some(C_SignInit),
    C_Sign: Some(C_Sign),
    C_SignUpdate: Some(C_SignUpdate),
    C_SignFinal: Some(C_SignFinal),
    C_SignRecoverInit: Some(C_SignRecoverInit),
    C_SignRecover: Some(C_SignRecover),
    C_VerifyInit: Some(C_VerifyInit),
    C_Verify: Some(C_Verify),
    C_VerifyUpdate: Some(C_VerifyUpdate),
    C_VerifyFinal: Some(C_VerifyFinal),
    C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
    C_VerifyRecover: Some(C_VerifyRecover),
    C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
    C_GenerateKey: Some(C_GenerateKey),
    C_GenerateKeyPair: Some(C_GenerateKeyPair),
    C_WrapKey: Some(C_WrapKey),
    C_UnwrapKey: Some(C_UnwrapKey),
    C_DeriveKey: Some(C_DeriveKey),
    C_SeedRandom: Some(C_SeedRandom),
    C_GenerateRandom: Some(C_GenerateRandom),
    C_GetFunctionStatus: Some(C_GetFunctionStatus),
    C_CancelFunction: Some(C_CancelFunction),
    C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
};
