//! What the binary's tests share: running `zingqueue` as a process, reading what it prints,
//! stopping it as Ctrl-C would, and one HTTP/1.1 exchange.
#![allow(dead_code)] // each test binary uses its own part of it

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `zingqueue args` with exactly the configuration `env` gives (none from the test's own
/// environment).
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_zingqueue"));
    command
        .args(args)
        .env_remove("ZQ_DATABASE_URL")
        .env_remove("ZQ_DATA_DIR")
        .env_remove("ZQ_KAFKA_BROKERS")
        .env_remove("ZQ_ADMIN_TOKEN");
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

pub fn zingqueue(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().expect("the binary runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Start `zingqueue` in the background and read its stdout until a line starts with `prefix`;
/// returns the process and the rest of that line.
pub fn spawn_until(args: &[&str], env: &[(&str, &str)], prefix: &str) -> (Running, String) {
    let mut child = command(args, env)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let found = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.trim_start().strip_prefix(prefix) {
                    break Some(rest.trim().to_string());
                }
            }
            _ => break None,
        }
    };
    match found {
        Some(rest) => {
            // Keep draining stdout so the child never blocks on a full pipe; with
            // ZQ_TEST_SHOW_OUTPUT set, pass it on (shown for failing tests).
            let show = std::env::var_os("ZQ_TEST_SHOW_OUTPUT").is_some();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    if show {
                        eprintln!("[zingqueue] {line}");
                    }
                }
            });
            (Running(Some(child)), rest)
        }
        None => {
            let _ = child.kill();
            let status = child.wait();
            panic!("the process exited ({status:?}) without printing {prefix:?}");
        }
    }
}

/// A `zingqueue` process started by a test; killed if the test ends (or panics) without
/// [`interrupt`]ing it, so that no server outlives its test.
pub struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Ask the process to stop as Ctrl-C would, and wait (bounded) for a clean exit.
pub fn interrupt(mut running: Running) {
    // The child stays in `running`, so that a failed wait below still kills it on drop.
    let Some(child) = running.0.as_mut() else {
        return;
    };
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit after Ctrl-C: {status}");
            return;
        }
        assert!(Instant::now() < deadline, "no exit within 20 s of Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Running {
    /// Whether the process is still running (it has not exited on its own).
    pub fn is_running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }
}

/// One HTTP/1.1 exchange over a plain socket: (status, body).
pub fn http(
    address: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let (status, _, body) = http_with_head(address, method, path, token, body);
    (status, body)
}

/// One HTTP/1.1 exchange over a plain socket: (status, the head's lines lowercased, body).
pub fn http_with_head(
    address: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_ascii_lowercase(), body)
}

/// One exchange with a JSON body (none for `null`) and a JSON answer (`null` when it is not
/// JSON): (status, answer).
pub fn json_request(
    address: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (status, text) = http(address, method, path, token, &body);
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// A chunked HTTP/1.1 body, joined.
fn dechunk(mut body: &str) -> String {
    let mut joined = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        joined.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    joined
}

/// The value of the series `name` whose labels include `labels`, in a Prometheus text page.
pub fn series(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = labels
                .iter()
                .all(|(key, value)| series_labels.contains(&format!("{key}=\"{value}\"")));
            (series_name == name && wanted).then(|| value.parse().ok())?
        })
}

/// The first `snapshot` event of `GET /dashboard/events`.
pub fn first_dashboard_look(api: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(api).unwrap();
    write!(
        stream,
        "GET /dashboard/events HTTP/1.1\r\nHost: {api}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let lines = BufReader::new(stream).lines();
    for line in lines {
        let line = line.expect("the stream stays open");
        if let Some(data) = line.strip_prefix("data: ") {
            let look: serde_json::Value = serde_json::from_str(data).unwrap();
            if !look.is_null() {
                return look;
            }
        }
    }
    panic!("the dashboard stream ended without a look");
}

/// Whether a booking (as `GET /bookings/{id}` answers it) has ended.
pub fn is_terminal(booking: &serde_json::Value) -> bool {
    matches!(
        booking["status"].as_str(),
        Some("confirmed" | "rejected" | "expired" | "cancelled" | "failed")
    )
}

/// Every confirmed seat of a show has one owner; returns how many bookings are confirmed.
pub fn assert_no_seat_sold_twice(bookings: &[serde_json::Value]) -> usize {
    let mut owners: std::collections::HashMap<(String, String), String> = Default::default();
    let mut confirmed = 0;
    for booking in bookings.iter().filter(|b| b["status"] == "confirmed") {
        confirmed += 1;
        for seat in booking["seats"].as_array().expect("seats") {
            let key = (booking["show_id"].to_string(), seat.to_string());
            if let Some(previous) = owners.insert(key, booking["booking_id"].to_string()) {
                panic!(
                    "seat {seat} sold to {previous} and {}",
                    booking["booking_id"]
                );
            }
        }
    }
    confirmed
}
