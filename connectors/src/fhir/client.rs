//! The FHIR R4 server sink: documents created on a FHIR server over HTTP.
//!
//! - `write` is an idempotent *conditional create*: `POST [base]/DocumentReference`
//!   with `If-None-Exist: identifier=<system>|<job id>`, so a redelivered job finds
//!   its document (200) instead of making a second one (201).
//! - `purge` is a *conditional delete* per job id.
//! - Retryable failures (5xx, 408, 409, 429, timeouts, connection failures) are
//!   retried a few times inside the sink with the one backoff policy
//!   (`mmt_core::retry`, honouring a short `Retry-After`), then reported as
//!   retryable: the commit stage waits the outage out, it never dead-letters a
//!   job for it.
//! - Other answers are not retryable; the error gives the HTTP status and the
//!   `OperationOutcome`'s issue severities and codes, never its free-text
//!   diagnostics (servers echo the rejected resource's values there, and the
//!   document holds the transcript and patient references).
//!
//! The client is blocking (`ureq`): the commit stage is synchronous. Redirects are
//! not followed, so the bearer token is never sent anywhere but the configured base.

use std::fmt;
use std::io::Read as _;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use mmt_core::error::ErrorClass;
use mmt_core::job::{CompletedJob, ComponentError, DocumentSink, JobId};
use mmt_core::retry::RetryPolicy;
use mmt_core::trace::TRACE_PARENT_HEADER;
use serde::Deserialize;
use ureq::http::Response;
use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};
use ureq::{Agent, Body};

use super::config::FhirServerConfig;
use super::document::{document_reference, is_fhir_id, JOB_ID_SYSTEM};
use crate::error::{ConnectorError, Result};

/// The media type of FHIR JSON, sent as `Content-Type` and `Accept`.
pub const FHIR_JSON: &str = "application/fhir+json";

/// The most of an error answer read to find its `OperationOutcome`.
const OUTCOME_LIMIT: u64 = 64 * 1024;
/// The most issues an error message lists.
const MAX_ISSUES: usize = 5;

/// Creates job documents on a FHIR R4 server (see the module docs).
///
/// Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct FhirServerSink {
    agent: Agent,
    base: String,
    /// `Bearer <token>`: a secret, never printed.
    authorization: Option<Arc<str>>,
    identifier_system: String,
    attempts: u32,
    /// Waits between the attempts of one request.
    retry: RetryPolicy,
}

/// What the server's `CapabilityStatement` says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `fhirVersion`, e.g. `4.0.1`.
    pub fhir_version: Option<String>,
    /// `software.name`, e.g. `HAPI FHIR Server`.
    pub software: Option<String>,
}

/// What one write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The server made a new `DocumentReference` (201).
    Created,
    /// The server already had the job's document and made none (200).
    AlreadyExists,
}

