//! kill -9 of a client process in the middle of its work on a PostgreSQL store: nothing is
//! half-applied. The child re-runs this test binary and writes, until it is killed, batches of
//! 20 records that all carry the same sequence number, interleaved with DEK and KEK rotations
//! and audited data access (multi-statement serializable transactions); the parent kills it at
//! a random moment, opens the store and checks that the 20 records agree (one batch, whole),
//! that every record reads, and that the audit log verifies. Several rounds on one store.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use strongroom_core::{Backend, KeyringName, RootKeyName, SoftBackend};
use strongroom_postgres::{PgConfig, PgEngine};
use strongroom_store::{BatchOp, Store, StoreOptions};
use strongroom_test_support::pg;

const CHILD_DIR: &str = "STRONGROOM_KILL_CHILD_DIR";
const CHILD_URL: &str = "STRONGROOM_KILL_CHILD_URL";
const CHILD_SCHEMA: &str = "STRONGROOM_KILL_CHILD_SCHEMA";
const KEYS: usize = 20;

fn options() -> StoreOptions {
    StoreOptions {
        audit_data_access: true,
        dek_rollover_after: 50,
        ..StoreOptions::default()
    }
}

fn config(url: &str, schema: &str) -> PgConfig {
    PgConfig::from_url(url)
        .unwrap()
        .with_schema(schema)
        .unwrap()
}

/// Opens the store, waiting for the server to notice that the killed child's connections (and
/// its lock) are gone.
fn open(dir: &Path, url: &str, schema: &str) -> Store {
    let backend: Arc<dyn Backend> = Arc::new(SoftBackend::open(dir).unwrap());
    let engine = common::connect(&config(url, schema));
    Store::open_on(dir, Box::new(engine), backend, options()).unwrap()
}

fn ring() -> KeyringName {
    KeyringName::new("batches").unwrap()
}

fn child(dir: &Path, url: &str, schema: &str) -> ! {
    let s = open(dir, url, schema);
    let mut seq: u64 = s.get(&ring(), b"k0").unwrap().map_or(0, |v| {
        String::from_utf8(v.expose().to_vec())
            .unwrap()
            .parse()
            .unwrap()
    });
    loop {
        seq += 1;
        let ops: Vec<BatchOp> = (0..KEYS)
            .map(|i| BatchOp::Put(format!("k{i}").into_bytes(), seq.to_string().into_bytes()))
            .collect();
        s.batch(&ring(), &ops).unwrap();
        match seq % 7 {
            0 => {
                s.rotate_dek(&ring()).unwrap();
            }
            3 => {
                s.rotate_kek(&ring()).unwrap();
            }
            _ => {
                let _ = s.get(&ring(), b"k5").unwrap();
            }
        }
    }
}

#[test]
fn a_client_killed_mid_transaction_leaves_nothing_half_applied() {
    if let (Some(dir), Ok(url), Ok(schema)) = (
        std::env::var_os(CHILD_DIR),
        std::env::var(CHILD_URL),
        std::env::var(CHILD_SCHEMA),
    ) {
        child(Path::new(&dir), &url, &schema);
    }
    let url = pg::shared().url();
    let schema = pg::unique_schema();
    let dir = tempfile::tempdir().unwrap();
    {
        let backend: Arc<dyn Backend> = Arc::new(SoftBackend::create(dir.path()).unwrap());
        let s = Store::create_on(
            dir.path(),
            Box::new(PgEngine::connect(&config(&url, &schema)).unwrap()),
            backend,
            &RootKeyName::new("service").unwrap(),
            options(),
        )
        .unwrap();
        s.create_keyring(&ring(), None).unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let mut last_seq = 0u64;
    for round in 0..6u64 {
        let mut c = Command::new(&exe)
            .args([
                "a_client_killed_mid_transaction_leaves_nothing_half_applied",
                "--exact",
                "--nocapture",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_URL, &url)
            .env(CHILD_SCHEMA, &schema)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700 + 97 * round));
        if let Ok(Some(status)) = c.try_wait() {
            let err = std::io::read_to_string(c.stderr.take().unwrap()).unwrap_or_default();
            panic!("round {round}: the child exited by itself ({status}): {err}");
        }
        c.kill().unwrap();
        c.wait().unwrap();
        let s = open(dir.path(), &url, &schema);
        let values: Vec<u64> = (0..KEYS)
            .map(|i| {
                let v = s.get(&ring(), format!("k{i}").as_bytes()).unwrap().unwrap();
                String::from_utf8(v.expose().to_vec())
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert!(
            values.iter().all(|v| *v == values[0]),
            "round {round}: a batch half applied: {values:?}"
        );
        assert!(
            values[0] > last_seq,
            "round {round}: the child made progress ({} then {})",
            last_seq,
            values[0]
        );
        last_seq = values[0];
        let report = s
            .verify_audit()
            .unwrap()
            .unwrap_or_else(|b| panic!("round {round}: audit: {b}"));
        assert!(report.entries > 0);
        assert!(
            s.pending_jobs().unwrap().is_empty(),
            "{:?}",
            s.pending_jobs()
        );
    }
}
