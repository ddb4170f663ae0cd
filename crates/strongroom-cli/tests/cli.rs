//! The `strongroom` binary, run for real: every command, JSON output, exit codes and the one-line
//! errors, the tour against its golden output, and a full PKCS#11 session on SoftHSM2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use strongroom_test_support::softhsm::Token;
use strongroom_test_support::softhsm_tests;

struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn ok(self) -> Self {
        assert_eq!(
            self.code,
            0,
            "stdout: {}\nstderr: {}",
            self.out(),
            self.stderr
        );
        self
    }

    fn fails(self, code: i32, says: &str) -> Self {
        assert_eq!(
            self.code,
            code,
            "stdout: {}\nstderr: {}",
            self.out(),
            self.stderr
        );
        assert!(
            self.stderr.contains(says),
            "stderr should say {says:?}: {}",
            self.stderr
        );
        // One clear line.
        assert_eq!(self.stderr.trim_end().lines().count(), 1, "{}", self.stderr);
        assert!(
            self.stderr.starts_with("strongroom: error: "),
            "{}",
            self.stderr
        );
        self
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.out()))
    }
}

fn cmd(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_strongroom"));
    c.arg("--data")
        .arg(data)
        .args(args)
        .env_remove("STRONGROOM_DATA")
        .env("STRONGROOM_ACTOR", "tester");
    c
}

fn run_with(mut c: Command, stdin: Option<&[u8]>) -> Run {
    c.stdin(Stdio::piped())
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
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn sr(data: &Path, args: &[&str]) -> Run {
    run_with(cmd(data, args), None)
}

fn new_store() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    sr(&data, &["init"]).ok();
    (dir, data)
}

#[test]
fn help_teaches_commands_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let h = sr(dir.path(), &["--help"]).ok().out();
    for must in [
        "tour",
        "init",
        "keyring",
        "doctor",
        "Exit codes:",
        "4  access refused",
        "STRONGROOM_DATA",
    ] {
        assert!(h.contains(must), "--help lacks {must:?}:\n{h}");
    }
    let h = sr(dir.path(), &["keyring", "--help"]).ok().out();
    for must in [
        "create",
        "rotate",
        "move",
        "disable",
        "destroy",
        "cancel-destroy",
    ] {
        assert!(h.contains(must), "{h}");
    }
    assert_eq!(sr(dir.path(), &["keyring", "frobnicate"]).code, 2);
}

#[test]
fn the_tour_matches_its_golden_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = sr(dir.path(), &["tour"]).ok().out();
    let tmp = regex_lite_replace(&out);
    let golden = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tour.txt"),
    )
    .unwrap();
    assert_eq!(
        tmp, golden,
        "the tour's output changed; if on purpose, update tests/golden/tour.txt"
    );
    let j = sr(dir.path(), &["--json", "tour"]).ok().json();
    assert_eq!(j["ok"], true);
    assert_eq!(j["steps"].as_array().unwrap().len(), 13);
}

/// Replaces temp paths, store ids and times with placeholders (what the golden file holds).
fn regex_lite_replace(s: &str) -> String {
    let mut out = String::new();
    // The tour's directory is under the system temp dir (TMPDIR may move it).
    let prefix = format!(
        "{}/strongroom-",
        std::env::temp_dir()
            .display()
            .to_string()
            .trim_end_matches('/')
    );
    for line in s.lines() {
        let mut l = line.to_owned();
        while let Some(i) = l.find(&prefix) {
            let end = l[i + prefix.len()..]
                .find(|c: char| !c.is_ascii_hexdigit())
                .map_or(l.len(), |e| i + prefix.len() + e);
            l.replace_range(i..end, "<TMP>");
        }
        if let Some(i) = l.find("store ") {
            let rest = &l[i + 6..];
            if rest.len() >= 8
                && rest[..8].chars().all(|c| c.is_ascii_hexdigit())
                && rest[8..].starts_with(" created")
            {
                l.replace_range(i + 6..i + 14, "<ID>");
            }
        }
        // RFC 3339 times: 2026-12-07T01:29:21Z
        let bytes = l.clone().into_bytes();
        let mut i = 0;
        let mut rebuilt = String::new();
        while i < bytes.len() {
            if i + 20 <= bytes.len()
                && bytes[i + 4] == b'-'
                && bytes[i + 10] == b'T'
                && bytes[i + 19] == b'Z'
                && bytes[i..i + 4].iter().all(u8::is_ascii_digit)
            {
                rebuilt.push_str("<TIME>");
                i += 20;
            } else {
                rebuilt.push(char::from(bytes[i]));
                i += 1;
            }
        }
        out.push_str(&rebuilt);
        out.push('\n');
    }
    out
}

