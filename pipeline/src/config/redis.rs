//! Redis, and the RedisBloom idempotency filter kept in it.

use std::time::Duration;

use serde::Serialize;

use super::external::External;
use super::net::HostPort;
use super::vars::{Echo, Vars};
use super::{Environment, Problem};

const EXTERNAL_REDIS_ENABLED: &str = "EXTERNAL_REDIS_ENABLED";
const EXTERNAL_REDIS_HOST: &str = "EXTERNAL_REDIS_HOST";
const ENABLE_REDIS_BLOOM_IDEMPOTENCY: &str = "ENABLE_REDIS_BLOOM_IDEMPOTENCY";
const REDIS_BLOOM_KEY_PREFIX: &str = "REDIS_BLOOM_KEY_PREFIX";
const REDIS_BLOOM_TTL_SECONDS: &str = "REDIS_BLOOM_TTL_SECONDS";

/// Redis, and the RedisBloom idempotency filter kept in it.
#[derive(Debug, Clone, Serialize)]
pub struct RedisConfig {
    /// `EXTERNAL_REDIS_ENABLED`: use an external Redis (shared across pods).
    /// Default `false`.
    pub enabled: bool,
    /// `EXTERNAL_REDIS_HOST`: `host[:port]` of Redis (port default 6379). Required
    /// when enabled.
    pub host: Option<HostPort>,
    /// `ENABLE_REDIS_BLOOM_IDEMPOTENCY`: pre-check idempotency keys against a
    /// RedisBloom filter before the job store (needs the RedisBloom module, checked
    /// by the health check, not here). Default `false`.
    pub bloom_idempotency: bool,
    /// `REDIS_BLOOM_KEY_PREFIX`: prefix of the filter's keys. Default `mmt:idem`.
    pub bloom_key_prefix: String,
    /// `REDIS_BLOOM_TTL_SECONDS`: how long a filter generation lives, in whole seconds.
    /// Default 86400 (one day).
    #[serde(serialize_with = "super::serialize_seconds")]
    pub bloom_ttl: Duration,
}

impl RedisConfig {
    /// The Redis port used when `EXTERNAL_REDIS_HOST` names none.
    pub const DEFAULT_PORT: u16 = 6379;
    /// The default key prefix.
    pub const DEFAULT_BLOOM_KEY_PREFIX: &'static str = "mmt:idem";
    /// The default filter lifetime.
    pub const DEFAULT_BLOOM_TTL: Duration = Duration::from_secs(86_400);

    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        Self {
            enabled: vars.bool(EXTERNAL_REDIS_ENABLED, false),
            host: vars.parse(EXTERNAL_REDIS_HOST, HostPort::EXPECTED, Echo::Never, |s| {
                HostPort::parse(s, Self::DEFAULT_PORT)
            }),
            bloom_idempotency: vars.bool(ENABLE_REDIS_BLOOM_IDEMPOTENCY, false),
            bloom_key_prefix: vars
                .parse(
                    REDIS_BLOOM_KEY_PREFIX,
                    "a key prefix without spaces, e.g. mmt:idem",
                    Echo::Value,
                    |s| (!s.chars().any(char::is_whitespace)).then(|| s.to_owned()),
                )
                .unwrap_or_else(|| Self::DEFAULT_BLOOM_KEY_PREFIX.to_owned()),
            bloom_ttl: vars.whole_seconds(REDIS_BLOOM_TTL_SECONDS, Self::DEFAULT_BLOOM_TTL),
        }
    }

    pub(super) fn validate(&self, env: Environment, out: &mut Vec<Problem>) {
        External {
            service: "Redis",
            enabled_var: EXTERNAL_REDIS_ENABLED,
            host_var: EXTERNAL_REDIS_HOST,
            enabled: self.enabled,
            host: self.host.as_ref(),
        }
        .validate(env, out);
        if self.bloom_idempotency && !self.enabled {
            out.push(Problem::fatal(
                ENABLE_REDIS_BLOOM_IDEMPOTENCY,
                "is true but EXTERNAL_REDIS_ENABLED is not: the filter lives in Redis",
            ));
        }
        if self.bloom_ttl.is_zero() {
            out.push(Problem::fatal(
                REDIS_BLOOM_TTL_SECONDS,
                "must be at least 1 (a zero TTL forgets every key at once)",
            ));
        }
    }
}
