//! Encryption at rest (issue 18, item 2), through the real binary: with
//! `MMT_ENCRYPTION_KEYS`, no transcript word is in the job store or the
//! upload folder on disk (`mmt run` over a folder, an upload through `mmt
//! serve`); after `mmt keys rotate` every old job still reads back through
//! the API; `mmt keys reencrypt` moves everything to the new key, after
//! which the old key can be retired and the jobs still read back. The same
//! with Vault's transit engine as the key provider (`MMT_VAULT_TRANSIT_KEY`),
//! against the in-test Vault of `common/fake_vault.rs` (no Vault or OpenBao
//! server can be installed on these machines; the double encrypts for real).

// The helpers below are test code too: a failed set-up step should panic.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/fake_vault.rs"]
mod fake_vault;

use common::{model_ready, root};
use fake_vault::FakeVault;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const JWT_SECRET: &str = "encryption-test-secret-0123456789abcdef";
const BOUNDARY: &str = "mmt-encryption-boundary";

/// `mmt <args…>` with the keyring, and nothing from the caller's environment
/// that points elsewhere.
fn mmt(args: &[&str], keyring: &Path) -> Command {
    let mut command = mmt_bare(args);
    command.env("MMT_ENCRYPTION_KEYS", keyring);
    command
}

/// `mmt <args…>` with no key provider, and nothing from the caller's
/// environment that points elsewhere.
fn mmt_bare(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mmt"));
    command
        .args(args)
        .current_dir(root())
        .env_remove("MMT_ENCRYPTION_KEYS")
        .env_remove("MMT_ENCRYPTION_PROVIDER")
        .env_remove("MMT_VAULT_TRANSIT_KEY")
        .env_remove("MMT_VAULT_TRANSIT_MOUNT")
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .env("INTERNAL_JWT_SECRET", JWT_SECRET)
        .env_remove("ENV")
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

fn run_ok(args: &[&str], keyring: &Path) -> String {
    succeeds(mmt(args, keyring))
}

/// Runs `command`; its standard output, once it exited 0.
fn succeeds(mut command: Command) -> String {
    let output: Output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Every file under `dir` whose bytes hold `needle` (case-insensitive ASCII).
fn files_holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let needle = needle.to_ascii_lowercase();
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap().to_ascii_lowercase();
                if bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
                {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// The store's files and the upload folder: what must hold no transcript word.
fn store_and_spool(out: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("mmt.db"))
        })
        .collect();
    paths.push(out.join("uploads"));
    paths
}

fn assert_no_words(out: &Path, words: &[&str]) {
    for place in store_and_spool(out) {
        for word in words {
            if place.is_dir() {
                let found = files_holding(&place, word);
                assert!(found.is_empty(), "{word:?} in clear in {found:?}");
            } else if place.exists() {
                let bytes = std::fs::read(&place).unwrap().to_ascii_lowercase();
                assert!(
                    !bytes.windows(word.len()).any(|w| w == word.as_bytes()),
                    "{word:?} in clear in {}",
                    place.display()
                );
            }
        }
    }
}

#[test]
fn keys_rotate_creates_an_owner_only_keyring_and_adds_keys() {
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keyring.json");
    let created = run_ok(&["keys", "rotate"], &keyring);
    assert!(created.contains("created keyring"), "{created}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&keyring).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let added = run_ok(&["keys", "rotate"], &keyring);
    assert!(added.contains("added key"), "{added}");
    let listed = run_ok(&["keys", "list"], &keyring);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert_eq!(listed.matches("(current)").count(), 1, "{listed}");
    // Key material is never printed.
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&keyring).unwrap()).unwrap();
    for key in file["keys"].as_array().unwrap() {
        let secret = key["key"].as_str().unwrap();
        assert!(!listed.contains(secret) && !added.contains(secret));
    }
    // `mmt check` accepts the keyring, and refuses a weak one.
    let check = mmt(&["check"], &keyring).output().unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(!stdout.contains("MMT_ENCRYPTION_KEYS"), "{stdout}");
    let weak = dir.path().join("weak.json");
    std::fs::write(
        &weak,
        format!(
            r#"{{"version":1,"keys":[{{"id":"k1","key":"{}=","state":"active","created_at":1}}]}}"#,
            "A".repeat(43)
        ),
    )
    .unwrap();
    std::fs::set_permissions(&weak, std::fs::Permissions::from_mode(0o600)).unwrap();
    let check = mmt(&["check"], &weak).env("ENV", "prod").output().unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success());
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FATAL MMT_ENCRYPTION_KEYS") && l.contains("weak")),
        "{stdout}"
    );
}

