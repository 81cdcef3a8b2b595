//! Decode and validate: source audio → spooled 16 kHz samples and their speech
//! chunks, or a dead letter.
//!
//! Decoding, resampling and voice-activity analysis run as one stream over the
//! container's packets (see [`mmt_whisper::audio::stream_file`]): the samples go
//! to a spool on disk ([`crate::samples`]) and the VAD keeps only frame energies,
//! so memory does not grow with the recording's length. A recording longer than
//! the limit is dead-lettered as soon as its header declares it, or as soon as
//! decoding passes the limit, without reading the rest.

use crate::chunk::{ChunkConfig, SpeechAnalyzer};
use crate::identity::{content_hash, correlation_id, job_id};
use crate::records::{DecodedAudio, DecodedJob, IdentifiedRecord, Outcome, SourceRecord};
use crate::samples::SamplesWriter;
use mmt_core::job::{DeadLetter, JobId, JobMeta, Stage};
use mmt_core::trace::continue_trace;
use mmt_core::ErrorClass;
use mmt_whisper::audio::{stream_bytes, stream_maybe_sealed_file, SAMPLE_RATE};
use mmt_whisper::WhisperError;
use timely::dataflow::operators::core::{Map, OkErr};
use timely::dataflow::Stream;

/// The variable that sets [`DecodeSettings::max_audio_seconds`], named in the
/// reason of a recording refused for its length.
pub const MAX_AUDIO_SECONDS_VARIABLE: &str = "MMT_MAX_AUDIO_SECONDS";

/// How audio is decoded.
#[derive(Debug, Clone, Default)]
pub struct DecodeSettings {
    /// Voice activity detection and chunking (analysed while decoding).
    pub chunking: ChunkConfig,
    /// The longest recording accepted, in seconds (`None`: no limit).
    pub max_audio_seconds: Option<u32>,
    /// Opens audio files sealed at rest (uploads, with `MMT_ENCRYPTION_KEYS`);
    /// `None` reads files in clear only.
    pub sealer: Option<mmt_core::crypt::Sealer>,
}

/// Gives each record its job identity (no audio is read beyond what the
/// source already hashed), so that the job can be taken before any work.
pub trait IdentifyRecords<'scope> {
    fn identify(self) -> Stream<'scope, u64, Vec<IdentifiedRecord>>;
}

impl<'scope> IdentifyRecords<'scope> for Stream<'scope, u64, Vec<SourceRecord>> {
    fn identify(self) -> Stream<'scope, u64, Vec<IdentifiedRecord>> {
        self.map(|record| IdentifiedRecord {
            meta: job_meta(&record),
            record,
        })
    }
}

/// Decodes each taken job's audio; bad input leaves on the second stream as a dead letter.
pub trait DecodeAudio<'scope> {
    fn decode_audio(
        self,
        settings: DecodeSettings,
    ) -> (
        Stream<'scope, u64, Vec<DecodedJob>>,
        Stream<'scope, u64, Vec<Outcome>>,
    );
}

impl<'scope> DecodeAudio<'scope> for Stream<'scope, u64, Vec<IdentifiedRecord>> {
    fn decode_audio(
        self,
        settings: DecodeSettings,
    ) -> (
        Stream<'scope, u64, Vec<DecodedJob>>,
        Stream<'scope, u64, Vec<Outcome>>,
    ) {
        self.ok_err(move |job| decode_identified(job, &settings))
    }
}

/// The job id of unreadable input from `tenant` named `source` (a file
/// name, a message id): what names its dead letter, whatever it holds.
pub fn unreadable_job_id(tenant: &str, source: &str) -> JobId {
    job_id(tenant, &unreadable_hash(source))
}

fn unreadable_hash(source: &str) -> String {
    content_hash(format!("unreadable:{source}").as_bytes())
}

