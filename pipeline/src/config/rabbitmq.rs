//! RabbitMQ: where jobs are consumed from and job events published to.

use serde::Serialize;

use super::external::External;
use super::net::HostPort;
use super::secret::Secret;
use super::vars::{Echo, Vars};
use super::{Environment, Problem};

const EXTERNAL_RABBITMQ_ENABLED: &str = "EXTERNAL_RABBITMQ_ENABLED";
const EXTERNAL_RABBITMQ_HOST: &str = "EXTERNAL_RABBITMQ_HOST";
const MMT_RABBITMQ_USER: &str = "MMT_RABBITMQ_USER";
const MMT_RABBITMQ_PASSWORD: &str = "MMT_RABBITMQ_PASSWORD";
const MMT_RABBITMQ_VHOST: &str = "MMT_RABBITMQ_VHOST";
const MMT_RABBITMQ_QUEUE: &str = "MMT_RABBITMQ_QUEUE";
const MMT_RABBITMQ_PREFETCH: &str = "MMT_RABBITMQ_PREFETCH";

/// The variables this section reads beyond DESIGN.md's.
pub(super) const VARIABLES: &[&str] = &[
    MMT_RABBITMQ_USER,
    MMT_RABBITMQ_PASSWORD,
    MMT_RABBITMQ_VHOST,
    MMT_RABBITMQ_QUEUE,
    MMT_RABBITMQ_PREFETCH,
];

/// RabbitMQ as the job source.
#[derive(Debug, Clone, Serialize)]
pub struct RabbitMqConfig {
    /// `EXTERNAL_RABBITMQ_ENABLED`: use an external broker (shared by the worker
    /// pods) at `EXTERNAL_RABBITMQ_HOST`; otherwise `mmt run --source rabbitmq`
    /// talks to a broker on this machine (127.0.0.1:5672). Default `false`.
    pub enabled: bool,
    /// `EXTERNAL_RABBITMQ_HOST`: `host[:port]` of the broker (port default 5672).
    /// Required when enabled. Credentials are not part of it.
    pub host: Option<HostPort>,
    /// `MMT_RABBITMQ_USER`: user name. Default `guest`.
    pub user: String,
    /// `MMT_RABBITMQ_PASSWORD`: password. Default `guest` (which RabbitMQ only
    /// accepts from localhost).
    pub password: Secret,
    /// `MMT_RABBITMQ_VHOST`: virtual host. Default `/`.
    pub vhost: String,
    /// `MMT_RABBITMQ_QUEUE`: the durable job queue; its dead-letter exchange and
    /// queue are `<queue>.dlx` and `<queue>.dead`. Default `mmt.jobs`.
    pub queue: String,
    /// `MMT_RABBITMQ_PREFETCH`: unacknowledged messages per worker (`basic.qos`).
    /// Default 32.
    pub prefetch: u32,
}

impl RabbitMqConfig {
    /// The AMQP port used when `EXTERNAL_RABBITMQ_HOST` names none.
    pub const DEFAULT_PORT: u16 = 5672;

    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        Self {
            enabled: vars.bool(EXTERNAL_RABBITMQ_ENABLED, false),
            host: vars.parse(
                EXTERNAL_RABBITMQ_HOST,
                HostPort::EXPECTED,
                Echo::Never,
                |s| HostPort::parse(s, Self::DEFAULT_PORT),
            ),
            user: vars
                .text(MMT_RABBITMQ_USER)
                .unwrap_or_else(|| "guest".into()),
            password: Secret::new(
                vars.text(MMT_RABBITMQ_PASSWORD)
                    .unwrap_or_else(|| "guest".into()),
            ),
            vhost: vars.text(MMT_RABBITMQ_VHOST).unwrap_or_else(|| "/".into()),
            queue: vars
                .text(MMT_RABBITMQ_QUEUE)
                .unwrap_or_else(|| "mmt.jobs".into()),
            prefetch: vars.u32(MMT_RABBITMQ_PREFETCH, 32),
        }
    }

    pub(super) fn validate(&self, env: Environment, out: &mut Vec<Problem>) {
        External {
            service: "RabbitMQ",
            enabled_var: EXTERNAL_RABBITMQ_ENABLED,
            host_var: EXTERNAL_RABBITMQ_HOST,
            enabled: self.enabled,
            host: self.host.as_ref(),
        }
        .validate(env, out);
        if !(1..=u32::from(u16::MAX)).contains(&self.prefetch) {
            out.push(Problem::fatal(MMT_RABBITMQ_PREFETCH, "must be 1 to 65535"));
        }
        if self.queue.is_empty() || self.queue.len() > 240 || self.queue.starts_with("amq.") {
            out.push(Problem::fatal(
                MMT_RABBITMQ_QUEUE,
                "must be 1-240 bytes and not start with amq.",
            ));
        }
        if env.is_prod() && self.enabled && self.password.expose() == "guest" {
            out.push(Problem::warning(
                MMT_RABBITMQ_PASSWORD,
                "is the default guest password in prod",
            ));
        }
    }

    /// The broker's AMQP URL (holds the password: pass it only to the client).
    pub fn url(&self) -> String {
        let (host, port) = match (&self.host, self.enabled) {
            (Some(host), true) => (host.host.clone(), host.port),
            _ => ("127.0.0.1".to_owned(), Self::DEFAULT_PORT),
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        format!(
            "amqp://{}:{}@{host}:{port}/{}",
            percent_encode(&self.user),
            percent_encode(self.password.expose()),
            percent_encode(&self.vhost)
        )
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
