//! Looking for strings that must never leave a process (PHI canaries,
//! secrets) in everything it left behind: its output, and every byte of every
//! file it wrote (logs, dead letters, the audit trail, the SQLite store with
//! its write-ahead log, uploads). Files are scanned as bytes, so a value in a
//! SQLite page is found as surely as one in a JSON line.
//!
//! Used through `#[path = "common/scan.rs"]` by `tests/phi_canaries.rs` and
//! `tests/secrets_in_output.rs`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// PHI-looking values the tests put into every field of every input: a
/// patient's name, a FHIR reference with an MRN, a date of birth.
pub const CANARIES: [&str; 3] = ["Smith John", "Patient/MRN-4471-CANARY", "1958-03-12"];

/// What is searched for: each canary and the distinctive parts of it, so a
/// value cut, re-quoted or re-spelled (`Smith_John`, `19580312`) is found too.
pub const CANARY_PARTS: [&str; 6] = [
    "Smith John",
    "Smith",
    "MRN-4471",
    "CANARY",
    "1958-03-12",
    "19580312",
];

/// Every file under `dir`, recursively, with its content.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files.push((path, bytes));
            }
        }
    }
    files
}

/// Where `needle` occurs in `haystack`, with some context, if it does.
pub fn find(haystack: &[u8], needle: &str) -> Option<String> {
    let at = haystack
        .windows(needle.len())
        .position(|window| window == needle.as_bytes())?;
    let from = at.saturating_sub(160);
    let to = (at + needle.len() + 160).min(haystack.len());
    Some(String::from_utf8_lossy(&haystack[from..to]).into_owned())
}

/// Fails naming the first of `needles` found in any of `texts` (label, bytes).
pub fn assert_absent(texts: &[(String, Vec<u8>)], needles: &[&str]) {
    for (label, bytes) in texts {
        for needle in needles {
            if let Some(context) = find(bytes, needle) {
                panic!("{needle:?} leaked into {label}: …{context}…");
            }
        }
    }
}

/// `texts` plus every file under `dir`, labelled by path.
pub fn with_files(mut texts: Vec<(String, Vec<u8>)>, dir: &Path) -> Vec<(String, Vec<u8>)> {
    texts.extend(
        files_under(dir)
            .into_iter()
            .map(|(path, bytes)| (path.display().to_string(), bytes)),
    );
    texts
}

/// Whether `needle` occurs in any file under `dir` whose name contains `name`.
pub fn in_files(dir: &Path, name: &str, needle: &str) -> bool {
    files_under(dir).iter().any(|(path, bytes)| {
        path.file_name()
            .is_some_and(|file| file.to_string_lossy().contains(name))
            && find(bytes, needle).is_some()
    })
}
