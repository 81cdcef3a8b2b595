//! RabbitMQ as the job source.

use serde::Serialize;

use super::external::External;
use super::net::HostPort;
use super::vars::{Echo, Vars};
use super::{Environment, Problem};

const EXTERNAL_RABBITMQ_ENABLED: &str = "EXTERNAL_RABBITMQ_ENABLED";
const EXTERNAL_RABBITMQ_HOST: &str = "EXTERNAL_RABBITMQ_HOST";

/// RabbitMQ as the job source.
#[derive(Debug, Clone, Serialize)]
pub struct RabbitMqConfig {
    /// `EXTERNAL_RABBITMQ_ENABLED`: consume jobs from RabbitMQ instead of the local
    /// directory source. Default `false`.
    pub enabled: bool,
    /// `EXTERNAL_RABBITMQ_HOST`: `host[:port]` of the broker (port default 5672).
    /// Required when enabled. Credentials are not part of it.
    pub host: Option<HostPort>,
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
    }
}
