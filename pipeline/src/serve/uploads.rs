//! The upload store: audio received through the API, kept on disk (owner-only
//! files: it is PHI) until the job is deleted or retention removes it.
//!
//! Each job is two files, `<job id>.audio` and `<job id>.json` (tenant,
//! references, priority). The metadata file is written last, by rename, so
//! its presence marks a complete upload; start-up re-queues every complete
//! upload whose job has not finished.
//!
//! A saved upload is durable: each file is fsynced before its rename and the
//! folder after it, so the API records the job (and answers 202) only once a
//! power cut can no longer take the upload back. Whatever a crash leaves
//! half-written (a `.partial` file, audio without its metadata) never had a
//! job row, and [`UploadStore::open`] removes it.
//!
//! With a sealer (`MMT_ENCRYPTION_KEYS`) the audio files are sealed streams
//! (`mmt_core::crypt::stream`), written sealed from the first byte (the spool
//! seals as it receives); the decoder opens them. Files stored in clear
//! before encryption was on are still read, and [`UploadStore::reseal_all`]
//! (`mmt keys reencrypt`) seals them, and re-seals files under older keys.

use mmt_core::control::SpooledAudio;
use mmt_core::crypt::stream::{reseal_file, SealedReader, SealedWriter};
use mmt_core::crypt::{ResealReport, Sealer};
use mmt_core::job::JobId;
use mmt_core::owner_only;
use mmt_core::source::AudioFile;
use mmt_operators::identity::content_hash_of;
use mmt_operators::records::SourceRecord;
use serde::{Deserialize, Serialize};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What an upload's metadata file holds (PHI: references and file name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    tenant: String,
    source: String,
    format: Option<String>,
    patient_reference: Option<String>,
    encounter_reference: Option<String>,
    priority: u8,
    received_at: i64,
    trace_parent: Option<String>,
    /// The audio's content hash, so the dataflow can read the audio from its
    /// file instead of memory. Absent in uploads stored before it was kept:
    /// those are hashed when they are loaded.
    #[serde(default)]
    content_hash: Option<String>,
}

/// A stored upload: the record to feed the dataflow, and its priority.
#[derive(Debug, Clone)]
pub struct StoredUpload {
    pub record: SourceRecord,
    pub priority: u8,
}

/// Uploads in one folder.
#[derive(Debug, Clone)]
pub struct UploadStore {
    dir: PathBuf,
    /// Seals new audio files; `None` writes them in clear.
    sealer: Option<Sealer>,
}

