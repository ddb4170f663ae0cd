//! Test-only PKCS#11 tooling for strongroom (unpublished): a fault-injecting PKCS#11 module and
//! raw single-call baselines. This is the one crate of the workspace that holds `unsafe` code:
//! the FFI of a PKCS#11 module itself, and direct calls through a module's function list. Every
//! unsafe block says why it is sound (`clippy::undocumented_unsafe_blocks` is denied).
//!
//! # The fault module
//!
//! The crate builds as a `cdylib`, `libstrongroom_p11_testkit.so` ([`module_path`] finds it).
//! Loaded as a PKCS#11 module, it loads the real module named by `STRONGROOM_FAULT_TARGET`
//! (default `/usr/lib/softhsm/libsofthsm2.so`) on first use and hands out a function list of its
//! own (PKCS#11 2.40; it exports `C_GetFunctionList` and no `C_GetInterface`). Each function
//! checks the fault plan and otherwise forwards its arguments unchanged to the real function.
//!
//! The plan is read from the control file named by `STRONGROOM_FAULT_CONTROL` (unset: no faults,
//! nothing is read). The module stats the file on every call and re-reads it when its inode,
//! size or modification time changes; a missing file means no faults. Tests write it with
//! [`FaultControl::set`] (atomically: a temporary file renamed over it) and
//! [`FaultControl::clear`].
//!
//! ## Control file format
//!
//! Plain text, one rule per line; `#` starts a comment; blank lines are ignored.
//!
//! ```text
//! RULE   := FAULT [on FUNCTION[,FUNCTION...]] [times N]
//! FAULT  := fail CODE                       # return CODE instead of calling
//!         | lose-reply CODE                 # call, then return CODE (the answer is lost)
//!         | token-pulled                    # the token is out of its slot
//!         | stuck-after-device-error        # one CKR_DEVICE_ERROR, then stuck sessions
//!         | latency MILLISECONDSms          # sleep before forwarding, e.g. `latency 20ms`
//!         | session-cap N [advertised]      # C_OpenSession: CKR_SESSION_COUNT beyond N open
//!         | remap CODE CODE                 # personality: the real call's 1st code becomes the 2nd
//!         | hide-mechanism NUM              # personality: left out of C_GetMechanismList
//!         | list-mechanism NUM              # personality: added to C_GetMechanismList
//!         | refuse-mechanism NUM            # personality: *Init/WrapKey/UnwrapKey/GenerateKey
//!                                           #   with it return CKR_MECHANISM_INVALID
//!         | translate-mechanism NUM NUM     # personality: those calls and C_GetMechanismInfo
//!                                           #   with the 1st go to the real module as the 2nd
//!         | token-flags NUM                 # C_GetTokenInfo reports these flags set too
//!         | rw-session-limit NUM            # C_GetTokenInfo reports this ulMaxRwSessionCount
//! CODE   := CKR_NAME | 0xHEX | DECIMAL      # e.g. CKR_DEVICE_ERROR, 0x30, 48
//! NUM    := 0xHEX | DECIMAL                 # e.g. 0x210B (CKM_AES_KEY_WRAP_KWP)
//! ```
//!
//! Token personalities make SoftHSM2 answer like other tokens, for tests that must not depend on
//! SoftHSM2's return codes or mechanism numbers: `remap` changes the code a call returns (a
//! tampered KW/KWP blob or a bad import as `CKR_DEVICE_ERROR`, a bad GCM tag as
//! `CKR_ENCRYPTED_DATA_INVALID`, a deleted object's handle as `CKR_GENERAL_ERROR`; counted as
//! `remap CODE FUNCTION` in the status file); the mechanism rules change what the token lists
//! and accepts (`refuse-mechanism` is counted as `refuse-mechanism`, a translated call as
//! `translate-mechanism`). `times N` limits a remap to N remapped answers.
//!
//! `translate-mechanism FROM TO` makes a code the real module does not know work as one it
//! does: [`FaultPlan::kwp_only_as_0x210b`] is a token that offers RFC 5649 key wrap only as
//! `CKM_AES_KEY_WRAP_KWP` (0x210B), which SoftHSM2 implements only as `CKM_AES_KEY_WRAP_PAD`
//! (0x210A): it lists 0x210B instead of 0x210A, refuses 0x210A, and forwards 0x210B as 0x210A.
//! A translated call under a key whose `CKA_ALLOWED_MECHANISMS` lists other mechanisms but not
//! FROM is refused (`CKR_MECHANISM_INVALID`), as the real token would; templates are not
//! translated (a key made with FROM in `CKA_ALLOWED_MECHANISMS` would not work with TO in
//! SoftHSM2, and `cryptoki` 0.12 cannot put 0x210B in that attribute anyway).
//!
//! - `on` limits a rule to the named functions (`C_Decrypt,C_Encrypt`). Without it, a rule
//!   applies to every call that names a session (`C_Login`, `C_Decrypt`, `C_FindObjects`, ...);
//!   name other functions explicitly (`on C_GetSlotList,C_Initialize`) to fail them.
//! - `times N` injects N times, then the rule is spent; without it a rule holds until the plan
//!   changes. Any change of the file (even rewriting the same text) starts the counts afresh.
//! - A refused call that ends an operation by the standard's rules (`C_Encrypt`, `C_Decrypt`,
//!   `C_Digest`, `C_Sign`, `C_SignRecover`, `C_VerifyRecover`, `C_Verify` and the `...Final`
//!   calls) ends it in the real module too: the module runs it into a scratch buffer, wipes that
//!   and returns the fault, so the session is left as a real device would leave it. (Refused
//!   `...Update` calls leave the operation active; strongroom makes none.)
//! - Rules are tried in order; the first `fail`/`stuck-after-device-error` that applies wins.
//!   Latency rules add up and apply on top of any other fault.
//! - `lose-reply`: the real function runs (and changes the token), then the caller gets CODE,
//!   as when the connection drops after the device committed: what makes a blind retry of
//!   `C_GenerateKey` or `C_CreateObject` leave duplicates. It applies to the functions the
//!   module forwards plainly: not to `C_Initialize`, `C_Finalize`, `C_GetSlotList`,
//!   `C_GetSlotInfo`, `C_GetTokenInfo`, `C_OpenSession`, `C_CloseSession` and
//!   `C_CloseAllSessions`, where it is ignored.
//! - `token-pulled`: while it is in the plan, calls naming a session return
//!   `CKR_DEVICE_REMOVED`, calls naming a slot return `CKR_TOKEN_NOT_PRESENT`
//!   (`C_GetSlotInfo` works but clears `CKF_TOKEN_PRESENT`), and `C_GetSlotList` with
//!   `tokenPresent = TRUE` lists no slot. Every session open at the pull is gone for good: once
//!   the rule is removed ("token back") those sessions return `CKR_SESSION_HANDLE_INVALID`
//!   (the module closes each in the real module the next time its caller touches it), as with a
//!   real HSM; sessions opened after the reinsertion work.
//! - `stuck-after-device-error` (a field failure: after an HSM daemon restart some services see
//!   one `CKR_DEVICE_ERROR`, then `CKR_SESSION_HANDLE_INVALID` forever until restarted): the
//!   first call it applies to (naming a session, or of a listed function) returns
//!   `CKR_DEVICE_ERROR`; from then on every call naming a session, old or new, returns
//!   `CKR_SESSION_HANDLE_INVALID` until the application calls `C_Finalize` (and `C_Initialize`).
//!   `times N` (default 1) is the number of such device errors the rule may cause.
//! - `session-cap N`: `C_OpenSession` returns `CKR_SESSION_COUNT` while N sessions opened through
//!   the module are open. The token keeps reporting its own limit (as when other applications
//!   hold the remaining sessions), unless `advertised`, which reports N as
//!   `ulMaxSessionCount`.
//!
//! ## Status file
//!
//! After every injection the module rewrites `<control>.status` (atomically): `total N`, then
//! one line per kind (`fail`, `lose-reply`, `token-pulled`, `stuck`, `latency`, `session-cap`,
//! `remap`, `refuse-mechanism`, `translate-mechanism`), code (`-` for none) and function, e.g. `fail CKR_DEVICE_ERROR C_Decrypt 12`
//! ([`FaultStatus`] reads it). Counts are per process, since the module was loaded.
//!
//! # Raw baselines
//!
//! [`RawModule`] makes AES-GCM calls straight through a module's function list: `C_DecryptInit`
//! plus one `C_Decrypt` into a pre-sized buffer (and the same for encryption), the fastest way
//! any caller can use the token, against which the benchmark measures cryptoki and strongroom.

