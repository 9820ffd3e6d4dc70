//! `GET /openapi.json` describes the routes as the router really serves them: every documented
//! operation is routed, every other method on a documented path is a 405, and the documented
//! answers carry the statuses the handlers give.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_exactly_the_routed_operations() {
    let (app, _store) = app().await;
    let answer = send(&app, request("GET", "/openapi.json", None, None)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.content_type.starts_with("application/json"));
    let document = answer.body;
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();

    let mut documented = Vec::new();
    for (path, item) in paths {
        // A syntactically valid id for every path parameter.
        let uri = path
            .replace("{show_id}", &uuid::Uuid::now_v7().to_string())
            .replace("{booking_id}", &uuid::Uuid::now_v7().to_string());
        for method in METHODS {
            let answer = send(&app, request(&method.to_uppercase(), &uri, None, None)).await;
            let routed = !(answer.status == StatusCode::METHOD_NOT_ALLOWED
                || (answer.status == StatusCode::NOT_FOUND
                    && answer.body["detail"] == "no such route"));
            assert_eq!(
                item.get(method).is_some(),
                routed,
                "{method} {path}: documented and routed must agree ({:?})",
                answer.body
            );
            if item.get(method).is_some() {
                documented.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        [
            "DELETE /bookings/{booking_id}",
            "GET /admin/dead-letters",
            "GET /admin/dead-letters/{id}",
            "GET /admin/replays/{replay_id}",
            "GET /bookings/{booking_id}",
            "GET /bookings/{booking_id}/events",
            "GET /customers/{customer_id}/bookings",
            "GET /dashboard",
            "GET /dashboard/events",
            "GET /dashboard/uplot.css",
            "GET /dashboard/uplot.js",
            "GET /healthz",
            "GET /metrics",
            "GET /openapi.json",
            "GET /readyz",
            "GET /shows/{show_id}",
            "GET /shows/{show_id}/seats",
            "GET /shows/{show_id}/seats/events",
            "GET /shows/{show_id}/stats",
            "POST /admin/dead-letters/{id}/redrive",
            "POST /admin/replays",
            "POST /bookings",
            "POST /shows",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_answers_are_the_ones_the_handlers_give() {
    let (app, _store) = app().await;
    let document = send(&app, request("GET", "/openapi.json", None, None))
        .await
        .body;
    let statuses = |method: &str, path: &str| -> Vec<String> {
        let responses = &document["paths"][path][method]["responses"];
        responses.as_object().unwrap().keys().cloned().collect()
    };
    for (method, path, expected) in [
        (
            "post",
            "/bookings",
            &["202", "400", "404", "409", "413", "415", "422", "503"][..],
        ),
        (
            "get",
            "/bookings/{booking_id}",
            &["200", "400", "401", "403", "404", "503"],
        ),
        (
            "delete",
            "/bookings/{booking_id}",
            &["202", "400", "401", "403", "404", "409", "503"],
        ),
        (
            "post",
            "/shows",
            &["201", "400", "401", "403", "413", "415", "422"],
        ),
    ] {
        let mut documented = statuses(method, path);
        documented.sort();
        assert_eq!(documented, expected, "{method} {path}");
    }
    // Errors are documented as problem documents; the booking answer's fields are all there.
    let problem = &document["paths"]["/bookings"]["post"]["responses"]["422"]["content"];
    assert!(
        problem.get("application/problem+json").is_some(),
        "{problem}"
    );
    let accepted = &document["components"]["schemas"]["BookingAccepted"]["properties"];
    for field in [
        "booking_id",
        "status",
        "status_url",
        "access_token",
        "log_position",
    ] {
        assert!(accepted.get(field).is_some(), "BookingAccepted.{field}");
    }
    let schemes: &Value = &document["components"]["securitySchemes"]["bearer"];
    assert_eq!(schemes["scheme"], "bearer");
}
