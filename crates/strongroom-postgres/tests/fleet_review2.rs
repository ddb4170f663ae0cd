//! Second outside review: audit verify after the head-first change.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::fleet::{fleet_with, polling};
use common::kr;
use strongroom_test_support::pg;

/// Someone with write access to the database (not the keys) saves every row but the log's
/// entries, lets a revocation happen, then puts the saved rows back (head, catalog,
/// generation): the disable is undone while its entry stays in the log. Before 1516085,
/// verify_audit reported the head behind the log; the anchor check (against the log's end,
/// now) no longer notices either.
#[test]
fn a_rolled_back_head_and_catalog_under_an_intact_log_fails_verification() {
    let f = fleet_with(1, |_| polling(Duration::from_millis(20)));
    let (a, schema) = (&f.replicas[0], &f.schema);
    let k = kr("victim");
    a.create_keyring(&k, None).unwrap();
    a.put(&k, b"x", b"1").unwrap();
    let t = format!("\"{schema}\".entries");
    let psql = |s: &str| pg::shared().psql(&s.replace("{t}", &t));
    psql(&format!(
        "CREATE TABLE \"{schema}\".snap AS SELECT * FROM {{t}} WHERE tree <> 6"
    ));
    a.disable_keyring(&k).unwrap();
    assert!(a.put(&k, b"y", b"2").is_err(), "disabled");
    psql(&format!(
        "BEGIN; DELETE FROM {{t}} WHERE tree <> 6; INSERT INTO {{t}} SELECT * FROM \"{schema}\".snap; COMMIT"
    ));
    std::thread::sleep(Duration::from_millis(100));
    let put_after = a.put(&k, b"z", b"3");
    let verified = a.verify_audit().unwrap();
    eprintln!("put after the rollback: {put_after:?}; verify_audit: {verified:?}");
    assert!(
        verified.is_err(),
        "the rollback of the disable went unnoticed: {verified:?} (put: {put_after:?})"
    );
}