impl FhirServerSink {
    /// Builds the sink from a config already validated (most callers use
    /// [`FhirServerConfig::build`]). Reads `ca_file`; touches no network.
    pub(crate) fn new(config: &FhirServerConfig) -> Result<Self> {
        let mut builder = Agent::config_builder()
            // Statuses are answers to classify, not errors.
            .http_status_as_error(false)
            .timeout_global(Some(config.timeout_duration()))
            // A redirect would take the bearer token and the document elsewhere.
            .max_redirects(0)
            .user_agent(concat!("mmt/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            let roots = read_ca_file(path)?;
            builder = builder.tls_config(TlsConfig::builder().root_certs(roots).build());
        }
        Ok(Self {
            agent: Agent::new_with_config(builder.build()),
            base: config.base().to_owned(),
            authorization: config
                .bearer_token
                .as_deref()
                .map(|token| Arc::from(format!("Bearer {}", token.trim()))),
            identifier_system: config.identifier_system.clone(),
            attempts: config.attempts.max(1),
            retry: retry_policy(config),
        })
    }

    /// The `identifier` search value of a job: `<system>|<id>`.
    fn identifier_token(&self, id: &str) -> String {
        format!("{}|{id}", self.identifier_system)
    }

    /// Fetches `[base]/metadata` and checks that it is an R4 (or R4B)
    /// `CapabilityStatement`. The only call that is not a document write.
    pub fn health_check(&self) -> Result<ServerInfo> {
        const OPERATION: &str = "capability check";
        let url = format!("{}/metadata", self.base);
        let mut response = self.exchange(OPERATION, || {
            self.authorize(self.agent.get(&url))
                .header("Accept", FHIR_JSON)
                .call()
        })?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(status_error(OPERATION, &mut response, self.attempts));
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Capability {
            resource_type: String,
            fhir_version: Option<String>,
            software: Option<Software>,
        }
        #[derive(Deserialize)]
        struct Software {
            name: Option<String>,
        }
        let capability: Capability =
            read_json(&mut response, 4 * 1024 * 1024).map_err(|reason| {
                protocol(OPERATION, format!("metadata is not FHIR JSON: {reason}"))
            })?;
        if capability.resource_type != "CapabilityStatement" {
            return Err(protocol(
                OPERATION,
                format!(
                    "metadata is a {}, not a CapabilityStatement",
                    sanitize_code(&capability.resource_type)
                ),
            ));
        }
        if let Some(version) = &capability.fhir_version {
            // R4 (4.0.x) and R4B (4.3.x) share the DocumentReference MMT writes.
            if !(version.starts_with("4.0") || version.starts_with("4.3")) {
                return Err(protocol(
                    OPERATION,
                    format!(
                        "the server speaks FHIR {}; this sink writes R4 (4.0.x or 4.3.x)",
                        sanitize_code(version)
                    ),
                ));
            }
        }
        Ok(ServerInfo {
            fhir_version: capability.fhir_version,
            software: capability.software.and_then(|s| s.name),
        })
    }

    /// Creates the job's `DocumentReference` unless the server has one with its
    /// identifier (conditional create).
    pub fn write_document(&self, job: &CompletedJob) -> Result<WriteOutcome> {
        const OPERATION: &str = "DocumentReference create";
        let body = self.create_body(job)?;
        let if_none_exist = format!("identifier={}", self.identifier_token(&job.meta.id.0));
        let url = format!("{}/DocumentReference", self.base);
        let mut response = self.exchange(OPERATION, || {
            self.authorize(self.agent.post(&url))
                .header("Content-Type", FHIR_JSON)
                .header("Accept", FHIR_JSON)
                .header("If-None-Exist", &if_none_exist)
                // The server need not echo the document (and its PHI) back.
                .header("Prefer", "return=minimal")
                .send(&body[..])
        })?;
        match response.status().as_u16() {
            201 => Ok(WriteOutcome::Created),
            // 200: the conditional create matched the job's existing document.
            200 => Ok(WriteOutcome::AlreadyExists),
            _ => Err(status_error(OPERATION, &mut response, self.attempts)),
        }
    }

    /// Deletes the documents of `ids` (conditional delete by identifier); returns
    /// how many the server reported deleted. A 404 counts as already gone. Some
    /// servers answer 200 even when nothing matched, so the count is an upper bound.
    pub fn purge_documents(&self, ids: &[JobId]) -> Result<u64> {
        const OPERATION: &str = "DocumentReference delete";
        let mut deleted = 0;
        for id in ids {
            if !is_fhir_id(&id.0) {
                // No document was ever made for it (see `document_reference`).
                continue;
            }
            // `|` is not a URI character: escaped. The system and id need none
            // (config validation and `is_fhir_id`).
            let url = format!(
                "{}/DocumentReference?identifier={}%7C{}",
                self.base, self.identifier_system, id.0
            );
            let mut response = self.exchange(OPERATION, || {
                self.authorize(self.agent.delete(&url))
                    .header("Accept", FHIR_JSON)
                    .call()
            })?;
            match response.status().as_u16() {
                200 | 202 | 204 => deleted += 1,
                404 | 410 => {}
                _ => return Err(status_error(OPERATION, &mut response, self.attempts)),
            }
        }
        Ok(deleted)
    }

    /// The JSON the server receives for a job: its `DocumentReference` with the
    /// configured identifier system and without `id` (a create lets the server
    /// assign it; some servers refuse a create that carries one).
    pub fn create_body(&self, job: &CompletedJob) -> Result<Vec<u8>> {
        let mut document = document_reference(job)?;
        for identifier in &mut document.identifier {
            if identifier.system == JOB_ID_SYSTEM {
                identifier.system.clone_from(&self.identifier_system);
            }
        }
        let serialize = |source| ConnectorError::Serialize {
            what: "DocumentReference",
            source,
        };
        let mut value = serde_json::to_value(&document).map_err(serialize)?;
        if let Some(object) = value.as_object_mut() {
            object.remove("id");
        }
        serde_json::to_vec(&value).map_err(serialize)
    }

    /// Adds the bearer token, and the `traceparent` of the current span (the
    /// request's, see [`Self::exchange`]) so the server's work joins the job's trace.
    fn authorize<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        let request = match mmt_core::trace::current_trace_parent() {
            Some(parent) => request.header(TRACE_PARENT_HEADER, parent),
            None => request,
        };
        match &self.authorization {
            Some(value) => request.header("Authorization", &**value),
            None => request,
        }
    }

