//! The `strongroom` binary on a PostgreSQL store (a throwaway server the tests start): `init
//! --storage postgres`, the lifecycle on it, `doctor`, backup and restore across engines, and
//! `migrate` both ways.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::{Command, Stdio};

use strongroom_test_support::pg;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    fn fails(self, code: i32, says: &str) -> Self {
        assert_eq!(
            self.code, code,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(says),
            "stderr should say {says:?}: {}",
            self.stderr
        );
        self
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

const URL_VAR: &str = "STRONGROOM_TEST_PG_URL";

fn sr(data: &Path, url: &str, args: &[&str]) -> Run {
    sr_in(data, url, args, None)
}

fn sr_in(data: &Path, url: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
    sr_env(data, url, args, stdin, &[])
}

fn sr_env(
    data: &Path,
    url: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    envs: &[(&str, std::ffi::OsString)],
) -> Run {
    use std::io::Write as _;
    let mut c = Command::new(env!("CARGO_BIN_EXE_strongroom"));
    c.envs(envs.iter().map(|(k, v)| (*k, v)));
    c.arg("--data")
        .arg(data)
        .args(args)
        .env_remove("STRONGROOM_DATA")
        .env("STRONGROOM_ACTOR", "tester")
        .env(URL_VAR, url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        let mut i = child.stdin.take().unwrap();
        if let Some(b) = stdin {
            i.write_all(b).unwrap();
        }
    }
    let o = child.wait_with_output().unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn init_pg(data: &Path, url: &str, schema: &str) -> Run {
    sr(
        data,
        url,
        &[
            "--json",
            "init",
            "--storage",
            "postgres",
            "--pg-url-env",
            URL_VAR,
            "--pg-schema",
            schema,
        ],
    )
}

#[test]
fn init_the_lifecycle_and_doctor_on_postgres() {
    let server = pg::shared();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let schema = pg::unique_schema();
    let init = init_pg(&data, &url, &schema).ok().json();
    assert_eq!(init["storage"], "postgres");
    // The URL (and its password) never lands in the configuration.
    let conf = std::fs::read_to_string(data.join("strongroom.conf")).unwrap();
    assert!(conf.contains("engine = \"postgres\""), "{conf}");
    assert!(conf.contains(URL_VAR), "{conf}");
    assert!(!conf.contains(server.password()), "{conf}");
    // No sled database in the data directory: the records are in the server.
    assert!(!data.join("db").exists());

    sr(&data, &url, &["keyring", "create", "payroll"]).ok();
    sr(&data, &url, &["put", "payroll", "alice", "salary=100000"]).ok();
    assert_eq!(
        sr(&data, &url, &["get", "payroll", "alice"]).ok().stdout,
        "salary=100000"
    );
    let rows = server.psql(&format!(
        "SELECT count(*) FROM {schema}.entries WHERE tree = 5"
    ));
    assert_eq!(rows.trim(), "1");
    // Sealed in the table: the plaintext is nowhere in it.
    let hit = server.psql(&format!(
        "SELECT count(*) FROM {schema}.entries WHERE position('salary=100000'::bytea in v) > 0"
    ));
    assert_eq!(hit.trim(), "0");
    sr(&data, &url, &["keyring", "rotate", "payroll"]).ok();
    sr(&data, &url, &["keyring", "disable", "payroll"]).ok();
    sr(&data, &url, &["get", "payroll", "alice"]).fails(4, "disabled");
    sr(&data, &url, &["keyring", "enable", "payroll"]).ok();
    assert_eq!(
        sr(&data, &url, &["get", "payroll", "alice"]).ok().stdout,
        "salary=100000"
    );
    sr(&data, &url, &["keyring", "create", "gone"]).ok();
    sr(&data, &url, &["put", "gone", "k", "v"]).ok();
    sr(
        &data,
        &url,
        &["keyring", "destroy", "gone", "--now", "--yes"],
    )
    .ok();
    sr(&data, &url, &["get", "gone", "k"]).fails(4, "destroyed");
    sr(&data, &url, &["audit", "verify"]).ok();

    let doctor = sr(&data, &url, &["--json", "doctor"]).ok().json();
    let checks: Vec<String> = doctor
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}: {}",
                c["status"].as_str().unwrap(),
                c["check"].as_str().unwrap(),
                c["detail"].as_str().unwrap()
            )
        })
        .collect();
    let find = |name: &str| {
        checks
            .iter()
            .find(|c| {
                c.split_once(": ")
                    .is_some_and(|(head, _)| head.ends_with(&format!(" {name}")))
            })
            .unwrap_or_else(|| panic!("no {name} check in {checks:#?}"))
            .clone()
    };
    assert!(find("storage").contains("PostgreSQL"), "{checks:#?}");
    assert!(find("server version").starts_with("OK"), "{checks:#?}");
    assert!(find("schema version").starts_with("OK"), "{checks:#?}");
    // The test server has no TLS: doctor says so, with the fix.
    assert!(find("TLS").contains("sslmode=verify-full"), "{checks:#?}");

    // A wrong URL variable: a clear error, no password in it.
    let bad = sr_in(
        &data,
        "postgres://strongroom:wrongpw@127.0.0.1:1/postgres?sslmode=disable",
        &["get", "payroll", "alice"],
        None,
    );
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("PostgreSQL"), "{}", bad.stderr);
    assert!(!bad.stderr.contains("wrongpw"), "{}", bad.stderr);
}

