//! The directory source: audio files in a folder become source records.
//!
//! Each scan is one ingest batch (an epoch). A file is read whole; an optional
//! sidecar `<name>.json` beside it gives the tenant and FHIR references:
//! `{"tenant": "clinic-a", "patient": "Patient/123", "encounter": "Encounter/9"}`.

use mmt_operators::records::SourceRecord;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Extensions the source picks up (case-insensitive).
const AUDIO_EXTENSIONS: &[&str] = &["wav", "flac", "mp3", "ogg", "opus", "oga"];

/// Files larger than this are refused as records (dead-lettered by decode as empty).
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

/// Watches one folder and remembers what it has already handed out.
#[derive(Debug)]
pub struct DirectorySource {
    dir: PathBuf,
    tenant: String,
    handed_out: HashSet<PathBuf>,
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
        }
    }
}

impl DirectorySource {
    pub fn new(dir: impl Into<PathBuf>, tenant: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            tenant: tenant.into(),
            handed_out: HashSet::new(),
        }
    }

    /// Audio files not handed out yet, sorted by name, at most `limit`.
    pub fn scan(&mut self, limit: usize) -> std::io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.is_file() && is_audio(path) && !self.handed_out.contains(path))
            .collect();
        files.sort();
        files.truncate(limit);
        self.handed_out.extend(files.iter().cloned());
        Ok(files)
    }

    /// Reads one file into a record.
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
        let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
        let sidecar = read_sidecar(path).map_err(unreadable)?;
        Ok(SourceRecord {
            tenant: sidecar.tenant.unwrap_or_else(|| self.tenant.clone()),
            source: file_name(path),
            bytes,
            extension: path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase()),
            patient_reference: sidecar.patient,
            encounter_reference: sidecar.encounter,
            received_at,
            read_error: None,
        })
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_audio(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.as_str()))
}

fn read_sidecar(path: &Path) -> Result<Sidecar, String> {
    let mut sidecar_path = path.as_os_str().to_owned();
    sidecar_path.push(".json");
    let sidecar_path = PathBuf::from(sidecar_path);
    if !sidecar_path.is_file() {
        return Ok(Sidecar::default());
    }
    let text = std::fs::read_to_string(&sidecar_path).map_err(|e| format!("sidecar: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("sidecar is not valid: {e}"))
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
    }

    #[test]
    fn a_bad_sidecar_makes_the_file_unreadable() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.wav"), b"x").expect("write");
        std::fs::write(dir.path().join("a.wav.json"), b"{\"mood\": 1}").expect("write");
        let source = DirectorySource::new(dir.path(), "default");
        assert!(source.read(&dir.path().join("a.wav"), 0).is_err());
    }
}
