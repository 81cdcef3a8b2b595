//! What the API sends and accepts: the JSON shapes of jobs, pages and requests,
//! with their OpenAPI schemas.

use base64::Engine as _;
use mmt_core::control::{JobRecord, ListCursor, Overview};
use mmt_core::job::{JobId, JobStatus};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Processing,
    Completed,
    Failed,
    DeadLettered,
}

impl From<JobStatus> for Status {
    fn from(status: JobStatus) -> Self {
        match status {
            JobStatus::Queued => Self::Queued,
            JobStatus::Processing => Self::Processing,
            JobStatus::Completed => Self::Completed,
            JobStatus::Failed => Self::Failed,
            JobStatus::DeadLettered => Self::DeadLettered,
        }
    }
}

impl From<Status> for JobStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Queued => Self::Queued,
            Status::Processing => Self::Processing,
            Status::Completed => Self::Completed,
            Status::Failed => Self::Failed,
            Status::DeadLettered => Self::DeadLettered,
        }
    }
}

/// Why a job failed (no PHI).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobErrorView {
    /// Pipeline stage: decode, dedupe, chunk, inference, assemble, sink.
    pub stage: String,
    /// Who is at fault: user_input, external, internal.
    pub class: String,
    pub reason: String,
}

/// Links to the job's resources.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobLinks {
    #[serde(rename = "self")]
    pub this: String,
    pub transcript: String,
}

/// A transcription job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub status: Status,
    /// 0–9, higher is transcribed sooner.
    pub priority: u8,
    /// RFC 3339.
    pub received_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Times transcription was attempted.
    pub attempts: u32,
    /// Why the job failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobErrorView>,
    /// Duration of the audio, once transcribed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient_reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encounter_reference: Option<String>,
    pub links: JobLinks,
}

impl From<&JobRecord> for JobView {
    fn from(job: &JobRecord) -> Self {
        let this = format!("/v1/jobs/{}", job.id);
        Self {
            id: job.id.0.clone(),
            status: job.status.into(),
            priority: job.priority,
            received_at: rfc3339(job.received_at),
            updated_at: rfc3339(job.updated_at),
            completed_at: job.completed_at.map(rfc3339),
            attempts: job.attempts,
            error: job.failure.as_ref().map(|f| JobErrorView {
                stage: f.stage.as_str().to_owned(),
                class: f.class.label().to_owned(),
                reason: f.reason.clone(),
            }),
            audio_seconds: job.audio_seconds,
            patient_reference: job.patient_reference.clone(),
            encounter_reference: job.encounter_reference.clone(),
            links: JobLinks {
                transcript: format!("{this}/transcript"),
                this,
            },
        }
    }
}

/// One page of jobs, newest received first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A job whose audio the server reads from its audio store.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The audio as a path relative to the tenant's folder on the server's
    /// audio volume, `<MMT_AUDIO_REFERENCE_ROOT>/<tenant>/` (e.g.
    /// `2024-05/dictation-0042.wav`): not absolute, no `..`, no symbolic
    /// links; a regular file no larger than the upload limit. Any reference
    /// that cannot be submitted gets the same 422.
    pub audio_reference: String,
    /// FHIR reference of the patient, `Patient/<id>`.
    #[serde(default)]
    pub patient_reference: Option<String>,
    /// FHIR reference of the encounter, `Encounter/<id>`.
    #[serde(default)]
    pub encounter_reference: Option<String>,
    /// 0–9, higher is transcribed sooner (default 0).
    #[serde(default)]
    pub priority: Option<u8>,
    /// An http(s) URL that receives the job's outcome, signed (`MMT-Signature`).
    #[serde(default)]
    pub callback_url: Option<String>,
}

/// A job with its audio uploaded (`multipart/form-data`).
#[derive(Debug, Clone, ToSchema)]
#[allow(dead_code)] // Documents the form for OpenAPI; the handler reads the fields.
pub struct UploadForm {
    /// The audio file: WAV, FLAC, MP3, Ogg/Vorbis or Ogg/Opus.
    #[schema(value_type = String, format = Binary)]
    pub audio: Vec<u8>,
    /// FHIR reference of the patient, `Patient/<id>`.
    pub patient_reference: Option<String>,
    /// FHIR reference of the encounter, `Encounter/<id>`.
    pub encounter_reference: Option<String>,
    /// 0–9, higher is transcribed sooner.
    pub priority: Option<u8>,
    /// An http(s) URL that receives the job's outcome.
    pub callback_url: Option<String>,
}

