//! The reprocessor's record of each dead letter: pending (with its attempts
//! and when the next one is due), parked, or resolved.
//!
//! `dlq.jsonl` is append-only and one line per (job, stage); what the
//! reprocessor did with a letter lives beside it in `dlq.state.json`, one
//! entry per job id, rewritten whole (temporary file, `fsync`, rename) so a
//! crash leaves the old or the new state, never half of one. Every change is
//! made under the advisory lock of `dlq.state.lock` (`flock`), so two
//! reprocessors (a CronJob run overlapping the next, an operator's `park`)
//! never both retry a letter or lose each other's writes.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use mmt_core::job::{DeadLetter, JobId};
use serde::{Deserialize, Serialize};

use super::log::trim_newline;
use crate::error::{ConnectorError, Result};

/// Mode of the state and lock files: they name job ids and tenants.
const FILE_MODE: u32 = 0o600;

/// Where the reprocessor stands with one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Retryable and not given up on: retried when `next_at` has passed.
    Pending,
    /// Never retried again: a permanent failure, attempts exhausted, or an
    /// operator's `mmt dlq park`.
    Parked,
    /// Reprocessed: its job completed.
    Resolved,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Parked => "parked",
            Self::Resolved => "resolved",
        }
    }
}

/// One dead letter's reprocessing state. Ids and PHI-free reasons only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LetterState {
    pub disposition: Disposition,
    /// Reprocessing attempts made (the pipeline's own attempts not counted).
    pub attempts: u32,
    /// Unix seconds before which the next attempt is not made.
    pub next_at: i64,
    /// Unix seconds of the last change.
    pub updated_at: i64,
    /// The job a retry ran, when it is not the letter's own (a file that was
    /// unreadable is named by its file; once readable, by its content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<JobId>,
    /// Why it is parked, or why the last attempt failed (PHI-free).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Its message was republished to the broker's job queue and the
    /// outcome is not in the store yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_flight: bool,
}

impl LetterState {
    /// A letter the reprocessor has not looked at yet: due now.
    pub fn new(now: i64) -> Self {
        Self {
            disposition: Disposition::Pending,
            attempts: 0,
            next_at: 0,
            updated_at: now,
            target: None,
            note: None,
            in_flight: false,
        }
    }

    /// Whether the letter may still be retried.
    pub fn is_pending(&self) -> bool {
        self.disposition == Disposition::Pending
    }
}

/// Every letter's state, by job id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqState {
    pub letters: BTreeMap<JobId, LetterState>,
}

/// The newest dead letter of each job in `dlq.jsonl` (a job dead-lettered at
/// two stages, or again after a retry, is one letter: its latest). A missing
/// file has no letters; a crash's partial last line is skipped.
pub fn read_dead_letters(path: &Path) -> Result<BTreeMap<JobId, DeadLetter>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => return Err(ConnectorError::io("reading", path, source)),
    };
    let mut letters: BTreeMap<JobId, DeadLetter> = BTreeMap::new();
    let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
    for (number, line) in lines.iter().enumerate() {
        let complete = line.ends_with(b"\n");
        let text = trim_newline(line);
        if text.is_empty() {
            continue;
        }
        match serde_json::from_slice::<DeadLetter>(text) {
            Ok(letter) => {
                let newer = letters
                    .get(&letter.job_id)
                    .is_none_or(|known| known.at <= letter.at);
                if newer {
                    letters.insert(letter.job_id.clone(), letter);
                }
            }
            // A crash's partial last line: the sink cuts it off on its next open.
            Err(_) if !complete && number + 1 == lines.len() => {}
            Err(err) => {
                return Err(ConnectorError::Corrupt {
                    path: path.to_owned(),
                    line: number as u64 + 1,
                    reason: err.to_string(),
                })
            }
        }
    }
    Ok(letters)
}

/// The state file beside `dlq.jsonl`, and its lock.
#[derive(Debug, Clone)]
pub struct DlqStateFile {
    path: PathBuf,
    lock_path: PathBuf,
}

/// The state file's lock, held until dropped; the only way to read it for a
/// change and to write it.
#[derive(Debug)]
pub struct DlqStateLock {
    file: File,
    state: DlqStateFile,
}

impl DlqStateFile {
    /// The state file's name, beside `dlq.jsonl`.
    pub const FILE_NAME: &'static str = "dlq.state.json";
    const LOCK_NAME: &'static str = "dlq.state.lock";

