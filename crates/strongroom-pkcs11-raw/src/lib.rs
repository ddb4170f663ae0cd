//! Direct PKCS#11 calls for what `cryptoki` 0.12 cannot express, for strongroom's PKCS#11
//! backend (`strongroom-pkcs11`).
//!
//! `cryptoki` 0.12.1 (the newest release) knows RFC 5649 key wrap only under its PKCS#11 2.40
//! code `CKM_AES_KEY_WRAP_PAD` (0x210A). Tokens that follow PKCS#11 3.0 offer it as
//! `CKM_AES_KEY_WRAP_KWP` (0x210B), a code `cryptoki` drops from `get_mechanism_list` and cannot
//! put in a `Mechanism` (`MechanismType::new_vendor_defined` refuses codes below
//! `CKM_VENDOR_DEFINED`). [`RawModule`] makes exactly those calls, with any mechanism code,
//! through the module's own function list:
//!
//! - [`RawModule::mechanism_list`]: `C_GetMechanismList`, every code the token lists;
//! - [`RawModule::wrap_key`] and [`RawModule::unwrap_key`]: `C_WrapKey` and `C_UnwrapKey` with a
//!   mechanism that takes no parameter (RFC 3394 and RFC 5649 key wrap);
//! - [`RawModule::read_value`]: `C_GetAttributeValue(CKA_VALUE)` into the caller's buffer (a
//!   zeroizing one, for key material: `cryptoki` reads values into buffers it frees unwiped).
//!
//! # Same library, same handles
//!
//! [`RawModule::load`] opens the module path `cryptoki` opened. The dynamic loader hands back
//! the library already loaded in the process (`dlopen` of a loaded path returns the same
//! handle and bumps its reference count), so `C_GetFunctionList` returns the function table of
//! the library `cryptoki` initialized: the sessions and objects of a `cryptoki`
//! [`Session`] are the ones these calls see, and a `C_Finalize`/`C_Initialize` through
//! `cryptoki` applies here too. Nothing here initializes or finalizes the library; the caller
//! does that through `cryptoki`. The library stays loaded while a [`RawModule`] lives.
//!
//! Errors are `cryptoki`'s own ([`cryptoki::error::Error::Pkcs11`] with the return code and the
//! function), so callers classify them exactly like errors of `cryptoki` calls.
//!
//! # Why this crate holds unsafe code
//!
//! Every other crate of the workspace is `#![forbid(unsafe_code)]`: `cryptoki` holds their FFI.
//! Calling a function `cryptoki` does not wrap means calling through the C function table,
//! which is unsafe. That code is kept here, in a few small functions, each `unsafe` block
//! saying why it is sound (`clippy::undocumented_unsafe_blocks` is denied), so that the backend
//! itself stays free of it. (The test-only `strongroom-p11-testkit`, which *is* a PKCS#11
//! module, is the workspace's other crate with unsafe code.)
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::fmt;
use std::path::Path;

use cryptoki::context::Function;
use cryptoki::error::{Error, Result, Rv};
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use cryptoki_sys::{CK_ATTRIBUTE, CK_FUNCTION_LIST, CK_MECHANISM, CK_RV, CK_ULONG, CKA_VALUE};

/// A PKCS#11 mechanism code.
pub use cryptoki_sys::CK_MECHANISM_TYPE;

/// `CKM_AES_KEY_WRAP_PAD`: RFC 5649 key wrap under its PKCS#11 2.40 code.
pub const CKM_AES_KEY_WRAP_PAD: CK_MECHANISM_TYPE = cryptoki_sys::CKM_AES_KEY_WRAP_PAD;
/// `CKM_AES_KEY_WRAP_KWP`: RFC 5649 key wrap under its PKCS#11 3.0 code (the same algorithm).
pub const CKM_AES_KEY_WRAP_KWP: CK_MECHANISM_TYPE = cryptoki_sys::CKM_AES_KEY_WRAP_KWP;

/// A PKCS#11 module's function list, for the calls `cryptoki` cannot make.
pub struct RawModule {
    list: CK_FUNCTION_LIST,
    /// Keeps the library (and so the function table) loaded.
    _lib: libloading::Library,
}

impl fmt::Debug for RawModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawModule").finish_non_exhaustive()
    }
}

fn check(rv: CK_RV, function: Function) -> Result<()> {
    Rv::from(rv).into_result(function)
}

fn ulong(n: usize) -> Result<CK_ULONG> {
    Ok(CK_ULONG::try_from(n)?)
}

