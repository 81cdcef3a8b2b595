//! The bad-input corpus (issue 19, item 2): every way input enters MMT —
//! a folder of audio with sidecars (`mmt run --input`), job envelopes from
//! a broker (`mmt run --source kafka`), requests to `mmt serve` — fed
//! hundreds of broken, hostile and odd-but-valid inputs, each case's
//! outcome checked against `tests/corpus/manifest.jsonl`:
//!
//! - `dead_letter`: exactly one dead letter for the case's job, whose
//!   reason says what is wrong (the manifest's `reason` is part of it);
//! - `complete`: the job's FHIR document, and no dead letter;
//! - `status`: the API answers that 4xx;
//! - for uploads, `dead_letter`/`complete` after a 202.
//!
//! Never a panic, a hang (each process has a deadline) or a 5xx, and none
//! of the canaries planted in the inputs (`common/scan.rs`) in any answer,
//! log line, dead letter, audit event or stored byte. One process serves
//! every case of its kind, so the whole corpus takes well under two minutes.
//! How the cases are made is `tests/corpus/gen.rs`; see `tests/corpus/README.md`.

// The helpers below are test code too: a failed set-up step should panic.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "corpus/gen.rs"]
mod gen;
#[path = "common/scan.rs"]
mod scan;
#[path = "common/tansu.rs"]
mod tansu;

use common::{claims, model_ready, read_lines, root};
use mmt_api::auth::sign_hs256;
use mmt_core::retry::RetryPolicy;
use mmt_operators::decode::unreadable_job_id;
use mmt_operators::identity::{content_hash_of, job_id};
use scan::{assert_absent, with_files, CANARY_PARTS};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One line of the manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    id: String,
    class: String,
    expect: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    status: Option<u16>,
}

const CLASSES: [&str; 4] = ["audio", "sidecar", "envelope", "api"];

fn manifest() -> BTreeMap<String, Expected> {
    let text = std::fs::read_to_string(root().join("tests/corpus/manifest.jsonl")).unwrap();
    let mut cases = BTreeMap::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let case: Expected =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("manifest line {}: {e}", n + 1));
        assert!(CLASSES.contains(&case.class.as_str()), "{case:?}");
        match case.expect.as_str() {
            "dead_letter" => assert!(case.reason.is_some(), "a dead letter's reason: {case:?}"),
            "complete" => {}
            "status" => assert!(
                case.status.is_some_and(|s| (400..500).contains(&s)),
                "a 4xx status: {case:?}"
            ),
            other => panic!("unknown expectation {other}"),
        }
        let id = case.id.clone();
        assert!(cases.insert(id.clone(), case).is_none(), "{id} twice");
    }
    cases
}

/// The manifest's cases of `classes`, which must be exactly `generated`.
fn expected<'m>(
    manifest: &'m BTreeMap<String, Expected>,
    classes: &[&str],
    generated: &[&str],
) -> HashMap<String, &'m Expected> {
    let listed: HashSet<&str> = manifest
        .values()
        .filter(|c| classes.contains(&c.class.as_str()))
        .map(|c| c.id.as_str())
        .collect();
    let made: HashSet<&str> = generated.iter().copied().collect();
    assert_eq!(made.len(), generated.len(), "generated ids are unique");
    let missing: Vec<_> = made.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&made).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "manifest out of step: not listed {missing:?}; not generated {stale:?}"
    );
    generated
        .iter()
        .map(|id| (id.to_string(), &manifest[*id]))
        .collect()
}

#[test]
fn the_corpus_has_200_cases_of_every_class() {
    let manifest = manifest();
    let mut per_class: BTreeMap<&str, usize> = BTreeMap::new();
    for case in manifest.values() {
        *per_class.entry(case.class.as_str()).or_default() += 1;
    }
    println!("corpus: {} cases {per_class:?}", manifest.len());
    assert!(manifest.len() >= 200, "{} cases", manifest.len());
    for class in CLASSES {
        assert!(
            per_class.get(class).copied().unwrap_or(0) >= 10,
            "{class}: {per_class:?}"
        );
    }
    let committed: u64 = std::fs::read_dir(root().join("tests/corpus/files"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        committed < 256 << 10,
        "committed corpus files: {committed} bytes"
    );
}

/// `command` to its end, killed (and the test failed) past `limit`: a hang.
fn run_with_deadline(mut command: Command, limit: Duration) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(limit) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &id.to_string()])
                .status();
            panic!("hang: the process ran past {limit:?}");
        }
    }
}

