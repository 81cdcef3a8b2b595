//! The REST job API: clinical systems submit audio, follow their jobs and fetch
//! transcripts here.
//!
//! ```text
//! POST   /v1/jobs                      submit (multipart upload or JSON reference)
//! GET    /v1/jobs                      list (status, time window, cursor)
//! GET    /v1/jobs/{id}                 status, timestamps, attempts, failure
//! GET    /v1/jobs/{id}/transcript      ?format=json|text|srt|vtt|fhir
//! DELETE /v1/jobs/{id}                 purge audio, transcript, documents (audited)
//! GET    /v1/status                    the status page's figures
//! GET    /  /status.js                 the status page
//! GET    /healthz /readyz /metrics /openapi.json
//! ```
//!
//! The API sees the runtime only through [`mmt_core::control::JobControl`], so
//! it runs (and is tested) over any implementation of it.

pub mod auth;
pub mod config;
pub mod error;
pub mod jobs;
pub mod openapi;
pub mod ops;
pub mod server;
pub mod state;
pub mod views;
pub mod webhook;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::get;
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

pub use config::{ApiConfig, TlsFiles};
pub use server::{serve, ServeError};
pub use state::AppState;

/// Room for the multipart envelope around an upload of the maximum size.
const MULTIPART_OVERHEAD_BYTES: usize = 64 * 1024;

/// The API's routes and middleware.
pub fn router(state: AppState) -> Router {
    let body_limit = state
        .config
        .max_upload_bytes
        .saturating_add(MULTIPART_OVERHEAD_BYTES);
    let timeout = state.config.request_timeout;
    Router::new()
        .route("/v1/jobs", get(jobs::list_jobs).post(jobs::submit))
        .route("/v1/jobs/{id}", get(jobs::get_job).delete(jobs::delete_job))
        .route("/v1/jobs/{id}/transcript", get(jobs::get_transcript))
        .route("/v1/status", get(ops::status))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi_json))
        .route("/", get(ops::status_page))
        .route("/status.js", get(ops::status_script))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            ops::record_duration,
        ))
        // Enforced by the body extractors (multipart, JSON) as the body
        // streams in; tower-http's layer would hide the cause from them.
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        // A bug in a handler answers 500 (as a problem document) instead of
        // dropping the connection.
        .layer(CatchPanicLayer::new())
        .layer(middleware::from_fn(error::problem_for_every_error))
        .with_state(state)
}