/// The job a record becomes: identity from tenant and content, nothing decoded yet.
pub fn job_meta(record: &SourceRecord) -> JobMeta {
    // Unreadable input has no content: its identity comes from its name instead.
    let hash = if record.read_error.is_some() {
        unreadable_hash(&record.source)
    } else if let Some(file) = &record.file {
        file.content_hash.clone()
    } else {
        content_hash(&record.bytes)
    };
    let id = job_id(&record.tenant, &hash);
    let correlation_id = correlation_id(&id, record.received_at as u64);
    // The name of input that could not be read is whatever its sender chose
    // (a broker message id, say), unchecked: the store keeps a digest of it.
    let source = match &record.read_error {
        Some(_) => format!("unreadable input {}", &hash[..hash.len().min(16)]),
        None => record.source.clone(),
    };
    JobMeta {
        id,
        tenant: record.tenant.clone(),
        content_hash: hash,
        source,
        patient_reference: record.patient_reference.clone(),
        encounter_reference: record.encounter_reference.clone(),
        correlation_id,
        received_at: record.received_at,
        trace_parent: record.trace_parent.clone(),
    }
}

/// Decodes one record; a record that fails leaves as its dead letter.
pub fn decode_record(
    record: SourceRecord,
    settings: &DecodeSettings,
) -> Result<DecodedJob, Outcome> {
    let meta = job_meta(&record);
    decode_identified(IdentifiedRecord { meta, record }, settings)
}

/// Decodes one identified record, keeping its job's identity (and the
/// correlation id its take gave it); one that fails leaves as its dead letter.
pub fn decode_identified(
    job: IdentifiedRecord,
    settings: &DecodeSettings,
) -> Result<DecodedJob, Outcome> {
    let IdentifiedRecord { meta, mut record } = job;
    let span = tracing::info_span!("decode", job = %meta.id, correlation_id = %meta.correlation_id);
    continue_trace(&span, meta.trace_parent.as_deref());
    let _span = span.entered();
    if let Some(reason) = &record.read_error {
        let reason = format!("cannot read the input: {reason}");
        return Err(rejected(
            meta,
            ErrorClass::External { retryable: true },
            reason,
        ));
    }
    match decode_audio(&mut record, settings) {
        Ok(audio) => Ok(DecodedJob {
            meta,
            audio,
            redelivered: record.redelivered,
        }),
        Err(DecodeFailure { class, reason }) => Err(rejected(meta, class, reason)),
    }
}

/// Why a record's audio did not decode; the reason names no PHI.
#[derive(Debug)]
struct DecodeFailure {
    class: ErrorClass,
    reason: String,
}

/// Streams the record's audio into a spool and the VAD; plans its chunks.
fn decode_audio(
    record: &mut SourceRecord,
    settings: &DecodeSettings,
) -> Result<DecodedAudio, DecodeFailure> {
    let mut writer = SamplesWriter::new();
    let mut analyzer = SpeechAnalyzer::new(SAMPLE_RATE, &settings.chunking);
    let mut spool_error: Option<std::io::Error> = None;
    let mut sink = |block: &[f32]| {
        analyzer.push(block);
        writer.write(block).map_err(|err| {
            let placeholder = WhisperError::Inference {
                reason: "the sample spool failed".into(),
            };
            spool_error = Some(err);
            placeholder
        })
    };
    let max_seconds = settings.max_audio_seconds;
    let decoded = match &record.file {
        Some(file) => stream_maybe_sealed_file(
            &file.path,
            settings.sealer.as_ref(),
            mmt_core::spool::SEALED_CONTEXT,
            max_seconds,
            &mut sink,
        ),
        None => stream_bytes(
            std::mem::take(&mut record.bytes),
            record.extension.as_deref(),
            max_seconds,
            &mut sink,
        ),
    };
    if let Some(err) = spool_error {
        return Err(DecodeFailure {
            class: ErrorClass::External { retryable: true },
            reason: format!("cannot keep the decoded audio on disk: {err}"),
        });
    }
    if let Err(err) = decoded {
        return Err(failure(err));
    }
    Ok(DecodedAudio {
        chunks: analyzer.plan(&settings.chunking),
        samples: writer.finish(),
    })
}

