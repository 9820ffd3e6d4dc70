//! testkit's SMTP server accepts mail over a plain SMTP dialogue, keeps each message for reading
//! back, gives every caller a server of its own, and refuses connections once stopped.
//!
//! The dialogue is spoken by hand over a `TcpStream` so that this test depends on no mail client.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Reads one SMTP reply (all its continuation lines) and returns its code and text.
fn reply(reader: &mut BufReader<TcpStream>) -> (u16, String) {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read a reply line");
        assert!(line.len() >= 4, "short reply line {line:?}");
        text.push_str(&line);
        // "250-..." continues, "250 ..." ends the reply.
        if line.as_bytes()[3] == b' ' {
            return (line[..3].parse().expect("a reply code"), text);
        }
    }
}

/// Sends one command and checks the reply code.
fn command(reader: &mut BufReader<TcpStream>, line: &str, expected: u16) {
    reader
        .get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .expect("send a command");
    let (code, text) = reply(reader);
    assert_eq!(code, expected, "{line:?} answered {text:?}");
}

/// Delivers `body` (headers and text, CRLF line ends) from `from` to `to`.
fn send(port: u16, from: &str, to: &str, body: &str) {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a timeout");
    let mut reader = BufReader::new(stream);
    assert_eq!(reply(&mut reader).0, 220, "greeting");
    command(&mut reader, "EHLO testkit.test", 250);
    command(&mut reader, &format!("MAIL FROM:<{from}>"), 250);
    command(&mut reader, &format!("RCPT TO:<{to}>"), 250);
    command(&mut reader, "DATA", 354);
    command(&mut reader, &format!("{body}\r\n."), 250);
    command(&mut reader, "QUIT", 221);
}

#[test]
fn a_delivered_message_can_be_read_back() {
    let server = testkit::smtp();
    assert_eq!(server.url, format!("smtp://127.0.0.1:{}", server.port));
    assert!(server.messages().is_empty());

    send(
        server.port,
        "tickets@zingqueue.invalid",
        "ada@example.com",
        "Message-ID: <first@testkit>\r\nSubject: Hello\r\nTo: ada@example.com\r\n\r\nFirst body.",
    );
    send(
        server.port,
        "tickets@zingqueue.invalid",
        "bob@example.com",
        "Message-ID: <second@testkit>\r\nSubject: Again\r\n\r\nSecond body.",
    );

    let messages = server.wait_for_messages(2, Duration::from_secs(10));
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(
        messages[0].contains("Message-ID: <first@testkit>"),
        "{}",
        messages[0]
    );
    assert!(messages[0].contains("Subject: Hello"), "{}", messages[0]);
    assert!(messages[0].contains("First body."), "{}", messages[0]);
    // The envelope recipient is recorded too.
    assert!(
        messages[0].contains("X-RcptTo: ada@example.com"),
        "{}",
        messages[0]
    );
    assert!(
        messages[1].contains("Message-ID: <second@testkit>"),
        "{}",
        messages[1]
    );
    assert_eq!(server.messages(), messages);
}

#[test]
fn each_call_gets_its_own_server() {
    let first = testkit::smtp();
    let second = testkit::smtp();
    assert_ne!(first.port, second.port);
    assert_ne!(first.mailbox, second.mailbox);
    send(
        first.port,
        "a@example.com",
        "b@example.com",
        "Subject: only here\r\n\r\nx",
    );
    assert_eq!(first.wait_for_messages(1, Duration::from_secs(10)).len(), 1);
    assert!(second.messages().is_empty());
}

#[test]
fn waiting_for_more_than_arrives_returns_what_there_is_at_the_deadline() {
    let server = testkit::smtp();
    let start = Instant::now();
    let messages = server.wait_for_messages(1, Duration::from_millis(300));
    assert!(messages.is_empty());
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_stopped_server_refuses_connections_and_keeps_its_messages() {
    let server = testkit::smtp();
    send(
        server.port,
        "a@example.com",
        "b@example.com",
        "Subject: kept\r\n\r\nx",
    );
    assert_eq!(
        server.wait_for_messages(1, Duration::from_secs(10)).len(),
        1
    );
    assert!(server.is_running());

    server.stop();
    assert!(!server.is_running());
    let refused = TcpStream::connect(("127.0.0.1", server.port));
    assert!(refused.is_err(), "port {} still answers", server.port);
    assert_eq!(server.messages().len(), 1);
    // Stopping again is harmless.
    server.stop();

    let mailbox = server.mailbox.clone();
    drop(server);
    assert!(!mailbox.exists(), "the server's folder is removed on drop");
}
