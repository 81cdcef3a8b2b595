//! The directory source: audio files in a folder become source records.
//!
//! Each scan is one ingest batch (an epoch). A file is not read into memory: it
//! is hashed as a stream (its content is the job's identity), and its record
//! points at it, so that decoding streams it too (see
//! `mmt_operators::decode`); an optional
//! sidecar `<name>.json` beside it gives the tenant and FHIR references:
//! `{"tenant": "clinic-a", "patient": "Patient/123", "encounter": "Encounter/9"}`.
//!
//! When following a folder, files may still be being written when a scan sees
//! them (a copy in progress, a recorder flushing). Such a file read early would
//! be transcribed cut short, or dead-lettered as empty, and never read again.
//! So a followed file is handed out only once two scans an interval apart saw
//! the same size and modification time.

use mmt_core::input::{
    is_tenant, join, read_json, reference_problem, FieldProblem, JsonShape, TENANT_RULE,
};
use mmt_core::job::{unix_now, ComponentError};
use mmt_core::source::{AudioFile, Delivery, DeliveryTag, JobSource, Settlement};
use mmt_core::ErrorClass;
use mmt_operators::identity::content_hash_of;
use mmt_operators::records::SourceRecord;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Extensions the source picks up (case-insensitive).
const AUDIO_EXTENSIONS: &[&str] = &["wav", "flac", "mp3", "ogg", "opus", "oga"];

/// Files larger than this are refused as records (dead-lettered by decode as
/// unreadable). Decoding streams a file, so this no longer guards memory; the
/// duration limit (`MMT_MAX_AUDIO_SECONDS`) is what bounds a recording.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Optional per-file metadata.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    /// Tenant owning the recording (default: the run's tenant).
    tenant: Option<String>,
    /// FHIR reference of the patient, e.g. `Patient/123`.
    patient: Option<String>,
    /// FHIR reference of the encounter, e.g. `Encounter/9`.
    encounter: Option<String>,
}

impl Sidecar {
    fn problems(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if self
            .tenant
            .as_deref()
            .is_some_and(|tenant| !is_tenant(tenant))
        {
            problems.push(FieldProblem::new("tenant", TENANT_RULE));
        }
        problems.extend(reference_problem(
            "patient",
            "Patient",
            self.patient.as_deref(),
        ));
        problems.extend(reference_problem(
            "encounter",
            "Encounter",
            self.encounter.as_deref(),
        ));
        problems
    }
}

/// Watches one folder and remembers what it has already handed out.
///
/// Files are not moved or deleted once processed: the job store remembers them
/// (a rerun over the same folder finds every job finished), so settling is a
/// no-op here.
#[derive(Debug)]
pub struct DirectorySource {
    dir: PathBuf,
    tenant: String,
    handed_out: HashSet<PathBuf>,
    /// Files the last scan saw but did not hand out (still changing, or past
    /// its limit), as they were then.
    last_seen: HashMap<PathBuf, FileState>,
    /// Keep watching after the folder is read (`--follow`), rescanning this often.
    follow: Option<Duration>,
    last_scan: Option<Instant>,
    /// The last scan stopped at its limit: scan again without waiting.
    more_waiting: bool,
    exhausted: bool,
    next_tag: u64,
}

/// What a scan saw of a file: a change between scans means it is still written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileState {
    len: u64,
    modified: Option<SystemTime>,
}

impl FileState {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            len: metadata.len(),
            modified: metadata.modified().ok(),
        }
    }
}

/// A file that could not be read; it still becomes a record, which decode dead-letters.
#[derive(Debug)]
pub struct Unreadable {
    pub path: PathBuf,
    pub reason: String,
}

impl DirectorySource {
    /// The record of a file that could not be read: no audio, and the reason.
    pub fn unreadable_record(&self, unreadable: Unreadable, received_at: i64) -> SourceRecord {
        SourceRecord {
            tenant: self.tenant.clone(),
            source: file_name(&unreadable.path),
            bytes: Vec::new(),
            extension: None,
            patient_reference: None,
            encounter_reference: None,
            received_at,
            read_error: Some(unreadable.reason),
            ..SourceRecord::default()
        }
    }
}

