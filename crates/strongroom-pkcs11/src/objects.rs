//! How strongroom's objects look in the token: labels, ids, templates and root records.
//!
//! # Label and ID scheme
//! ```text
//! object                         CKA_CLASS    CKA_LABEL              CKA_ID (bytes)
//! root key version               SECRET_KEY   <ns>/<name>/v<N>       <ns>/<name>/v<N>
//! root record (one per version)  DATA         <ns>/<name>/v<N>       -      CKA_APPLICATION "strongroom"
//! BYOK import key pair           PRIVATE_KEY, <ns>/import            <ns>/import
//!                                PUBLIC_KEY
//! temporary objects              SECRET_KEY   <ns>/tmp/<hex>         -      session objects only
//! store claim                    DATA         <ns>/store             -      CKA_APPLICATION "strongroom-store"
//! audit anchor (a fleet's)       DATA         <ns>/anchor            -      CKA_APPLICATION "strongroom-anchor"
//! ```
//! so `pkcs11-tool --list-objects --login` shows each root version under a readable name.
//! `<ns>` is the backend's namespace ([`crate::Pkcs11Config::namespace`], `strongroom` by
//! default; `strongroom init` gives each store its own): stores that share a token never see,
//! adopt or destroy each other's objects, and the namespace is part of the backend's instance
//! id, so a store opened with another namespace is refused instead of finding no keys.
//! Root keys are token objects with `CKA_PRIVATE`, `CKA_SENSITIVE` true and `CKA_EXTRACTABLE`
//! false, permitted only the operations their mechanism needs (`CKA_ENCRYPT`/`CKA_DECRYPT` for
//! AES-GCM, `CKA_WRAP`/`CKA_UNWRAP` for AES-KW/KWP) and, where the token allows it, only that
//! mechanism (`CKA_ALLOWED_MECHANISMS`).
//!
//! # Root records
//! A private data object per root version records what strongroom knows that the key object
//! cannot say: where the key is (strongroom's own, or adopted under another label or id),
//! whether strongroom disabled it (and which usage flags to restore), and whether it was
//! destroyed. This is how "disabled by strongroom" is told from "disabled outside strongroom",
//! and "destroyed" from "deleted outside strongroom". Its value is one line of text, e.g.
//! ```text
//! strongroom-root v1; seq=1; state=enabled; key=managed
//! strongroom-root v1; seq=2; state=disabled(encrypt,decrypt); key=label:customer key 2026
//! strongroom-root v1; seq=3; state=destroyed; key=id:0a1b2c
//! ```
//! `key` comes last so that an adopted label may contain anything.
//!
//! A record is never modified in place (SoftHSM2 quirk: `CKA_VALUE` of a data object is
//! read-only there, as the standard allows). A change creates a new record with the next `seq`
//! and then destroys the old ones; readers take the highest `seq`, so a crash between the two
//! steps leaves the new state in force and the next change removes the leftover.

use std::fmt;

use strongroom_core::{RootKeyId, RootKeyName, RootVersion};

/// `CKA_APPLICATION` of strongroom's data objects.
pub(crate) const APPLICATION: &[u8] = b"strongroom";
/// `CKA_APPLICATION` of the store claim (not a root record).
pub(crate) const CLAIM_APPLICATION: &[u8] = b"strongroom-store";
/// `CKA_APPLICATION` of the audit anchor.
pub(crate) const ANCHOR_APPLICATION: &[u8] = b"strongroom-anchor";
/// Longest audit anchor kept (the store's are 73 bytes).
pub(crate) const MAX_ANCHOR_LEN: usize = 1024;
const CLAIM_MAGIC: &str = "strongroom-store v1";
/// Longest location a claim keeps.
const MAX_CLAIM_LOCATION: usize = 4096;

/// The store claim of a namespace (a private data object `<ns>/store`): which store the
/// namespace's keys belong to, so that a second store is never created on them. One line of
/// text: `strongroom-store v1; id=<32 hex>; at=<location>` (`at` last: a path may hold
/// anything but a line break).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRecord {
    /// The store's id.
    pub store_id: [u8; 16],
    /// Where the store was created.
    pub location: String,
}