#[test]
fn init_refuses_a_url_on_the_command_line_and_flags_for_the_other_engine() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    sr(&data, "", &["init", "--storage", "postgres"]).fails(2, "--pg-url-env");
    sr(&data, "", &["init", "--pg-url-env", URL_VAR]).fails(2, "--storage postgres");
    assert!(!data.join("strongroom.conf").exists());
    // migrate reads the same flags the same way: an empty variable name is no URL source.
    sr(&data, "", &["init"]).ok();
    let conf = std::fs::read_to_string(data.join("strongroom.conf")).unwrap();
    sr(
        &data,
        "",
        &["migrate", "--to", "postgres", "--pg-url-env", ""],
    )
    .fails(2, "--pg-url-env");
    sr(&data, "", &["migrate", "--to", "sled", "--pg-schema", "x"]).fails(2, "--to postgres");
    assert_eq!(
        std::fs::read_to_string(data.join("strongroom.conf")).unwrap(),
        conf
    );
}

#[test]
fn migrate_sled_to_postgres_and_back_keeps_every_record_and_the_audit_chain() {
    let server = pg::shared();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    sr(&data, &url, &["init"]).ok();
    sr(&data, &url, &["keyring", "create", "payroll"]).ok();
    for i in 0..50 {
        sr_in(
            &data,
            &url,
            &["put", "payroll", &format!("k{i}")],
            Some(format!("v{i}").as_bytes()),
        )
        .ok();
    }
    let before = sr(&data, &url, &["--json", "audit", "verify"]).ok().json();
    let schema = pg::unique_schema();
    let m = sr(
        &data,
        &url,
        &[
            "--json",
            "migrate",
            "--to",
            "postgres",
            "--pg-url-env",
            URL_VAR,
            "--pg-schema",
            &schema,
            "--shred-source",
        ],
    )
    .ok()
    .json();
    assert_eq!(m["to"], "postgres");
    assert!(m["entries"].as_u64().unwrap() > 50);
    assert!(!data.join("db").exists(), "the sled copy was shredded");
    for i in [0, 17, 49] {
        assert_eq!(
            sr(&data, &url, &["get", "payroll", &format!("k{i}")])
                .ok()
                .stdout,
            format!("v{i}")
        );
    }
    // The chain carried over, with the migration's own entry in it; the anchor still agrees.
    let after = sr(&data, &url, &["--json", "audit", "verify"]).ok().json();
    assert!(
        after["entries"].as_u64().unwrap() > before["entries"].as_u64().unwrap(),
        "{after}"
    );
    sr(&data, &url, &["put", "payroll", "new", "on-postgres"]).ok();

    // And back to sled (the PostgreSQL copy emptied).
    sr(
        &data,
        &url,
        &["--json", "migrate", "--to", "sled", "--shred-source"],
    )
    .ok();
    assert!(data.join("db").exists());
    assert_eq!(
        sr(&data, &url, &["get", "payroll", "new"]).ok().stdout,
        "on-postgres"
    );
    assert_eq!(sr(&data, &url, &["get", "payroll", "k3"]).ok().stdout, "v3");
    sr(&data, &url, &["audit", "verify"]).ok();
    let left = server.psql(&format!("SELECT count(*) FROM {schema}.entries"));
    assert_eq!(left.trim(), "0", "the PostgreSQL copy was emptied");
    // Migrating to the engine the store is on is a usage error.
    sr(&data, &url, &["migrate", "--to", "sled"]).fails(2, "already");
}