impl DirectorySource {
    pub fn new(dir: impl Into<PathBuf>, tenant: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            tenant: tenant.into(),
            handed_out: HashSet::new(),
            last_seen: HashMap::new(),
            follow: None,
            last_scan: None,
            more_waiting: false,
            exhausted: false,
            next_tag: 0,
        }
    }

    /// Keeps watching the folder, rescanning every `interval`, until stopped.
    pub fn following(mut self, interval: Duration) -> Self {
        self.follow = Some(interval);
        self
    }

    /// Audio files not handed out yet, sorted by name, at most `limit`. When
    /// following, only those unchanged since the previous scan.
    pub fn scan(&mut self, limit: usize) -> std::io::Result<Vec<PathBuf>> {
        let mut seen: Vec<(PathBuf, FileState)> = std::fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| is_audio(path) && !self.handed_out.contains(path))
            .filter_map(|path| {
                let metadata = std::fs::metadata(&path).ok()?;
                metadata.is_file().then(|| (path, FileState::of(&metadata)))
            })
            .collect();
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        let (mut files, changing): (Vec<_>, Vec<_>) = seen
            .into_iter()
            .partition(|(path, state)| self.is_settled(path, state));
        // Settled files past the limit stay settled for the next scan.
        let past_limit = files.split_off(limit.min(files.len()));
        self.last_seen = changing.into_iter().chain(past_limit).collect();
        let files: Vec<PathBuf> = files.into_iter().map(|(path, _)| path).collect();
        self.handed_out.extend(files.iter().cloned());
        Ok(files)
    }

    /// A one-pass folder is complete; a followed file must have stopped changing.
    fn is_settled(&self, path: &Path, state: &FileState) -> bool {
        self.follow.is_none() || self.last_seen.get(path) == Some(state)
    }

    /// The record of one file: its sidecar read, its content hashed as a
    /// stream, and its audio left in the file for decode to stream.
    pub fn read(&self, path: &Path, received_at: i64) -> Result<SourceRecord, Unreadable> {
        let unreadable = |reason: String| Unreadable {
            path: path.to_owned(),
            reason,
        };
        let size = std::fs::metadata(path)
            .map_err(|e| unreadable(e.to_string()))?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(unreadable(format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        let content_hash = std::fs::File::open(path)
            .and_then(content_hash_of)
            .map_err(|e| unreadable(e.to_string()))?;
        let sidecar = read_sidecar(path).map_err(unreadable)?;
        Ok(SourceRecord {
            tenant: sidecar.tenant.unwrap_or_else(|| self.tenant.clone()),
            source: file_name(path),
            file: Some(AudioFile {
                path: path.to_owned(),
                content_hash,
            }),
            extension: path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase()),
            patient_reference: sidecar.patient,
            encounter_reference: sidecar.encounter,
            received_at,
            ..SourceRecord::default()
        })
    }
}

impl JobSource for DirectorySource {
    fn poll(&mut self, max: usize, _wait: Duration) -> Result<Vec<Delivery>, ComponentError> {
        if self.exhausted {
            return Ok(Vec::new());
        }
        let interval = self.follow.unwrap_or_default();
        let due = self.more_waiting || self.last_scan.is_none_or(|at| at.elapsed() >= interval);
        if !due {
            return Ok(Vec::new());
        }
        self.last_scan = Some(Instant::now());
        let files = self.scan(max).map_err(|err| {
            ComponentError::new(
                ErrorClass::External { retryable: true },
                format!("scanning the input folder: {err}"),
            )
        })?;
        self.more_waiting = files.len() == max;
        if files.is_empty() && self.follow.is_none() {
            self.exhausted = true;
        }
        let received_at = unix_now();
        Ok(files
            .into_iter()
            .map(|path| {
                let record = self
                    .read(&path, received_at)
                    .unwrap_or_else(|unreadable| self.unreadable_record(unreadable, received_at));
                self.next_tag += 1;
                Delivery {
                    tag: DeliveryTag(self.next_tag),
                    record,
                }
            })
            .collect())
    }

