//! `/v1/jobs`: submit, read, list, fetch transcripts, delete.

use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mmt_core::control::{
    Access, IdempotencyKey, ListQuery, SpooledAudio, Submission, SubmittedAudio, MAX_PRIORITY,
};
use mmt_core::crypt::Sealer;
use mmt_core::input::{is_trace_parent, read_json, reference_problem, JsonProblem, JsonShape};
use mmt_core::job::{JobId, JobStatus};
use mmt_core::spool::SpoolWriter;
use mmt_core::transcript::TranscriptFormat;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::state::{require, AppState, ADMINS, READERS, SUBMITTERS};
use crate::views::{
    decode_cursor, encode_cursor, parse_rfc3339, JobList, JobRequest, JobView, ListParams,
    TranscriptFormatParam, TranscriptParams,
};
use crate::webhook::target::CallbackTarget;

/// The header a client retries a submission with.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Declared part types accepted for audio (besides a generic octet stream).
const AUDIO_CONTENT_TYPES: &[&str] = &[
    "audio/wav",
    "audio/x-wav",
    "audio/wave",
    "audio/vnd.wave",
    "audio/flac",
    "audio/x-flac",
    "audio/mpeg",
    "audio/mp3",
    "audio/ogg",
    "audio/opus",
    "application/ogg",
    "application/octet-stream",
];

/// Bytes of an upload gathered in memory before they are written to its
/// spool file: what one upload in flight costs, however large it is.
const SPOOL_WRITE_BYTES: usize = 1 << 20;

/// Jobs per page when the client does not say.
const DEFAULT_PAGE_SIZE: u32 = 20;

/// Submit a transcription job.
///
/// Either upload the audio (`multipart/form-data`, field `audio`) or name it
/// (`application/json`, `audio_reference`). The same audio from the same
/// tenant is the same job; a retry with the same `Idempotency-Key` returns
/// the job of the first request, and the key reused for a different request
/// answers 409.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: 1-255 visible ASCII characters")),
    request_body(content(
        (crate::views::UploadForm = "multipart/form-data"),
        (JobRequest = "application/json"),
    )),
    responses(
        (status = 202, description = "Accepted: the job is queued", body = JobView),
        (status = 200, description = "The job already existed (same audio, or a retried Idempotency-Key)", body = JobView),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's roles do not allow submitting", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency-Key reused for another request", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Upload too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not multipart or JSON, or not supported audio", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Tenant over its rate limit, or holding its whole share of the job queue (MMT_API_MAX_QUEUED_PER_TENANT); nothing was recorded", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "The job queue is full (MMT_API_MAX_QUEUED_JOBS; with Retry-After), the transcription dataflow has stopped, or the job store or intake is down; nothing was recorded", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying (when the queue is full)"))),
    ),
    security(("bearer" = []))
)]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let (idempotency_key, body) = match check_before_reading(&state, &caller, &headers).await {
        Ok(checked) => checked,
        Err(refusal) => {
            // A client that did not wait for `100 Continue` is sending the body
            // anyway: read it into nothing, so it gets the answer rather than a
            // reset connection. One that waits is spared sending it.
            if !expects_continue(&headers) {
                discard_body(request.into_body(), state.config.max_upload_bytes).await;
            }
            return Err(refusal);
        }
    };
    // An invalid trace context is ignored, as W3C Trace Context asks (and
    // whatever a client put there is not stored).
    let trace_parent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_trace_parent(v))
        .map(str::to_owned);
    let fields = match body {
        BodyKind::Upload => {
            let multipart = Multipart::from_request(request, &state)
                .await
                .map_err(|_| ApiError::BadRequest("malformed multipart body".into()))?;
            let spool = (state.control.spool_dir(), state.control.spool_sealer());
            read_upload(multipart, state.config.max_upload_bytes, spool).await?
        }
        BodyKind::Reference => {
            let job = read_job_request(request, &state).await?;
            let reference = job.audio_reference.clone();
            check_reference_syntax(&reference)?;
            let tenant = caller.tenant.clone();
            let limit = state.config.max_upload_bytes as u64;
            let audio = state
                .blocking(move |control| {
                    control
                        .read_reference(&tenant, &reference, limit)
                        .map_err(ApiError::from)
                })
                .await?;
            SubmissionFields {
                source: job.audio_reference,
                audio: Some(ReceivedAudio::from(audio)),
                declared_type: None,
                patient_reference: job.patient_reference,
                encounter_reference: job.encounter_reference,
                priority: job.priority,
                callback_url: job.callback_url,
            }
        }
    };
    if fields.callback_url.is_some() && !state.config.callbacks_enabled {
        return Err(ApiError::Unprocessable(
            "this server does not deliver callbacks (no MMT_WEBHOOK_SECRET)".into(),
        ));
    }
    let submission = fields.into_submission(&caller.tenant, idempotency_key, trace_parent)?;
    if let Some(url) = &submission.callback_url {
        // Its form, and where the host resolves now; the deliverer checks the
        // addresses again at connect time.
        CallbackTarget::parse(url)
            .map_err(|err| ApiError::Unprocessable(err.to_string()))?
            .check_async(state.config.callback_targets)
            .await
            .map_err(|err| ApiError::Unprocessable(err.to_string()))?;
    }
    let tenant = caller.tenant.clone();
    let (submitted, job) = state
        .blocking(move |control| {
            let submitted = control.submit(submission)?;
            let job = control.job(&tenant, &submitted.job_id)?;
            Ok((submitted, job))
        })
        .await?;
    let job = job.ok_or_else(|| ApiError::internal("a submitted job is not in the store"))?;
    let status = if submitted.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let view = JobView::from(&job);
    let mut response = (status, Json(&view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&view.links.this) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// What a submission's body holds, by its content type.
enum BodyKind {
    /// `multipart/form-data`: the audio itself.
    Upload,
    /// `application/json`: a reference to audio the server reads.
    Reference,
}

/// What is checked before the body is read, so that a refusal costs neither
/// memory nor disk: the caller's role, the `Idempotency-Key`, the content
/// type, and room in the queue for the caller's tenant. The key, if any, and
/// the kind of body.
async fn check_before_reading(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<(Option<String>, BodyKind), ApiError> {
    require(caller, SUBMITTERS)?;
    let idempotency_key = idempotency_key(headers)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let body = if content_type.starts_with("multipart/form-data") {
        BodyKind::Upload
    } else if content_type.starts_with("application/json") {
        BodyKind::Reference
    } else {
        return Err(ApiError::UnsupportedMediaType(
            "send multipart/form-data (an upload) or application/json (an audio reference)".into(),
        ));
    };
    let tenant = caller.tenant.clone();
    state
        .blocking(move |control| control.admits(&tenant).map_err(ApiError::from))
        .await?;
    Ok((idempotency_key, body))
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("100-continue"))
}

/// Reads and drops up to about `limit` bytes of `body`, holding one frame at a time.
async fn discard_body(mut body: axum::body::Body, limit: usize) {
    use axum::body::HttpBody;
    let mut read = 0usize;
    while read <= limit {
        let frame =
            std::future::poll_fn(|context| std::pin::Pin::new(&mut body).poll_frame(context)).await;
        match frame {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |data| data.len()),
            Some(Err(_)) | None => break,
        }
    }
}

