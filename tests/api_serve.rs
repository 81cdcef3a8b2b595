//! End-to-end tests of `mmt serve`: a real server process on loopback, the
//! model transcribing uploads, a webhook receiver, and TLS.

// The helpers below are test code too: a failed set-up step should panic.
#![allow(clippy::unwrap_used)]

mod common;

use common::{model_ready, read_lines, root};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SECRET: &str = "serve-test-secret-0123456789abcdef-01";
const WEBHOOK_SECRET: &str = "webhook-test-secret-0123456789abcdef";
const BOUNDARY: &str = "mmt-serve-test-boundary";

/// A running `mmt serve`, stopped (SIGTERM) when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(out: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mmt"))
            .args(["serve", "--listen", "127.0.0.1:0", "--out"])
            .arg(out)
            .current_dir(root())
            .env("INTERNAL_JWT_SECRET", SECRET)
            .env("MMT_WEBHOOK_SECRET", WEBHOOK_SECRET)
            // The test's receivers listen on loopback.
            .env("MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL")
            .env_remove("AUDIT_LOG_FILE")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mmt serve starts");
        let stderr = child.stderr.take().unwrap();
        let (found, address) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving the job API on ").nth(1) {
                    let url = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = found.send(url);
                }
                eprintln!("server: {line}");
            }
        });
        let base = address
            .recv_timeout(Duration::from_secs(60))
            .expect("the server announces its address");
        Self { child, base }
    }

    fn stop(mut self) -> std::process::ExitStatus {
        signal(&self.child, "TERM");
        let status = wait_for_exit(&mut self.child, Duration::from_secs(30));
        std::mem::forget(self);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_for_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < limit, "the server did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn token(roles: &[&str]) -> String {
    let (status, stdout, stderr) = common::mmt_with_env(
        &[
            &["token", "--tenant", "clinic-a"][..],
            &roles.iter().flat_map(|r| ["--role", r]).collect::<Vec<_>>()[..],
        ]
        .concat(),
        &[("INTERNAL_JWT_SECRET", SECRET)],
    );
    assert!(status.success(), "{stderr}");
    stdout.trim().to_owned()
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build(),
    )
}

fn multipart(audio: &[u8], fields: &[(&str, &str)]) -> Vec<u8> {
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
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"dict_001.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(audio);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn get_json(agent: &ureq::Agent, url: &str, token: &str) -> (u16, serde_json::Value) {
    let mut response = agent
        .get(url)
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Accepts one HTTP request and answers `status`; sends back its head and body.
fn webhook_receiver(status: u16) -> (String, mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/hooks/mmt?token=abc",
        listener.local_addr().unwrap()
    );
    let (sender, received) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            .unwrap();
            if sender.send((head, body)).is_err() {
                return;
            }
        }
    });
    (url, received)
}