    fn settle(&mut self, _settled: &[(DeliveryTag, Settlement)]) -> Result<(), ComponentError> {
        Ok(())
    }

    fn exhausted(&self) -> bool {
        self.exhausted
    }

    fn kind(&self) -> &'static str {
        "directory"
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether `path` names an audio file the folder source reads (by extension).
pub fn is_audio(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.as_str()))
}

/// What a refused sidecar's reason says of each field.
const SIDECAR_SHAPE: JsonShape = JsonShape {
    name: "sidecar",
    summary: "an object with optional tenant, patient and encounter (strings)",
    fields: &[
        ("tenant", "must be a string"),
        ("patient", "must be a string Patient/<id>"),
        ("encounter", "must be a string Encounter/<id>"),
    ],
};

/// The sidecar of the audio file at `path`, checked as the API checks a
/// submission's fields: a reason names the field and its rule, never the
/// value (a patient's name typed into the wrong field stays out of the logs,
/// the dead letter and the job store).
fn read_sidecar(path: &Path) -> Result<Sidecar, String> {
    let mut sidecar_path = path.as_os_str().to_owned();
    sidecar_path.push(".json");
    let sidecar_path = PathBuf::from(sidecar_path);
    if !sidecar_path.is_file() {
        return Ok(Sidecar::default());
    }
    let bytes = std::fs::read(&sidecar_path)
        .map_err(|e| format!("the sidecar cannot be read: {}", e.kind()))?;
    let sidecar: Sidecar = read_json(&bytes, &SIDECAR_SHAPE).map_err(|e| e.to_string())?;
    let problems = sidecar.problems();
    if problems.is_empty() {
        Ok(sidecar)
    } else {
        Err(format!("invalid sidecar: {}", join(&problems)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_audio_once_in_name_order_and_reads_sidecars() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["b.wav", "a.MP3", "notes.txt", "c.flac"] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        std::fs::write(
            dir.path().join("b.wav.json"),
            br#"{"tenant": "clinic-b", "patient": "Patient/7"}"#,
        )
        .expect("write");
        let mut source = DirectorySource::new(dir.path(), "default");
        let first = source.scan(2).expect("scan");
        let names: Vec<_> = first
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.MP3", "b.wav"]);
        let rest = source.scan(10).expect("scan");
        assert_eq!(rest.len(), 1);
        assert!(source.scan(10).expect("scan").is_empty());

        let record = source.read(&dir.path().join("b.wav"), 5).expect("read");
        assert_eq!(record.tenant, "clinic-b");
        assert_eq!(record.patient_reference.as_deref(), Some("Patient/7"));
        assert_eq!(record.extension.as_deref(), Some("wav"));
        let plain = source.read(&dir.path().join("c.flac"), 5).expect("read");
        assert_eq!(plain.tenant, "default");
        // The audio stays in its file; the record carries its content's hash.
        let file = plain.file.expect("a file reference");
        assert_eq!(file.path, dir.path().join("c.flac"));
        assert_eq!(
            file.content_hash,
            mmt_operators::identity::content_hash(b"x")
        );
        assert!(plain.bytes.is_empty());
    }

    #[test]
    fn as_a_job_source_it_runs_dry_unless_following() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["a.wav", "b.wav", "c.wav"] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        let mut source = DirectorySource::new(dir.path(), "default");
        let first = source.poll(2, Duration::ZERO).expect("poll");
        assert_eq!(first.len(), 2);
        assert_ne!(first[0].tag, first[1].tag);
        assert_eq!(source.poll(2, Duration::ZERO).expect("poll").len(), 1);
        assert!(!source.exhausted());
        assert!(source.poll(2, Duration::ZERO).expect("poll").is_empty());
        assert!(source.exhausted());

        let mut following =
            DirectorySource::new(dir.path(), "default").following(Duration::from_millis(1));
        let mut next_scan = || {
            std::thread::sleep(Duration::from_millis(2));
            following.poll(10, Duration::ZERO).expect("poll").len()
        };
        assert_eq!(next_scan(), 0, "first seen: maybe still written");
        assert_eq!(next_scan(), 3, "unchanged since: handed out");
        assert_eq!(next_scan(), 0);
        std::fs::write(dir.path().join("d.wav"), b"x").expect("write");
        assert_eq!(next_scan(), 0);
        assert_eq!(next_scan(), 1);
        assert!(!following.exhausted());
    }

    #[test]
    fn a_followed_file_is_handed_out_only_once_it_stops_growing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("growing.wav");
        let mut source =
            DirectorySource::new(dir.path(), "default").following(Duration::from_millis(1));
        let mut next_scan = || {
            std::thread::sleep(Duration::from_millis(2));
            source.scan(10).expect("scan").len()
        };
        std::fs::write(&path, b"").expect("write");
        assert_eq!(next_scan(), 0);
        for written in 1..=3 {
            std::fs::write(&path, vec![0u8; written * 100]).expect("write");
            assert_eq!(
                next_scan(),
                0,
                "grew to {} bytes since the last scan",
                written * 100
            );
        }
        assert_eq!(next_scan(), 1, "unchanged for one interval");
        assert_eq!(next_scan(), 0, "handed out once");
    }

    #[test]
    fn settled_files_past_the_scan_limit_are_handed_out_by_the_next_scan() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["a.wav", "b.wav", "c.wav"] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        let mut source =
            DirectorySource::new(dir.path(), "default").following(Duration::from_millis(1));
        assert!(source.scan(2).expect("scan").is_empty(), "first seen");
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(source.scan(2).expect("scan").len(), 2);
        assert_eq!(source.scan(2).expect("scan").len(), 1, "no second wait");
    }

    #[test]
    fn a_bad_sidecar_makes_the_file_unreadable() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.wav"), b"x").expect("write");
        std::fs::write(dir.path().join("a.wav.json"), b"{\"mood\": 1}").expect("write");
        let source = DirectorySource::new(dir.path(), "default");
        assert!(source.read(&dir.path().join("a.wav"), 0).is_err());
    }

    /// PHI-looking values in each sidecar field (and as a key): the file is
    /// refused with a reason naming the field, never the value, and its
    /// record keeps the run's tenant.
    #[test]
    fn a_sidecar_field_is_refused_by_name_never_by_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.wav"), b"x").expect("write");
        let source = DirectorySource::new(dir.path(), "default");
        for (sidecar, field) in [
            (r#"{"tenant": "Smith John"}"#, Some("tenant")),
            (r#"{"patient": "Smith John"}"#, Some("patient")),
            (r#"{"patient": "Encounter/1958-03-12"}"#, Some("patient")),
            (
                r#"{"encounter": "Patient/MRN-4471-CANARY"}"#,
                Some("encounter"),
            ),
            (r#"{"tenant": ["Smith John"]}"#, Some("tenant")),
            (r#"{"patient": 19580312}"#, Some("patient")),
            (r#"{"Smith John": "1958-03-12"}"#, None),
            (r#"{"tenant": "Smith John"#, None),
        ] {
            std::fs::write(dir.path().join("a.wav.json"), sidecar).expect("write");
            let unreadable = source
                .read(&dir.path().join("a.wav"), 0)
                .expect_err(sidecar);
            let reason = &unreadable.reason;
            for canary in ["Smith", "1958", "MRN-4471", "19580312"] {
                assert!(!reason.contains(canary), "{sidecar}: {reason}");
            }
            if let Some(field) = field {
                assert!(reason.contains(&format!("{field} must")), "{reason}");
            }
            let record = source.unreadable_record(unreadable, 0);
            assert_eq!(record.tenant, "default");
            assert_eq!(record.patient_reference, None);
        }
        std::fs::write(
            dir.path().join("a.wav.json"),
            r#"{"tenant": "clinic-b", "patient": "Patient/MRN-4471", "encounter": "Encounter/9"}"#,
        )
        .expect("write");
        let record = source.read(&dir.path().join("a.wav"), 0).expect("valid");
        assert_eq!(record.tenant, "clinic-b");
    }
}