pub mod control;
mod module;
pub mod plan;
pub mod raw;

use std::path::PathBuf;

pub use control::{FaultControl, FaultStatus};
pub use module::C_GetFunctionList;
pub use plan::{Fault, FaultPlan, Rule, ckr_name};
pub use raw::{RawError, RawModule};

/// The PKCS#11 types and constants (`cryptoki-sys`, as cryptoki uses them).
pub use cryptoki_sys as sys;

/// The file name of the fault module.
pub const MODULE_FILE: &str = "libstrongroom_p11_testkit.so";

/// The built fault module: `STRONGROOM_FAULT_MODULE` if set, else `libstrongroom_p11_testkit.so`
/// next to the running executable or in the directory above (`target/<profile>/deps/` and
/// `target/<profile>/`, where cargo puts test and bench executables and the cdylib).
///
/// # Panics
/// When it is not there, saying how to build it.
#[must_use]
pub fn module_path() -> PathBuf {
    if let Some(p) = std::env::var_os("STRONGROOM_FAULT_MODULE") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "STRONGROOM_FAULT_MODULE={} does not exist",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(MODULE_FILE);
        if candidate.exists() {
            return candidate;
        }
        tried.push(candidate.display().to_string());
    }
    panic!(
        "the fault-injecting PKCS#11 module {MODULE_FILE} is not built (looked at {}); build it with \
         `cargo build -p strongroom-p11-testkit` (same profile and CARGO_TARGET_DIR as the tests), \
         or depend on strongroom-p11-testkit from the tests' package so cargo builds it first",
        tried.join(", ")
    );
}
