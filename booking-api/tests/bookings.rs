//! The booking routes of API.md against a real Postgres event store: requests, the access
//! token, cancellation, every error case, `Idempotency-Key` (repeat, other body, in flight, the
//! same group-commit batch, expiry) and the bound on commands in flight.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use axum::http::StatusCode;
use booking_api::router;
use chrono::{Duration, Utc};
use common::*;
use domain::booking::{self, BookingAccess, BookingCommand, IdempotencyRecord, RequestBooking};
use domain::{BookingId, Customer, EventEnvelope, Money};
use event_store::{EventStore, ExpectedVersion, StreamAppend};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn booking_body(show_id: &str, seats: &[&str], customer_id: &str) -> Value {
    json!({
        "show_id": show_id,
        "seats": seats,
        "customer": {"id": customer_id, "email": "ada@example.com", "name": "Ada Lovelace"},
        "payment_method": "sim_ok"
    })
}

async fn post_booking(app: &axum::Router, body: &Value, key: Option<&str>) -> Answer {
    let mut request = request("POST", "/bookings", None, Some(body));
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("idempotency-key", key.parse().unwrap());
    }
    send(app, request).await
}

async fn book(app: &axum::Router, show_id: &str, seats: &[&str]) -> (String, String) {
    let answer = post_booking(app, &booking_body(show_id, seats, "c-1"), None).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
    (
        answer.body["booking_id"].as_str().unwrap().to_string(),
        answer.body["access_token"].as_str().unwrap().to_string(),
    )
}

