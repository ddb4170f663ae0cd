//! From `cryptoki` errors to strongroom's [`BackendError`], and which failures are worth a retry.
//!
//! A device error keeps the `cryptoki` error as its source, so the PKCS#11 return code and the
//! function that returned it are never lost.

use cryptoki::error::{Error as CkError, RvError};
use strongroom_core::BackendError;

/// What a failed call says about the connection to the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// This session is gone (closed or invalidated); another session may work.
    SessionLost,
    /// The library, slot or token is gone or failing; re-initialize and log in again.
    DeviceLost,
    /// The session is no longer logged in (someone called `C_Logout`); log in again.
    LoggedOut,
    /// A cached object handle no longer names the object; look it up again.
    StaleHandle,
    /// The token refused the ciphertext; for `CKR_GENERAL_ERROR` a canary decides whether the
    /// data or the device is at fault.
    BadData,
    /// The key may not be used this way (disabled, or restricted outside strongroom).
    NotPermitted,
    /// Anything else: not retried.
    Other,
}

pub(crate) fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

pub(crate) fn classify(e: &CkError) -> Failure {
    match rv(e) {
        Some(RvError::SessionHandleInvalid | RvError::SessionClosed) => Failure::SessionLost,
        Some(
            RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::CryptokiNotInitialized
            | RvError::SlotIdInvalid,
        ) => Failure::DeviceLost,
        Some(RvError::UserNotLoggedIn) => Failure::LoggedOut,
        Some(
            RvError::ObjectHandleInvalid
            | RvError::KeyHandleInvalid
            | RvError::WrappingKeyHandleInvalid
            | RvError::UnwrappingKeyHandleInvalid,
        ) => Failure::StaleHandle,
        Some(
            RvError::GeneralError
            | RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::WrappedKeyInvalid
            | RvError::WrappedKeyLenRange,
        ) => Failure::BadData,
        Some(RvError::KeyFunctionNotPermitted | RvError::KeyTypeInconsistent) => {
            Failure::NotPermitted
        }
        _ => Failure::Other,
    }
}

/// Whether a failed call's code says by itself that the session, the login, the token or the
/// library is gone, whatever the data was: these go to recovery. `CKR_DEVICE_ERROR` and
/// `CKR_GENERAL_ERROR` are not among them: tokens return them for bad input too (see
/// `Pkcs11Backend::failed_unwrap`).
pub(crate) fn connection_lost(e: &CkError) -> bool {
    matches!(
        rv(e),
        Some(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::CryptokiNotInitialized
                | RvError::SlotIdInvalid
        )
    )
}

/// `CKR_...` name of a return code, e.g. `CKR_SESSION_HANDLE_INVALID`.
pub(crate) fn ckr_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A short description of a `cryptoki` error: `C_Decrypt returned CKR_DEVICE_ERROR`.
pub(crate) fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("C_{function:?} returned {}", ckr_name(*rv)),
        other => other.to_string(),
    }
}

/// A [`BackendError::Device`] for `operation`, keeping `e` as the source.
pub(crate) fn device(operation: &'static str, e: CkError, hint: &str) -> BackendError {
    BackendError::Device {
        operation,
        detail: format!("{}; {hint}", describe(&e)),
        source: Some(Box::new(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    #[test]
    fn names_and_classes() {
        assert_eq!(
            ckr_name(RvError::SessionHandleInvalid),
            "CKR_SESSION_HANDLE_INVALID"
        );
        assert_eq!(ckr_name(RvError::GeneralError), "CKR_GENERAL_ERROR");
        let e = CkError::Pkcs11(RvError::DeviceError, Function::Decrypt);
        assert_eq!(describe(&e), "C_Decrypt returned CKR_DEVICE_ERROR");
        assert_eq!(classify(&e), Failure::DeviceLost);
        assert_eq!(
            classify(&CkError::Pkcs11(RvError::SessionClosed, Function::Encrypt)),
            Failure::SessionLost
        );
        assert_eq!(
            classify(&CkError::Pkcs11(
                RvError::UserNotLoggedIn,
                Function::Encrypt
            )),
            Failure::LoggedOut
        );
        assert_eq!(
            classify(&CkError::Pkcs11(
                RvError::KeyHandleInvalid,
                Function::DecryptInit
            )),
            Failure::StaleHandle
        );
        assert_eq!(
            classify(&CkError::Pkcs11(RvError::PinIncorrect, Function::Login)),
            Failure::Other
        );
        let d = device("unwrap", e, "check the HSM");
        assert!(d.to_string().contains("CKR_DEVICE_ERROR"), "{d}");
        assert!(std::error::Error::source(&d).is_some());
    }
}
