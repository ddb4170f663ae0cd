//! Replays every committed fuzz input (seeds and saved crashes) through the same checks the fuzz
//! targets run, so a crash found once stays fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use strongroom_fuzz_checks::TARGETS;

#[test]
fn every_saved_fuzz_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (name, check) in TARGETS {
        let mut seeds = 0;
        for dir in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for e in entries {
                let path = e.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(
                    outcome.is_ok(),
                    "{} fails its target {name}",
                    path.display()
                );
                replayed += 1;
                seeds += usize::from(dir == "seeds");
            }
        }
        assert!(seeds > 0, "fuzz target {name} has no committed seeds");
    }
    assert!(replayed >= TARGETS.len());
}

#[test]
fn every_fuzz_target_has_a_check_and_a_seed_folder() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let bins = manifest.matches("[[bin]]").count();
    assert_eq!(
        bins,
        TARGETS.len(),
        "fuzz/Cargo.toml and fuzz_checks::TARGETS disagree"
    );
    for (name, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} missing in fuzz/Cargo.toml"
        );
        assert!(
            root.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .exists()
        );
    }
}

#[test]
fn every_seed_and_regression_folder_belongs_to_a_target() {
    // A folder for a renamed or removed target would silently stop being replayed.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if !path.is_dir() {
                continue;
            }
            let folder = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                TARGETS.iter().any(|(name, _)| *name == folder),
                "fuzz/{dir}/{folder} is not a fuzz target (fuzz_checks::TARGETS)"
            );
        }
    }
}
