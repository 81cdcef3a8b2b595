//! RabbitMQ: where jobs are consumed from and job events published to.

use std::path::Path;

use mmt_connectors::tls::{TlsClientFiles, Transport};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;

use super::external::External;
use super::net::HostPort;
use super::secret::Secret;
use super::tls::{PhiLink, TlsFileVars};
use super::vars::{Echo, Vars};
use super::{Environment, Problem};

/// Everything but RFC 3986's unreserved characters is escaped in a URL component.
pub(super) const URL_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

const EXTERNAL_RABBITMQ_ENABLED: &str = "EXTERNAL_RABBITMQ_ENABLED";
const EXTERNAL_RABBITMQ_HOST: &str = "EXTERNAL_RABBITMQ_HOST";
const MMT_RABBITMQ_USER: &str = "MMT_RABBITMQ_USER";
const MMT_RABBITMQ_PASSWORD: &str = "MMT_RABBITMQ_PASSWORD";
const MMT_RABBITMQ_VHOST: &str = "MMT_RABBITMQ_VHOST";
const MMT_RABBITMQ_QUEUE: &str = "MMT_RABBITMQ_QUEUE";
const MMT_RABBITMQ_PREFETCH: &str = "MMT_RABBITMQ_PREFETCH";
const MMT_RABBITMQ_TLS: &str = "MMT_RABBITMQ_TLS";
const TLS_FILES: TlsFileVars = TlsFileVars {
    ca: "MMT_RABBITMQ_TLS_CA_FILE",
    cert: "MMT_RABBITMQ_TLS_CERT_FILE",
    key: "MMT_RABBITMQ_TLS_KEY_FILE",
};

/// The variables this section reads beyond DESIGN.md's.
pub(super) const VARIABLES: &[&str] = &[
    MMT_RABBITMQ_USER,
    MMT_RABBITMQ_PASSWORD,
    MMT_RABBITMQ_VHOST,
    MMT_RABBITMQ_QUEUE,
    MMT_RABBITMQ_PREFETCH,
    MMT_RABBITMQ_TLS,
    TLS_FILES.ca,
    TLS_FILES.cert,
    TLS_FILES.key,
];

/// RabbitMQ as the job source.
#[derive(Debug, Clone, Serialize)]
pub struct RabbitMqConfig {
    /// `EXTERNAL_RABBITMQ_ENABLED`: use an external broker (shared by the worker
    /// pods) at `EXTERNAL_RABBITMQ_HOST`; otherwise `mmt run --source rabbitmq`
    /// talks to a broker on this machine (127.0.0.1:5672). Default `false`.
    pub enabled: bool,
    /// `EXTERNAL_RABBITMQ_HOST`: `host[:port]` of the broker (port default 5672,
    /// 5671 with TLS). Required when enabled. Credentials are not part of it.
    pub host: Option<HostPort>,
    /// `MMT_RABBITMQ_TLS`: connect with TLS (`amqps`), verifying the broker's
    /// certificate and host name. Default `false`; required in `prod` for a
    /// broker on another machine (job messages carry audio and patient references).
    pub tls: bool,
    /// `MMT_RABBITMQ_TLS_CA_FILE` (the CA the broker's certificate must chain
    /// to; default: the system's trust store), `MMT_RABBITMQ_TLS_CERT_FILE` and
    /// `MMT_RABBITMQ_TLS_KEY_FILE` (a client certificate, for brokers that
    /// authenticate clients by certificate). PEM files; only with `MMT_RABBITMQ_TLS`.
    pub tls_files: TlsClientFiles,
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
    /// The AMQPS (TLS) port used when `EXTERNAL_RABBITMQ_HOST` names none.
    pub const DEFAULT_TLS_PORT: u16 = 5671;

    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        let tls = vars.bool(MMT_RABBITMQ_TLS, false);
        let default_port = if tls {
            Self::DEFAULT_TLS_PORT
        } else {
            Self::DEFAULT_PORT
        };
        Self {
            enabled: vars.bool(EXTERNAL_RABBITMQ_ENABLED, false),
            host: vars.parse(
                EXTERNAL_RABBITMQ_HOST,
                HostPort::EXPECTED,
                Echo::Never,
                |s| HostPort::parse(s, default_port),
            ),
            tls,
            tls_files: TLS_FILES.read(vars),
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
        TLS_FILES.validate(&self.tls_files, self.tls, "set MMT_RABBITMQ_TLS=true", out);
        PhiLink {
            variable: MMT_RABBITMQ_TLS,
            service: "RabbitMQ (EXTERNAL_RABBITMQ_HOST)",
            carries: "job messages: audio, patient references",
            transport: if self.tls {
                Transport::VerifiedTls
            } else {
                Transport::Plaintext
            },
            local: self.broker().is_local(),
            fix: "set MMT_RABBITMQ_TLS=true (amqps, port 5671) and MMT_RABBITMQ_TLS_CA_FILE",
        }
        .validate(env, out);
        if env.is_prod() && self.enabled && self.password.expose() == "guest" {
            out.push(Problem::warning(
                MMT_RABBITMQ_PASSWORD,
                "is the default guest password in prod",
            ));
        }
    }

    /// The broker's address: `EXTERNAL_RABBITMQ_HOST` when enabled, else this machine.
    fn broker(&self) -> HostPort {
        match (&self.host, self.enabled) {
            (Some(host), true) => host.clone(),
            _ => HostPort {
                host: "127.0.0.1".to_owned(),
                port: if self.tls {
                    Self::DEFAULT_TLS_PORT
                } else {
                    Self::DEFAULT_PORT
                },
            },
        }
    }

    /// The broker's AMQP URL, `amqps://` with TLS (holds the password: pass it
    /// only to the client). The user, password and vhost are percent-encoded
    /// (so the default vhost `/` becomes the `%2F` AMQP expects, and a `%` in a
    /// password is not read back as an escape).
    pub fn url(&self) -> String {
        let HostPort { host, port } = self.broker();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let encode = |text| utf8_percent_encode(text, URL_COMPONENT);
        format!(
            "{scheme}://{}:{}@{host}:{port}/{}",
            encode(&self.user),
            encode(self.password.expose()),
            encode(&self.vhost)
        )
    }

    /// The TLS files the client reads when TLS is on.
    pub(super) fn tls_file_paths(&self) -> Vec<(&'static str, &Path)> {
        TLS_FILES.set(&self.tls_files)
    }
}