#[test]
fn a_soft_store_through_every_command() {
    let (_dir, data) = new_store();
    let d = data.as_path();
    assert!(d.join("strongroom.conf").exists());
    let conf = std::fs::read_to_string(d.join("strongroom.conf")).unwrap();
    assert!(conf.contains("backend = \"soft\""), "{conf}");
    sr(d, &["init"]).fails(2, "already holds a strongroom store");

    sr(d, &["keyring", "create", "payroll"]).ok();
    sr(d, &["put", "payroll", "alice", "salary=100"]).ok();
    let binary: Vec<u8> = (0u8..=255).chain([0, b'\n', 0]).collect();
    run_with(cmd(d, &["put", "payroll", "blob"]), Some(&binary)).ok();
    assert_eq!(
        sr(d, &["get", "payroll", "blob"]).ok().stdout,
        binary,
        "binary-safe through stdin and stdout"
    );
    assert_eq!(sr(d, &["get", "payroll", "alice"]).ok().out(), "salary=100");
    assert_eq!(sr(d, &["list", "payroll"]).ok().out(), "alice\nblob\n");
    assert_eq!(
        sr(d, &["list", "payroll", "--prefix", "al"]).ok().out(),
        "alice\n"
    );
    let show = sr(d, &["keyring", "show", "payroll"]).ok().out();
    assert!(
        show.contains("state     enabled") && show.contains("records   2"),
        "{show}"
    );

    sr(d, &["keyring", "rotate", "payroll"]).ok();
    sr(d, &["keyring", "rotate", "payroll", "--dek"]).ok();
    let re = sr(d, &["reencrypt", "payroll"]).ok().out();
    assert!(
        re.contains("2 records re-encrypted") && re.contains("retired: v1"),
        "{re}"
    );
    sr(d, &["root", "create", "acme"]).ok();
    let moved = sr(d, &["keyring", "move", "payroll", "--root", "acme"])
        .ok()
        .out();
    assert!(
        moved.contains("fresh KEK and DEK")
            && moved.contains("records re-encrypted")
            && moved.contains("while root key service lives"),
        "{moved}"
    );
    let show = sr(d, &["--json", "keyring", "show", "payroll"]).ok().json();
    assert_eq!(show["former_roots"], serde_json::json!(["service"]));
    assert_eq!(show["moving_from"], serde_json::Value::Null);
    let rot = sr(d, &["root", "rotate", "acme"]).ok().out();
    assert!(
        rot.contains("rotated to v2") && rot.contains("1 KEK rewrapped"),
        "{rot}"
    );
    let roots = sr(d, &["root", "list"]).ok().out();
    assert!(
        roots.contains("acme                     v2       1         v1:enabled v2:enabled"),
        "{roots}"
    );
    sr(d, &["root", "retire", "acme", "v1", "--yes"]).ok();
    sr(d, &["root", "retire", "acme", "v2", "--yes"]).fails(1, "current version");
    assert_eq!(sr(d, &["get", "payroll", "alice"]).ok().out(), "salary=100");

    sr(d, &["root", "disable", "acme"]).ok();
    sr(d, &["get", "payroll", "alice"]).fails(4, "root key acme is disabled");
    sr(d, &["root", "enable", "acme"]).ok();
    sr(d, &["keyring", "disable", "payroll"]).ok();
    sr(d, &["get", "payroll", "alice"]).fails(4, "strongroom keyring enable payroll");
    sr(d, &["keyring", "enable", "payroll"]).ok();

    sr(d, &["delete", "payroll", "blob"]).ok();
    sr(d, &["delete", "payroll", "blob"]).fails(3, "no record");
    sr(d, &["get", "payroll", "nope"]).fails(3, "no record \"nope\"");
    sr(d, &["get", "nokeyring", "x"]).fails(3, "keyring nokeyring does not exist");
    sr(d, &["keyring", "create", "bad name"]).fails(2, "invalid keyring name");

    let sched = sr(d, &["keyring", "destroy", "payroll", "--after", "1d"])
        .ok()
        .out();
    assert!(
        sched.contains("will be destroyed at") && sched.contains("cancel-destroy"),
        "{sched}"
    );
    sr(d, &["get", "payroll", "alice"]).fails(4, "scheduled for destruction");
    sr(d, &["keyring", "cancel-destroy", "payroll"]).ok();
    sr(d, &["keyring", "enable", "payroll"]).ok();
    sr(d, &["keyring", "destroy", "payroll", "--after", "2w"]).fails(2, "unknown unit");
    // Destructive and no terminal to ask on: refused without --yes.
    sr(d, &["keyring", "destroy", "payroll", "--now"]).fails(7, "--yes");
    assert_eq!(sr(d, &["get", "payroll", "alice"]).ok().out(), "salary=100");
    let gone = sr(d, &["keyring", "destroy", "payroll", "--now", "--yes"])
        .ok()
        .out();
    assert!(
        gone.contains("1 records erased")
            && gone.contains("database rewritten without them")
            && gone.contains("while root key acme lives"),
        "{gone}"
    );
    // The shred reached the files: the old database directory was shredded and removed, and
    // nothing is left to finish (tests/shred.rs in the store reads the bytes themselves).
    assert!(!d.join("db").exists());
    assert!(
        std::fs::read_to_string(d.join("db-current"))
            .unwrap()
            .starts_with("db.")
    );
    assert_eq!(sr(d, &["jobs"]).ok().out().trim_end(), "no unfinished work");
    sr(d, &["get", "payroll", "alice"]).fails(4, "crypto-shredded");

    let v = sr(d, &["audit", "verify"]).ok().out();
    assert!(v.starts_with("audit log OK:"), "{v}");
    let log = sr(d, &["audit", "log", "--since", "2", "--limit", "2"])
        .ok()
        .out();
    assert_eq!(log.lines().count(), 2);
    assert!(
        log.contains("tester") && log.contains("keyring.create"),
        "{log}"
    );
    let doc = sr(d, &["doctor"]).ok().out();
    assert!(doc.lines().all(|l| l.starts_with("OK ")), "{doc}");
    // Doctor says which AES-GCM implementation this build seals records with.
    let engine = strongroom_core::crypto::GCM_ENGINE;
    assert!(
        doc.lines()
            .any(|l| l.contains("record cipher") && l.contains(&format!("AES-256-GCM by {engine}"))),
        "{doc}"
    );
    assert_eq!(sr(d, &["jobs"]).ok().out(), "no unfinished work\n");
    assert_eq!(sr(d, &["resume"]).ok().out(), "no unfinished work\n");
}

#[test]
fn json_output_for_every_kind_of_command() {
    let (_dir, data) = new_store();
    let d = data.as_path();
    let j = |args: &[&str]| {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        sr(d, &a).ok().json()
    };
    assert_eq!(j(&["keyring", "create", "k"])["keyring"], "k");
    assert_eq!(j(&["put", "k", "a", "v\"1"])["bytes"], 3);
    let got = j(&["get", "k", "a"]);
    assert_eq!(got["value"], "v\"1");
    assert_eq!(got["value_hex"], "762231");
    assert_eq!(
        j(&["list", "k"]),
        serde_json::json!([{"key": "a", "key_hex": "61"}])
    );
    assert_eq!(j(&["keyring", "list"])[0]["state"], "enabled");
    assert_eq!(j(&["keyring", "show", "k"])["records"], 1);
    assert_eq!(j(&["root", "list"])[0]["primary"], true);
    assert_eq!(j(&["audit", "verify"])["ok"], true);
    assert_eq!(j(&["audit", "log"])[1]["op"], "keyring.create");
    assert!(
        j(&["doctor"])
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["status"] == "OK")
    );
    assert_eq!(j(&["reencrypt", "k"])["reencrypted"], 0);
    // Errors are JSON too, with the exit code.
    let e = sr(d, &["--json", "get", "k", "missing"]);
    assert_eq!(e.code, 3);
    assert_eq!(e.json()["exit_code"], 3);
}

#[test]
fn tampering_is_an_integrity_failure_with_exit_code_5() {
    let (_dir, data) = new_store();
    let d = data.as_path();
    sr(d, &["keyring", "create", "k"]).ok();
    sr(d, &["put", "k", "a", "alpha"]).ok();
    sr(d, &["put", "k", "b", "beta"]).ok();
    {
        let db = sled::open(d.join("db")).unwrap();
        let rec = db.open_tree("records").unwrap();
        let key = |k: &[u8]| [&1u64.to_be_bytes()[..], k].concat();
        let a = rec.get(key(b"a")).unwrap().unwrap();
        rec.insert(key(b"b"), a).unwrap();
        let audit = db.open_tree("audit").unwrap();
        let mut e = audit.get(2u64.to_be_bytes()).unwrap().unwrap().to_vec();
        let mid = e.len() / 2;
        e[mid] ^= 1;
        audit.insert(2u64.to_be_bytes(), e).unwrap();
        db.flush().unwrap();
    }
    assert_eq!(sr(d, &["get", "k", "a"]).ok().out(), "alpha");
    sr(d, &["get", "k", "b"]).fails(5, "record b in keyring k failed its integrity check");
    sr(d, &["audit", "verify"]).fails(5, "audit log broken at entry 2");
    let doc = sr(d, &["doctor"]);
    assert_eq!(doc.code, 1);
    assert!(
        doc.out().contains("FAIL  audit log") && doc.out().contains("entry 2"),
        "{}",
        doc.out()
    );
    // Bad input is a usage error: a record key over the limit.
    let long = "k".repeat(1025);
    sr(d, &["put", "k", &long, "v"]).fails(2, "");
    // A damaged soft-backend key file is an integrity failure too.
    let key_file = d.join("soft-root-keys");
    let mut bytes = std::fs::read(&key_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&key_file, bytes).unwrap();
    sr(d, &["keyring", "list"]).fails(5, "corrupt (checksum mismatch); restore it from a backup");
}

