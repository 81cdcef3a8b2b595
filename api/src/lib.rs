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
pub mod metrics_server;
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
        .layer(middleware::map_request(mark_secret_headers_sensitive))
        .with_state(state)
}

/// Marks every credential header (Authorization, Cookie, X-Api-Key…: see
/// [`mmt_core::redact::is_secret_header`]) sensitive, so that the `Debug` of
/// the request or its headers, in any log line or panic message, shows
/// `Sensitive` instead of the value.
async fn mark_secret_headers_sensitive(
    mut request: axum::extract::Request,
) -> axum::extract::Request {
    for (name, value) in request.headers_mut().iter_mut() {
        if mmt_core::redact::is_secret_header(name.as_str()) {
            value.set_sensitive(true);
        }
    }
    request
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn credential_headers_print_as_sensitive() {
        let request = axum::http::Request::builder()
            .header("Authorization", "Bearer s3cr3t-t0ken")
            .header("X-Api-Key", "k3y-value")
            .header("Cookie", "session=c00kie")
            .header("Content-Type", "audio/wav")
            .body(axum::body::Body::empty())
            .unwrap();
        let request = super::mark_secret_headers_sensitive(request).await;
        let shown = format!("{request:?}");
        for secret in ["s3cr3t-t0ken", "k3y-value", "c00kie"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("audio/wav"), "{shown}");
        assert_eq!(
            request.headers()["authorization"],
            "Bearer s3cr3t-t0ken",
            "the value itself is untouched"
        );
    }
}
