//! Completion webhooks of `mmt serve`: the signing secret, and whether
//! callbacks may reach private addresses.

use serde::Serialize;

use super::secret::Secret;
use super::vars::Vars;
use super::{Environment, Problem};

const MMT_WEBHOOK_SECRET: &str = "MMT_WEBHOOK_SECRET";
const MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS: &str = "MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS";

/// The variables this section reads.
pub(super) const VARIABLES: &[&str] = &[MMT_WEBHOOK_SECRET, MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS];

/// Completion webhooks.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookSettings {
    /// `MMT_WEBHOOK_SECRET`: the HMAC key signing callbacks, at least
    /// [`WebhookSettings::MIN_SECRET_BYTES`] bytes; unset, `callback_url` is
    /// refused. Never printed.
    pub secret: Option<Secret>,
    /// `MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS`: let callbacks reach loopback,
    /// private (RFC 1918, IPv6 unique local) and shared (100.64.0.0/10)
    /// addresses, for receivers on the premises. Link-local, multicast,
    /// broadcast, unspecified and cloud-metadata addresses stay refused.
    /// Default `false`.
    pub allow_private_targets: bool,
}

impl WebhookSettings {
    /// The shortest acceptable secret: 256 bits for HMAC-SHA256.
    pub const MIN_SECRET_BYTES: usize = 32;

    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        Self {
            secret: vars.text(MMT_WEBHOOK_SECRET).map(Secret::new),
            allow_private_targets: vars.bool(MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS, false),
        }
    }

    pub(super) fn validate(&self, env: Environment, out: &mut Vec<Problem>) {
        if let Some(secret) = &self.secret {
            if secret.expose().len() < Self::MIN_SECRET_BYTES {
                out.push(Problem::fatal(
                    MMT_WEBHOOK_SECRET,
                    format!(
                        "is shorter than {} bytes; use a random secret at least that long",
                        Self::MIN_SECRET_BYTES
                    ),
                ));
            }
        }
        if self.allow_private_targets {
            let message = if self.secret.is_none() {
                "is set but has no effect: no MMT_WEBHOOK_SECRET, so no callbacks are delivered"
            } else {
                "is true: callbacks may reach loopback and private addresses (meant for \
                 receivers on the premises)"
            };
            // Said in every environment but dev: it is a decision an operator
            // reviewing the configuration must see.
            if env.production_rule().is_some() || self.secret.is_none() {
                out.push(Problem::warning(MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS, message));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Severity};

    fn problems(vars: &[(&str, &str)]) -> Vec<(String, Severity, String)> {
        let loaded = Config::load_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        loaded
            .report
            .problems()
            .iter()
            .filter(|p| p.variable.starts_with("MMT_WEBHOOK"))
            .map(|p| (p.variable.to_owned(), p.severity, p.message.clone()))
            .collect()
    }

    #[test]
    fn a_short_secret_is_fatal_everywhere_and_never_shown() {
        for env in ["dev", "prod"] {
            let found = problems(&[("ENV", env), ("MMT_WEBHOOK_SECRET", "short-secret")]);
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(found[0].1, Severity::Fatal);
            assert!(found[0].2.contains("32 bytes"));
            assert!(!found[0].2.contains("short-secret"));
        }
        let long = "k".repeat(32);
        assert!(problems(&[("MMT_WEBHOOK_SECRET", &long)]).is_empty());
        let config = Config::from_vars([("MMT_WEBHOOK_SECRET".to_owned(), long.clone())]).unwrap();
        assert_eq!(
            config.webhook.secret.map(|s| s.expose().to_owned()),
            Some(long)
        );
    }

    #[test]
    fn the_private_targets_switch_is_parsed_and_reported() {
        let secret = "k".repeat(40);
        let config = Config::from_vars([
            ("MMT_WEBHOOK_SECRET".to_owned(), secret.clone()),
            (
                "MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS".to_owned(),
                "yes".to_owned(),
            ),
        ])
        .unwrap();
        assert!(config.webhook.allow_private_targets);
        assert!(!Config::default().webhook.allow_private_targets);

        let prod = problems(&[
            ("ENV", "staging"),
            ("MMT_WEBHOOK_SECRET", &secret),
            ("MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true"),
        ]);
        assert_eq!(prod.len(), 1, "{prod:?}");
        assert_eq!(prod[0].1, Severity::Warning);
        assert!(prod[0].2.contains("private"));

        let useless = problems(&[("MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")]);
        assert!(useless[0].2.contains("no effect"), "{useless:?}");

        let bad = problems(&[("MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS", "maybe")]);
        assert_eq!(bad[0].1, Severity::Fatal);
    }
}
