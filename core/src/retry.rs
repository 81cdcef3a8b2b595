//! The one retry policy of MMT: capped exponential backoff with jitter, built
//! on `backon`, and the outage record that says (once) when a dependency fails
//! and when it is back.
//!
//! Every loop that waits for a failing service (the commit stage's sinks, the
//! FHIR client, RabbitMQ reconnects, the Redis filter, webhook deliveries)
//! takes its delays from a [`RetryPolicy`], so that they all back off the same
//! way and never retry in lockstep: many workers hitting a recovering server at
//! the same instant is what the jitter prevents.
//!
//! Delay number `n` (after the `n`-th failure) is drawn from
//! `[d_n, 2·d_n)` where `d_n = min(base · 2^(n−1), cap / 2)`: it doubles from
//! `base`, the jitter spreads it over up to one more `d_n`, and it never
//! reaches `cap`.

use crate::telemetry::Metrics;
use backon::{BackoffBuilder, ExponentialBuilder};
use std::fmt;
use std::time::{Duration, Instant};

/// Why a policy's settings are wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryPolicyError {
    #[error("the backoff cap ({cap:?}) is below its base ({base:?})")]
    CapBelowBase { base: Duration, cap: Duration },
    #[error("a retry policy needs at least one attempt")]
    NoAttempts,
}

/// Capped exponential backoff with jitter, for as long as a failure lasts or
/// for a bounded number of attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    base: Duration,
    cap: Duration,
    /// Attempts in all (the first one and its retries); `None`: no limit.
    max_attempts: Option<u32>,
}

impl RetryPolicy {
    /// The longest wait between attempts when a caller names no cap: a
    /// recovered service is noticed within a minute.
    pub const DEFAULT_CAP: Duration = Duration::from_secs(60);

    /// Retries without limit, the first after about `base`, never waiting `cap` or more.
    pub fn new(base: Duration, cap: Duration) -> Result<Self, RetryPolicyError> {
        if cap < base {
            return Err(RetryPolicyError::CapBelowBase { base, cap });
        }
        Ok(Self {
            base,
            cap,
            max_attempts: None,
        })
    }

    /// Retries without limit from `base` (`BACKOFF_BASE_SECONDS`), capped at
    /// [`Self::DEFAULT_CAP`] or at twice the base if that is longer.
    pub fn from_base(base: Duration) -> Self {
        Self {
            base,
            cap: Self::DEFAULT_CAP.max(base.saturating_mul(2)),
            max_attempts: None,
        }
    }

    /// Gives up after `attempts` attempts in all (the first included).
    pub fn with_max_attempts(self, attempts: u32) -> Result<Self, RetryPolicyError> {
        if attempts == 0 {
            return Err(RetryPolicyError::NoAttempts);
        }
        Ok(Self {
            max_attempts: Some(attempts),
            ..self
        })
    }

    pub fn base(&self) -> Duration {
        self.base
    }

    pub fn cap(&self) -> Duration {
        self.cap
    }

    pub fn max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The waits between attempts, one per failure, in order; it ends when the
    /// attempts run out (never, without a limit).
    pub fn backoff(&self) -> Backoff {
        Backoff(self.builder().build())
    }

    /// The wait after `failures` failed attempts (1 after the first), or
    /// `None` when no attempt is left. For callers that keep the count
    /// themselves (in a database row, across restarts).
    pub fn delay(&self, failures: u32) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| failures >= max) {
            return None;
        }
        // Past the doubling that reaches the cap every delay is alike, so the
        // walk along the sequence is short however large `failures` is.
        let steps = failures.saturating_sub(1).min(64) as usize;
        let unlimited = Self {
            max_attempts: None,
            ..*self
        };
        unlimited.backoff().nth(steps)
    }

    /// The longest wait the policy can make after `failures` failures.
    pub fn upper_bound(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(63);
        let floor = self
            .base
            .checked_mul(1u32.checked_shl(doublings.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(Duration::MAX)
            .min(self.half_cap());
        floor.saturating_mul(2).min(self.cap)
    }

    fn half_cap(&self) -> Duration {
        self.cap / 2
    }

    fn builder(&self) -> ExponentialBuilder {
        // backon adds up to one more delay as jitter; capping the delay at half
        // the cap keeps every jittered wait below the cap.
        let half_cap = self.half_cap();
        let builder = ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(self.base.min(half_cap))
            .with_max_delay(half_cap);
        match self.max_attempts {
            // The first attempt is not a retry: n attempts have n − 1 waits.
            Some(max) => builder.with_max_times(max.saturating_sub(1) as usize),
            None => builder.without_max_times(),
        }
    }
}

/// The waits of one series of retries (see [`RetryPolicy::backoff`]).
pub struct Backoff(<ExponentialBuilder as BackoffBuilder>::Backoff);

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Backoff { .. }")
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.0.next()
    }
}

/// One dependency's outages as operators see them: the `sink_outage{sink}`
/// gauge is 1 while it lasts, `sink_outage_total{sink}` counts them, and the
/// log has one warning when it starts and one line when it ends; the retries
/// in between are debug lines.
#[derive(Debug)]
pub struct Outage {
    metrics: Metrics,
    current: Option<Ongoing>,
}

#[derive(Debug)]
struct Ongoing {
    sink: &'static str,
    since: Instant,
    failures: u64,
}

