//! What every handler shares, and the extractor that authenticates a request.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use mmt_core::control::JobControl;
use mmt_core::telemetry::Metrics;

use crate::auth::{Caller, KeyRing, Role};
use crate::config::ApiConfig;
use crate::error::ApiError;

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub control: Arc<dyn JobControl>,
    pub keys: Arc<KeyRing>,
    pub config: Arc<ApiConfig>,
    pub metrics: Metrics,
    limiter: Arc<TenantLimiter>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("keys", &self.keys)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(
        control: Arc<dyn JobControl>,
        keys: Arc<KeyRing>,
        config: ApiConfig,
        metrics: Metrics,
    ) -> Self {
        let limiter = Arc::new(TenantLimiter::new(
            config.tenant_requests_per_second,
            config.tenant_burst,
        ));
        Self {
            control,
            keys,
            config: Arc::new(config),
            metrics,
            limiter,
        }
    }

    /// Runs a blocking job-control call off the async threads.
    pub async fn blocking<T, F>(&self, call: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn JobControl) -> Result<T, ApiError> + Send + 'static,
    {
        let control = Arc::clone(&self.control);
        tokio::task::spawn_blocking(move || call(control.as_ref()))
            .await
            .map_err(ApiError::internal)?
    }
}

/// A token bucket per tenant (GCRA): one tenant's burst cannot starve another.
struct TenantLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl TenantLimiter {
    fn new(per_second: u32, burst: u32) -> Self {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(seconds to wait)` when the tenant is over its rate.
    fn check(&self, tenant: &str) -> Result<(), u64> {
        self.limiter
            .check_key(&tenant.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()).as_secs().max(1))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// Authenticates the bearer token, then charges the tenant's rate limit.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        let caller = state.keys.verify(token).map_err(|reason| {
            tracing::debug!(%reason, "token refused");
            ApiError::Unauthorized
        })?;
        state
            .limiter
            .check(&caller.tenant)
            .map_err(|retry_after_seconds| ApiError::TooManyRequests {
                retry_after_seconds,
            })?;
        Ok(caller)
    }
}

/// Fails with 403 unless the caller holds one of `roles`.
pub fn require(caller: &Caller, roles: &[Role]) -> Result<(), ApiError> {
    if caller.has_any(roles) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// Who may read jobs and transcripts.
pub const READERS: &[Role] = &[Role::Reader, Role::Submitter, Role::Admin];
/// Who may submit jobs.
pub const SUBMITTERS: &[Role] = &[Role::Submitter, Role::Admin];
/// Who may delete jobs and read the status page.
pub const ADMINS: &[Role] = &[Role::Admin];
/// Who may watch the status page (operators).
pub const OPERATORS: &[Role] = &[Role::Reader, Role::Admin];
