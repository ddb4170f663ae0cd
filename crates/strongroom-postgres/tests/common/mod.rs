//! Helpers the PostgreSQL engine's test files share.
#![allow(dead_code, clippy::unwrap_used)]

pub mod fleet;

use std::time::Duration;

use strongroom_core::{KeyringName, RootKeyName};
use strongroom_postgres::{PgConfig, PgEngine};
use strongroom_test_support::pg;

/// A configuration for `schema` on the shared test server.
pub fn config(schema: &str) -> PgConfig {
    PgConfig::from_url(&pg::shared().url())
        .unwrap()
        .with_schema(schema)
        .unwrap()
}

/// Connects, retrying for up to 10 s while the store's lock is still held: the server releases
/// the lock of a store just closed (or of a killed process) when it sees the connection end.
pub fn connect(cfg: &PgConfig) -> PgEngine {
    let mut last = None;
    for _ in 0..200 {
        match PgEngine::connect(cfg) {
            Ok(e) => return e,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{}", last.unwrap());
}

pub fn kr(s: &str) -> KeyringName {
    KeyringName::new(s).unwrap()
}

pub fn rn(s: &str) -> RootKeyName {
    RootKeyName::new(s).unwrap()
}