#[test]
fn a_backup_made_on_sled_restores_into_postgres_and_back() {
    let server = pg::shared();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    sr(&data, &url, &["init"]).ok();
    sr(&data, &url, &["keyring", "create", "payroll"]).ok();
    sr(&data, &url, &["put", "payroll", "alice", "100"]).ok();
    let backup = dir.path().join("sled.backup");
    sr(&data, &url, &["backup", backup.to_str().unwrap()]).ok();

    // Restored into PostgreSQL: a configuration naming the engine, the key file beside it.
    let schema = pg::unique_schema();
    let restored = dir.path().join("restored");
    let conf = std::fs::read_to_string(data.join("strongroom.conf")).unwrap()
        + &format!(
            "\n[storage]\nengine = \"postgres\"\nurl-env = \"{URL_VAR}\"\nschema = \"{schema}\"\n"
        );
    let conf_path = dir.path().join("pg.conf");
    std::fs::write(&conf_path, conf).unwrap();
    sr(
        &restored,
        &url,
        &[
            "restore",
            backup.to_str().unwrap(),
            "--config",
            conf_path.to_str().unwrap(),
        ],
    )
    .ok();
    std::fs::copy(
        data.join(strongroom_core::soft::KEY_FILE_NAME),
        restored.join(strongroom_core::soft::KEY_FILE_NAME),
    )
    .unwrap();
    assert!(!restored.join("db").exists());
    assert_eq!(
        sr(&restored, &url, &["get", "payroll", "alice"])
            .ok()
            .stdout,
        "100"
    );
    sr(&restored, &url, &["put", "payroll", "bob", "200"]).ok();

    // A backup of the PostgreSQL store restores into sled.
    let backup2 = dir.path().join("pg.backup");
    sr(&restored, &url, &["backup", backup2.to_str().unwrap()]).ok();
    let again = dir.path().join("again");
    sr(
        &again,
        &url,
        &[
            "restore",
            backup2.to_str().unwrap(),
            "--config",
            data.join("strongroom.conf").to_str().unwrap(),
        ],
    )
    .ok();
    std::fs::copy(
        data.join(strongroom_core::soft::KEY_FILE_NAME),
        again.join(strongroom_core::soft::KEY_FILE_NAME),
    )
    .unwrap();
    assert_eq!(
        sr(&again, &url, &["get", "payroll", "bob"]).ok().stdout,
        "200"
    );
    sr(&again, &url, &["audit", "verify"]).ok();
}

