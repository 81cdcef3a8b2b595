//! Typed configuration of the Redis idempotency filter.

use std::fmt;
use std::time::Duration;

use redis::{Client, ClientTlsConfig, IntoConnectionInfo, TlsCertificates};
use serde::{Deserialize, Serialize};

use super::filter::{Backend, BitmapLayout, RedisIdempotencyFilter};
use crate::config::{into_result, redact_url, validated, ConfigProblem};
use crate::error::Result;
use crate::tls::{TlsClientFiles, Transport};

/// Which filter implementation to use in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// RedisBloom when the module answers `BF.EXISTS`, otherwise the bitmap.
    #[default]
    Auto,
    /// RedisBloom only: connecting fails when the module is not loaded.
    RedisBloom,
    /// A Bloom filter in plain Redis strings (`SETBIT`/`GETBIT`), needing no module.
    Bitmap,
}

/// The Redis idempotency filter (`ENABLE_REDIS_BLOOM_IDEMPOTENCY`).
///
/// Keys are remembered in time-windowed generations: generation
/// `g = unix_seconds / ttl_seconds` lives in its own key; a check looks at the
/// current and the previous generation, an insert writes the current one, and
/// every key expires `2 × ttl_seconds` after its last write. A key is therefore
/// remembered for at least `ttl_seconds` and at most about `2 × ttl_seconds`.
/// Forgetting is harmless: the job store stays the exact record.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFilterConfig {
    /// `EXTERNAL_REDIS_HOST`: `host:port`, or a URL
    /// `redis://[user][:password@]host[:port][/db]`, `rediss://` for TLS (see
    /// `tls`). A password is never printed.
    #[serde(serialize_with = "crate::config::serialize_redacted_url")]
    pub url: String,
    /// For a `rediss://` URL: the CA Redis's certificate must chain to
    /// (default: the system's trust store), and an optional client certificate.
    /// Redis's host name is always verified (`#insecure` is refused). Refused
    /// with `redis://`.
    #[serde(default, skip_serializing_if = "TlsClientFiles::is_empty")]
    pub tls: TlsClientFiles,
    /// `REDIS_BLOOM_KEY_PREFIX`: prefix of every key the filter writes; no
    /// whitespace. Default `mmt:idem`.
    #[serde(default = "RedisFilterConfig::default_key_prefix")]
    pub key_prefix: String,
    /// `REDIS_BLOOM_TTL_SECONDS`: the length of one generation, in seconds (see
    /// above). At least 1. Default 86400 (one day).
    #[serde(default = "RedisFilterConfig::default_ttl_seconds")]
    pub ttl_seconds: u64,
    /// How many job ids one generation is sized for. Past it the RedisBloom filter
    /// grows (keeping its error rate) while the bitmap's false-positive rate rises.
    /// Default 1,000,000.
    #[serde(default = "RedisFilterConfig::default_expected_items")]
    pub expected_items: u64,
    /// The wanted false-positive rate at `expected_items`, between 0 and 0.5
    /// (exclusive). A false positive only costs a job-store lookup. Default 0.001.
    #[serde(default = "RedisFilterConfig::default_false_positive_rate")]
    pub false_positive_rate: f64,
    /// `auto` (RedisBloom when loaded, otherwise the bitmap), `redisbloom`, or
    /// `bitmap`. Default `auto`.
    #[serde(default)]
    pub backend: BackendChoice,
    /// How long connecting may take, in milliseconds, before the filter is
    /// bypassed. Default 500.
    #[serde(default = "RedisFilterConfig::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long one command (or pipeline) may take, in milliseconds, before it
    /// fails and the connection is dropped. Default 500.
    #[serde(default = "RedisFilterConfig::default_command_timeout_ms")]
    pub command_timeout_ms: u64,
    /// After a connection failure, how long to wait before reconnecting, in
    /// milliseconds; calls in between fail at once without touching the network.
    /// Doubles on every failed reconnect up to `max_reconnect_backoff_ms`.
    /// Default 1000.
    #[serde(default = "RedisFilterConfig::default_reconnect_backoff_ms")]
    pub reconnect_backoff_ms: u64,
    /// The longest wait between reconnects, in milliseconds. Default 30000.
    #[serde(default = "RedisFilterConfig::default_max_reconnect_backoff_ms")]
    pub max_reconnect_backoff_ms: u64,
}