/// Audio as received (spooled to disk), with what the checks need of it.
struct ReceivedAudio {
    audio: SubmittedAudio,
    content_hash: String,
    len: u64,
    /// The first bytes, to tell the format by.
    head: Vec<u8>,
}

impl From<SpooledAudio> for ReceivedAudio {
    fn from(spooled: SpooledAudio) -> Self {
        Self {
            content_hash: spooled.content_hash().to_owned(),
            len: spooled.len(),
            head: spooled.head().to_vec(),
            audio: SubmittedAudio::Spooled(spooled),
        }
    }
}

/// The fields of a submission, before they are checked.
struct SubmissionFields {
    source: String,
    audio: Option<ReceivedAudio>,
    declared_type: Option<String>,
    patient_reference: Option<String>,
    encounter_reference: Option<String>,
    priority: Option<u8>,
    callback_url: Option<String>,
}

impl SubmissionFields {
    /// Checks every field and fingerprints the request for its idempotency key.
    fn into_submission(
        mut self,
        tenant: &str,
        key: Option<String>,
        trace_parent: Option<String>,
    ) -> Result<Submission, ApiError> {
        if let Some(declared) = &self.declared_type {
            let essence = declared.split(';').next().unwrap_or("").trim();
            if !AUDIO_CONTENT_TYPES.contains(&essence) {
                return Err(ApiError::UnsupportedMediaType(
                    "the audio part's Content-Type must be WAV, FLAC, MP3 or Ogg audio \
                     (or application/octet-stream)"
                        .into(),
                ));
            }
        }
        let Some(received) = self.audio.take() else {
            return Err(ApiError::BadRequest(
                "the form has no audio field (a file)".into(),
            ));
        };
        if received.len == 0 {
            return Err(ApiError::Unprocessable("the audio is empty".into()));
        }
        let format = sniff_audio(&received.head).ok_or_else(|| {
            ApiError::UnsupportedMediaType(
                "the audio is not WAV, FLAC, MP3, Ogg/Vorbis or Ogg/Opus".into(),
            )
        })?;
        check_fhir_reference(
            "patient_reference",
            "Patient",
            self.patient_reference.as_deref(),
        )?;
        check_fhir_reference(
            "encounter_reference",
            "Encounter",
            self.encounter_reference.as_deref(),
        )?;
        let priority = self.priority.unwrap_or(0);
        if priority > MAX_PRIORITY {
            return Err(ApiError::Unprocessable(format!(
                "priority must be 0-{MAX_PRIORITY}"
            )));
        }
        let idempotency = key.map(|key| IdempotencyKey {
            request_hash: self.fingerprint(&received.content_hash, priority),
            key,
        });
        Ok(Submission {
            tenant: tenant.to_owned(),
            audio: received.audio,
            format: Some(format.to_owned()),
            source: self.source,
            patient_reference: self.patient_reference,
            encounter_reference: self.encounter_reference,
            priority,
            callback_url: self.callback_url,
            idempotency,
            trace_parent,
        })
    }

