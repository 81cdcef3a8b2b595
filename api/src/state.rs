//! What every handler shares, and the extractor that authenticates a request.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use mmt_core::control::{Access, JobControl};
use mmt_core::telemetry::Metrics;

use crate::auth::{AuthError, Caller, KeyRing, Role};
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
    refusals: Arc<RefusalAudit>,
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
            refusals: Arc::new(RefusalAudit::new()),
        }
    }

    /// Records a refused token in the audit trail (see [`RefusalAudit`]).
    /// The caller gets its 401 whatever happens here: a failure to audit is
    /// logged by the job control.
    async fn audit_refusal(&self, parts: &Parts, reason: &AuthError) {
        let Some(suppressed) = self.refusals.admit() else {
            return;
        };
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map_or("(unmatched)", MatchedPath::as_str);
        let access = Access::AuthenticationFailed {
            reason: reason.class(),
            client: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(peer)| peer.ip()),
            route: format!("{} {route}", parts.method),
            suppressed,
        };
        let recorded = self
            .blocking(move |control| control.audit_access(&access).map_err(Into::into))
            .await;
        if recorded.is_err() {
            // Not written: counted into the next line that is.
            self.refusals.suppressed.fetch_add(1, Ordering::Relaxed);
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

/// Refused tokens written to the audit trail per second, all clients
/// together, and the burst above it.
const REFUSALS_PER_SECOND: u32 = 20;
const REFUSAL_BURST: u32 = 100;

/// Bounds the audit lines of refused tokens: each is an fsynced write, so a
/// flood of bad tokens must not become a flood of disk syncs that slows the
/// trail for everyone. Past the bound, refusals are counted and the count is
/// written with the next refusal that is recorded (`suppressed_before`).
struct RefusalAudit {
    limiter: DefaultDirectRateLimiter,
    suppressed: AtomicU64,
}

impl RefusalAudit {
    fn new() -> Self {
        let rate = NonZeroU32::new(REFUSALS_PER_SECOND).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(REFUSAL_BURST).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(refusals suppressed since the last recorded one)` if this one
    /// is to be recorded; `None` (and counted) if over the bound.
    fn admit(&self) -> Option<u64> {
        if self.limiter.check().is_ok() {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
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

    /// Authenticates the bearer token (a refusal is audited), then charges
    /// the tenant's rate limit.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let verified = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(AuthError::Missing)
            .and_then(|token| state.keys.verify(token));
        let caller = match verified {
            Ok(caller) => caller,
            Err(reason) => {
                tracing::debug!(%reason, "token refused");
                state.audit_refusal(parts, &reason).await;
                return Err(ApiError::Unauthorized);
            }
        };
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
