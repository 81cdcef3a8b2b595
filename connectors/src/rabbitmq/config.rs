//! Typed configuration of the RabbitMQ source and event publisher.

use std::fmt;
use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use mmt_core::retry::RetryPolicy;
use serde::{Deserialize, Serialize};

use crate::breaker::BreakerPolicy;
use crate::config::{into_result, redact_url, ConfigProblem};
use crate::error::{ConnectorError, Result};
use crate::tls::{TlsClientFiles, Transport};

/// Where jobs are consumed from, where rejected ones go, where events are published.
///
/// Topology (declared at start unless `declare_topology` is off): the durable
/// job queue with `x-max-priority` 9 and `x-dead-letter-exchange` set; a fanout
/// dead-letter exchange with a durable queue bound to it; a durable topic
/// exchange for events (`job.completed`, `job.dead_lettered`, ...).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// `amqp://user:password@host:port/vhost` (`amqps://` for TLS, see `tls`;
    /// `%2f` is the default vhost `/`). The password is never printed.
    #[serde(serialize_with = "crate::config::serialize_redacted_url")]
    pub url: String,
    /// For an `amqps://` URL: the CA the broker's certificate must chain to
    /// (default: the system's trust store), and an optional client certificate.
    /// The broker's host name is always verified. Refused with `amqp://`.
    #[serde(default, skip_serializing_if = "TlsClientFiles::is_empty")]
    pub tls: TlsClientFiles,
    /// Durable queue the jobs are consumed from. Default `mmt.jobs`.
    #[serde(default = "defaults::queue")]
    pub queue: String,
    /// Exchange a dead-lettered job's message is rejected to. Default `mmt.jobs.dlx`.
    #[serde(default = "defaults::dead_letter_exchange")]
    pub dead_letter_exchange: String,
    /// Durable queue bound to the dead-letter exchange, where rejected messages
    /// wait for an operator or the reprocessor. Default `mmt.jobs.dead`.
    #[serde(default = "defaults::dead_letter_queue")]
    pub dead_letter_queue: String,
    /// Topic exchange job events are published to. Default `mmt.events`.
    #[serde(default = "defaults::events_exchange")]
    pub events_exchange: String,
    /// Declare the queues and exchanges at start. Turn off where the broker's
    /// topology is managed elsewhere (the declarations must then already match).
    /// Default true.
    #[serde(default = "defaults::yes")]
    pub declare_topology: bool,
    /// Unacknowledged messages the broker hands this worker at most
    /// (`basic.qos`): the source's back-pressure. Default 32.
    #[serde(default = "defaults::prefetch")]
    pub prefetch: u16,
    /// AMQP heartbeat, in seconds: a dead connection is noticed within about
    /// twice this. Default 10.
    #[serde(default = "defaults::heartbeat_seconds")]
    pub heartbeat_seconds: u16,
    /// First wait before reconnecting, in milliseconds; doubles per failed
    /// attempt. Default 500.
    #[serde(default = "defaults::reconnect_base_ms")]
    pub reconnect_base_ms: u64,
    /// Longest wait between reconnection attempts, in milliseconds. Default 30000.
    #[serde(default = "defaults::reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// How long the first connection may take before start-up fails, in
    /// milliseconds. Default 10000.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long a publish waits for the broker's confirm, and a consumer for
    /// the answer to an ack or a backlog query before it takes the session
    /// for lost and reconnects, in milliseconds. Default 5000.
    #[serde(default = "defaults::publish_timeout_ms")]
    pub publish_timeout_ms: u64,
    /// Consecutive publish failures that open the circuit breaker. Default 5.
    #[serde(default = "defaults::breaker_failure_threshold")]
    pub breaker_failure_threshold: u32,
    /// How long the breaker stays open before a trial publish, in milliseconds.
    /// Default 10000.
    #[serde(default = "defaults::breaker_cooldown_ms")]
    pub breaker_cooldown_ms: u64,
    /// Name the broker shows for this worker's connections. Default `mmt`.
    #[serde(default = "defaults::connection_name")]
    pub connection_name: String,
}

