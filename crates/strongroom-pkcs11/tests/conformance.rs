//! The backend conformance suite against the PKCS#11 backend on a real SoftHSM2 token, each case
//! in its own process with its own token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use strongroom_core::Backend;
use strongroom_pkcs11::{PinSource, Pkcs11Backend, Pkcs11Config, TokenSelector};
use strongroom_test_support::softhsm::Token;
use strongroom_test_support::{BackendFixture, backend_conformance_tests};

struct Fixture(Pkcs11Backend);

impl BackendFixture for Fixture {
    fn backend(&self) -> &dyn Backend {
        &self.0
    }
}

fn fixture(token: &Token) -> Fixture {
    let config = Pkcs11Config::new(
        &token.module,
        TokenSelector::Label(token.label.clone()),
        PinSource::File(token.pin_file()),
    );
    Fixture(Pkcs11Backend::open(config).expect("open the PKCS#11 backend"))
}

backend_conformance_tests!(isolated fixture);
