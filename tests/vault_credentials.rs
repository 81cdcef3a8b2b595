//! Database credentials from Vault: `DATABASE_URL` names the real PostgreSQL
//! without a user, and a KV v2 secret in Vault (`MMT_VAULT_DATABASE_SECRET_PATH`)
//! holds the user name and password that `mmt` puts into it at start.
//!
//! Vault here is the in-test double of `common/fake_vault.rs` (no Vault or
//! OpenBao server can be installed on these machines).

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/fake_vault.rs"]
mod fake_vault;

use std::process::{Command, Output, Stdio};

use common::postgres::{psql, unique, Schema, POSTGRES};
use common::{require_service, root};
use fake_vault::FakeVault;
use serde_json::json;

const ROLE_ID: &str = "mmt-role-db";
const SECRET_ID: &str = "mmt-secret-db";
/// PostgreSQL trusts local connections: any password is accepted, so this
/// one exercises the URL's escaping (`%41` must not become `A`, `@` must not
/// end the user part) and must never be printed.
const PASSWORD: &str = "pw-CANARY-%41@/x";

/// `mmt retention purge --dry-run` on the schema's store, the user from Vault
/// when `secret_path` is given.
fn purge(
    vault: &FakeVault,
    schema: &Schema,
    out: &std::path::Path,
    secret_path: Option<&str>,
) -> Output {
    let url = format!(
        "postgres://{POSTGRES}/test?options[search_path]={}",
        schema.0
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_mmt"));
    command
        .args(["retention", "purge", "--dry-run", "--out"])
        .arg(out)
        .current_dir(root())
        .env("RUST_LOG", "info")
        .env("DATABASE_URL", url)
        .env("VAULT_ADDR", &vault.address)
        .env("MMT_VAULT_ROLE_ID", ROLE_ID)
        .env("MMT_VAULT_SECRET_ID", SECRET_ID)
        // The user the connection would default to is not PostgreSQL's.
        .env("USER", "mmt-nobody")
        .env("PGUSER", "mmt-nobody")
        .env_remove("ENV")
        .env_remove("AUDIT_LOG_FILE")
        .env_remove("MMT_ENCRYPTION_KEYS")
        .env_remove("MMT_VAULT_TRANSIT_KEY")
        .env_remove("MMT_VAULT_RABBITMQ_SECRET_PATH")
        .env_remove("MMT_VAULT_DATABASE_SECRET_PATH")
        .stdin(Stdio::null());
    if let Some(path) = secret_path {
        command.env("MMT_VAULT_DATABASE_SECRET_PATH", path);
    }
    command.output().unwrap()
}

#[test]
fn database_credentials_come_from_vault_and_are_never_printed() {
    if !require_service("PostgreSQL", POSTGRES) {
        return;
    }
    let vault = FakeVault::start(ROLE_ID, SECRET_ID);
    vault.put(
        "secret",
        "mmt/database",
        json!({"username": "postgres", "password": PASSWORD}),
    );
    let schema = Schema::create(&unique("mmt_vault_db"));
    let dir = tempfile::tempdir().unwrap();

    // Without the secret, the URL has no user: PostgreSQL refuses.
    let refused = purge(&vault, &schema, dir.path(), None);
    assert!(!refused.status.success(), "connected without a user");

    let output = purge(&vault, &schema, dir.path(), Some("mmt/database"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("would purge 0 jobs"), "{stdout}");
    // The store was made in the schema, as the user from Vault.
    assert_eq!(
        psql(&format!(
            "SELECT tableowner FROM pg_tables WHERE schemaname = '{}' AND tablename = 'jobs'",
            schema.0
        )),
        "postgres"
    );
    vault.with(|s| assert_eq!((s.logins, s.reads), (1, 1)));
    for text in [&stdout, &stderr] {
        assert!(!text.contains("CANARY"), "the password was printed: {text}");
    }

    // A secret without a password is refused, naming the path, not a value.
    vault.put("secret", "mmt/database", json!({"username": "postgres"}));
    let output = purge(&vault, &schema, dir.path(), Some("mmt/database"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("mmt/database") && stderr.contains("password"),
        "{stderr}"
    );
}
