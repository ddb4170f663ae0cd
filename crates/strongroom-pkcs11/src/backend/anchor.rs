//! The audit anchor of a fleet: the store's last audit head, kept in the token where whoever can
//! write the store's database cannot rewrite it (see [`strongroom_core::Backend::audit_anchors`]).
//!
//! One private data object per anchor value, labelled `<ns>/anchor`. A new anchor is a new
//! object, and the objects it supersedes are removed after it exists (as root records are
//! replaced, not changed): a crash in between leaves both, and the store takes the newest that
//! verifies. The value is opaque here (the store MACs it under its audit key).

use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use strongroom_core::BackendError;

use super::{OpError, Pkcs11Backend, lock};
use crate::objects::{ANCHOR_APPLICATION, MAX_ANCHOR_LEN};

impl Pkcs11Backend {
    fn anchor_template(&self) -> Vec<Attribute> {
        vec![
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(ANCHOR_APPLICATION.to_vec()),
            Attribute::Label(self.inner.labels.anchor().into_bytes()),
        ]
    }

    /// Every anchor object with its value.
    fn anchor_objects(
        &self,
        s: &Session,
    ) -> Result<Vec<(ObjectHandle, Vec<u8>)>, cryptoki::error::Error> {
        let mut out = Vec::new();
        for h in Self::find(s, &self.anchor_template())? {
            out.push((h, Self::data_value(s, h)?));
        }
        Ok(out)
    }

    pub(super) fn read_anchors(&self) -> Result<Vec<Vec<u8>>, BackendError> {
        self.run("read the audit anchor", |_, s, _| {
            let _admin = lock(&self.inner.admin);
            let mut values: Vec<Vec<u8>> = Vec::new();
            for (_, v) in self.anchor_objects(s)? {
                // A value longer than any anchor is not one (the store would refuse it anyway).
                if v.len() <= MAX_ANCHOR_LEN && !values.contains(&v) {
                    values.push(v);
                }
            }
            Ok(values)
        })
    }

    pub(super) fn write_anchor(
        &self,
        anchor: &[u8],
        replacing: &[Vec<u8>],
    ) -> Result<(), BackendError> {
        if anchor.len() > MAX_ANCHOR_LEN {
            return Err(BackendError::Config(format!(
                "an audit anchor of {} bytes (at most {MAX_ANCHOR_LEN})",
                anchor.len()
            )));
        }
        self.run_admin("record the audit anchor", |_, s, _| {
            let _admin = lock(&self.inner.admin);
            let before = self.anchor_objects(s)?;
            // A retry after a lost reply may have made it already: one is enough.
            if !before.iter().any(|(_, v)| v == anchor) {
                let mut t = self.anchor_template();
                t.extend([
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Modifiable(true),
                    Attribute::Value(anchor.to_vec()),
                ]);
                s.create_object(&t)?;
            }
            for (h, v) in before {
                if v != anchor && replacing.contains(&v) {
                    // A leftover is harmless (the newest wins) and goes with the next write.
                    let _ = s.destroy_object(h);
                }
            }
            Ok::<(), OpError>(())
        })
    }
}
