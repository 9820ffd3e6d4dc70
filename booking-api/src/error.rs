//! Every failure of the API as an `application/problem+json` document (RFC 9457) with `type`,
//! `title`, `status` and `detail`. Bad input never becomes a 5xx; a 5xx never carries internals
//! beyond a one-line reason (the details go to the log).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::{DomainError, ErrorKind};
use event_store::StoreError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing bearer token")]
    Unauthorized,
    #[error("the token does not grant this")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("this route does not take that method")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("the body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("the service is unavailable: {0}")]
    Unavailable(String),
    /// Too many commands at once: the client should retry after `Retry-After`.
    #[error("overloaded: {0}; retry shortly")]
    Overloaded(String),
    #[error("internal error")]
    Internal(String),
}

/// An error answer (RFC 9457 problem details).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A stable URI per kind of failure.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// The HTTP reason phrase.
    pub title: String,
    pub status: u16,
    /// What exactly was wrong, for a human.
    pub detail: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) | ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable problem type per kind of failure, under the project's own namespace.
    fn problem_type(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "https://zingqueue.dev/problems/bad-request",
            ApiError::Unauthorized => "https://zingqueue.dev/problems/unauthorized",
            ApiError::Forbidden => "https://zingqueue.dev/problems/forbidden",
            ApiError::NotFound(_) => "https://zingqueue.dev/problems/not-found",
            ApiError::MethodNotAllowed => "https://zingqueue.dev/problems/method-not-allowed",
            ApiError::Conflict(_) => "https://zingqueue.dev/problems/conflict",
            ApiError::PayloadTooLarge { .. } => "https://zingqueue.dev/problems/too-large",
            ApiError::UnsupportedMediaType(_) => "https://zingqueue.dev/problems/not-json",
            ApiError::Unprocessable(_) => "https://zingqueue.dev/problems/invalid",
            ApiError::Unavailable(_) => "https://zingqueue.dev/problems/unavailable",
            ApiError::Overloaded(_) => "https://zingqueue.dev/problems/overloaded",
            ApiError::Internal(_) => "https://zingqueue.dev/problems/internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ApiError::Internal(reason) => {
                tracing::error!(%reason, "internal error");
                "an internal error occurred; it has been logged".to_string()
            }
            other => other.to_string(),
        };
        let problem = Problem {
            problem_type: self.problem_type().to_string(),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> ApiError {
        match error.kind() {
            ErrorKind::Invalid => ApiError::Unprocessable(error.to_string()),
            ErrorKind::NotFound => ApiError::NotFound(error.to_string()),
            ErrorKind::Conflict => ApiError::Conflict(error.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::Conflict { .. } => ApiError::Conflict(error.to_string()),
            error if error.is_transient() => ApiError::Unavailable(error.to_string()),
            StoreError::Closed => ApiError::Unavailable("shutting down".into()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}
