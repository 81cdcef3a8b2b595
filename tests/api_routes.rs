//! The REST API's contract, request by request, over the real job control
//! (SQLite job store, upload store, file sinks in a temporary folder) with
//! the dataflow not running: accepted jobs stay queued, which is what these
//! tests need. Transcription through the API is in `api_serve.rs`.

// The helpers below are test code too: a failed set-up step should panic.
#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use common::{distinct_recordings, read_lines, receivers};
use mmt_api::auth::{sign_hs256, sign_rs256, Claims, KeyRing};
use mmt_api::webhook::target::TargetPolicy;
use mmt_api::webhook::{CallbackStore, WebhookConfig};
use mmt_api::{ApiConfig, AppState};
use mmt_connectors::SqlJobStoreConfig;
use mmt_core::job::{CompletedJob, JobId, JobStore};
use mmt_core::telemetry::Metrics;
use mmt_core::Transcript;
use mmt_pipeline::run::OutputPaths;
use mmt_pipeline::serve::{IntakeChoice, ServiceControl};
use mmt_pipeline::Config;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use tower::ServiceExt;

const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
const BOUNDARY: &str = "mmt-test-boundary-7f3a";

/// A router over a real job control in a temporary folder.
struct Api {
    router: Router,
    keys: Arc<KeyRing>,
    dir: tempfile::TempDir,
    config: ApiConfig,
    // Dropped last, outside any runtime (the store owns one).
    control: Arc<ServiceControl>,
}

impl Api {
    fn new() -> Self {
        Self::with(ApiConfig {
            max_upload_bytes: 512 * 1024,
            ..ApiConfig::default()
        })
    }

    fn with(config: ApiConfig) -> Self {
        Self::open(config, &[], tempfile::tempdir().unwrap())
    }

    /// An API with `vars` as the environment, over the folder `dir` (a
    /// restart when it was used before).
    fn open(config: ApiConfig, vars: &[(&str, &str)], dir: tempfile::TempDir) -> Self {
        let settings = Config::from_vars(
            vars.iter()
                .map(|(name, value)| (name.to_string(), value.to_string())),
        )
        .unwrap();
        let paths = OutputPaths::resolve(&settings, dir.path());
        let metrics = Metrics::new().unwrap();
        let (_resources, control) = mmt_pipeline::serve::open(
            &settings,
            &paths,
            &dir.path().join("uploads"),
            1,
            IntakeChoice::Embedded,
            &metrics,
        )
        .unwrap();
        let keys = Arc::new(KeyRing::new(Some(SECRET), None).unwrap());
        let state = AppState::new(control.clone(), Arc::clone(&keys), config.clone(), metrics);
        Self {
            router: mmt_api::router(state),
            keys,
            dir,
            config,
            control,
        }
    }

    /// Stops this API (nothing running is left) and starts it again over the
    /// same folder, with `vars` as the environment.
    fn restart(self, vars: &[(&str, &str)]) -> Self {
        let Self {
            router,
            dir,
            config,
            control,
            ..
        } = self;
        drop(router);
        drop(control);
        Self::open(config, vars, dir)
    }

    /// Sends one request; returns its status and headers.
    fn head(&self, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap) {
        let response = runtime()
            .block_on(self.router.clone().oneshot(request))
            .unwrap();
        (response.status(), response.headers().clone())
    }

    /// Sends one request; returns status, content type and body.
    fn send(&self, request: Request<Body>) -> (StatusCode, String, Vec<u8>) {
        let router = self.router.clone();
        runtime().block_on(async move {
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, content_type, body.to_vec())
        })
    }

    fn json(&self, request: Request<Body>) -> (StatusCode, Value) {
        let (status, _, body) = self.send(request);
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, value)
    }

    fn uploads(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path().join("uploads"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn claims(tenant: &str, roles: &[&str], expires_in: i64) -> Claims {
    let now = mmt_core::job::unix_now();
    Claims {
        sub: "svc-test".into(),
        tenant: tenant.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        exp: (now + expires_in) as u64,
        iat: Some(now as u64),
        nbf: None,
        aud: None,
    }
}

fn token(tenant: &str, roles: &[&str]) -> String {
    sign_hs256(SECRET, &claims(tenant, roles, 600)).unwrap()
}

const ALL: &[&str] = &["submitter", "reader", "admin"];

fn get(path: &str, token: &str) -> Request<Body> {
    Request::get(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

fn delete(path: &str, token: &str) -> Request<Body> {
    Request::builder()
        .method(Method::DELETE)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

/// A multipart body with `audio` (as `part_type`) and text fields.
fn multipart(audio: &[u8], part_type: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"Doe_Jane.wav\"\r\nContent-Type: {part_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(audio);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn upload(token: &str, body: Vec<u8>, key: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/v1/jobs")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        );
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.body(Body::from(body)).unwrap()
}

fn clip(index: usize) -> Vec<u8> {
    distinct_recordings(index + 1).pop().unwrap().1
}

fn submit(api: &Api, token: &str, audio: &[u8]) -> String {
    let (status, job) = api.json(upload(token, multipart(audio, "audio/wav", &[]), None));
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    job["id"].as_str().unwrap().to_owned()
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// Every refused token gets the same answer: 401, a problem document, a
/// Bearer challenge, and no hint of which check failed.
fn assert_refused(api: &Api, request: Request<Body>, case: &str) {
    let (status, content_type, body) = api.send(request);
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}");
    assert_eq!(content_type, "application/problem+json", "{case}");
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        problem["detail"], "a valid bearer token is required",
        "{case}: the detail must not say why"
    );
}

#[test]
fn every_kind_of_bad_token_is_refused_alike() {
    let api = Api::new();
    let payload = serde_json::to_string(&claims("clinic-a", ALL, 600)).unwrap();
    let alg_none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&payload)
    );
    let unknown_kid = format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(r#"{"alg":"RS256","typ":"JWT","kid":"retired"}"#),
        b64(&payload)
    );
    let expired = sign_hs256(SECRET, &claims("clinic-a", ALL, -120)).unwrap();
    let wrong_key = sign_hs256(
        "another-secret-0123456789abcdef-0123456",
        &claims("clinic-a", ALL, 600),
    )
    .unwrap();
    let no_tenant = sign_hs256(SECRET, &claims("", ALL, 600)).unwrap();
    let mut tampered = token("clinic-a", &["reader"]);
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    let cases = [
        ("expired", expired),
        ("wrongly signed", wrong_key),
        ("alg none", alg_none),
        ("unknown key id", unknown_kid),
        ("malformed", "not-a-jwt".to_owned()),
        ("tampered signature", tampered),
        ("no tenant", no_tenant),
    ];
    for (case, bad) in cases {
        assert_refused(&api, get("/v1/jobs", &bad), case);
    }
    assert_refused(
        &api,
        Request::get("/v1/jobs").body(Body::empty()).unwrap(),
        "no token",
    );
    assert_refused(
        &api,
        Request::get("/v1/jobs")
            .header(header::AUTHORIZATION, format!("Basic {}", b64("a:b")))
            .body(Body::empty())
            .unwrap(),
        "not a bearer token",
    );
}