    /// Sends a request until it gets an answer that is not a retryable failure,
    /// or the attempts run out. Returns that answer, whatever its status;
    /// retryable failures that persist become errors.
    fn exchange(
        &self,
        operation: &'static str,
        mut send: impl FnMut() -> Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>> {
        // One client span per operation, retries included (in the job's trace
        // when called from its commit span).
        let span = tracing::info_span!(
            "fhir_request",
            otel.kind = "client",
            operation,
            http.response.status_code = tracing::field::Empty,
        );
        let _span = span.enter();
        let mut attempt = 0;
        let mut backoffs = self.retry.backoff();
        loop {
            attempt += 1;
            let last = attempt >= self.attempts;
            let backoff = backoffs.next().unwrap_or(self.retry.cap());
            match send() {
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    span.record("http.response.status_code", status);
                    if !is_retryable_status(status) {
                        return Ok(response);
                    }
                    let retry_after = retry_after(&response);
                    if last {
                        return Err(status_error(operation, &mut response, attempt));
                    }
                    let wait = match retry_after {
                        Some(asked) if asked > self.retry.cap() => {
                            // Too long to hold the commit stage here: let it wait.
                            let mut error = status_error(operation, &mut response, attempt);
                            if let ConnectorError::FhirStatus { detail, .. } = &mut error {
                                detail.push_str(&format!(
                                    "; server asked to retry after {} s",
                                    asked.as_secs()
                                ));
                            }
                            return Err(error);
                        }
                        Some(asked) => asked.max(backoff),
                        None => backoff,
                    };
                    tracing::warn!(
                        operation,
                        status,
                        attempt,
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "FHIR server answered a retryable status; retrying"
                    );
                    drop(response);
                    thread::sleep(wait);
                }
                Err(error) => {
                    let retryable = is_retryable_transport(&error);
                    if last || !retryable {
                        return Err(ConnectorError::FhirTransport {
                            operation,
                            reason: transport_reason(&error),
                            retryable,
                            attempts: attempt,
                        });
                    }
                    tracing::warn!(
                        operation,
                        attempt,
                        error = %transport_reason(&error),
                        "FHIR server unreachable; retrying"
                    );
                    thread::sleep(backoff);
                }
            }
        }
    }
}

/// The one retry policy with the config's numbers (a cap below the base, which
/// validation rejects, is read as the base).
fn retry_policy(config: &FhirServerConfig) -> RetryPolicy {
    let base = Duration::from_millis(config.backoff_base_ms);
    let cap = Duration::from_millis(config.max_backoff_ms).max(base);
    RetryPolicy::new(base, cap).unwrap_or_else(|_| RetryPolicy::from_base(base))
}

impl fmt::Debug for FhirServerSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FhirServerSink")
            .field("base", &self.base)
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .field("identifier_system", &self.identifier_system)
            .field("attempts", &self.attempts)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl DocumentSink for FhirServerSink {
    fn write(&mut self, job: &CompletedJob) -> Result<(), ComponentError> {
        self.write_document(job).map(drop).map_err(Into::into)
    }

    fn purge(&mut self, ids: &[JobId]) -> Result<u64, ComponentError> {
        self.purge_documents(ids).map_err(Into::into)
    }
}

/// Who is at fault for an error status, and whether a retry can help.
///
/// - 5xx, 408 (timeout), 409 (a concurrent create of the same identifier; the
///   retry finds it) and 429 (throttled): retryable.
/// - 400, 413, 422: the server rejected *this document* (commonly a patient or
///   encounter reference it does not know, or a profile the document does not
///   meet). Sending it again cannot help and other jobs may well succeed, so it
///   is classed as the job's input: `UserInput`.
/// - Anything else (401/403 credentials, 404/405 wrong base or no
///   DocumentReference support, 412 duplicate identifiers on the server, 3xx a
///   redirect not followed): the server or its deployment, not retryable.
pub(crate) fn status_class(status: u16) -> ErrorClass {
    if is_retryable_status(status) {
        ErrorClass::External { retryable: true }
    } else if matches!(status, 400 | 413 | 422) {
        ErrorClass::UserInput
    } else {
        ErrorClass::External { retryable: false }
    }
}

fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 429 | 500..=599)
}

/// Connection failures, resets and timeouts may pass; a malformed request or
/// a TLS failure (certificate, protocol) will not.
fn is_retryable_transport(error: &ureq::Error) -> bool {
    use ureq::Error as E;
    matches!(
        error,
        E::Timeout(_) | E::Io(_) | E::HostNotFound | E::ConnectionFailed | E::Protocol(_)
    )
}

/// A short, PHI-free description of a transport error (never a body).
fn transport_reason(error: &ureq::Error) -> String {
    use ureq::Error as E;
    match error {
        E::Timeout(which) => format!("timed out ({which})"),
        E::Io(io) => format!("I/O error: {}", io.kind()),
        E::HostNotFound => "host not found".to_owned(),
        E::ConnectionFailed => "connection failed".to_owned(),
        other => other.to_string(),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is ignored: the backoff applies).
fn retry_after(response: &Response<Body>) -> Option<Duration> {
    response
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

fn protocol(operation: &'static str, reason: String) -> ConnectorError {
    ConnectorError::FhirProtocol { operation, reason }
}

/// The error of a final, unsuccessful answer: status, a hint, and the
/// `OperationOutcome`'s issue codes.
fn status_error(
    operation: &'static str,
    response: &mut Response<Body>,
    attempts: u32,
) -> ConnectorError {
    let status = response.status().as_u16();
    let mut detail = String::new();
    if let Some(hint) = hint(operation, status) {
        detail.push_str(": ");
        detail.push_str(hint);
    }
    if let Some(issues) = read_json::<OperationOutcome>(response, OUTCOME_LIMIT)
        .ok()
        .and_then(|outcome| outcome.summary())
    {
        detail.push_str("; OperationOutcome ");
        detail.push_str(&issues);
    }
    ConnectorError::FhirStatus {
        operation,
        status,
        attempts,
        detail,
    }
}

fn hint(operation: &str, status: u16) -> Option<&'static str> {
    Some(match status {
        412 if operation.ends_with("create") => {
            "more than one DocumentReference on the server already carries this job's \
             identifier; a data problem on the server that no retry can fix (remove the \
             duplicates)"
        }
        412 => "the job's identifier matches more than one DocumentReference on the server",
        400 | 422 => "the server rejected the document",
        413 => "the document is larger than the server accepts",
        401 | 403 => "the server refused the credentials (check the bearer token)",
        404 | 405 => "the base URL does not serve DocumentReference",
        300..=399 => {
            "the server redirected, which the sink does not follow (configure the final base URL)"
        }
        _ => return None,
    })
}

/// Reads at most `limit` bytes of a JSON body.
fn read_json<T: serde::de::DeserializeOwned>(
    response: &mut Response<Body>,
    limit: u64,
) -> std::result::Result<T, String> {
    let mut bytes = Vec::new();
    response
        .body_mut()
        .as_reader()
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("reading the answer: {}", error.kind()))?;
    // Only the category: serde_json's message may quote the body.
    serde_json::from_slice(&bytes).map_err(|error| format!("{:?} JSON", error.classify()))
}

/// The coded parts of an `OperationOutcome`. `diagnostics` is deliberately not
/// read: it is free text in which servers echo the rejected values.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OperationOutcome {
    resource_type: String,
    #[serde(default)]
    issue: Vec<Issue>,
}