impl RedisFilterConfig {
    /// The largest bitmap Redis can hold: a string is at most 512 MiB.
    pub const MAX_BITMAP_BITS: u64 = 1 << 32;

    /// A config for `url` (a URL or `host:port`) with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls: TlsClientFiles::default(),
            key_prefix: Self::default_key_prefix(),
            ttl_seconds: Self::default_ttl_seconds(),
            expected_items: Self::default_expected_items(),
            false_positive_rate: Self::default_false_positive_rate(),
            backend: BackendChoice::default(),
            connect_timeout_ms: Self::default_connect_timeout_ms(),
            command_timeout_ms: Self::default_command_timeout_ms(),
            reconnect_backoff_ms: Self::default_reconnect_backoff_ms(),
            max_reconnect_backoff_ms: Self::default_max_reconnect_backoff_ms(),
        }
    }

    fn default_key_prefix() -> String {
        "mmt:idem".to_owned()
    }

    fn default_ttl_seconds() -> u64 {
        86_400
    }

    fn default_expected_items() -> u64 {
        1_000_000
    }

    fn default_false_positive_rate() -> f64 {
        0.001
    }

    fn default_connect_timeout_ms() -> u64 {
        500
    }

    fn default_command_timeout_ms() -> u64 {
        500
    }

    fn default_reconnect_backoff_ms() -> u64 {
        1_000
    }

    fn default_max_reconnect_backoff_ms() -> u64 {
        30_000
    }

    /// Sets the key prefix.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets the generation length.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl_seconds = ttl.as_secs();
        self
    }

    /// Sets the sizing: items per generation and the false-positive rate there.
    pub fn sized_for(mut self, expected_items: u64, false_positive_rate: f64) -> Self {
        self.expected_items = expected_items;
        self.false_positive_rate = false_positive_rate;
        self
    }

    /// Sets the backend.
    pub fn backend(mut self, backend: BackendChoice) -> Self {
        self.backend = backend;
        self
    }

    /// Sets the connect and command timeouts.
    pub fn timeouts(mut self, connect: Duration, command: Duration) -> Self {
        self.connect_timeout_ms = millis(connect);
        self.command_timeout_ms = millis(command);
        self
    }

    /// Sets the first and the longest wait between reconnects.
    pub fn reconnect_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.reconnect_backoff_ms = millis(first);
        self.max_reconnect_backoff_ms = millis(max);
        self
    }

    /// Uses TLS with `files` (the URL must be `rediss://`).
    pub fn with_tls(mut self, files: TlsClientFiles) -> Self {
        self.tls = files;
        self
    }

    /// How the link to Redis is protected.
    pub fn transport(&self) -> Transport {
        match self.url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("rediss") => {
                if rest.contains('#') {
                    Transport::UnverifiedTls
                } else {
                    Transport::VerifiedTls
                }
            }
            _ => Transport::Plaintext,
        }
    }

    /// A client for `url`, with the TLS files read now for `rediss://`.
    pub(crate) fn client(&self) -> Result<Client> {
        let url = self.normalized_url();
        if self.transport() == Transport::Plaintext {
            return Ok(Client::open(url)?);
        }
        let certificates = TlsCertificates {
            client_tls: self.tls.read_identity()?.map(|identity| ClientTlsConfig {
                client_cert: identity.cert_pem,
                client_key: identity.key_pem,
            }),
            root_cert: self.tls.read_ca()?,
        };
        Ok(Client::build_with_tls(url, certificates)?)
    }

    /// `url` as a URL: `host:port` becomes `redis://host:port`.
    pub fn normalized_url(&self) -> String {
        if self.url.contains("://") {
            self.url.clone()
        } else {
            format!("redis://{}", self.url)
        }
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The bitmap backend's size and number of hash functions for this sizing.
    pub fn bitmap_layout(&self) -> BitmapLayout {
        BitmapLayout::for_capacity(self.expected_items, self.false_positive_rate)
    }

    /// Checks the config without touching the network.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        if self.url.trim().is_empty() {
            problems.push(ConfigProblem::new(
                "url",
                "must name Redis, e.g. redis-master:6379 or redis://redis-master:6379/0",
            ));
        } else if let Err(error) = self.normalized_url().as_str().into_connection_info() {
            problems.push(ConfigProblem::new(
                "url",
                format!(
                    "is not a Redis address (host:port or redis://host:port/db): {}",
                    error.detail().unwrap_or(error.category())
                ),
            ));
        }
        self.tls.validate(
            ["tls.ca_file", "tls.cert_file", "tls.key_file"],
            &mut problems,
        );
        match self.transport() {
            Transport::UnverifiedTls => problems.push(ConfigProblem::new(
                "url",
                "#insecure (no host-name check) is refused: give Redis a certificate \
                 naming its host, and its CA in tls.ca_file",
            )),
            Transport::Plaintext if !self.tls.is_empty() => problems.push(ConfigProblem::new(
                "tls",
                "is set but the url is not rediss://: the files would be ignored and the \
                 link left in plaintext",
            )),
            _ => {}
        }
        if self.key_prefix.is_empty() || self.key_prefix.chars().any(char::is_whitespace) {
            problems.push(ConfigProblem::new(
                "key_prefix",
                "must be non-empty without whitespace, e.g. mmt:idem",
            ));
        }
        if self.ttl_seconds == 0 {
            problems.push(ConfigProblem::new(
                "ttl_seconds",
                "must be at least 1 (a zero TTL forgets every key at once)",
            ));
        }
        if self.expected_items == 0 {
            problems.push(ConfigProblem::new("expected_items", "must be at least 1"));
        }
        let rate_ok = self.false_positive_rate > 0.0 && self.false_positive_rate < 0.5;
        if !rate_ok {
            problems.push(ConfigProblem::new(
                "false_positive_rate",
                "must be above 0 and below 0.5, e.g. 0.001",
            ));
        }
        if rate_ok
            && self.expected_items > 0
            && self.backend != BackendChoice::RedisBloom
            && self.bitmap_layout().bits > Self::MAX_BITMAP_BITS
        {
            problems.push(ConfigProblem::new(
                "expected_items",
                "with this false_positive_rate needs a bitmap larger than a Redis string \
                 (512 MiB): lower expected_items or raise false_positive_rate",
            ));
        }
        if self.connect_timeout_ms == 0 {
            problems.push(ConfigProblem::new("connect_timeout_ms", "must be above 0"));
        }
        if self.command_timeout_ms == 0 {
            problems.push(ConfigProblem::new(
                "command_timeout_ms",
                "must be above 0 (0 would let a hung Redis stall the dataflow)",
            ));
        }
        if self.reconnect_backoff_ms == 0 {
            problems.push(ConfigProblem::new(
                "reconnect_backoff_ms",
                "must be above 0, or a dead Redis is redialled on every job",
            ));
        }
        if self.max_reconnect_backoff_ms < self.reconnect_backoff_ms {
            problems.push(ConfigProblem::new(
                "max_reconnect_backoff_ms",
                "must be at least reconnect_backoff_ms",
            ));
        }
        into_result(problems)
    }

    /// Validates, connects, and picks the backend (see [`BackendChoice`]).
    pub fn build(&self) -> Result<RedisIdempotencyFilter> {
        validated("Redis idempotency filter", self.validate())?;
        RedisIdempotencyFilter::connect(self)
    }

    /// Validates, and returns a filter that connects on first use (see
    /// [`RedisIdempotencyFilter::connect_lazily`]): for a process that must start
    /// while Redis is down.
    pub fn build_lazy(&self) -> Result<RedisIdempotencyFilter> {
        validated("Redis idempotency filter", self.validate())?;
        RedisIdempotencyFilter::connect_lazily(self)
    }

    /// Connects once, pings, and reports the backend the filter would use.
    /// Touches the network; writes nothing.
    pub fn health_check(&self) -> Result<Backend> {
        validated("Redis idempotency filter", self.validate())?;
        RedisIdempotencyFilter::probe(self)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }
}

