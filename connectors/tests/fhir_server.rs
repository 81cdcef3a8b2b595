//! The FHIR server sink against an in-test FHIR-like server (a real FHIR server
//! cannot be installed here; `fhir_fake` checks requests the way one would).
//!
//! `send_to_external_server` sends documents to `MMT_TEST_FHIR_URL` when it is
//! set (the Python test validates them with `fhir.resources`); otherwise it
//! returns at once.

mod common;
mod fhir_fake;

use std::time::{Duration, Instant};

use base64::Engine as _;
use fhir_fake::{outcome, FakeFhir, Scripted};
use mmt_connectors::fhir::{FhirServerConfig, FhirServerSink, WriteOutcome};
use mmt_connectors::ConnectorError;
use mmt_core::error::ErrorClass;
use mmt_core::job::{CompletedJob, ComponentError, DocumentSink, JobId};
use mmt_core::{Segment, Transcript};
use serde_json::json;

const SYSTEM: &str = "urn:mmt:job";

fn config(server: &FakeFhir) -> FhirServerConfig {
    FhirServerConfig::new(server.base())
        .retries(3, Duration::from_millis(10))
        .max_backoff(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
}

fn sink(server: &FakeFhir) -> FhirServerSink {
    config(server).build(false).expect("valid config")
}

fn assert_no_phi(message: &str) {
    for phi in [
        "John",
        "Smith",
        "chest",
        "Patient/123",
        "Encounter/456",
        "smith_john",
    ] {
        assert!(!message.contains(phi), "{phi:?} leaked into {message:?}");
    }
}

#[test]
fn creates_once_with_a_conditional_create() {
    let server = FakeFhir::start();
    let mut sink = sink(&server);
    let job = common::completed("a1b2c3", 1_700_000_000);

    assert_eq!(
        sink.write_document(&job).expect("created"),
        WriteOutcome::Created
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, "/fhir/DocumentReference");
    assert_eq!(
        request.header("content-type"),
        Some("application/fhir+json")
    );
    assert_eq!(request.header("accept"), Some("application/fhir+json"));
    assert_eq!(
        request.header("if-none-exist"),
        Some("identifier=urn:mmt:job|a1b2c3")
    );
    assert_eq!(request.header("authorization"), None);
    let body = request.json();
    assert_eq!(body["resourceType"], "DocumentReference");
    assert!(body.get("id").is_none(), "the server assigns the id");
    assert!(fhir_fake::has_identifier(&body, SYSTEM, "a1b2c3"));
    assert_eq!(body["subject"]["reference"], "Patient/123");
    let data = body["content"][0]["attachment"]["data"]
        .as_str()
        .expect("data");
    let text = base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("base64");
    assert_eq!(text, common::TRANSCRIPT_TEXT.as_bytes());

    // Through the trait, as the commit stage calls it.
    DocumentSink::write(&mut sink, &job).expect("idempotent");
    assert_eq!(server.resources().len(), 1);
    assert!(server.violations().is_empty(), "{:?}", server.violations());
}

#[test]
fn resubmission_creates_nothing_new() {
    let server = FakeFhir::start();
    let sink = sink(&server);
    let first = common::completed("job-1", 1_700_000_000);
    let second = common::completed("job-2", 1_700_000_100);
    assert_eq!(
        sink.write_document(&first).expect("ok"),
        WriteOutcome::Created
    );
    assert_eq!(
        sink.write_document(&second).expect("ok"),
        WriteOutcome::Created
    );
    for _ in 0..3 {
        assert_eq!(
            sink.write_document(&first).expect("ok"),
            WriteOutcome::AlreadyExists
        );
    }
    // A fresh sink (a restarted pod) finds the document too.
    let restarted = self::sink(&server);
    assert_eq!(
        restarted.write_document(&second).expect("ok"),
        WriteOutcome::AlreadyExists
    );
    let resources = server.resources();
    assert_eq!(resources.len(), 2);
    assert_eq!(
        resources
            .iter()
            .filter(|r| fhir_fake::has_identifier(r, SYSTEM, "job-1"))
            .count(),
        1
    );
    assert_eq!(server.requests().len(), 6);
    assert!(server.violations().is_empty(), "{:?}", server.violations());
}

#[test]
fn a_configured_identifier_system_is_written_and_searched() {
    let server = FakeFhir::start();
    let sink = config(&server)
        .identifier_system("https://hospital.example/sid/mmt-job")
        .build(false)
        .expect("valid");
    let job = common::completed("abc", 1_700_000_000);
    sink.write_document(&job).expect("created");
    let request = &server.requests()[0];
    assert_eq!(
        request.header("if-none-exist"),
        Some("identifier=https://hospital.example/sid/mmt-job|abc")
    );
    assert!(fhir_fake::has_identifier(
        &request.json(),
        "https://hospital.example/sid/mmt-job",
        "abc"
    ));
    assert_eq!(sink.purge_documents(&[job.meta.id]).expect("purged"), 1);
    assert!(server.violations().is_empty(), "{:?}", server.violations());
}

#[test]
fn retries_503s_then_succeeds() {
    let server = FakeFhir::start();
    server.script([Scripted::Status(503, None), Scripted::Status(503, None)]);
    let sink = sink(&server);
    let job = common::completed("retry-me", 1_700_000_000);
    assert_eq!(
        sink.write_document(&job).expect("third try"),
        WriteOutcome::Created
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "two 503s, then the create");
    assert!(requests
        .iter()
        .all(|r| r.header("if-none-exist") == Some("identifier=urn:mmt:job|retry-me")));
    assert_eq!(server.resources().len(), 1);
}

#[test]
fn persistent_503s_are_a_retryable_error() {
    let server = FakeFhir::start();
    server.script(vec![Scripted::Status(503, None); 3]);
    let mut sink = sink(&server);
    let job = common::completed("busy", 1_700_000_000);
    let error: ComponentError = DocumentSink::write(&mut sink, &job).expect_err("503s");
    assert_eq!(error.class, ErrorClass::External { retryable: true });
    assert!(error.message.contains("HTTP 503"), "{}", error.message);
    assert!(error.message.contains("attempts: 3"), "{}", error.message);
    assert_eq!(server.requests().len(), 3);
    assert!(server.resources().is_empty());
}

#[test]
fn a_short_retry_after_is_honoured_and_a_long_one_ends_the_retries() {
    let server = FakeFhir::start();
    server.script([Scripted::Status(429, Some(1))]);
    let sink = sink(&server);
    let started = Instant::now();
    sink.write_document(&common::completed("slow-down", 1_700_000_000))
        .expect("after the wait");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited Retry-After"
    );
    assert_eq!(server.requests().len(), 2);

    server.script([Scripted::Status(503, Some(3600))]);
    let started = Instant::now();
    let error = sink
        .write_document(&common::completed("later", 1_700_000_000))
        .expect_err("not now");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(error.class(), ErrorClass::External { retryable: true });
    assert!(error.to_string().contains("retry after 3600 s"), "{error}");
    assert_eq!(
        server.requests().len(),
        3,
        "no second attempt inside the sink"
    );
}