fn rsa_key_pair(dir: &Path, name: &str) -> (Vec<u8>, jsonwebtoken::DecodingKey) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pem"));
    for args in [
        vec!["genrsa", "-out", private.to_str().unwrap(), "2048"],
        vec![
            "rsa",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    ] {
        let status = std::process::Command::new("openssl")
            .args(&args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success());
    }
    let decoding =
        jsonwebtoken::DecodingKey::from_rsa_pem(&std::fs::read(&public).unwrap()).unwrap();
    (std::fs::read(&private).unwrap(), decoding)
}

#[test]
fn rs256_tokens_verify_by_key_id_and_keys_rotate() {
    let api = Api::new();
    let keys_dir = tempfile::tempdir().unwrap();
    let (old_private, old_public) = rsa_key_pair(keys_dir.path(), "2026-10");
    let (new_private, new_public) = rsa_key_pair(keys_dir.path(), "2026-11");
    let by_old = sign_rs256(&old_private, "2026-10", &claims("clinic-a", ALL, 600)).unwrap();
    let by_new = sign_rs256(&new_private, "2026-11", &claims("clinic-a", ALL, 600)).unwrap();
    let mislabelled = sign_rs256(&new_private, "2026-10", &claims("clinic-a", ALL, 600)).unwrap();

    api.keys
        .replace_rs256([("2026-10".to_owned(), old_public.clone())].into());
    assert_eq!(api.send(get("/v1/jobs", &by_old)).0, StatusCode::OK);
    assert_refused(&api, get("/v1/jobs", &by_new), "key not yet published");
    assert_refused(&api, get("/v1/jobs", &mislabelled), "signed by another key");

    // Rotation: both keys during the overlap, then only the new one.
    api.keys.replace_rs256(
        [
            ("2026-10".to_owned(), old_public),
            ("2026-11".to_owned(), new_public.clone()),
        ]
        .into(),
    );
    assert_eq!(api.send(get("/v1/jobs", &by_new)).0, StatusCode::OK);
    api.keys
        .replace_rs256([("2026-11".to_owned(), new_public)].into());
    assert_refused(&api, get("/v1/jobs", &by_old), "retired key");
    assert_eq!(api.send(get("/v1/jobs", &by_new)).0, StatusCode::OK);
    // The HS256 secret keeps working beside the RS256 keys.
    assert_eq!(
        api.send(get("/v1/jobs", &token("clinic-a", &["reader"]))).0,
        StatusCode::OK
    );
}

#[test]
fn roles_limit_what_a_caller_may_do() {
    let api = Api::new();
    let reader = token("clinic-a", &["reader"]);
    let submitter = token("clinic-a", &["submitter"]);
    let nobody = token("clinic-a", &[]);
    let body = || multipart(&clip(0), "audio/wav", &[]);
    assert_eq!(
        api.send(upload(&reader, body(), None)).0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.send(upload(&nobody, body(), None)).0,
        StatusCode::FORBIDDEN
    );
    let id = submit(&api, &submitter, &clip(0));
    assert_eq!(
        api.send(get(&format!("/v1/jobs/{id}"), &reader)).0,
        StatusCode::OK
    );
    assert_eq!(
        api.send(get(&format!("/v1/jobs/{id}"), &nobody)).0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.send(delete(&format!("/v1/jobs/{id}"), &submitter)).0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.send(get("/v1/status", &submitter)).0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(api.send(get("/v1/status", &reader)).0, StatusCode::OK);
}

#[test]
fn another_tenants_job_is_not_found() {
    let api = Api::new();
    let a = token("clinic-a", ALL);
    let b = token("clinic-b", ALL);
    let id = submit(&api, &a, &clip(0));
    for path in [
        format!("/v1/jobs/{id}"),
        format!("/v1/jobs/{id}/transcript"),
    ] {
        let (status, content_type, body) = api.send(get(&path, &b));
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(content_type, "application/problem+json");
        assert!(!String::from_utf8_lossy(&body).contains("Patient"));
    }
    assert_eq!(
        api.send(delete(&format!("/v1/jobs/{id}"), &b)).0,
        StatusCode::NOT_FOUND
    );
    let (_, listed) = api.json(get("/v1/jobs", &b));
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 0);
    // The same audio from tenant B is B's own job, not A's.
    let own = submit(&api, &b, &clip(0));
    assert_ne!(own, id);
    assert_eq!(
        api.send(get(&format!("/v1/jobs/{id}"), &a)).0,
        StatusCode::OK
    );
}