mod defaults {
    pub fn queue() -> String {
        "mmt.jobs".into()
    }
    pub fn dead_letter_exchange() -> String {
        "mmt.jobs.dlx".into()
    }
    pub fn dead_letter_queue() -> String {
        "mmt.jobs.dead".into()
    }
    pub fn events_exchange() -> String {
        "mmt.events".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn prefetch() -> u16 {
        32
    }
    pub fn heartbeat_seconds() -> u16 {
        10
    }
    pub fn reconnect_base_ms() -> u64 {
        500
    }
    pub fn reconnect_max_ms() -> u64 {
        30_000
    }
    pub fn connect_timeout_ms() -> u64 {
        10_000
    }
    pub fn publish_timeout_ms() -> u64 {
        5_000
    }
    pub fn breaker_failure_threshold() -> u32 {
        5
    }
    pub fn breaker_cooldown_ms() -> u64 {
        10_000
    }
    pub fn connection_name() -> String {
        "mmt".into()
    }
}

impl RabbitMqConfig {
    /// A config for `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls: TlsClientFiles::default(),
            queue: defaults::queue(),
            dead_letter_exchange: defaults::dead_letter_exchange(),
            dead_letter_queue: defaults::dead_letter_queue(),
            events_exchange: defaults::events_exchange(),
            declare_topology: true,
            prefetch: defaults::prefetch(),
            heartbeat_seconds: defaults::heartbeat_seconds(),
            reconnect_base_ms: defaults::reconnect_base_ms(),
            reconnect_max_ms: defaults::reconnect_max_ms(),
            connect_timeout_ms: defaults::connect_timeout_ms(),
            publish_timeout_ms: defaults::publish_timeout_ms(),
            breaker_failure_threshold: defaults::breaker_failure_threshold(),
            breaker_cooldown_ms: defaults::breaker_cooldown_ms(),
            connection_name: defaults::connection_name(),
        }
    }

    /// Uses `queue` for jobs and derives the dead-letter names from it.
    pub fn with_queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self.dead_letter_exchange = format!("{}.dlx", self.queue);
        self.dead_letter_queue = format!("{}.dead", self.queue);
        self
    }

    /// Uses TLS with `files` (the URL must be `amqps://`).
    pub fn with_tls(mut self, files: TlsClientFiles) -> Self {
        self.tls = files;
        self
    }

    /// How the link to the broker is protected: `amqps://` always verifies the
    /// broker's certificate and host name.
    pub fn transport(&self) -> Transport {
        if self.is_amqps() {
            Transport::VerifiedTls
        } else {
            Transport::Plaintext
        }
    }

    fn is_amqps(&self) -> bool {
        self.url
            .split_once("://")
            .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("amqps"))
    }

    /// Checks the config without touching the broker.
    pub fn validate(&self) -> std::result::Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let scheme = self.url.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("amqp" | "amqps")) {
            problems.push(ConfigProblem::new(
                "url",
                "must be amqp://user:password@host:port/vhost (or amqps://)",
            ));
        }
        self.tls.validate(
            ["tls.ca_file", "tls.cert_file", "tls.key_file"],
            &mut problems,
        );
        if !self.tls.is_empty() && !self.is_amqps() {
            problems.push(ConfigProblem::new(
                "tls",
                "is set but the url is not amqps://: the files would be ignored and \
                 the link left in plaintext",
            ));
        }
        for (field, name) in [
            ("queue", &self.queue),
            ("dead_letter_exchange", &self.dead_letter_exchange),
            ("dead_letter_queue", &self.dead_letter_queue),
            ("events_exchange", &self.events_exchange),
        ] {
            if name.is_empty() || name.len() > 255 {
                problems.push(ConfigProblem::new(field, "must be 1-255 bytes"));
            } else if name.starts_with("amq.") {
                problems.push(ConfigProblem::new(
                    field,
                    "must not start with amq. (reserved by the broker)",
                ));
            }
        }
        if self.queue == self.dead_letter_queue {
            problems.push(ConfigProblem::new(
                "dead_letter_queue",
                "must differ from queue, or rejected messages come straight back",
            ));
        }
        let positive = [
            ("prefetch", u64::from(self.prefetch)),
            ("heartbeat_seconds", u64::from(self.heartbeat_seconds)),
            ("reconnect_base_ms", self.reconnect_base_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("publish_timeout_ms", self.publish_timeout_ms),
            (
                "breaker_failure_threshold",
                u64::from(self.breaker_failure_threshold),
            ),
        ];
        for (field, value) in positive {
            if value == 0 {
                problems.push(ConfigProblem::new(field, "must be at least 1"));
            }
        }
        if self.reconnect_max_ms < self.reconnect_base_ms {
            problems.push(ConfigProblem::new(
                "reconnect_max_ms",
                "must be at least reconnect_base_ms",
            ));
        }
        into_result(problems)
    }

    /// The URL with the heartbeat and connection timeout added to its query.
    pub(crate) fn connection_url(&self) -> String {
        let mut url = self.url.clone();
        let mut add = |key: &str, value: String| {
            if !url.contains(&format!("{key}=")) {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str(&format!("{key}={value}"));
            }
        };
        add("heartbeat", self.heartbeat_seconds.to_string());
        add("connection_timeout", self.connect_timeout_ms.to_string());
        url
    }

    /// lapin's TLS settings: the CA and client certificate, read now (so a
    /// renewed file is used by the next connection). Empty for `amqp://`.
    pub(crate) fn tls_config(&self) -> Result<OwnedTLSConfig> {
        let cert_chain = match self.tls.read_ca()? {
            Some(pem) => Some(String::from_utf8(pem).map_err(|_| ConnectorError::Amqp {
                what: "reading the TLS CA file",
                reason: "it is not PEM text".into(),
            })?),
            None => None,
        };
        let identity = self
            .tls
            .read_identity()?
            .map(|identity| OwnedIdentity::PKCS8 {
                pem: identity.cert_pem,
                key: identity.key_pem,
            });
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    pub(crate) fn breaker_policy(&self) -> BreakerPolicy {
        BreakerPolicy {
            failure_threshold: self.breaker_failure_threshold,
            cooldown: Duration::from_millis(self.breaker_cooldown_ms),
        }
    }

    /// The waits between reconnection attempts: the one retry policy
    /// (`mmt_core::retry`), for as long as the broker is gone.
    pub(crate) fn reconnect_policy(&self) -> RetryPolicy {
        let base = Duration::from_millis(self.reconnect_base_ms);
        let cap = Duration::from_millis(self.reconnect_max_ms).max(base);
        RetryPolicy::new(base, cap).unwrap_or_else(|_| RetryPolicy::from_base(base))
    }
}

