//! Typed configuration of the Kafka job source.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize, Serializer};

use super::source::{KafkaSource, SourceContext};
use crate::config::{into_result, validated, ConfigProblem};
use crate::envelope::EnvelopeReader;
use crate::error::{ConnectorError, Result};
use crate::tls::{TlsClientFiles, Transport};

/// How the consumer talks to the brokers (`security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// Unencrypted, unauthenticated TCP: for a broker on this machine or in
    /// development. Refused for a remote broker in production.
    #[default]
    Plaintext,
    /// TLS: the broker's certificate is verified against `tls.ca_file` (or the
    /// system's trust store) and must name the broker's host.
    Ssl,
    /// SASL authentication over unencrypted TCP: the password (PLAIN) and every
    /// message cross the network in clear. Refused for a remote broker in production.
    SaslPlaintext,
    /// SASL authentication over TLS, verified as for `ssl`.
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's spelling (`security.protocol`).
    fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether the connection is TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether the client authenticates with SASL.
    pub fn is_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// The SASL mechanisms librdkafka offers without Kerberos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// User name and password sent as they are: only over `sasl_ssl`.
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response, SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response, SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The form a problem message asks for.
    pub const EXPECTED: &'static str = "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512";

    /// librdkafka's (and Kafka's) spelling (`sasl.mechanisms`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    /// Parses Kafka's spelling, case-insensitively.
    pub fn parse(value: &str) -> Option<Self> {
        [Self::Plain, Self::ScramSha256, Self::ScramSha512]
            .into_iter()
            .find(|mechanism| mechanism.as_str().eq_ignore_ascii_case(value.trim()))
    }
}

/// SASL credentials. The password is a secret: `Debug` and `Serialize` hide it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// `sasl.mechanisms`.
    pub mechanism: SaslMechanism,
    /// `sasl.username`.
    pub username: String,
    /// `sasl.password`; never printed or serialised.
    #[serde(serialize_with = "serialize_hidden")]
    pub password: String,
}

impl fmt::Debug for KafkaSasl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

fn serialize_hidden<S: Serializer>(_secret: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("***")
}

