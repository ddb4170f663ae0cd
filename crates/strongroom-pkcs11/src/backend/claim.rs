//! The store claim: which store a namespace's keys belong to (see [`ClaimRecord`]).
//!
//! `strongroom init --namespace X` on a token where X already holds another store's keys would
//! otherwise make a second store on the first one's primary root: a `root disable` in one would
//! lock the other out. The store records its claim before it makes its first key, and a second
//! store is refused, naming the first.

use cryptoki::object::{Attribute, ObjectClass};
use strongroom_core::{BackendError, StoreClaim};

use super::{Pkcs11Backend, lock};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
use crate::objects::{CLAIM_APPLICATION, ClaimRecord};

impl Pkcs11Backend {
    fn claim_template(&self) -> Vec<Attribute> {
        vec![
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(CLAIM_APPLICATION.to_vec()),
            Attribute::Label(self.inner.labels.store().into_bytes()),
        ]
    }

    pub(super) fn read_claim(&self) -> Result<Option<StoreClaim>, BackendError> {
        self.run("read which store the keys belong to", |_, s, _| {
            let _admin = lock(&self.inner.admin);
            let mut claims: Vec<ClaimRecord> = Vec::new();
            for h in Self::find(s, &self.claim_template())? {
                let value = Self::data_value(s, h)?;
                let c = ClaimRecord::parse(&value).map_err(|why| {
                    super::OpError::Final(BackendError::Config(format!(
                        "the token's store claim {} is unreadable ({why}); delete that data object if no store uses this namespace",
                        self.inner.labels.store()
                    )))
                })?;
                if !claims.contains(&c) {
                    claims.push(c);
                }
            }
            match claims.as_slice() {
                [] => Ok(None),
                [c] => Ok(Some(StoreClaim {
                    store_id: c.store_id,
                    location: c.location.clone(),
                })),
                _ => Err(super::OpError::Final(BackendError::Config(format!(
                    "the token holds {} different store claims labelled {}: more than one store used this namespace; keep the one of the store that owns its keys (pkcs11-tool --list-objects --login shows them)",
                    claims.len(),
                    self.inner.labels.store()
                )))),
            }
        })
    }

    /// Compare-and-set: writes `claim` only if the claims there are exactly `replacing` (none,
    /// for `None`). Under the admin lock it is atomic within this process; two processes that
    /// both find none may both write one, and then every later read sees two different claims
    /// and refuses (each create reads its claim back after making its first key), so at most
    /// one of them goes on.
    pub(super) fn write_claim(
        &self,
        claim: &StoreClaim,
        replacing: Option<&StoreClaim>,
    ) -> Result<(), BackendError> {
        let record = ClaimRecord {
            store_id: claim.store_id,
            location: claim.location.clone(),
        };
        let expected = replacing.map(|r| ClaimRecord {
            store_id: r.store_id,
            location: r.location.clone(),
        });
        self.run_admin("record which store the keys belong to", |_, s, _| {
            let _admin = lock(&self.inner.admin);
            let old = Self::find(s, &self.claim_template())?;
            for h in &old {
                let value = Self::data_value(s, *h)?;
                let found = ClaimRecord::parse(&value).ok();
                if found.as_ref() != expected.as_ref() && found.as_ref() != Some(&record) {
                    let (store, location) = found.map_or_else(
                        || ("(unreadable)".to_owned(), "?".to_owned()),
                        |c| (hex(&c.store_id), c.location),
                    );
                    return Err(super::OpError::Final(BackendError::ClaimedByAnother {
                        store,
                        location,
                    }));
                }
            }
            if old.is_empty() && expected.is_some() {
                return Err(super::OpError::Final(BackendError::ClaimedByAnother {
                    store: "(none: the claim to replace is gone)".into(),
                    location: "?".into(),
                }));
            }
            let mut t = self.claim_template();
            t.extend([
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Modifiable(true),
                Attribute::Value(record.to_bytes()),
            ]);
            // A retry after a lost reply may have made it already: one equal claim is enough.
            s.create_object(&t)?;
            for h in old {
                // A leftover shows as a second claim at the next read, which names it.
                let _ = s.destroy_object(h);
            }
            Ok(())
        })
    }
}
