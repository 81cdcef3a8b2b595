//! The audit trail as an append-only JSON Lines file, each line chained to
//! the one before it by hash (see [`super::chain`]), rotated by size.

use std::path::{Path, PathBuf};

use mmt_core::job::{AuditAction, AuditEvent, AuditSink, ComponentError, JobId};
use mmt_core::phi::{mask_reference, mask_text};
use serde::Serialize;

use super::chain::{genesis_link, link_to, rotated_files, rotated_name};
use super::log::{read_closed, Closed, FileMode, KeyedLog, Record, Repair, Shared};
use crate::error::{ConnectorError, Result};

/// Appends `AuditEvent`s as JSON lines to the `AUDIT_LOG_FILE`, at most one per
/// [`AuditEvent::key`] (job id, action and occurrence): a replayed commit
/// writes nothing twice, a second deletion of a resubmitted job is a second line.
///
/// Each line carries `prev`, the hash of the line before it, computed under
/// the same lock as the write: the clones of one sink (the commit stage, the
/// API) always extend one chain. When the file would pass the rotation size
/// it is renamed `<file>.<n>` and a new one started, whose first line names
/// the last line of the renamed one. Opening reads the keys of the rotated
/// files too, and continues the chain from the last line written.
///
/// The audit trail never holds transcript text or references in the clear: as a
/// last line of defence, `detail` values under keys that name references are
/// masked to their resource type and values under keys that name free text
/// (`text`, `transcript`, `source`, `file`, `name`) to their length.
///
/// Clones share the file (one per timely worker is fine). Sinks opened on
/// one file by several processes take its file lock (`flock`) for each
/// write and first read what the others appended, so they share one chain,
/// one set of keys and one rotation.
#[derive(Debug, Clone)]
pub struct AuditLogSink {
    trail: Shared<AuditTrail>,
}

struct AuditEvents;

impl Record for AuditEvents {
    type Key = (JobId, AuditAction, String);
    const NAME: &'static str = "audit event";

    fn key_of(line: &[u8]) -> serde_json::Result<Self::Key> {
        serde_json::from_slice::<AuditEvent>(line).map(|event| event.key())
    }
}

/// One line of the file: the event and its link to the line before.
#[derive(Serialize)]
struct ChainedLine<'a> {
    #[serde(flatten)]
    event: &'a AuditEvent,
    prev: &'a str,
}

/// The live file and the state of its chain.
#[derive(Debug)]
struct AuditTrail {
    log: KeyedLog<AuditEvents>,
    path: PathBuf,
    /// The `prev` of the next line: the hash of the last line written.
    prev: String,
    /// The `prev` of the live file's first line (genesis, or the hash of the
    /// last line of the newest rotated file).
    base: String,
    /// Rotate before a line would take the file past this many bytes.
    rotate_at: Option<u64>,
    /// The index the live file takes when it is next rotated.
    next_index: u64,
}

/// A writer that panicked while holding the trail: the file is re-read
/// before the next write, and the head of the chain with it.
impl Repair for AuditTrail {
    fn mark_needs_repair(&mut self) {
        self.log.mark_needs_repair();
    }
}

impl AuditTrail {
    fn open(path: &Path, rotate_at: Option<u64>) -> Result<Self> {
        let mut trail = Self {
            log: KeyedLog::open(path, FileMode::PHI)?,
            path: path.to_owned(),
            prev: genesis_link(),
            base: genesis_link(),
            rotate_at,
            next_index: 1,
        };
        trail.log.lock()?;
        let loaded = trail.load_rotated();
        trail.log.unlock();
        loaded?;
        Ok(trail)
    }