impl ClaimRecord {
    /// Serializes.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let id: String = self.store_id.iter().map(|b| format!("{b:02x}")).collect();
        format!("{CLAIM_MAGIC}; id={id}; at={}", self.location).into_bytes()
    }

    /// Parses, strictly.
    ///
    /// # Errors
    /// What is wrong, in words.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
        let rest = text
            .strip_prefix(CLAIM_MAGIC)
            .and_then(|r| r.strip_prefix("; id="))
            .ok_or("not a strongroom store claim")?;
        let (id, location) = rest.split_once("; at=").ok_or("no location")?;
        if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err("the store id is not 32 lowercase hex digits".into());
        }
        let mut store_id = [0u8; 16];
        for (i, b) in store_id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&id[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        if location.len() > MAX_CLAIM_LOCATION || location.contains(['\n', '\r']) {
            return Err("the location is too long or spans lines".into());
        }
        Ok(Self {
            store_id,
            location: location.to_owned(),
        })
    }
}
const RECORD_MAGIC: &str = "strongroom-root v1";
/// The namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "strongroom";
const MAX_NAMESPACE_LEN: usize = 64;

/// The labels of one namespace: every label strongroom gives an object starts with
/// `<namespace>/`, so that stores sharing a token (each with its own namespace) never see, adopt
/// or destroy each other's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Labels {
    ns: String,
}

/// Checks a namespace ([`crate::Pkcs11Config::namespace`]): 1 to 64 characters, letters,
/// digits, `.`, `_`, `-`, starting with a letter or digit (no `/`, so one namespace's labels
/// never start with another's).
///
/// # Errors
/// What is wrong with it, in words.
pub fn check_namespace(namespace: &str) -> Result<(), String> {
    if namespace.is_empty() || namespace.len() > MAX_NAMESPACE_LEN {
        return Err(format!(
            "the PKCS#11 namespace must be 1 to {MAX_NAMESPACE_LEN} characters long"
        ));
    }
    if !namespace.as_bytes()[0].is_ascii_alphanumeric()
        || !namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "the PKCS#11 namespace {namespace:?} may hold only letters, digits, '.', '_' and '-', and must start with a letter or digit"
        ));
    }
    Ok(())
}

impl Labels {
    /// The labels of `namespace`, checked by [`check_namespace`].
    pub(crate) fn new(namespace: &str) -> Result<Self, String> {
        check_namespace(namespace)?;
        Ok(Self {
            ns: namespace.to_owned(),
        })
    }

    /// The namespace.
    pub(crate) fn namespace(&self) -> &str {
        &self.ns
    }

    /// The label (and ID) of a root key version.
    pub(crate) fn root(&self, id: &RootKeyId) -> String {
        format!("{}/{}/{}", self.ns, id.name, id.version)
    }

    /// The root key version a label names, if it follows the scheme in this namespace.
    pub(crate) fn parse_root(&self, label: &str) -> Option<RootKeyId> {
        let rest = label.strip_prefix(self.ns.as_str())?.strip_prefix('/')?;
        let (name, v) = rest.rsplit_once('/')?;
        let v = v.strip_prefix('v')?.parse::<u32>().ok()?;
        Some(RootKeyId::new(
            RootKeyName::new(name).ok()?,
            RootVersion::new(v).ok()?,
        ))
    }

    /// The label (and ID) of the BYOK import key pair.
    pub(crate) fn import(&self) -> String {
        format!("{}/import", self.ns)
    }

    /// The label of the namespace's store claim.
    pub(crate) fn store(&self) -> String {
        format!("{}/store", self.ns)
    }

    /// The label of the store's audit anchor.
    pub(crate) fn anchor(&self) -> String {
        format!("{}/anchor", self.ns)
    }

    /// A fresh label for a temporary session object.
    pub(crate) fn tmp(&self) -> Vec<u8> {
        let mut r = [0u8; 8];
        // A failure here only makes the label less unique: a temporary object is a session
        // object, and strays are found by their exact label.
        let _ = strongroom_core::rng::fill_nonce(&mut r);
        let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}/tmp/{hex}", self.ns).into_bytes()
    }
}

/// Key usage flags strongroom turns off to disable a key and on again to enable it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// `CKA_ENCRYPT`.
    pub encrypt: bool,
    /// `CKA_DECRYPT`.
    pub decrypt: bool,
    /// `CKA_WRAP`.
    pub wrap: bool,
    /// `CKA_UNWRAP`.
    pub unwrap: bool,
}

impl Usage {
    /// No usage at all.
    #[must_use]
    pub fn none(self) -> bool {
        !(self.encrypt || self.decrypt || self.wrap || self.unwrap)
    }

    /// Whether this usage includes every flag `need` sets.
    #[must_use]
    pub fn permits(self, need: Usage) -> bool {
        (!need.encrypt || self.encrypt)
            && (!need.decrypt || self.decrypt)
            && (!need.wrap || self.wrap)
            && (!need.unwrap || self.unwrap)
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.encrypt, "encrypt"),
            (self.decrypt, "decrypt"),
            (self.wrap, "wrap"),
            (self.unwrap, "unwrap"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect();
        f.write_str(&names.join(","))
    }
}