#[test]
fn missing_store_and_broken_configuration() {
    let dir = tempfile::tempdir().unwrap();
    sr(dir.path(), &["keyring", "list"]).fails(3, "strongroom init");
    let (_d2, data) = new_store();
    std::fs::write(
        data.join("strongroom.conf"),
        "format = 1\nbackend = hsm\nprimary-root = service\n",
    )
    .unwrap();
    sr(&data, &["keyring", "list"]).fails(1, "backend must be soft or pkcs11");
    // The soft key file's permissions are checked.
    let (_d3, data) = new_store();
    std::fs::set_permissions(
        data.join("soft-root-keys"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    sr(&data, &["keyring", "list"]).fails(6, "chmod 600");
    // strongroom.conf names the PKCS#11 module that gets loaded: one that others can change is
    // refused.
    let (_d4, data) = new_store();
    let conf = data.join("strongroom.conf");
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o620)).unwrap();
    sr(&data, &["keyring", "list"]).fails(2, "chmod go-w");
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    sr(&data, &["keyring", "list"]).ok();
}

#[test]
fn backup_and_restore_through_the_cli() {
    let (dir, data) = new_store();
    let d = data.as_path();
    sr(d, &["keyring", "create", "k"]).ok();
    sr(d, &["put", "k", "a", "alpha"]).ok();
    let file = dir.path().join("b.backup");
    let out = sr(d, &["backup", file.to_str().unwrap()]).ok().out();
    assert!(out.contains("back up the soft backend's key file"), "{out}");
    let restored = dir.path().join("restored");
    sr(
        &restored,
        &[
            "restore",
            file.to_str().unwrap(),
            "--config",
            d.join("strongroom.conf").to_str().unwrap(),
        ],
    )
    .ok();
    std::fs::copy(d.join("soft-root-keys"), restored.join("soft-root-keys")).unwrap();
    assert_eq!(sr(&restored, &["get", "k", "a"]).ok().out(), "alpha");
    sr(&restored, &["audit", "verify"]).ok();
}

