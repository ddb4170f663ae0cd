//! Crash safety: the test re-runs its own binary as a child that works on a store (durable puts,
//! deletes, DEK and KEK rotations, root rotations, re-encryption, moves between roots,
//! compactions, keyring destruction, which compacts too) and keeps
//! a journal of what it was about to do and what was acknowledged; the parent kills it with
//! SIGKILL at a random moment, reopens the store and checks that every acknowledged record reads
//! back exactly, that nothing is unreadable unless its keyring's destruction was acknowledged (or
//! in flight), and that the audit log verifies. Many rounds, on the same store.
//!
//! `STRONGROOM_CRASH_ROUNDS` sets the number of rounds (default 25).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strongroom_core::{Backend, KeyState, KeyringName, RootKeyName, SoftBackend};
use strongroom_store::{Store, StoreError, StoreOptions};

const CHILD_ENV: &str = "STRONGROOM_CRASH_CHILD_DIR";
/// Set for the child of the test whose work includes moves and explicit compactions.
const MOVES_ENV: &str = "STRONGROOM_CRASH_CHILD_MOVES";

fn kr(s: &str) -> KeyringName {
    KeyringName::new(s).unwrap()
}

fn rn(s: &str) -> RootKeyName {
    RootKeyName::new(s).unwrap()
}