/// Filters and paging of `GET /v1/jobs`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only jobs in this status.
    pub status: Option<Status>,
    /// Only jobs received at or after this time (RFC 3339).
    pub received_after: Option<String>,
    /// Only jobs received before this time (RFC 3339).
    pub received_before: Option<String>,
    /// Jobs per page (1–100, default 20).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Renderings of a transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TranscriptFormatParam {
    /// Segments with timestamps and confidence (`application/json`).
    #[default]
    Json,
    /// Plain text (`text/plain`).
    Text,
    /// SubRip subtitles (`application/x-subrip`).
    Srt,
    /// WebVTT (`text/vtt`).
    Vtt,
    /// A FHIR R4 `DocumentReference` (`application/fhir+json`).
    Fhir,
}

impl TranscriptFormatParam {
    /// The name the query parameter spells.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Text => "text",
            Self::Srt => "srt",
            Self::Vtt => "vtt",
            Self::Fhir => "fhir",
        }
    }
}

/// The format of `GET /v1/jobs/{id}/transcript`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TranscriptParams {
    /// json (default), text, srt, vtt or fhir.
    pub format: Option<TranscriptFormatParam>,
}

/// Jobs of one status.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatusCount {
    pub status: Status,
    pub jobs: u64,
}

/// What the status page shows.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OverviewView {
    /// Jobs waiting in the intake queue.
    pub queue_depth: u64,
    /// The caller's tenant's jobs per status.
    pub status_counts: Vec<StatusCount>,
    /// Jobs completed in the last `window_seconds`.
    pub completed_recently: u64,
    /// Audio seconds transcribed in the last `window_seconds`.
    pub audio_seconds_recently: f64,
    pub window_seconds: u64,
    /// The tenant's most recently received jobs.
    pub recent: Vec<JobView>,
}

impl From<&Overview> for OverviewView {
    fn from(overview: &Overview) -> Self {
        Self {
            queue_depth: overview.queue_depth,
            status_counts: overview
                .status_counts
                .iter()
                .map(|(status, jobs)| StatusCount {
                    status: (*status).into(),
                    jobs: *jobs,
                })
                .collect(),
            completed_recently: overview.completed_recently,
            audio_seconds_recently: overview.audio_seconds_recently,
            window_seconds: overview.window_seconds,
            recent: overview.recent.iter().map(JobView::from).collect(),
        }
    }
}

/// The JSON transcript (`mmt_core::Transcript` as serialised), for the
/// OpenAPI document: core stays free of the schema generator.
#[derive(Debug, Clone, ToSchema)]
#[schema(as = Transcript)]
#[allow(dead_code)] // Only describes the JSON the handler renders.
pub struct TranscriptSchema {
    /// The full text: every segment's text joined by single spaces.
    pub text: String,
    pub segments: Vec<SegmentSchema>,
    /// Duration of the decoded audio in seconds.
    pub duration_seconds: f64,
    /// ISO 639-1 language code.
    pub language: String,
}

/// One stretch of speech in a [`TranscriptSchema`].
#[derive(Debug, Clone, ToSchema)]
#[schema(as = Segment)]
#[allow(dead_code)]
pub struct SegmentSchema {
    pub id: u32,
    /// Seconds from the start of the audio.
    pub start: f64,
    pub end: f64,
    pub text: String,
    /// Mean log-probability per token.
    pub avg_logprob: f32,
    /// Probability that the window holds no speech.
    pub no_speech_prob: f32,
    pub temperature: f32,
    /// exp(avg_logprob), 0..1.
    pub confidence: f32,
}

/// Unix seconds as RFC 3339 (UTC).
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// RFC 3339 as unix seconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

/// A listing cursor as an opaque URL-safe token.
pub fn encode_cursor(cursor: &ListCursor) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}:{}", cursor.received_at, cursor.id))
}

pub fn decode_cursor(token: &str) -> Option<ListCursor> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (received_at, id) = text.split_once(':')?;
    if id.is_empty() || id.len() > 128 {
        return None;
    }
    Some(ListCursor {
        received_at: received_at.parse().ok()?,
        id: JobId(id.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = ListCursor {
            received_at: 1_764_000_000,
            id: JobId("ab12".into()),
        };
        assert_eq!(decode_cursor(&encode_cursor(&cursor)), Some(cursor));
        assert_eq!(decode_cursor("%%%"), None);
        assert_eq!(decode_cursor("bm9jb2xvbg"), None, "no colon");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("2026-11-29T01:00:00Z"), Some(1_795_914_000));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