/// `bench --replicas 3 --json` with `extra` arguments and `envs`: three replica processes on
/// one store, each creating a keyring of its own at once (racing key changes) and then putting
/// and reading, while this process disables and enables a keyring in rounds. Every replica
/// refuses the disabled keyring within the poll interval (asserted generously; the bench
/// measures it exactly), no operation of any replica fails, and the one audit chain verifies
/// with entries from every replica. Returns the JSON.
fn fleet_bench(
    url: &str,
    extra: &[&str],
    envs: &[(&str, std::ffi::OsString)],
) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("unused");
    let poll_ms = 300u64;
    let poll = poll_ms.to_string();
    let mut args = vec![
        "--json",
        "bench",
        "--replicas",
        "3",
        "--seconds",
        "3",
        "--rounds",
        "4",
        "--fleet-poll-ms",
        &poll,
        "--pg-url-env",
        URL_VAR,
    ];
    args.extend_from_slice(extra);
    let run = sr_env(&data, url, &args, None, envs).ok().json();
    assert_eq!(run["replicas"], 3);
    let per = run["per_replica"].as_array().unwrap();
    assert_eq!(per.len(), 3);
    for r in per {
        assert_eq!(r["errors"], 0, "{run}");
        assert!(r["gets_per_sec"].as_f64().unwrap() > 0.0, "{run}");
        if r["workload"] == "puts+gets" {
            assert!(r["puts_per_sec"].as_f64().unwrap() > 0.0, "{run}");
        }
    }
    let p = &run["propagation"];
    assert_eq!(p["samples"], 12, "{run}");
    // Generous: the interval plus two seconds of a busy machine.
    let max = p["max_ms"].as_f64().unwrap();
    assert!(max <= (poll_ms + 2000) as f64, "{run}");
    assert!(p["readers"]["samples"].as_u64().unwrap() > 0, "{run}");
    assert_eq!(run["audit"]["verified"], true);
    let writers: Vec<&str> = run["audit"]["replicas_in_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for i in 0..3 {
        assert!(writers.contains(&format!("bench-{i}").as_str()), "{run}");
    }
    assert!(writers.contains(&"bench-coordinator"), "{run}");
    run
}

/// The fleet as processes on one shared soft key file.
#[test]
fn three_replica_processes_follow_revocations_and_share_one_audit_chain() {
    let run = fleet_bench(&pg::shared().url(), &[], &[]);
    assert_eq!(run["backend"], "soft", "{run}");
}

/// A fleet bench on a PKCS#11 token that is not there: the flags come together or not at all
/// (a usage error), and a missing module is a clear error naming it.
#[test]
fn a_fleet_bench_on_a_missing_token_module_says_so() {
    let server = pg::shared();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("unused");
    sr(
        &data,
        &url,
        &[
            "bench",
            "--replicas",
            "2",
            "--pkcs11-module",
            "/nonexistent.so",
        ],
    )
    .fails(2, "--pkcs11-token");
    let pin = dir.path().join("pin");
    std::fs::write(&pin, "1234").unwrap();
    std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pin = pin.display().to_string();
    let run = sr(
        &data,
        &url,
        &[
            "bench",
            "--replicas",
            "2",
            "--pg-url-env",
            URL_VAR,
            "--pkcs11-module",
            "/nonexistent/libpkcs11.so",
            "--pkcs11-token",
            "t",
            "--pkcs11-pin-file",
            &pin,
        ],
    );
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("/nonexistent/libpkcs11.so") && run.stderr.contains("does not exist"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("1234"),
        "no PIN in errors: {}",
        run.stderr
    );
}

/// The fleet as processes on one SoftHSM2 token (made here, in a temporary directory): each
/// replica opens its own PKCS#11 sessions; the bench's store lives in a namespace of its own,
/// and so does the next run's.
#[test]
fn three_replica_processes_on_one_softhsm2_token() {
    let token = strongroom_test_support::softhsm::Token::create("fleet-bench");
    let module = token.module.display().to_string();
    let pin_file = token.pin_file().display().to_string();
    let args = [
        "--pkcs11-module",
        module.as_str(),
        "--pkcs11-token",
        token.label.as_str(),
        "--pkcs11-pin-file",
        pin_file.as_str(),
    ];
    // A server of its own: the bench's schema is named after the URL's, as the other fleet
    // bench's, which may run at the same time.
    let server = pg::PgServer::start();
    let run = fleet_bench(&server.url(), &args, &token.env());
    assert_eq!(run["backend"], "pkcs11", "{run}");
    // Each run's root key lives in a namespace of its own: a second run on the token works.
    fleet_bench(&server.url(), &args, &token.env());
    let listing = token.pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
    assert_eq!(listing.matches("/service/v1").count(), 2, "{listing}");
}

/// A store on a new schema of the shared server configured as a fleet (`fleet = true`, then
/// `more` of the configuration), with keyring `payroll` holding `alice`: its directory, data
/// path, URL and schema.
fn fleet_store(more: &str) -> (tempfile::TempDir, std::path::PathBuf, String, String) {
    let url = pg::shared().url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let schema = pg::unique_schema();
    init_pg(&data, &url, &schema).ok();
    let conf_path = data.join("strongroom.conf");
    let conf = std::fs::read_to_string(&conf_path).unwrap();
    std::fs::write(&conf_path, format!("{conf}fleet = true\n{more}")).unwrap();
    sr(&data, &url, &["keyring", "create", "payroll"]).ok();
    sr(&data, &url, &["put", "payroll", "alice", "salary=1"]).ok();
    (dir, data, url, schema)
}

