//! The API's one error type: every failure answers as `application/problem+json`
//! (RFC 9457) with a status and a PHI-free detail; internals are logged, never sent.

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mmt_core::control::ControlError;
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No valid bearer token. Never says which check failed.
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("the token's roles do not allow this")]
    Forbidden,
    #[error("no such job")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the upload is larger than {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("too many requests for this tenant; retry in {retry_after_seconds} s")]
    TooManyRequests { retry_after_seconds: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// 503 with `Retry-After`: the service is saturated (the job queue is full).
    #[error("{detail}")]
    Overloaded {
        detail: String,
        retry_after_seconds: u64,
    },
    /// 429 with `Retry-After`: the tenant holds its share of the job queue.
    #[error("{detail}")]
    TenantShareFull {
        detail: String,
        retry_after_seconds: u64,
    },
    /// A bug or a corrupt record: logged with `reason`, answered without it.
    #[error("internal error")]
    Internal { reason: String },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } | Self::TenantShareFull { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Unavailable(_) | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn internal(reason: impl std::fmt::Display) -> Self {
        Self::Internal {
            reason: reason.to_string(),
        }
    }

    /// Seconds a client should wait before retrying, for the answers that say so.
    fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            Self::TooManyRequests {
                retry_after_seconds,
            }
            | Self::Overloaded {
                retry_after_seconds,
                ..
            }
            | Self::TenantShareFull {
                retry_after_seconds,
                ..
            } => Some(*retry_after_seconds),
            _ => None,
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(err: ControlError) -> Self {
        match err {
            ControlError::IdempotencyConflict => Self::Conflict(err.to_string()),
            ControlError::Conflict(detail) => Self::Conflict(detail),
            ControlError::Invalid(detail) => Self::Unprocessable(detail),
            ControlError::Unavailable(detail) => Self::Unavailable(detail),
            ControlError::QueueFull {
                retry_after_seconds,
            } => Self::Overloaded {
                detail: err.to_string(),
                retry_after_seconds,
            },
            ControlError::TenantShareFull {
                retry_after_seconds,
            } => Self::TenantShareFull {
                detail: err.to_string(),
                retry_after_seconds,
            },
            ControlError::Internal(reason) => Self::Internal { reason },
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank`: the status says it).
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    pub status: u16,
    /// What went wrong, without PHI or internals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: Option<String>) -> Self {
        Self {
            kind: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
        }
    }

    pub fn into_response_with(self, status: StatusCode) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Internal { reason } = &self {
            tracing::error!(%reason, "request failed");
        }
        let detail = match &self {
            Self::Internal { .. } => None,
            other => Some(other.to_string()),
        };
        let mut response = Problem::new(status, detail).into_response_with(status);
        let headers = response.headers_mut();
        if matches!(self, Self::Unauthorized) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after_seconds() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Turns every other error response (axum's extractor rejections, tower-http's
/// 408 and 413, an unknown route or method) into a problem document, so
/// clients parse one error shape. The original body may quote the request; it
/// is dropped.
pub async fn problem_for_every_error(request: Request<Body>, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    // A problem document, or a handler's own JSON answer (the readiness
    // report's 503), is kept: only axum's and tower-http's plain-text errors
    // are replaced.
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| {
            let value = value.as_bytes();
            value.starts_with(PROBLEM_JSON.as_bytes()) || value.starts_with(b"application/json")
        });
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let detail = match status {
        StatusCode::PAYLOAD_TOO_LARGE => Some("the request body is too large".to_owned()),
        StatusCode::REQUEST_TIMEOUT => Some("the request took too long".to_owned()),
        StatusCode::NOT_FOUND => Some("no such resource".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => Some("method not allowed here".to_owned()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Some("unsupported content type".to_owned()),
        _ if status.is_client_error() => Some("the request is malformed".to_owned()),
        _ => None,
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let problem = Problem::new(status, detail).into_response_with(status);
    let (problem_parts, body) = problem.into_parts();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    drop(problem_parts);
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_send_no_detail() {
        let response = ApiError::internal("row 7 has a corrupt transcript").into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE).unwrap(),
            PROBLEM_JSON
        );
    }

    #[test]
    fn unauthorized_asks_for_a_bearer_token() {
        let response = ApiError::Unauthorized.into_response();
        assert_eq!(
            response.headers().get(header::WWW_AUTHENTICATE).unwrap(),
            "Bearer"
        );
    }

    #[test]
    fn rate_limited_answers_carry_retry_after() {
        let response = ApiError::TooManyRequests {
            retry_after_seconds: 2,
        }
        .into_response();
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "2");
    }

    #[test]
    fn a_full_queue_answers_503_and_a_full_tenant_share_429_both_with_retry_after() {
        let full = ApiError::from(ControlError::QueueFull {
            retry_after_seconds: 30,
        })
        .into_response();
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(full.headers().get(header::RETRY_AFTER).unwrap(), "30");
        let share = ApiError::from(ControlError::TenantShareFull {
            retry_after_seconds: 7,
        })
        .into_response();
        assert_eq!(share.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(share.headers().get(header::RETRY_AFTER).unwrap(), "7");
    }
}
