//! The session and the key source against the in-test Vault
//! (`tests/common/fake_vault.rs`: no Vault server can be installed here).

use std::time::Duration;

use mmt_core::telemetry::Metrics;
use serde_json::json;

use super::client::TokenStep;
use super::fake_vault::FakeVault;
use super::*;

const ROLE: &str = "role-1234";
const SECRET: &str = "secret-5678";

fn config(vault: &FakeVault) -> VaultConfig {
    let mut config = VaultConfig::new(
        vault.address.clone(),
        Credential::Value(ROLE.into()),
        Credential::Value(SECRET.into()),
    );
    config.timeout_seconds = 5;
    config
}

fn vault_with_keys() -> FakeVault {
    let vault = FakeVault::start(ROLE, SECRET);
    vault.put("secret", "mmt/jwt", json!({"rs256/k1": "PEM 1"}));
    vault
}

#[tokio::test]
async fn a_session_logs_in_once_and_reads_the_secret() {
    let vault = vault_with_keys();
    let mut cfg = config(&vault);
    cfg.namespace = Some("admin/clinic".into());
    let mut session = VaultSession::new(cfg, Metrics::new().unwrap()).unwrap();
    for _ in 0..3 {
        let data = session.read_secret().await.unwrap();
        assert_eq!(data["rs256/k1"], "PEM 1");
    }
    vault.with(|s| {
        assert_eq!((s.logins, s.reads, s.renewals), (1, 3, 0));
        assert_eq!(s.last_namespace.as_deref(), Some("admin/clinic"));
    });
}

#[tokio::test]
async fn a_token_near_its_end_is_renewed_and_counted() {
    let vault = vault_with_keys();
    let metrics = Metrics::new().unwrap();
    let mut session = VaultSession::new(config(&vault), metrics.clone()).unwrap();
    session.read_secret().await.unwrap();
    // Two thirds of the hour spent (the fake's token is still valid).
    session.age_lease(Duration::from_secs(2500));
    let lease = session.lease().unwrap();
    assert_eq!(
        lease.step(std::time::Instant::now(), Duration::from_secs(60)),
        TokenStep::Renew
    );
    session.read_secret().await.unwrap();
    vault.with(|s| assert_eq!((s.logins, s.renewals), (1, 1)));
    assert_eq!(metrics.vault_token_renew_success_total.get(), 1);
    assert_eq!(metrics.vault_token_renew_failure_total.get(), 0);
    // Renewed: a full lease again.
    let renewed = session.lease().unwrap();
    assert!(renewed.step(std::time::Instant::now(), Duration::from_secs(60)) == TokenStep::Keep);
}

#[tokio::test]
async fn a_failed_renewal_is_counted_and_followed_by_a_new_login() {
    let vault = vault_with_keys();
    let metrics = Metrics::new().unwrap();
    let mut session = VaultSession::new(config(&vault), metrics.clone()).unwrap();
    session.read_secret().await.unwrap();
    vault.with(|s| s.fail_renewals = true);
    session.age_lease(Duration::from_secs(3000));
    let data = session.read_secret().await.unwrap();
    assert_eq!(data["rs256/k1"], "PEM 1");
    vault.with(|s| assert_eq!((s.logins, s.renewals), (2, 0)));
    assert_eq!(metrics.vault_token_renew_failure_total.get(), 1);
    assert_eq!(metrics.vault_token_renew_success_total.get(), 0);
}

#[tokio::test]
async fn a_renewal_capped_by_the_max_ttl_leads_to_a_new_login() {
    let vault = vault_with_keys();
    vault.with(|s| s.max_renew_ttl = Duration::from_secs(30));
    let metrics = Metrics::new().unwrap();
    let mut session = VaultSession::new(config(&vault), metrics.clone()).unwrap();
    session.read_secret().await.unwrap();
    session.age_lease(Duration::from_secs(3000));
    session.read_secret().await.unwrap();
    // The renewal worked but granted 30 s, less than a refresh period.
    vault.with(|s| assert_eq!((s.logins, s.renewals), (2, 1)));
    assert_eq!(metrics.vault_token_renew_success_total.get(), 1);
}

#[tokio::test]
async fn a_revoked_token_is_replaced_by_a_new_login() {
    let vault = vault_with_keys();
    let mut session = VaultSession::new(config(&vault), Metrics::new().unwrap()).unwrap();
    session.read_secret().await.unwrap();
    vault.revoke_all_tokens();
    session.read_secret().await.unwrap();
    vault.with(|s| assert_eq!(s.logins, 2));
}

#[tokio::test]
async fn credentials_are_read_from_files_at_each_login() {
    let vault = vault_with_keys();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret-id");
    std::fs::write(&secret_file, "wrong\n").unwrap();
    let mut cfg = config(&vault);
    cfg.secret_id = Credential::File(secret_file.clone());
    let mut session = VaultSession::new(cfg, Metrics::new().unwrap()).unwrap();
    let refused = session.read_secret().await.unwrap_err();
    assert!(
        matches!(refused, VaultError::Status { code: 400, .. }),
        "{refused}"
    );
    assert!(!refused.class().is_retryable());
    assert!(!refused.to_string().contains("wrong"));
    // The agent writes the right secret id: the next login uses it.
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    session.read_secret().await.unwrap();
}

#[tokio::test]
async fn the_key_source_follows_the_secret_and_counts_failures() {
    let vault = vault_with_keys();
    let metrics = Metrics::new().unwrap();
    let mut source = VaultKeySource::new(config(&vault), metrics.clone()).unwrap();
    let keys = source.fetch().await.unwrap();
    assert_eq!(keys.rs256_pem.keys().collect::<Vec<_>>(), ["k1"]);
    vault.put(
        "secret",
        "mmt/jwt",
        json!({"rs256/k2": "PEM 2", "INTERNAL_JWT_SECRET": "hs-secret"}),
    );
    let keys = source.fetch().await.unwrap();
    assert_eq!(keys.rs256_pem.keys().collect::<Vec<_>>(), ["k2"]);
    assert_eq!(keys.hs256_secret.as_deref(), Some("hs-secret"));
    // An emptied secret is refused, not applied.
    vault.put("secret", "mmt/jwt", json!({}));
    assert!(matches!(
        source.fetch().await,
        Err(VaultError::Malformed { .. })
    ));
    assert_eq!(metrics.vault_refresh_failures_total.get(), 1);
    vault.stop();
    let down = source.fetch().await.unwrap_err();
    assert!(matches!(down, VaultError::Unreachable { .. }), "{down}");
    assert_eq!(metrics.vault_refresh_failures_total.get(), 2);
}

#[tokio::test]
async fn a_missing_secret_is_a_404_that_is_not_retried() {
    let vault = FakeVault::start(ROLE, SECRET);
    let metrics = Metrics::new().unwrap();
    let mut source = VaultKeySource::new(config(&vault), metrics.clone()).unwrap();
    let missing = source.fetch().await.unwrap_err();
    assert!(
        matches!(missing, VaultError::Status { code: 404, .. }),
        "{missing}"
    );
    vault.with(|s| assert_eq!(s.reads, 1, "a 404 is not retried"));
    assert_eq!(metrics.vault_refresh_failures_total.get(), 1);
}