#[test]
fn bench_reports_ratios_and_zero_backend_calls_once_warm() {
    let dir = tempfile::tempdir().unwrap();
    let out = sr(
        dir.path(),
        &[
            "bench",
            "--records",
            "2000",
            "--value-size",
            "64",
            "--threads",
            "2",
        ],
    )
    .ok()
    .out();
    assert!(
        out.contains("/ plain")
            && out.contains("/ limit")
            && out.contains("limit (plain+cipher)/s"),
        "{out}"
    );
    assert!(
        out.contains("backend calls per 1000 reads after warm-up: 0"),
        "{out}"
    );
    let j = sr(dir.path(), &["--json", "bench", "--records", "1000"])
        .ok()
        .json();
    assert_eq!(j["backend_calls_per_1000_reads"], 0);
    assert_eq!(j["aead"], strongroom_core::crypto::GCM_ENGINE);
    assert!(j["ops"][0]["ratio"].as_f64().unwrap() > 0.0);
    assert!(j["ops"][0]["ratio_to_limit"].as_f64().unwrap() > 0.0);
    assert!(j["ops"][1]["limit_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_audit_log_text_view_escapes_control_characters() {
    let (_dir, data) = new_store();
    let d = data.as_path();
    let actor = "evil\n#2     2026-01-01T00:00:00Z admin   root.destroy \u{1b}[2J";
    let mut c = cmd(d, &["--actor", actor, "keyring", "create", "k"]);
    c.env_remove("STRONGROOM_ACTOR");
    run_with(c, None).ok();
    let log = sr(d, &["audit", "log"]).ok().out();
    let entries = sr(d, &["--json", "audit", "log"]).ok().json();
    let n = entries.as_array().unwrap().len();
    assert_eq!(log.lines().count(), n, "one line per entry:\n{log}");
    assert!(log.lines().all(|l| l.starts_with('#')), "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
    assert!(
        log.contains(r"evil\n#2     2026-01-01T00:00:00Z admin   root.destroy \u{1b}[2J"),
        "{log}"
    );
    // JSON keeps the actor as it was given.
    assert_eq!(entries[n - 1]["actor"], actor);
}

/// Runs the binary with its stdout a pipe whose read end is closed before it writes.
fn with_closed_stdout(mut c: Command) -> Run {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs the binary with its stdout on /dev/full (every write fails: no space left).
fn with_full_stdout(mut c: Command) -> Run {
    c.stdin(Stdio::null())
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .stderr(Stdio::piped());
    let o = c.output().unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn a_closed_stdout_ends_quietly_and_the_tour_still_cleans_up() {
    let (dir, data) = new_store();
    let d = data.as_path();
    sr(d, &["keyring", "create", "k"]).ok();
    sr(d, &["put", "k", "a", "alpha"]).ok();
    // The tour's temporary store goes in TMPDIR: a directory of the test's own.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    for args in [
        &["tour"][..],
        &["--json", "tour"],
        &["bench", "--records", "200", "--value-size", "16"],
        &["audit", "log"],
        &["--json", "audit", "log"],
        &["get", "k", "a"],
        &["list", "k"],
    ] {
        let mut c = cmd(d, args);
        c.env("TMPDIR", &tmp);
        let r = with_closed_stdout(c);
        // Like most Unix tools: the reader went away, nothing is wrong.
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr, "", "{args:?}");
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "{args:?} left its temp dir"
        );
    }
}

#[test]
fn a_failed_write_to_stdout_is_an_error() {
    let (_dir, data) = new_store();
    let d = data.as_path();
    sr(d, &["keyring", "create", "k"]).ok();
    sr(d, &["put", "k", "a", "alpha"]).ok();
    for args in [
        &["audit", "log"][..],
        &["--json", "audit", "log"],
        &["get", "k", "a"],
        &["--json", "get", "k", "a"],
        &["tour"],
    ] {
        with_full_stdout(cmd(d, args)).fails(1, "writing the output failed");
    }
    // A command that failed keeps its own exit code and says why on stderr.
    with_full_stdout(cmd(d, &["--json", "get", "k", "missing"])).fails(3, "no record");
}

#[test]
fn json_output_is_one_document_even_when_a_command_fails_after_its_result() {
    let (_dir, data) = new_store();
    let d = data.as_path();
    // A failing doctor: the configuration names a backend that cannot open.
    std::fs::remove_file(d.join("soft-root-keys")).unwrap();
    let r = sr(d, &["--json", "doctor"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let j = r.json();
    assert_eq!(j["exit_code"], 1, "{j}");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("doctor found 1 problem"),
        "{j}"
    );
    let checks = j["result"].as_array().unwrap();
    assert_eq!(checks.last().unwrap()["status"], "FAIL", "{j}");
    assert_eq!(checks.last().unwrap()["check"], "backend", "{j}");

    // A resume that finishes some work and not the rest.
    let (_dir, data) = new_store();
    let d = data.as_path();
    sr(d, &["keyring", "create", "k"]).ok();
    sr(d, &["keyring", "destroy", "k", "--after", "1s"]).ok();
    sr(d, &["root", "disable", "service"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = sr(d, &["--json", "resume"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    assert_eq!(j["exit_code"], r.code, "{j}");
    assert!(j["error"].is_string(), "{j}");
    assert_eq!(j["result"][0]["finished"], false, "{j}");
    assert!(
        j["result"][0]["result"]
            .as_str()
            .unwrap()
            .starts_with("not finished: "),
        "{j}"
    );
}

fn p11_init(token: &Token, data: &Path, extra: &[&str]) -> Run {
    let mut c = cmd(
        data,
        &[
            "init",
            "--backend",
            "pkcs11",
            "--module",
            token.module.to_str().unwrap(),
            "--token",
            &token.label,
            "--pin-env",
            "STRONGROOM_PIN",
        ],
    );
    c.args(extra).env("STRONGROOM_PIN", &token.user_pin);
    run_with(c, None)
}

/// Turns a key's `CKA_EXTRACTABLE` off from outside strongroom (what another tool could do):
/// its `CKA_NEVER_EXTRACTABLE` stays false.
fn make_non_extractable(token: &Token, label: &str) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let ctx = Pkcs11::new(&token.module).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == token.label)
        .unwrap();
    let s = ctx.open_rw_session(slot).unwrap();
    s.login(
        UserType::User,
        Some(&AuthPin::new(token.user_pin.clone().into())),
    )
    .unwrap();
    let key = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .unwrap()[0];
    s.update_attributes(key, &[Attribute::Extractable(false)])
        .unwrap();
}

fn p11(data: &Path, pin: &str, args: &[&str]) -> Run {
    let mut c = cmd(data, args);
    c.env("STRONGROOM_PIN", pin);
    run_with(c, None)
}

softhsm_tests! {
    fn a_pkcs11_session_through_the_cli(token) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let d = data.as_path();
        let out = p11_init(token, d, &[]).ok().out();
        assert!(out.contains(&token.label), "{out}");
        let conf = std::fs::read_to_string(d.join("strongroom.conf")).unwrap();
        assert!(conf.contains("pin-env = \"STRONGROOM_PIN\"") && !conf.contains(&token.user_pin), "{conf}");
        let pin = token.user_pin.as_str();
        p11(d, pin, &["keyring", "create", "payroll"]).ok();
        p11(d, pin, &["put", "payroll", "alice", "salary=100"]).ok();
        assert_eq!(p11(d, pin, &["get", "payroll", "alice"]).ok().out(), "salary=100");
        p11(d, pin, &["root", "rotate", "service"]).ok();
        p11(d, pin, &["root", "retire", "service", "1", "--yes"]).ok();
        assert_eq!(p11(d, pin, &["get", "payroll", "alice"]).ok().out(), "salary=100");
        // init gave the store a namespace of its own for its labels in the token.
        let ns = conf.lines().find_map(|l| l.strip_prefix("namespace = \"")?.strip_suffix('"')).unwrap_or_else(|| panic!("{conf}"));
        assert!(ns.starts_with("strongroom-") && ns.len() == "strongroom-".len() + 8, "{ns}");
        let listing = token.pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
        let block = listing.split("Secret Key Object").find(|b| b.contains(&format!("{ns}/service/v2"))).unwrap_or_else(|| panic!("{listing}"));
        assert!(block.contains("sensitive") && block.contains("never extractable"), "{block}");
        assert!(!listing.contains(&format!("{ns}/service/v1")), "retired v1 is gone from the token:\n{listing}");
        let doc = p11(d, pin, &["doctor"]).ok().out();
        for must in ["OK      login", "OK      mechanisms", "aes-gcm", "root service/v2", "OK    audit log"] {
            assert!(doc.contains(must), "doctor lacks {must:?}:\n{doc}");
        }
        // The bad-input cases, each one line with the fix.
        p11(d, "wrong-pin-z", &["get", "payroll", "alice"]).fails(6, "wrong PIN");
        // A PIN the token refused is remembered in the data directory (a salted fingerprint,
        // never the PIN): the next process does not spend another attempt on it.
        p11(d, "wrong-pin-z", &["get", "payroll", "alice"]).fails(6, "refused this PIN earlier");
        let state = d.join("pkcs11-refused-pins");
        let text = std::fs::read_to_string(&state).unwrap();
        assert!(!text.contains("wrong-pin-z"), "{text}");
        assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o600);
        // The right PIN still works, and clears the record.
        assert_eq!(p11(d, pin, &["get", "payroll", "alice"]).ok().out(), "salary=100");
        p11(d, "wrong-pin-z", &["get", "payroll", "alice"]).fails(6, "wrong PIN");
        let no_pin = run_with(cmd(d, &["get", "payroll", "alice"]), None);
        assert_eq!(no_pin.code, 6, "{}", no_pin.stderr);
        assert!(no_pin.stderr.contains("STRONGROOM_PIN is not set"), "{}", no_pin.stderr);
        let d2 = dir.path().join("other");
        let mut c = cmd(&d2, &["init", "--backend", "pkcs11", "--module", "/nonexistent/lib.so", "--token", &token.label, "--pin-env", "STRONGROOM_PIN"]);
        c.env("STRONGROOM_PIN", pin);
        run_with(c, None).fails(6, "does not exist");
        assert!(!d2.exists(), "a failed init leaves nothing behind");
        let mut c = cmd(&d2, &["init", "--backend", "pkcs11", "--module", token.module.to_str().unwrap(), "--token", "nope", "--pin-env", "STRONGROOM_PIN"]);
        c.env("STRONGROOM_PIN", pin);
        run_with(c, None).fails(6, "no token with label \"nope\"");
        run_with(cmd(&d2, &["init", "--backend", "pkcs11", "--module", token.module.to_str().unwrap(), "--token", &token.label]), None)
            .fails(2, "--pin-env VAR or --pin-file FILE");
    }

    fn relative_module_and_pin_file_paths_are_stored_absolute(token) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, &token.user_pin).unwrap();
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Both given relative to the directory init runs in.
        let cwd = dir.path().canonicalize().unwrap();
        let module = token.module.canonicalize().unwrap();
        let ups = "../".repeat(cwd.components().count() - 1);
        let module_rel = Path::new(&ups).join(module.strip_prefix("/").unwrap());
        let mut c = cmd(&data, &["init", "--backend", "pkcs11", "--module", module_rel.to_str().unwrap(), "--token", &token.label, "--pin-file", "pin"]);
        c.current_dir(&cwd);
        run_with(c, None).ok();
        let conf = std::fs::read_to_string(data.join("strongroom.conf")).unwrap();
        let value = |key: &str| conf.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(" = \"")?.strip_suffix('"')).unwrap_or_else(|| panic!("{conf}"));
        let (conf_module, conf_pin) = (value("module"), value("pin-file"));
        assert!(Path::new(conf_module).is_absolute() && Path::new(conf_pin).is_absolute(), "{conf}");
        assert_eq!(Path::new(conf_pin), cwd.join("pin"), "{conf}");
        assert_eq!(Path::new(conf_module).canonicalize().unwrap(), module, "{conf}");
        // Later commands work from any directory.
        let mut c = cmd(&data, &["keyring", "create", "k"]);
        c.current_dir("/");
        run_with(c, None).ok();
    }

    fn two_stores_on_one_token_keep_their_keys_apart(token) {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let pin = token.user_pin.as_str();
        p11_init(token, &a, &[]).ok();
        p11_init(token, &b, &["--namespace", "store-b"]).ok();
        for d in [&a, &b] {
            p11(d, pin, &["root", "create", "tenant"]).ok();
            p11(d, pin, &["keyring", "create", "k", "--root", "tenant"]).ok();
            p11(d, pin, &["put", "k", "x", d.file_name().unwrap().to_str().unwrap()]).ok();
        }
        // b's root key "tenant" is not a's: destroying b's leaves a readable.
        p11(&b, pin, &["root", "destroy", "tenant", "--now", "--yes"]).ok();
        assert_eq!(p11(&a, pin, &["get", "k", "x"]).ok().out(), "a");
        p11(&b, pin, &["get", "k", "x"]).fails(4, "destroyed");
        let roots = p11(&a, pin, &["--json", "root", "list"]).ok().json();
        assert_eq!(roots.as_array().unwrap().len(), 2, "{roots}");
        assert!(roots.as_array().unwrap().iter().all(|r| r["versions"][0]["state"] == "enabled"), "{roots}");
        // doctor compares the store with the token: a's keys are all there.
        p11(&a, pin, &["doctor"]).ok();
        let listing = token.pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
        assert!(!listing.contains("store-b/tenant/v1") && listing.contains("store-b/service/v1"), "{listing}");
        // A configuration pointed at another namespace is refused, not silently empty.
        let conf = a.join("strongroom.conf");
        let text = std::fs::read_to_string(&conf).unwrap();
        let ns = text.lines().find_map(|l| l.strip_prefix("namespace = \"")?.strip_suffix('"')).unwrap().to_owned();
        std::fs::write(&conf, text.replace(&ns, "store-b")).unwrap();
        p11(&a, pin, &["get", "k", "x"]).fails(6, "pkcs11.namespace");
        p11_init(token, &dir.path().join("c"), &["--namespace", "no/slash"]).fails(2, "namespace");
        // One store per namespace: a third store on b's namespace is refused, naming b.
        let refused = p11_init(token, &dir.path().join("c"), &["--namespace", "store-b"]);
        let err = refused.fails(2, "belong to store").stderr.clone();
        assert!(err.contains(b.to_str().unwrap()) && err.contains("--namespace"), "{err}");
        assert!(!dir.path().join("c").exists(), "a refused init leaves nothing behind");
    }

    fn init_can_adopt_a_key_made_by_pkcs11_tool(token) {
        let _ = token.pkcs11_tool(&["--keygen", "--key-type", "AES:32", "--label", "customer-root", "--sensitive"]);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        p11_init(token, &data, &["--root", "customer", "--adopt-root", "customer-root"]).ok();
        let pin = token.user_pin.as_str();
        p11(&data, pin, &["keyring", "create", "k"]).ok();
        p11(&data, pin, &["put", "k", "a", "b"]).ok();
        assert_eq!(p11(&data, pin, &["get", "k", "a"]).ok().out(), "b");
        let roots = p11(&data, pin, &["--json", "root", "list"]).ok().json();
        assert_eq!(roots[0]["name"], "customer");
        // The adoption is in the audit log, and says what was adopted.
        let log = p11(&data, pin, &["audit", "log"]).ok().out();
        let line = log.lines().find(|l| l.contains("root.adopt")).unwrap_or_else(|| panic!("{log}"));
        assert!(line.contains("customer-root") && !line.contains("allow-weak-adoption"), "{line}");

        // A key that was once extractable (its material may exist outside the HSM) is refused,
        // unless the operator says so; that is recorded too.
        let _ = token.pkcs11_tool(&["--keygen", "--key-type", "AES:32", "--label", "was-loose", "--sensitive", "--extractable"]);
        make_non_extractable(token, "was-loose");
        p11(&data, pin, &["root", "create", "weak", "--adopt", "was-loose"]).fails(6, "CKA_NEVER_EXTRACTABLE");
        p11(&data, pin, &["root", "create", "weak", "--adopt", "was-loose", "--allow-weak-adoption"]).ok();
        let log = p11(&data, pin, &["audit", "log"]).ok().out();
        let line = log.lines().filter(|l| l.contains("root.adopt")).nth(1).unwrap_or_else(|| panic!("{log}"));
        assert!(line.contains("was-loose") && line.contains("--allow-weak-adoption"), "{line}");
    }
}