/// A store configured as a fleet (`fleet = true`): commands work on it, doctor shows the
/// key-state generation and the poll interval, and audit entries name the replica (here the
/// command's process).
#[test]
fn a_fleet_store_works_and_doctor_shows_its_generation() {
    let (_dir, data, url, _schema) = fleet_store("fleet-poll-ms = 200\n");
    let doctor = sr(&data, &url, &["doctor"]).ok().stdout;
    assert!(doctor.contains("key-state generation"), "{doctor}");
    assert!(doctor.contains("every 200 ms"), "{doctor}");
    // The audit log names the command's process as its replica.
    let log = sr(&data, &url, &["--json", "audit", "log"]).ok().json();
    let create = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["op"] == "keyring.create")
        .unwrap();
    let replica = create["replica"].as_str().unwrap();
    assert!(replica.ends_with(char::is_numeric), "{log}");
    // The store's creation, before `fleet = true`, names none (format 1).
    assert_eq!(log[0]["replica"], "", "{log}");
}

/// `root rotate` on a fleet while another replica holds the rewrap's lease: the rotation is
/// done (exit 0, the new version), and the KEKs still under the old version are said to be
/// left, not counted as rewrapped; `resume` finishes them once the lease is gone.
#[test]
fn a_root_rotation_whose_rewrap_another_replica_holds_says_what_is_left() {
    let server = pg::shared();
    let (_dir, data, url, schema) = fleet_store("");
    let roots = sr(&data, &url, &["--json", "root", "list"]).ok().json();
    let root = roots
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["primary"] == true)
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    // Another replica's live lease on the rewrap (format 1, token, expiry by the database's
    // clock in ms, holder), ten minutes long.
    let lease = format!("lease/rewrap/{root}");
    let inserted = server.psql(&format!(
        "INSERT INTO {schema}.entries (tree, k, v) VALUES (7, convert_to('{lease}', 'UTF8'), \
         '\\x01'::bytea || int8send(1) \
         || int8send((extract(epoch from clock_timestamp()) * 1000)::bigint + 600000) \
         || convert_to('replica-9#0000000000000009', 'UTF8')) RETURNING 'inserted'"
    ));
    assert_eq!(inserted.trim(), "inserted");
    let rotated = sr(&data, &url, &["--json", "root", "rotate", &root])
        .ok()
        .json();
    assert_eq!(rotated["version"], 2, "{rotated}");
    assert_eq!(rotated["rewrapped"], 0, "{rotated}");
    assert_eq!(rotated["rewrap_pending"], 1, "{rotated}");
    let jobs = sr(&data, &url, &["jobs"]).ok().stdout;
    assert!(jobs.contains("1 KEKs still under an old version"), "{jobs}");
    let doctor = sr(&data, &url, &["doctor"]).stdout;
    assert!(
        doctor.contains("replica-9"),
        "the holder is named: {doctor}"
    );
    let deleted = server.psql(&format!(
        "DELETE FROM {schema}.entries WHERE tree = 7 AND k = convert_to('{lease}', 'UTF8') RETURNING 'deleted'"
    ));
    assert_eq!(deleted.trim(), "deleted");
    sr(&data, &url, &["resume"]).ok();
    let after = sr(&data, &url, &["--json", "jobs"]).ok().json();
    assert!(
        after.as_array().is_some_and(Vec::is_empty)
            || after["pending"].as_array().is_some_and(Vec::is_empty),
        "{after}"
    );
    let text = sr(&data, &url, &["root", "rotate", &root]).ok().stdout;
    assert!(
        text.contains("rotated to v3; 1 KEK rewrapped under it") && !text.contains("still"),
        "{text}"
    );
    let got = sr(&data, &url, &["get", "payroll", "alice"]).ok().stdout;
    assert!(got.contains("salary=1"), "{got}");
}