    /// Hex SHA-256 over everything that makes two requests the same request.
    fn fingerprint(&self, audio_hash: &str, priority: u8) -> String {
        let mut hash = Sha256::new();
        // The audio's digest as raw bytes (as fingerprints were always made,
        // so keys stored before uploads were spooled still match).
        hash.update(hex::decode(audio_hash).unwrap_or_else(|_| audio_hash.as_bytes().to_vec()));
        for field in [
            self.patient_reference.as_deref(),
            self.encounter_reference.as_deref(),
            self.callback_url.as_deref(),
        ] {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            let field = field.unwrap_or("\u{0}");
            hash.update((field.len() as u64).to_le_bytes());
            hash.update(field.as_bytes());
        }
        hash.update([priority]);
        hex::encode(hash.finalize())
    }
}

async fn read_upload(
    mut multipart: Multipart,
    limit: usize,
    spool: (PathBuf, Option<Sealer>),
) -> Result<SubmissionFields, ApiError> {
    let read = read_form(&mut multipart, limit, spool).await;
    if matches!(
        read,
        Err(ApiError::BadRequest(_) | ApiError::Unprocessable(_))
    ) {
        discard_rest(&mut multipart).await;
    }
    read
}

/// Reads what is left of a form refused on an early field and drops it (at
/// most the upload limit, which the body limit enforces): a client still
/// sending its audio then reads the refusal, not a reset connection.
async fn discard_rest(multipart: &mut Multipart) {
    while let Ok(Some(mut field)) = multipart.next_field().await {
        while let Ok(Some(_)) = field.chunk().await {}
    }
}

async fn read_form(
    multipart: &mut Multipart,
    limit: usize,
    spool: (PathBuf, Option<Sealer>),
) -> Result<SubmissionFields, ApiError> {
    let mut fields = SubmissionFields {
        source: String::new(),
        audio: None,
        declared_type: None,
        patient_reference: None,
        encounter_reference: None,
        priority: None,
        callback_url: None,
    };
    let too_large = |err: axum::extract::multipart::MultipartError| {
        if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit_bytes: limit }
        } else {
            ApiError::BadRequest("malformed multipart body".into())
        }
    };
    while let Some(field) = multipart.next_field().await.map_err(too_large)? {
        let name = field.name().unwrap_or("").to_owned();
        match name.as_str() {
            "audio" => {
                fields.source = field.file_name().unwrap_or("upload").to_owned();
                fields.declared_type = field.content_type().map(str::to_ascii_lowercase);
                // A second audio part replaces the first (whose file is removed).
                fields.audio = Some(spool_upload(field, limit, spool.clone()).await?);
            }
            "patient_reference" | "encounter_reference" | "priority" | "callback_url" => {
                let value = field.text().await.map_err(too_large)?;
                let value = value.trim().to_owned();
                match name.as_str() {
                    "patient_reference" => fields.patient_reference = non_empty(value),
                    "encounter_reference" => fields.encounter_reference = non_empty(value),
                    "callback_url" => fields.callback_url = non_empty(value),
                    _ => {
                        fields.priority = match non_empty(value) {
                            None => None,
                            Some(text) => Some(text.parse().map_err(|_| {
                                ApiError::Unprocessable(format!(
                                    "priority must be an integer 0-{MAX_PRIORITY}"
                                ))
                            })?),
                        }
                    }
                }
            }
            _ => {
                return Err(ApiError::BadRequest(
                    "unknown form field (expected audio, patient_reference, encounter_reference, \
                     priority, callback_url)"
                        .into(),
                ))
            }
        }
    }
    if fields.audio.is_none() {
        return Err(ApiError::BadRequest(
            "the form has no audio field (a file)".into(),
        ));
    }
    Ok(fields)
}

