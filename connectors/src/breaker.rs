//! A circuit breaker for calls to an external service.
//!
//! After `failure_threshold` consecutive failures the breaker opens: calls fail
//! at once, without touching the service, for `cooldown`. Then one trial call
//! is let through (half-open): success closes the breaker, failure opens it for
//! another cooldown. While open, the commit stage keeps its outcomes and retries
//! them with backoff, so nothing is lost; the breaker only stops a dead broker
//! from costing a timeout per message.

use std::time::{Duration, Instant};

/// When the breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before a trial call.
    pub cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cooldown: Duration::from_secs(10),
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; `failures` consecutive ones have failed.
    Closed { failures: u32 },
    /// Calls fail fast until `until`.
    Open { until: Instant },
    /// One trial call is allowed.
    HalfOpen,
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Allowed,
    /// The breaker is open for this much longer.
    Refused {
        retry_in: Duration,
    },
}

/// What a recorded failure did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tripped {
    /// The failure was counted; the breaker stays as it was.
    No,
    /// The breaker has just opened.
    Opened,
}

/// A consecutive-failure circuit breaker. Time is passed in, so it is testable.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    state: BreakerState,
}

impl CircuitBreaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Asks to make a call at `now`.
    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.state {
            BreakerState::Open { until } if now < until => Permit::Refused {
                retry_in: until - now,
            },
            BreakerState::Open { .. } => {
                self.state = BreakerState::HalfOpen;
                Permit::Allowed
            }
            BreakerState::Closed { .. } | BreakerState::HalfOpen => Permit::Allowed,
        }
    }

    /// The call succeeded: close the breaker.
    pub fn record_success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    /// The call failed at `now`.
    pub fn record_failure(&mut self, now: Instant) -> Tripped {
        let open = || BreakerState::Open {
            until: now + self.policy.cooldown,
        };
        match self.state {
            BreakerState::Closed { failures } => {
                let failures = failures + 1;
                if failures >= self.policy.failure_threshold.max(1) {
                    self.state = open();
                    Tripped::Opened
                } else {
                    self.state = BreakerState::Closed { failures };
                    Tripped::No
                }
            }
            BreakerState::HalfOpen => {
                self.state = open();
                Tripped::Opened
            }
            BreakerState::Open { .. } => Tripped::No,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerPolicy {
            failure_threshold: 3,
            cooldown: Duration::from_secs(10),
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let now = Instant::now();
        let mut breaker = breaker();
        assert_eq!(breaker.record_failure(now), Tripped::No);
        assert_eq!(breaker.record_failure(now), Tripped::No);
        breaker.record_success();
        assert_eq!(breaker.record_failure(now), Tripped::No);
        assert_eq!(breaker.record_failure(now), Tripped::No);
        assert_eq!(breaker.permit(now), Permit::Allowed);
        assert_eq!(breaker.record_failure(now), Tripped::Opened);
        assert_eq!(
            breaker.permit(now + Duration::from_secs(4)),
            Permit::Refused {
                retry_in: Duration::from_secs(6)
            }
        );
    }

    #[test]
    fn half_open_trial_closes_or_reopens() {
        let now = Instant::now();
        let mut breaker = breaker();
        for _ in 0..3 {
            breaker.record_failure(now);
        }
        let later = now + Duration::from_secs(11);
        assert_eq!(breaker.permit(later), Permit::Allowed);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(breaker.record_failure(later), Tripped::Opened);
        assert!(matches!(breaker.permit(later), Permit::Refused { .. }));

        let much_later = later + Duration::from_secs(11);
        assert_eq!(breaker.permit(much_later), Permit::Allowed);
        breaker.record_success();
        assert_eq!(breaker.state(), BreakerState::Closed { failures: 0 });
    }
}