/// Where a root version's key object is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyLocator {
    /// strongroom's own key, labelled by the scheme above.
    Managed,
    /// An adopted key, by its label.
    Label(String),
    /// An adopted key, by its `CKA_ID`.
    Id(Vec<u8>),
}

impl KeyLocator {
    /// Parses an operator's selector: `id:<hex>`, `label:<label>`, or a bare label.
    /// Parses an operator's selector.
    ///
    /// # Errors
    /// What is wrong, in words.
    pub fn from_selector(selector: &str) -> Result<Self, String> {
        if let Some(h) = selector.strip_prefix("id:") {
            let bytes = decode_hex(h).ok_or_else(|| format!("{h:?} is not hex"))?;
            if bytes.is_empty() {
                return Err("the id is empty".into());
            }
            Ok(Self::Id(bytes))
        } else {
            let l = selector.strip_prefix("label:").unwrap_or(selector);
            if l.is_empty() {
                return Err("the label is empty".into());
            }
            Ok(Self::Label(l.to_owned()))
        }
    }
}

impl fmt::Display for KeyLocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Managed => f.write_str("managed"),
            Self::Label(l) => write!(f, "label:{l}"),
            Self::Id(id) => write!(f, "id:{}", encode_hex(id)),
        }
    }
}

/// The state a root record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordState {
    /// In use.
    Enabled,
    /// Disabled by strongroom; `restore` is what enabling turns back on.
    Disabled {
        /// Usage flags to turn back on.
        restore: Usage,
    },
    /// Destroyed.
    Destroyed,
}

/// A root record (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootRecord {
    /// Sequence number: the record with the highest one is in force.
    pub seq: u64,
    /// The state.
    pub state: RecordState,
    /// Where the key is.
    pub key: KeyLocator,
}

impl RootRecord {
    /// Serializes (one line of text).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let state = match self.state {
            RecordState::Enabled => "enabled".to_owned(),
            RecordState::Disabled { restore } => format!("disabled({restore})"),
            RecordState::Destroyed => "destroyed".to_owned(),
        };
        format!(
            "{RECORD_MAGIC}; seq={}; state={state}; key={}",
            self.seq, self.key
        )
        .into_bytes()
    }

    /// Parses.
    ///
    /// # Errors
    /// What is wrong, in words.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let s = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
        let mut parts = s.splitn(4, "; ");
        if parts.next() != Some(RECORD_MAGIC) {
            return Err(format!("does not start with {RECORD_MAGIC:?}"));
        }
        let seq = parts
            .next()
            .and_then(|p| p.strip_prefix("seq="))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or("no sequence number")?;
        let state = parts
            .next()
            .and_then(|p| p.strip_prefix("state="))
            .ok_or("no state")?;
        let state = match state {
            "enabled" => RecordState::Enabled,
            "destroyed" => RecordState::Destroyed,
            other => {
                let inner = other
                    .strip_prefix("disabled(")
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| format!("unknown state {other:?}"))?;
                let mut restore = Usage::default();
                for flag in inner.split(',').filter(|f| !f.is_empty()) {
                    match flag {
                        "encrypt" => restore.encrypt = true,
                        "decrypt" => restore.decrypt = true,
                        "wrap" => restore.wrap = true,
                        "unwrap" => restore.unwrap = true,
                        f => return Err(format!("unknown usage flag {f:?}")),
                    }
                }
                RecordState::Disabled { restore }
            }
        };
        let key = parts
            .next()
            .and_then(|p| p.strip_prefix("key="))
            .ok_or("no key")?;
        let key = match key {
            "managed" => KeyLocator::Managed,
            k if k.starts_with("label:") || k.starts_with("id:") => KeyLocator::from_selector(k)?,
            other => return Err(format!("unknown key locator {other:?}")),
        };
        Ok(Self { seq, state, key })
    }
}