#[test]
fn a_stalled_server_times_out_retryably() {
    let server = FakeFhir::start();
    server.script(vec![Scripted::Stall(Duration::from_secs(2)); 2]);
    let mut sink = config(&server)
        .timeout(Duration::from_millis(300))
        .retries(2, Duration::from_millis(10))
        .build(false)
        .expect("valid");
    let job = common::completed("stalled", 1_700_000_000);
    let started = Instant::now();
    let error = DocumentSink::write(&mut sink, &job).expect_err("timed out");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1800), "took {elapsed:?}");
    assert_eq!(error.class, ErrorClass::External { retryable: true });
    assert!(error.message.contains("timed out"), "{}", error.message);
    assert!(error.message.contains("attempts: 2"), "{}", error.message);
    assert_eq!(server.requests().len(), 2);
    // The server recovers: the next write goes through.
    sink.write_document(&job).expect("created");
}

#[test]
fn an_unreachable_server_is_a_retryable_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let sink = FhirServerConfig::new(format!("http://127.0.0.1:{port}/fhir"))
        .retries(2, Duration::from_millis(10))
        .build(false)
        .expect("valid");
    let error = sink
        .write_document(&common::completed("nobody-home", 1_700_000_000))
        .expect_err("refused");
    assert!(matches!(
        error,
        ConnectorError::FhirTransport { attempts: 2, .. }
    ));
    assert!(error.class().is_retryable());
}