async fn stream(store: &Arc<dyn EventStore>, booking_id: &str) -> Vec<event_store::RecordedEvent> {
    store
        .read_stream(&format!("booking-{booking_id}"), 0)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_is_accepted_and_its_holder_reads_it_back() {
    let (app, store) = app().await;
    let show_id = create_show(&app).await;
    let answer = post_booking(
        &app,
        &booking_body(&show_id, &["A-1-2", "A-1-1"], "c-1"),
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
    let booking_id = answer.body["booking_id"].as_str().unwrap();
    let token = answer.body["access_token"].as_str().unwrap();
    assert_eq!(answer.body["status"], "requested");
    assert_eq!(answer.body["status_url"], format!("/bookings/{booking_id}"));
    assert_eq!(
        answer.location.as_deref(),
        Some(format!("/bookings/{booking_id}").as_str())
    );

    // One event, at the position the answer names, holding the token's hash and not the token.
    let recorded = stream(&store, booking_id).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].event_type, "booking.requested.v1");
    assert_eq!(answer.body["log_position"], recorded[0].position.0);
    let data: Value = serde_json::from_str(&recorded[0].data).unwrap();
    assert_eq!(
        data["access"]["access_token_sha256"],
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    assert!(!recorded[0].data.contains(token));
    assert_eq!(
        recorded[0].metadata.partition_key.as_deref(),
        Some(show_id.as_str())
    );

    let read = send(
        &app,
        request("GET", &format!("/bookings/{booking_id}"), Some(token), None),
    )
    .await;
    assert_eq!(read.status, StatusCode::OK, "{:?}", read.body);
    assert_eq!(read.body["booking_id"], booking_id);
    assert_eq!(read.body["show_id"], show_id.as_str());
    assert_eq!(read.body["seats"], json!(["A-1-1", "A-1-2"]));
    assert_eq!(read.body["customer"]["email"], "ada@example.com");
    assert_eq!(read.body["status"], "requested");
    assert_eq!(read.body["amount_cents"], 9000);
    assert_eq!(read.body["currency"], "EUR");
    assert_eq!(read.body["refund_status"], "none");
    assert_eq!(read.body["timeline"][0]["type"], "booking.requested.v1");
    assert_eq!(read.body["timeline"].as_array().unwrap().len(), 1);

    // The admin reads it too.
    let by_admin = send(
        &app,
        request("GET", &format!("/bookings/{booking_id}"), Some(ADMIN), None),
    )
    .await;
    assert_eq!(by_admin.status, StatusCode::OK);
    assert_eq!(by_admin.body["booking_id"], booking_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_holder_or_the_admin_reads_a_booking() {
    let (app, _store) = app().await;
    let show_id = create_show(&app).await;
    let (booking_id, _token) = book(&app, &show_id, &["A-1-1"]).await;
    let (_other_booking, other_token) = book(&app, &show_id, &["A-1-2"]).await;
    let uri = format!("/bookings/{booking_id}");

    let answer = send(&app, request("GET", &uri, None, None)).await;
    assert_problem(&answer, StatusCode::UNAUTHORIZED, "bearer");
    let answer = send(&app, request("GET", &uri, Some(&other_token), None)).await;
    assert_problem(&answer, StatusCode::FORBIDDEN, "token");
    let answer = send(&app, request("GET", &uri, Some("zqb_guess"), None)).await;
    assert_problem(&answer, StatusCode::FORBIDDEN, "token");
    let unknown = format!("/bookings/{}", BookingId::new());
    let answer = send(&app, request("GET", &unknown, Some(ADMIN), None)).await;
    assert_problem(&answer, StatusCode::NOT_FOUND, "no booking");
    let answer = send(
        &app,
        request("GET", "/bookings/not-a-uuid", Some(ADMIN), None),
    )
    .await;
    assert_problem(&answer, StatusCode::BAD_REQUEST, "not a booking id");
    let answer = send(&app, request("PUT", &uri, Some(ADMIN), None)).await;
    assert_problem(&answer, StatusCode::METHOD_NOT_ALLOWED, "method");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_cancels_once_and_a_finished_booking_is_a_conflict() {
    let (app, store) = app().await;
    let show_id = create_show(&app).await;
    let (booking_id, token) = book(&app, &show_id, &["A-1-1"]).await;
    let (other_id, other_token) = book(&app, &show_id, &["A-1-2"]).await;
    let uri = format!("/bookings/{booking_id}");

    let answer = send(&app, request("DELETE", &uri, None, None)).await;
    assert_problem(&answer, StatusCode::UNAUTHORIZED, "bearer");
    let answer = send(&app, request("DELETE", &uri, Some(&other_token), None)).await;
    assert_problem(&answer, StatusCode::FORBIDDEN, "token");
    assert_eq!(
        stream(&store, &booking_id).await.len(),
        1,
        "a refused cancel appends nothing"
    );

    let cancelled = send(&app, request("DELETE", &uri, Some(&token), None)).await;
    assert_eq!(
        cancelled.status,
        StatusCode::ACCEPTED,
        "{:?}",
        cancelled.body
    );
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(cancelled.body["refund_status"], "none");
    let recorded = stream(&store, &booking_id).await;
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[1].event_type, "booking.cancelled.v1");
    assert_eq!(cancelled.body["log_position"], recorded[1].position.0);
    assert!(
        recorded[1].data.contains("\"holder\""),
        "{}",
        recorded[1].data
    );

    let again = send(&app, request("DELETE", &uri, Some(&token), None)).await;
    assert_problem(&again, StatusCode::CONFLICT, "cancelled");
    assert_eq!(stream(&store, &booking_id).await.len(), 2);
    let read = send(&app, request("GET", &uri, Some(&token), None)).await;
    assert_eq!(read.body["status"], "cancelled");
    assert_eq!(read.body["timeline"][1]["type"], "booking.cancelled.v1");

    // The admin cancels anyone's booking.
    let by_admin = send(
        &app,
        request(
            "DELETE",
            &format!("/bookings/{other_id}"),
            Some(ADMIN),
            None,
        ),
    )
    .await;
    assert_eq!(by_admin.status, StatusCode::ACCEPTED);
    assert!(
        stream(&store, &other_id).await[1]
            .data
            .contains("\"admin\"")
    );
    let unknown = format!("/bookings/{}", BookingId::new());
    let answer = send(&app, request("DELETE", &unknown, Some(ADMIN), None)).await;
    assert_problem(&answer, StatusCode::NOT_FOUND, "no booking");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_paid_booking_requests_its_refund() {
    let (app, store) = app().await;
    let show_id = create_show(&app).await;
    let (booking_id, token) = book(&app, &show_id, &["A-1-1"]).await;
    // What seat-lock and payment would append: the seats held, then the money taken.
    let id: BookingId = booking_id.parse().unwrap();
    let mut state = None;
    for event in stream(&store, &booking_id).await {
        let domain::DomainEvent::Booking(event) = infra::stored_events::decode(&event).unwrap()
        else {
            unreachable!()
        };
        state = booking::evolve(state, &event);
    }
    for (version, command) in (1..).zip([
        BookingCommand::HoldSeats {
            expires_at: Utc::now() + Duration::minutes(10),
        },
        BookingCommand::RecordPayment {
            charge_id: "ch_1".into(),
            amount: state.as_ref().unwrap().amount(),
        },
    ]) {
        let events = booking::decide(&state, command).unwrap();
        state = events.iter().fold(state, booking::evolve);
        append(&store, id, version, events).await;
    }

    let cancelled = send(
        &app,
        request(
            "DELETE",
            &format!("/bookings/{booking_id}"),
            Some(&token),
            None,
        ),
    )
    .await;
    assert_eq!(
        cancelled.status,
        StatusCode::ACCEPTED,
        "{:?}",
        cancelled.body
    );
    assert_eq!(cancelled.body["refund_status"], "pending");
    let types: Vec<String> = stream(&store, &booking_id)
        .await
        .into_iter()
        .map(|event| event.event_type)
        .collect();
    assert_eq!(
        &types[3..],
        ["booking.cancelled.v1", "booking.refund_requested.v1"]
    );
    let read = send(
        &app,
        request(
            "GET",
            &format!("/bookings/{booking_id}"),
            Some(&token),
            None,
        ),
    )
    .await;
    assert_eq!(read.body["refund_status"], "pending");
}

async fn append(
    store: &Arc<dyn EventStore>,
    booking_id: BookingId,
    version: u64,
    events: Vec<domain::BookingEvent>,
) {
    append_envelopes(store, booking_id, version, EventEnvelope::fresh(events)).await;
}

async fn append_envelopes(
    store: &Arc<dyn EventStore>,
    booking_id: BookingId,
    version: u64,
    envelopes: Vec<EventEnvelope>,
) {
    let events = envelopes
        .iter()
        .map(|envelope| infra::stored_events::to_new_event(envelope, Utc::now()).unwrap())
        .collect();
    let expected = if version == 0 {
        ExpectedVersion::NoStream
    } else {
        ExpectedVersion::Exact(version)
    };
    store
        .append(StreamAppend::new(booking_id.stream_id(), expected, events))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_booking_requests_get_a_precise_4xx_and_append_nothing() {
    let (app, store) = app().await;
    let show_id = create_show(&app).await;
    let head = store.head().await.unwrap();
    let valid = booking_body(&show_id, &["A-1-1"], "c-1");
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            with("show_id", json!(uuid::Uuid::now_v7().to_string())),
            StatusCode::NOT_FOUND,
            "no show",
        ),
        (
            with("show_id", json!("show-1")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "not a show id",
        ),
        (
            with("seats", json!(["Z-1-1"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Z-1-1",
        ),
        (
            with("seats", json!(["A-99-1"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "A-99-1",
        ),
        (
            with("seats", json!(["A-1-1", "A-1-1"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "A-1-1",
        ),
        (
            with("seats", json!([])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "seat",
        ),
        (
            with(
                "seats",
                json!([
                    "A-1-1", "A-1-2", "A-1-3", "A-1-4", "A-1-5", "A-1-6", "A-1-7", "A-1-8",
                    "A-1-9", "A-1-10", "A-1-11"
                ]),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "10",
        ),
        (
            with("seats", json!(["A_1_1"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "A_1_1",
        ),
        (
            with("seats", json!("A-1-1")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "seats",
        ),
        (
            with(
                "customer",
                json!({"id": "c-1", "email": "not-an-email", "name": "Ada"}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "email",
        ),
        (
            with(
                "customer",
                json!({"id": "", "email": "ada@example.com", "name": "Ada"}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "id",
        ),
        (
            with("customer", json!({"id": "c-1", "email": "ada@example.com"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            with("payment_method", json!("")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "payment_method",
        ),
        (
            with("surprise", json!(1)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "surprise",
        ),
        (
            json!([1, 2]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid booking request",
        ),
    ];
    for (body, status, detail) in cases {
        let answer = post_booking(&app, &body, None).await;
        assert_problem(&answer, status, detail);
    }

    let raw = |content_type: &str, body: Vec<u8>| {
        axum::http::Request::post("/bookings")
            .header("content-type", content_type)
            .body(axum::body::Body::from(body))
            .unwrap()
    };
    let answer = send(&app, raw("application/json", b"{\"show_id\": ".to_vec())).await;
    assert_problem(&answer, StatusCode::BAD_REQUEST, "malformed JSON");
    let answer = send(&app, raw("text/plain", valid.to_string().into_bytes())).await;
    assert_problem(&answer, StatusCode::UNSUPPORTED_MEDIA_TYPE, "JSON");
    let mut oversized = valid.clone();
    oversized["payment_method"] = json!("x".repeat(2 << 20));
    let answer = send(
        &app,
        raw("application/json", oversized.to_string().into_bytes()),
    )
    .await;
    assert_problem(&answer, StatusCode::PAYLOAD_TOO_LARGE, "bytes");
    let answer = post_booking(&app, &valid, Some(&"k".repeat(300))).await;
    assert_problem(&answer, StatusCode::BAD_REQUEST, "Idempotency-Key");

    assert_eq!(store.head().await.unwrap(), head, "nothing was appended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_and_body_get_the_same_answer_and_one_booking() {
    let (app, store) = app().await;
    let show_id = create_show(&app).await;
    let body = booking_body(&show_id, &["A-1-1", "A-1-2"], "c-1");
    let first = post_booking(&app, &body, Some("order-17")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{:?}", first.body);

    // The same body with its keys in another order is the same request.
    let reordered: Value = serde_json::from_str(&format!(
        r#"{{"payment_method": "sim_ok", "customer": {{"name": "Ada Lovelace", "email": "ada@example.com", "id": "c-1"}}, "seats": ["A-1-1", "A-1-2"], "show_id": "{show_id}"}}"#
    ))
    .unwrap();
    for repeat in [&body, &reordered] {
        let again = post_booking(&app, repeat, Some("order-17")).await;
        assert_eq!(again.status, StatusCode::ACCEPTED, "{:?}", again.body);
        assert_eq!(again.body, first.body, "the same answer, token included");
        assert_eq!(again.location, first.location);
    }
    let booking_id = first.body["booking_id"].as_str().unwrap();
    assert_eq!(stream(&store, booking_id).await.len(), 1);

    // The key reused with another body is refused and changes nothing.
    let other = booking_body(&show_id, &["A-1-3"], "c-1");
    let answer = post_booking(&app, &other, Some("order-17")).await;
    assert_problem(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "another request body",
    );
    assert_eq!(stream(&store, booking_id).await.len(), 1);

    // Keys are scoped to the customer: another customer's "order-17" is another booking.
    let bob = booking_body(&show_id, &["A-1-1", "A-1-2"], "c-2");
    let answer = post_booking(&app, &bob, Some("order-17")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert_ne!(answer.body["booking_id"], first.body["booking_id"]);

    // The answer's token works.
    let token = first.body["access_token"].as_str().unwrap();
    let read = send(
        &app,
        request("GET", &format!("/bookings/{booking_id}"), Some(token), None),
    )
    .await;
    assert_eq!(read.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_first_request_is_in_flight_is_a_conflict() {
    let (state, store) = state().await;
    let app = router(state.clone());
    let show_id = create_show(&app).await;
    let head = store.head().await.unwrap();
    let customer: domain::CustomerId = "c-1".parse().unwrap();
    // The first request with this key is being worked on.
    let in_flight = state.in_flight.claim(&customer, "order-18").unwrap();
    let body = booking_body(&show_id, &["A-1-1"], "c-1");
    let answer = post_booking(&app, &body, Some("order-18")).await;
    assert_problem(&answer, StatusCode::CONFLICT, "in flight");
    assert_eq!(store.head().await.unwrap(), head);
    drop(in_flight);
    let answer = post_booking(&app, &body, Some("order-18")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);

    // Many identical requests at once: each is the one booking's answer or a 409, never a
    // second booking.
    let body = booking_body(&show_id, &["A-2-1"], "c-1");
    let answers =
        futures::future::join_all((0..16).map(|_| post_booking(&app, &body, Some("order-19"))))
            .await;
    let accepted: HashSet<String> = answers
        .iter()
        .filter(|answer| answer.status == StatusCode::ACCEPTED)
        .map(|answer| answer.body.to_string())
        .collect();
    assert_eq!(accepted.len(), 1, "one answer for one key");
    assert!(
        answers
            .iter()
            .all(|a| a.status == StatusCode::ACCEPTED || a.status == StatusCode::CONFLICT)
    );
    let booking: Value = serde_json::from_str(accepted.iter().next().unwrap()).unwrap();
    assert_eq!(
        stream(&store, booking["booking_id"].as_str().unwrap())
            .await
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_that_reach_the_store_together_make_one_booking() {
    // API processes on one store (16, one request each): none knows the others' requests in
    // flight, so the repeats reach the store, often in one group-commit batch. The store keeps one booking and
    // every repeat gets its answer; the same key with another body gets 422.
    let (state, store) = state().await;
    let apps: Vec<axum::Router> = (0..16)
        .map(|_| {
            let mut separate = state.clone();
            separate.in_flight = Default::default();
            router(separate)
        })
        .collect();
    let show_id = create_show(&apps[0]).await;
    for round in 0..10 {
        let key = format!("round-{round}");
        let body = booking_body(&show_id, &["A-3-1"], "c-1");
        let answers =
            futures::future::join_all((0..16).map(|i| post_booking(&apps[i], &body, Some(&key))))
                .await;
        assert!(
            answers.iter().all(|a| a.status == StatusCode::ACCEPTED),
            "round {round}: {:?}",
            answers.iter().map(|a| &a.body).collect::<Vec<_>>()
        );
        let distinct: HashSet<String> = answers.iter().map(|a| a.body.to_string()).collect();
        assert_eq!(distinct.len(), 1, "round {round}: one answer");
        let booking_id = answers[0].body["booking_id"].as_str().unwrap();
        assert_eq!(stream(&store, booking_id).await.len(), 1);

        // Same key, two bodies at once: one wins, the other is told its body differs.
        let key = format!("split-{round}");
        let bodies = [
            booking_body(&show_id, &["A-4-1"], "c-1"),
            booking_body(&show_id, &["A-4-2"], "c-1"),
        ];
        let answers = futures::future::join_all(
            (0..2).map(|i| post_booking(&apps[i], &bodies[i], Some(&key))),
        )
        .await;
        let mut statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
        statuses.sort();
        assert_eq!(
            statuses,
            [202, 422],
            "round {round}: {:?}",
            answers.iter().map(|a| &a.body).collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_forgotten_after_24_hours() {
    let (app, store) = app().await;
    let show_id = create_show(&app).await;
    let body = booking_body(&show_id, &["A-1-1"], "c-1");
    // A booking made with the key 25 hours ago, as the API would have stored it.
    let customer = Customer::new("c-1", "ada@example.com", "Ada Lovelace").unwrap();
    let old_id = booking_api::idempotency::booking_id_for(&customer.id, "order-20", 0);
    let events = booking::decide(
        &None,
        BookingCommand::Request(RequestBooking {
            booking_id: old_id,
            show_id: show_id.parse().unwrap(),
            seats: ["A-1-1".parse().unwrap()].into(),
            customer,
            payment_method: Some("sim_ok".into()),
            amount: Money::new(4500, "EUR".parse().unwrap()),
            requested_at: Utc::now() - Duration::hours(25),
            access: BookingAccess {
                access_token_sha256: None,
                idempotency: Some(IdempotencyRecord {
                    key: "order-20".into(),
                    request_sha256: booking_api::idempotency::fingerprint(&body),
                }),
            },
        }),
    )
    .unwrap();
    append(&store, old_id, 0, events).await;

    let fresh = post_booking(&app, &body, Some("order-20")).await;
    assert_eq!(fresh.status, StatusCode::ACCEPTED);
    assert_ne!(
        fresh.body["booking_id"],
        old_id.to_string(),
        "a new booking"
    );
    // Within 24 hours of its new use, the key answers as before.
    let again = post_booking(&app, &body, Some("order-20")).await;
    assert_eq!(again.body, fresh.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_beyond_the_bound_are_refused_with_retry_after() {
    let (state, store) = state().await;
    let state = state.with_command_capacity(1);
    let app = router(state.clone());
    let show_id = create_show(&app).await;
    let head = store.head().await.unwrap();
    let held = state.admission.admit().unwrap();
    let body = booking_body(&show_id, &["A-1-1"], "c-1");
    let answer = post_booking(&app, &body, None).await;
    assert_problem(&answer, StatusCode::SERVICE_UNAVAILABLE, "retry");
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    assert_eq!(store.head().await.unwrap(), head);
    // Queries are not commands: they still answer.
    let read = send(
        &app,
        request("GET", &format!("/shows/{show_id}"), None, None),
    )
    .await;
    assert_eq!(read.status, StatusCode::OK);
    drop(held);
    assert_eq!(
        post_booking(&app, &body, None).await.status,
        StatusCode::ACCEPTED
    );
}