#[test]
fn an_embedded_run_keeps_no_transcript_word_in_the_store() {
    if !model_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keyring.json");
    run_ok(&["keys", "rotate"], &keyring);
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::copy(
        root().join("samples/dict_001.wav"),
        input.join("dict_001.wav"),
    )
    .unwrap();
    let out = dir.path().join("out");
    run_ok(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &keyring,
    );
    // Transcribed (one document; the transcript in the store, below)...
    let documents = std::fs::read_to_string(out.join("fhir/DocumentReference.ndjson")).unwrap();
    assert_eq!(documents.lines().count(), 1);
    // ...and no word of it in the job store.
    assert_no_words(&out, &["medication", "prescribed", "doctor", "fever"]);
    let reencrypted = run_ok(
        &["keys", "reencrypt", "--out", out.to_str().unwrap()],
        &keyring,
    );
    assert!(
        reencrypted.contains("1 examined, 0 re-encrypted"),
        "{reencrypted}"
    );
}

/// `mmt serve` on a loopback port, with the keyring.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(out: &Path, keyring: &Path) -> Self {
        let mut child = mmt(&["serve", "--listen", "127.0.0.1:0", "--out"], keyring)
            .arg(out)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (found, address) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving the job API on ").nth(1) {
                    let url = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = found.send(url);
                }
            }
        });
        let base = address
            .recv_timeout(Duration::from_secs(60))
            .expect("the server announces its address");
        Self { child, base }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the server stops"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token(keyring: &Path) -> String {
    let stdout = run_ok(
        &[
            "token",
            "--tenant",
            "clinic-a",
            "--role",
            "submitter",
            "--role",
            "reader",
        ],
        keyring,
    );
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