#[test]
fn a_rejected_document_is_not_retried_and_carries_codes_not_diagnostics() {
    let server = FakeFhir::start();
    let diagnostics = "Patient/123 (John Smith) unknown; text 'chest pain since Tuesday'";
    let mut body = outcome("error", "processing", diagnostics);
    body["issue"][0]["details"] =
        json!({"coding": [{"code": "MSG_REF_UNKNOWN"}], "text": diagnostics});
    body["issue"][0]["expression"] = json!(["DocumentReference.subject"]);
    server.script([Scripted::Outcome(422, body)]);
    let mut sink = sink(&server);
    let job = common::completed("rejected", 1_700_000_000);
    let error = DocumentSink::write(&mut sink, &job).expect_err("422");
    assert_eq!(error.class, ErrorClass::UserInput);
    assert!(!error.class.is_retryable());
    assert!(error.message.contains("HTTP 422"), "{}", error.message);
    assert!(
        error
            .message
            .contains("error processing (MSG_REF_UNKNOWN) at DocumentReference.subject"),
        "{}",
        error.message
    );
    assert!(!error.message.contains("Tuesday"), "{}", error.message);
    assert_no_phi(&error.message);
    assert_eq!(server.requests().len(), 1, "not retried");

    server.script([Scripted::Outcome(
        400,
        outcome("fatal", "structure", "John Smith's note is malformed"),
    )]);
    let error = DocumentSink::write(&mut sink, &job).expect_err("400");
    assert_eq!(error.class, ErrorClass::UserInput);
    assert!(error.message.contains("HTTP 400"), "{}", error.message);
    assert!(
        error.message.contains("fatal structure"),
        "{}",
        error.message
    );
    assert_no_phi(&error.message);
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn duplicate_identifiers_on_the_server_are_a_data_problem() {
    let server = FakeFhir::start();
    let duplicate = json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "identifier": [{"system": SYSTEM, "value": "twice"}],
        "content": [{"attachment": {"contentType": "text/plain"}}]
    });
    server.seed(duplicate.clone());
    server.seed(duplicate);
    let mut sink = sink(&server);
    let job = common::completed("twice", 1_700_000_000);
    let error = DocumentSink::write(&mut sink, &job).expect_err("412");
    assert_eq!(error.class, ErrorClass::External { retryable: false });
    assert!(error.message.contains("HTTP 412"), "{}", error.message);
    assert!(error.message.contains("more than one"), "{}", error.message);
    assert!(error.message.contains("no retry"), "{}", error.message);
    assert_eq!(server.requests().len(), 1);
    assert_eq!(server.resources().len(), 2, "nothing added");
}

#[test]
fn purge_deletes_and_404_counts_as_gone() {
    let server = FakeFhir::start();
    let mut sink = sink(&server);
    for id in ["p1", "p2", "keep"] {
        sink.write_document(&common::completed(id, 1_700_000_000))
            .expect("created");
    }
    let ids = [
        JobId("p1".into()),
        JobId("p2".into()),
        JobId("never-written".into()),
        JobId("not a fhir id/..".into()),
    ];
    assert_eq!(DocumentSink::purge(&mut sink, &ids).expect("purged"), 2);
    let remaining = server.resources();
    assert_eq!(remaining.len(), 1);
    assert!(fhir_fake::has_identifier(&remaining[0], SYSTEM, "keep"));
    let deletes: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 3, "the invalid id is never sent");
    assert_eq!(
        deletes[0].target,
        "/fhir/DocumentReference?identifier=urn:mmt:job%7Cp1"
    );
    // Again: everything is already gone.
    assert_eq!(sink.purge_documents(&ids[..2]).expect("purged"), 0);
    assert!(server.violations().is_empty(), "{:?}", server.violations());
}

#[test]
fn purge_retries_a_busy_server() {
    let server = FakeFhir::start();
    let sink = sink(&server);
    sink.write_document(&common::completed("busy-purge", 1_700_000_000))
        .expect("created");
    server.script([Scripted::Status(503, None)]);
    assert_eq!(
        sink.purge_documents(&[JobId("busy-purge".into())])
            .expect("purged"),
        1
    );
    assert!(server.resources().is_empty());
}

#[test]
fn the_bearer_token_is_sent_and_never_printed() {
    const TOKEN: &str = "tok-s3cret-4242";
    let server = FakeFhir::start();
    server.state().required_token = Some(TOKEN.into());
    let config = config(&server).bearer_token(TOKEN);
    let sink = config.build(false).expect("valid");
    sink.write_document(&common::completed("authed", 1_700_000_000))
        .expect("created");
    assert_eq!(
        sink.purge_documents(&[JobId("authed".into())]).expect("ok"),
        1
    );
    sink.health_check().expect("healthy");
    for request in server.requests() {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str()),
            "{} {}",
            request.method,
            request.target
        );
    }
    for printed in [
        format!("{sink:?}"),
        format!("{config:?}"),
        serde_json::to_string(&config).expect("json"),
    ] {
        assert!(!printed.contains("s3cret"), "{printed}");
    }

    // A wrong token: refused, not retried, and the error does not echo it.
    let wrong = self::config(&server)
        .bearer_token("wrong-s3cret")
        .build(false)
        .expect("valid");
    let before = server.requests().len();
    let error = wrong
        .write_document(&common::completed("authed", 1_700_000_000))
        .expect_err("401");
    assert_eq!(error.class(), ErrorClass::External { retryable: false });
    assert!(error.to_string().contains("HTTP 401"), "{error}");
    assert!(!error.to_string().contains("s3cret"), "{error}");
    assert_eq!(server.requests().len(), before + 1);
}