#[test]
fn an_upload_is_transcribed_and_its_transcript_served() {
    if !model_ready() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(out.path(), &[]);
    let agent = agent();
    let submitter = token(&["submitter", "reader"]);
    let (hook_url, hooks) = webhook_receiver(200);
    let audio = std::fs::read(root().join("samples/dict_001.wav")).unwrap();
    let mut response = agent
        .post(&format!("{}/v1/jobs", server.base))
        .header("Authorization", &format!("Bearer {submitter}"))
        .header(
            "Content-Type",
            &format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .send(
            &multipart(
                &audio,
                &[
                    ("patient_reference", "Patient/p-17"),
                    ("encounter_reference", "Encounter/e-9"),
                    ("callback_url", &hook_url),
                ],
            )[..],
        )
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let job: serde_json::Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let job_url = format!("{}/v1/jobs/{id}", server.base);

    let started = Instant::now();
    let job = loop {
        let (status, job) = get_json(&agent, &job_url, &submitter);
        assert_eq!(status, 200);
        if job["status"] == "completed" || job["status"] == "dead_lettered" {
            break job;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "still {job}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["attempts"], 1);
    assert!(job["audio_seconds"].as_f64().unwrap() > 5.0);

    let (status, transcript) = get_json(&agent, &format!("{job_url}/transcript"), &submitter);
    assert_eq!(status, 200);
    let text = transcript["text"].as_str().unwrap().to_lowercase();
    assert!(text.contains("medication"), "{text}");
    assert!(!transcript["segments"].as_array().unwrap().is_empty());
    let (status, document) = get_json(
        &agent,
        &format!("{job_url}/transcript?format=fhir"),
        &submitter,
    );
    assert_eq!(status, 200);
    assert_eq!(document["resourceType"], "DocumentReference");
    assert_eq!(document["subject"]["reference"], "Patient/p-17");
    let mut vtt = agent
        .get(&format!("{job_url}/transcript?format=vtt"))
        .header("Authorization", &format!("Bearer {submitter}"))
        .call()
        .unwrap();
    assert!(vtt
        .body_mut()
        .read_to_string()
        .unwrap()
        .starts_with("WEBVTT"));

    // The completion webhook: signed, names the job, carries no PHI.
    let (head, body) = hooks
        .recv_timeout(Duration::from_secs(30))
        .expect("webhook");
    let signature = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("mmt-signature: ")
                .or_else(|| l.strip_prefix("MMT-Signature: "))
        })
        .expect("signed")
        .trim()
        .to_owned();
    let timestamp: i64 = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        signature,
        mmt_api::webhook::sign(WEBHOOK_SECRET, timestamp, &body)
    );
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["event"], "job.completed");
    assert_eq!(event["job"]["id"], id.as_str());
    let raw = String::from_utf8(body).unwrap();
    assert!(
        !raw.contains("p-17") && !raw.contains("medication"),
        "{raw}"
    );

    // A request with a bad token: refused, and audited with the peer address.
    let refused = agent
        .get(&job_url)
        .header("Authorization", "Bearer not-a-token")
        .call()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);

    // Deletion by an admin: gone from the API, the documents and the uploads; audited.
    let admin = token(&["admin"]);
    let deleted = agent
        .delete(&job_url)
        .header("Authorization", &format!("Bearer {admin}"))
        .call()
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(get_json(&agent, &job_url, &submitter).0, 404);
    assert!(common::documents(out.path()).is_empty());
    let status = server.stop();
    assert!(status.success(), "a clean shutdown: {status}");
    let trail = read_lines(&out.path().join("audit.jsonl"));
    let actions: Vec<String> = trail
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    let count = |action: &str| actions.iter().filter(|a| *a == action).count();
    assert_eq!(count("job_received"), 1, "{actions:?}");
    assert_eq!(count("job_completed"), 1, "{actions:?}");
    assert_eq!(count("job_deleted"), 1, "{actions:?}");
    assert_eq!(
        count("transcript_read"),
        3,
        "json, fhir and vtt: {actions:?}"
    );
    let refused = trail
        .iter()
        .find(|e| e["action"] == "authentication_failed")
        .expect("the refused token is audited");
    assert_eq!(refused["detail"]["client"], "127.0.0.1", "{refused}");
    assert_eq!(refused["detail"]["reason"], "malformed", "{refused}");
    let (status, verified, _) = common::mmt(&[
        "audit",
        "verify",
        "--file",
        out.path().join("audit.jsonl").to_str().unwrap(),
    ]);
    assert!(status.success(), "{verified}");
    let uploads = std::fs::read_dir(out.path().join("uploads"))
        .unwrap()
        .count();
    assert_eq!(uploads, 0);
}

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it
/// (rustls refuses a CA certificate used as the server's own).
/// Submits `audio` as the tenant of `token`; the answer's status and job id.
fn submit(agent: &ureq::Agent, base: &str, token: &str, audio: &[u8]) -> (u16, String) {
    let mut response = agent
        .post(&format!("{base}/v1/jobs"))
        .header("Authorization", &format!("Bearer {token}"))
        .header(
            "Content-Type",
            &format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .send(&multipart(audio, &[])[..])
        .unwrap();
    let status = response.status().as_u16();
    let job: serde_json::Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    (status, job["id"].as_str().unwrap_or_default().to_owned())
}

/// The job once it is final (completed or dead-lettered).
fn wait_until_final(agent: &ureq::Agent, job_url: &str, token: &str) -> serde_json::Value {
    wait_for_job(agent, job_url, token, |status| {
        status == "completed" || status == "dead_lettered"
    })
}

/// The job once its status is one that `wanted` accepts (polled, for at most
/// three minutes).
fn wait_for_job(
    agent: &ureq::Agent,
    job_url: &str,
    token: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let (status, job) = get_json(agent, job_url, token);
        assert_eq!(status, 200, "{job}");
        if wanted(&job["status"]) {
            return job;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "still {job}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_deleted_recording_submitted_again_completes_and_both_rounds_are_audited() {
    if !model_ready() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(out.path(), &[]);
    let agent = agent();
    let submitter = token(&["submitter", "reader"]);
    let admin = token(&["admin"]);
    let audio = std::fs::read(root().join("samples/dict_001.wav")).unwrap();
    let mut ids = Vec::new();
    for round in 1..=2 {
        let (status, id) = submit(&agent, &server.base, &submitter, &audio);
        assert_eq!(status, 202, "round {round}");
        let job_url = format!("{}/v1/jobs/{id}", server.base);
        let job = wait_until_final(&agent, &job_url, &submitter);
        assert_eq!(job["status"], "completed", "round {round}: {job}");
        assert_eq!(job["attempts"], 1, "round {round}: a new record, one take");
        let (status, _) = get_json(&agent, &format!("{job_url}/transcript"), &submitter);
        assert_eq!(status, 200, "round {round}");
        let deleted = agent
            .delete(&job_url)
            .header("Authorization", &format!("Bearer {admin}"))
            .call()
            .unwrap();
        assert_eq!(deleted.status().as_u16(), 204, "round {round}");
        ids.push(id);
    }
    assert_eq!(ids[0], ids[1], "the same recording is the same job");
    let status = server.stop();
    assert!(status.success(), "a clean shutdown: {status}");

    let audit = read_lines(&out.path().join("audit.jsonl"));
    let count = |action: &str| {
        audit
            .iter()
            .filter(|e| e["action"] == action && e["job_id"] == ids[0].as_str())
            .count()
    };
    assert_eq!(count("job_completed"), 2, "{audit:?}");
    assert_eq!(count("job_deleted"), 2, "{audit:?}");
    assert_eq!(count("job_duplicate"), 0, "{audit:?}");
    // Each round's events share its own correlation id (a transcript read
    // carries its request's).
    let rounds: std::collections::HashSet<&str> = audit
        .iter()
        .filter(|e| e["job_id"] == ids[0].as_str() && e["action"] != "transcript_read")
        .map(|e| e["correlation_id"].as_str().unwrap())
        .collect();
    assert_eq!(rounds.len(), 2, "{audit:?}");
}

fn test_certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let path = |name: &str| dir.join(name);
    let ext = path("server.ext");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=mmt test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    ];
    for args in steps {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    }
    (path("ca.pem"), path("server.pem"), path("server.key"))
}