#[test]
fn init_never_deletes_a_key_file_or_anchor_it_did_not_create() {
    for existing in ["soft-root-keys", "audit-anchor"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let precious = data.join(existing);
        std::fs::write(&precious, b"the only copy").unwrap();
        sr(&data, &["init"]).fails(2, &format!("{existing} already exists"));
        assert_eq!(std::fs::read(&precious).unwrap(), b"the only copy");
        let mut left: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [existing], "init created nothing");
    }
}

#[test]
fn init_checks_its_arguments_before_creating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.as_path();
    // PKCS#11 settings with the soft backend are a mistake, not something to ignore.
    sr(d, &["init", "--module", "/x.so"]).fails(
        2,
        "--module only applies to --backend pkcs11; add --backend pkcs11, or leave it out",
    );
    sr(
        d,
        &["init", "--token", "t", "--pin-env", "P", "--namespace", "n"],
    )
    .fails(
        2,
        "--token, --pin-env, --namespace only apply to --backend pkcs11",
    );
    sr(d, &["init", "--slot", "0", "--pin-file", "/p"])
        .fails(2, "--slot, --pin-file only apply to --backend pkcs11");
    sr(d, &["init", "--adopt-root", "k"]).fails(2, "--adopt-root only applies");
    sr(d, &["init", "--root", "bad name"]).fails(2, "invalid root key name \"bad name\"");
    let p11 = |extra: &[&str]| {
        let mut a = vec!["init", "--backend", "pkcs11"];
        a.extend_from_slice(extra);
        sr(d, &a)
    };
    p11(&["--module", "/x.so", "--token", "", "--pin-env", "P"])
        .fails(2, "--token is empty; give the token's label");
    for flag in ["--module", "--pin-file"] {
        let mut a = vec!["--module", "/x.so", "--token", "t", "--pin-file", "/p"];
        let at = a.iter().position(|f| *f == flag).unwrap();
        a[at + 1] = "";
        let r = p11(&a);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(
            r.stderr
                .starts_with(&format!("error: a value is required for '{flag} <")),
            "{}",
            r.stderr
        );
    }
    p11(&["--module", "/x.so", "--token", "t", "--pin-env", ""]).fails(2, "--pin-env is empty");
    p11(&[
        "--module",
        "/x.so",
        "--token",
        "t",
        "--pin-env",
        "P",
        "--adopt-root",
        "",
    ])
    .fails(2, "--adopt-root is empty");
    p11(&["--module", "/x.so", "--token", " t", "--pin-env", "P"])
        .fails(2, "leading or trailing spaces");
    assert!(!d.exists(), "nothing was created");
}