/// The Kafka job source: one topic read by a consumer group.
///
/// Offsets are committed by MMT, never automatically, and only once every sink
/// has committed the outcome of every earlier message of the partition (see
/// [`KafkaSource`]). A consumer group without a committed offset starts at the
/// earliest message still on the topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// `bootstrap.servers`: comma-separated `host:port` of one or more brokers
    /// (e.g. `kafka-0.kafka:9092,kafka-1.kafka:9092`).
    pub bootstrap_servers: String,
    /// `MMT_KAFKA_TOPIC`: the topic job envelopes are published to
    /// (`schemas/job-envelope.schema.json`). 1–249 of `A-Z a-z 0-9 . _ -`.
    pub topic: String,
    /// `group.id`: the consumer group. Every worker of one deployment uses the
    /// same group, so the topic's partitions are shared between them and each
    /// message is processed by one worker.
    pub group_id: String,
    /// `client.id`: names this process in broker logs and metrics. Default `mmt`.
    #[serde(default = "KafkaSourceConfig::default_client_id")]
    pub client_id: String,
    /// `session.timeout.ms`: how long the group waits for a silent worker
    /// before its partitions are given to another, in milliseconds. Between
    /// 1000 and 3600000, and within the broker's
    /// `group.{min,max}.session.timeout.ms`. Default 45000.
    #[serde(default = "KafkaSourceConfig::default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// `max.poll.interval.ms`: the longest the driver may go without polling
    /// for messages before the group gives this worker's partitions to another
    /// (and its unsettled messages are redelivered there), in milliseconds. The
    /// driver must poll (with `max` at least 1) more often than this even while
    /// it holds back ingest. At least `session_timeout_ms`. Default 300000.
    #[serde(default = "KafkaSourceConfig::default_max_poll_interval_ms")]
    pub max_poll_interval_ms: u64,
    /// Most messages one poll hands to the pipeline (the ingest batch, an
    /// epoch). At least 1. Default 100.
    ///
    /// A message is at most librdkafka's `receive.message.max.bytes` (100 MB)
    /// and, before that, the broker's `message.max.bytes` (1 MiB by default):
    /// long recordings should travel by `reference`, not inline.
    #[serde(default = "KafkaSourceConfig::default_max_poll_records")]
    pub max_poll_records: usize,
    /// `MMT_AUDIO_REFERENCE_ROOT`: the folder (a shared volume) under which an
    /// envelope's `reference` audio may live. Unset: references are refused and
    /// only inline audio is accepted.
    #[serde(default)]
    pub reference_root: Option<PathBuf>,
    /// Tenant recorded for a message whose envelope cannot be read at all, so
    /// that its dead letter has an owner. Default `unknown`.
    #[serde(default = "KafkaSourceConfig::default_fallback_tenant")]
    pub fallback_tenant: String,
    /// `security.protocol`: `plaintext` (default), `ssl`, `sasl_plaintext` or
    /// `sasl_ssl` (see [`SecurityProtocol`]).
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// For `ssl` and `sasl_ssl`: `ssl.ca.location` (default: the system's trust
    /// store), and `ssl.certificate.location` with `ssl.key.location` for a
    /// client certificate. Refused with the other protocols.
    #[serde(default, skip_serializing_if = "TlsClientFiles::is_empty")]
    pub tls: TlsClientFiles,
    /// For `sasl_plaintext` and `sasl_ssl`: the mechanism and credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,
    /// How long the health check's metadata request may wait, and librdkafka's
    /// `socket.timeout.ms` (network requests, commits included), in
    /// milliseconds. Between 10 and 300000. Default 10000.
    #[serde(default = "KafkaSourceConfig::default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl KafkaSourceConfig {
    /// A config for `topic` read by `group_id` from `bootstrap_servers`, every
    /// other field at its default.
    pub fn new(
        bootstrap_servers: impl Into<String>,
        topic: impl Into<String>,
        group_id: impl Into<String>,
    ) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            topic: topic.into(),
            group_id: group_id.into(),
            client_id: Self::default_client_id(),
            session_timeout_ms: Self::default_session_timeout_ms(),
            max_poll_interval_ms: Self::default_max_poll_interval_ms(),
            max_poll_records: Self::default_max_poll_records(),
            reference_root: None,
            fallback_tenant: Self::default_fallback_tenant(),
            security_protocol: SecurityProtocol::default(),
            tls: TlsClientFiles::default(),
            sasl: None,
            request_timeout_ms: Self::default_request_timeout_ms(),
        }
    }

    fn default_client_id() -> String {
        "mmt".into()
    }

    fn default_session_timeout_ms() -> u64 {
        45_000
    }

    fn default_max_poll_interval_ms() -> u64 {
        300_000
    }

    fn default_max_poll_records() -> usize {
        100
    }

    fn default_fallback_tenant() -> String {
        "unknown".into()
    }

    fn default_request_timeout_ms() -> u64 {
        10_000
    }

    /// Sets the session timeout.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Sets the most messages one poll returns.
    pub fn max_poll_records(mut self, max: usize) -> Self {
        self.max_poll_records = max;
        self
    }

    /// Sets the folder referenced audio must lie under.
    pub fn reference_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.reference_root = Some(root.into());
        self
    }

    /// Sets the tenant of unreadable messages.
    pub fn fallback_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.fallback_tenant = tenant.into();
        self
    }

    /// Sets the client id.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// Sets the timeout of connecting, metadata requests and the final commit.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Connects over TLS (`ssl`, or `sasl_ssl` with [`Self::sasl`]) with `files`.
    pub fn tls(mut self, files: TlsClientFiles) -> Self {
        self.security_protocol = if self.security_protocol.is_sasl() {
            SecurityProtocol::SaslSsl
        } else {
            SecurityProtocol::Ssl
        };
        self.tls = files;
        self
    }

    /// Authenticates with SASL (`sasl_ssl` after [`Self::tls`], else `sasl_plaintext`).
    pub fn sasl(mut self, sasl: KafkaSasl) -> Self {
        self.security_protocol = if self.security_protocol.is_tls() {
            SecurityProtocol::SaslSsl
        } else {
            SecurityProtocol::SaslPlaintext
        };
        self.sasl = Some(sasl);
        self
    }

    /// How the link to the brokers is protected: TLS always verifies the
    /// brokers' certificates and host names.
    pub fn transport(&self) -> Transport {
        if self.security_protocol.is_tls() {
            Transport::VerifiedTls
        } else {
            Transport::Plaintext
        }
    }

    /// [`Self::request_timeout_ms`] as a duration.
    pub fn request_timeout_duration(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Checks the config without touching the network; every problem at once.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let servers: Vec<&str> = self
            .bootstrap_servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            problems.push(ConfigProblem::new(
                "bootstrap_servers",
                "must name at least one broker as host:port (e.g. kafka:9092)",
            ));
        } else if !servers.iter().all(|s| is_host_port(s)) {
            problems.push(ConfigProblem::new(
                "bootstrap_servers",
                "every entry must be host:port with a port from 1 to 65535 (e.g. kafka-0:9092,kafka-1:9092)",
            ));
        }
        if !is_topic_name(&self.topic) {
            problems.push(ConfigProblem::new(
                "topic",
                "must be 1-249 of A-Z a-z 0-9 . _ - (and not . or ..)",
            ));
        }
        if self.group_id.trim().is_empty() {
            problems.push(ConfigProblem::new(
                "group_id",
                "must not be empty: offsets are committed per consumer group",
            ));
        }
        if self.client_id.trim().is_empty() || self.client_id.len() > 255 {
            problems.push(ConfigProblem::new("client_id", "must be 1-255 characters"));
        }
        if !(1_000..=3_600_000).contains(&self.session_timeout_ms) {
            problems.push(ConfigProblem::new(
                "session_timeout_ms",
                "must be between 1000 and 3600000 (brokers usually accept 6000-1800000)",
            ));
        }
        if self.max_poll_interval_ms < self.session_timeout_ms
            || self.max_poll_interval_ms > 86_400_000
        {
            problems.push(ConfigProblem::new(
                "max_poll_interval_ms",
                "must be at least session_timeout_ms and at most 86400000",
            ));
        }
        if self.max_poll_records == 0 {
            problems.push(ConfigProblem::new("max_poll_records", "must be at least 1"));
        }
        if let Some(root) = &self.reference_root {
            if !root.is_absolute() {
                problems.push(ConfigProblem::new(
                    "reference_root",
                    "must be an absolute path (e.g. /var/lib/mmt/incoming)",
                ));
            }
        }
        if self.fallback_tenant.is_empty()
            || self.fallback_tenant.len() > 64
            || !self
                .fallback_tenant
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            problems.push(ConfigProblem::new(
                "fallback_tenant",
                "must be 1-64 of A-Z a-z 0-9 . _ -",
            ));
        }
        self.validate_security(&mut problems);
        if !(10..=300_000).contains(&self.request_timeout_ms) {
            problems.push(ConfigProblem::new(
                "request_timeout_ms",
                "must be between 10 and 300000",
            ));
        }
        into_result(problems)
    }

    /// TLS files only with a TLS protocol, SASL credentials exactly with a SASL one.
    fn validate_security(&self, problems: &mut Vec<ConfigProblem>) {
        let protocol = self.security_protocol;
        self.tls
            .validate(["tls.ca_file", "tls.cert_file", "tls.key_file"], problems);
        let files = [&self.tls.ca_file, &self.tls.cert_file, &self.tls.key_file];
        if files
            .iter()
            .any(|f| f.as_deref().is_some_and(|p| p.to_str().is_none()))
        {
            problems.push(ConfigProblem::new(
                "tls",
                "paths must be UTF-8 (librdkafka takes them as text)",
            ));
        }
        if !protocol.is_tls() && !self.tls.is_empty() {
            problems.push(ConfigProblem::new(
                "tls",
                "is set but security_protocol is not ssl or sasl_ssl: the files would be \
                 ignored and the link left in plaintext",
            ));
        }
        match (&self.sasl, protocol.is_sasl()) {
            (None, true) => problems.push(ConfigProblem::new(
                "sasl",
                "must give the mechanism, user name and password for sasl_plaintext or sasl_ssl",
            )),
            (Some(_), false) => problems.push(ConfigProblem::new(
                "sasl",
                "is set but security_protocol is not sasl_plaintext or sasl_ssl",
            )),
            (Some(sasl), true) if sasl.username.is_empty() || sasl.password.is_empty() => {
                problems.push(ConfigProblem::new(
                    "sasl",
                    "needs a non-empty user name and password",
                ));
            }
            _ => {}
        }
    }

    /// The librdkafka settings of the consumer.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap_servers.trim())
            .set("group.id", &self.group_id)
            .set("client.id", &self.client_id)
            .set("security.protocol", self.security_protocol.as_librdkafka())
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            // MMT commits, after its sinks: never librdkafka on a timer, and
            // never an offset stored merely because a message was polled.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set(
                "max.poll.interval.ms",
                self.max_poll_interval_ms.to_string(),
            )
            .set("socket.timeout.ms", self.request_timeout_ms.to_string());
        if self.security_protocol.is_tls() {
            // Both are librdkafka's defaults; set so that no default change
            // or stray property can turn verification off.
            config
                .set("enable.ssl.certificate.verification", "true")
                .set("ssl.endpoint.identification.algorithm", "https");
            let files = [
                ("ssl.ca.location", &self.tls.ca_file),
                ("ssl.certificate.location", &self.tls.cert_file),
                ("ssl.key.location", &self.tls.key_file),
            ];
            for (key, path) in files {
                if let Some(path) = path.as_deref().and_then(Path::to_str) {
                    config.set(key, path);
                }
            }
        }
        if let Some(sasl) = self
            .sasl
            .as_ref()
            .filter(|_| self.security_protocol.is_sasl())
        {
            config
                .set("sasl.mechanisms", sasl.mechanism.as_str())
                .set("sasl.username", &sasl.username)
                .set("sasl.password", &sasl.password);
        }
        config
    }

    /// Validates, creates the consumer and subscribes it to the topic. The
    /// brokers are contacted in the background: a broker that is down shows as
    /// empty polls, and in [`Self::health_check`], not as an error here.
    pub fn connect(&self) -> Result<KafkaSource> {
        validated("Kafka source", self.validate())?;
        let consumer: BaseConsumer<SourceContext> = self
            .client_config()
            .create_with_context(SourceContext::default())?;
        consumer.subscribe(&[self.topic.as_str()])?;
        let reader = EnvelopeReader::new(self.reference_root.clone(), self.fallback_tenant.clone());
        Ok(KafkaSource::new(consumer, self.clone(), reader))
    }

    /// Asks the brokers for the topic's metadata, waiting at most
    /// `request_timeout_ms`: fails when no broker answers, or the topic does not
    /// exist or has no partitions. Touches the network; `validate` does not.
    pub fn health_check(&self) -> Result<HealthReport> {
        validated("Kafka source", self.validate())?;
        let mut config = self.client_config();
        // A throwaway client: it must not join the group and cause a rebalance.
        config.remove("group.id");
        let consumer: BaseConsumer = config.create()?;
        health_of(&consumer, &self.topic, self.request_timeout_duration())
    }
}

