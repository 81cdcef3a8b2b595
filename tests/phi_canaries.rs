//! No PHI in any error (issue 15, item 4): PHI-looking canaries (a patient's
//! name, an MRN reference, a date of birth; see `common/scan.rs`) are put
//! into every field of every input the real binary reads — the sidecars of
//! `mmt run` over a folder, job envelopes on Kafka and RabbitMQ, the API's
//! multipart and JSON fields and headers, configuration values — and every
//! answer, log line (debug and trace JSON logs on stderr), dead letter, audit
//! event and byte of the SQLite store and upload folder is scanned for them.
//!
//! Each test also sends one valid job whose patient reference is a second
//! canary (`Patient/MRN-9902-ACCEPTED`): it must reach the job store (proof
//! that the scan reads the store) and nothing else the scan looks at.

// The helpers below are test code too: a failed set-up step should panic.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/scan.rs"]
mod scan;
#[path = "common/tansu.rs"]
mod tansu;

use common::serve::Server;
use common::{model_ready, read_lines, require_service, root};
use mmt_connectors::envelope::JobEnvelope;
use mmt_connectors::rabbitmq::{JobSubmitter, RabbitMqConfig};
use scan::{assert_absent, in_files, with_files, CANARIES, CANARY_PARTS};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The accepted job's patient reference: stored, never logged or audited.
const ACCEPTED: &str = "Patient/MRN-9902-ACCEPTED";
const ACCEPTED_PART: &str = "MRN-9902";

/// A short clip from the repository's samples.
fn clip() -> Vec<u8> {
    std::fs::read(root().join("samples/dict_001.wav")).unwrap()
}

/// `mmt <command> --out <out> <args…>`, with nothing from the caller's
/// environment that points elsewhere.
fn mmt(args: &[&str], out: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mmt"));
    command
        .arg(args[0])
        .arg("--out")
        .arg(out)
        .args(&args[1..])
        .current_dir(root())
        .env_remove("DATABASE_URL")
        .env_remove("AUDIT_LOG_FILE")
        .env_remove("ENABLE_REDIS_BLOOM_IDEMPOTENCY")
        .env_remove("EXTERNAL_REDIS_ENABLED")
        .env_remove("EXTERNAL_RABBITMQ_ENABLED")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_KEY_FILE")
        .stdin(Stdio::null());
    command
}

fn texts_of(output: &Output) -> Vec<(String, Vec<u8>)> {
    vec![
        ("stdout".to_owned(), output.stdout.clone()),
        ("stderr (the JSON log)".to_owned(), output.stderr.clone()),
    ]
}

/// Every dead letter's reason under `out`; each must say what rule broke.
fn reasons(out: &Path) -> Vec<String> {
    read_lines(&out.join("dlq.jsonl"))
        .iter()
        .map(|letter| letter["reason"].as_str().unwrap().to_owned())
        .collect()
}

/// The accepted canary reached the store, and no log, audit event or dead
/// letter.
fn assert_accepted_job_kept_to_the_store(out: &Path, texts: &[(String, Vec<u8>)]) {
    assert!(
        in_files(out, "mmt.db", ACCEPTED_PART),
        "the accepted job's reference is in the job store (the scan reads it)"
    );
    let mut outside_the_store = texts.to_vec();
    for name in ["audit.jsonl", "dlq.jsonl"] {
        outside_the_store.push((
            name.to_owned(),
            std::fs::read(out.join(name)).unwrap_or_default(),
        ));
    }
    assert_absent(&outside_the_store, &[ACCEPTED_PART]);
}

// ------------------------------------------------------------ sidecars