#[test]
fn uploads_are_checked_for_size_and_type() {
    let api = Api::with(ApiConfig {
        max_upload_bytes: 64 * 1024,
        ..ApiConfig::default()
    });
    let submitter = token("clinic-a", ALL);
    let problem = |request| {
        let (status, content_type, body) = api.send(request);
        assert_eq!(content_type, "application/problem+json", "{status}");
        (status, String::from_utf8(body).unwrap())
    };
    // Over the limit: refused before the body is read to its end.
    let big = common::wav_bytes(&vec![1000i16; 80 * 1024]);
    let (status, detail) = problem(upload(&submitter, multipart(&big, "audio/wav", &[]), None));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{detail}");

    let small = clip(0)[..32 * 1024].to_vec();
    let (status, detail) = problem(upload(
        &submitter,
        multipart(&small, "text/plain", &[]),
        None,
    ));
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{detail}");
    let pdf = b"%PDF-1.7 not audio at all".to_vec();
    let (status, _) = problem(upload(&submitter, multipart(&pdf, "audio/wav", &[]), None));
    assert_eq!(
        status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "audio is sniffed, not trusted"
    );
    let (status, _) = problem(upload(&submitter, multipart(b"", "audio/wav", &[]), None));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = problem(
        Request::post("/v1/jobs")
            .header(header::AUTHORIZATION, format!("Bearer {submitter}"))
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("hello"))
            .unwrap(),
    );
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _) = problem(upload(
        &submitter,
        multipart(&small, "audio/wav", &[("patient_reference", "Smith, John")]),
        None,
    ));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = problem(upload(
        &submitter,
        multipart(&small, "audio/wav", &[("priority", "12")]),
        None,
    ));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = problem(upload(
        &submitter,
        multipart(
            &small,
            "audio/wav",
            &[("callback_url", "https://ehr.example/hook")],
        ),
        None,
    ));
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "no webhook secret configured"
    );
    assert!(api.uploads().is_empty(), "nothing refused was stored");

    let (status, job) = api.json(upload(
        &submitter,
        multipart(
            &small,
            "audio/x-wav",
            &[("patient_reference", "Patient/p-17"), ("priority", "7")],
        ),
        None,
    ));
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["priority"], 7);
    assert_eq!(job["patient_reference"], "Patient/p-17");
    assert_eq!(job["status"], "queued");
}

#[test]
fn a_retried_submission_is_the_same_job() {
    let api = Api::new();
    let submitter = token("clinic-a", ALL);
    let body = |index| multipart(&clip(index), "audio/wav", &[("priority", "3")]);
    let (status, first) = api.json(upload(&submitter, body(0), Some("order-4711")));
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, again) = api.json(upload(&submitter, body(0), Some("order-4711")));
    assert_eq!(status, StatusCode::OK, "a retry creates nothing");
    assert_eq!(again["id"], first["id"]);
    let (status, _) = api.json(upload(&submitter, body(1), Some("order-4711")));
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the key names another request"
    );
    let (status, same_audio) = api.json(upload(&submitter, body(0), None));
    assert_eq!(status, StatusCode::OK, "the same audio is the same job");
    assert_eq!(same_audio["id"], first["id"]);
    // The key is the tenant's: another tenant may use the same one.
    let other = token("clinic-b", ALL);
    let (status, _) = api.json(upload(&other, body(1), Some("order-4711")));
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = api.json(upload(&submitter, body(1), Some("bad key with spaces")));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, listed) = api.json(get("/v1/jobs", &submitter));
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);
}