#[test]
fn health_check_reads_the_capability_statement() {
    let server = FakeFhir::start();
    let sink = sink(&server);
    let info = sink.health_check().expect("healthy");
    assert_eq!(info.fhir_version.as_deref(), Some("4.0.1"));
    assert_eq!(info.software.as_deref(), Some("fake FHIR"));
    assert_eq!(server.requests()[0].target, "/fhir/metadata");

    server.state().fhir_version = "5.0.0".into();
    let error = sink.health_check().expect_err("R5");
    assert!(error.to_string().contains("5.0.0"), "{error}");

    server.script([Scripted::Outcome(200, outcome("error", "exception", "x"))]);
    let error = sink.health_check().expect_err("not a CapabilityStatement");
    assert!(error.to_string().contains("OperationOutcome"), "{error}");
}

#[test]
fn production_refuses_plain_http() {
    let server = FakeFhir::start();
    let error = config(&server).build(true).expect_err("http in prod");
    assert!(matches!(error, ConnectorError::Config { .. }));
    assert_eq!(error.class(), ErrorClass::Internal);
}

/// Realistic completed jobs: several segments, references on most.
fn realistic_jobs() -> Vec<CompletedJob> {
    /// Job id, segment texts, patient, encounter.
    type Dictation<'a> = (&'a str, &'a [&'a str], Option<&'a str>, Option<&'a str>);
    let dictations: [Dictation<'_>; 4] = [
        (
            "9f86d081884c7d659a2feaa0c55ad015",
            &[
                "Subjective: the patient reports intermittent chest pain for two days.",
                "Objective: blood pressure 132 over 84, pulse 78, afebrile.",
                "Plan: ECG today and follow up in one week.",
            ],
            Some("Patient/example-1"),
            Some("Encounter/visit-1"),
        ),
        (
            "2c26b46b68ffc68ff99b453c1d304134",
            &["Follow-up visit. Wound healing well, sutures removed."],
            Some("Patient/example-2"),
            None,
        ),
        (
            "fcde2b2edba56bf408601fb721fe9b5c",
            &[
                "Discharge summary.",
                "Admitted for community acquired pneumonia, treated with ceftriaxone.",
                "Résumé: stable at discharge, no oxygen requirement; naïve café test ✓.",
            ],
            None,
            None,
        ),
        (
            "fd61a03af4f77d870fc21e05e7e80678",
            &[],
            Some("Patient/example-4"),
            Some("Encounter/visit-4"),
        ),
    ];
    dictations
        .into_iter()
        .enumerate()
        .map(|(n, (id, texts, patient, encounter))| {
            let segments: Vec<Segment> = texts
                .iter()
                .enumerate()
                .map(|(i, text)| Segment {
                    id: i,
                    start: i as f64 * 6.0,
                    end: i as f64 * 6.0 + 5.5,
                    text: (*text).into(),
                    avg_logprob: -0.25,
                    no_speech_prob: 0.02,
                    temperature: 0.0,
                    confidence: 0.78,
                })
                .collect();
            let mut meta = common::meta(id, 1_700_000_000 + n as i64 * 60);
            meta.patient_reference = patient.map(Into::into);
            meta.encounter_reference = encounter.map(Into::into);
            CompletedJob {
                meta,
                transcript: Transcript::from_segments(segments, texts.len() as f64 * 6.0, "en"),
                completed_at: 1_700_000_030 + n as i64 * 60,
            }
        })
        .collect()
}

/// Sends the realistic jobs, twice each, to `MMT_TEST_FHIR_URL` (driven by
/// `tests/python/test_fhir_server_sink.py`); returns at once without it.
#[test]
fn send_to_external_server() {
    let Ok(url) = std::env::var("MMT_TEST_FHIR_URL") else {
        return;
    };
    let mut sink = FhirServerConfig::new(url).build(false).expect("valid URL");
    sink.health_check().expect("the server answers metadata");
    let jobs = realistic_jobs();
    for job in &jobs {
        assert_eq!(
            sink.write_document(job).expect("created"),
            WriteOutcome::Created
        );
    }
    for job in &jobs {
        DocumentSink::write(&mut sink, job).expect("idempotent");
    }
    println!("sent {} documents", jobs.len());
}