    /// Reads the keys of the rotated files and the link the live file starts
    /// from. Under the live file's lock, which a rotation needs: none can
    /// happen meanwhile (one that happened since the file was opened is
    /// followed first).
    fn load_rotated(&mut self) -> Result<()> {
        while !self.log.is_current()? {
            self.log.unlock();
            self.log.follow_path()?;
            self.log.lock()?;
        }
        let rotated = rotated_files(&self.path)?;
        for (_, file) in &rotated {
            let Closed { keys, last } = read_closed::<AuditEvents>(file)?;
            self.log.adopt_keys(keys);
            if let Some(last) = last {
                self.base = link_to(&last);
            }
        }
        self.next_index = rotated.last().map_or(1, |(index, _)| index + 1);
        self.log.catch_up()?;
        self.prev = head(&self.log, &self.base)?;
        Ok(())
    }

    /// Appends the event unless its key is in the trail; returns whether it
    /// wrote. Under the file lock, so writers in other processes (a
    /// retention CronJob beside `mmt serve`) extend the same chain.
    fn record(&mut self, event: &AuditEvent) -> Result<bool> {
        // Outside the file lock: a repair reopens the file, which takes it.
        self.log.repair_if_needed()?;
        let written = self.synchronise().and_then(|()| self.append(event));
        self.log.unlock();
        written
    }

    /// Takes the file lock on the live file, following a rotation another
    /// process made, and reads what other processes appended: the keys and
    /// the head of the chain are then the file's.
    fn synchronise(&mut self) -> Result<()> {
        self.log.lock()?;
        while !self.log.is_current()? {
            // The file was rotated away: finish reading it, then move on.
            self.log.catch_up()?;
            self.base = head(&self.log, &self.base)?;
            self.log.unlock();
            self.log.follow_path()?;
            self.next_index = next_index(&self.path)?;
            self.log.lock()?;
        }
        self.log.catch_up()?;
        self.prev = head(&self.log, &self.base)?;
        Ok(())
    }

    fn append(&mut self, event: &AuditEvent) -> Result<bool> {
        let key = event.key();
        if self.log.contains(&key) {
            return Ok(false);
        }
        let event = sanitised(event);
        let line = serde_json::to_vec(&ChainedLine {
            event: &event,
            prev: &self.prev,
        })
        .map_err(|source| ConnectorError::Serialize {
            what: "audit event",
            source,
        })?;
        if self.is_full_for(&line) {
            self.rotate()?;
        }
        let wrote = self.log.append(key, &line)?;
        if wrote {
            self.prev = link_to(&line);
        }
        Ok(wrote)
    }

    fn is_full_for(&self, line: &[u8]) -> bool {
        self.rotate_at
            .is_some_and(|max| self.log.len() > 0 && self.log.len() + line.len() as u64 + 1 > max)
    }

    /// Renames the live file `<file>.<n>` and starts a new one, which
    /// continues the chain.
    fn rotate(&mut self) -> Result<()> {
        let to = rotated_name(&self.path, self.next_index);
        self.log.rotate_to(&to)?;
        self.next_index += 1;
        self.base = self.prev.clone();
        tracing::info!(rotated_to = %to.display(), "audit trail rotated");
        Ok(())
    }
}

/// The index the live file `path` takes when it is next rotated.
fn next_index(path: &Path) -> Result<u64> {
    Ok(rotated_files(path)?
        .last()
        .map_or(1, |(index, _)| index + 1))
}

/// The `prev` of the next line of `log`, whose first line carries `base`.
fn head(log: &KeyedLog<AuditEvents>, base: &str) -> Result<String> {
    Ok(log
        .last_record()?
        .map_or_else(|| base.to_owned(), |last| link_to(&last)))
}

impl AuditLogSink {
    /// Opens (or creates) the audit file at `path`, repairing a crash's partial
    /// last line; never rotates. Most callers use [`super::AuditLogConfig::build`].
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_rotating(path, None)
    }

    /// [`AuditLogSink::open`], rotating the file before a line would take it
    /// past `rotate_at` bytes.
    pub fn open_rotating(path: &Path, rotate_at: Option<u64>) -> Result<Self> {
        Ok(Self {
            trail: Shared::new(AuditTrail::open(path, rotate_at)?),
        })
    }

    /// Appends the event unless one with its key is in the trail; returns whether it wrote.
    pub fn record_event(&mut self, event: &AuditEvent) -> Result<bool> {
        self.trail.lock().record(event)
    }
}