fn usize_of(n: CK_ULONG) -> Result<usize> {
    Ok(usize::try_from(n)?)
}

/// A mechanism with no parameter (key wrap: the default IV).
fn mechanism(code: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: code,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    }
}

impl RawModule {
    /// Loads the module at `path` (in practice: finds the one `cryptoki` loaded from the same
    /// path, see the crate docs) and reads its function list.
    ///
    /// # Errors
    /// [`Error::LibraryLoading`] when the library cannot be loaded,
    /// [`Error::MissingSymbol`] when it has no `C_GetFunctionList`, [`Error::Pkcs11`] when that
    /// fails, [`Error::NullFunctionPointer`] when the list is null.
    pub fn load(path: &Path) -> Result<Self> {
        // SAFETY: loading a library runs its initializers. `path` is the PKCS#11 module the
        // caller (strongroom's backend) already loaded through cryptoki, which loads it the same
        // way; loading it again returns the loaded library without running them again.
        let lib = unsafe { libloading::Library::new(path) }.map_err(Error::LibraryLoading)?;
        type GetFunctionList = unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV;
        // SAFETY: every PKCS#11 module exports C_GetFunctionList with this signature (PKCS#11
        // 2.40, section 5.2); the symbol is only used below, while `lib` is alive.
        let get: libloading::Symbol<'_, GetFunctionList> =
            unsafe { lib.get(b"C_GetFunctionList\0") }
                .map_err(|_| Error::MissingSymbol("C_GetFunctionList"))?;
        let mut p: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: `p` is a valid place for the module to store its list pointer.
        let rv = unsafe { get(&raw mut p) };
        check(rv, Function::GetFunctionList)?;
        if p.is_null() {
            return Err(Error::NullFunctionPointer);
        }
        // SAFETY: on CKR_OK the module stored a pointer to its function list, valid while the
        // library is loaded; it is copied out at once. Every module's list (2.x or 3.x) starts
        // with the 2.40 layout read here.
        let list = unsafe { p.read_unaligned() };
        Ok(Self { list, _lib: lib })
    }

    /// Every mechanism code the token in `slot` lists, unknown ones included (`cryptoki`
    /// drops codes it does not know).
    ///
    /// # Errors
    /// The code `C_GetMechanismList` returned.
    pub fn mechanism_list(&self, slot: Slot) -> Result<Vec<CK_MECHANISM_TYPE>> {
        let f = self
            .list
            .C_GetMechanismList
            .ok_or(Error::NullFunctionPointer)?;
        let slot = slot.id();
        let mut n: CK_ULONG = 0;
        // SAFETY: a length query: a null list and a valid place for the count.
        let rv = unsafe { f(slot, std::ptr::null_mut(), &raw mut n) };
        check(rv, Function::GetMechanismList)?;
        let mut codes: Vec<CK_MECHANISM_TYPE> = vec![0; usize_of(n)?];
        // SAFETY: `codes` has room for the `n` entries the module asked for, and `n` says so.
        let rv = unsafe { f(slot, codes.as_mut_ptr(), &raw mut n) };
        check(rv, Function::GetMechanismList)?;
        // The list may have shrunk between the two calls.
        codes.truncate(usize_of(n)?);
        Ok(codes)
    }

    /// `C_WrapKey` of `key` under `wrapping_key` with the parameterless mechanism `code` (e.g.
    /// [`CKM_AES_KEY_WRAP_KWP`]), on `session` (of this module: see the crate docs). The
    /// output is a wrapped key, not secret.
    ///
    /// # Errors
    /// The code `C_WrapKey` returned.
    pub fn wrap_key(
        &self,
        session: &Session,
        code: CK_MECHANISM_TYPE,
        wrapping_key: ObjectHandle,
        key: ObjectHandle,
    ) -> Result<Vec<u8>> {
        let f = self.list.C_WrapKey.ok_or(Error::NullFunctionPointer)?;
        let mut mech = mechanism(code);
        let mut len: CK_ULONG = 0;
        // SAFETY: a length query: `mech` is a valid parameterless mechanism that outlives the
        // call, the output is null and `len` a valid place for the length. Handles are plain
        // numbers: a wrong one is an error code, not undefined behaviour.
        let rv = unsafe {
            f(
                session.handle(),
                &raw mut mech,
                wrapping_key.handle(),
                key.handle(),
                std::ptr::null_mut(),
                &raw mut len,
            )
        };
        check(rv, Function::WrapKey)?;
        let mut out = vec![0u8; usize_of(len)?];
        // SAFETY: as above, with an output buffer writable for the `len` bytes `len` says.
        let rv = unsafe {
            f(
                session.handle(),
                &raw mut mech,
                wrapping_key.handle(),
                key.handle(),
                out.as_mut_ptr(),
                &raw mut len,
            )
        };
        check(rv, Function::WrapKey)?;
        out.truncate(usize_of(len)?);
        Ok(out)
    }