#[test]
fn a_failed_init_removes_only_what_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Someone else's file, and a lock file that was there before.
    std::fs::write(data.join("notes.txt"), b"mine").unwrap();
    std::fs::write(data.join("soft-root-keys.lock"), b"").unwrap();
    let mut c = cmd(
        &data,
        &[
            "init",
            "--backend",
            "pkcs11",
            "--module",
            "/nonexistent/lib.so",
            "--token",
            "t",
            "--pin-env",
            "STRONGROOM_PIN",
        ],
    );
    c.env("STRONGROOM_PIN", "1234");
    run_with(c, None).fails(6, "does not exist");
    let mut left: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["notes.txt", "soft-root-keys.lock"]);
}

#[test]
fn a_missing_anchor_is_refused_until_an_operator_accepts_the_database() {
    let (_dir, data) = new_store();
    let d = data.as_path();
    sr(d, &["keyring", "create", "k"]).ok();
    sr(d, &["put", "k", "a", "1"]).ok();
    std::fs::remove_file(d.join("audit-anchor")).unwrap();
    sr(d, &["get", "k", "a"]).fails(5, "strongroom audit accept-rollback");
    sr(d, &["audit", "accept-rollback"]).fails(7, "--yes");
    let out = sr(d, &["audit", "accept-rollback", "--yes"]).ok().out();
    assert!(out.contains("accepted"), "{out}");
    assert_eq!(sr(d, &["get", "k", "a"]).ok().out(), "1");
    let log = sr(d, &["audit", "log"]).ok().out();
    assert!(log.contains("store.accept-rollback"), "{log}");
}

/// The schemas in JSON.md: for each section (a command, or `errors`), the documented keys of
/// its object (`Fields:`), of each element of its array (`Each element:`), and of the objects
/// in its array fields (`` `name[]`: ``).
#[derive(Default, Debug)]
struct Schema {
    fields: Option<Vec<String>>,
    elements: Option<Vec<String>>,
    nested: Vec<(String, Vec<String>)>,
}

fn schemas() -> std::collections::BTreeMap<String, Schema> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/JSON.md")).unwrap();
    let ticked =
        |s: &str| -> Vec<String> { s.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
    let mut all = std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            current = Some(ticked(h).concat());
        } else if line == "## Errors" {
            current = Some("errors".into());
        } else if line.starts_with("## ") {
            current = None;
        }
        let Some(name) = &current else { continue };
        let s: &mut Schema = all.entry(name.clone()).or_default();
        if let Some(f) = line.strip_prefix("Fields: ") {
            s.fields = Some(ticked(f));
        } else if let Some(f) = line.strip_prefix("Each element: ") {
            s.elements = Some(ticked(f));
        } else if line.starts_with('`')
            && let Some((field, f)) = line.split_once("[]`: ")
        {
            s.nested
                .push((field.trim_start_matches('`').to_owned(), ticked(f)));
        }
    }
    all
}

fn keys(v: &serde_json::Value) -> std::collections::BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(v: &[String]) -> std::collections::BTreeSet<String> {
    v.iter().cloned().collect()
}

/// Checks `doc` against the schema of `name`; returns `name` (to count what was checked).
fn conforms(all: &std::collections::BTreeMap<String, Schema>, name: &str, doc: &serde_json::Value) {
    let s = all
        .get(name)
        .unwrap_or_else(|| panic!("JSON.md has no schema for `{name}`"));
    let objects: Vec<&serde_json::Value> = match (&s.fields, &s.elements) {
        (Some(f), None) => {
            assert_eq!(keys(doc), set(f), "`{name}`: {doc}");
            vec![doc]
        }
        (None, Some(f)) => {
            let items = doc
                .as_array()
                .unwrap_or_else(|| panic!("`{name}`: not an array: {doc}"));
            assert!(!items.is_empty(), "`{name}`: check it on a non-empty array");
            for item in items {
                assert_eq!(keys(item), set(f), "`{name}`: {item}");
            }
            items.iter().collect()
        }
        other => panic!("`{name}`: JSON.md must give Fields or Each element: {other:?}"),
    };
    for (field, f) in &s.nested {
        for o in &objects {
            let inner = o[field.as_str()]
                .as_array()
                .unwrap_or_else(|| panic!("`{name}`.{field}: not an array: {o}"));
            assert!(!inner.is_empty(), "`{name}`.{field}: check it non-empty");
            for item in inner {
                assert_eq!(keys(item), set(f), "`{name}`.{field}: {item}");
            }
        }
    }
}

