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

mod transit {
    //! The transit key provider against the fake's transit engine (real
    //! AES-256-GCM inside the double; no Vault server installs here).

    use std::sync::Arc;

    use mmt_core::crypt::{sealed_text_key_id, CryptError, KeyProvider, Sealer};

    use super::*;

    const MOUNT: &str = "transit";
    const KEY: &str = "mmt-records";

    fn vault() -> FakeVault {
        let vault = FakeVault::start(ROLE, SECRET);
        vault.create_transit_key(MOUNT, KEY);
        vault
    }

    fn new_provider(vault: &FakeVault) -> TransitKeyProvider {
        TransitKeyProvider::connect(
            config(vault),
            TransitConfig::new(KEY),
            Metrics::new().unwrap(),
        )
        .unwrap()
    }

    fn new_sealer(vault: &FakeVault) -> (Sealer, Arc<TransitKeyProvider>) {
        let provider = Arc::new(new_provider(vault));
        (Sealer::new(provider.clone()), provider)
    }

    #[test]
    fn data_keys_are_wrapped_by_vault_and_unwraps_are_cached() {
        let vault = vault();
        let (sealer, provider) = new_sealer(&vault);
        assert_eq!(provider.current_key_id(), "transit.mmt-records.v1");
        let stored = sealer
            .seal_text("chest pain since Tuesday", b"clinic\0job-1")
            .unwrap();
        assert!(!stored.contains("chest"));
        assert_eq!(
            sealed_text_key_id(&stored).unwrap().as_deref(),
            Some("transit.mmt-records.v1")
        );
        assert_eq!(vault.transit_calls("encrypt"), 1);
        // Read back by this process: the data key is cached, Vault is not asked.
        for _ in 0..3 {
            let text = sealer
                .open_text(&stored, b"clinic\0job-1")
                .unwrap()
                .into_text();
            assert_eq!(text, "chest pain since Tuesday");
        }
        assert_eq!(vault.transit_calls("decrypt"), 0);
        // Another process (a fresh provider) asks Vault once.
        let (other, _) = new_sealer(&vault);
        for _ in 0..2 {
            other.open_text(&stored, b"clinic\0job-1").unwrap();
        }
        assert_eq!(vault.transit_calls("decrypt"), 1);
        vault.with(|s| assert_eq!(s.logins, 2, "one login per provider"));
    }

