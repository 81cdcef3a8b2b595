//! Retrying failed jobs before they go to the dead-letter queue.

use std::time::Duration;

use serde::Serialize;

use super::vars::Vars;
use super::{Environment, Problem};

const MAX_REPROCESS_ATTEMPTS: &str = "MAX_REPROCESS_ATTEMPTS";
const BACKOFF_BASE_SECONDS: &str = "BACKOFF_BASE_SECONDS";

/// A retry delay longer than this is almost certainly a mistake.
const LONGEST_SENSIBLE_DELAY: Duration = Duration::from_secs(24 * 3600);

/// Retrying failed jobs before they go to the dead-letter queue.
#[derive(Debug, Clone, Serialize)]
pub struct ReprocessConfig {
    /// `MAX_REPROCESS_ATTEMPTS`: retries of a retryable failure before the job is
    /// dead-lettered. Default 5; 0 dead-letters at the first failure. Also the
    /// takes of a job whose worker stops while processing it (killed, out of
    /// memory) before it is dead-lettered; at least one take either way.
    pub max_attempts: u32,
    /// `BACKOFF_BASE_SECONDS`: the first retry's delay; each further retry doubles it.
    /// Fractions allowed. Default 2.
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

    /// The delay before retry number `attempt` (1-based): base × 2^(attempt − 1),
    /// saturating instead of overflowing.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.backoff_base.saturating_mul(1 << doublings)
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
        let last = self.backoff(self.max_attempts);
        if self.max_attempts > 0 && last > LONGEST_SENSIBLE_DELAY {
            out.push(Problem::warning(
                MAX_REPROCESS_ATTEMPTS,
                format!(
                    "with BACKOFF_BASE_SECONDS={} makes the last retry wait {} s (over a day)",
                    self.backoff_base.as_secs_f64(),
                    last.as_secs()
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_saturates() {
        let c = ReprocessConfig {
            max_attempts: 5,
            backoff_base: Duration::from_secs(2),
        };
        let delays: Vec<u64> = (1..=5).map(|a| c.backoff(a).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32]);
        assert_eq!(c.backoff(0), Duration::from_secs(2));
        assert!(c.backoff(u32::MAX) >= c.backoff(31));
    }
}
