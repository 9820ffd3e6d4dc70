//! What the API tests share: an app on a real Postgres event store (from testkit), a request
//! runner and problem-document checks.
#![allow(dead_code)] // each test binary uses its own part of it

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use booking_api::auth::AdminToken;
use booking_api::{ApiState, router};
use serde_json::{Value, json};
use tower::ServiceExt;

pub const ADMIN: &str = "test-admin-token";

pub async fn app() -> (axum::Router, Arc<dyn event_store::EventStore>) {
    let (state, store) = state().await;
    (router(state), store)
}

/// The API's state on a fresh Postgres database.
pub async fn state() -> (ApiState, Arc<dyn event_store::EventStore>) {
    let database = testkit::postgres();
    let store = event_store::open(&database.url).await.unwrap();
    (ApiState::new(store.clone(), AdminToken::new(ADMIN)), store)
}

pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub location: Option<String>,
    pub retry_after: Option<String>,
    pub body: Value,
}

pub async fn send(app: &axum::Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let header_text = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &axum::http::HeaderValue| v.to_str().unwrap().to_string())
    };
    let content_type = header_text(header::CONTENT_TYPE).unwrap_or_default();
    let location = header_text(header::LOCATION);
    let retry_after = header_text(header::RETRY_AFTER);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        content_type,
        location,
        retry_after,
        body,
    }
}

pub fn post_show(token: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::post("/shows").header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(body.into()).unwrap()
}

pub fn valid_show() -> Value {
    json!({
        "name": "Flash Sale Live",
        "starts_at": "2027-03-01T20:00:00Z",
        "currency": "EUR",
        "sections": [
            {"name": "A", "rows": 10, "seats_per_row": 20, "price_cents": 4500},
            {"name": "VIP", "rows": 2, "seats_per_row": 5, "price_cents": 12000}
        ]
    })
}

pub fn assert_problem(answer: &Answer, status: StatusCode, detail_contains: &str) {
    assert_eq!(answer.status, status, "{:?}", answer.body);
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.body["status"], status.as_u16());
    assert!(answer.body["type"].is_string() && answer.body["title"].is_string());
    let detail = answer.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(detail_contains),
        "detail {detail:?} should mention {detail_contains:?}"
    );
}

/// Create the valid show as the admin; its id.
pub async fn create_show(app: &axum::Router) -> String {
    let created = send(app, post_show(Some(ADMIN), valid_show().to_string())).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    created.body["show_id"].as_str().unwrap().to_string()
}

/// A request with an optional bearer token and JSON body.
pub fn request(
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Request<Body> {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => request.body(Body::empty()).unwrap(),
    }
}