impl fmt::Debug for RedisFilterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisFilterConfig")
            .field("url", &self.redacted_url())
            .field("tls", &self.tls)
            .field("key_prefix", &self.key_prefix)
            .field("ttl_seconds", &self.ttl_seconds)
            .field("expected_items", &self.expected_items)
            .field("false_positive_rate", &self.false_positive_rate)
            .field("backend", &self.backend)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("command_timeout_ms", &self.command_timeout_ms)
            .field("reconnect_backoff_ms", &self.reconnect_backoff_ms)
            .field("max_reconnect_backoff_ms", &self.max_reconnect_backoff_ms)
            .finish()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_host_port_is_accepted() {
        let config = RedisFilterConfig::new("127.0.0.1:6379");
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.normalized_url(), "redis://127.0.0.1:6379");
        let config = RedisFilterConfig::new("redis://redis-master:6380/2");
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.normalized_url(), "redis://redis-master:6380/2");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let config = RedisFilterConfig {
            url: String::new(),
            tls: TlsClientFiles::default(),
            key_prefix: "has space".into(),
            ttl_seconds: 0,
            expected_items: 0,
            false_positive_rate: 0.5,
            backend: BackendChoice::Auto,
            connect_timeout_ms: 0,
            command_timeout_ms: 0,
            reconnect_backoff_ms: 0,
            max_reconnect_backoff_ms: 0,
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
                "url",
                "key_prefix",
                "ttl_seconds",
                "expected_items",
                "false_positive_rate",
                "connect_timeout_ms",
                "command_timeout_ms",
                "reconnect_backoff_ms",
            ]
        );
        let error = config.build().expect_err("refused before connecting");
        assert!(error.to_string().contains("Redis idempotency filter"));
    }

    #[test]
    fn bad_urls_and_oversized_bitmaps_are_refused() {
        let problems = RedisFilterConfig::new("http://x:1")
            .validate()
            .expect_err("bad scheme");
        assert_eq!(problems[0].field, "url");
        // TLS always verifies the host name.
        assert_eq!(RedisFilterConfig::new("rediss://x:6380").validate(), Ok(()));
        let problems = RedisFilterConfig::new("rediss://x:6380/#insecure")
            .validate()
            .expect_err("no host-name check");
        assert_eq!(problems[0].field, "url");
        let problems = RedisFilterConfig::new("redis://x:6379")
            .with_tls(TlsClientFiles::with_ca("/etc/mmt/ca.pem"))
            .validate()
            .expect_err("files without rediss");
        assert_eq!(problems[0].field, "tls");
        let huge = RedisFilterConfig::new("x:6379").sized_for(10_000_000_000, 1e-9);
        let problems = huge.validate().expect_err("too large");
        assert_eq!(problems[0].field, "expected_items");
        // RedisBloom scales by itself: no bitmap limit applies.
        assert_eq!(huge.backend(BackendChoice::RedisBloom).validate(), Ok(()));
        let backoff = RedisFilterConfig::new("x:6379")
            .reconnect_backoff(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(
            backoff.validate().expect_err("max below first")[0].field,
            "max_reconnect_backoff_ms"
        );
    }

    #[test]
    fn unknown_fields_are_refused_and_defaults_apply() {
        let parsed: RedisFilterConfig =
            serde_json::from_str(r#"{"url": "redis:6379"}"#).expect("valid");
        assert_eq!(parsed, RedisFilterConfig::new("redis:6379"));
        let parsed: RedisFilterConfig = serde_json::from_str(
            r#"{"url": "redis:6379", "backend": "bitmap", "ttl_seconds": 60}"#,
        )
        .expect("valid");
        assert_eq!(parsed.backend, BackendChoice::Bitmap);
        assert_eq!(parsed.ttl_seconds, 60);
        let parsed: Result<RedisFilterConfig, _> =
            serde_json::from_str(r#"{"url": "redis:6379", "capacity": 3}"#);
        assert!(parsed.is_err());
    }

    #[test]
    fn passwords_are_never_printed() {
        let config = RedisFilterConfig::new("redis://mmt:s3cret@redis:6379/0");
        assert_eq!(config.redacted_url(), "redis://mmt:***@redis:6379/0");
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(!serde_json::to_string(&config)
            .expect("json")
            .contains("s3cret"));
        assert_eq!(redact_url("redis://:s3cret@redis"), "redis://:***@redis");
        assert_eq!(redact_url("redis:6379"), "redis:6379");
    }
}