    #[test]
    fn a_rotated_key_wraps_new_data_and_old_data_stays_readable() {
        let vault = vault();
        let (sealer, provider) = new_sealer(&vault);
        let old = sealer.seal_text("old note", b"ctx").unwrap();
        // Another process sees a rotation done elsewhere once a value names it.
        let (elsewhere, _) = new_sealer(&vault);
        assert_eq!(provider.rotate().unwrap(), "transit.mmt-records.v2");
        assert_eq!(vault.transit_versions(MOUNT, KEY), 2);
        let new = sealer.seal_text("new note", b"ctx").unwrap();
        assert_eq!(
            sealed_text_key_id(&new).unwrap().as_deref(),
            Some("transit.mmt-records.v2")
        );
        for sealer in [&sealer, &elsewhere] {
            assert_eq!(
                sealer.open_text(&old, b"ctx").unwrap().into_text(),
                "old note"
            );
            assert_eq!(
                sealer.open_text(&new, b"ctx").unwrap().into_text(),
                "new note"
            );
        }
        assert_eq!(elsewhere.current_key_id(), "transit.mmt-records.v2");
        let listed = provider.summary().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed[1].current && !listed[0].current);
    }

    #[test]
    fn a_retired_version_is_refused_before_and_by_vault() {
        let vault = vault();
        let (sealer, provider) = new_sealer(&vault);
        let old = sealer.seal_text("old note", b"ctx").unwrap();
        provider.rotate().unwrap();
        let (stale, _) = new_sealer(&vault);
        vault.set_min_decryption_version(MOUNT, KEY, 2);
        // A process that reads the key's versions refuses without asking Vault.
        let (fresh, _) = new_sealer(&vault);
        let decrypts = vault.transit_calls("decrypt");
        let err = fresh.open_text(&old, b"ctx").unwrap_err();
        assert!(matches!(err, CryptError::RetiredKey { .. }), "{err}");
        assert!(err.to_string().contains("min_decryption_version"), "{err}");
        assert_eq!(vault.transit_calls("decrypt"), decrypts);
        // One that read them before the retirement is refused by Vault.
        let err = stale.open_text(&old, b"ctx").unwrap_err();
        assert!(matches!(err, CryptError::RetiredKey { .. }), "{err}");
        assert_eq!(vault.transit_calls("decrypt"), decrypts + 1);
    }

    #[test]
    fn tampered_relabelled_and_unknown_wrapped_keys_are_refused() {
        let vault = vault();
        let (sealer, provider) = new_sealer(&vault);
        let data_key = mmt_core::crypt::DataKey::generate().unwrap();
        let wrapped = provider.wrap(&data_key).unwrap();
        // Another process, so that nothing comes from the cache.
        let reader = new_provider(&vault);
        assert_eq!(
            reader.unwrap(&wrapped).unwrap().as_bytes(),
            data_key.as_bytes()
        );
        // A changed byte of Vault's ciphertext: Vault's authentication fails.
        let mut altered = wrapped.clone();
        let last = altered.blob.len() - 2;
        altered.blob[last] = if altered.blob[last] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let err = new_provider(&vault).unwrap(&altered).unwrap_err();
        assert!(matches!(err, CryptError::Tampered { .. }), "{err}");
        // The header's version no longer that of the ciphertext.
        provider.rotate().unwrap();
        let relabelled = relabel(&wrapped, "transit.mmt-records.v2");
        let err = reader.unwrap(&relabelled).unwrap_err();
        assert!(matches!(err, CryptError::Tampered { .. }), "{err}");
        // Another transit key, or a version Vault does not have.
        for key_id in ["transit.other.v1", "k1765000000-3fa2"] {
            let err = reader.unwrap(&relabel(&wrapped, key_id)).unwrap_err();
            assert!(
                matches!(err, CryptError::UnknownKey { .. }),
                "{key_id}: {err}"
            );
        }
        let future = mmt_core::crypt::WrappedKey {
            key_id: "transit.mmt-records.v9".into(),
            blob: b"vault:v9:AAAA".to_vec(),
        };
        let err = reader.unwrap(&future).unwrap_err();
        assert!(matches!(err, CryptError::UnknownKey { .. }), "{err}");
        // A whole sealed value with a changed byte: refused, nothing leaks.
        let mut sealed = sealer.seal(b"hypertension", b"ctx").unwrap();
        let index = sealed.len() - 3;
        sealed[index] ^= 1;
        let err = sealer.open(&sealed, b"ctx").unwrap_err();
        assert!(matches!(err, CryptError::Tampered { .. }), "{err}");
    }

    #[test]
    fn an_outage_is_a_retryable_key_service_error_and_a_missing_key_fails_at_start() {
        let vault = vault();
        let (sealer, _) = new_sealer(&vault);
        let stored = sealer.seal_text("note", b"ctx").unwrap();
        vault.with(|s| s.transit_down = true);
        let err = sealer.seal_text("note", b"ctx").unwrap_err();
        assert!(matches!(err, CryptError::KeyService { .. }), "{err}");
        assert!(err.class().is_retryable(), "{err}");
        // Cached data keys still open what this process wrote.
        assert_eq!(
            sealer.open_text(&stored, b"ctx").unwrap().into_text(),
            "note"
        );
        vault.with(|s| s.transit_down = false);
        sealer.seal_text("note", b"ctx").unwrap();

        let missing = TransitKeyProvider::connect(
            config(&vault),
            TransitConfig::new("no-such-key"),
            Metrics::new().unwrap(),
        )
        .unwrap_err();
        assert!(
            matches!(missing, VaultError::Status { code: 404, .. }),
            "{missing}"
        );
        vault.stop();
        let err = sealer.seal_text("note", b"ctx").unwrap_err();
        assert!(err.class().is_retryable(), "{err}");
    }

    /// A wrapped key under another key id (as an edited header would be).
    fn relabel(wrapped: &mmt_core::crypt::WrappedKey, key_id: &str) -> mmt_core::crypt::WrappedKey {
        mmt_core::crypt::WrappedKey {
            key_id: key_id.into(),
            blob: wrapped.blob.clone(),
        }
    }
}
