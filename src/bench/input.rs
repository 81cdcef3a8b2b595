//! The audio set a sweep runs over, and its reference transcripts.

use super::wer::ErrorCounts;
use anyhow::{bail, Context, Result};
use mmt_operators::identity::{content_hash, job_id};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The extensions `mmt run --input` picks up (pipeline/src/run/source.rs).
const AUDIO_EXTENSIONS: &[&str] = &["wav", "flac", "mp3", "ogg", "opus", "oga"];

/// One input file: one job of every run.
#[derive(Debug, Clone)]
pub struct InputFile {
    /// The id `mmt run` gives its job (tenant and content), to find its document.
    pub job_id: String,
    /// Duration of the decoded audio; 0 when it does not decode.
    pub seconds: f64,
    /// Reference transcript from `manifest.jsonl`, if listed there.
    pub reference: Option<String>,
}

/// The folder every run reads, and what is in it.
#[derive(Debug)]
pub struct InputSet {
    /// Given to `mmt run --input`.
    pub dir: PathBuf,
    /// For titles: the folder's or the file's name.
    pub name: String,
    pub files: Vec<InputFile>,
}

impl InputSet {
    /// A folder is used as it is; a single file is linked into `staging`.
    pub fn prepare(input: &Path, staging: &Path) -> Result<Self> {
        let name = input.file_name().map_or_else(
            || input.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let (dir, manifest) = if input.is_dir() {
            (input.to_owned(), input.join("manifest.jsonl"))
        } else if input.is_file() {
            if !is_audio(input) {
                bail!(
                    "{} is not an audio file `mmt run` reads ({})",
                    input.display(),
                    AUDIO_EXTENSIONS.join(", ")
                );
            }
            let source = input
                .canonicalize()
                .with_context(|| format!("resolving {}", input.display()))?;
            std::fs::create_dir_all(staging)?;
            let file_name = source.file_name().context("the input has no file name")?;
            std::os::unix::fs::symlink(&source, staging.join(file_name)).with_context(|| {
                format!("linking {} into {}", input.display(), staging.display())
            })?;
            let mut sidecar = source.as_os_str().to_owned();
            sidecar.push(".json");
            let sidecar = PathBuf::from(sidecar);
            if sidecar.is_file() {
                let mut linked = file_name.to_owned();
                linked.push(".json");
                std::os::unix::fs::symlink(&sidecar, staging.join(linked))?;
            }
            let manifest = source
                .parent()
                .map(|p| p.join("manifest.jsonl"))
                .unwrap_or_default();
            (staging.to_owned(), manifest)
        } else {
            bail!("{} is neither a folder nor a file", input.display());
        };
        let references = read_manifest(&manifest)?;
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.is_file() && is_audio(path))
            .collect();
        paths.sort();
        if paths.is_empty() {
            bail!("{} holds no audio files", input.display());
        }
        let files = paths
            .iter()
            .map(|path| {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let tenant = sidecar_tenant(path).unwrap_or_else(|| "default".to_owned());
                let seconds = mmt_whisper::audio::decode_bytes(
                    bytes.clone(),
                    path.extension()
                        .map(|e| e.to_string_lossy().to_ascii_lowercase())
                        .as_deref(),
                )
                .map_or(0.0, |samples| {
                    samples.len() as f64 / f64::from(mmt_whisper::audio::SAMPLE_RATE)
                });
                Ok(InputFile {
                    job_id: job_id(&tenant, &content_hash(&bytes)).0,
                    reference: references.get(&name).cloned(),
                    seconds,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { dir, name, files })
    }

    /// Seconds of audio in the set.
    pub fn audio_seconds(&self) -> f64 {
        self.files.iter().map(|f| f.seconds).sum()
    }

    /// Files with a reference transcript.
    pub fn references(&self) -> usize {
        self.files.iter().filter(|f| f.reference.is_some()).count()
    }

    /// Corpus WER of `transcripts` (by job id) against the references; `None`
    /// when no file has one.
    pub fn score(&self, transcripts: &HashMap<String, String>) -> Option<ErrorCounts> {
        let mut counts = ErrorCounts::default();
        let mut any = false;
        for file in &self.files {
            if let Some(reference) = &file.reference {
                counts.add(reference, transcripts.get(&file.job_id).map(String::as_str));
                any = true;
            }
        }
        any.then_some(counts)
    }

    /// `(reference, transcript)` of every file with a reference, a missing
    /// transcript as empty text.
    pub fn pairs<'a>(
        &'a self,
        transcripts: &'a HashMap<String, String>,
    ) -> Vec<(&'a str, &'a str)> {
        self.files
            .iter()
            .filter_map(|file| {
                let reference = file.reference.as_deref()?;
                let transcript = transcripts.get(&file.job_id).map_or("", String::as_str);
                Some((reference, transcript))
            })
            .collect()
    }
}

fn is_audio(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.as_str()))
}

/// The tenant a `<file>.json` sidecar names, as `mmt run` reads it.
fn sidecar_tenant(path: &Path) -> Option<String> {
    let mut sidecar = path.as_os_str().to_owned();
    sidecar.push(".json");
    let text = std::fs::read_to_string(PathBuf::from(sidecar)).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["tenant"].as_str().map(str::to_owned)
}

/// `audio` → `text` from a `manifest.jsonl` (none if there is no manifest).
fn read_manifest(path: &Path) -> Result<HashMap<String, String>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(HashMap::new());
    };
    let mut references = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", path.display(), number + 1))?;
        if let (Some(audio), Some(reference)) = (entry["audio"].as_str(), entry["text"].as_str()) {
            references.insert(audio.to_owned(), reference.to_owned());
        }
    }
    Ok(references)
}
