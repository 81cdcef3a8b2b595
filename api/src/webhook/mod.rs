//! Completion webhooks: when a job with a `callback_url` finishes, its outcome
//! is POSTed there, signed, and retried with backoff and jitter (the one
//! retry policy, `mmt_core::retry`) until the receiver answers 2xx or the
//! attempts run out.
//!
//! The body names the job and its status, never the transcript or the FHIR
//! references: the receiver fetches the transcript with its own token. The
//! signature is `MMT-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">`, so a receiver can check both origin and freshness.
//!
//! The due list lives in the job store, so deliveries survive restarts and
//! any API replica can make them.
//!
//! Deliveries are fair between tenants: each tenant has at most
//! [`WebhookConfig::per_tenant_in_flight`] deliveries in flight, all tenants
//! together at most [`WebhookConfig::max_in_flight`], and the store pages due
//! callbacks per tenant, so a tenant whose receiver is down (or never
//! answers) holds only its own slots while every other tenant's callbacks go
//! out. Where a callback may go is [`target`]'s decision.

pub mod target;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use mmt_core::control::{ControlError, DueCallback, JobControl};
use mmt_core::job::{unix_now, JobId, JobStatus};
use mmt_core::retry::RetryPolicy;
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::views::JobView;
use target::{GuardedResolver, TargetPolicy, TargetRefused};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "MMT-Signature";

/// Due callbacks read from the store per round: with the per-tenant bound,
/// room for this many over `per_tenant_in_flight` tenants at once.
const DUE_PAGE: u32 = 64;

/// How completion callbacks are delivered.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The HMAC key (`MMT_WEBHOOK_SECRET`).
    pub secret: String,
    /// Which addresses callbacks may reach (`MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS`).
    pub targets: TargetPolicy,
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
    /// Deliveries of one tenant in flight at once.
    pub per_tenant_in_flight: u32,
    /// Deliveries in flight at once, all tenants together.
    pub max_in_flight: u32,
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct WebhookConfigProblem {
    pub setting: &'static str,
    pub message: &'static str,
}

impl WebhookConfig {
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            secret: secret.into(),
            targets: TargetPolicy::default(),
            max_attempts: 8,
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            per_tenant_in_flight: 2,
            max_in_flight: 16,
        }
    }

    /// Every problem at once; no I/O. (The secret's length is a rule of the
    /// environment's configuration, `MMT_WEBHOOK_SECRET`.)
    pub fn validate(&self) -> Result<(), Vec<WebhookConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem =
            |setting, message| problems.push(WebhookConfigProblem { setting, message });
        if self.secret.is_empty() {
            problem("secret", "must not be empty");
        }
        if self.timeout.is_zero() || self.poll_interval.is_zero() {
            problem("timeout/poll_interval", "must be above 0");
        }
        if self.per_tenant_in_flight == 0 || self.max_in_flight < self.per_tenant_in_flight {
            problem(
                "per_tenant_in_flight/max_in_flight",
                "need 1 <= per_tenant_in_flight <= max_in_flight",
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
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

/// Where due callbacks come from and their outcomes go: the job store,
/// through job control.
pub trait CallbackStore: Send + Sync {
    /// Due callbacks, at most `limit`, at most `per_tenant` of each tenant.
    fn due(&self, limit: u32, per_tenant: u32) -> Result<Vec<DueCallback>, ControlError>;

    /// Records a delivery attempt (see [`JobControl::callback_outcome`]).
    fn record(
        &self,
        id: &JobId,
        outcome: Result<(), String>,
        retry_at: Option<i64>,
    ) -> Result<(), ControlError>;
}

impl<T: JobControl + ?Sized> CallbackStore for T {
    fn due(&self, limit: u32, per_tenant: u32) -> Result<Vec<DueCallback>, ControlError> {
        self.due_callbacks(limit, per_tenant)
    }

    fn record(
        &self,
        id: &JobId,
        outcome: Result<(), String>,
        retry_at: Option<i64>,
    ) -> Result<(), ControlError> {
        self.callback_outcome(id, outcome, retry_at)
    }
}

/// The HTTP client of deliveries: no redirects (a redirect could carry the
/// signed body somewhere unintended), no proxy (the guard must judge the
/// receiver's own address), and the guarded resolver.
fn agent(config: &WebhookConfig) -> ureq::Agent {
    let settings = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(config.timeout))
        .max_redirects(0)
        .proxy(None)
        .user_agent(concat!("mmt-webhook/", env!("CARGO_PKG_VERSION")))
        .build();
    ureq::Agent::with_parts(
        settings,
        ureq::unversioned::transport::DefaultConnector::new(),
        GuardedResolver::new(config.targets),
    )
}

/// The deliveries in flight, by task, and how many each tenant has.
#[derive(Debug, Default)]
struct InFlight {
    tasks: HashMap<tokio::task::Id, (String, JobId)>,
    per_tenant: HashMap<String, u32>,
    jobs: HashSet<JobId>,
}

impl InFlight {
    fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether `callback` may start now: not already in flight, its tenant
    /// under its share, and room overall.
    fn admits(&self, callback: &DueCallback, config: &WebhookConfig) -> bool {
        let tenant_count = self
            .per_tenant
            .get(&callback.job.tenant)
            .copied()
            .unwrap_or(0);
        !self.jobs.contains(&callback.job.id)
            && tenant_count < config.per_tenant_in_flight
            && self.len() < config.max_in_flight as usize
    }

    fn start(&mut self, task: tokio::task::Id, callback: &DueCallback) {
        *self
            .per_tenant
            .entry(callback.job.tenant.clone())
            .or_default() += 1;
        self.jobs.insert(callback.job.id.clone());
        self.tasks
            .insert(task, (callback.job.tenant.clone(), callback.job.id.clone()));
    }

    fn finish(&mut self, task: tokio::task::Id) {
        let Some((tenant, job)) = self.tasks.remove(&task) else {
            return;
        };
        self.jobs.remove(&job);
        if let Some(count) = self.per_tenant.get_mut(&tenant) {
            *count -= 1;
            if *count == 0 {
                self.per_tenant.remove(&tenant);
            }
        }
    }
}

/// Delivers due callbacks until `stop` turns true: each on a blocking thread
/// of its own, within the per-tenant and overall bounds. Deliveries in flight
/// at the stop finish on their own (each is bounded by the timeout).
pub async fn run(
    store: Arc<dyn CallbackStore>,
    config: WebhookConfig,
    mut stop: watch::Receiver<bool>,
) {
    let agent = agent(&config);
    let mut in_flight = InFlight::default();
    let mut deliveries: JoinSet<()> = JoinSet::new();
    loop {
        if *stop.borrow() {
            return;
        }
        if in_flight.len() < config.max_in_flight as usize {
            start_due(&store, &agent, &config, &mut in_flight, &mut deliveries).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(config.poll_interval) => {}
            Some(finished) = deliveries.join_next_with_id() => finish(&mut in_flight, finished),
            _ = stop.changed() => return,
        }
        while let Some(finished) = deliveries.try_join_next_with_id() {
            finish(&mut in_flight, finished);
        }
    }
}

fn finish(
    in_flight: &mut InFlight,
    finished: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) {
    let task = match finished {
        Ok((task, ())) => task,
        Err(err) => {
            tracing::warn!(error = %err, "a webhook delivery task failed");
            err.id()
        }
    };
    in_flight.finish(task);
}

/// Reads the due list and starts every callback the bounds admit.
async fn start_due(
    store: &Arc<dyn CallbackStore>,
    agent: &ureq::Agent,
    config: &WebhookConfig,
    in_flight: &mut InFlight,
    deliveries: &mut JoinSet<()>,
) {
    let reader = Arc::clone(store);
    let per_tenant = config.per_tenant_in_flight;
    let due = tokio::task::spawn_blocking(move || reader.due(DUE_PAGE, per_tenant)).await;
    let due = match due {
        Ok(Ok(due)) => due,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "could not read the due webhooks");
            return;
        }
        Err(err) => {
            tracing::warn!(error = %err, "reading the due webhooks failed");
            return;
        }
    };
    for callback in due {
        if !in_flight.admits(&callback, config) {
            continue;
        }
        let store = Arc::clone(store);
        let agent = agent.clone();
        let config_now = config.clone();
        let started = callback.clone();
        let task = deliveries.spawn_blocking(move || {
            deliver_and_record(store.as_ref(), &agent, &config_now, &callback);
        });
        in_flight.start(task.id(), &started);
    }
}