impl Outage {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            current: None,
        }
    }

    /// Whether a dependency is failing now.
    pub fn is_ongoing(&self) -> bool {
        self.current.is_some()
    }

    /// Records a transient failure of `sink`; the first one starts an outage.
    pub fn failed(&mut self, sink: &'static str, error: &dyn fmt::Display, retry_in: Duration) {
        match &mut self.current {
            Some(ongoing) => {
                ongoing.failures += 1;
                tracing::debug!(sink, failures = ongoing.failures, retry_in_ms = retry_in.as_millis() as u64, error = %error, "still failing");
            }
            None => {
                self.metrics.sink_outage.with_label_values(&[sink]).set(1);
                self.metrics
                    .sink_outage_total
                    .with_label_values(&[sink])
                    .inc();
                tracing::warn!(sink, error = %error, "outage: writes are retried with backoff until it recovers; the source is paused");
                self.current = Some(Ongoing {
                    sink,
                    since: Instant::now(),
                    failures: 1,
                });
            }
        }
    }

    /// Records a success; ends the outage if one was going on.
    pub fn recovered(&mut self) {
        if let Some(ongoing) = self.current.take() {
            self.metrics
                .sink_outage
                .with_label_values(&[ongoing.sink])
                .set(0);
            tracing::info!(
                sink = ongoing.sink,
                seconds = ongoing.since.elapsed().as_secs_f64(),
                failures = ongoing.failures,
                "outage over"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn delays_double_from_the_base_within_their_jitter_range() {
        let policy = RetryPolicy::new(ms(100), ms(10_000)).expect("valid");
        for _ in 0..200 {
            let delays: Vec<Duration> = policy.backoff().take(5).collect();
            for (n, delay) in delays.iter().enumerate() {
                let floor = ms(100 << n);
                assert!(*delay >= floor, "delay {n}: {delay:?} < {floor:?}");
                assert!(*delay < floor * 2, "delay {n}: {delay:?} ≥ {:?}", floor * 2);
            }
        }
    }

    #[test]
    fn jitter_spreads_the_waits() {
        let policy = RetryPolicy::new(ms(1000), ms(60_000)).expect("valid");
        let firsts: std::collections::HashSet<Duration> =
            (0..50).filter_map(|_| policy.backoff().next()).collect();
        assert!(firsts.len() > 10, "jittered waits differ: {firsts:?}");
        let spread = firsts.iter().max().copied().unwrap_or_default()
            - firsts.iter().min().copied().unwrap_or_default();
        assert!(spread > ms(200), "they cover the range: {spread:?}");
    }

    #[test]
    fn waits_never_reach_the_cap_however_long_the_outage() {
        let policy = RetryPolicy::new(ms(100), ms(1000)).expect("valid");
        let delays: Vec<Duration> = policy.backoff().take(1000).collect();
        assert_eq!(delays.len(), 1000, "no limit: the retries go on");
        assert!(delays.iter().all(|d| *d < ms(1000)), "capped");
        assert!(
            delays[100..].iter().all(|d| *d >= ms(500)),
            "at the cap's half"
        );
        assert!(policy.delay(u32::MAX).is_some_and(|d| d < ms(1000)));
        assert_eq!(policy.upper_bound(u32::MAX), ms(1000));
    }

    #[test]
    fn a_base_above_half_the_cap_still_stays_under_the_cap() {
        let policy = RetryPolicy::new(ms(900), ms(1000)).expect("valid");
        assert!(policy.backoff().take(20).all(|d| d < ms(1000)));
        assert_eq!(
            RetryPolicy::new(ms(2000), ms(1000)),
            Err(RetryPolicyError::CapBelowBase {
                base: ms(2000),
                cap: ms(1000)
            })
        );
    }

    #[test]
    fn attempts_bound_the_waits() {
        let policy = RetryPolicy::new(ms(10), ms(1000))
            .and_then(|p| p.with_max_attempts(4))
            .expect("valid");
        assert_eq!(policy.backoff().count(), 3, "4 attempts, 3 waits between");
        for failures in 1..4 {
            let delay = policy.delay(failures).expect("attempts left");
            assert!(delay >= ms(10 << (failures - 1)) && delay < ms(20 << (failures - 1)));
            assert!(delay <= policy.upper_bound(failures));
        }
        assert_eq!(policy.delay(4), None);
        assert_eq!(
            RetryPolicy::from_base(ms(10)).with_max_attempts(0),
            Err(RetryPolicyError::NoAttempts)
        );
    }

    #[test]
    fn the_base_alone_gets_the_default_cap() {
        let policy = RetryPolicy::from_base(Duration::from_secs(2));
        assert_eq!(policy.cap(), RetryPolicy::DEFAULT_CAP);
        assert_eq!(policy.max_attempts(), None);
        let long = RetryPolicy::from_base(Duration::from_secs(3600));
        assert_eq!(long.cap(), Duration::from_secs(7200));
        assert!(RetryPolicy::from_base(Duration::ZERO)
            .backoff()
            .take(5)
            .all(|d| d.is_zero()));
    }

    #[test]
    fn one_outage_is_counted_once_and_cleared_when_it_ends() {
        let metrics = Metrics::new().expect("metrics");
        let mut outage = Outage::new(metrics.clone());
        assert!(!outage.is_ongoing());
        for _ in 0..5 {
            outage.failed("store", &"connection refused", ms(10));
        }
        assert!(outage.is_ongoing());
        let gauge = || metrics.sink_outage.with_label_values(&["store"]).get();
        let total = || {
            metrics
                .sink_outage_total
                .with_label_values(&["store"])
                .get()
        };
        assert_eq!((gauge(), total()), (1, 1));
        outage.recovered();
        assert_eq!((gauge(), total()), (0, 1));
        outage.recovered();
        outage.failed("store", &"again", ms(10));
        assert_eq!((gauge(), total()), (1, 2));
    }
}
