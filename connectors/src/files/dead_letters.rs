//! The dead-letter queue as an append-only JSON Lines file.

use std::path::Path;

use mmt_core::job::{ComponentError, DeadLetter, DeadLetterSink, JobId, Stage};

use super::log::{FileMode, Record, SharedLog};
use crate::error::{ConnectorError, Result};

/// Appends `DeadLetter`s as JSON lines to `dlq.jsonl`, at most one per
/// (job id, stage). Dead letters carry ids and reasons, never PHI.
///
/// Clones share the file (one per timely worker is fine).
#[derive(Debug, Clone)]
pub struct DeadLetterFileSink {
    log: SharedLog<DeadLetters>,
}

struct DeadLetters;

impl Record for DeadLetters {
    type Key = (JobId, Stage);
    const NAME: &'static str = "dead letter";

    fn key_of(line: &[u8]) -> serde_json::Result<Self::Key> {
        serde_json::from_slice::<DeadLetter>(line).map(|letter| (letter.job_id, letter.stage))
    }
}

impl DeadLetterFileSink {
    /// Opens (or creates) the file at `path`, repairing a crash's partial last
    /// line. Most callers use [`super::DeadLetterFileConfig::build`].
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            log: SharedLog::open(path, FileMode::PHI)?,
        })
    }

    /// Appends the letter unless one for its job and stage is in the file;
    /// returns whether it wrote.
    pub fn send_letter(&mut self, letter: &DeadLetter) -> Result<bool> {
        let mut log = self.log.lock();
        let key = (letter.job_id.clone(), letter.stage);
        if log.contains(&key) {
            return Ok(false);
        }
        let line = serde_json::to_vec(letter).map_err(|source| ConnectorError::Serialize {
            what: "dead letter",
            source,
        })?;
        log.append(key, &line)
    }
}

impl DeadLetterSink for DeadLetterFileSink {
    fn send(&mut self, letter: &DeadLetter) -> Result<(), ComponentError> {
        self.send_letter(letter).map(drop).map_err(Into::into)
    }
}