    /// `C_UnwrapKey` of `wrapped` under `unwrapping_key` with the parameterless mechanism
    /// `code`, making an object from `template`, on `session` (of this module). Returns the new
    /// object's handle (in `session`'s library, so `cryptoki` can destroy it).
    ///
    /// # Errors
    /// The code `C_UnwrapKey` returned.
    pub fn unwrap_key(
        &self,
        session: &Session,
        code: CK_MECHANISM_TYPE,
        unwrapping_key: ObjectHandle,
        wrapped: &[u8],
        template: &[Attribute],
    ) -> Result<ObjectHandle> {
        let f = self.list.C_UnwrapKey.ok_or(Error::NullFunctionPointer)?;
        let mut mech = mechanism(code);
        // `cryptoki`'s own conversion: each CK_ATTRIBUTE points into `template`, which the
        // caller keeps borrowed (so alive and unchanged) until this function returns.
        let mut attrs: Vec<CK_ATTRIBUTE> = template.iter().map(Into::into).collect();
        let (wrapped_len, attrs_len) = (ulong(wrapped.len())?, ulong(attrs.len())?);
        let mut handle = 0;
        // SAFETY: `mech` outlives the call; `wrapped` is readable for its length (the module
        // does not write it: PKCS#11 2.40 omits the const); `attrs` holds `attrs.len()` valid
        // attributes whose values live in `template` (see above); `handle` is a valid place for
        // the new handle.
        let rv = unsafe {
            f(
                session.handle(),
                &raw mut mech,
                unwrapping_key.handle(),
                wrapped.as_ptr().cast_mut(),
                wrapped_len,
                attrs.as_mut_ptr(),
                attrs_len,
                &raw mut handle,
            )
        };
        check(rv, Function::UnwrapKey)?;
        // SAFETY: `handle` is the object this module's C_UnwrapKey just made in the caller's
        // session: a real object of the library the caller's cryptoki context uses.
        Ok(unsafe { ObjectHandle::new_from_raw(handle) })
    }

    /// Reads `object`'s `CKA_VALUE` into `out` (pass a zeroizing buffer for key material) and
    /// returns its length. The value must fit: a longer one is `CKR_BUFFER_TOO_SMALL`.
    ///
    /// # Errors
    /// The code `C_GetAttributeValue` returned.
    pub fn read_value(
        &self,
        session: &Session,
        object: ObjectHandle,
        out: &mut [u8],
    ) -> Result<usize> {
        let f = self
            .list
            .C_GetAttributeValue
            .ok_or(Error::NullFunctionPointer)?;
        let mut attr = CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: out.as_mut_ptr().cast(),
            ulValueLen: ulong(out.len())?,
        };
        // SAFETY: one attribute, whose value pointer is writable for `ulValueLen` bytes (`out`,
        // borrowed mutably for the call). A module writes at most that many bytes and reports
        // CKR_BUFFER_TOO_SMALL for a longer value.
        let rv = unsafe { f(session.handle(), object.handle(), &raw mut attr, 1) };
        check(rv, Function::GetAttributeValue)?;
        let len = usize_of(attr.ulValueLen)?;
        if len > out.len() {
            // Not possible on CKR_OK by the standard; never trust it with a slice bound.
            return Err(Error::InvalidValue);
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_kwp_codes_are_the_standards() {
        assert_eq!(CKM_AES_KEY_WRAP_PAD, 0x210A);
        assert_eq!(CKM_AES_KEY_WRAP_KWP, 0x210B);
    }

    #[test]
    fn a_missing_library_is_a_loading_error() {
        let e = RawModule::load(Path::new("/nonexistent/libnothing.so")).unwrap_err();
        assert!(matches!(e, Error::LibraryLoading(_)), "{e}");
    }

    #[test]
    fn codes_become_cryptoki_errors() {
        let e = check(cryptoki_sys::CKR_MECHANISM_INVALID, Function::WrapKey).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Pkcs11(
                    cryptoki::error::RvError::MechanismInvalid,
                    Function::WrapKey
                )
            ),
            "{e}"
        );
        assert!(check(cryptoki_sys::CKR_OK, Function::WrapKey).is_ok());
    }
}