fn submit(agent: &ureq::Agent, base: &str, token: &str, audio: &[u8]) -> String {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"audio\"; \
         filename=\"dict.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(audio);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let mut response = agent
        .post(&format!("{base}/v1/jobs"))
        .header("Authorization", &format!("Bearer {token}"))
        .header(
            "Content-Type",
            &format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .send(&body[..])
        .unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    assert_eq!(response.status().as_u16(), 202, "{text}");
    let job: serde_json::Value = serde_json::from_str(&text).unwrap();
    job["id"].as_str().unwrap().to_owned()
}

/// Waits for the job to complete; its transcript's text, lowercased.
fn transcript_of(agent: &ureq::Agent, base: &str, token: &str, id: &str) -> String {
    let job_url = format!("{base}/v1/jobs/{id}");
    let started = Instant::now();
    loop {
        let (status, job) = get_json(agent, &job_url, token);
        assert_eq!(status, 200, "{job}");
        if job["status"] == "completed" {
            break;
        }
        assert_ne!(job["status"], "dead_lettered", "{job}");
        assert!(started.elapsed() < Duration::from_secs(180), "still {job}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let (status, transcript) = get_json(agent, &format!("{job_url}/transcript"), token);
    assert_eq!(status, 200, "{transcript}");
    transcript["text"].as_str().unwrap().to_lowercase()
}

#[test]
fn uploads_and_transcripts_are_sealed_and_survive_rotation_and_retirement() {
    if !model_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keyring.json");
    run_ok(&["keys", "rotate"], &keyring);
    let first_key = run_ok(&["keys", "list"], &keyring)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let out = dir.path().join("out");
    let token = token(&keyring);
    let agent = agent();
    let audio = std::fs::read(root().join("samples/dict_001.wav")).unwrap();

    let server = Server::start(&out, &keyring);
    let id = submit(&agent, &server.base, &token, &audio);
    let text = transcript_of(&agent, &server.base, &token, &id);
    assert!(text.contains("medication"), "{text}");
    server.stop();

    // Nothing of the transcript in the store, nothing of the audio in the
    // upload folder (a stretch of its samples, past the header).
    assert_no_words(&out, &["medication", "prescribed", "doctor", "fever"]);
    let stored_audio = std::fs::read(out.join(format!("uploads/{id}.audio"))).unwrap();
    assert!(stored_audio.starts_with(b"MMTS"), "sealed");
    let stretch = &audio[4000..4064];
    assert!(!stored_audio.windows(stretch.len()).any(|w| w == stretch));

    // Rotated: the old job reads back (sealed under the older key).
    let rotated = run_ok(&["keys", "rotate"], &keyring);
    assert!(rotated.contains("added key"), "{rotated}");
    let server = Server::start(&out, &keyring);
    assert_eq!(transcript_of(&agent, &server.base, &token, &id), text);
    server.stop();

    // Re-encrypted under the new key, the old key retired: still readable.
    let out_arg = out.to_str().unwrap();
    let reencrypted = run_ok(&["keys", "reencrypt", "--out", out_arg], &keyring);
    assert!(
        reencrypted.contains("transcripts: 1 examined, 1 re-encrypted"),
        "{reencrypted}"
    );
    assert!(
        reencrypted.contains("uploads: 1 examined, 1 re-encrypted"),
        "{reencrypted}"
    );
    run_ok(&["keys", "retire", &first_key], &keyring);
    let server = Server::start(&out, &keyring);
    assert_eq!(transcript_of(&agent, &server.base, &token, &id), text);
    server.stop();
    assert_no_words(&out, &["medication", "prescribed", "doctor", "fever"]);
}

const ROLE_ID: &str = "mmt-role-transit";
const SECRET_ID: &str = "mmt-secret-transit";
const TRANSIT_KEY: &str = "mmt-records";

/// `mmt <args…>` with Vault's transit engine as the key provider.
fn mmt_transit(args: &[&str], vault: &FakeVault) -> Command {
    let mut command = mmt_bare(args);
    command
        .env("VAULT_ADDR", &vault.address)
        .env("MMT_VAULT_ROLE_ID", ROLE_ID)
        .env("MMT_VAULT_SECRET_ID", SECRET_ID)
        .env("MMT_VAULT_TRANSIT_KEY", TRANSIT_KEY);
    command
}

/// `mmt run` over a folder holding one sample.
fn run_one(vault: &FakeVault, dir: &Path, sample: &str, out: &Path) {
    let input = dir.join(format!("in-{sample}"));
    std::fs::create_dir(&input).unwrap();
    std::fs::copy(root().join("samples").join(sample), input.join(sample)).unwrap();
    succeeds(mmt_transit(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        vault,
    ));
}

#[test]
fn vault_transit_seals_the_store_survives_rotation_and_refuses_tampering() {
    if !model_ready() {
        return;
    }
    let vault = FakeVault::start(ROLE_ID, SECRET_ID);
    vault.create_transit_key("transit", TRANSIT_KEY);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");

    // `mmt check` reads the transit key from Vault; a missing key is fatal.
    let check = mmt_transit(&["check"], &vault).output().unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{stdout}");
    assert!(!stdout.contains("MMT_VAULT_TRANSIT_KEY"), "{stdout}");
    let missing = mmt_transit(&["check"], &vault)
        .env("MMT_VAULT_TRANSIT_KEY", "no-such-key")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&missing.stdout);
    assert!(!missing.status.success(), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FATAL MMT_VAULT_TRANSIT_KEY") && l.contains("404")),
        "{stdout}"
    );

    run_one(&vault, dir.path(), "dict_001.wav", &out);
    assert_no_words(&out, &["medication", "prescribed", "doctor", "fever"]);
    assert!(vault.transit_calls("encrypt") >= 1);

    // Rotated in Vault through `mmt keys rotate`: version 2 seals new data.
    let rotated = succeeds(mmt_transit(&["keys", "rotate"], &vault));
    assert!(rotated.contains("transit.mmt-records.v2"), "{rotated}");
    assert_eq!(vault.transit_versions("transit", TRANSIT_KEY), 2);
    let listed = succeeds(mmt_transit(&["keys", "list"], &vault));
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("transit.mmt-records.v2") && l.contains("(current)")),
        "{listed}"
    );
    run_one(&vault, dir.path(), "dict_005.wav", &out);

    // Both jobs read back (the first under v1), and are moved to v2.
    let out_arg = out.to_str().unwrap();
    let reencrypted = succeeds(mmt_transit(
        &["keys", "reencrypt", "--out", out_arg],
        &vault,
    ));
    assert!(
        reencrypted.contains(
            "transcripts: 2 examined, 1 re-encrypted under transit.mmt-records.v2, 0 unreadable"
        ),
        "{reencrypted}"
    );
    // v1 retired in Vault: nothing is left under it, everything still reads.
    vault.set_min_decryption_version("transit", TRANSIT_KEY, 2);
    let again = succeeds(mmt_transit(
        &["keys", "reencrypt", "--out", out_arg],
        &vault,
    ));
    assert!(again.contains("2 examined, 0 re-encrypted"), "{again}");
    let retire = mmt_transit(&["keys", "retire", "transit.mmt-records.v1"], &vault)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&retire.stderr);
    assert!(!retire.status.success());
    assert!(stderr.contains("min_decryption_version=2"), "{stderr}");
    assert_no_words(&out, &["medication", "prescribed", "doctor", "fever"]);

    // The sealed transcripts altered on disk (one base64 letter inside each
    // copy of a sealed value in the file, same length): refused, not read.
    // A rotation first, so that `reencrypt` must open every value (values
    // already under the current key are left as they are, unopened).
    succeeds(mmt_transit(&["keys", "rotate"], &vault));
    let db = out.join("mmt.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let starts: Vec<usize> = bytes
        .windows(7)
        .enumerate()
        .filter(|(_, w)| *w == b"mmtenc:")
        .map(|(at, _)| at)
        .collect();
    assert!(!starts.is_empty(), "sealed values in the store file");
    for at in starts {
        let index = at + 7 + 300;
        bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
    }
    std::fs::write(&db, &bytes).unwrap();
    let tampered = mmt_transit(&["keys", "reencrypt", "--out", out_arg], &vault)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&tampered.stdout);
    assert!(!tampered.status.success(), "{stdout}");
    assert!(stdout.contains("2 examined, 0 re-encrypted"), "{stdout}");
    assert!(stdout.contains("2 unreadable"), "{stdout}");
}
