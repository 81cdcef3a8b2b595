//! Redis, and the RedisBloom idempotency filter kept in it.

use std::path::Path;
use std::time::Duration;

use mmt_connectors::tls::{TlsClientFiles, Transport};
use serde::Serialize;

use super::external::External;
use super::net::HostPort;
use super::tls::{PhiLink, TlsFileVars};
use super::vars::{Echo, Vars};
use super::{Environment, Problem};

const EXTERNAL_REDIS_ENABLED: &str = "EXTERNAL_REDIS_ENABLED";
const EXTERNAL_REDIS_HOST: &str = "EXTERNAL_REDIS_HOST";
const ENABLE_REDIS_BLOOM_IDEMPOTENCY: &str = "ENABLE_REDIS_BLOOM_IDEMPOTENCY";
const REDIS_BLOOM_KEY_PREFIX: &str = "REDIS_BLOOM_KEY_PREFIX";
const REDIS_BLOOM_TTL_SECONDS: &str = "REDIS_BLOOM_TTL_SECONDS";
const MMT_REDIS_TLS: &str = "MMT_REDIS_TLS";
const TLS_FILES: TlsFileVars = TlsFileVars {
    ca: "MMT_REDIS_TLS_CA_FILE",
    cert: "MMT_REDIS_TLS_CERT_FILE",
    key: "MMT_REDIS_TLS_KEY_FILE",
};

/// The variables this section reads beyond DESIGN.md's.
pub(super) const VARIABLES: &[&str] = &[MMT_REDIS_TLS, TLS_FILES.ca, TLS_FILES.cert, TLS_FILES.key];

/// Redis, and the RedisBloom idempotency filter kept in it.
#[derive(Debug, Clone, Serialize)]
pub struct RedisConfig {
    /// `EXTERNAL_REDIS_ENABLED`: use an external Redis (shared across pods).
    /// Default `false`.
    pub enabled: bool,
    /// `EXTERNAL_REDIS_HOST`: `host[:port]` of Redis (port default 6379). Required
    /// when enabled.
    pub host: Option<HostPort>,
    /// `MMT_REDIS_TLS`: connect with TLS (`rediss`), verifying Redis's
    /// certificate and host name. Default `false`; required in `prod` for a
    /// Redis on another machine.
    pub tls: bool,
    /// `MMT_REDIS_TLS_CA_FILE` (the CA Redis's certificate must chain to;
    /// default: the system's trust store), `MMT_REDIS_TLS_CERT_FILE` and
    /// `MMT_REDIS_TLS_KEY_FILE` (a client certificate, for `tls-auth-clients
    /// yes`). PEM files; only with `MMT_REDIS_TLS`.
    pub tls_files: TlsClientFiles,
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
            tls: vars.bool(MMT_REDIS_TLS, false),
            tls_files: TLS_FILES.read(vars),
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
        TLS_FILES.validate(&self.tls_files, self.tls, "set MMT_REDIS_TLS=true", out);
        PhiLink {
            variable: MMT_REDIS_TLS,
            service: "Redis (EXTERNAL_REDIS_HOST)",
            carries: "idempotency keys derived from tenants and recordings",
            transport: if self.tls {
                Transport::VerifiedTls
            } else {
                Transport::Plaintext
            },
            local: !self.enabled || self.host.as_ref().is_none_or(HostPort::is_local),
            fix: "set MMT_REDIS_TLS=true (rediss) and MMT_REDIS_TLS_CA_FILE",
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

    /// The address the idempotency filter connects to: `redis://host:port`, or
    /// `rediss://host:port` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        match &self.host {
            Some(host) if host.host.contains(':') => {
                format!("{scheme}://[{}]:{}", host.host, host.port)
            }
            Some(host) => format!("{scheme}://{}:{}", host.host, host.port),
            None => format!("{scheme}://127.0.0.1:{}", Self::DEFAULT_PORT),
        }
    }

    /// The TLS files the client reads when TLS is on.
    pub(super) fn tls_file_paths(&self) -> Vec<(&'static str, &Path)> {
        TLS_FILES.set(&self.tls_files)
    }
}