/// What the health check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// Brokers in the cluster's metadata.
    pub brokers: usize,
    /// Partitions of the topic.
    pub partitions: usize,
}

/// The topic's metadata as seen by `consumer`.
pub(crate) fn health_of<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<HealthReport> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let unhealthy = |reason: String| ConnectorError::KafkaTopic {
        topic: topic.to_owned(),
        reason,
    };
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(unhealthy("not in the brokers' metadata".into()));
    };
    if let Some(error) = found.error() {
        let code = rdkafka::types::RDKafkaErrorCode::from(error);
        return Err(unhealthy(code.to_string()));
    }
    if found.partitions().is_empty() {
        return Err(unhealthy("has no partitions".into()));
    }
    Ok(HealthReport {
        brokers: metadata.brokers().len(),
        partitions: found.partitions().len(),
    })
}

/// `host:port`, where the host is a name, an IPv4 address or `[IPv6]`.
fn is_host_port(entry: &str) -> bool {
    let Some((host, port)) = entry.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && !host.contains(char::is_whitespace)
        && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// Kafka's rule for topic names.
fn is_topic_name(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> KafkaSourceConfig {
        KafkaSourceConfig::new("kafka-0:9092, kafka-1:9092", "mmt.jobs", "mmt-workers")
    }

    #[test]
    fn a_plain_config_is_valid() {
        assert_eq!(valid().validate(), Ok(()));
        assert_eq!(
            KafkaSourceConfig::new("[::1]:9092", "jobs", "g").validate(),
            Ok(())
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let config = KafkaSourceConfig {
            bootstrap_servers: "kafka".into(),
            topic: "jobs/topic".into(),
            group_id: " ".into(),
            client_id: String::new(),
            session_timeout_ms: 10,
            max_poll_interval_ms: 5,
            max_poll_records: 0,
            reference_root: Some("relative/dir".into()),
            fallback_tenant: "no spaces".into(),
            security_protocol: SecurityProtocol::Plaintext,
            tls: TlsClientFiles::default(),
            sasl: None,
            request_timeout_ms: 0,
        };
        let fields: Vec<_> = config
            .validate()
            .expect_err("invalid")
            .iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            [
                "bootstrap_servers",
                "topic",
                "group_id",
                "client_id",
                "session_timeout_ms",
                "max_poll_interval_ms",
                "max_poll_records",
                "reference_root",
                "fallback_tenant",
                "request_timeout_ms",
            ]
        );
        assert!(KafkaSourceConfig::new("", "t", "g").validate().is_err());
        assert!(KafkaSourceConfig::new("h:0", "t", "g").validate().is_err());
        assert!(KafkaSourceConfig::new("h:1", "..", "g").validate().is_err());
    }

    #[test]
    fn connect_refuses_an_invalid_config_without_the_network() {
        let error = KafkaSourceConfig::new("", "t", "g")
            .connect()
            .expect_err("invalid");
        assert!(error.to_string().contains("bootstrap_servers"), "{error}");
        assert_eq!(error.class(), mmt_core::error::ErrorClass::Internal);
    }

    #[test]
    fn unknown_fields_are_refused_and_defaults_apply() {
        let parsed: KafkaSourceConfig = serde_json::from_str(
            r#"{"bootstrap_servers": "k:9092", "topic": "jobs", "group_id": "g"}"#,
        )
        .expect("valid");
        assert_eq!(parsed, KafkaSourceConfig::new("k:9092", "jobs", "g"));
        assert_eq!(parsed.security_protocol, SecurityProtocol::Plaintext);
        let unknown: Result<KafkaSourceConfig, _> = serde_json::from_str(
            r#"{"bootstrap_servers": "k:9092", "topic": "jobs", "group_id": "g", "acks": 1}"#,
        );
        assert!(unknown.is_err());
        let tls: KafkaSourceConfig = serde_json::from_str(
            r#"{"bootstrap_servers": "k:9093", "topic": "jobs", "group_id": "g",
                "security_protocol": "sasl_ssl", "tls": {"ca_file": "/etc/mmt/kafka-ca.pem"},
                "sasl": {"mechanism": "SCRAM-SHA-512", "username": "mmt", "password": "pw"}}"#,
        )
        .expect("valid");
        assert_eq!(tls.validate(), Ok(()));
        assert_eq!(tls.transport(), Transport::VerifiedTls);
        let unknown: Result<KafkaSourceConfig, _> = serde_json::from_str(
            r#"{"bootstrap_servers": "k:9092", "topic": "jobs", "group_id": "g", "security_protocol": "ssl_please"}"#,
        );
        assert!(unknown.is_err(), "unknown protocols are refused");
    }

    fn sasl(mechanism: SaslMechanism) -> KafkaSasl {
        KafkaSasl {
            mechanism,
            username: "mmt".into(),
            password: "kafka-s3cret".into(),
        }
    }

    #[test]
    fn tls_and_sasl_reach_librdkafka_with_verification_on() {
        let files = TlsClientFiles::with_ca("/etc/mmt/kafka-ca.pem")
            .client_certificate("/etc/mmt/kafka.crt", "/etc/mmt/kafka.key");
        let config = valid().tls(files).sasl(sasl(SaslMechanism::ScramSha256));
        assert_eq!(config.security_protocol, SecurityProtocol::SaslSsl);
        assert_eq!(config.validate(), Ok(()));
        let client = config.client_config();
        for (key, value) in [
            ("security.protocol", "sasl_ssl"),
            ("enable.ssl.certificate.verification", "true"),
            ("ssl.endpoint.identification.algorithm", "https"),
            ("ssl.ca.location", "/etc/mmt/kafka-ca.pem"),
            ("ssl.certificate.location", "/etc/mmt/kafka.crt"),
            ("ssl.key.location", "/etc/mmt/kafka.key"),
            ("sasl.mechanisms", "SCRAM-SHA-256"),
            ("sasl.username", "mmt"),
            ("sasl.password", "kafka-s3cret"),
        ] {
            assert_eq!(client.get(key), Some(value), "{key}");
        }
        // SASL first, then TLS: the same protocol.
        let other_order = valid()
            .sasl(sasl(SaslMechanism::Plain))
            .tls(TlsClientFiles::default());
        assert_eq!(other_order.security_protocol, SecurityProtocol::SaslSsl);
        let ssl_only = valid().tls(TlsClientFiles::default()).client_config();
        assert_eq!(ssl_only.get("security.protocol"), Some("ssl"));
        assert_eq!(ssl_only.get("ssl.ca.location"), None);
        assert_eq!(ssl_only.get("sasl.password"), None);
        assert_eq!(valid().transport(), Transport::Plaintext);
        assert_eq!(
            valid().sasl(sasl(SaslMechanism::Plain)).transport(),
            Transport::Plaintext
        );
    }

    #[test]
    fn the_sasl_password_never_prints() {
        let config = valid()
            .tls(TlsClientFiles::default())
            .sasl(sasl(SaslMechanism::ScramSha512));
        assert!(!format!("{config:?}").contains("kafka-s3cret"));
        let json = serde_json::to_string(&config).expect("json");
        assert!(!json.contains("kafka-s3cret"), "{json}");
        assert!(json.contains("SCRAM-SHA-512"), "{json}");
    }

    #[test]
    fn security_settings_must_match_the_protocol() {
        let fields = |config: KafkaSourceConfig| -> Vec<&'static str> {
            config
                .validate()
                .expect_err("invalid")
                .iter()
                .map(|p| p.field)
                .collect()
        };
        let mut files_without_tls = valid();
        files_without_tls.tls = TlsClientFiles::with_ca("/etc/mmt/kafka-ca.pem");
        assert_eq!(fields(files_without_tls), ["tls"]);
        let mut sasl_without_credentials = valid();
        sasl_without_credentials.security_protocol = SecurityProtocol::SaslSsl;
        assert_eq!(fields(sasl_without_credentials), ["sasl"]);
        let mut credentials_without_sasl = valid();
        credentials_without_sasl.sasl = Some(sasl(SaslMechanism::Plain));
        assert_eq!(fields(credentials_without_sasl), ["sasl"]);
        let empty_password = valid().sasl(KafkaSasl {
            password: String::new(),
            ..sasl(SaslMechanism::Plain)
        });
        assert_eq!(fields(empty_password), ["sasl"]);
        let half_identity = valid().tls(TlsClientFiles {
            cert_file: Some("/etc/mmt/kafka.crt".into()),
            ..TlsClientFiles::default()
        });
        assert_eq!(fields(half_identity), ["tls.key_file"]);
    }

    #[test]
    fn mechanisms_parse_case_insensitively() {
        assert_eq!(SaslMechanism::parse("plain"), Some(SaslMechanism::Plain));
        assert_eq!(
            SaslMechanism::parse("scram-sha-512"),
            Some(SaslMechanism::ScramSha512)
        );
        assert_eq!(SaslMechanism::parse("GSSAPI"), None);
    }

    #[test]
    fn offsets_are_never_committed_automatically() {
        let config = valid().client_config();
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(config.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(config.get("security.protocol"), Some("plaintext"));
    }
}
