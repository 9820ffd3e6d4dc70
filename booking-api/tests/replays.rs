//! The replay admin routes: a rebuild of the read models started over `POST /admin/replays`
//! and followed at its `Location` until it is done; what they refuse, and to whom.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use booking_api::auth::AdminToken;
use booking_api::{ApiState, router};
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_started_and_followed_over_the_admin_routes() {
    let database = testkit::postgres();
    let store = event_store::open(&database.url).await.unwrap();
    let db = projections::ReadModelDb::open(&database.url).await.unwrap();
    let live = projections::Projector::new(store.clone(), db.clone());
    let replays = projections::Replays::new(store.clone(), db.clone()).with_live_runner(&live);
    let state = ApiState::new(store.clone(), AdminToken::new(ADMIN)).with_read_models(db.clone());
    let without_replays = router(state.clone());
    let app = router(state.with_replays(replays));
    create_show(&app).await;
    let head = live.catch_up().await.unwrap();
    assert!(head.0 > 0);

    fn start(
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> axum::http::Request<axum::body::Body> {
        request("POST", "/admin/replays", token, Some(body))
    }
    let empty = json!({});
    assert_eq!(
        send(&app, start(None, &empty)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&app, start(Some("not-the-admin"), &empty))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let unknown = send(&app, start(Some(ADMIN), &json!({"projection": "nope"}))).await;
    assert_problem(&unknown, StatusCode::BAD_REQUEST, "unknown projection");
    let bad_name = json!({"until_position": 1, "snapshot": "no spaces"});
    let bad_name = send(&app, start(Some(ADMIN), &bad_name)).await;
    assert_problem(&bad_name, StatusCode::BAD_REQUEST, "snapshot name");
    let nowhere = send(&without_replays, start(Some(ADMIN), &empty)).await;
    assert_problem(&nowhere, StatusCode::SERVICE_UNAVAILABLE, "no projections");

    let started = send(&app, start(Some(ADMIN), &empty)).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{:?}", started.body);
    let location = started.location.clone().unwrap();
    assert_eq!(
        location,
        format!("/admin/replays/{}", started.body["id"].as_str().unwrap())
    );
    assert_eq!(started.body["into"], "live");
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let status = send(&app, request("GET", &location, Some(ADMIN), None)).await;
        assert_eq!(status.status, StatusCode::OK, "{:?}", status.body);
        if status.body["state"] == "done" {
            break status.body;
        }
        assert_ne!(status.body["state"], "failed", "{:?}", status.body);
        assert!(Instant::now() < deadline, "not done: {:?}", status.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done["position"], head.0);
    assert_eq!(
        send(&app, request("GET", &location, None, None))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let other = format!("/admin/replays/{}", uuid::Uuid::now_v7());
    let missing = send(&app, request("GET", &other, Some(ADMIN), None)).await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "no replay");
    let garbled = send(
        &app,
        request("GET", "/admin/replays/xyz", Some(ADMIN), None),
    )
    .await;
    assert_problem(&garbled, StatusCode::NOT_FOUND, "no replay");
}
