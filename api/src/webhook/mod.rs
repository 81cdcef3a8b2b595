//! Completion webhooks: when a job with a `callback_url` finishes, its outcome
//! is POSTed there, signed, and retried with exponential backoff until the
//! receiver answers 2xx or the attempts run out.
//!
//! The body names the job and its status, never the transcript or the FHIR
//! references: the receiver fetches the transcript with its own token. The
//! signature is `MMT-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">`, so a receiver can check both origin and freshness.
//!
//! The due list lives in the job store, so deliveries survive restarts and
//! any API replica can make them.

use std::sync::Arc;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use mmt_core::control::{DueCallback, JobControl};
use mmt_core::job::{unix_now, JobStatus};
use mmt_core::retry::RetryPolicy;
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::watch;

use crate::views::JobView;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "MMT-Signature";

/// How completion callbacks are delivered.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The HMAC key (`MMT_WEBHOOK_SECRET`).
    pub secret: String,
    /// Deliveries tried before giving up.
    pub max_attempts: u32,
    /// Wait before the second attempt (with jitter); doubled for each later one.
    pub base_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// How often the due list is checked.
    pub poll_interval: Duration,
    /// Longest one delivery may take.
    pub timeout: Duration,
}

impl WebhookConfig {
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            secret: secret.into(),
            max_attempts: 8,
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }

    /// The wait after `attempts` failed deliveries, or `None` to give up.
    pub fn retry_delay(&self, attempts: u32) -> Option<Duration> {
        self.retry_policy()?.delay(attempts)
    }

    /// The one retry policy (`mmt_core::retry`) with this config's numbers;
    /// `None` when no attempt at all is allowed.
    fn retry_policy(&self) -> Option<RetryPolicy> {
        RetryPolicy::new(self.base_backoff, self.max_backoff.max(self.base_backoff))
            .and_then(|policy| policy.with_max_attempts(self.max_attempts))
            .ok()
    }
}

/// What the receiver gets.
#[derive(Debug, Serialize)]
pub struct CallbackBody {
    /// `job.completed` or `job.dead_lettered`.
    pub event: &'static str,
    pub job: JobView,
}

/// The signature header's value for `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Delivers due callbacks until `stop` turns true.
pub async fn run(
    control: Arc<dyn JobControl>,
    config: WebhookConfig,
    mut stop: watch::Receiver<bool>,
) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(config.timeout))
            // A redirect could carry the signed body somewhere unintended.
            .max_redirects(0)
            .user_agent(concat!("mmt-webhook/", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    loop {
        let control = Arc::clone(&control);
        let config_now = config.clone();
        let agent_now = agent.clone();
        let round = tokio::task::spawn_blocking(move || {
            deliver_due(control.as_ref(), &agent_now, &config_now)
        });
        if let Ok(Err(reason)) = round.await {
            tracing::warn!(%reason, "could not read the due webhooks");
        }
        tokio::select! {
            _ = tokio::time::sleep(config.poll_interval) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// One round: every due callback is tried once.
fn deliver_due(
    control: &dyn JobControl,
    agent: &ureq::Agent,
    config: &WebhookConfig,
) -> Result<(), String> {
    let due = control.due_callbacks(32).map_err(|e| e.to_string())?;
    for callback in due {
        let outcome = deliver(agent, config, &callback);
        let attempts = callback.attempts + 1;
        let retry_at = match &outcome {
            Ok(()) => None,
            Err(_) => config
                .retry_delay(attempts)
                .map(|wait| unix_now() + wait.as_secs() as i64),
        };
        if let Err(reason) = &outcome {
            // The URL may carry a token: only the job id and the reason are logged.
            tracing::warn!(job = %callback.job.id, attempts, %reason, giving_up = retry_at.is_none(), "webhook delivery failed");
        }
        if let Err(err) = control.callback_outcome(&callback.job.id, outcome, retry_at) {
            tracing::warn!(job = %callback.job.id, error = %err, "could not record a webhook outcome");
        }
    }
    Ok(())
}

fn deliver(
    agent: &ureq::Agent,
    config: &WebhookConfig,
    callback: &DueCallback,
) -> Result<(), String> {
    let event = match callback.job.status {
        JobStatus::Completed => "job.completed",
        _ => "job.dead_lettered",
    };
    let mut job = JobView::from(&callback.job);
    job.patient_reference = None;
    job.encounter_reference = None;
    let body = serde_json::to_vec(&CallbackBody { event, job }).map_err(|e| e.to_string())?;
    let signature = sign(&config.secret, unix_now(), &body);
    let response = agent
        .post(&callback.url)
        .header("Content-Type", "application/json")
        .header(SIGNATURE_HEADER, &signature)
        .header("MMT-Event", event)
        .send(&body[..])
        .map_err(|err| match err {
            ureq::Error::Timeout(_) => "timed out".to_owned(),
            ureq::Error::HostNotFound => "host not found".to_owned(),
            ureq::Error::ConnectionFailed => "connection failed".to_owned(),
            ureq::Error::Io(io) => format!("I/O error: {}", io.kind()),
            _ => "transport error".to_owned(),
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {}", status.as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_then_gives_up() {
        let config = WebhookConfig {
            max_attempts: 4,
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(30),
            ..WebhookConfig::new("k")
        };
        let secs = |attempts| config.retry_delay(attempts).map(|d| d.as_secs_f64());
        for _ in 0..50 {
            assert!(secs(1).is_some_and(|s| (5.0..10.0).contains(&s)));
            assert!(secs(2).is_some_and(|s| (10.0..20.0).contains(&s)));
            assert!(secs(3).is_some_and(|s| (15.0..30.0).contains(&s)), "capped");
        }
        assert_eq!(config.retry_delay(4), None);
        let none = WebhookConfig {
            max_attempts: 0,
            ..config
        };
        assert_eq!(none.retry_delay(1), None);
    }

    #[test]
    fn the_signature_is_an_hmac_of_time_and_body() {
        // Checked against an independent implementation:
        // python3 -c "import hmac,hashlib;print(hmac.new(b'secret',b'1700000000.{}',hashlib.sha256).hexdigest())"
        assert_eq!(
            sign("secret", 1_700_000_000, b"{}"),
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }
}
