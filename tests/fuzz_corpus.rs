//! Replays every committed fuzz input (seeds in `fuzz/corpus/`, fixed findings in
//! `fuzz/regressions/`) through the same entry points the fuzz targets call, so each parser of
//! untrusted input stays covered by `cargo test` without the fuzz toolchain.

use std::path::{Path, PathBuf};

use veza_sfu::fuzzing::{Outcome, TARGETS};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.expect("readable directory").path()).collect();
    files.sort();
    files
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Each target's seeds must reach the deep path (something accepted) and the refusal path
/// (something refused): a fixture that stopped answering offers, or a parser that started
/// taking anything, fails here rather than fuzzing nothing.
#[test]
fn every_seed_is_handled_and_each_target_accepts_and_refuses_some() {
    for (name, run) in TARGETS {
        let seeds = inputs(&fuzz_dir().join("corpus").join(name));
        assert!(!seeds.is_empty(), "fuzz/corpus/{name}/ has no seeds");
        let (mut accepted, mut refused) = (Vec::new(), Vec::new());
        for seed in &seeds {
            let data = std::fs::read(seed).expect("readable seed");
            let file = seed.file_name().expect("a file").to_string_lossy().into_owned();
            match run(&data) {
                Outcome::Accepted => accepted.push(file),
                Outcome::Refused => refused.push(file),
            }
        }
        assert!(!accepted.is_empty(), "{name}: no seed is accepted (refused: {refused:?})");
        assert!(!refused.is_empty(), "{name}: no seed is refused (accepted: {accepted:?})");
    }
}

/// Inputs a fuzzer once crashed on stay fixed.
#[test]
fn fixed_findings_stay_fixed() {
    for (name, run) in TARGETS {
        for input in inputs(&fuzz_dir().join("regressions").join(name)) {
            run(&std::fs::read(&input).expect("readable regression input"));
        }
    }
}

/// A corpus directory without a target (or the reverse) means a renamed target lost its inputs.
#[test]
fn corpus_directories_match_the_targets() {
    for kind in ["corpus", "regressions"] {
        for dir in inputs(&fuzz_dir().join(kind)) {
            let name = dir.file_name().expect("a directory").to_string_lossy().into_owned();
            assert!(TARGETS.iter().any(|(t, _)| *t == name), "fuzz/{kind}/{name} matches no target");
        }
    }
    let listed: Vec<PathBuf> = inputs(&fuzz_dir().join("fuzz_targets"));
    for (name, _) in TARGETS {
        let file = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(listed.contains(&file), "no fuzz/fuzz_targets/{name}.rs");
    }
    assert_eq!(listed.len(), TARGETS.len(), "a fuzz target outside veza_sfu::fuzzing::TARGETS: {listed:?}");
}