#[test]
fn listing_pages_through_every_job_once() {
    let api = Api::new();
    let submitter = token("clinic-a", ALL);
    let submitted: HashSet<String> = (0..5).map(|i| submit(&api, &submitter, &clip(i))).collect();
    assert_eq!(submitted.len(), 5);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/jobs?limit=2&cursor={cursor}"),
            None => "/v1/jobs?limit=2".to_owned(),
        };
        let (status, page) = api.json(get(&path, &submitter));
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 2);
        seen.extend(jobs.iter().map(|j| j["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 5, "no job twice");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), submitted);

    let (_, queued) = api.json(get("/v1/jobs?status=queued&limit=100", &submitter));
    assert_eq!(queued["jobs"].as_array().unwrap().len(), 5);
    let (_, completed) = api.json(get("/v1/jobs?status=completed", &submitter));
    assert_eq!(completed["jobs"].as_array().unwrap().len(), 0);
    let (_, future) = api.json(get(
        "/v1/jobs?received_after=2999-01-01T00:00:00Z",
        &submitter,
    ));
    assert_eq!(future["jobs"].as_array().unwrap().len(), 0);
    let (_, past) = api.json(get(
        "/v1/jobs?received_before=2999-01-01T00:00:00Z",
        &submitter,
    ));
    assert_eq!(past["jobs"].as_array().unwrap().len(), 5);
    for bad in [
        "/v1/jobs?cursor=garbage!",
        "/v1/jobs?limit=0",
        "/v1/jobs?limit=1000",
        "/v1/jobs?status=lost",
        "/v1/jobs?received_after=yesterday",
    ] {
        let (status, content_type, _) = api.send(get(bad, &submitter));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(content_type, "application/problem+json", "{bad}");
    }
}

#[test]
fn a_transcript_is_not_served_before_the_job_completes() {
    let api = Api::new();
    let submitter = token("clinic-a", ALL);
    let id = submit(&api, &submitter, &clip(0));
    let (status, problem) = api.json(get(&format!("/v1/jobs/{id}/transcript"), &submitter));
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(problem["detail"].as_str().unwrap().contains("queued"));
    let (status, _, _) = api.send(get(
        &format!("/v1/jobs/{id}/transcript?format=docx"),
        &submitter,
    ));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = api.send(get("/v1/jobs/0000/transcript", &submitter));
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[test]
fn deleting_a_job_purges_it_and_is_audited() {
    let api = Api::new();
    let admin = token("clinic-a", ALL);
    let (status, job) = api.json(upload(
        &admin,
        multipart(
            &clip(0),
            "audio/wav",
            &[("patient_reference", "Patient/p-17")],
        ),
        None,
    ));
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(api.uploads().len(), 2, "audio and metadata stored");
    assert_eq!(
        api.send(delete(&format!("/v1/jobs/{id}"), &admin)).0,
        StatusCode::NO_CONTENT
    );
    assert!(api.uploads().is_empty(), "the audio is purged");
    assert_eq!(
        api.send(get(&format!("/v1/jobs/{id}"), &admin)).0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.send(delete(&format!("/v1/jobs/{id}"), &admin)).0,
        StatusCode::NOT_FOUND
    );
    let audit = read_lines(&api.dir.path().join("audit.jsonl"));
    let deleted: Vec<&Value> = audit
        .iter()
        .filter(|event| event["action"] == "job_deleted")
        .collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["job_id"], id.as_str());
    assert_eq!(deleted[0]["actor"], "api:svc-test");
    let line = serde_json::to_string(deleted[0]).unwrap();
    assert!(
        !line.contains("p-17") && !line.contains("Doe_Jane"),
        "no PHI: {line}"
    );
    // A job the intake does not hold (being transcribed, or waiting on a
    // broker) cannot be deleted yet: the dataflow would write it back.
    let mut store = mmt_connectors::sql::SqlJobStoreConfig::new(format!(
        "sqlite://{}",
        api.dir.path().join("mmt.db").display()
    ))
    .build(false)
    .unwrap();
    let in_flight = mmt_core::job::JobMeta {
        id: mmt_core::job::JobId("feedc0de".into()),
        tenant: "clinic-a".into(),
        content_hash: "feedc0de".into(),
        source: "elsewhere.wav".into(),
        patient_reference: None,
        encounter_reference: None,
        correlation_id: "c-1".into(),
        received_at: mmt_core::job::unix_now(),
        trace_parent: None,
    };
    assert!(store.insert(&in_flight).unwrap());
    assert!(store
        .advance(&in_flight.id, mmt_core::job::JobStatus::Processing)
        .unwrap());
    let (status, problem) = api.json(delete("/v1/jobs/feedc0de", &admin));
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("processing"));
    assert_eq!(api.send(get("/v1/jobs/feedc0de", &admin)).0, StatusCode::OK);
    drop(store);
    // Deleted means gone: the same audio is a new job again.
    assert_eq!(
        api.send(upload(&admin, multipart(&clip(0), "audio/wav", &[]), None))
            .0,
        StatusCode::ACCEPTED
    );
}

#[test]
fn each_tenant_has_its_own_rate_limit() {
    let api = Api::with(ApiConfig {
        tenant_requests_per_second: 1,
        tenant_burst: 3,
        ..ApiConfig::default()
    });
    let a = token("clinic-a", ALL);
    let statuses: Vec<StatusCode> = (0..5).map(|_| api.send(get("/v1/jobs", &a)).0).collect();
    assert_eq!(&statuses[..3], [StatusCode::OK; 3]);
    let (status, _, _) = api.send(get("/v1/jobs", &a));
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let response = runtime()
        .block_on(api.router.clone().oneshot(get("/v1/jobs", &a)))
        .unwrap();
    assert!(response.headers().contains_key(header::RETRY_AFTER));
    let b = token("clinic-b", ALL);
    assert_eq!(api.send(get("/v1/jobs", &b)).0, StatusCode::OK);
}

#[test]
fn operations_endpoints_answer_without_a_token() {
    let api = Api::new();
    let (status, health) = api.json(Request::get("/healthz").body(Body::empty()).unwrap());
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, ready) = api.json(Request::get("/readyz").body(Body::empty()).unwrap());
    assert_eq!(status, StatusCode::OK, "{ready}");
    let components = ready["components"].as_array().unwrap();
    assert_eq!(components.len(), 3, "{ready}");
    assert!(components
        .iter()
        .any(|c| c["component"] == "dataflow" && c["ready"] == true));
    let (status, spec) = api.json(Request::get("/openapi.json").body(Body::empty()).unwrap());
    assert_eq!(status, StatusCode::OK);
    assert!(spec["paths"]["/v1/jobs/{id}/transcript"]["get"].is_object());
    let (status, content_type, page) = api.send(Request::get("/").body(Body::empty()).unwrap());
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"));
    assert!(String::from_utf8(page).unwrap().contains("/status.js"));
    let (status, content_type, _) =
        api.send(Request::get("/no/such/route").body(Body::empty()).unwrap());
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(content_type, "application/problem+json");

    let admin = token("clinic-a", ALL);
    api.send(get("/v1/jobs/abc", &admin));
    let (_, _, metrics) = api.send(Request::get("/metrics").body(Body::empty()).unwrap());
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains(
            r#"api_request_duration_seconds_count{route="/v1/jobs/{id}",status="404"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("transcription_queue_depth"));
}

/// The seconds of a `Retry-After` header, which must be there.
fn retry_after(headers: &axum::http::HeaderMap) -> u64 {
    headers
        .get(header::RETRY_AFTER)
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn upload_of(token: &str, audio: &[u8]) -> Request<Body> {
    upload(token, multipart(audio, "audio/wav", &[]), None)
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_records_nothing() {
    let api = Api::open(
        ApiConfig::default(),
        &[
            ("MMT_API_MAX_QUEUED_JOBS", "3"),
            ("MMT_API_MAX_QUEUED_PER_TENANT", "3"),
        ],
        tempfile::tempdir().unwrap(),
    );
    let a = token("clinic-a", ALL);
    let b = token("clinic-b", ALL);
    let first = submit(&api, &a, &clip(0));
    submit(&api, &a, &clip(1));
    submit(&api, &b, &clip(2));
    let uploads_before = api.uploads();
    for (caller, audio) in [(&a, clip(3)), (&b, clip(4))] {
        let (status, headers) = api.head(upload_of(caller, &audio));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(retry_after(&headers) > 0);
        assert_eq!(
            headers.get(header::CONTENT_TYPE).unwrap(),
            "application/problem+json"
        );
    }
    // Nothing of the refused submissions was recorded or stored.
    let (_, listed) = api.json(get("/v1/jobs", &a));
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(api.uploads(), uploads_before);
    // A place freed (a queued job deleted) is taken again.
    let (status, _, _) = api.send(delete(&format!("/v1/jobs/{first}"), &a));
    assert_eq!(status, StatusCode::NO_CONTENT);
    submit(&api, &a, &clip(3));
    assert_eq!(
        api.head(upload_of(&b, &clip(4))).0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[test]
fn a_tenant_over_its_share_gets_429_while_another_tenant_is_accepted() {
    let api = Api::open(
        ApiConfig::default(),
        &[
            ("MMT_API_MAX_QUEUED_JOBS", "10"),
            ("MMT_API_MAX_QUEUED_PER_TENANT", "2"),
        ],
        tempfile::tempdir().unwrap(),
    );
    let a = token("clinic-a", ALL);
    let b = token("clinic-b", ALL);
    submit(&api, &a, &clip(0));
    submit(&api, &a, &clip(1));
    let (status, headers) = api.head(upload_of(&a, &clip(2)));
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&headers) > 0);
    submit(&api, &b, &clip(2));
    submit(&api, &b, &clip(3));
    assert_eq!(
        api.head(upload_of(&b, &clip(4))).0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let (_, listed) = api.json(get("/v1/jobs", &a));
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 2, "{listed}");
}

#[test]
fn a_restart_queues_the_whole_backlog_again_even_over_the_bound() {
    let api = Api::open(
        ApiConfig::default(),
        &[("MMT_API_MAX_QUEUED_JOBS", "10")],
        tempfile::tempdir().unwrap(),
    );
    let a = token("clinic-a", ALL);
    let mut ids: Vec<String> = (0..5).map(|i| submit(&api, &a, &clip(i))).collect();
    ids.sort();
    // Restarted with a smaller bound than its backlog: every accepted job is
    // queued again (ids only), and new work waits until the backlog drains.
    let api = api.restart(&[
        ("MMT_API_MAX_QUEUED_JOBS", "3"),
        ("MMT_API_MAX_QUEUED_PER_TENANT", "3"),
    ]);
    assert_eq!(api.control.queued_jobs().unwrap(), 5);
    let (status, overview) = api.json(get("/v1/status", &a));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(overview["queue_depth"], 5, "{overview}");
    let (status, headers) = api.head(upload_of(&a, &clip(5)));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry_after(&headers) > 0);
    // Each job is queued once, however often the service restarts.
    let api = api.restart(&[]);
    assert_eq!(api.control.queued_jobs().unwrap(), 5);
    let (_, listed) = api.json(get("/v1/jobs", &a));
    let mut listed: Vec<String> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| {
            assert_eq!(job["status"], "queued");
            job["id"].as_str().unwrap().to_owned()
        })
        .collect();
    listed.sort();
    assert_eq!(listed, ids);
}

#[test]
fn a_submission_cut_short_is_reconciled_at_start() {
    let api = Api::new();
    let a = token("clinic-a", ALL);
    let kept = submit(&api, &a, &clip(0));
    let torn = submit(&api, &a, &clip(1));
    let dir = api.dir.path().join("uploads");
    // A row without its upload (a kill between the two steps of an older
    // version), an upload without its row (a kill before the row was
    // written), and a half-written file.
    std::fs::remove_file(dir.join(format!("{torn}.audio"))).unwrap();
    std::fs::remove_file(dir.join(format!("{torn}.json"))).unwrap();
    let orphan = mmt_pipeline::serve::uploads::UploadStore::open(&dir).unwrap();
    let record = mmt_operators::records::SourceRecord {
        tenant: "clinic-a".into(),
        source: "orphan.wav".into(),
        bytes: clip(2),
        ..Default::default()
    };
    orphan
        .save(&mmt_core::job::JobId("orphan".into()), &record, 0)
        .unwrap();
    std::fs::write(dir.join("cut.audio"), b"RIFF").unwrap();
    let api = api.restart(&[]);
    assert_eq!(
        api.uploads(),
        [format!("{kept}.audio"), format!("{kept}.json")]
    );
    assert_eq!(api.control.queued_jobs().unwrap(), 1);
    // The job that could never run is gone, not stuck queued (and
    // undeletable); the same recording is a new submission again.
    let (status, _) = api.json(get(&format!("/v1/jobs/{torn}"), &a));
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(submit(&api, &a, &clip(1)), torn);
    assert_eq!(api.control.queued_jobs().unwrap(), 2);
}

#[test]
fn a_stopped_dataflow_fails_readiness_and_refuses_submissions() {
    let api = Api::new();
    let a = token("clinic-a", ALL);
    submit(&api, &a, &clip(0));
    api.control.mark_dataflow_stopped();
    let (status, ready) = api.json(Request::get("/readyz").body(Body::empty()).unwrap());
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert!(ready["components"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["component"] == "dataflow" && c["ready"] == false));
    let (status, problem) = api.json(upload_of(&a, &clip(1)));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        problem["detail"].as_str().unwrap().contains("dataflow"),
        "{problem}"
    );
    // Reading still works: clients can follow the jobs they have.
    assert_eq!(api.json(get("/v1/jobs", &a)).0, StatusCode::OK);
}

