//! Helpers shared by the integration tests of the `mmt` binary.

#![allow(dead_code)]

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The workspace root (this package lives there).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the set-up (model export, ONNX Runtime) has been run. Under CI a
/// missing set-up is a failure, elsewhere the caller skips with a message.
pub fn model_ready() -> bool {
    let ready = root().join("models/tiny.en/mmt-model.json").is_file();
    if !ready {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "models/tiny.en is missing under CI: `make setup` must run first"
        );
        eprintln!("skipping: run `make setup` to export the model");
    }
    ready
}

/// The shared evaluation folder `../shared/eval/<set>`, when it exists.
pub fn eval_set(set: &str) -> Option<PathBuf> {
    let dir = root().join("../shared/eval").join(set);
    if dir.join("manifest.jsonl").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipping the extended evaluation: {} is absent",
            dir.display()
        );
        None
    }
}

/// One line of a `manifest.jsonl`.
#[derive(Debug, Deserialize)]
pub struct ManifestEntry {
    pub audio: String,
    pub text: String,
}

pub fn read_manifest(dir: &Path) -> Vec<ManifestEntry> {
    let text = std::fs::read_to_string(dir.join("manifest.jsonl")).expect("manifest readable");
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("manifest line is JSON"))
        .collect()
}

/// Lowercase, punctuation stripped (apostrophes inside words kept), split on whitespace.
pub fn normalize(text: &str) -> Vec<String> {
    let cleaned: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect();
    cleaned
        .split_whitespace()
        .map(|word| word.trim_matches('\'').to_owned())
        .filter(|word| !word.is_empty())
        .collect()
}

/// Word-level edit distance between reference and hypothesis.
pub fn word_errors(reference: &[String], hypothesis: &[String]) -> usize {
    let mut previous: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut current = vec![i + 1; hypothesis.len() + 1];
        for (j, h) in hypothesis.iter().enumerate() {
            let substitution = previous[j] + usize::from(r != h);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[hypothesis.len()]
}

/// Runs `mmt` with `args`; returns (status, stdout, stderr).
pub fn mmt(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    mmt_with_env(args, &[])
}

/// Runs `mmt` with `args` and extra environment variables.
pub fn mmt_with_env(
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .output()
        .expect("mmt runs");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
