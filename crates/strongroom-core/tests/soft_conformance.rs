//! The backend conformance suite against the embedded soft backend.

use strongroom_test_support::{SoftFixture, backend_conformance_tests};

backend_conformance_tests!(SoftFixture::new());