#[test]
fn a_refused_upload_leaves_no_file_behind() {
    let api = Api::with(ApiConfig {
        max_upload_bytes: 64 * 1024,
        ..ApiConfig::default()
    });
    let submitter = token("clinic-a", ALL);
    // Over the limit: the part is streamed to a spool file until it passes
    // the limit, then refused with 413 and the file removed.
    let big = common::wav_bytes(&vec![1000i16; 80 * 1024]);
    let (status, _, _) = api.send(upload(&submitter, multipart(&big, "audio/wav", &[]), None));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(api.uploads(), Vec::<String>::new(), "nothing left by a 413");
    // Spooled whole, then refused by a check: not audio, a bad field.
    let pdf = b"%PDF-1.7 not audio at all".to_vec();
    let (status, _, _) = api.send(upload(&submitter, multipart(&pdf, "audio/wav", &[]), None));
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let small = clip(0)[..32 * 1024].to_vec();
    let (status, _, _) = api.send(upload(
        &submitter,
        multipart(&small, "audio/wav", &[("priority", "12")]),
        None,
    ));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        api.uploads(),
        Vec::<String>::new(),
        "nothing left by a 415 or 422"
    );
}

#[test]
fn concurrent_submissions_of_the_same_audio_make_one_job() {
    let api = Api::new();
    let submitter = token("clinic-a", ALL);
    let audio = clip(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let answers: Vec<(StatusCode, Value)> = runtime.block_on(async {
        let requests: Vec<_> = (0..6)
            .map(|_| {
                let router = api.router.clone();
                let request = upload(&submitter, multipart(&audio, "audio/wav", &[]), None);
                tokio::spawn(async move {
                    let response = router.oneshot(request).await.unwrap();
                    let status = response.status();
                    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                        .await
                        .unwrap();
                    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
                })
            })
            .collect();
        let mut answers = Vec::new();
        for request in requests {
            answers.push(request.await.unwrap());
        }
        answers
    });
    drop(runtime);
    let created = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::ACCEPTED)
        .count();
    assert_eq!(created, 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(status, _)| [StatusCode::ACCEPTED, StatusCode::OK].contains(status)),
        "{answers:?}"
    );
    let ids: HashSet<&str> = answers
        .iter()
        .map(|(_, job)| job["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "one job: {answers:?}");
    let id = ids.into_iter().next().unwrap();
    // Uploads are spooled in the upload folder (kept by a rename) ...
    assert_eq!(
        mmt_core::control::JobControl::spool_dir(api.control.as_ref()),
        api.dir.path().join("uploads")
    );
    // ... which holds the job's upload, and no spool file of the others.
    assert_eq!(api.uploads(), [format!("{id}.audio"), format!("{id}.json")]);
    let (_, listed) = api.json(get("/v1/jobs", &submitter));
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);
}

