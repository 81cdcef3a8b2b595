//! How many accepted jobs `mmt serve` lets wait for the dataflow.
//!
//! Waiting jobs cost disk (their uploads are spooled) and a few bytes of
//! memory each (only their ids are held), but a queue without a bound lets
//! one busy client fill the disk and push every other tenant's work back by
//! hours. Past the bound a submission is refused with a `Retry-After` (503
//! when the whole queue is full, 429 when the caller's tenant holds its share)
//! before its body is read; nothing that was accepted is ever dropped.

use serde::Serialize;

use super::vars::{Echo, Vars};
use super::{Environment, Problem};

const MMT_API_MAX_QUEUED_JOBS: &str = "MMT_API_MAX_QUEUED_JOBS";
const MMT_API_MAX_QUEUED_PER_TENANT: &str = "MMT_API_MAX_QUEUED_PER_TENANT";

/// The variables of this section.
pub(super) const VARIABLES: &[&str] = &[MMT_API_MAX_QUEUED_JOBS, MMT_API_MAX_QUEUED_PER_TENANT];

/// The default bound: at the 100 MB upload limit, 100 GB of spool at worst.
const DEFAULT_MAX_QUEUED_JOBS: u32 = 1000;

/// The bounds of the API's job queue.
#[derive(Debug, Clone, Serialize)]
pub struct IntakeConfig {
    /// `MMT_API_MAX_QUEUED_JOBS`: jobs accepted and not yet taken by the
    /// dataflow, all tenants together; a submission beyond it answers 503 with
    /// `Retry-After`. Default 1000; at least 1.
    pub max_queued_jobs: u32,
    /// `MMT_API_MAX_QUEUED_PER_TENANT`: the share of the queue one tenant may
    /// hold; a submission beyond it answers 429 with `Retry-After` while other
    /// tenants are still accepted. Default half of `MMT_API_MAX_QUEUED_JOBS`
    /// (at least 1), so no single tenant can fill the queue alone.
    pub max_queued_per_tenant: u32,
}

impl IntakeConfig {
    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        let max_queued_jobs = vars.u32(MMT_API_MAX_QUEUED_JOBS, DEFAULT_MAX_QUEUED_JOBS);
        let max_queued_per_tenant = vars
            .parse(
                MMT_API_MAX_QUEUED_PER_TENANT,
                "a whole number (0 to 4294967295)",
                Echo::Value,
                |s| s.parse().ok(),
            )
            .unwrap_or_else(|| default_share(max_queued_jobs));
        Self {
            max_queued_jobs,
            max_queued_per_tenant,
        }
    }

    pub(super) fn validate(&self, _env: Environment, out: &mut Vec<Problem>) {
        for (variable, value) in [
            (MMT_API_MAX_QUEUED_JOBS, self.max_queued_jobs),
            (MMT_API_MAX_QUEUED_PER_TENANT, self.max_queued_per_tenant),
        ] {
            if value == 0 {
                out.push(Problem::fatal(
                    variable,
                    "must be at least 1 (0 would refuse every submission)",
                ));
            }
        }
        if self.max_queued_jobs > 0 && self.max_queued_per_tenant > self.max_queued_jobs {
            out.push(Problem::warning(
                MMT_API_MAX_QUEUED_PER_TENANT,
                format!(
                    "is above MMT_API_MAX_QUEUED_JOBS ({}): one tenant can fill the whole queue",
                    self.max_queued_jobs
                ),
            ));
        }
    }
}

impl Default for IntakeConfig {
    fn default() -> Self {
        Self {
            max_queued_jobs: DEFAULT_MAX_QUEUED_JOBS,
            max_queued_per_tenant: default_share(DEFAULT_MAX_QUEUED_JOBS),
        }
    }
}

/// Half the queue, at least one job.
fn default_share(max_queued_jobs: u32) -> u32 {
    (max_queued_jobs / 2).max(1)
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn load(vars: &[(&str, &str)]) -> super::super::Loaded {
        Config::load_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn the_tenant_share_defaults_to_half_the_queue() {
        let loaded = load(&[("MMT_API_MAX_QUEUED_JOBS", "40")]);
        assert_eq!(loaded.config.intake.max_queued_jobs, 40);
        assert_eq!(loaded.config.intake.max_queued_per_tenant, 20);
        assert!(!loaded.report.refuses_start());
        let tiny = load(&[("MMT_API_MAX_QUEUED_JOBS", "1")]);
        assert_eq!(tiny.config.intake.max_queued_per_tenant, 1);
    }

    #[test]
    fn a_zero_bound_refuses_start_and_a_share_above_the_queue_warns() {
        let zero = load(&[("MMT_API_MAX_QUEUED_JOBS", "0")]);
        assert!(zero.report.refuses_start());
        assert!(zero.report.to_string().contains("MMT_API_MAX_QUEUED_JOBS"));
        let wide = load(&[
            ("MMT_API_MAX_QUEUED_JOBS", "10"),
            ("MMT_API_MAX_QUEUED_PER_TENANT", "11"),
        ]);
        assert!(!wide.report.refuses_start());
        assert_eq!(wide.report.warning_count(), 1, "{}", wide.report);
        let bad = load(&[("MMT_API_MAX_QUEUED_PER_TENANT", "many")]);
        assert!(bad.report.refuses_start());
    }
}