#[test]
fn tls_is_served_from_the_certificate_files() {
    if !model_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(dir.path());
    let server = Server::start(
        &dir.path().join("out"),
        &[
            ("SSL_CERT_FILE", cert.to_str().unwrap()),
            ("SSL_KEY_FILE", key.to_str().unwrap()),
        ],
    );
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let pem = std::fs::read(&ca).unwrap();
    let roots: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert),
            _ => None,
        })
        .collect();
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                    .build(),
            )
            .build(),
    );
    let reader = token(&["reader"]);
    let (status, page) = get_json(&agent, &format!("{}/v1/jobs", server.base), &reader);
    assert_eq!(status, 200, "{page}");
    // Plain HTTP on the TLS port gets no answer a client could mistake for the API.
    let plain = format!("{}/healthz", server.base.replacen("https://", "http://", 1));
    assert!(agent
        .get(&plain)
        .call()
        .map(|r| r.status().as_u16() != 200)
        .unwrap_or(true));
    assert!(server.stop().success());
}

#[test]
fn production_refuses_to_serve_without_tls() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(["serve", "--listen", "127.0.0.1:0", "--out"])
        .arg(out.path())
        .current_dir(root())
        .env("ENV", "prod")
        .env("ENFORCE_TLS_IN_PRODUCTION", "true")
        .env("INTERNAL_JWT_SECRET", SECRET)
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_KEY_FILE")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SSL_CERT_FILE"), "{stderr}");
}

#[test]
fn serving_needs_a_token_key() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(["serve", "--listen", "127.0.0.1:0", "--out"])
        .arg(out.path())
        .current_dir(root())
        .env_remove("INTERNAL_JWT_SECRET")
        .env_remove("MMT_JWT_PUBLIC_KEYS_DIR")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("INTERNAL_JWT_SECRET"), "{stderr}");
}

#[test]
fn a_short_webhook_secret_is_refused_by_check_and_at_start() {
    let short = [("MMT_WEBHOOK_SECRET", "too-short-secret")];
    let (status, stdout, _) = common::mmt_with_env(&["check"], &short);
    assert!(!status.success(), "{stdout}");
    assert!(stdout.contains("MMT_WEBHOOK_SECRET"), "{stdout}");
    assert!(
        !stdout.contains("too-short-secret"),
        "never shown: {stdout}"
    );
    let out = tempfile::tempdir().unwrap();
    let (status, stderr) = serve_to_the_end(out.path(), &short);
    assert!(!status.success());
    assert!(stderr.contains("MMT_WEBHOOK_SECRET"), "{stderr}");

    let switch = [
        ("MMT_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true"),
        ("ENV", "staging"),
    ];
    let (_, stdout, _) = common::mmt_with_env(&["check"], &switch);
    assert!(
        stdout.contains("MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS"),
        "the switch is reported: {stdout}"
    );
}