pub(crate) fn encode_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn store_claims_round_trip_and_are_strict() {
        let c = ClaimRecord {
            store_id: [0xab; 16],
            location: "/srv/data; at=odd".into(),
        };
        let b = c.to_bytes();
        assert_eq!(
            std::str::from_utf8(&b).unwrap(),
            "strongroom-store v1; id=abababababababababababababababab; at=/srv/data; at=odd"
        );
        assert_eq!(ClaimRecord::parse(&b), Ok(c));
        for bad in [
            &b"strongroom-store v1; id=ABABABABABABABABABABABABABABABAB; at=/x"[..],
            b"strongroom-store v1; id=abab; at=/x",
            b"strongroom-store v1; id=abababababababababababababababab; at=/x\n",
            b"strongroom-root v1; id=abababababababababababababababab; at=/x",
            b"strongroom-store v1; id=abababababababababababababababab",
        ] {
            assert!(
                ClaimRecord::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    use super::*;

    #[test]
    fn labels_round_trip_within_their_namespace_only() {
        let id = RootKeyId::new(
            RootKeyName::new("acme.eu-1").unwrap(),
            RootVersion::new(12).unwrap(),
        );
        let l = Labels::new(DEFAULT_NAMESPACE).unwrap();
        assert_eq!(l.root(&id), "strongroom/acme.eu-1/v12");
        assert_eq!(l.parse_root(&l.root(&id)), Some(id.clone()));
        for bad in [
            "strongroom/acme",
            "strongroom/acme/v0",
            "other/acme/v1",
            "strongroom//v1",
            "strongroom/tmp/ab",
            "strongroom/import",
            "strongroomx/acme/v1",
            "strongroom-b/acme/v1",
        ] {
            assert_eq!(l.parse_root(bad), None, "{bad}");
        }
        assert!(l.tmp().starts_with(b"strongroom/tmp/"));
        assert_ne!(l.tmp(), l.tmp());
        assert_eq!(l.import(), "strongroom/import");

        let b = Labels::new("strongroom-b").unwrap();
        assert_eq!(b.root(&id), "strongroom-b/acme.eu-1/v12");
        assert_eq!(b.parse_root(&l.root(&id)), None, "another namespace's key");
        assert_eq!(l.parse_root(&b.root(&id)), None, "another namespace's key");
        assert_eq!(b.import(), "strongroom-b/import");
    }

    #[test]
    fn namespaces_are_checked() {
        for ok in ["strongroom", "strongroom-3f9a01bc", "a", "A.b_c-1"] {
            assert!(Labels::new(ok).is_ok(), "{ok}");
        }
        let long = "n".repeat(65);
        for bad in ["", "a/b", "-a", ".a", "a b", "ä", long.as_str()] {
            assert!(Labels::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn records_round_trip() {
        for r in [
            RootRecord {
                seq: 1,
                state: RecordState::Enabled,
                key: KeyLocator::Managed,
            },
            RootRecord {
                seq: 2,
                state: RecordState::Disabled {
                    restore: Usage {
                        encrypt: true,
                        decrypt: true,
                        ..Usage::default()
                    },
                },
                key: KeyLocator::Label("customer key; 2026".into()),
            },
            RootRecord {
                seq: 3,
                state: RecordState::Disabled {
                    restore: Usage::default(),
                },
                key: KeyLocator::Managed,
            },
            RootRecord {
                seq: u64::MAX,
                state: RecordState::Destroyed,
                key: KeyLocator::Id(vec![0x0a, 0x1b]),
            },
        ] {
            let b = r.to_bytes();
            assert_eq!(
                RootRecord::parse(&b).unwrap(),
                r,
                "{}",
                String::from_utf8_lossy(&b)
            );
        }
        assert_eq!(
            String::from_utf8(
                RootRecord {
                    seq: 7,
                    state: RecordState::Enabled,
                    key: KeyLocator::Managed
                }
                .to_bytes()
            )
            .unwrap(),
            "strongroom-root v1; seq=7; state=enabled; key=managed"
        );
        for bad in [
            &b""[..],
            b"strongroom-root v2; seq=1; state=enabled; key=managed",
            b"strongroom-root v1; seq=1; state=on; key=managed",
            b"strongroom-root v1; seq=1; state=enabled",
            b"strongroom-root v1; seq=1; state=disabled(fly); key=managed",
            b"strongroom-root v1; seq=1; state=enabled; key=id:zz",
            b"strongroom-root v1; state=enabled; key=managed",
            b"strongroom-root v1; seq=-1; state=enabled; key=managed",
            b"\xff",
        ] {
            assert!(
                RootRecord::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn selectors() {
        assert_eq!(
            KeyLocator::from_selector("id:0A1b").unwrap(),
            KeyLocator::Id(vec![0x0a, 0x1b])
        );
        assert_eq!(
            KeyLocator::from_selector("label:x").unwrap(),
            KeyLocator::Label("x".into())
        );
        assert_eq!(
            KeyLocator::from_selector("plain").unwrap(),
            KeyLocator::Label("plain".into())
        );
        assert!(KeyLocator::from_selector("id:").is_err());
        assert!(KeyLocator::from_selector("id:abc").is_err());
        assert!(KeyLocator::from_selector("").is_err());
    }
}
