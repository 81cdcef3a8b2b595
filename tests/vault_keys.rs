//! `mmt serve` with its token keys in Vault: a key added in Vault is accepted
//! and a removed one refused without a restart, and with Vault down the
//! service keeps the last good keys and counts the failed refreshes.
//!
//! Vault here is the in-test double of `common/fake_vault.rs` (no Vault or
//! OpenBao server can be installed on these machines): it speaks exactly the
//! AppRole login, token renewal and KV v2 read endpoints MMT uses.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/fake_vault.rs"]
mod fake_vault;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{model_ready, root};
use fake_vault::FakeVault;
use mmt_api::auth::{sign_rs256, Claims};
use serde_json::json;

const ROLE_ID: &str = "mmt-role-7f3a";
const SECRET_ID: &str = "mmt-secret-id-91c2";

/// A running `mmt serve`, killed when dropped.
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
            .env("RUST_LOG", "warn")
            .env_remove("INTERNAL_JWT_SECRET")
            .env_remove("MMT_JWT_PUBLIC_KEYS_DIR")
            .env_remove("DATABASE_URL")
            .env_remove("AUDIT_LOG_FILE")
            .env_remove("VAULT_TOKEN")
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
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An RSA key pair from the openssl command line: (private PEM, public PEM).
fn rsa_pair(dir: &Path, name: &str) -> (Vec<u8>, String) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pem"));
    let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
    for args in [
        vec![
            "genrsa".into(),
            "-out".into(),
            path(&private),
            "2048".into(),
        ],
        vec![
            "rsa".into(),
            "-in".into(),
            path(&private),
            "-pubout".into(),
            "-out".into(),
            path(&public),
        ],
    ] {
        let status = Command::new("openssl")
            .args(&args)
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success());
    }
    (
        std::fs::read(private).unwrap(),
        std::fs::read_to_string(public).unwrap(),
    )
}

fn token(private: &[u8], kid: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = Claims {
        sub: "svc-vault-test".into(),
        tenant: "clinic-vault".into(),
        roles: vec!["reader".into()],
        exp: now + 600,
        iat: Some(now),
        nbf: None,
        aud: None,
    };
    sign_rs256(private, kid, &claims).unwrap()
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    )
}

/// The status of an authenticated `GET /v1/jobs`.
fn status_with(agent: &ureq::Agent, base: &str, token: &str) -> u16 {
    agent
        .get(&format!("{base}/v1/jobs"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap()
        .status()
        .as_u16()
}

/// Waits (up to 20 s) until `check` holds; the refresh period is 1 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(20), "never: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metric(agent: &ureq::Agent, base: &str, name: &str) -> f64 {
    let text = agent
        .get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in /metrics"))
}

#[test]
fn keys_added_and_removed_in_vault_apply_without_a_restart_and_survive_an_outage() {
    if !model_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (private_a, public_a) = rsa_pair(dir.path(), "a");
    let (private_b, public_b) = rsa_pair(dir.path(), "b");
    let secret_id_file = dir.path().join("secret-id");
    std::fs::write(&secret_id_file, format!("{SECRET_ID}\n")).unwrap();

    let vault = FakeVault::start(ROLE_ID, SECRET_ID);
    vault.put("secret", "mmt/jwt", json!({ "rs256/key-a": public_a }));
    let out = dir.path().join("out");
    let server = Server::start(
        &out,
        &[
            ("VAULT_ADDR", &vault.address),
            ("MMT_VAULT_ROLE_ID", ROLE_ID),
            ("MMT_VAULT_SECRET_ID_FILE", secret_id_file.to_str().unwrap()),
            ("MMT_VAULT_REFRESH_SECONDS", "1"),
        ],
    );
    let agent = agent();
    let base = &server.base;
    let (by_a, by_b) = (token(&private_a, "key-a"), token(&private_b, "key-b"));
    assert_eq!(status_with(&agent, base, &by_a), 200);
    assert_eq!(status_with(&agent, base, &by_b), 401);

    // A new key in Vault is accepted after the next refresh.
    vault.put(
        "secret",
        "mmt/jwt",
        json!({ "rs256/key-a": public_a, "rs256/key-b": public_b }),
    );
    eventually("key B is accepted", || {
        status_with(&agent, base, &by_b) == 200
    });
    assert_eq!(status_with(&agent, base, &by_a), 200);

    // A key removed from Vault is refused after the next refresh.
    vault.put("secret", "mmt/jwt", json!({ "rs256/key-b": public_b }));
    eventually("key A is refused", || {
        status_with(&agent, base, &by_a) == 401
    });
    assert_eq!(status_with(&agent, base, &by_b), 200);
    assert_eq!(metric(&agent, base, "vault_refresh_failures_total"), 0.0);
    vault.with(|state| assert_eq!(state.logins, 1, "one login serves every refresh"));

    // Vault goes down: the last good keys stay in use, the failures count.
    vault.stop();
    eventually("failed refreshes are counted", || {
        metric(&agent, base, "vault_refresh_failures_total") >= 2.0
    });
    assert_eq!(status_with(&agent, base, &by_b), 200);
    assert_eq!(status_with(&agent, base, &by_a), 401);
}

#[test]
fn serve_refuses_to_start_without_keys_from_vault() {
    if !model_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vault = FakeVault::start(ROLE_ID, SECRET_ID);
    // A wrong secret id: Vault refuses the login (400).
    let (status, _, stderr) = common::mmt_with_env(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--out",
            dir.path().to_str().unwrap(),
        ],
        &[
            ("VAULT_ADDR", &vault.address),
            ("MMT_VAULT_ROLE_ID", ROLE_ID),
            ("MMT_VAULT_SECRET_ID", "not-the-secret-id"),
            ("INTERNAL_JWT_SECRET", ""),
        ],
    );
    assert!(!status.success());
    assert!(stderr.contains("no token keys from Vault"), "{stderr}");
    assert!(stderr.contains("400"), "{stderr}");
    assert!(!stderr.contains("not-the-secret-id"), "{stderr}");
}