/// The dead letter's class and reason for a decoding error: the limit's
/// variable is named, and a file's path (PHI) never is.
fn failure(err: WhisperError) -> DecodeFailure {
    let class = err.class();
    let reason = match err {
        WhisperError::Io { source, .. } => format!("cannot read the input: {source}"),
        too_long @ WhisperError::TooLong { .. } => {
            format!("{too_long}; set by {MAX_AUDIO_SECONDS_VARIABLE}")
        }
        other => other.to_string(),
    };
    DecodeFailure { class, reason }
}

fn rejected(meta: JobMeta, class: ErrorClass, reason: String) -> Outcome {
    tracing::warn!(%reason, "audio rejected");
    Outcome::DeadLettered(DeadLetter {
        job_id: meta.id,
        tenant: meta.tenant,
        correlation_id: meta.correlation_id,
        stage: Stage::Decode,
        class,
        reason,
        attempts: 1,
        at: meta.received_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::plan_chunks;
    use mmt_core::source::AudioFile;
    use std::path::{Path, PathBuf};

    fn sample(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../samples")
            .join(name)
    }

    fn inline(path: &Path) -> SourceRecord {
        SourceRecord {
            tenant: "clinic-a".into(),
            source: "smith_john.wav".into(),
            bytes: std::fs::read(path).expect("sample"),
            extension: Some("wav".into()),
            ..SourceRecord::default()
        }
    }

    fn by_file(path: &Path) -> SourceRecord {
        let bytes = std::fs::read(path).expect("sample");
        SourceRecord {
            file: Some(AudioFile {
                path: path.to_owned(),
                content_hash: content_hash(&bytes),
            }),
            bytes: Vec::new(),
            ..inline(path)
        }
    }

    #[test]
    fn a_file_and_its_bytes_decode_to_the_same_job_and_chunks() {
        let path = sample("dict_001.wav");
        let settings = DecodeSettings::default();
        let whole = mmt_whisper::audio::decode_file(&path).expect("decodes");
        let expected_chunks = plan_chunks(&whole, SAMPLE_RATE, &settings.chunking);
        assert!(!expected_chunks.is_empty());
        for record in [inline(&path), by_file(&path)] {
            let job = decode_record(record, &settings).expect("decodes");
            assert_eq!(job.audio.samples.read().expect("spool"), whole);
            assert_eq!(job.audio.chunks, expected_chunks);
            assert_eq!(job.meta.id, job_meta(&inline(&path)).id, "same identity");
        }
    }

    fn reason_of(outcome: Outcome) -> String {
        match outcome {
            Outcome::DeadLettered(letter) => {
                assert_eq!(letter.stage, Stage::Decode);
                assert_eq!(letter.class, ErrorClass::UserInput);
                letter.reason
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn a_recording_over_the_limit_is_dead_lettered_naming_the_limit() {
        let path = sample("dict_001.wav"); // about 7.9 s
        let settings = DecodeSettings {
            max_audio_seconds: Some(3),
            ..DecodeSettings::default()
        };
        for record in [inline(&path), by_file(&path)] {
            let reason = reason_of(decode_record(record, &settings).expect_err("too long"));
            assert!(reason.contains("3 s"), "{reason}");
            assert!(reason.contains(MAX_AUDIO_SECONDS_VARIABLE), "{reason}");
            assert!(!reason.contains("smith_john"), "no PHI: {reason}");
        }
        let roomy = DecodeSettings {
            max_audio_seconds: Some(60),
            ..DecodeSettings::default()
        };
        assert!(decode_record(by_file(&path), &roomy).is_ok());
    }

    #[test]
    fn a_vanished_file_is_dead_lettered_without_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("smith_john.wav");
        let record = SourceRecord {
            file: Some(AudioFile {
                path: path.clone(),
                content_hash: content_hash(b""),
            }),
            ..SourceRecord::default()
        };
        let Err(Outcome::DeadLettered(letter)) = decode_record(record, &DecodeSettings::default())
        else {
            panic!("expected a dead letter");
        };
        assert!(
            letter.reason.starts_with("cannot read the input"),
            "{}",
            letter.reason
        );
        assert!(!letter.reason.contains("smith_john"), "{}", letter.reason);
    }
}
