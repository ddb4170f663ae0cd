//! The README's two commands are the contract with a fresh machine: CI must run exactly the test
//! command the README gives, and the main-job command must name something that exists.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// The commands in the README's first ```sh block, without comments.
fn readme_commands() -> Vec<String> {
    let readme = read("README.md");
    let start = readme.find("```sh\n").expect("README has a ```sh block") + 6;
    let block = &readme[start..];
    let block = &block[..block.find("```").unwrap()];
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_readme_leads_with_two_commands() {
    let cmds = readme_commands();
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert!(cmds[1].starts_with("cargo test"), "{cmds:?}");
}

#[test]
fn ci_runs_exactly_the_readme_test_command() {
    let test_cmd = &readme_commands()[1];
    let ci = read(".ci/run");
    assert!(
        ci.contains("set -euo pipefail"),
        ".ci/run must stop at the first failure"
    );
    // `a && b` under `set -e` does not stop when `a` fails (bash exempts all but the last
    // command of an && list), so CI runs each part of the README's command on a line of its own,
    // in order: the same commands, and a failure of any stops the run.
    let parts: Vec<&str> = test_cmd.split(" && ").map(str::trim).collect();
    let lines: Vec<&str> = ci.lines().map(str::trim).collect();
    let mut at = Vec::new();
    for part in &parts {
        let found: Vec<usize> = (0..lines.len()).filter(|i| lines[*i] == *part).collect();
        assert_eq!(
            found.len(),
            1,
            ".ci/run must run `{part}` (part of the README's test command) exactly once, on a line of its own"
        );
        at.push(found[0]);
    }
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        ".ci/run must run the parts of the README's test command in order"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("cargo test") && !parts.contains(l)),
        ".ci/run must not run another test command in its place"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("cargo test") && l.contains("&&")),
        ".ci/run must not chain test commands with && (a failure of the first would not stop it)"
    );
}
