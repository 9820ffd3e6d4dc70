//! `GET /metrics` (the Prometheus text format of everything this process records, see
//! `infra::metrics`) and the HTTP metrics every route feeds: `zq_http_requests_total{route,
//! method,status}` and `zq_http_request_duration_seconds{route,method}`, labelled by the route
//! template (`/bookings/{booking_id}`), never by the concrete path (bounded cardinality).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Everything this process records, in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Prometheus text format (version 0.0.4)", body = String, content_type = "text/plain"),
        (status = 503, description = "Another metrics recorder owns this process", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn metrics() -> Response {
    match infra::metrics::install() {
        Some(metrics) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            metrics.render(),
        )
            .into_response(),
        None => ApiError::Unavailable(
            "another metrics recorder was installed in this process first".into(),
        )
        .into_response(),
    }
}

/// Count and time every request of a matched route.
pub async fn record_http(matched: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let route = matched.map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::counter!("zq_http_requests_total",
        "route" => route.clone(),
        "method" => method.clone(),
        "status" => response.status().as_u16().to_string())
    .increment(1);
    metrics::histogram!("zq_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}