#[test]
fn sidecar_canaries_reach_no_error_log_dead_letter_or_store() {
    if !model_ready() {
        return;
    }
    let input = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let sidecars = [
        json!({"tenant": "Smith John"}),
        json!({"tenant": "Patient/MRN-4471-CANARY"}),
        json!({"patient": "Smith John"}),
        json!({"patient": "1958-03-12"}),
        json!({"patient": "Encounter/MRN-4471-CANARY"}),
        json!({"encounter": "Patient/MRN-4471-CANARY"}),
        json!({"encounter": "Smith John"}),
        json!({"tenant": "1958-03-12", "patient": "Smith John"}),
        json!({"tenant": "clinic-a", "encounter": "1958-03-12"}),
        json!({"patient": ["Smith John"]}),
        json!({"tenant": {"name": "Smith John"}}),
        json!({"Smith John": "1958-03-12"}),
    ];
    let audio = clip();
    for (i, sidecar) in sidecars.iter().enumerate() {
        std::fs::write(input.path().join(format!("bad_{i:02}.wav")), &audio).unwrap();
        std::fs::write(
            input.path().join(format!("bad_{i:02}.wav.json")),
            serde_json::to_vec(sidecar).unwrap(),
        )
        .unwrap();
    }
    std::fs::write(input.path().join("broken.wav"), &audio).unwrap();
    std::fs::write(
        input.path().join("broken.wav.json"),
        br#"{"patient": "Smith John", "tenant": 1958-03-12"#,
    )
    .unwrap();
    let mut different = audio.clone();
    different.extend_from_slice(&[0; 3200]);
    std::fs::write(input.path().join("good.wav"), &different).unwrap();
    std::fs::write(
        input.path().join("good.wav.json"),
        serde_json::to_vec(&json!({"tenant": "clinic-a", "patient": ACCEPTED})).unwrap(),
    )
    .unwrap();

    let output = mmt(&["run", "--no-progress", "--input"], out.path())
        .arg(input.path())
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "dead letters exit 2\n{stderr}"
    );

    let reasons = reasons(out.path());
    assert_eq!(reasons.len(), sidecars.len() + 1, "{reasons:?}");
    for reason in &reasons {
        assert!(
            reason.contains(" must ")
                || reason.contains("expected fields")
                || reason.contains("not valid JSON"),
            "a reason names the field and its rule: {reason}"
        );
    }
    let texts = texts_of(&output);
    assert_absent(&with_files(texts.clone(), out.path()), &CANARY_PARTS);
    assert_accepted_job_kept_to_the_store(out.path(), &texts);
}

// ------------------------------------------------------------ envelopes

/// A valid envelope with `value` at `path` (a new key when the path is not
/// one of the envelope's).
fn envelope_with(path: &[&str], value: Value) -> Value {
    let mut body = json!({
        "version": 1,
        "tenant": "clinic-a",
        "client_reference": "order-1",
        "audio": {"inline": {"data": "UklGRg==", "format": "wav"}},
        "patient_reference": "Patient/p-1",
        "encounter_reference": "Encounter/e-1",
        "priority": 1,
    });
    // A path starting `reference` is in the reference form of `audio`.
    let mut path = path.to_vec();
    if path.first() == Some(&"reference") {
        body["audio"] = json!({"reference": {"url": "/audio/a.wav", "format": "wav"}});
        path[0] = "audio";
    }
    let (last, parents) = path.split_last().unwrap();
    let mut target = &mut body;
    for key in parents {
        target = &mut target[*key];
    }
    target[*last] = value;
    body
}