/// The audit trail's events with `action`.
fn audited(api: &Api, action: &str) -> Vec<Value> {
    read_lines(&api.dir.path().join("audit.jsonl"))
        .into_iter()
        .filter(|event| event["action"] == action)
        .collect()
}

#[test]
fn refused_tokens_are_audited_with_nothing_they_claim() {
    let api = Api::new();
    let no_token = Request::get("/v1/jobs").body(Body::empty()).unwrap();
    assert_eq!(api.send(no_token).0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.send(get("/v1/jobs", "not.a.jwt")).0,
        StatusCode::UNAUTHORIZED
    );
    let expired = sign_hs256(SECRET, &claims("clinic-a", ALL, -3600)).unwrap();
    assert_eq!(
        api.send(get("/v1/jobs/abc/transcript", &expired)).0,
        StatusCode::UNAUTHORIZED
    );
    let mut later = claims("clinic-a", ALL, 3600);
    later.nbf = Some(mmt_core::job::unix_now() as u64 + 600);
    let not_yet = sign_hs256(SECRET, &later).unwrap();
    assert_eq!(
        api.send(get("/v1/jobs", &not_yet)).0,
        StatusCode::UNAUTHORIZED
    );

    let refusals = audited(&api, "authentication_failed");
    let reasons: Vec<&str> = refusals
        .iter()
        .map(|event| event["detail"]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["missing", "malformed", "expired", "not_yet_valid"]
    );
    assert_eq!(
        refusals[2]["detail"]["route"], "GET /v1/jobs/{id}/transcript",
        "the route, not the path"
    );
    for event in &refusals {
        assert_eq!(event["actor"], "unauthenticated");
        assert_eq!(event["tenant"], "");
        assert_eq!(event["job_id"], "");
        // A router without a socket (tests) knows no peer address.
        assert_eq!(event["detail"]["client"], "unknown");
        let line = event.to_string();
        assert!(
            !line.contains("clinic-a") && !line.contains("svc-test") && !line.contains(&expired),
            "nothing the token claims: {line}"
        );
    }
    // A valid token is not a refusal.
    assert_eq!(
        api.send(get("/v1/jobs", &token("clinic-a", ALL))).0,
        StatusCode::OK
    );
    assert_eq!(audited(&api, "authentication_failed").len(), 4);
}