/// Streams the field into a temporary file in `dir`, hashing it as it goes
/// and refusing it with 413 as soon as it passes `limit`: an upload holds at
/// most [`SPOOL_WRITE_BYTES`] of memory. The file is fsynced, and the folder
/// (its name is durable), before this returns; on any refusal it is removed.
async fn spool_upload(
    mut field: axum::extract::multipart::Field<'_>,
    limit: usize,
    (dir, sealer): (PathBuf, Option<Sealer>),
) -> Result<ReceivedAudio, ApiError> {
    // Sealed from the first byte when encryption is on (MMT_ENCRYPTION_KEYS).
    let mut spool =
        off_the_async_threads(move || SpoolWriter::create_sealed(&dir, sealer.as_ref())).await?;
    let mut len = 0usize;
    let mut pending = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|err| {
        if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit_bytes: limit }
        } else {
            ApiError::BadRequest("malformed multipart body".into())
        }
    })? {
        len += chunk.len();
        if len > limit {
            return Err(ApiError::PayloadTooLarge { limit_bytes: limit });
        }
        pending.extend_from_slice(&chunk);
        if pending.len() >= SPOOL_WRITE_BYTES {
            (spool, pending) = append(spool, pending).await?;
            pending.clear();
        }
    }
    let (spool, _) = append(spool, pending).await?;
    let spooled = off_the_async_threads(move || spool.finish()).await?;
    Ok(ReceivedAudio::from(spooled))
}

/// Hashes and writes `bytes` to the spool; gives the buffer back for reuse.
async fn append(
    mut spool: SpoolWriter,
    bytes: Vec<u8>,
) -> Result<(SpoolWriter, Vec<u8>), ApiError> {
    off_the_async_threads(move || {
        spool.append(&bytes)?;
        Ok((spool, bytes))
    })
    .await
}

/// Runs a spool's file I/O on the blocking threads.
async fn off_the_async_threads<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| ApiError::internal("spooling the upload stopped"))?
        .map_err(|err| spool_failed(&err))
}

