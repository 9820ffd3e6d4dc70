//! The show routes, roles and error cases of API.md, against a real Postgres event store.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_creates_a_show_and_anyone_reads_it() {
    let (app, store) = app().await;
    let created = send(&app, post_show(Some(ADMIN), valid_show().to_string())).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["seat_count"], 210);
    let show_id = created.body["show_id"].as_str().unwrap().to_string();
    assert_eq!(
        created.location.as_deref(),
        Some(format!("/shows/{show_id}").as_str())
    );

    // The API only appended the show's event.
    let stream = store
        .read_stream(&format!("show-{show_id}"), 0)
        .await
        .unwrap();
    assert_eq!(stream.len(), 1);
    assert_eq!(stream[0].event_type, "show.scheduled.v1");

    let read = send(
        &app,
        Request::get(format!("/shows/{show_id}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["show_id"], show_id.as_str());
    assert_eq!(read.body["name"], "Flash Sale Live");
    assert_eq!(read.body["currency"], "EUR");
    assert_eq!(read.body["seat_count"], 210);
    assert_eq!(read.body["starts_at"], "2027-03-01T20:00:00Z");
    assert_eq!(read.body["sections"][1]["name"], "VIP");
    assert_eq!(read.body["sections"][1]["price_cents"], 12000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_show_needs_the_admin_token() {
    let (app, store) = app().await;
    let missing = send(&app, post_show(None, valid_show().to_string())).await;
    assert_problem(&missing, StatusCode::UNAUTHORIZED, "bearer");
    let wrong = send(
        &app,
        post_show(Some("not-the-token"), valid_show().to_string()),
    )
    .await;
    assert_problem(&wrong, StatusCode::FORBIDDEN, "token");
    assert_eq!(store.head().await.unwrap().0, 0, "nothing was appended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_precise_4xx_and_appends_nothing() {
    let (app, store) = app().await;
    let malformed = send(&app, post_show(Some(ADMIN), "{\"name\": ")).await;
    assert_problem(&malformed, StatusCode::BAD_REQUEST, "malformed JSON");

    let not_json = Request::post("/shows")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(valid_show().to_string()))
        .unwrap();
    assert_problem(
        &send(&app, not_json).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "JSON",
    );

    let mut missing_field = valid_show();
    missing_field.as_object_mut().unwrap().remove("sections");
    let answer = send(&app, post_show(Some(ADMIN), missing_field.to_string())).await;
    assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, "sections");

    let mut unknown_currency = valid_show();
    unknown_currency["currency"] = json!("XYZ");
    let answer = send(&app, post_show(Some(ADMIN), unknown_currency.to_string())).await;
    assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, "XYZ");

    let mut no_sections = valid_show();
    no_sections["sections"] = json!([]);
    let answer = send(&app, post_show(Some(ADMIN), no_sections.to_string())).await;
    assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, "section");

    let mut bad_date = valid_show();
    bad_date["starts_at"] = json!("next tuesday");
    let answer = send(&app, post_show(Some(ADMIN), bad_date.to_string())).await;
    assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, "starts_at");

    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(2 << 20));
    let answer = send(&app, post_show(Some(ADMIN), huge)).await;
    assert_problem(&answer, StatusCode::PAYLOAD_TOO_LARGE, "1048576");

    assert_eq!(store.head().await.unwrap().0, 0, "nothing was appended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_show_ids() {
    let (app, _store) = app().await;
    let unknown = uuid::Uuid::now_v7();
    let answer = send(
        &app,
        Request::get(format!("/shows/{unknown}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_problem(&answer, StatusCode::NOT_FOUND, &unknown.to_string());
    let answer = send(
        &app,
        Request::get("/shows/not-an-id")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_problem(&answer, StatusCode::BAD_REQUEST, "not-an-id");
    let answer = send(
        &app,
        Request::get("/no/such/route").body(Body::empty()).unwrap(),
    )
    .await;
    assert_problem(&answer, StatusCode::NOT_FOUND, "route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let (app, store) = app().await;
    let alive = send(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(alive.status, StatusCode::OK);
    let ready = send(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["log_head"], 0);
    // A store that no longer writes still reads: readiness follows the database.
    store.close().await;
    let ready = send(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(ready.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seat_map_shows_sold_seats_and_only_the_admin_sees_who_bought_them() {
    let (app, store) = app().await;
    let mut small = valid_show();
    small["sections"] = json!([{"name": "A", "rows": 2, "seats_per_row": 3, "price_cents": 100}]);
    let created = send(&app, post_show(Some(ADMIN), small.to_string())).await;
    let show_id: domain::ShowId = created.body["show_id"].as_str().unwrap().parse().unwrap();

    // Sell A-2-3 as seat-lock will: decide on the show stream and append at its version.
    let recorded = store.read_stream(&show_id.stream_id(), 0).await.unwrap();
    let state = recorded.iter().fold(None, |state, event| {
        match infra::stored_events::decode(event).unwrap() {
            domain::DomainEvent::Show(event) => domain::show::evolve(state, &event),
            other => panic!("unexpected {other:?}"),
        }
    });
    let buyer = domain::BookingId::new();
    let sold = domain::show::decide(
        &state,
        domain::ShowCommand::SellSeats {
            booking_id: buyer,
            seats: ["A-2-3".parse().unwrap()].into(),
        },
    )
    .unwrap();
    let events = domain::EventEnvelope::fresh(sold)
        .iter()
        .map(|e| infra::stored_events::to_new_event(e, chrono::Utc::now()).unwrap())
        .collect();
    store
        .append(event_store::StreamAppend::new(
            show_id.stream_id(),
            event_store::ExpectedVersion::Exact(1),
            events,
        ))
        .await
        .unwrap();

    let path = format!("/shows/{show_id}/seats");
    let public = send(&app, Request::get(&path).body(Body::empty()).unwrap()).await;
    assert_eq!(public.status, StatusCode::OK);
    let seats = public.body["seats"].as_array().unwrap();
    assert_eq!(seats.len(), 6);
    assert_eq!(seats[0]["seat"], "A-1-1");
    let sold: Vec<&Value> = seats.iter().filter(|s| s["state"] == "sold").collect();
    assert_eq!(sold.len(), 1);
    assert_eq!(sold[0]["seat"], "A-2-3");
    assert!(
        seats.iter().all(|s| s.get("booking_id").is_none()),
        "no booking ids in public"
    );

    let admin = Request::get(&path)
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let admin = send(&app, admin).await;
    let seats = admin.body["seats"].as_array().unwrap();
    let sold = seats.iter().find(|s| s["seat"] == "A-2-3").unwrap();
    assert_eq!(sold["booking_id"], buyer.to_string().as_str());

    let wrong = Request::get(&path)
        .header(header::AUTHORIZATION, "Bearer guess")
        .body(Body::empty())
        .unwrap();
    assert_problem(&send(&app, wrong).await, StatusCode::FORBIDDEN, "token");
    let unknown = format!("/shows/{}/seats", uuid::Uuid::now_v7());
    let answer = send(&app, Request::get(unknown).body(Body::empty()).unwrap()).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}