#[test]
fn every_command_s_json_has_exactly_its_documented_fields() {
    let all = schemas();
    let checked = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let dir = tempfile::tempdir().unwrap();
    let d = &dir.path().join("data");
    let check = |name: &str, args: &[&str]| {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let doc = sr(d, &a).ok().json();
        conforms(&all, name, &doc);
        checked.borrow_mut().insert(name.to_owned());
    };
    check("init", &["init"]);
    check("keyring create", &["keyring", "create", "k"]);
    check("root create", &["root", "create", "r2"]);
    check("root rotate", &["root", "rotate", "r2"]);
    check("root retire", &["root", "retire", "r2", "1", "--yes"]);
    check("root list", &["root", "list"]);
    check("root disable", &["root", "disable", "r2"]);
    check("root enable", &["root", "enable", "r2"]);
    check("root destroy", &["root", "destroy", "r2", "--after", "7d"]);
    check("root cancel-destroy", &["root", "cancel-destroy", "r2"]);
    sr(d, &["root", "enable", "r2"]).ok();
    check("put", &["put", "k", "a", "v"]);
    check("get", &["get", "k", "a"]);
    check("list", &["list", "k"]);
    check("keyring list", &["keyring", "list"]);
    check("keyring show", &["keyring", "show", "k"]);
    check("keyring rotate", &["keyring", "rotate", "k"]);
    check("keyring rotate --dek", &["keyring", "rotate", "k", "--dek"]);
    check("reencrypt", &["reencrypt", "k"]);
    check("keyring move", &["keyring", "move", "k", "--root", "r2"]);
    check("keyring disable", &["keyring", "disable", "k"]);
    check("keyring enable", &["keyring", "enable", "k"]);
    check(
        "keyring destroy",
        &["keyring", "destroy", "k", "--after", "7d"],
    );
    check(
        "keyring cancel-destroy",
        &["keyring", "cancel-destroy", "k"],
    );
    sr(d, &["keyring", "enable", "k"]).ok();
    check("delete", &["delete", "k", "a"]);
    check("compact", &["compact"]);
    check("audit verify", &["audit", "verify"]);
    check("audit log", &["audit", "log"]);
    check(
        "audit accept-rollback",
        &["audit", "accept-rollback", "--yes"],
    );
    check("doctor", &["doctor"]);
    let backup = dir.path().join("backup");
    check("backup", &["backup", backup.to_str().unwrap()]);
    let conf = d.join("strongroom.conf");
    let restored = dir.path().join("restored");
    let r = sr(
        &restored,
        &[
            "--json",
            "restore",
            backup.to_str().unwrap(),
            "--config",
            conf.to_str().unwrap(),
        ],
    )
    .ok()
    .json();
    conforms(&all, "restore", &r);
    checked.borrow_mut().insert("restore".into());
    sr(d, &["keyring", "create", "k2"]).ok();
    check(
        "keyring destroy --now",
        &["keyring", "destroy", "k2", "--now", "--yes"],
    );
    sr(d, &["root", "create", "r3"]).ok();
    sr(d, &["keyring", "create", "k3", "--root", "r3"]).ok();
    check(
        "root destroy --now",
        &["root", "destroy", "r3", "--now", "--yes"],
    );
    check("bench", &["bench", "--records", "200"]);
    check("tour", &["tour"]);
    // Unfinished work: a destruction that is due while its root is disabled.
    sr(d, &["keyring", "create", "kj"]).ok();
    sr(d, &["keyring", "destroy", "kj", "--after", "1s"]).ok();
    sr(d, &["root", "disable", "service"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    check("jobs", &["jobs"]);
    let r = sr(d, &["--json", "resume"]);
    assert_ne!(r.code, 0);
    let e = r.json();
    assert_eq!(
        keys(&e),
        set(&["error", "kind", "exit_code", "result"].map(String::from)),
        "{e}"
    );
    conforms(&all, "resume", &e["result"]);
    checked.borrow_mut().insert("resume".into());
    sr(d, &["root", "enable", "service"]).ok();
    sr(d, &["resume"]).ok();
    // `migrate` to PostgreSQL (the test server) and back.
    let server = strongroom_test_support::pg::shared();
    let schema = strongroom_test_support::pg::unique_schema();
    let migrate = |args: &[&str]| {
        let mut c = cmd(d, args);
        c.env("STRONGROOM_TEST_PG_URL", server.url());
        run_with(c, None).ok().json()
    };
    let doc = migrate(&[
        "--json",
        "migrate",
        "--to",
        "postgres",
        "--pg-url-env",
        "STRONGROOM_TEST_PG_URL",
        "--pg-schema",
        &schema,
        "--shred-source",
    ]);
    conforms(&all, "migrate", &doc);
    let doc = migrate(&["--json", "migrate", "--to", "sled", "--shred-source"]);
    assert_eq!(doc["source_shredded"], true);
    checked.borrow_mut().insert("migrate".into());
    let doc = migrate(&[
        "--json",
        "bench",
        "--storage",
        "postgres",
        "--pg-url-env",
        "STRONGROOM_TEST_PG_URL",
        "--records",
        "200",
    ]);
    conforms(&all, "bench --storage postgres", &doc);
    checked
        .borrow_mut()
        .insert("bench --storage postgres".into());
    let doc = migrate(&[
        "--json",
        "bench",
        "--replicas",
        "2",
        "--seconds",
        "1",
        "--rounds",
        "1",
        "--fleet-poll-ms",
        "100",
        "--pg-url-env",
        "STRONGROOM_TEST_PG_URL",
    ]);
    conforms(&all, "bench --replicas", &doc);
    for (field, keys_of) in [
        (
            "propagation",
            &[
                "rounds", "samples", "p50_ms", "max_ms", "bound_ms", "readers", "writers",
            ][..],
        ),
        ("audit", &["entries", "verified", "replicas_in_log"][..]),
    ] {
        let want: Vec<String> = keys_of.iter().map(|k| (*k).to_owned()).collect();
        assert_eq!(keys(&doc[field]), set(&want), "{doc}");
    }
    checked.borrow_mut().insert("bench --replicas".into());
    // Every schema on the page was checked.
    let documented: std::collections::BTreeSet<String> =
        all.keys().filter(|k| *k != "errors").cloned().collect();
    assert_eq!(documented, checked.into_inner());
}

#[test]
fn json_errors_carry_a_stable_kind_for_each_exit_code() {
    let all = schemas();
    let err = |d: &Path, args: &[&str], code: i32, kind: &str| {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let r = sr(d, &a);
        assert_eq!(r.code, code, "{args:?}: {}{}", r.out(), r.stderr);
        let e = r.json();
        assert_eq!(e["kind"], kind, "{e}");
        assert_eq!(e["exit_code"], code, "{e}");
        assert!(e["error"].is_string(), "{e}");
        let documented = all["errors"].fields.as_ref().unwrap();
        let mut want = set(documented);
        if e.get("result").is_some() {
            want.insert("result".into());
        }
        assert_eq!(keys(&e), want, "{e}");
    };
    let (_dir, data) = new_store();
    let d = data.as_path();
    sr(d, &["keyring", "create", "k"]).ok();
    sr(d, &["put", "k", "a", "v"]).ok();
    err(d, &["get", "k", "zz", "--key-hex"], 2, "usage");
    err(d, &["get", "k", "missing"], 3, "not_found");
    err(d, &["keyring", "destroy", "k", "--now"], 7, "aborted");
    sr(d, &["keyring", "disable", "k"]).ok();
    err(d, &["get", "k", "a"], 4, "access_refused");
    sr(d, &["keyring", "enable", "k"]).ok();
    let key_file = d.join("soft-root-keys");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    err(d, &["keyring", "list"], 6, "backend");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut bytes = std::fs::read(&key_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&key_file, bytes).unwrap();
    err(d, &["keyring", "list"], 5, "integrity");
    std::fs::remove_file(&key_file).unwrap();
    err(d, &["doctor"], 1, "other");
}

#[test]
fn listed_keys_feed_back_to_get_whatever_bytes_they_hold() {
    let (_dir, data) = new_store();
    let d = data.as_path();
    sr(d, &["keyring", "create", "k"]).ok();
    let keys: [&[u8]; 5] = [
        "ключ/ü 😀".as_bytes(),
        b"line\nbreak\x1b[2J",
        "rtl\u{202e}txt".as_bytes(),
        b"\xff\x00binary\x80",
        b"plain",
    ];
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    for (i, k) in keys.iter().enumerate() {
        let v = format!("value {i}");
        let put = sr(d, &["--json", "put", "k", &hex(k), &v, "--key-hex"])
            .ok()
            .json();
        assert_eq!(put["key_hex"], hex(k));
    }
    // A text key is given as text too.
    sr(d, &["put", "k", "ключ/ü 😀", "value 0"]).ok();
    let listed = sr(d, &["--json", "list", "k"]).ok().json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), keys.len());
    for item in listed {
        let h = item["key_hex"].as_str().unwrap();
        let i = keys.iter().position(|k| hex(k) == h).unwrap();
        // Text when the key is valid UTF-8, null otherwise.
        match std::str::from_utf8(keys[i]) {
            Ok(text) => assert_eq!(item["key"], text),
            Err(_) => assert!(item["key"].is_null(), "{item}"),
        }
        // Round trip: by hex, and by text where there is text.
        let got = sr(d, &["get", "k", "--key-hex", h]).ok();
        assert_eq!(got.stdout, format!("value {i}").as_bytes());
        if let Some(text) = item["key"].as_str() {
            let got = sr(d, &["--json", "get", "k", text]).ok().json();
            assert_eq!(got["value"], format!("value {i}"));
            assert_eq!(got["key_hex"], h);
        }
    }
    // The text view shows Unicode as itself and escapes only control and bidi characters,
    // and bytes that are not UTF-8.
    let text = sr(d, &["list", "k"]).ok().out();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    let mut want = vec![
        "ключ/ü 😀",
        "line\\nbreak\\u{1b}[2J",
        "rtl\\u{202e}txt",
        "\\xff\\u{0}binary\\x80",
        "plain",
    ];
    want.sort_unstable();
    assert_eq!(lines, want);
    // delete takes hex too; a missing key says which, escaped.
    let bin = hex(keys[3]);
    sr(d, &["delete", "k", "--key-hex", &bin]).ok();
    sr(d, &["get", "k", "--key-hex", &bin]).fails(3, "no record \"\\xff\\u{0}binary\\x80\"");
    sr(d, &["get", "k", "--key-hex", "abc"]).fails(2, "odd number of hex digits");
}