    /// The state of the dead letters in `dir` (the folder of `dlq.jsonl`).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join(Self::FILE_NAME),
            lock_path: dir.join(Self::LOCK_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the lock, waiting for another holder if `wait`; `None` if it is
    /// held and `wait` is false (another reprocessor is at work).
    pub fn lock(&self, wait: bool) -> Result<Option<DlqStateLock>> {
        use rustix::fs::{flock, FlockOperation};
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&self.lock_path)
            .map_err(|source| ConnectorError::io("opening", &self.lock_path, source))?;
        let operation = if wait {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::NonBlockingLockExclusive
        };
        match flock(&file, operation) {
            // A file system without locks: one reprocessor is the operator's to ensure.
            Ok(()) | Err(rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP) => {
                Ok(Some(DlqStateLock {
                    file,
                    state: self.clone(),
                }))
            }
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(errno) => Err(ConnectorError::io("locking", &self.lock_path, errno.into())),
        }
    }

    /// Reads the state without the lock (for listing): a rename makes every
    /// write whole, so this sees one complete state.
    pub fn read(&self) -> Result<DlqState> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DlqState::default())
            }
            Err(source) => return Err(ConnectorError::io("reading", &self.path, source)),
        };
        serde_json::from_slice(&bytes).map_err(|err| ConnectorError::Corrupt {
            path: self.path.clone(),
            line: err.line() as u64,
            reason: err.to_string(),
        })
    }
}

impl DlqStateLock {
    /// The state as it is now.
    pub fn load(&self) -> Result<DlqState> {
        self.state.read()
    }

    /// Replaces the state, durably: a temporary file, synced, renamed over
    /// the old one, and the folder synced.
    pub fn save(&self, state: &DlqState) -> Result<()> {
        let path = &self.state.path;
        let mut temp_name = path.file_name().unwrap_or_default().to_os_string();
        temp_name.push(".tmp");
        let temp = path.with_file_name(temp_name);
        let bytes =
            serde_json::to_vec_pretty(state).map_err(|source| ConnectorError::Serialize {
                what: "dead-letter state",
                source,
            })?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&temp)
            .map_err(|source| ConnectorError::io("creating", &temp, source))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|source| ConnectorError::io("writing", &temp, source))?;
        std::fs::rename(&temp, path)
            .map_err(|source| ConnectorError::io("renaming", path, source))?;
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|source| ConnectorError::io("syncing", dir, source))?;
        }
        Ok(())
    }
}

impl Drop for DlqStateLock {
    fn drop(&mut self) {
        // Closing the file releases the lock anyway; unlocking says so early.
        let _ = rustix::fs::flock(&self.file, rustix::fs::FlockOperation::Unlock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmt_core::error::ErrorClass;
    use mmt_core::job::Stage;

    fn letter(job: &str, at: i64, retryable: bool) -> DeadLetter {
        DeadLetter {
            job_id: JobId(job.into()),
            tenant: "t".into(),
            correlation_id: "c".into(),
            stage: Stage::Decode,
            class: ErrorClass::External { retryable },
            reason: "r".into(),
            attempts: 1,
            at,
        }
    }

    fn line(letter: &DeadLetter) -> String {
        format!("{}\n", serde_json::to_string(letter).unwrap())
    }

    #[test]
    fn the_newest_letter_of_each_job_is_read_and_a_partial_line_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlq.jsonl");
        assert!(read_dead_letters(&path).unwrap().is_empty());
        let text = line(&letter("a", 5, true)) + &line(&letter("b", 1, false));
        let text = text + &line(&letter("a", 9, false)) + "{\"job_id\":";
        std::fs::write(&path, text).unwrap();
        let letters = read_dead_letters(&path).unwrap();
        assert_eq!(letters.len(), 2);
        assert_eq!(letters[&JobId("a".into())].at, 9);
        assert!(!letters[&JobId("a".into())].class.is_retryable());
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(matches!(
            read_dead_letters(&path),
            Err(ConnectorError::Corrupt { line: 1, .. })
        ));
    }

    #[test]
    fn state_survives_a_reopen_and_the_lock_excludes_a_second_holder() {
        let dir = tempfile::tempdir().unwrap();
        let file = DlqStateFile::in_dir(dir.path());
        assert_eq!(file.read().unwrap(), DlqState::default());
        let lock = file.lock(false).unwrap().expect("free");
        assert!(file.lock(false).unwrap().is_none(), "held");
        let mut state = lock.load().unwrap();
        let mut entry = LetterState::new(7);
        entry.disposition = Disposition::Parked;
        entry.note = Some("permanent".into());
        state.letters.insert(JobId("a".into()), entry);
        lock.save(&state).unwrap();
        drop(lock);
        let again = file.lock(false).unwrap().expect("released");
        assert_eq!(again.load().unwrap(), state);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