#[test]
fn every_transcript_read_is_audited_with_its_reader() {
    let api = Api::new();
    let reader = token("clinic-a", &["reader", "submitter"]);
    let (status, job) = api.json(upload(
        &reader,
        multipart(
            &clip(1),
            "audio/wav",
            &[("patient_reference", "Patient/p-17")],
        ),
        None,
    ));
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = job["id"].as_str().unwrap().to_owned();
    let transcript = format!("/v1/jobs/{id}/transcript");
    assert_eq!(api.send(get(&transcript, &reader)).0, StatusCode::CONFLICT);
    assert!(
        audited(&api, "transcript_read").is_empty(),
        "nothing served"
    );

    // Completed behind the API's back, as the dataflow would.
    let mut store = mmt_connectors::sql::SqlJobStoreConfig::new(format!(
        "sqlite://{}",
        api.dir.path().join("mmt.db").display()
    ))
    .build(false)
    .unwrap();
    let row = store
        .get(&mmt_core::job::JobId(id.clone()))
        .unwrap()
        .unwrap();
    let segment = mmt_core::Segment {
        id: 0,
        start: 0.0,
        end: 1.0,
        text: "the patient is stable".into(),
        avg_logprob: -0.2,
        no_speech_prob: 0.01,
        temperature: 0.0,
        confidence: 0.9,
    };
    mmt_core::job::JobStore::complete(
        &mut store,
        &mmt_core::job::CompletedJob {
            meta: row.meta,
            transcript: mmt_core::Transcript::from_segments(vec![segment], 1.0, "en"),
            completed_at: mmt_core::job::unix_now(),
        },
    )
    .unwrap();
    drop(store);

    assert_eq!(api.send(get(&transcript, &reader)).0, StatusCode::OK);
    assert_eq!(
        api.send(get(&format!("{transcript}?format=fhir"), &reader))
            .0,
        StatusCode::OK
    );
    // Another tenant's reader gets nothing, and nothing is recorded.
    let other = token("clinic-b", &["reader"]);
    assert_eq!(api.send(get(&transcript, &other)).0, StatusCode::NOT_FOUND);

    let reads = audited(&api, "transcript_read");
    assert_eq!(reads.len(), 2, "each read is its own event: {reads:?}");
    for (read, format) in reads.iter().zip(["json", "fhir"]) {
        assert_eq!(read["job_id"], id.as_str());
        assert_eq!(read["tenant"], "clinic-a");
        assert_eq!(read["actor"], "api:svc-test");
        assert_eq!(read["detail"]["format"], format);
        assert!(!read.to_string().contains("p-17"), "{read}");
    }
    assert_ne!(reads[0]["correlation_id"], reads[1]["correlation_id"]);
    // The trail is one chain across the API's and everyone's writes.
    let verified =
        mmt_connectors::files::chain::verify(&api.dir.path().join("audit.jsonl")).unwrap();
    assert!(verified.is_intact(), "{verified:?}");
}

#[test]
fn an_rs256_only_key_ring_takes_rs256_tokens_with_an_audience_array() {
    let keys_dir = tempfile::tempdir().unwrap();
    let (private, _) = rsa_key_pair(keys_dir.path(), "2027-01");
    std::fs::remove_file(keys_dir.path().join("2027-01.key")).unwrap();
    // No HS256 secret at all: the keys come from the folder, as `mmt serve` loads them.
    let ring = KeyRing::new(None, Some("mmt".into())).unwrap();
    ring.replace_rs256(mmt_api::auth::load_rs256_dir(keys_dir.path()).unwrap());
    let mut audience = claims("clinic-a", ALL, 600);
    audience.aud = Some(mmt_api::auth::Audience::Many(vec![
        "ehr".into(),
        "mmt".into(),
    ]));
    let token = sign_rs256(&private, "2027-01", &audience).unwrap();
    assert_eq!(ring.verify(&token).unwrap().tenant, "clinic-a");
    audience.aud = Some(mmt_api::auth::Audience::One("mmt".into()));
    let token = sign_rs256(&private, "2027-01", &audience).unwrap();
    assert!(ring.verify(&token).is_ok());
    // An HS256 token has no key here.
    let hs256 = sign_hs256(SECRET, &claims("clinic-a", ALL, 600)).unwrap();
    assert!(ring.verify(&hs256).is_err());
}

// Security of what a request names: audio references and callback URLs.

/// A JSON submission naming `reference`.
fn refer(token: &str, reference: &str) -> Request<Body> {
    Request::post("/v1/jobs")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            serde_json::json!({ "audio_reference": reference }).to_string(),
        ))
        .unwrap()
}