/// `mmt <args>` for the corpus: nothing from the caller's environment that
/// points elsewhere.
fn mmt(args: &[&str], out: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mmt"));
    command
        .args(args)
        .arg("--out")
        .arg(out)
        .current_dir(root())
        .env_remove("DATABASE_URL")
        .env_remove("AUDIT_LOG_FILE")
        .env_remove("ENABLE_REDIS_BLOOM_IDEMPOTENCY")
        .env_remove("EXTERNAL_REDIS_ENABLED")
        .env_remove("EXTERNAL_RABBITMQ_ENABLED")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_KEY_FILE")
        .env("RUST_LOG", "debug");
    command
}

fn hash(bytes: &[u8]) -> String {
    content_hash_of(bytes).unwrap()
}

/// What a run left: dead letters by job id, and the ids of its documents.
struct Outcomes {
    letters: HashMap<String, Vec<String>>,
    documents: HashSet<String>,
}

impl Outcomes {
    fn read(out: &Path) -> Self {
        let mut letters: HashMap<String, Vec<String>> = HashMap::new();
        for letter in read_lines(&out.join("dlq.jsonl")) {
            letters
                .entry(letter["job_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(letter["reason"].as_str().unwrap().to_owned());
        }
        let documents = common::documents(out)
            .iter()
            .map(|doc| doc["id"].as_str().unwrap().to_owned())
            .collect();
        Self { letters, documents }
    }

    /// Checks one case whose job is one of `ids`; the problem, if any.
    fn check(&self, case: &Expected, ids: &[String]) -> Option<String> {
        let letters: Vec<&String> = ids
            .iter()
            .filter_map(|id| self.letters.get(id))
            .flatten()
            .collect();
        let documented = ids.iter().any(|id| self.documents.contains(id));
        match case.expect.as_str() {
            "dead_letter" => {
                let reason = case.reason.as_deref().unwrap_or_default();
                if letters.len() != 1 || documented {
                    Some(format!(
                        "{}: expected one dead letter, got {letters:?} (document: {documented})",
                        case.id
                    ))
                } else if !letters[0].contains(reason) {
                    Some(format!(
                        "{}: the reason {:?} does not say {reason:?}",
                        case.id, letters[0]
                    ))
                } else {
                    None
                }
            }
            _ => (!documented || !letters.is_empty()).then(|| {
                format!(
                    "{}: expected a document, got {letters:?} (document: {documented})",
                    case.id
                )
            }),
        }
    }
}

fn fail_on(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} case(s) failed:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

fn texts_of(output: &Output) -> Vec<(String, Vec<u8>)> {
    vec![
        ("stdout".to_owned(), output.stdout.clone()),
        ("stderr (the JSON log)".to_owned(), output.stderr.clone()),
    ]
}

#[test]
fn folder_audio_and_sidecars() {
    if !model_ready() {
        return;
    }
    let manifest = manifest();
    let cases = gen::folder_cases();
    let ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    let expected = expected(&manifest, &["audio", "sidecar"], &ids);
    let input = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // Each case's possible job ids: refused by name (a sidecar that does
    // not read), or its content under its tenant.
    let mut job_ids: HashMap<&str, Vec<String>> = HashMap::new();
    for case in &cases {
        let name = format!("{}.{}", case.id, case.extension);
        std::fs::write(input.path().join(&name), &case.audio).unwrap();
        // Without a sidecar of its own, a case gets its id as its tenant:
        // cases with the same bytes (empty files, four-byte cuts) stay
        // separate jobs.
        let sidecar = case
            .sidecar
            .clone()
            .unwrap_or_else(|| format!(r#"{{"tenant":"{}"}}"#, case.id).into_bytes());
        let tenant = serde_json::from_slice::<serde_json::Value>(&sidecar)
            .ok()
            .and_then(|v| v.get("tenant").and_then(|t| t.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "default".to_owned());
        std::fs::write(input.path().join(format!("{name}.json")), &sidecar).unwrap();
        job_ids.insert(
            &case.id,
            vec![
                unreadable_job_id("default", &name).to_string(),
                job_id(&tenant, &hash(&case.audio)).to_string(),
            ],
        );
    }

    let started = Instant::now();
    let input_path = input.path().display().to_string();
    let mut command = mmt(
        &["run", "--no-progress", "--input", &input_path],
        out.path(),
    );
    command.env("MMT_MAX_AUDIO_SECONDS", "3600");
    let output = run_with_deadline(command, Duration::from_secs(300));
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!(
        "{} folder cases in {:.1} s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        output.status.code(),
        Some(2),
        "dead letters exit 2\n{}",
        &stderr[stderr.len().saturating_sub(3000)..]
    );

    let outcomes = Outcomes::read(out.path());
    let problems: Vec<String> = cases
        .iter()
        .filter_map(|case| outcomes.check(expected[&case.id], &job_ids[case.id.as_str()]))
        .collect();
    fail_on(&problems);
    let dead: usize = outcomes.letters.values().map(Vec::len).sum();
    let expected_dead = expected
        .values()
        .filter(|c| c.expect == "dead_letter")
        .count();
    assert_eq!(dead, expected_dead, "no other dead letter");
    assert_absent(&with_files(texts_of(&output), out.path()), &CANARY_PARTS);
}

#[test]
fn kafka_envelopes() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

    if !model_ready() {
        return;
    }
    let manifest = manifest();
    let cases = gen::envelope_cases();
    let ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    let expected = expected(&manifest, &["envelope"], &ids);
    let Some(broker) = tansu::Tansu::start() else {
        return;
    };
    const TOPIC: &str = "mmt.jobs.corpus";
    broker.create_topic(TOPIC, 1);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("acks", "all")
        .set("message.max.bytes", "33554432")
        .create()
        .unwrap();
    // One partition: the n-th case is offset n, which names its message.
    let mut job_ids: HashMap<&str, Vec<String>> = HashMap::new();
    for (offset, case) in cases.iter().enumerate() {
        producer
            .send(
                BaseRecord::<(), _>::to(TOPIC)
                    .partition(0)
                    .payload(&case.body),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        let message = format!("{TOPIC}/0/{offset}");
        let mut ids = vec![unreadable_job_id("unknown", &message).to_string()];
        let envelope: Option<mmt_connectors::envelope::JobEnvelope> =
            serde_json::from_slice(&case.body).ok();
        if let Some(envelope) = envelope {
            // A valid envelope whose audio cannot be read keeps its tenant.
            ids.push(unreadable_job_id(&envelope.tenant, &message).to_string());
            if let mmt_connectors::envelope::AudioPayload::Inline { data, .. } = &envelope.audio {
                use base64::Engine as _;
                if let Ok(audio) = base64::engine::general_purpose::STANDARD.decode(data) {
                    ids.push(job_id(&envelope.tenant, &hash(&audio)).to_string());
                }
            }
        }
        job_ids.insert(&case.id, ids);
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut command = mmt(
        &[
            "run",
            "--source",
            "kafka",
            "--no-progress",
            "--idle-exit",
            "8",
        ],
        out.path(),
    );
    command
        .env("MMT_KAFKA_BROKERS", &broker.bootstrap)
        .env("MMT_KAFKA_TOPIC", TOPIC)
        .env("MMT_KAFKA_GROUP", "mmt-corpus");
    let output = run_with_deadline(command, Duration::from_secs(300));
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!(
        "{} envelope cases in {:.1} s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let outcomes = Outcomes::read(out.path());
    let problems: Vec<String> = cases
        .iter()
        .filter_map(|case| outcomes.check(expected[&case.id], &job_ids[case.id.as_str()]))
        .collect();
    fail_on(&problems);
    let dead: usize = outcomes.letters.values().map(Vec::len).sum();
    let expected_dead = expected
        .values()
        .filter(|c| c.expect == "dead_letter")
        .count();
    assert_eq!(dead, expected_dead, "no other dead letter");
    assert_absent(&with_files(texts_of(&output), out.path()), &CANARY_PARTS);
}

const SECRET: &str = "corpus-test-secret-0123456789abcdef-0123";

/// The Authorization header a case names: its own value, or a token made
/// here (the empty string is a valid submitter's).
fn authorization(value: &str) -> String {
    let token = |tenant: &str, roles: &[&str], expires_in: i64, secret: &str| {
        format!(
            "Bearer {}",
            sign_hs256(secret, &claims(tenant, roles, expires_in)).unwrap()
        )
    };
    match value {
        "" => token("clinic-a", &["submitter", "reader"], 600, SECRET),
        "expired" => token("clinic-a", &["submitter"], -600, SECRET),
        "wrong-secret" => token(
            "clinic-a",
            &["submitter"],
            600,
            "another-secret-0123456789abcdef-0123456",
        ),
        "bad-tenant" => token("Smith John", &["submitter"], 600, SECRET),
        "reader" => token("clinic-a", &["reader"], 600, SECRET),
        "no-roles" => token("clinic-a", &[], 600, SECRET),
        other => other.to_owned(),
    }
}

#[test]
fn api_requests() {
    if !model_ready() {
        return;
    }
    let manifest = manifest();
    let cases = gen::api_cases();
    let ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    let expected = expected(&manifest, &["api"], &ids);
    let out = tempfile::tempdir().unwrap();
    let server = common::serve::Server::start(
        out.path(),
        &["--tenant-rate", "100000", "--tenant-burst", "100000"],
        &[
            ("INTERNAL_JWT_SECRET", SECRET),
            ("MMT_API_MAX_UPLOAD_MB", "2"),
            ("RUST_LOG", "debug"),
        ],
    );
    // A fresh connection per case: the server may close a connection after
    // refusing a body it did not read (the huge ones), and a pooled
    // connection it closed would fail the next case, whose answer would then
    // be lost to the race rather than to the server.
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .max_idle_connections(0)
            .build(),
    );
    let started = Instant::now();
    let mut problems = Vec::new();
    let mut answers = Vec::new();
    // Accepted uploads, and what each must end in.
    let mut accepted: Vec<(&Expected, String)> = Vec::new();
    for case in &cases {
        let expect = expected[&case.id];
        let url = format!("{}{}", server.base, case.path);
        let request = || {
            let mut request = axum::http::Request::builder().method(case.method).uri(&url);
            if let Some(value) = &case.authorization {
                request = request.header("Authorization", authorization(value));
            }
            for (name, value) in &case.headers {
                request = request.header(*name, value);
            }
            request.body(case.body.clone()).unwrap()
        };
        // A body over the limit is refused before the server has read all of
        // it, and the connection closed after the answer: the client, still
        // sending, may see the reset before it reads the 413 (hyper does no
        // lingering close). Such a case is sent again, up to three times in
        // all, with the project's one retry policy.
        let attempts = if expect.status == Some(413) { 3 } else { 1 };
        let mut waits = RetryPolicy::from_base(Duration::from_millis(50))
            .with_max_attempts(attempts)
            .unwrap()
            .backoff();
        let answer = loop {
            let answer = agent.run(request());
            match (&answer, waits.next()) {
                (Err(_), Some(wait)) => std::thread::sleep(wait),
                _ => break answer,
            }
        };
        let (status, body) = match answer {
            Ok(mut response) => (
                response.status().as_u16(),
                response.body_mut().read_to_vec().unwrap_or_default(),
            ),
            Err(err) => {
                problems.push(format!("{}: no answer ({err})", case.id));
                continue;
            }
        };
        let text = String::from_utf8_lossy(&body).into_owned();
        answers.push((
            format!("the answer ({status}) to {}", case.id),
            body.clone(),
        ));
        match expect.expect.as_str() {
            "status" if Some(status) != expect.status => problems.push(format!(
                "{}: expected {:?}, got {status}: {text}",
                case.id, expect.status
            )),
            "status" => {}
            _ if status != 202 => {
                problems.push(format!("{}: expected 202, got {status}: {text}", case.id))
            }
            _ => {
                let job: serde_json::Value = serde_json::from_slice(&body).unwrap();
                accepted.push((expect, job["id"].as_str().unwrap().to_owned()));
            }
        }
    }
    // Every accepted upload ends as the manifest says.
    let reader = authorization("");
    let deadline = Instant::now() + Duration::from_secs(120);
    for (expect, id) in &accepted {
        let want = if expect.expect == "complete" {
            "completed"
        } else {
            "dead_lettered"
        };
        let status = loop {
            let mut response = agent
                .get(&format!("{}/v1/jobs/{id}", server.base))
                .header("Authorization", &reader)
                .call()
                .unwrap();
            let job: serde_json::Value = response.body_mut().read_json().unwrap();
            let status = job["status"].as_str().unwrap_or_default().to_owned();
            if status == "completed" || status == "dead_lettered" || Instant::now() > deadline {
                break status;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if status != want {
            problems.push(format!("{}: ended {status}, expected {want}", expect.id));
        }
    }
    println!(
        "{} API cases in {:.1} s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    let (_, log) = server.stop();
    let log_text = String::from_utf8_lossy(&log);
    assert!(!log_text.contains("panicked"), "{log_text}");
    fail_on(&problems);
    let outcomes = Outcomes::read(out.path());
    let dead: usize = outcomes.letters.values().map(Vec::len).sum();
    let expected_dead = accepted
        .iter()
        .filter(|(e, _)| e.expect == "dead_letter")
        .count();
    assert_eq!(dead, expected_dead, "one dead letter per refused upload");
    let mut texts = answers;
    texts.push(("the server's log".to_owned(), log));
    assert_absent(&with_files(texts, out.path()), &CANARY_PARTS);
}
