//! Test support for strongroom (unpublished): the backend conformance suite and fixtures.
//!
//! A new backend proves itself by passing [`conformance`]: one line per backend,
//! `strongroom_test_support::backend_conformance_tests!(make_fixture());`, where the fixture owns
//! whatever the backend needs (a temp dir, a SoftHSM2 token) and hands out the backend.
#![forbid(unsafe_code)]
// Tests and their helpers may panic on a broken invariant: that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bench;
pub mod conformance;
pub mod disk;
pub mod pg;
pub mod softhsm;
pub mod wrappers;

use std::path::Path;

use strongroom_core::{Backend, SoftBackend};

/// Something that owns a backend and whatever it needs to live (temp dirs, tokens).
pub trait BackendFixture {
    /// The backend under test.
    fn backend(&self) -> &dyn Backend;
}

/// A soft backend in its own temporary directory.
pub struct SoftFixture {
    backend: SoftBackend,
    dir: tempfile::TempDir,
}

impl SoftFixture {
    /// A fresh soft backend in a new temporary directory.
    #[must_use]
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = SoftBackend::create(dir.path()).expect("create soft backend");
        Self { backend, dir }
    }

    /// The directory holding the key file.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for SoftFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl BackendFixture for SoftFixture {
    fn backend(&self) -> &dyn Backend {
        &self.backend
    }
}