/// One attempt at one callback, and its outcome recorded.
fn deliver_and_record(
    store: &dyn CallbackStore,
    agent: &ureq::Agent,
    config: &WebhookConfig,
    callback: &DueCallback,
) {
    let outcome = deliver(agent, config, callback);
    let attempts = callback.attempts + 1;
    let retry_at = match &outcome {
        Ok(()) | Err(Failure::Refused(_)) => None,
        Err(_) => config
            .retry_delay(attempts)
            .map(|wait| unix_now() + wait.as_secs() as i64),
    };
    let outcome = outcome.map_err(|failure| failure.to_string());
    if let Err(reason) = &outcome {
        // The URL may carry a token: only the job id and the reason are logged.
        tracing::warn!(job = %callback.job.id, tenant = %callback.job.tenant, attempts, %reason, giving_up = retry_at.is_none(), "webhook delivery failed");
    }
    if let Err(err) = store.record(&callback.job.id, outcome, retry_at) {
        tracing::warn!(job = %callback.job.id, error = %err, "could not record a webhook outcome");
    }
}

/// Why a delivery failed (PHI-free, URL-free).
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The target's addresses are all refused: given up at once, since
    /// retrying cannot change the rule.
    #[error("{0}")]
    Refused(TargetRefused),
    #[error("{0}")]
    Transport(String),
    #[error("the receiver answered {0}")]
    Status(u16),
}

fn deliver(
    agent: &ureq::Agent,
    config: &WebhookConfig,
    callback: &DueCallback,
) -> Result<(), Failure> {
    let event = match callback.job.status {
        JobStatus::Completed => "job.completed",
        _ => "job.dead_lettered",
    };
    let mut job = JobView::from(&callback.job);
    job.patient_reference = None;
    job.encounter_reference = None;
    let body = serde_json::to_vec(&CallbackBody { event, job })
        .map_err(|e| Failure::Transport(e.to_string()))?;
    let signature = sign(&config.secret, unix_now(), &body);
    let response = agent
        .post(&callback.url)
        .header("Content-Type", "application/json")
        .header(SIGNATURE_HEADER, &signature)
        .header("MMT-Event", event)
        .send(&body[..])
        .map_err(transport_failure)?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(Failure::Status(status.as_u16()))
    }
}

/// A transport error as a reason that names no URL.
fn transport_failure(err: ureq::Error) -> Failure {
    match err {
        ureq::Error::Io(io) => {
            match io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<TargetRefused>())
            {
                Some(refused) => Failure::Refused(*refused),
                None => Failure::Transport(format!("I/O error: {}", io.kind())),
            }
        }
        ureq::Error::Timeout(_) => Failure::Transport("timed out".to_owned()),
        ureq::Error::HostNotFound => Failure::Transport("host not found".to_owned()),
        ureq::Error::ConnectionFailed => Failure::Transport("connection failed".to_owned()),
        _ => Failure::Transport("transport error".to_owned()),
    }
}

#[cfg(test)]
mod tests;
