//! Operations endpoints: health, readiness, metrics, the OpenAPI document and
//! the status page.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{header, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use mmt_core::control::Readiness;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::state::{require, AppState, OPERATORS};
use crate::views::OverviewView;

/// Recent jobs the status page lists.
const STATUS_PAGE_JOBS: u32 = 25;

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// Readiness of each dependency.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessReport {
    pub ready: bool,
    pub components: Vec<ComponentReadiness>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ComponentReadiness {
    pub component: String,
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<Readiness> for ComponentReadiness {
    fn from(readiness: Readiness) -> Self {
        Self {
            component: readiness.component,
            ready: readiness.ready,
            detail: readiness.detail,
        }
    }
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The job store and the intake answer, and the transcription dataflow runs.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = ReadinessReport),
        (status = 503, description = "A dependency is down, or the dataflow has stopped (the process is about to exit)", body = ReadinessReport),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    let components = state.blocking(|control| Ok(control.readiness())).await?;
    let ready = components.iter().all(|c| c.ready);
    let report = ReadinessReport {
        ready,
        components: components.into_iter().map(Into::into).collect(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(report)).into_response())
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    exposition(&state.metrics)
}

/// Every metric in Prometheus' text format: the body of both `/metrics`
/// endpoints (the API's, and `mmt run`'s own in [`crate::metrics_server`]).
pub fn exposition(metrics: &mmt_core::telemetry::Metrics) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.encode_text(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = serde_json::Value)))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::ApiDoc::openapi())
}

/// The status page's figures: queue depth, throughput and recent jobs.
#[utoipa::path(get, path = "/v1/status", tag = "operations",
    responses(
        (status = 200, description = "Queue, throughput and recent jobs of the caller's tenant", body = OverviewView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only readers and admins", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Tenant over its rate limit", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<OverviewView>, ApiError> {
    require(&caller, OPERATORS)?;
    let tenant = caller.tenant;
    let overview = state
        .blocking(move |control| {
            control
                .overview(&tenant, STATUS_PAGE_JOBS)
                .map_err(ApiError::from)
        })
        .await?;
    Ok(Json(OverviewView::from(&overview)))
}

/// The status page: a static shell. Its data comes from `/v1/status` with the
/// operator's bearer token, so the page itself holds nothing to protect.
pub async fn status_page() -> Response {
    (
        [
            (header::CONTENT_SECURITY_POLICY, STATUS_PAGE_CSP),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(include_str!("../static/status.html")),
    )
        .into_response()
}

pub async fn status_script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("../static/status.js"),
    )
        .into_response()
}

/// Scripts and styles only from this server; no framing.
const STATUS_PAGE_CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

/// Records `api_request_duration_seconds` by route template (never the raw
/// path: it holds job ids) and status code.
pub async fn record_duration(
    State(state): State<AppState>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .api_request_duration_seconds
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}