fn open(dir: &Path) -> Store {
    let backend: Arc<dyn Backend> = Arc::new(SoftBackend::open(dir).unwrap());
    Store::open(
        dir,
        backend,
        StoreOptions {
            dek_rollover_after: 40,
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

/// A small deterministic generator (the child needs no cryptographic randomness).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Journal {
    file: File,
    n: u64,
}

impl Journal {
    fn line(&mut self, s: &str) {
        // One write of the whole line: `writeln!` on a file writes the text and the line break
        // in two system calls, and a kill between them glued the next process's first line
        // onto this one, hiding that line's operation from `expectations` (what looked like an
        // acknowledged put lost, about once in 500 kills, was this).
        self.file.write_all(format!("{s}\n").as_bytes()).unwrap();
        self.file.sync_data().unwrap();
    }

    fn intent(&mut self, what: &str) -> u64 {
        self.n += 1;
        let n = self.n;
        self.line(&format!("I {n} {what}"));
        n
    }

    fn ack(&mut self, n: u64) {
        self.line(&format!("A {n}"));
    }
}

/// The child: works until it is killed.
fn child(dir: &Path) -> ! {
    let moves = std::env::var_os(MOVES_ENV).is_some();
    let journal_path = dir.join("journal");
    let n = std::fs::read_to_string(&journal_path).map_or(0, |j| j.lines().count() as u64);
    let mut journal = Journal {
        file: OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal_path)
            .unwrap(),
        // Sequence numbers stay unique across rounds.
        n: n * 10 + 1_000_000 * u64::from(std::process::id()),
    };
    // "S": the child started; "O": its store is open (a kill between them landed in the open,
    // where sled recovers its log). Both are ignored by `expectations`.
    // (A line the kill cut is ended first.)
    journal.line("\nS");
    let s = if strongroom_store::database_dir(dir).unwrap().exists() {
        open(dir)
    } else {
        let backend: Arc<dyn Backend> = Arc::new(SoftBackend::create(dir).unwrap());
        let s = Store::create(
            dir,
            backend,
            &rn("service"),
            StoreOptions {
                dek_rollover_after: 40,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        s.create_root(&rn("tenant")).unwrap();
        for (i, root) in [(0, "service"), (1, "tenant")] {
            let n = journal.intent(&format!("create k{i}"));
            s.create_keyring(&kr(&format!("k{i}")), Some(&rn(root)))
                .unwrap();
            journal.ack(n);
        }
        s
    };
    journal.line("O");
    let mut rng = Rng(u64::from(std::process::id()) << 20 | 0x9E37);
    loop {
        let live: Vec<KeyringName> = s
            .keyrings()
            .unwrap()
            .into_iter()
            .filter(|k| k.state == KeyState::Enabled)
            .map(|k| k.name)
            .collect();
        let ring = live[usize::try_from(rng.below(live.len() as u64)).unwrap()].clone();
        let key = format!("key{}", rng.below(24));
        match rng.below(100) {
            0..=64 => {
                let value = format!("{:016x}", rng.next());
                let n = journal.intent(&format!("put {ring} {key} {value}"));
                s.put_durable(&ring, key.as_bytes(), value.as_bytes())
                    .unwrap();
                journal.ack(n);
            }
            65..=74 => {
                let n = journal.intent(&format!("del {ring} {key}"));
                s.delete(&ring, key.as_bytes()).unwrap();
                s.flush().unwrap();
                journal.ack(n);
            }
            75..=81 => {
                s.rotate_dek(&ring).unwrap();
            }
            82..=86 => {
                s.rotate_kek(&ring).unwrap();
            }
            87..=91 => {
                s.reencrypt(&ring, &mut |_| {}).unwrap();
            }
            92..=93 => {
                s.rotate_root(&rn("tenant"), &mut |_| {}).unwrap();
            }
            // A move to the other root (fresh keys, every record re-encrypted, the old keys
            // erased, then a compaction), or the end of one a kill interrupted.
            94 if moves => {
                let info = s.keyring(&ring).unwrap();
                let to = match (&info.moving_from, info.root.as_str()) {
                    (Some(_), _) => info.root.clone(),
                    (None, "service") => rn("tenant"),
                    (None, _) => rn("service"),
                };
                s.move_keyring(&ring, &to, &mut |_| {}).unwrap();
            }
            95 if moves => {
                s.compact().unwrap();
            }
            _ if live.len() > 1 => {
                let n = journal.intent(&format!("destroy {ring}"));
                s.destroy_keyring_now(&ring).unwrap();
                journal.ack(n);
                let fresh = format!("k{}", rng.next() % 1_000_000);
                let root = if rng.below(2) == 0 {
                    "service"
                } else {
                    "tenant"
                };
                let n = journal.intent(&format!("create {fresh}"));
                s.create_keyring(&kr(&fresh), Some(&rn(root))).unwrap();
                journal.ack(n);
            }
            _ => {}
        }
    }
}

/// What the journal says each record may hold now.
#[derive(Default)]
struct Expect {
    /// (keyring, key) -> acceptable values (`None`: absent).
    records: BTreeMap<(String, String), BTreeSet<Option<String>>>,
    /// Keyrings whose destruction was acknowledged.
    destroyed: BTreeSet<String>,
    /// A keyring whose destruction was in flight at the kill.
    maybe_destroyed: Option<String>,
    /// A keyring whose creation was in flight at the kill.
    maybe_created: Option<String>,
    /// The record an in-flight put or delete touched.
    in_flight: Option<(String, String)>,
    acked: u64,
}

fn expectations(journal: &str) -> Expect {
    let mut intents: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut order: Vec<u64> = Vec::new();
    let mut acked = BTreeSet::new();
    for line in journal.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["I", n, rest @ ..] => {
                let n: u64 = n.parse().unwrap();
                intents.insert(n, rest.iter().map(|s| (*s).to_owned()).collect());
                order.push(n);
            }
            ["A", n] if n.parse::<u64>().is_ok() => {
                acked.insert(n.parse::<u64>().unwrap());
            }
            // A line cut by the kill.
            _ => {}
        }
    }
    let mut e = Expect::default();
    let mut acked_value: BTreeMap<(String, String), Option<String>> = BTreeMap::new();
    for n in &order {
        let op = &intents[n];
        let done = acked.contains(n);
        e.acked += u64::from(done);
        match (op[0].as_str(), done) {
            ("put", true) => {
                acked_value.insert((op[1].clone(), op[2].clone()), Some(op[3].clone()));
            }
            ("del", true) => {
                acked_value.insert((op[1].clone(), op[2].clone()), None);
            }
            ("destroy", true) => {
                e.destroyed.insert(op[1].clone());
            }
            _ => {}
        }
    }
    for (k, v) in &acked_value {
        e.records.entry(k.clone()).or_default().insert(v.clone());
    }
    // At most one operation was in flight: the child is single-threaded.
    if let Some(last) = order.last()
        && !acked.contains(last)
    {
        let op = &intents[last];
        match op[0].as_str() {
            "put" | "del" => {
                let k = (op[1].clone(), op[2].clone());
                let set = e.records.entry(k.clone()).or_default();
                if !acked_value.contains_key(&k) {
                    set.insert(None);
                }
                set.insert(if op[0] == "put" {
                    Some(op[3].clone())
                } else {
                    None
                });
                e.in_flight = Some(k);
            }
            "destroy" => e.maybe_destroyed = Some(op[1].clone()),
            "create" => e.maybe_created = Some(op[1].clone()),
            _ => {}
        }
    }
    e
}

/// Checks the store against the journal, then settles the operation that was in flight by
/// appending what actually happened to it, so later rounds hold the store to it.
fn verify(dir: &Path, round: u32) -> u64 {
    let journal = std::fs::read_to_string(dir.join("journal")).unwrap_or_default();
    let e = expectations(&journal);
    let s = open(dir);
    let mut settle: Vec<String> = Vec::new();
    for ((ring, key), allowed) in &e.records {
        let name = kr(ring);
        let got = match s.get(&name, key.as_bytes()) {
            Ok(v) => Some(v.map(|p| String::from_utf8(p.expose().to_vec()).unwrap())),
            Err(StoreError::KeyringDestroyed { .. })
                if e.destroyed.contains(ring) || e.maybe_destroyed.as_ref() == Some(ring) =>
            {
                None
            }
            Err(err) => panic!("{ring}/{key}: {err}"),
        };
        if let Some(got) = got {
            assert!(
                !e.destroyed.contains(ring),
                "{ring} was destroyed but {key} still reads"
            );
            assert!(
                allowed.contains(&got),
                "{ring}/{key}: read {got:?}, journal allows {allowed:?}"
            );
            if e.in_flight.as_ref() == Some(&(ring.clone(), key.clone())) {
                settle.push(match got {
                    Some(v) => format!("put {ring} {key} {v}"),
                    None => format!("del {ring} {key}"),
                });
            }
        }
    }
    if let Some(ring) = &e.maybe_destroyed
        && s.keyring(&kr(ring))
            .is_ok_and(|k| k.state == KeyState::Destroyed)
    {
        settle.push(format!("destroy {ring}"));
    }
    // Nothing present is unreadable.
    for k in s.keyrings().unwrap() {
        if k.state != KeyState::Enabled {
            continue;
        }
        for key in s.list(&k.name, b"").unwrap() {
            s.get(&k.name, &key).unwrap_or_else(|err| {
                panic!("{}/{}: {err}", k.name, String::from_utf8_lossy(&key))
            });
        }
    }
    // A compaction a kill interrupted was finished at open; a move is finished by calling it
    // again (what `strongroom resume` does), and every record still reads after it.
    let pending = s.pending_jobs().unwrap();
    assert!(
        !pending.contains(&strongroom_store::PendingJob::Compact),
        "compactions finish at open: {pending:?}"
    );
    for j in pending {
        if let strongroom_store::PendingJob::Move { keyring, to, .. } = j {
            s.move_keyring(&keyring, &to, &mut |_| {})
                .unwrap_or_else(|err| panic!("finishing the move of {keyring}: {err}"));
            assert_eq!(s.keyring(&keyring).unwrap().moving_from, None);
            for key in s.list(&keyring, b"").unwrap() {
                s.get(&keyring, &key).unwrap();
            }
        }
    }
    let report = s
        .verify_audit()
        .unwrap()
        .unwrap_or_else(|b| panic!("audit: {b}"));
    assert!(report.entries > 0);
    assert!(
        s.pending_jobs()
            .unwrap()
            .iter()
            .all(|j| !matches!(j, strongroom_store::PendingJob::Purge(_))),
        "purges finish at open"
    );
    let mut j = OpenOptions::new()
        .append(true)
        .open(dir.join("journal"))
        .unwrap();
    for (i, op) in settle.iter().enumerate() {
        let n = 9_000_000_000_000 + u64::from(round) * 10 + i as u64;
        // A line cut by the kill is ended first.
        writeln!(j, "\nI {n} {op}\nA {n}").unwrap();
    }
    j.sync_data().unwrap();
    e.acked
}

/// Kills a child working on one store at random moments, `STRONGROOM_CRASH_ROUNDS` times
/// (default 25), and checks the store after each (`verify`).
fn kill_rounds(test: &str, moves: bool) {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
    }
    let rounds: u32 = std::env::var("STRONGROOM_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
    let started = Instant::now();
    let mut acked = 0;
    for round in 0..rounds {
        let mut c = Command::new(&exe);
        c.args([test, "--exact", "--nocapture", "--include-ignored"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if moves {
            c.env(MOVES_ENV, "1");
        }
        let mut c = c.spawn().unwrap();
        let wait = Duration::from_millis(30 + rng.below(400));
        std::thread::sleep(wait);
        if let Ok(Some(status)) = c.try_wait() {
            let err = std::io::read_to_string(c.stderr.take().unwrap()).unwrap_or_default();
            panic!("round {round}: the child exited by itself ({status}): {err}");
        }
        c.kill().unwrap();
        c.wait().unwrap();
        // `STRONGROOM_CRASH_KEEP=<dir>` keeps a copy of the store as each of the last three
        // kills left it (before the reopen), to replay a failure.
        if let Some(keep) = std::env::var_os("STRONGROOM_CRASH_KEEP") {
            let keep = Path::new(&keep);
            std::fs::create_dir_all(keep).unwrap();
            let _ = std::fs::remove_dir_all(keep.join(format!("round-{}", round.wrapping_sub(3))));
            let ok = Command::new("cp")
                .arg("-a")
                .arg(dir.path())
                .arg(keep.join(format!("round-{round}")))
                .status()
                .unwrap();
            assert!(ok.success());
        }
        acked = verify(dir.path(), round);
    }
    println!(
        "crash suite: {rounds} kills at random moments; {acked} acknowledged operations verified after every reopen; {:?}",
        started.elapsed()
    );
    assert!(
        acked > u64::from(rounds),
        "the child made too little progress to test anything ({acked} acknowledged)"
    );
}

#[test]
fn killed_at_random_moments_nothing_acknowledged_is_lost() {
    kill_rounds(
        "killed_at_random_moments_nothing_acknowledged_is_lost",
        false,
    );
}

/// The same, with moves between roots and explicit compactions in the child's work.
#[test]
fn killed_at_random_moments_with_moves_and_compactions_nothing_acknowledged_is_lost() {
    kill_rounds(
        "killed_at_random_moments_with_moves_and_compactions_nothing_acknowledged_is_lost",
        true,
    );
}

const MOVER_ENV: &str = "STRONGROOM_CRASH_MOVER_DIR";
const MOVER_RECORDS: usize = 600;

/// The child of the move-and-compaction test: a keyring of 600 records moves back and forth
/// between two roots (each move re-encrypts in three batches, erases the old keys and compacts)
/// and the store is compacted in between, until the child is killed.
fn mover(dir: &Path) -> ! {
    let ready = dir.join("ready");
    let s = if ready.exists() {
        open(dir)
    } else {
        let backend: Arc<dyn Backend> = Arc::new(SoftBackend::create(dir).unwrap());
        let s = Store::create(dir, backend, &rn("service"), StoreOptions::default()).unwrap();
        s.create_root(&rn("tenant")).unwrap();
        s.create_keyring(&kr("moving"), None).unwrap();
        for i in 0..MOVER_RECORDS {
            s.put(
                &kr("moving"),
                format!("r{i:04}").as_bytes(),
                format!("v{i}").as_bytes(),
            )
            .unwrap();
        }
        s.flush().unwrap();
        File::create(&ready).unwrap().sync_all().unwrap();
        s
    };
    loop {
        let info = s.keyring(&kr("moving")).unwrap();
        let to = match (&info.moving_from, info.root.as_str()) {
            (Some(_), _) => info.root.clone(),
            (None, "service") => rn("tenant"),
            (None, _) => rn("service"),
        };
        s.move_keyring(&kr("moving"), &to, &mut |_| {}).unwrap();
        s.compact().unwrap();
    }
}

#[test]
fn killed_during_moves_and_compactions_nothing_is_lost_and_the_jobs_finish() {
    if let Some(dir) = std::env::var_os(MOVER_ENV) {
        mover(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(0xC0FF_EE15_600D_F00D);
    let rounds = 15;
    let (mut moves_cut, mut compactions_cut) = (0, 0);
    for round in 0..rounds {
        let mut c = Command::new(&exe)
            .args([
                "killed_during_moves_and_compactions_nothing_is_lost_and_the_jobs_finish",
                "--exact",
                "--nocapture",
            ])
            .env(MOVER_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The first round must get past the setup.
        let wait = Duration::from_millis(if round == 0 { 1500 } else { 50 } + rng.below(500));
        std::thread::sleep(wait);
        if let Ok(Some(status)) = c.try_wait() {
            let err = std::io::read_to_string(c.stderr.take().unwrap()).unwrap_or_default();
            panic!("round {round}: the child exited by itself ({status}): {err}");
        }
        c.kill().unwrap();
        c.wait().unwrap();
        assert!(dir.path().join("ready").exists(), "setup did not finish");
        // What the kill left behind: generations besides the current one, a move half done.
        let generations = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                let n = n.to_string_lossy();
                n == "db" || n.starts_with("db.")
            })
            .count();
        compactions_cut += usize::from(generations > 1);
        let s = open(dir.path());
        let left = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                let n = n.to_string_lossy();
                n == "db" || n.starts_with("db.")
            })
            .count();
        assert_eq!(left, 1, "round {round}: one generation after open");
        let pending = s.pending_jobs().unwrap();
        assert!(
            !pending.contains(&strongroom_store::PendingJob::Compact),
            "{pending:?}"
        );
        for j in pending {
            match j {
                strongroom_store::PendingJob::Move { keyring, to, .. } => {
                    moves_cut += 1;
                    s.move_keyring(&keyring, &to, &mut |_| {}).unwrap();
                }
                other => panic!("round {round}: unexpected job {other:?}"),
            }
        }
        let info = s.keyring(&kr("moving")).unwrap();
        assert_eq!(info.moving_from, None);
        assert_eq!(
            info.kek_versions.len(),
            1,
            "the keys from before the move are gone"
        );
        // DEKs roll over every 40 encryptions here: the ones the move's re-encryption made,
        // none from before it (finishing a move checks that).
        assert!(
            info.dek_versions.len() <= MOVER_RECORDS / 40 + 1,
            "round {round}: {info:?}"
        );
        for i in 0..MOVER_RECORDS {
            assert_eq!(
                s.get(&kr("moving"), format!("r{i:04}").as_bytes())
                    .unwrap()
                    .map(|p| p.expose().to_vec()),
                Some(format!("v{i}").into_bytes()),
                "round {round}: record {i}"
            );
        }
        s.verify_audit()
            .unwrap()
            .unwrap_or_else(|b| panic!("round {round}: audit: {b}"));
    }
    println!(
        "move/compaction crash suite: {rounds} kills; {moves_cut} left a move to finish, {compactions_cut} left a second database generation"
    );
    assert!(
        moves_cut > 0,
        "no kill landed inside a move: the test tested nothing"
    );
}
