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
    assert_eq!(
        ci.lines().filter(|l| l.trim() == test_cmd).count(),
        1,
        ".ci/run must run the README's test command, exactly, once"
    );
    assert!(
        !ci.lines()
            .any(|l| l.trim().starts_with("cargo test") && l.trim() != test_cmd),
        ".ci/run must not run another test command in its place"
    );
}
