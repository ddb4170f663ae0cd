//! Refused PINs remembered across processes.
//!
//! The token counts wrong PINs across every process that uses it, and locks the PIN after a few
//! (often 3 to 10; SoftHSM2 has no limit). A backend never tries a refused PIN again within one
//! process; this file makes the next process (the next CLI call, cron run or service restart)
//! hold back too, until the PIN it is given changes.
//!
//! The file ([`crate::Pkcs11Config::pin_state`], e.g. in the store's data directory) holds one
//! line per token serial that refused a PIN:
//! ```text
//! strongroom-pin-state v1
//! <serial, hex> <salt, hex> <fingerprint, hex> <wrong|locked|expired>
//! ```
//! The fingerprint is PBKDF2-HMAC-SHA256 (20,000 iterations) of the PIN under a random salt and
//! the serial: never the PIN. A short PIN can still be guessed from it offline by someone who can
//! read the file, which is why it is created with mode 0600 and lives next to the store. A
//! successful login removes the token's line.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use strongroom_core::{BackendError, LoginFailure, rng};
use subtle::ConstantTimeEq;

const MAGIC: &str = "strongroom-pin-state v1";
const ITERATIONS: u32 = 20_000;

/// The refused-PIN state file.
#[derive(Clone, Debug)]
pub(crate) struct PinState {
    path: PathBuf,
}

struct Line {
    serial: String,
    salt: Vec<u8>,
    fingerprint: Vec<u8>,
    reason: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// PBKDF2-HMAC-SHA256, one block, of the PIN, salted with `salt` and the token serial.
fn fingerprint(salt: &[u8], serial: &str, pin: &SecretString) -> [u8; 32] {
    let mac = || {
        // Any key length is valid for HMAC.
        <Hmac<Sha256> as KeyInit>::new_from_slice(pin.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
    };
    let mut m = mac();
    m.update(salt);
    m.update(serial.as_bytes());
    m.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = m.finalize().into_bytes().into();
    let mut t = u;
    for _ in 1..ITERATIONS {
        let mut m = mac();
        m.update(&u);
        u = m.finalize().into_bytes().into();
        for (a, b) in t.iter_mut().zip(u.iter()) {
            *a ^= b;
        }
    }
    t
}

impl PinState {
    pub(crate) fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<Vec<Line>, BackendError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(BackendError::io(
                    "read the refused-PIN state",
                    &self.path,
                    e,
                ));
            }
        };
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(BackendError::Config(format!(
                "{} is not a strongroom refused-PIN state file; remove it",
                self.path.display()
            )));
        }
        Ok(lines
            .filter_map(|l| {
                let w: Vec<&str> = l.split(' ').collect();
                match w.as_slice() {
                    [serial, salt, fp, reason] => Some(Line {
                        serial: String::from_utf8(unhex(serial)?).ok()?,
                        salt: unhex(salt)?,
                        fingerprint: unhex(fp)?,
                        reason: (*reason).to_owned(),
                    }),
                    _ => None,
                }
            })
            .collect())
    }

    fn write(&self, lines: &[Line]) -> Result<(), BackendError> {
        let mut text = format!("{MAGIC}\n");
        for l in lines {
            let _ = writeln!(
                text,
                "{} {} {} {}",
                hex(l.serial.as_bytes()),
                hex(&l.salt),
                hex(&l.fingerprint),
                l.reason
            );
        }
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let io = |e| BackendError::io("write the refused-PIN state", &self.path, e);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }

    /// Why the token with `serial` refused `pin` before, if it did.
    pub(crate) fn refused(
        &self,
        serial: &str,
        pin: &SecretString,
    ) -> Result<Option<LoginFailure>, BackendError> {
        for l in self.read()? {
            if l.serial == serial
                && bool::from(fingerprint(&l.salt, serial, pin).ct_eq(&l.fingerprint[..]))
            {
                return Ok(Some(match l.reason.as_str() {
                    "locked" => LoginFailure::PinLocked,
                    "expired" => LoginFailure::PinExpired,
                    _ => LoginFailure::WrongPin,
                }));
            }
        }
        Ok(None)
    }

    /// Remembers that the token with `serial` refused `pin` (replacing what was there for it).
    pub(crate) fn record(
        &self,
        serial: &str,
        pin: &SecretString,
        why: &LoginFailure,
    ) -> Result<(), BackendError> {
        let mut lines = self.read().unwrap_or_default();
        lines.retain(|l| l.serial != serial);
        let mut salt = [0u8; 16];
        rng::fill_nonce(&mut salt).map_err(|e| {
            BackendError::Config(format!("no randomness for the refused-PIN state: {e}"))
        })?;
        lines.push(Line {
            serial: serial.to_owned(),
            salt: salt.to_vec(),
            fingerprint: fingerprint(&salt, serial, pin).to_vec(),
            reason: match why {
                LoginFailure::PinLocked => "locked",
                LoginFailure::PinExpired => "expired",
                _ => "wrong",
            }
            .to_owned(),
        });
        self.write(&lines)
    }

    /// Forgets the token with `serial` (its PIN was accepted).
    pub(crate) fn clear(&self, serial: &str) -> Result<(), BackendError> {
        let lines = self.read()?;
        if lines.iter().any(|l| l.serial == serial) {
            let rest: Vec<Line> = lines.into_iter().filter(|l| l.serial != serial).collect();
            self.write(&rest)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_a_refused_pin_by_fingerprint_only() {
        let dir = tempfile::tempdir().unwrap();
        let st = PinState::new(dir.path().join("pins"));
        let wrong = SecretString::from("wrong-1234".to_owned());
        let right = SecretString::from("right-5678".to_owned());
        assert!(st.refused("SER1", &wrong).unwrap().is_none());
        st.record("SER1", &wrong, &LoginFailure::WrongPin).unwrap();
        assert!(matches!(
            st.refused("SER1", &wrong).unwrap(),
            Some(LoginFailure::WrongPin)
        ));
        assert!(
            st.refused("SER1", &right).unwrap().is_none(),
            "another PIN is tried"
        );
        assert!(
            st.refused("SER2", &wrong).unwrap().is_none(),
            "another token is tried"
        );
        let text = std::fs::read_to_string(st.path()).unwrap();
        assert!(
            !text.contains("wrong-1234") && !text.contains(&hex(b"wrong-1234")),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(st.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        st.clear("SER1").unwrap();
        assert!(st.refused("SER1", &wrong).unwrap().is_none());
    }
}