#[test]
fn init_writes_toml_and_old_config_files_still_open() {
    let (_dir, data) = new_store();
    let d = data.as_path();
    let conf = d.join("strongroom.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(
        text.contains("format = 2\n") && text.contains("backend = \"soft\"\n"),
        "{text}"
    );
    sr(d, &["keyring", "create", "k"]).ok();
    sr(d, &["put", "k", "a", "v"]).ok();
    // The file a store made before the TOML format has: read as it was.
    std::fs::write(
        &conf,
        "# strongroom configuration, written by `strongroom init`.\n# It never holds a PIN, only where to find one.\nformat = 1\nbackend = soft\nprimary-root = service\ncache-ttl-secs = 300\ndestruction-delay-secs = 604800\naudit-data-access = false\n",
    )
    .unwrap();
    assert_eq!(sr(d, &["get", "k", "a"]).ok().out(), "v");
    sr(d, &["doctor"]).ok();
    // Hand-written TOML with trailing comments; unknown keys are refused.
    std::fs::write(
        &conf,
        "format = 2 # TOML\nbackend = \"soft\" # embedded\nprimary-root = \"service\"\n",
    )
    .unwrap();
    assert_eq!(sr(d, &["get", "k", "a"]).ok().out(), "v");
    std::fs::write(
        &conf,
        "format = 2\nbackend = \"soft\"\nprimary-root = \"service\"\ncache-ttl = 5\n",
    )
    .unwrap();
    sr(d, &["get", "k", "a"]).fails(1, "unknown field `cache-ttl`");
}

#[test]
fn completions_generate_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let script = sr(dir.path(), &["completions", shell]).ok().out();
        for must in ["keyring", "cancel-destroy", "key-hex", "completions"] {
            assert!(script.contains(must), "{shell} completions lack {must:?}");
        }
    }
    sr(dir.path(), &["completions", "tcsh"])
        .code
        .eq(&2)
        .then_some(())
        .unwrap();
}

#[test]
fn the_checked_in_man_page_is_current() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cmd(dir.path(), &["man"]);
    c.env_remove("STRONGROOM_ACTOR");
    let page = run_with(c, None).ok().out();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/man/strongroom.1");
    let checked_in = std::fs::read_to_string(path).unwrap();
    assert!(
        page == checked_in,
        "man/strongroom.1 is not current: run `strongroom man > crates/strongroom-cli/man/strongroom.1`"
    );
    for must in ["Exit codes:", "STRONGROOM_DATA", "keyring"] {
        assert!(page.contains(must), "the man page lacks {must:?}");
    }
}

/// `strongroom ARGS` with no `--data`, in `cwd`, with this environment.
fn sr_env(cwd: &Path, env: &[(&str, &Path)], args: &[&str]) -> Run {
    let mut c = Command::new(env!("CARGO_BIN_EXE_strongroom"));
    c.args(args)
        .current_dir(cwd)
        .env_remove("STRONGROOM_DATA")
        .env_remove("XDG_DATA_HOME")
        .env_remove("HOME")
        .env("STRONGROOM_ACTOR", "tester");
    for (k, v) in env {
        c.env(k, v);
    }
    run_with(c, None)
}

#[test]
fn the_data_directory_comes_from_flag_env_or_a_default_under_home() {
    let dir = tempfile::tempdir().unwrap();
    let (root, elsewhere) = (dir.path(), dir.path().join("cwd"));
    std::fs::create_dir(&elsewhere).unwrap();
    let home = root.join("home");
    // The default: under $HOME, whatever the current directory.
    sr_env(&elsewhere, &[("HOME", &home)], &["init"]).ok();
    assert!(
        home.join(".local/share/strongroom/strongroom.conf")
            .exists()
    );
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    sr_env(root, &[("HOME", &home)], &["keyring", "create", "k"]).ok();
    // $XDG_DATA_HOME comes first (a relative one is ignored, as the XDG spec says).
    let xdg = root.join("xdg");
    let both = [("HOME", home.as_path()), ("XDG_DATA_HOME", xdg.as_path())];
    sr_env(&elsewhere, &both, &["keyring", "list"]).fails(3, "strongroom init");
    sr_env(&elsewhere, &both, &["init"]).ok();
    assert!(xdg.join("strongroom/strongroom.conf").exists());
    let relative = [
        ("HOME", home.as_path()),
        ("XDG_DATA_HOME", Path::new("xdg")),
    ];
    let listed = sr_env(&elsewhere, &relative, &["keyring", "list"])
        .ok()
        .out();
    assert!(listed.contains('k'), "{listed}");
    // STRONGROOM_DATA beats the default, and --data beats STRONGROOM_DATA.
    let env_dir = root.join("env-data");
    let with_env = [
        ("HOME", home.as_path()),
        ("STRONGROOM_DATA", env_dir.as_path()),
    ];
    sr_env(&elsewhere, &with_env, &["init"]).ok();
    assert!(env_dir.join("strongroom.conf").exists());
    let flag_dir = root.join("flag-data");
    sr_env(
        &elsewhere,
        &with_env,
        &["--data", flag_dir.to_str().unwrap(), "init"],
    )
    .ok();
    assert!(flag_dir.join("strongroom.conf").exists());
    // No home and no flag: a clear usage error, nothing created here.
    sr_env(&elsewhere, &[], &["init"]).fails(2, "give --data DIR or set STRONGROOM_DATA");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}