/// Runs `mmt serve` to its end with `env`; its exit status and stderr.
fn serve_to_the_end(out: &Path, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(["serve", "--listen", "127.0.0.1:0", "--out"])
        .arg(out)
        .current_dir(root())
        .env("INTERNAL_JWT_SECRET", SECRET)
        .env_remove("DATABASE_URL")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_missing_or_corrupt_model_stops_serve_before_it_listens() {
    let out = tempfile::tempdir().unwrap();
    let missing = out.path().join("no-model");
    let (status, stderr) =
        serve_to_the_end(out.path(), &[("MMT_MODEL_DIR", missing.to_str().unwrap())]);
    assert!(!status.success());
    assert!(stderr.contains("MMT_MODEL_DIR"), "{stderr}");
    assert!(!stderr.contains("serving the job API"), "{stderr}");

    if !model_ready() {
        return;
    }
    // Every file of the model, present but garbage.
    let corrupt = out.path().join("corrupt-model");
    std::fs::create_dir(&corrupt).unwrap();
    for entry in std::fs::read_dir(root().join("models/tiny.en")).unwrap() {
        let name = entry.unwrap().file_name();
        std::fs::write(corrupt.join(name), b"not a model").unwrap();
    }
    let (status, stderr) =
        serve_to_the_end(out.path(), &[("MMT_MODEL_DIR", corrupt.to_str().unwrap())]);
    assert!(!status.success());
    assert!(stderr.contains("could not be loaded"), "{stderr}");
    assert!(!stderr.contains("serving the job API"), "{stderr}");
}

fn submit_upload(agent: &ureq::Agent, base: &str, token: &str, audio: &[u8]) -> (u16, String) {
    let mut response = agent
        .post(&format!("{base}/v1/jobs"))
        .header("Authorization", &format!("Bearer {token}"))
        .header(
            "Content-Type",
            &format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .send(&multipart(audio, &[])[..])
        .unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap())
            .unwrap_or(serde_json::Value::Null);
    (status, body["id"].as_str().unwrap_or_default().to_owned())
}

/// Polls until every job in `ids` is completed (or the time is up).
fn wait_until_completed(agent: &ureq::Agent, base: &str, token: &str, ids: &[String]) {
    let started = Instant::now();
    for id in ids {
        loop {
            let (status, job) = get_json(agent, &format!("{base}/v1/jobs/{id}"), token);
            assert_eq!(status, 200, "{job}");
            if job["status"] == "completed" {
                assert_eq!(job["attempts"], 1, "{job}");
                break;
            }
            assert_ne!(job["status"], "dead_lettered", "{job}");
            assert!(started.elapsed() < Duration::from_secs(300), "still {job}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

#[test]
fn a_dead_dataflow_fails_readiness_and_the_service_exits_non_zero() {
    if !model_ready() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let mut server = Server::start(out.path(), &[("MMT_TEST_DATAFLOW_PANIC", "1")]);
    let agent = agent();
    let submitter = token(&["submitter", "reader"]);
    let ready = |agent: &ureq::Agent| {
        agent
            .get(&format!("{}/readyz", server.base))
            .call()
            .ok()
            .map(|r| r.status().as_u16())
    };
    assert_eq!(ready(&agent), Some(200));
    let audio = std::fs::read(root().join("samples/dict_001.wav")).unwrap();
    let (status, id) = submit_upload(&agent, &server.base, &submitter, &audio);
    assert_eq!(status, 202);
    // The dataflow fails on the job: readiness and new submissions answer 503
    // until the process exits, non-zero.
    let started = Instant::now();
    let mut refused = None;
    while refused.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "readiness never failed"
        );
        if ready(&agent) == Some(503) {
            let other = common::distinct_recordings(2).pop().unwrap().1;
            refused = Some(submit_upload(&agent, &server.base, &submitter, &other).0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(refused, Some(503));
    let status = wait_for_exit(&mut server.child, Duration::from_secs(60));
    assert!(!status.success(), "{status}");
    drop(server);

    // The accepted job was not lost: the next start transcribes it.
    let server = Server::start(out.path(), &[]);
    wait_until_completed(&agent, &server.base, &submitter, &[id]);
    assert!(server.stop().success());
}

#[test]
fn a_backlog_left_at_a_restart_completes_exactly_once() {
    if !model_ready() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let ids = accept_backlog(out.path(), common::distinct_recordings(4));
    let agent = agent();
    let reader = token(&["reader"]);
    let server = Server::start(out.path(), &[]);
    wait_until_completed(&agent, &server.base, &reader, &ids);
    assert!(server.stop().success());
    // Another restart finds nothing left to do.
    let server = Server::start(out.path(), &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(server.stop().success());
    let completions: Vec<String> = read_lines(&out.path().join("audit.jsonl"))
        .iter()
        .filter(|e| e["action"] == "job_completed")
        .map(|e| e["job_id"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted_ids = ids.clone();
    sorted_ids.sort();
    let mut completed = completions.clone();
    completed.sort();
    assert_eq!(completed, sorted_ids, "each job completed exactly once");
    let documents = common::documents_per_id(out.path());
    assert_eq!(documents.len(), ids.len());
    assert!(documents.values().all(|&n| n == 1), "{documents:?}");
}

/// The backlog of a service whose dataflow never ran: `recordings` accepted
/// for tenant clinic-a into `out` (as `mmt serve` accepts uploads); their ids.
fn accept_backlog(out: &Path, recordings: Vec<(String, Vec<u8>)>) -> Vec<String> {
    use mmt_core::control::{JobControl, Submission, SubmittedAudio};
    let settings = mmt_pipeline::Config::from_vars(Vec::<(String, String)>::new()).unwrap();
    let paths = mmt_pipeline::run::OutputPaths::resolve(&settings, out);
    let metrics = mmt_core::telemetry::Metrics::new().unwrap();
    let (_resources, control) = mmt_pipeline::serve::open(
        &settings,
        &paths,
        &out.join("uploads"),
        1,
        mmt_pipeline::serve::IntakeChoice::Embedded,
        &metrics,
    )
    .unwrap();
    recordings
        .into_iter()
        .map(|(name, audio)| {
            let submitted = control
                .submit(Submission {
                    tenant: "clinic-a".into(),
                    audio: SubmittedAudio::Bytes(audio),
                    format: Some("wav".into()),
                    source: name,
                    ..Submission::default()
                })
                .unwrap();
            assert!(submitted.created);
            submitted.job_id.0
        })
        .collect()
}

/// About `seconds` of speech: the shipped samples one after another, again
/// and again, with half a second of silence between them.
fn long_recording(seconds: usize) -> Vec<u8> {
    let samples: Vec<Vec<i16>> = common::read_manifest(&root().join("samples"))
        .iter()
        .map(|e| common::wav_samples(&root().join("samples").join(&e.audio)))
        .collect();
    let mut pcm = Vec::with_capacity(seconds * 16_000);
    for sample in samples.iter().cycle() {
        if pcm.len() >= seconds * 16_000 {
            break;
        }
        pcm.extend_from_slice(sample);
        pcm.extend(std::iter::repeat_n(0i16, 8_000));
    }
    common::wav_bytes(&pcm)
}

/// A rollout in the middle of a long job, again and again: SIGTERM, then
/// SIGKILL as the grace period ends (here: as soon as the server has handed
/// the take back, which the driver does when it sees the stop, before its
/// drain). A stop on request is not a crash: the job is neither dead-lettered
/// as a poison job nor taken as a suspect, and the next start completes it on
/// its first counted take.
#[test]
fn rollouts_in_the_middle_of_a_long_job_do_not_count_against_it() {
    if !model_ready() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    // Ten minutes of speech: many batches, so the job is still in flight when
    // the driver, between two steps, sees the stop.
    let ids = accept_backlog(
        out.path(),
        vec![("long.wav".to_owned(), long_recording(600))],
    );
    let agent = agent();
    let reader = token(&["reader"]);
    let max_takes = 2;
    let env = [
        ("INTERNAL_JWT_SECRET", SECRET),
        ("MAX_REPROCESS_ATTEMPTS", "2"),
        ("RUST_LOG", "info"),
    ];
    for _ in 0..=max_takes {
        let server = common::serve::Server::start(out.path(), &[], &env);
        let job_url = format!("{}/v1/jobs/{}", server.base, ids[0]);
        wait_for_job(&agent, &job_url, &reader, |status| status == "processing");
        server.terminate();
        assert!(
            server.wait_for_log(
                "handed back the takes of the jobs in flight",
                Duration::from_secs(120)
            ),
            "the stop hands the take back"
        );
        drop(server);
    }
    let server = common::serve::Server::start(out.path(), &[], &env);
    // Completed, on a take counted once (`attempts` 1), not dead-lettered.
    wait_until_completed(&agent, &server.base, &reader, &ids);
    let (status, _) = server.stop();
    assert!(status.success());
}
