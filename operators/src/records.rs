//! The records that flow between the operators of the transcription dataflow.
//!
//! Every record is `Serialize`/`Deserialize` because timely's exchange channels
//! require it (records may cross process boundaries in cluster mode).

use mmt_core::job::{CompletedJob, DeadLetter, JobId, JobMeta};
use mmt_core::Segment;
use serde::{Deserialize, Serialize};

pub use crate::samples::Samples;
pub use mmt_core::source::SourceRecord;

use crate::chunk::ChunkSpan;

/// A source's record with the job it is (identity from tenant and content),
/// before any work: what dedupe takes in the job store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentifiedRecord {
    pub meta: JobMeta,
    pub record: SourceRecord,
}

impl IdentifiedRecord {
    /// The broker delivered this message before: a repeat is not a new submission.
    pub fn redelivered(&self) -> bool {
        self.record.redelivered
    }
}

/// A job whose audio decoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecodedJob {
    pub meta: JobMeta,
    pub audio: DecodedAudio,
    /// The broker delivered this message before: a repeat is not a new submission.
    pub redelivered: bool,
}

/// A recording's 16 kHz mono samples (spooled, not in memory) and its speech
/// chunks, planned by voice-activity detection while it decoded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DecodedAudio {
    pub samples: Samples,
    pub chunks: Vec<ChunkSpan>,
}

impl DecodedJob {
    pub fn duration_seconds(&self) -> f64 {
        self.audio.samples.len() as f64 / f64::from(mmt_whisper::audio::SAMPLE_RATE)
    }
}

/// One ≤ 30 s stretch of speech of a job, the unit the model transcribes.
///
/// A job without speech yields one chunk with `total == 0` and no samples, so
/// that it still completes (with an empty transcript) without touching the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkWork {
    pub meta: JobMeta,
    pub seq: u32,
    pub total: u32,
    /// Start of the chunk in the job's audio, in seconds.
    pub offset_seconds: f64,
    /// Duration of the job's whole audio, in seconds.
    pub job_seconds: f64,
    /// The chunk's samples, read when the model is about to transcribe them.
    pub samples: Samples,
    /// The samples of the chunk before it (none for a recording's first):
    /// a conditioned stream that starts mid-recording decodes them first to
    /// have its previous-text prompt (see `infer`).
    pub preceding: Option<Samples>,
}

/// The transcript of one chunk, timestamps already relative to the job's audio.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkResult {
    pub meta: JobMeta,
    pub seq: u32,
    pub total: u32,
    pub job_seconds: f64,
    pub segments: Vec<Segment>,
}

/// What reaches the commit stage for a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    /// Taken in the store as this record of the job: audit its reception
    /// (once per record, by the audit trail's key). Settles nothing: the
    /// job's own outcome follows.
    Received(JobMeta),
    /// Transcribed: write the document, audit it, mark it completed.
    Completed(Box<CompletedJob>),
    /// Failed for good: dead-letter it, audit it, mark it dead-lettered.
    DeadLettered(DeadLetter),
    /// The same audio from the same tenant was already submitted in this run.
    Duplicate(JobMeta),
    /// Finished in an earlier run (a redelivery after a crash or restart): nothing to write.
    AlreadyFinished(JobId),
}

impl Outcome {
    pub fn job_id(&self) -> &JobId {
        match self {
            Self::Received(meta) => &meta.id,
            Self::Completed(job) => &job.meta.id,
            Self::DeadLettered(letter) => &letter.job_id,
            Self::Duplicate(meta) => &meta.id,
            Self::AlreadyFinished(id) => id,
        }
    }
}

/// A stable 64-bit routing key for a job id (exchange pacts partition by it).
pub fn route(id: &JobId) -> u64 {
    // Job ids are hex digests: their leading 16 hex digits are already uniform.
    id.0.get(..16)
        .and_then(|prefix| u64::from_str_radix(prefix, 16).ok())
        .unwrap_or_else(|| {
            id.0.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_uses_the_digest_and_falls_back_to_a_hash() {
        assert_eq!(route(&JobId("00000000000000ff0000".into())), 255);
        let odd = route(&JobId("not-hex".into()));
        assert_eq!(odd, route(&JobId("not-hex".into())));
        assert_ne!(odd, route(&JobId("not-hex2".into())));
    }
}
