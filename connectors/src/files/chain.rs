//! The hash chain of the audit trail, its rotated files, and its verification.
//!
//! Every audit line carries `prev`: the hex SHA-256 ([`content_hash`]) of the
//! bytes of the line before it (without its newline), and the first line of
//! the whole trail the hash of [`GENESIS`]. Editing a line changes its hash,
//! so the next line no longer names it; removing or reordering lines breaks
//! a link the same way. The chain runs across rotation: the live file
//! `audit.jsonl` is renamed `audit.jsonl.<n>` (n = 1, 2, … oldest first) and
//! the first line of the new file names the last line of the renamed one.
//!
//! What a chain cannot show on its own: the newest lines cut off the end (no
//! later line names them), or a trail rewritten whole with new hashes. The
//! head ([`Verification::head`], printed by `mmt audit verify`) is the hash
//! the next line will carry: kept elsewhere (a ticket, the SIEM) it anchors
//! everything up to it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use mmt_core::content::content_hash;
use serde::Deserialize;

use super::log::trim_newline;
use crate::error::{ConnectorError, Result};

/// What the first line of a trail names as its predecessor (hashed).
pub const GENESIS: &[u8] = b"mmt audit trail";

/// The `prev` of the first line of a trail.
pub fn genesis_link() -> String {
    content_hash(GENESIS)
}

/// The `prev` of the line after `record` (its bytes without the newline).
pub fn link_to(record: &[u8]) -> String {
    content_hash(record)
}

/// The name the live file `path` takes when it is rotated for the `index`-th time.
pub fn rotated_name(path: &Path, index: u64) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{index}"));
    path.with_file_name(name)
}

/// The rotated files of the live file `path` (`<name>.<n>`), oldest first,
/// with their index.
pub fn rotated_files(path: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConnectorError::io("listing", dir, source)),
    };
    let mut rotated = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConnectorError::io("listing", dir, source))?;
        let file_name = entry.file_name();
        let index = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix('.'))
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(index) = index {
            rotated.push((index, dir.join(file_name)));
        }
    }
    rotated.sort();
    Ok(rotated)
}

/// Where a link of the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The file holding the line that does not chain.
    pub file: PathBuf,
    /// Its line number in that file (from 1).
    pub line: u64,
    /// What is wrong with it.
    pub reason: BreakReason,
}

/// Why a line does not chain to the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakReason {
    /// Its `prev` is not the hash of the line before it: that line was
    /// edited, or lines were removed or reordered just before this one.
    Mismatch,
    /// The first line of the trail does not start from the genesis value:
    /// lines (or whole rotated files) were removed from the beginning.
    NotGenesis,
    /// The line has no `prev` (or is not a JSON object).
    Unlinked,
}

impl std::fmt::Display for BreakReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Mismatch => {
                "does not chain to the line before it (that line was edited, or lines \
                 before this one were removed or reordered)"
            }
            Self::NotGenesis => {
                "is the first line of the trail but does not start the chain (lines or \
                 rotated files before it were removed)"
            }
            Self::Unlinked => "carries no link (`prev`) to the line before it",
        })
    }
}

impl std::fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} line {}: {}",
            self.file.display(),
            self.line,
            self.reason
        )
    }
}

/// What checking a trail found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// The files read, oldest first (the rotated ones, then the live one).
    pub files: Vec<PathBuf>,
    /// Lines that chain correctly, up to the first broken link.
    pub records: u64,
    /// The first broken link, if any.
    pub broken: Option<BrokenLink>,
    /// The live file ends in an unfinished line (a crash during a write; the
    /// writer cuts it off when it next opens the file). Not counted.
    pub unfinished_tail: bool,
    /// The `prev` the next line will carry (the hash of the last line), when
    /// the trail is intact.
    pub head: Option<String>,
}

impl Verification {
    /// Whether every link holds.
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// The field of a line that links it.
#[derive(Deserialize)]
struct Link {
    prev: Option<String>,
}

/// Checks every link of the trail whose live file is `path`: its rotated
/// files in order, then the live file. Stops at the first broken link.
pub fn verify(path: &Path) -> Result<Verification> {
    let mut files: Vec<PathBuf> = rotated_files(path)?
        .into_iter()
        .map(|(_, file)| file)
        .collect();
    if path.exists() || files.is_empty() {
        files.push(path.to_owned());
    }
    let mut expected = genesis_link();
    let mut records = 0;
    let mut unfinished_tail = false;
    let last = files.len().saturating_sub(1);
    for (index, file) in files.clone().iter().enumerate() {
        let handle =
            File::open(file).map_err(|source| ConnectorError::io("opening", file, source))?;
        let mut reader = BufReader::new(handle);
        let mut line = Vec::new();
        let mut line_no = 0u64;
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|source| ConnectorError::io("reading", file, source))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let complete = line.last() == Some(&b'\n');
            let body = trim_newline(&line);
            if complete && body.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if !complete && index == last {
                unfinished_tail = true;
                break;
            }
            let reason = match serde_json::from_slice::<Link>(body) {
                Ok(Link { prev: Some(prev) }) if prev == expected => None,
                Ok(Link { prev: Some(_) }) if records == 0 => Some(BreakReason::NotGenesis),
                Ok(Link { prev: Some(_) }) => Some(BreakReason::Mismatch),
                Ok(Link { prev: None }) | Err(_) => Some(BreakReason::Unlinked),
            };
            if let Some(reason) = reason {
                return Ok(Verification {
                    files,
                    records,
                    broken: Some(BrokenLink {
                        file: file.clone(),
                        line: line_no,
                        reason,
                    }),
                    unfinished_tail,
                    head: None,
                });
            }
            expected = link_to(body);
            records += 1;
        }
    }
    Ok(Verification {
        files,
        records,
        broken: None,
        unfinished_tail,
        head: Some(expected),
    })
}