/// A spool file that cannot be written: the disk (full, read-only) is a
/// condition of this server, not of the request.
fn spool_failed(err: &std::io::Error) -> ApiError {
    tracing::error!(error = %err.kind(), "an upload could not be spooled to disk");
    ApiError::Unavailable("the upload could not be stored; retry later".into())
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

/// What a refused JSON body's problem says of each field of [`JobRequest`].
const JOB_REQUEST_SHAPE: JsonShape = JsonShape {
    name: "JobRequest",
    summary: "an object with audio_reference (required), and optionally \
              patient_reference, encounter_reference, priority, callback_url",
    fields: &[
        (
            "audio_reference",
            "must be a string (a file:// URL or an absolute path)",
        ),
        ("patient_reference", "must be a string Patient/<id>"),
        ("encounter_reference", "must be a string Encounter/<id>"),
        ("priority", "must be an integer 0-9"),
        ("callback_url", "must be a string (an http(s) URL)"),
    ],
};

/// The JSON body as a [`JobRequest`]. axum's `Json` extractor is not used: its
/// rejection quotes the body (serde's messages repeat values, which may be
/// PHI); this names the field and its rule only.
async fn read_job_request(request: Request, state: &AppState) -> Result<JobRequest, ApiError> {
    // The body limit (`DefaultBodyLimit`) applies to this extractor too.
    let body = axum::body::Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit_bytes: state.config.max_upload_bytes,
                }
            } else {
                ApiError::BadRequest("the request body could not be read".into())
            }
        })?;
    read_json::<JobRequest>(&body, &JOB_REQUEST_SHAPE).map_err(|problem| match problem {
        JsonProblem::Field { .. } => ApiError::Unprocessable(problem.to_string()),
        JsonProblem::NotJson { .. } | JsonProblem::Shape { .. } => {
            ApiError::BadRequest(problem.to_string())
        }
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be 1-255 visible ASCII characters".into(),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// The container of `audio` by its magic bytes.
pub fn sniff_audio(audio: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| audio.starts_with(magic);
    if starts(b"RIFF") && audio.get(8..12) == Some(b"WAVE") {
        Some("wav")
    } else if starts(b"fLaC") {
        Some("flac")
    } else if starts(b"OggS") {
        // An Opus stream names itself in its first packet.
        let head = &audio[..audio.len().min(64)];
        if head.windows(8).any(|w| w == b"OpusHead") {
            Some("opus")
        } else {
            Some("ogg")
        }
    } else if starts(b"ID3") || (audio.len() >= 2 && audio[0] == 0xff && audio[1] & 0xe0 == 0xe0) {
        Some("mp3")
    } else {
        None
    }
}

/// `Patient/<id>` or `Encounter/<id>` with a FHIR id (1–64 of `[A-Za-z0-9.-]`),
/// checked as a broker's envelope and a sidecar are.
fn check_fhir_reference(
    field: &'static str,
    kind: &str,
    reference: Option<&str>,
) -> Result<(), ApiError> {
    match reference_problem(field, kind, reference) {
        Some(problem) => Err(ApiError::Unprocessable(problem.to_string())),
        None => Ok(()),
    }
}

fn check_reference_syntax(reference: &str) -> Result<(), ApiError> {
    if reference.is_empty() || reference.len() > 1024 {
        return Err(ApiError::Unprocessable(
            "audio_reference must be 1-1024 characters".into(),
        ));
    }
    Ok(())
}

/// A job id from the path: anything that cannot be one is simply not found.
fn job_id(id: String) -> Result<JobId, ApiError> {
    if id.is_empty()
        || id.len() > 128
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(ApiError::NotFound);
    }
    Ok(JobId(id))
}

/// A job's status, timestamps, attempts and failure.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's roles do not allow reading", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Tenant over its rate limit", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    require(&caller, READERS)?;
    let id = job_id(id)?;
    let tenant = caller.tenant;
    let job = state
        .blocking(move |control| control.job(&tenant, &id).map_err(ApiError::from))
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(JobView::from(&job)))
}

/// The tenant's jobs, newest first, filtered by status and time, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(ListParams),
    responses(
        (status = 200, description = "One page of jobs", body = JobList),
        (status = 400, description = "Bad filter or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's roles do not allow reading", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Tenant over its rate limit", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    require(&caller, READERS)?;
    let Query(params) =
        params.map_err(|_| ApiError::BadRequest("unreadable query parameters".into()))?;
    let time = |value: &Option<String>, name: &str| {
        value
            .as_deref()
            .map(|text| {
                parse_rfc3339(text)
                    .ok_or_else(|| ApiError::BadRequest(format!("{name} must be RFC 3339")))
            })
            .transpose()
    };
    let max = state.config.max_page_size;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE_SIZE.min(max));
    if limit == 0 || limit > max {
        return Err(ApiError::BadRequest(format!("limit must be 1-{max}")));
    }
    let after = params
        .cursor
        .as_deref()
        .map(|token| decode_cursor(token).ok_or_else(|| ApiError::BadRequest("bad cursor".into())))
        .transpose()?;
    let query = ListQuery {
        status: params.status.map(JobStatus::from),
        received_from: time(&params.received_after, "received_after")?,
        received_before: time(&params.received_before, "received_before")?,
        after,
        limit,
    };
    let tenant = caller.tenant;
    let page = state
        .blocking(move |control| control.list(&tenant, &query).map_err(ApiError::from))
        .await?;
    Ok(Json(JobList {
        jobs: page.jobs.iter().map(JobView::from).collect(),
        next_cursor: page.next.as_ref().map(encode_cursor),
    }))
}