impl AuditSink for AuditLogSink {
    fn record(&mut self, event: &AuditEvent) -> Result<(), ComponentError> {
        self.record_event(event).map(drop).map_err(Into::into)
    }
}

/// The event with PHI-looking detail values masked.
fn sanitised(event: &AuditEvent) -> AuditEvent {
    let mut event = event.clone();
    for (key, value) in &mut event.detail {
        let key = key.to_ascii_lowercase();
        if ["patient", "encounter", "reference", "subject"]
            .iter()
            .any(|word| key.contains(word))
        {
            if !value.ends_with("***") {
                *value = mask_reference(value);
            }
        } else if ["text", "transcript", "source", "file", "name"]
            .iter()
            .any(|word| key.contains(word))
            && !value.starts_with("[redacted ")
        {
            *value = mask_text(value);
        }
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_in_detail_is_masked() {
        let mut event = AuditEvent {
            at: 1,
            action: AuditAction::JobCompleted,
            job_id: JobId("ab".into()),
            tenant: "t".into(),
            correlation_id: "c".into(),
            actor: "pipeline".into(),
            detail: Default::default(),
        };
        event.detail.insert("patient".into(), "Patient/123".into());
        event
            .detail
            .insert("encounter_reference".into(), "Patient/***".into());
        event
            .detail
            .insert("transcript".into(), "Mr Smith has diabetes".into());
        event
            .detail
            .insert("source_file".into(), "smith.wav".into());
        event.detail.insert("segments".into(), "4".into());
        let clean = sanitised(&event);
        assert_eq!(clean.detail["patient"], "Patient/***");
        assert_eq!(clean.detail["encounter_reference"], "Patient/***");
        assert_eq!(clean.detail["transcript"], "[redacted 21 chars]");
        assert_eq!(clean.detail["source_file"], "[redacted 9 chars]");
        assert_eq!(clean.detail["segments"], "4");
        assert_eq!(clean.key(), event.key());
    }

    fn deleted(correlation_id: &str) -> AuditEvent {
        AuditEvent {
            at: 1,
            action: AuditAction::JobDeleted,
            job_id: JobId("ab".into()),
            tenant: "t".into(),
            correlation_id: correlation_id.into(),
            actor: "api:someone".into(),
            detail: Default::default(),
        }
    }

    #[test]
    fn a_replay_is_written_once_and_a_second_occurrence_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut sink = AuditLogSink::open(&path).expect("open");
        assert!(sink.record_event(&deleted("generation-1")).expect("write"));
        assert!(
            !sink.record_event(&deleted("generation-1")).expect("replay"),
            "a replay of the same occurrence writes nothing"
        );
        assert!(
            sink.record_event(&deleted("generation-2")).expect("write"),
            "the same job deleted again after a resubmission is another event"
        );
        drop(sink);
        // The keys survive a reopen (a restarted process replaying its commit).
        let mut reopened = AuditLogSink::open(&path).expect("reopen");
        assert!(!reopened
            .record_event(&deleted("generation-2"))
            .expect("replay"));
        let lines = std::fs::read_to_string(&path).expect("read");
        assert_eq!(lines.lines().count(), 2, "{lines}");
    }

    use crate::files::chain::{verify, BreakReason};

    fn event(n: u32) -> AuditEvent {
        AuditEvent {
            at: i64::from(n),
            action: AuditAction::JobCompleted,
            job_id: JobId(format!("job{n}")),
            tenant: "t".into(),
            correlation_id: format!("c{n}"),
            actor: "pipeline".into(),
            detail: Default::default(),
        }
    }

    /// A trail of `n` events in a fresh folder.
    fn trail(n: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut sink = AuditLogSink::open(&path).expect("open");
        for i in 0..n {
            assert!(sink.record_event(&event(i)).expect("write"));
        }
        (dir, path)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").expect("write");
    }

    /// The first broken link: (line, reason).
    fn broken_at(path: &Path) -> (u64, BreakReason) {
        let verified = verify(path).expect("verify");
        let broken = verified.broken.expect("a broken link");
        assert_eq!(broken.file, path);
        (broken.line, broken.reason)
    }

    #[test]
    fn each_line_names_the_hash_of_the_one_before() {
        let (_dir, path) = trail(3);
        let lines = lines(&path);
        let prev = |line: &str| {
            serde_json::from_str::<serde_json::Value>(line).expect("json")["prev"]
                .as_str()
                .expect("prev")
                .to_owned()
        };
        assert_eq!(prev(&lines[0]), genesis_link());
        assert_eq!(
            prev(&lines[1]),
            mmt_core::content::content_hash(lines[0].as_bytes())
        );
        assert_eq!(prev(&lines[2]), link_to(lines[1].as_bytes()));
        let verified = verify(&path).expect("verify");
        assert!(verified.is_intact(), "{verified:?}");
        assert_eq!(verified.records, 3);
        assert_eq!(verified.head, Some(link_to(lines[2].as_bytes())));
    }

    #[test]
    fn an_edited_line_is_caught_at_the_next_one() {
        let (_dir, path) = trail(4);
        let mut edited = lines(&path);
        edited[1] = edited[1].replace("\"tenant\":\"t\"", "\"tenant\":\"u\"");
        write_lines(&path, &edited);
        assert_eq!(broken_at(&path), (3, BreakReason::Mismatch));
    }

    #[test]
    fn a_deleted_line_is_caught() {
        let (_dir, path) = trail(4);
        let mut kept = lines(&path);
        kept.remove(2);
        write_lines(&path, &kept);
        assert_eq!(broken_at(&path), (3, BreakReason::Mismatch));
        // The first line removed: the new first line does not start the chain.
        let mut kept = lines(&path);
        kept.remove(0);
        write_lines(&path, &kept);
        assert_eq!(broken_at(&path), (1, BreakReason::NotGenesis));
    }

    #[test]
    fn swapped_lines_are_caught() {
        let (_dir, path) = trail(4);
        let mut swapped = lines(&path);
        swapped.swap(1, 2);
        write_lines(&path, &swapped);
        assert_eq!(broken_at(&path), (2, BreakReason::Mismatch));
    }

    #[test]
    fn a_line_without_a_link_is_caught() {
        let (_dir, path) = trail(2);
        let mut unlinked = lines(&path);
        unlinked.push(serde_json::to_string(&event(9)).expect("json"));
        write_lines(&path, &unlinked);
        assert_eq!(broken_at(&path), (3, BreakReason::Unlinked));
    }

    #[test]
    fn the_chain_continues_across_a_restart() {
        let (_dir, path) = trail(2);
        let mut reopened = AuditLogSink::open(&path).expect("reopen");
        assert!(reopened.record_event(&event(2)).expect("write"));
        let verified = verify(&path).expect("verify");
        assert!(verified.is_intact(), "{verified:?}");
        assert_eq!(verified.records, 3);
    }

    #[test]
    fn the_chain_continues_across_rotation_and_breaks_are_found_in_any_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let line_len = {
            let (_d, p) = trail(1);
            std::fs::metadata(&p).expect("meta").len()
        };
        // Room for two lines a file (the lines are about the same length).
        let rotate_at = line_len * 2 + line_len / 2;
        let mut sink = AuditLogSink::open_rotating(&path, Some(rotate_at)).expect("open");
        for i in 0..5 {
            sink.record_event(&event(i)).expect("write");
        }
        drop(sink);
        // A restart continues the numbering, the keys and the chain.
        let mut sink = AuditLogSink::open_rotating(&path, Some(rotate_at)).expect("reopen");
        assert!(
            !sink.record_event(&event(0)).expect("replay"),
            "keys of rotated files count"
        );
        sink.record_event(&event(5)).expect("write");
        let first = rotated_name(&path, 1);
        let second = rotated_name(&path, 2);
        assert_eq!(lines(&first).len(), 2);
        assert_eq!(lines(&second).len(), 2);
        assert_eq!(lines(&path).len(), 2);
        let verified = verify(&path).expect("verify");
        assert!(verified.is_intact(), "{verified:?}");
        assert_eq!(verified.records, 6);
        assert_eq!(
            verified.files,
            [first.clone(), second.clone(), path.clone()]
        );

        // A line removed from the end of a rotated file: the next file's
        // first line no longer chains.
        let original = lines(&second);
        write_lines(&second, &original[..1]);
        let broken = verify(&path).expect("verify").broken.expect("broken");
        assert_eq!((broken.file, broken.line), (path.clone(), 1));
        write_lines(&second, &original);
        // A whole rotated file removed.
        std::fs::remove_file(&first).expect("remove");
        let broken = verify(&path).expect("verify").broken.expect("broken");
        assert_eq!(
            (broken.file, broken.reason),
            (second, BreakReason::NotGenesis)
        );
    }

    #[test]
    fn concurrent_writers_of_one_trail_keep_one_chain() {
        let (_dir, path) = trail(0);
        let sink = AuditLogSink::open(&path).expect("open");
        let writers: Vec<_> = (0..4u32)
            .map(|w| {
                let mut sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        sink.record_event(&event(w * 100 + i)).expect("write");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer");
        }
        let verified = verify(&path).expect("verify");
        assert!(verified.is_intact(), "{verified:?}");
        assert_eq!(verified.records, 100);
    }

    /// Two sinks on one file stand for two processes: each has its own
    /// descriptor, and `flock` locks of two descriptors exclude each other
    /// as two processes' do.
    #[test]
    fn writers_in_two_processes_share_one_chain_and_one_set_of_keys() {
        let (_dir, path) = trail(0);
        let mut serve = AuditLogSink::open(&path).expect("open");
        let mut cron = AuditLogSink::open(&path).expect("open");
        assert!(serve.record_event(&event(0)).expect("write"));
        assert!(cron.record_event(&event(1)).expect("write"));
        assert!(serve.record_event(&event(2)).expect("write"));
        assert!(
            !cron.record_event(&event(0)).expect("replay"),
            "the other writer's line counts"
        );
        let verified = verify(&path).expect("verify");
        assert!(verified.is_intact(), "{verified:?}");
        assert_eq!(verified.records, 3);
    }

    #[test]
    fn a_rotation_by_another_writer_is_followed() {
        let (_dir, path) = trail(0);
        let line_len = {
            let (_d, p) = trail(1);
            std::fs::metadata(&p).expect("meta").len()
        };
        let rotate_at = Some(line_len * 2 + line_len / 2);
        let mut first = AuditLogSink::open_rotating(&path, rotate_at).expect("open");
        let mut second = AuditLogSink::open_rotating(&path, rotate_at).expect("open");
        for i in 0..9 {
            let writer = if i % 3 == 0 { &mut second } else { &mut first };
            assert!(writer.record_event(&event(i)).expect("write"), "event {i}");
        }
        assert!(!second.record_event(&event(1)).expect("replay"));
        let verified = verify(&path).expect("verify");
        assert!(verified.is_intact(), "{verified:?}");
        assert_eq!(verified.records, 9);
        assert_eq!(verified.files.len(), 5, "{:?}", verified.files);
    }

    #[test]
    fn concurrent_writers_in_two_processes_keep_one_chain() {
        let (_dir, path) = trail(0);
        let sinks = [
            AuditLogSink::open_rotating(&path, Some(4096)).expect("open"),
            AuditLogSink::open_rotating(&path, Some(4096)).expect("open"),
        ];
        let writers: Vec<_> = (0..4u32)
            .map(|w| {
                let mut sink = sinks[w as usize % 2].clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        sink.record_event(&event(w * 100 + i)).expect("write");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer");
        }
        let verified = verify(&path).expect("verify");
        assert!(verified.is_intact(), "{verified:?}");
        assert_eq!(verified.records, 100);
        assert!(verified.files.len() > 2, "rotated: {:?}", verified.files);
    }
}