#[derive(Debug, Deserialize)]
struct Issue {
    severity: Option<String>,
    code: Option<String>,
    details: Option<Details>,
    #[serde(default)]
    expression: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Details {
    #[serde(default)]
    coding: Vec<IssueCoding>,
}

#[derive(Debug, Deserialize)]
struct IssueCoding {
    code: Option<String>,
}

impl OperationOutcome {
    /// `[error invalid (MSG_CODE) at DocumentReference.status; …]`, or `None`.
    fn summary(&self) -> Option<String> {
        if self.resource_type != "OperationOutcome" || self.issue.is_empty() {
            return None;
        }
        let mut parts: Vec<String> = self
            .issue
            .iter()
            .take(MAX_ISSUES)
            .map(|issue| {
                let mut part = format!(
                    "{} {}",
                    issue.severity.as_deref().map_or("?", sanitize_code),
                    issue.code.as_deref().map_or("?", sanitize_code)
                );
                if let Some(code) = issue
                    .details
                    .as_ref()
                    .and_then(|d| d.coding.iter().find_map(|c| c.code.as_deref()))
                {
                    part.push_str(&format!(" ({})", sanitize_code(code)));
                }
                if let Some(path) = issue.expression.iter().find_map(|e| sanitize_path(e)) {
                    part.push_str(" at ");
                    part.push_str(path);
                }
                part
            })
            .collect();
        if self.issue.len() > MAX_ISSUES {
            parts.push(format!("+{} more", self.issue.len() - MAX_ISSUES));
        }
        Some(format!("[{}]", parts.join("; ")))
    }
}

/// A FHIR `code` (no whitespace, short) passes as is; anything else is replaced,
/// so a server that puts free text where a code belongs cannot leak it.
fn sanitize_code(code: &str) -> &str {
    let ok = (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        code
    } else {
        "<non-code>"
    }
}

/// A plain element path such as `DocumentReference.content[0].attachment.data`
/// passes; a FHIRPath with functions or literals (which could hold values) does not.
fn sanitize_path(path: &str) -> Option<&str> {
    let plain = (1..=128).contains(&path.len())
        && path.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'[' | b']' | b'_'));
    plain.then_some(path)
}

/// The trusted roots of a PEM file.
fn read_ca_file(path: &std::path::Path) -> Result<RootCerts> {
    let pem = std::fs::read(path).map_err(|source| ConnectorError::io("reading", path, source))?;
    let mut certs = Vec::new();
    for item in parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(error) => {
                return Err(config_error(format!(
                    "{} is not a PEM certificate file: {error}",
                    path.display()
                )))
            }
        }
    }
    if certs.is_empty() {
        return Err(config_error(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(RootCerts::from(certs))
}

fn config_error(message: String) -> ConnectorError {
    ConnectorError::Config {
        component: "FHIR server",
        problems: vec![crate::config::ConfigProblem::new("ca_file", message)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classed() {
        for retryable in [408, 409, 429, 500, 502, 503, 504] {
            assert!(status_class(retryable).is_retryable(), "{retryable}");
        }
        assert_eq!(status_class(422), ErrorClass::UserInput);
        assert_eq!(status_class(400), ErrorClass::UserInput);
        assert_eq!(status_class(412), ErrorClass::External { retryable: false });
        assert_eq!(status_class(401), ErrorClass::External { retryable: false });
        assert_eq!(status_class(302), ErrorClass::External { retryable: false });
    }

    #[test]
    fn outcome_summary_keeps_codes_and_drops_diagnostics() {
        let outcome: OperationOutcome = serde_json::from_value(serde_json::json!({
            "resourceType": "OperationOutcome",
            "issue": [
                {"severity": "error", "code": "invalid",
                 "details": {"coding": [{"code": "MSG_PARAM_INVALID"}]},
                 "diagnostics": "Patient John Smith has no record",
                 "expression": ["DocumentReference.subject"]},
                {"severity": "warning", "code": "John Smith",
                 "expression": ["DocumentReference.where(subject = 'Patient/123')"]}
            ]
        }))
        .expect("outcome");
        let summary = outcome.summary().expect("summary");
        assert_eq!(
            summary,
            "[error invalid (MSG_PARAM_INVALID) at DocumentReference.subject; warning <non-code>]"
        );
        assert!(!summary.contains("Smith") && !summary.contains("Patient/123"));
    }

    #[test]
    fn the_waits_are_the_shared_policy_with_the_configured_numbers() {
        let config = FhirServerConfig::new("http://127.0.0.1:1/fhir")
            .retries(5, Duration::from_millis(100))
            .max_backoff(Duration::from_millis(350));
        let sink = config.build(false).expect("valid");
        assert_eq!(
            sink.retry,
            RetryPolicy::new(Duration::from_millis(100), Duration::from_millis(350))
                .expect("valid")
        );
        let waits: Vec<Duration> = sink.retry.backoff().take(5).collect();
        assert!(waits[0] >= Duration::from_millis(100) && waits[0] < Duration::from_millis(200));
        assert!(waits.iter().all(|wait| *wait < Duration::from_millis(350)));
    }

    #[test]
    fn a_missing_ca_file_is_an_error_at_build() {
        let mut config = FhirServerConfig::new("https://fhir.example.org/r4");
        config.ca_file = Some("/nonexistent/mmt-ca.pem".into());
        assert!(config.validate(true).is_ok());
        assert!(matches!(config.build(true), Err(ConnectorError::Io { .. })));
    }
}