/// Envelope bodies with a canary in each field in turn (as a string, and as
/// a wrongly typed value), every field at once, and broken JSON. A canary
/// that is a valid value of its field (a well-formed patient reference, a
/// well-formed tenant, any client reference) is left out when alone: a valid
/// value is not an error, and it would be stored as the job's.
fn canary_envelopes() -> Vec<Vec<u8>> {
    let fields: [&[&str]; 12] = [
        &["version"],
        &["tenant"],
        &["audio"],
        &["audio", "inline"],
        &["audio", "inline", "data"],
        &["audio", "inline", "format"],
        &["reference", "reference", "url"],
        &["reference", "reference", "format"],
        &["patient_reference"],
        &["encounter_reference"],
        &["priority"],
        &["Smith John"],
    ];
    let valid_alone = |path: &[&str], canary: &str| {
        (path == ["patient_reference"] && canary.starts_with("Patient/"))
            || (path == ["tenant"] && canary == "1958-03-12")
    };
    let mut bodies = Vec::new();
    for canary in CANARIES {
        for path in fields {
            if !valid_alone(path, canary) {
                bodies.push(envelope_with(path, json!(canary)));
            }
        }
        bodies.push(envelope_with(&["priority"], json!([canary])));
    }
    // Every field at once (the client reference too), each canary in turn.
    for canary in CANARIES {
        let mut body = envelope_with(&["client_reference"], json!(canary));
        for field in ["tenant", "patient_reference", "encounter_reference"] {
            body[field] = json!(canary);
        }
        body["audio"]["inline"]["format"] = json!(canary);
        bodies.push(body);
    }
    let mut bodies: Vec<Vec<u8>> = bodies
        .iter()
        .map(|body| serde_json::to_vec(body).unwrap())
        .collect();
    bodies.push(br#"{"tenant": "clinic-a", "patient_reference": "Smith John"#.to_vec());
    bodies.push(br#"{"tenant": Smith John, "audio": 1958-03-12}"#.to_vec());
    bodies
}

/// The accepted job: real audio, the accepted canary as its patient.
fn accepted_envelope() -> JobEnvelope {
    let mut audio = clip();
    audio.extend_from_slice(&[0; 1600]);
    let mut envelope = JobEnvelope::inline("clinic-a", &audio, Some("wav"));
    envelope.patient_reference = Some(ACCEPTED.to_owned());
    envelope
}

#[test]
fn kafka_envelope_canaries_reach_no_error_log_dead_letter_or_store() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

    if !model_ready() {
        return;
    }
    let Some(broker) = tansu::Tansu::start() else {
        return;
    };
    const TOPIC: &str = "mmt.jobs.canaries";
    broker.create_topic(TOPIC, 1);
    let mut bodies = canary_envelopes();
    let refused = bodies.len();
    bodies.push(serde_json::to_vec(&accepted_envelope()).unwrap());
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("acks", "all")
        .create()
        .unwrap();
    for body in &bodies {
        producer
            .send(BaseRecord::<(), _>::to(TOPIC).partition(0).payload(body))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(15)).unwrap();

    let out = tempfile::tempdir().unwrap();
    let output = mmt(
        &[
            "run",
            "--source",
            "kafka",
            "--no-progress",
            "--idle-exit",
            "12",
        ],
        out.path(),
    )
    .env("MMT_KAFKA_BROKERS", &broker.bootstrap)
    .env("MMT_KAFKA_TOPIC", TOPIC)
    .env("MMT_KAFKA_GROUP", "mmt-canaries")
    .env("RUST_LOG", "debug")
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");

    let reasons = reasons(out.path());
    assert_eq!(
        reasons.len(),
        refused,
        "one dead letter per refused message: {reasons:?}\n{stderr}"
    );
    for reason in &reasons {
        assert!(
            reason.contains(" must ")
                || reason.contains("expected fields")
                || reason.contains("not valid JSON")
                || reason.contains("not accepted"),
            "a reason names the field and its rule: {reason}"
        );
    }
    let texts = texts_of(&output);
    assert_absent(&with_files(texts.clone(), out.path()), &CANARY_PARTS);
    assert_accepted_job_kept_to_the_store(out.path(), &texts);
}

#[test]
fn rabbitmq_envelope_canaries_reach_no_trace_log_dead_letter_or_store() {
    const BROKER: &str = "127.0.0.1:5672";
    if !model_ready() || !require_service("RabbitMQ", BROKER) {
        return;
    }
    let queue = format!("mmt.test.canaries.{}", std::process::id());
    let config = RabbitMqConfig::new(format!("amqp://guest:guest@{BROKER}/%2f")).with_queue(&queue);
    let submitter = JobSubmitter::connect(&config).unwrap();
    // The typed envelope carries strings only: a canary in each, in turn, and
    // in the message id and trace context the broker carries beside it.
    let audio = clip();
    let mut envelopes = Vec::new();
    for canary in CANARIES {
        let base = || JobEnvelope::inline("clinic-a", &audio, Some("wav"));
        let mut tenant = base();
        tenant.tenant = format!("{canary} x");
        let mut patient = base();
        patient.patient_reference = Some(format!("{canary} x"));
        let mut encounter = base();
        encounter.encounter_reference = Some(canary.to_owned());
        let mut format = JobEnvelope::inline("clinic-a", &audio, Some(canary));
        format.client_reference = Some(canary.to_owned());
        envelopes.extend([tenant, patient, encounter, format]);
    }
    let refused = envelopes.len();
    for (i, envelope) in envelopes.iter().enumerate() {
        let canary = CANARIES[i % CANARIES.len()];
        submitter
            .submit(envelope, &format!("{canary} {i}"), Some(canary))
            .unwrap();
    }
    submitter
        .submit(&accepted_envelope(), "accepted-1", None)
        .unwrap();

    let out = tempfile::tempdir().unwrap();
    let output = mmt(
        &[
            "run",
            "--source",
            "rabbitmq",
            "--no-progress",
            "--idle-exit",
            "4",
        ],
        out.path(),
    )
    .env("EXTERNAL_RABBITMQ_ENABLED", "true")
    .env("EXTERNAL_RABBITMQ_HOST", BROKER)
    .env("MMT_RABBITMQ_QUEUE", &queue)
    // Everything, dependencies included: lapin's trace events print frames.
    .env("RUST_LOG", "trace")
    .output()
    .unwrap();
    let depth = submitter.queue_depth();
    let _ = submitter.delete_queues();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(depth.ok(), Some(0), "every message was settled");
    assert_eq!(reasons(out.path()).len(), refused, "{stderr}");
    let texts = texts_of(&output);
    assert_absent(&with_files(texts.clone(), out.path()), &CANARY_PARTS);
    assert_accepted_job_kept_to_the_store(out.path(), &texts);
}

// ------------------------------------------------------------ configuration

#[test]
fn configuration_canaries_reach_no_problem_report() {
    let out = tempfile::tempdir().unwrap();
    let mut texts = Vec::new();
    for canary in CANARIES {
        let vars = [
            "ENV",
            "DATABASE_URL",
            "RETENTION_DAYS",
            "BACKOFF_BASE_SECONDS",
            "EXTERNAL_RABBITMQ_ENABLED",
            "EXTERNAL_RABBITMQ_HOST",
            "EXTERNAL_REDIS_HOST",
            "MMT_API_MAX_QUEUED_JOBS",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_TRACES_SAMPLER_ARG",
            "MMT_MODEL_DIR",
            "ORT_DYLIB_PATH",
            "SSL_CERT_FILE",
        ];
        for args in [
            &["check"][..],
            &["run", "--no-progress", "--input", "/nonexistent"],
        ] {
            let mut command = Command::new(env!("CARGO_BIN_EXE_mmt"));
            command
                .args(args)
                .current_dir(root())
                .env("OTEL_TRACES_SAMPLER", "traceidratio")
                .env("RUST_LOG", "debug");
            if args[0] == "run" {
                command.arg("--out").arg(out.path());
            }
            for var in vars {
                command.env(var, canary);
            }
            let output = command.output().unwrap();
            assert!(
                !output.status.success(),
                "{args:?} refuses the configuration"
            );
            let report = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            for var in [
                "ENV",
                "DATABASE_URL",
                "RETENTION_DAYS",
                "OTEL_TRACES_SAMPLER_ARG",
            ] {
                assert!(report.contains(var), "the problem names {var}:\n{report}");
            }
            texts.extend(texts_of(&output));
        }
    }
    assert_absent(&with_files(texts, out.path()), &CANARY_PARTS);
}

// ------------------------------------------------------------ the API

const JWT_SECRET: &str = "canary-test-secret-0123456789abcdef-01";
const BOUNDARY: &str = "mmt-canary-boundary";

fn token() -> String {
    let (status, stdout, stderr) = common::mmt_with_env(
        &[
            "token",
            "--tenant",
            "clinic-a",
            "--role",
            "submitter",
            "--role",
            "reader",
        ],
        &[("INTERNAL_JWT_SECRET", JWT_SECRET)],
    );
    assert!(status.success(), "{stderr}");
    stdout.trim().to_owned()
}

/// A form: `fields` as text parts, then the audio part.
fn form(fields: &[(&str, &str)], file_name: &str, content_type: &str, audio: &[u8]) -> Vec<u8> {
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
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"audio\"; \
             filename=\"{file_name}\"\r\nContent-Type: {content_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(audio);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// One request to submit a job, as the API gets it.
struct Submission {
    content_type: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

/// Submissions with a canary in each form field, each JSON field, the audio
/// part's name and type, and the headers a client sets. Every one is refused:
/// a canary that is a valid value alone (a well-formed patient reference, any
/// file name) is sent beside an invalid field.
fn canary_submissions(audio: &[u8]) -> Vec<Submission> {
    let multipart = format!("multipart/form-data; boundary={BOUNDARY}");
    let upload = |fields: &[(&str, &str)], file_name: &str, content_type: &str| Submission {
        content_type: multipart.clone(),
        headers: Vec::new(),
        body: form(fields, file_name, content_type, audio),
    };
    let json_body = |body: Vec<u8>| Submission {
        content_type: "application/json".to_owned(),
        headers: Vec::new(),
        body,
    };
    let mut submissions = Vec::new();
    for canary in CANARIES {
        for field in [
            "patient_reference",
            "encounter_reference",
            "priority",
            "callback_url",
        ] {
            if field == "patient_reference" && canary.starts_with("Patient/") {
                // Valid alone: refused for its priority instead.
                submissions.push(upload(
                    &[(field, canary), ("priority", "high")],
                    "a.wav",
                    "audio/wav",
                ));
            } else {
                submissions.push(upload(&[(field, canary)], "a.wav", "audio/wav"));
            }
        }
        submissions.push(upload(&[(canary, "1")], "a.wav", "audio/wav"));
        submissions.push(upload(
            &[("priority", canary)],
            &format!("{canary}.wav"),
            "audio/wav",
        ));
        // (A type that does not parse as one is no type: the priority is
        // what refuses it then.)
        submissions.push(upload(
            &[("priority", "high")],
            "a.wav",
            &format!("audio/{canary}"),
        ));
        let mut all = upload(
            &[
                ("patient_reference", canary),
                ("encounter_reference", canary),
                ("priority", canary),
                ("callback_url", canary),
            ],
            &format!("{canary}.wav"),
            "audio/wav",
        );
        all.headers = vec![
            ("Idempotency-Key", canary.to_owned()),
            ("traceparent", canary.to_owned()),
        ];
        submissions.push(all);

        for field in [
            "audio_reference",
            "patient_reference",
            "encounter_reference",
            "callback_url",
        ] {
            let mut body = json!({"audio_reference": "/audio/a.wav", "priority": canary});
            body[field] = json!(canary);
            submissions.push(json_body(serde_json::to_vec(&body).unwrap()));
        }
        for body in [
            json!({"audio_reference": canary}),
            json!({"audio_reference": "/audio/a.wav", "priority": canary}),
            json!({"audio_reference": "/audio/a.wav", "priority": [canary]}),
            json!({"audio_reference": [canary]}),
            Value::Object(
                [
                    ("audio_reference".to_owned(), json!("/audio/a.wav")),
                    (canary.to_owned(), json!(1)),
                ]
                .into_iter()
                .collect(),
            ),
            json!({"patient_reference": canary}),
            json!(canary),
        ] {
            submissions.push(json_body(serde_json::to_vec(&body).unwrap()));
        }
        submissions.push(json_body(
            format!(r#"{{"audio_reference": "/a.wav", "patient_reference": "{canary}"#)
                .into_bytes(),
        ));
        submissions.push(json_body(
            format!(r#"{{"audio_reference": {canary}}}"#).into_bytes(),
        ));
    }
    submissions
}

#[test]
fn api_canaries_reach_no_answer_log_upload_or_store() {
    if !model_ready() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(
        out.path(),
        &[],
        &[
            ("INTERNAL_JWT_SECRET", JWT_SECRET),
            (
                "MMT_WEBHOOK_SECRET",
                "canary-webhook-secret-0123456789abcdef",
            ),
            ("RUST_LOG", "debug"),
        ],
    );
    let token = token();
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build(),
    );
    let url = format!("{}/v1/jobs", server.base);
    let send = |submission: &Submission| {
        let mut request = agent
            .post(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .header("Content-Type", &submission.content_type);
        for (name, value) in &submission.headers {
            request = request.header(*name, value);
        }
        let mut response = request.send(&submission.body[..]).unwrap();
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_vec().unwrap();
        (status, body)
    };

    let audio = clip();
    let mut answers = Vec::new();
    for submission in canary_submissions(&audio) {
        let (status, body) = send(&submission);
        let shown = String::from_utf8_lossy(&submission.body[..submission.body.len().min(300)])
            .into_owned();
        assert!(
            (400..500).contains(&status),
            "refused, not {status}: {shown}\n{}",
            String::from_utf8_lossy(&body)
        );
        answers.push((format!("the answer ({status}) to {shown}"), body));
    }
    // One valid upload whose patient reference is the accepted canary.
    let mut different = audio.clone();
    different.extend_from_slice(&[0; 1600]);
    let (status, body) = send(&Submission {
        content_type: format!("multipart/form-data; boundary={BOUNDARY}"),
        headers: Vec::new(),
        body: form(
            &[("patient_reference", ACCEPTED)],
            "dict.wav",
            "audio/wav",
            &different,
        ),
    });
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));

    let (_, log) = server.stop();
    let mut texts = answers;
    texts.push(("the server's log".to_owned(), log.clone()));
    assert_absent(&with_files(texts, out.path()), &CANARY_PARTS);
    assert_accepted_job_kept_to_the_store(out.path(), &[("the server's log".to_owned(), log)]);
}