impl fmt::Debug for RabbitMqConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqConfig")
            .field("url", &self.redacted_url())
            .field("tls", &self.tls)
            .field("queue", &self.queue)
            .field("dead_letter_exchange", &self.dead_letter_exchange)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("events_exchange", &self.events_exchange)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_names_derive_from_the_queue() {
        let config = RabbitMqConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f").with_queue("q1");
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.dead_letter_exchange, "q1.dlx");
        assert_eq!(config.dead_letter_queue, "q1.dead");
    }

    #[test]
    fn every_problem_is_reported() {
        let mut config = RabbitMqConfig::new("http://x");
        config.prefetch = 0;
        config.queue = "amq.jobs".into();
        config.reconnect_max_ms = 1;
        let problems = config.validate().unwrap_err();
        let fields: Vec<_> = problems.iter().map(|p| p.field).collect();
        assert_eq!(fields, ["url", "queue", "prefetch", "reconnect_max_ms"]);
    }

    #[test]
    fn the_password_never_prints() {
        let config = RabbitMqConfig::new("amqp://svc:hunter2@rabbit:5672/%2f");
        assert_eq!(config.redacted_url(), "amqp://svc:***@rabbit:5672/%2f");
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&config).unwrap().contains("hunter2"));
    }

    #[test]
    fn tls_files_need_amqps_and_amqps_always_verifies() {
        let files = TlsClientFiles::with_ca("/etc/mmt/rabbitmq-ca.pem");
        let plain = RabbitMqConfig::new("amqp://h/%2f").with_tls(files.clone());
        let fields: Vec<_> = plain
            .validate()
            .expect_err("files without amqps")
            .iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, ["tls"]);
        assert_eq!(plain.transport(), Transport::Plaintext);
        let tls = RabbitMqConfig::new("amqps://h/%2f").with_tls(files);
        assert_eq!(tls.validate(), Ok(()));
        assert_eq!(tls.transport(), Transport::VerifiedTls);
        let missing = RabbitMqConfig::new("amqps://h/%2f")
            .with_tls(TlsClientFiles::with_ca("/nonexistent/mmt-ca.pem"));
        let error = missing.tls_config().expect_err("unreadable CA file");
        assert!(
            error.to_string().contains("/nonexistent/mmt-ca.pem"),
            "{error}"
        );
        let none = RabbitMqConfig::new("amqps://h/%2f")
            .tls_config()
            .expect("no files");
        assert!(none.cert_chain.is_none() && none.identity.is_none());
    }

    #[test]
    fn the_connection_url_carries_heartbeat_and_timeout_once() {
        let config = RabbitMqConfig::new("amqp://h/%2f?heartbeat=3");
        assert_eq!(
            config.connection_url(),
            "amqp://h/%2f?heartbeat=3&connection_timeout=10000"
        );
        let policy = config.reconnect_policy();
        assert_eq!(
            (policy.base(), policy.cap(), policy.max_attempts()),
            (
                Duration::from_millis(500),
                Duration::from_millis(30_000),
                None
            )
        );
        let first = policy.delay(1).expect("no limit");
        assert!(first >= Duration::from_millis(500) && first < Duration::from_millis(1000));
        assert!(policy
            .delay(30)
            .is_some_and(|d| d < Duration::from_millis(30_000)));
    }
}