impl UploadStore {
    /// Opens (creating, owner-only) the folder, and removes what a crash
    /// left half-written.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        owner_only::create_dir_all(&dir)?;
        let store = Self { dir, sealer: None };
        let removed = store.remove_incomplete()?;
        if removed > 0 {
            tracing::info!(files = removed, "removed half-written uploads");
        }
        Ok(store)
    }

    /// The upload folder `dir` as it is, for another process than the one
    /// receiving uploads (`mmt keys reencrypt` beside a running `mmt serve`):
    /// nothing is created or removed, so uploads being received are left alone.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            sealer: None,
        }
    }

    /// Removes temporary files and audio without metadata: uploads a crash
    /// interrupted before they were complete (so before their job existed).
    fn remove_incomplete(&self) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let incomplete = match path.extension().and_then(|e| e.to_str()) {
                Some("partial") => true,
                Some("audio") => !path.with_extension("json").exists(),
                _ => false,
            };
            if incomplete && remove_if_present(&path)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Seals the audio of new uploads with `sealer` (`None`: in clear).
    pub fn with_sealer(mut self, sealer: Option<Sealer>) -> Self {
        self.sealer = sealer;
        self
    }

    /// The sealer of new uploads' audio, for the spool that receives them.
    pub fn sealer(&self) -> Option<&Sealer> {
        self.sealer.as_ref()
    }

    /// The folder: uploads are spooled into it while they are received
    /// (`*.partial`, removed at open if a crash left them).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn audio_path(&self, id: &JobId) -> PathBuf {
        self.dir.join(format!("{id}.audio"))
    }

    fn metadata_path(&self, id: &JobId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Stores the upload of job `id` (replacing an earlier one), durably.
    pub fn save(&self, id: &JobId, record: &SourceRecord, priority: u8) -> std::io::Result<()> {
        match &self.sealer {
            Some(sealer) => {
                let mut writer =
                    SealedWriter::new(sealer, Vec::new(), mmt_core::spool::SEALED_CONTEXT)
                        .map_err(std::io::Error::other)?;
                writer.write_all(&record.bytes)?;
                write_owner_only(&self.audio_path(id), &writer.finish()?)?;
            }
            None => write_owner_only(&self.audio_path(id), &record.bytes)?,
        }
        let hash = mmt_core::content::content_hash(&record.bytes);
        self.save_metadata(id, record, priority, hash)
    }

    /// Stores job `id`'s upload from its spool file (fsynced, in this
    /// folder: a rename), with `record`'s metadata (its bytes are unused), durably.
    pub fn save_spooled(
        &self,
        id: &JobId,
        audio: SpooledAudio,
        record: &SourceRecord,
        priority: u8,
    ) -> std::io::Result<()> {
        let hash = audio.content_hash().to_owned();
        audio.persist(&self.audio_path(id))?;
        self.save_metadata(id, record, priority, hash)
    }

    /// Writes the metadata that completes an upload, and makes both files'
    /// names durable.
    fn save_metadata(
        &self,
        id: &JobId,
        record: &SourceRecord,
        priority: u8,
        content_hash: String,
    ) -> std::io::Result<()> {
        let metadata = Metadata {
            tenant: record.tenant.clone(),
            source: record.source.clone(),
            format: record.extension.clone(),
            patient_reference: record.patient_reference.clone(),
            encounter_reference: record.encounter_reference.clone(),
            priority,
            received_at: record.received_at,
            trace_parent: record.trace_parent.clone(),
            content_hash: Some(content_hash),
        };
        let json = serde_json::to_vec(&metadata).map_err(std::io::Error::other)?;
        write_owner_only(&self.metadata_path(id), &json)?;
        // The renames are durable once the folder is.
        fs::File::open(&self.dir)?.sync_all()
    }

    /// Whether job `id` has a complete upload.
    pub fn exists(&self, id: &JobId) -> bool {
        self.metadata_path(id).is_file()
    }

    fn metadata(&self, id: &JobId) -> std::io::Result<Option<Metadata>> {
        let json = match fs::read(self.metadata_path(id)) {
            Ok(json) => json,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))
    }

    /// The tenant and priority of job `id`'s upload, if it is complete,
    /// without reading its audio (queueing a backlog at start-up).
    pub fn tenant_and_priority(&self, id: &JobId) -> std::io::Result<Option<(String, u8)>> {
        Ok(self
            .metadata(id)?
            .map(|metadata| (metadata.tenant, metadata.priority)))
    }

    /// The upload of job `id`, if it is complete. Its audio stays in its
    /// file (the record refers to it), so a queue of long recordings costs
    /// the dataflow no memory until each is decoded, as a stream.
    pub fn load(&self, id: &JobId) -> std::io::Result<Option<StoredUpload>> {
        let Some(metadata) = self.metadata(id)? else {
            return Ok(None);
        };
        let path = self.audio_path(id);
        let content_hash = match metadata.content_hash {
            // Checked now so that a missing file is this call's error.
            Some(hash) => fs::metadata(&path).map(|_| hash)?,
            // Stored before the hash was kept: hashed once now, as a stream.
            None => self.hash_audio(&path)?,
        };
        Ok(Some(StoredUpload {
            priority: metadata.priority,
            record: SourceRecord {
                tenant: metadata.tenant,
                source: metadata.source,
                file: Some(AudioFile { path, content_hash }),
                extension: metadata.format,
                patient_reference: metadata.patient_reference,
                encounter_reference: metadata.encounter_reference,
                received_at: metadata.received_at,
                trace_parent: metadata.trace_parent,
                ..SourceRecord::default()
            },
        }))
    }

    /// The content hash of an audio file, sealed or clear.
    fn hash_audio(&self, path: &Path) -> std::io::Result<String> {
        let file = fs::File::open(path)?;
        let mut head = [0u8; 4];
        let sealed = {
            use std::io::Read;
            let n = (&file).read(&mut head)?;
            mmt_core::crypt::stream::is_sealed(&head[..n])
        };
        match (&self.sealer, sealed) {
            (Some(sealer), true) => content_hash_of(
                SealedReader::new(sealer, file, mmt_core::spool::SEALED_CONTEXT)
                    .map_err(std::io::Error::other)?,
            ),
            (None, true) => Err(std::io::Error::other(
                "the upload is encrypted and MMT_ENCRYPTION_KEYS is not set",
            )),
            (_, false) => content_hash_of(fs::File::open(path)?),
        }
    }

    /// Seals every complete upload's audio under the sealer's current key:
    /// files in clear (from before encryption) and files under older keys.
    /// A file that cannot be opened (a retired or unknown key, altered) is
    /// left as it is and named in the report.
    pub fn reseal_all(&self) -> std::io::Result<ResealReport> {
        let Some(sealer) = &self.sealer else {
            return Err(std::io::Error::other(
                "MMT_ENCRYPTION_KEYS must name a keyring to re-encrypt uploads",
            ));
        };
        let mut report = ResealReport::default();
        for id in self.ids()? {
            let path = self.audio_path(&id);
            if !path.is_file() {
                continue;
            }
            report.examined += 1;
            match reseal_file(sealer, &path, mmt_core::spool::SEALED_CONTEXT) {
                Ok(true) => report.resealed += 1,
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(job_id = %id, error = %err, "upload not re-encrypted");
                    report.failed.push(id);
                }
            }
        }
        Ok(report)
    }

    /// Removes job `id`'s upload; whether there was one.
    pub fn delete(&self, id: &JobId) -> std::io::Result<bool> {
        // Metadata first: a half-deleted upload is then incomplete, not re-queued.
        let had_metadata = remove_if_present(&self.metadata_path(id))?;
        let had_audio = remove_if_present(&self.audio_path(id))?;
        Ok(had_metadata || had_audio)
    }

    /// The jobs with a complete upload.
    pub fn ids(&self) -> std::io::Result<Vec<JobId>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("json") {
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    ids.push(JobId(stem.to_owned()));
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Removes the uploads received before `cutoff` (unix seconds); how many.
    pub fn purge_before(&self, cutoff: i64) -> std::io::Result<u64> {
        let mut purged = 0;
        for id in self.ids()? {
            let received_at = match self.metadata(&id) {
                Ok(Some(metadata)) => metadata.received_at,
                // Unreadable metadata cannot say its age: leave it for a person.
                Ok(None) | Err(_) => continue,
            };
            if received_at < cutoff && self.delete(&id)? {
                purged += 1;
            }
        }
        Ok(purged)
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, mode 0600.
fn write_owner_only(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("partial");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(owner_only::FILE_MODE)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    fs::rename(&temporary, path)
}

fn remove_if_present(path: &Path) -> std::io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn record(received_at: i64) -> SourceRecord {
        SourceRecord {
            tenant: "clinic-a".into(),
            source: "Smith_John.wav".into(),
            bytes: b"RIFF....WAVE".to_vec(),
            extension: Some("wav".into()),
            patient_reference: Some("Patient/7".into()),
            received_at,
            ..SourceRecord::default()
        }
    }

    #[test]
    fn an_upload_round_trips_and_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = UploadStore::open(dir.path().join("uploads")).unwrap();
        let id = JobId("abc".into());
        store.save(&id, &record(100), 7).unwrap();
        let loaded = store.load(&id).unwrap().unwrap();
        assert_eq!(loaded.priority, 7);
        // The audio stays in its file: the record refers to it, with its hash.
        assert!(loaded.record.bytes.is_empty());
        let file = loaded.record.file.expect("a file reference");
        assert_eq!(fs::read(&file.path).unwrap(), b"RIFF....WAVE");
        assert_eq!(
            file.content_hash,
            mmt_core::content::content_hash(b"RIFF....WAVE")
        );
        assert_eq!(
            loaded.record.patient_reference.as_deref(),
            Some("Patient/7")
        );
        let mode = fs::metadata(store.audio_path(&id))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(store.ids().unwrap(), std::slice::from_ref(&id));
        assert!(store.delete(&id).unwrap());
        assert!(!store.delete(&id).unwrap());
        assert!(store.load(&id).unwrap().is_none());
    }

    #[test]
    fn an_upload_stored_without_its_hash_is_hashed_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let store = UploadStore::open(dir.path()).unwrap();
        let id = JobId("older".into());
        store.save(&id, &record(100), 0).unwrap();
        // Metadata as an earlier version wrote it: no content hash.
        let path = store.metadata_path(&id);
        let mut json: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        json.as_object_mut().unwrap().remove("content_hash");
        fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        let loaded = store.load(&id).unwrap().unwrap();
        let file = loaded.record.file.expect("a file reference");
        assert_eq!(
            file.content_hash,
            mmt_core::content::content_hash(b"RIFF....WAVE")
        );
    }

    #[test]
    fn half_written_uploads_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = UploadStore::open(dir.path()).unwrap();
        let complete = JobId("complete".into());
        store.save(&complete, &record(100), 3).unwrap();
        // A crash before the metadata's rename, and one mid-write.
        fs::write(dir.path().join("torn.audio"), b"RIFF").unwrap();
        fs::write(dir.path().join("torn.json.partial"), b"{").unwrap();
        let store = UploadStore::open(dir.path()).unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["complete.audio", "complete.json"]);
        assert!(store.exists(&complete));
        assert_eq!(
            store.tenant_and_priority(&complete).unwrap(),
            Some(("clinic-a".to_owned(), 3))
        );
        assert!(!store.exists(&JobId("torn".into())));
    }

    #[test]
    fn sealed_uploads_round_trip_and_clear_ones_are_sealed_by_reseal() {
        use mmt_core::crypt::stream::{sealed_file_key_id, SealedReader};
        use mmt_core::crypt::{KeyProvider, Keyring};
        use std::io::Read;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let clear_store = UploadStore::open(dir.path()).unwrap();
        let old = JobId("old".into());
        clear_store.save(&old, &record(100), 0).unwrap();
        let mut keyring = Keyring::generate().unwrap();
        let sealer = Sealer::new(Arc::new(keyring.clone()));
        let store = UploadStore::open(dir.path())
            .unwrap()
            .with_sealer(Some(sealer.clone()));
        let new = JobId("new".into());
        store.save(&new, &record(100), 0).unwrap();
        let on_disk = fs::read(store.audio_path(&new)).unwrap();
        assert!(!on_disk.windows(4).any(|w| w == b"WAVE"), "sealed on disk");
        // The clear upload still loads (its hash computed from clear text).
        assert!(store.load(&old).unwrap().is_some());

        keyring.rotate().unwrap();
        let rotated = Sealer::new(Arc::new(keyring.clone()));
        let store = store.with_sealer(Some(rotated.clone()));
        let report = store.reseal_all().unwrap();
        assert_eq!((report.examined, report.resealed), (2, 2));
        assert!(report.failed.is_empty());
        for id in [&old, &new] {
            let bytes = fs::read(store.audio_path(id)).unwrap();
            assert_eq!(
                sealed_file_key_id(&bytes).unwrap(),
                Some(keyring.current_key_id())
            );
            let file = fs::File::open(store.audio_path(id)).unwrap();
            let mut reader =
                SealedReader::new(&rotated, file, mmt_core::spool::SEALED_CONTEXT).unwrap();
            let mut audio = Vec::new();
            reader.read_to_end(&mut audio).unwrap();
            assert_eq!(audio, b"RIFF....WAVE");
        }
    }

    #[test]
    fn retention_removes_only_old_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let store = UploadStore::open(dir.path()).unwrap();
        store.save(&JobId("old".into()), &record(100), 0).unwrap();
        store.save(&JobId("new".into()), &record(900), 0).unwrap();
        assert_eq!(store.purge_before(500).unwrap(), 1);
        assert_eq!(store.ids().unwrap(), [JobId("new".into())]);
    }
}
