//! Retrying failed jobs before they go to the dead-letter queue.

use std::time::Duration;

use mmt_core::retry::RetryPolicy;
use serde::Serialize;

use super::vars::Vars;
use super::{Environment, Problem};

const MAX_REPROCESS_ATTEMPTS: &str = "MAX_REPROCESS_ATTEMPTS";
const BACKOFF_BASE_SECONDS: &str = "BACKOFF_BASE_SECONDS";

/// A retry delay longer than this is almost certainly a mistake.
const LONGEST_SENSIBLE_DELAY: Duration = Duration::from_secs(24 * 3600);

/// More attempts than this at a job that keeps failing (or crashing its
/// worker) is almost certainly a mistake.
const MOST_SENSIBLE_ATTEMPTS: u32 = 10;

/// Retrying failed jobs before they go to the dead-letter queue.
#[derive(Debug, Clone, Serialize)]
pub struct ReprocessConfig {
    /// `MAX_REPROCESS_ATTEMPTS`: retries of a retryable failure before the job is
    /// dead-lettered. Default 5; 0 dead-letters at the first failure. Also the
    /// takes of a job whose worker stops while processing it (killed, out of
    /// memory) before it is dead-lettered; at least one take either way.
    pub max_attempts: u32,
    /// `BACKOFF_BASE_SECONDS`: the first retry's delay; each further retry
    /// doubles it, with jitter, up to a cap (see [`RetryPolicy`]). Fractions
    /// allowed. Default 2.
    #[serde(serialize_with = "super::serialize_seconds")]
    pub backoff_base: Duration,
}

impl ReprocessConfig {
    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        Self {
            max_attempts: vars.u32(MAX_REPROCESS_ATTEMPTS, 5),
            backoff_base: vars.seconds(BACKOFF_BASE_SECONDS, Duration::from_secs(2)),
        }
    }

    /// The one retry policy, from `BACKOFF_BASE_SECONDS`: retries while a
    /// failure lasts (transient failures are never counted against
    /// `MAX_REPROCESS_ATTEMPTS`).
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::from_base(self.backoff_base)
    }

    pub(super) fn validate(&self, _env: Environment, out: &mut Vec<Problem>) {
        if self.max_attempts == 0 {
            out.push(Problem::warning(
                MAX_REPROCESS_ATTEMPTS,
                "is 0: every failure goes straight to the dead-letter queue",
            ));
        }
        if self.backoff_base.is_zero() {
            out.push(Problem::warning(
                BACKOFF_BASE_SECONDS,
                "is 0: retries hammer a failing service with no delay",
            ));
        }
        let cap = self.retry_policy().cap();
        if cap > LONGEST_SENSIBLE_DELAY {
            out.push(Problem::warning(
                BACKOFF_BASE_SECONDS,
                format!(
                    "is {} s: retries may wait up to {} s (over a day)",
                    self.backoff_base.as_secs_f64(),
                    cap.as_secs()
                ),
            ));
        }
        if self.max_attempts > MOST_SENSIBLE_ATTEMPTS {
            out.push(Problem::warning(
                MAX_REPROCESS_ATTEMPTS,
                format!(
                    "is {}: a job that keeps failing is tried that many times before it is dead-lettered",
                    self.max_attempts
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_starts_at_the_base_and_stays_under_its_cap() {
        let c = ReprocessConfig {
            max_attempts: 5,
            backoff_base: Duration::from_secs(2),
        };
        let policy = c.retry_policy();
        assert_eq!(policy.base(), Duration::from_secs(2));
        assert_eq!(policy.max_attempts(), None, "transient failures retry on");
        let first = policy.delay(1).expect("a delay");
        assert!(first >= Duration::from_secs(2) && first < Duration::from_secs(4));
        assert!(policy.delay(1000).is_some_and(|d| d < policy.cap()));
        assert_eq!(policy.upper_bound(3), Duration::from_secs(16));
    }
}