/// The transcript of a completed job, as JSON, text, SRT, WebVTT or FHIR.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/transcript",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id"), TranscriptParams),
    responses(
        (status = 200, description = "The transcript", content(
            (crate::views::TranscriptSchema = "application/json"),
            (String = "text/plain"),
            (String = "application/x-subrip"),
            (String = "text/vtt"),
            (serde_json::Value = "application/fhir+json"),
        )),
        (status = 400, description = "Unknown format", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's roles do not allow reading", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job has not completed", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Tenant over its rate limit", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The read could not be recorded in the audit trail (nothing was served), or the job store is down", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_transcript(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    params: Result<Query<TranscriptParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    require(&caller, READERS)?;
    let Query(params) = params
        .map_err(|_| ApiError::BadRequest("format must be json, text, srt, vtt or fhir".into()))?;
    let id = job_id(id)?;
    let format = params.format.unwrap_or_default();
    let read = Access::TranscriptRead {
        tenant: caller.tenant.clone(),
        job_id: id.clone(),
        subject: caller.subject,
        format: format.as_str().to_owned(),
    };
    let tenant = caller.tenant;
    let (job, transcript) = state
        .blocking({
            let id = id.clone();
            let tenant = tenant.clone();
            move |control| control.transcript(&tenant, &id).map_err(ApiError::from)
        })
        .await?
        .ok_or(ApiError::NotFound)?;
    let transcript = match transcript {
        Some(transcript) if job.status == JobStatus::Completed => transcript,
        _ => {
            return Err(ApiError::Conflict(format!(
                "the job is {}; its transcript is not ready",
                job.status.as_str()
            )))
        }
    };
    let (content_type, body) = match format {
        TranscriptFormatParam::Json => (
            "application/json",
            transcript.render(TranscriptFormat::Json),
        ),
        TranscriptFormatParam::Text => (
            "text/plain; charset=utf-8",
            transcript.render(TranscriptFormat::Text),
        ),
        TranscriptFormatParam::Srt => (
            "application/x-subrip",
            transcript.render(TranscriptFormat::Srt),
        ),
        TranscriptFormatParam::Vtt => (
            "text/vtt; charset=utf-8",
            transcript.render(TranscriptFormat::Vtt),
        ),
        TranscriptFormatParam::Fhir => {
            let document = state
                .blocking(move |control| {
                    control.fhir_document(&tenant, &id).map_err(ApiError::from)
                })
                .await?
                .ok_or(ApiError::NotFound)?;
            ("application/fhir+json", document)
        }
    };
    // No audit line, no transcript: the read is recorded before it is served.
    state
        .blocking(move |control| control.audit_access(&read).map_err(ApiError::from))
        .await?;
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// Deletes a job: its audio, transcript and documents are purged, and the
/// deletion is recorded in the audit trail.
#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only admins delete", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is being transcribed; delete it once it has finished", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Tenant over its rate limit", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn delete_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&caller, ADMINS)?;
    let id = job_id(id)?;
    let deleted = state
        .blocking(move |control| {
            control
                .delete(&caller.tenant, &id, &caller.subject)
                .map_err(ApiError::from)
        })
        .await?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_is_recognised_by_its_magic_bytes() {
        assert_eq!(sniff_audio(b"RIFF\0\0\0\0WAVEfmt "), Some("wav"));
        assert_eq!(sniff_audio(b"fLaC\0\0"), Some("flac"));
        assert_eq!(sniff_audio(b"ID3\x04"), Some("mp3"));
        assert_eq!(sniff_audio(b"OggS\0\x02"), Some("ogg"));
        assert_eq!(sniff_audio(b"%PDF-1.7"), None);
        assert_eq!(sniff_audio(b"RIFF\0\0\0\0AVI "), None);
    }

    #[test]
    fn fhir_references_are_checked() {
        let check = |reference| check_fhir_reference("patient_reference", "Patient", reference);
        assert!(check(Some("Patient/p-17")).is_ok());
        assert!(check(None).is_ok());
        assert!(check(Some("Encounter/9")).is_err());
        assert!(check(Some("Patient/")).is_err());
        assert!(check(Some("Patient/a b")).is_err());
        let refused = check(Some("Smith John")).unwrap_err().to_string();
        assert!(refused.starts_with("patient_reference must"), "{refused}");
        assert!(!refused.contains("Smith"), "{refused}");
    }

    #[test]
    fn the_fingerprint_tells_requests_apart() {
        let fields = |patient: Option<&str>| SubmissionFields {
            source: "a.wav".into(),
            audio: None,
            declared_type: None,
            patient_reference: patient.map(str::to_owned),
            encounter_reference: None,
            priority: None,
            callback_url: None,
        };
        let audio = mmt_core::content::content_hash(&[1, 2, 3]);
        let other_audio = mmt_core::content::content_hash(&[1, 2, 4]);
        let print = |patient, audio: &str, priority| fields(patient).fingerprint(audio, priority);
        assert_eq!(print(None, &audio, 0), print(None, &audio, 0));
        assert_ne!(print(None, &audio, 0), print(Some("Patient/1"), &audio, 0));
        assert_ne!(print(None, &audio, 0), print(None, &audio, 1));
        assert_ne!(print(None, &audio, 0), print(None, &other_audio, 0));
    }
}
