//! Rules shared by the external services switched on with `EXTERNAL_*_ENABLED`.

use super::net::HostPort;
use super::{Environment, Problem};

/// One external service's switch and address, for validation.
pub(super) struct External<'a> {
    pub(super) service: &'static str,
    pub(super) enabled_var: &'static str,
    pub(super) host_var: &'static str,
    pub(super) enabled: bool,
    pub(super) host: Option<&'a HostPort>,
}

impl External<'_> {
    /// Enabled without a host is fatal; a host without the switch is a warning (it is
    /// ignored); a local host in `prod` is a warning (each pod would talk to itself).
    pub(super) fn validate(&self, env: Environment, out: &mut Vec<Problem>) {
        let Self {
            service,
            enabled_var,
            host_var,
            ..
        } = *self;
        match (self.enabled, self.host) {
            (true, None) => out.push(Problem::fatal(
                host_var,
                format!("not set, but {enabled_var}=true: say where {service} runs"),
            )),
            (false, Some(_)) => out.push(Problem::warning(
                host_var,
                format!("is set but ignored because {enabled_var} is not true"),
            )),
            (true, Some(host)) if env.is_prod() && host.is_local() => {
                out.push(Problem::warning(
                    host_var,
                    format!(
                        "points at the local machine in prod; {service} should be a shared service"
                    ),
                ));
            }
            _ => {}
        }
    }
}