#[test]
fn audio_references_answer_alike_and_stay_in_the_tenants_folder() {
    let volume = tempfile::tempdir().unwrap();
    let folder_a = volume.path().join("clinic-a");
    std::fs::create_dir_all(folder_a.join("2024")).unwrap();
    std::fs::create_dir_all(volume.path().join("clinic-b")).unwrap();
    std::fs::write(folder_a.join("2024/Smith_John.wav"), clip(0)).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(folder_a.join("pipe.wav"))
        .status()
        .unwrap();
    assert!(fifo.success());
    std::os::unix::fs::symlink("/etc/hostname", folder_a.join("host.wav")).unwrap();
    let api = Api::open(
        ApiConfig {
            max_upload_bytes: 512 * 1024,
            ..ApiConfig::default()
        },
        &[("MMT_AUDIO_REFERENCE_ROOT", volume.path().to_str().unwrap())],
        tempfile::tempdir().unwrap(),
    );
    let a = token("clinic-a", &["submitter"]);
    let b = token("clinic-b", &["submitter"]);

    // The issue's two probes: one file exists, the other does not.
    let shadow = api.send(refer(&a, "/etc/shadow"));
    let nope = api.send(refer(&a, "/etc/nope"));
    assert_eq!(shadow.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(shadow, nope, "no existence oracle");
    let detail: Value = serde_json::from_slice(&shadow.2).unwrap();
    assert!(
        !detail["detail"].as_str().unwrap().contains("etc"),
        "{detail}"
    );

    // A FIFO (must not hang the request), a link, a folder, a missing file,
    // climbing out: all the same answer.
    let started = std::time::Instant::now();
    for reference in [
        "pipe.wav",
        "host.wav",
        "2024",
        "2024/Doe_Jane.wav",
        "../clinic-b",
        "../../../etc/shadow",
    ] {
        assert_eq!(api.send(refer(&a, reference)), shadow, "{reference}");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    // Tenant b cannot submit tenant a's recording, by any path.
    for reference in ["2024/Smith_John.wav", "../clinic-a/2024/Smith_John.wav"] {
        assert_eq!(api.send(refer(&b, reference)), shadow, "{reference}");
    }
    assert!(api.uploads().is_empty(), "no refusal left a spool file");

    // Tenant a can, relative to its folder: spooled into the upload store.
    let (status, job) = api.json(refer(&a, "2024/Smith_John.wav"));
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap();
    assert_eq!(api.uploads(), [format!("{id}.audio"), format!("{id}.json")]);
    assert_eq!(
        std::fs::read(api.dir.path().join("uploads").join(format!("{id}.audio"))).unwrap(),
        clip(0)
    );
    // Over the upload limit: the same refusal as the rest.
    std::fs::write(folder_a.join("big.wav"), vec![0u8; 600 * 1024]).unwrap();
    assert_eq!(api.send(refer(&a, "big.wav")), shadow);
}

fn with_callbacks(allow_private: bool) -> Api {
    Api::with(ApiConfig {
        max_upload_bytes: 512 * 1024,
        callbacks_enabled: true,
        callback_targets: TargetPolicy { allow_private },
        ..ApiConfig::default()
    })
}

#[test]
fn callback_urls_to_internal_addresses_are_refused_at_submission() {
    let strict = with_callbacks(false);
    let submitter = token("clinic-a", &["submitter"]);
    let callback = |api: &Api, index: usize, url: &str| {
        api.json(upload(
            &submitter,
            multipart(&clip(index), "audio/wav", &[("callback_url", url)]),
            None,
        ))
    };
    for (index, url) in [
        "http://127.0.0.1:9/hook?token=abc",
        "http://[::1]:9/hook",
        "https://10.20.30.40/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:9/hook",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, problem) = callback(&strict, index, url);
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("callbacks may not reach"),
            "{url}: {detail}"
        );
        for part in [
            "127.0.0.1",
            "::1",
            "10.20",
            "169.254",
            "localhost",
            "token",
            "hook",
        ] {
            assert!(
                !detail.contains(part),
                "{url}: the detail names the rule only: {detail}"
            );
        }
    }
    assert!(strict.uploads().is_empty(), "nothing refused was stored");

    // Receivers on the premises: the operator's switch lets loopback and
    // private targets through, never the metadata service.
    let on_premises = with_callbacks(true);
    let (status, job) = callback(&on_premises, 0, "http://127.0.0.1:9/hook");
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let (status, _) = callback(&on_premises, 1, "http://169.254.169.254/latest/meta-data/");
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// Marks the stored jobs `ids` completed, as the dataflow would.
fn complete_jobs(api: &Api, ids: &[String]) {
    let paths = OutputPaths::resolve(&Config::default(), api.dir.path());
    let mut store = SqlJobStoreConfig::new(&paths.database_url)
        .build(false)
        .unwrap();
    for id in ids {
        let row = store.get(&JobId(id.clone())).unwrap().unwrap();
        let transcript = Transcript {
            text: "done".into(),
            segments: Vec::new(),
            duration_seconds: 1.0,
            language: "en".into(),
        };
        store
            .complete(&CompletedJob {
                meta: row.meta,
                transcript,
                completed_at: mmt_core::job::unix_now(),
            })
            .unwrap();
    }
}

#[test]
fn a_silent_receiver_costs_only_its_tenant_and_loopback_is_refused_again_at_delivery() {
    let api = with_callbacks(true);
    let silent = receivers::Silent::start();
    let (answering, arrivals) = receivers::answering();
    let with_hook = |tenant: &str, index: usize, url: &str| {
        let (status, job) = api.json(upload(
            &token(tenant, &["submitter"]),
            multipart(&clip(index), "audio/wav", &[("callback_url", url)]),
            None,
        ));
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        job["id"].as_str().unwrap().to_owned()
    };
    // Tenant a's three callbacks, due first, go to a receiver that never answers.
    let mut ids: Vec<String> = (0..3)
        .map(|n| with_hook("clinic-a", n, &format!("{}/a{n}", silent.base)))
        .collect();
    ids.push(with_hook("clinic-b", 3, &format!("{answering}/b")));
    complete_jobs(&api, &ids);

    let store: Arc<dyn CallbackStore> = api.control.clone();
    let config = WebhookConfig {
        targets: TargetPolicy {
            allow_private: true,
        },
        poll_interval: std::time::Duration::from_millis(50),
        timeout: std::time::Duration::from_secs(60),
        ..WebhookConfig::new("webhook-test-secret-0123456789abcdef")
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = std::time::Instant::now();
    runtime.spawn(mmt_api::webhook::run(
        Arc::clone(&store),
        config.clone(),
        stopped,
    ));
    let (path, arrived) = arrivals
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("tenant b's callback arrives while tenant a's receiver hangs");
    assert_eq!(path, "/b");
    assert!(arrived.duration_since(started) < std::time::Duration::from_secs(5));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        silent.accepted(),
        config.per_tenant_in_flight as usize,
        "tenant a holds its own share of deliveries, no more"
    );
    stop.send(true).unwrap();
    // Closing the silent connections ends tenant a's deliveries (retried later).
    drop(silent);
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));

    // A loopback callback accepted under the switch is refused by a
    // deliverer without it: checked again at connect time, never sent.
    let late = with_hook("clinic-c", 4, &format!("{answering}/c"));
    complete_jobs(&api, std::slice::from_ref(&late));
    let strict = WebhookConfig {
        targets: TargetPolicy::default(),
        ..config
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    runtime.spawn(mmt_api::webhook::run(Arc::clone(&store), strict, stopped));
    let given_up = std::time::Instant::now();
    while store
        .due(100, 100)
        .unwrap()
        .iter()
        .any(|callback| callback.job.id.0 == late)
    {
        assert!(
            given_up.elapsed() < std::time::Duration::from_secs(10),
            "the refused callback is given up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    stop.send(true).unwrap();
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    assert!(
        arrivals
            .recv_timeout(std::time::Duration::from_millis(500))
            .is_err(),
        "nothing reached the loopback receiver"
    );
}
