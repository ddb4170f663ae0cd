//! Raw single-call AES-GCM through a module's function list: the floor that any wrapper around
//! PKCS#11 (cryptoki, strongroom's backend) is measured against.
//!
//! [`RawModule::load`] opens the same library path cryptoki opened; in one process the dynamic
//! loader hands back the same, already initialized, library, so session and key handles
//! obtained through cryptoki (`Session::handle()`, `ObjectHandle::handle()`) are valid here.

use std::fmt;
use std::path::Path;

use cryptoki_sys::*;

use crate::plan::ckr_name;

/// A PKCS#11 call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawError {
    /// The function, e.g. `C_Decrypt`.
    pub function: &'static str,
    /// What it returned.
    pub rv: CK_RV,
}

impl fmt::Display for RawError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} returned {}", self.function, ckr_name(self.rv))
    }
}

impl std::error::Error for RawError {}

/// A loaded PKCS#11 module's function list.
pub struct RawModule {
    list: CK_FUNCTION_LIST,
    _lib: libloading::Library,
}

impl fmt::Debug for RawModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawModule").finish_non_exhaustive()
    }
}

fn check(function: &'static str, rv: CK_RV) -> Result<(), RawError> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(RawError { function, rv })
    }
}

fn ulong(n: usize) -> CK_ULONG {
    // CK_ULONG is an unsigned long: 64 bits on the 64-bit Unix targets this crate supports.
    CK_ULONG::try_from(n).unwrap_or(CK_ULONG::MAX)
}

impl RawModule {
    /// Loads the module at `path` (a PKCS#11 library already loaded in this process is shared,
    /// not loaded twice) and reads its function list. The caller initializes it (cryptoki did,
    /// for a module it opened).
    ///
    /// # Errors
    /// When the library cannot be loaded or has no usable `C_GetFunctionList`.
    pub fn load(path: &Path) -> Result<Self, String> {
        // SAFETY: loading a library runs its initializers; `path` is a PKCS#11 module the
        // caller chose, loaded as cryptoki loads it (and normally already loaded by cryptoki).
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        type GetFunctionList = unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV;
        // SAFETY: every PKCS#11 module exports C_GetFunctionList with this signature; the
        // symbol is used before `lib` can be dropped.
        let get: libloading::Symbol<'_, GetFunctionList> =
            unsafe { lib.get(b"C_GetFunctionList\0") }
                .map_err(|e| format!("{} has no C_GetFunctionList: {e}", path.display()))?;
        let mut p: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: `p` is a valid place for the module to store its list pointer.
        let rv = unsafe { get(&raw mut p) };
        check("C_GetFunctionList", rv).map_err(|e| e.to_string())?;
        if p.is_null() {
            return Err("C_GetFunctionList returned a null list".into());
        }
        // SAFETY: on CKR_OK the module stored a pointer to its function list, valid while the
        // library is loaded; it is copied out at once. Every list starts with the 2.40 layout.
        let list = unsafe { p.read_unaligned() };
        if list.C_EncryptInit.is_none()
            || list.C_Encrypt.is_none()
            || list.C_DecryptInit.is_none()
            || list.C_Decrypt.is_none()
        {
            return Err("the module lacks C_EncryptInit/C_Encrypt/C_DecryptInit/C_Decrypt".into());
        }
        Ok(Self { list, _lib: lib })
    }

    /// AES-GCM (128-bit tag) decryption as exactly `C_DecryptInit` + one `C_Decrypt` into
    /// `out`, which must hold at least `ciphertext.len()` bytes (the tag included: a token may
    /// ask for that much). Returns the plaintext length.
    ///
    /// `session` must be a logged-in session of this module that no other thread uses during
    /// the call, and `key` an AES key in it that may decrypt.
    ///
    /// # Errors
    /// The first call that failed and its return code.
    pub fn gcm_decrypt(
        &self,
        session: CK_SESSION_HANDLE,
        key: CK_OBJECT_HANDLE,
        iv: &[u8; 12],
        aad: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, RawError> {
        let mut iv = *iv;
        let mut params = gcm_params(&mut iv, aad);
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: (&raw mut params).cast(),
            ulParameterLen: ulong(size_of::<CK_GCM_PARAMS>()),
        };
        let (Some(init), Some(decrypt)) = (self.list.C_DecryptInit, self.list.C_Decrypt) else {
            unreachable!("checked in load")
        };
        // SAFETY: `mech` and the `params`/`iv`/`aad` it points to live until the call returns;
        // the module only reads them (the const-ness PKCS#11 2.40 omits from the signature).
        // `session` and `key` are plain handles; a wrong one is an error code, not UB.
        check("C_DecryptInit", unsafe {
            init(session, &raw mut mech, key)
        })?;
        let mut len = ulong(out.len());
        // SAFETY: `ciphertext` is readable for its length (the module does not write it);
        // `out` is writable for `len` bytes and `len` is a valid in/out length.
        let rv = unsafe {
            decrypt(
                session,
                ciphertext.as_ptr().cast_mut(),
                ulong(ciphertext.len()),
                out.as_mut_ptr(),
                &raw mut len,
            )
        };
        check("C_Decrypt", rv)?;
        Ok(usize::try_from(len).unwrap_or(usize::MAX).min(out.len()))
    }

    /// AES-GCM (128-bit tag) encryption as exactly `C_EncryptInit` + one `C_Encrypt` into
    /// `out`, which must hold at least `plaintext.len() + 16` bytes. Returns the length written
    /// (ciphertext and tag). Same requirements on `session` and `key` as
    /// [`RawModule::gcm_decrypt`].
    ///
    /// # Errors
    /// The first call that failed and its return code.
    pub fn gcm_encrypt(
        &self,
        session: CK_SESSION_HANDLE,
        key: CK_OBJECT_HANDLE,
        iv: &[u8; 12],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, RawError> {
        let mut iv = *iv;
        let mut params = gcm_params(&mut iv, aad);
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: (&raw mut params).cast(),
            ulParameterLen: ulong(size_of::<CK_GCM_PARAMS>()),
        };
        let (Some(init), Some(encrypt)) = (self.list.C_EncryptInit, self.list.C_Encrypt) else {
            unreachable!("checked in load")
        };
        // SAFETY: as in `gcm_decrypt`: the mechanism and its parameters outlive the call and
        // are only read; the handles are plain numbers.
        check("C_EncryptInit", unsafe {
            init(session, &raw mut mech, key)
        })?;
        let mut len = ulong(out.len());
        // SAFETY: `plaintext` is readable for its length (not written); `out` is writable for
        // `len` bytes.
        let rv = unsafe {
            encrypt(
                session,
                plaintext.as_ptr().cast_mut(),
                ulong(plaintext.len()),
                out.as_mut_ptr(),
                &raw mut len,
            )
        };
        check("C_Encrypt", rv)?;
        Ok(usize::try_from(len).unwrap_or(usize::MAX).min(out.len()))
    }
}

fn gcm_params(iv: &mut [u8; 12], aad: &[u8]) -> CK_GCM_PARAMS {
    CK_GCM_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: ulong(iv.len()),
        ulIvBits: ulong(iv.len() * 8),
        pAAD: aad.as_ptr().cast_mut(),
        ulAADLen: ulong(aad.len()),
        ulTagBits: 128,
    }
}
