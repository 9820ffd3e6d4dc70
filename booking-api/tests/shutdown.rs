//! Graceful shutdown over real TCP: requests in flight when shutdown starts are answered, and
//! what was answered 202 is exactly what the store holds: nothing half-written, nothing lost.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;

use booking_api::serve;
use common::*;
use event_store::Position;
use serde_json::{Value, json};

/// One HTTP/1.1 request on its own connection: the status and body, or `None` when the server
/// closed the connection without answering (it was shutting down and never read the request).
fn exchange(address: SocketAddr, body: &str) -> Option<(u16, Value)> {
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    let request = format!(
        "POST /bookings HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.get(9..12)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_shutdown_are_answered_and_every_202_is_stored() {
    let (state, store) = state().await;
    let show_id = create_show(&booking_api::router(state.clone())).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));

    let clients: Vec<_> = (0..64)
        .map(|client| {
            let body = json!({
                "show_id": show_id,
                "seats": [format!("A-{}-{}", client % 10 + 1, client % 20 + 1)],
                "customer": {"id": format!("c-{client}"), "email": "fan@example.com", "name": "Fan"},
            })
            .to_string();
            tokio::task::spawn_blocking(move || exchange(address, &body))
        })
        .collect();
    // Shut down while the requests arrive: wait until the first bookings are in the store.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.head().await.unwrap() < Position(3) {
        assert!(
            std::time::Instant::now() < deadline,
            "no booking was stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    stop.send(()).unwrap();

    let mut answered = BTreeSet::new();
    for client in clients {
        match client.await.unwrap() {
            Some((202, body)) => {
                answered.insert(body["booking_id"].as_str().unwrap().to_string());
            }
            Some((status, body)) => panic!("a request was answered {status}: {body}"),
            // Never read by the server: nothing of it may be in the store (checked below).
            None => {}
        }
    }
    server.await.unwrap().expect("the server stops cleanly");
    store.close().await;

    let stored: BTreeSet<String> = store
        .read_all(Position(0), 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.event_type == "booking.requested.v1")
        .map(|event| event.stream_id.trim_start_matches("booking-").to_string())
        .collect();
    assert!(!answered.is_empty());
    assert_eq!(answered, stored, "every 202 is stored, and nothing else");
}
