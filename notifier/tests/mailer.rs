//! The mailers against real counterparts: a real SMTP server (aiosmtpd, started by testkit), small
//! scripted SMTP servers for the replies aiosmtpd never gives (4xx, 5xx, silence), and a real
//! folder for the mail-folder mailer.
//!
//! What must hold: the message carries the Message-ID derived from the event, the customer as
//! `To` and the subject; failures that may pass are transient, the others permanent; the mail
//! folder keeps one file per Message-ID however often the email is sent, with the same headers
//! the SMTP server would have received.

use std::path::Path;
use std::time::Duration;

use domain::{BookingId, EventId, Money, ShowId};
use notifier::email::{BookingEmail, Outcome};
use notifier::mailer::{
    DEFAULT_FROM, MailDirMailer, MailError, Mailer, SmtpMailer, mailer_from_url,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

fn email(outcome: Outcome) -> BookingEmail {
    BookingEmail {
        outcome,
        about_event_id: EventId::new(),
        booking_id: BookingId::new(),
        show_id: ShowId::new(),
        show_name: Some("Hamlet".into()),
        customer_name: "Ada Lovelace".into(),
        customer_email: "ada@example.com".into(),
        seats: vec!["A-1-1".into(), "A-1-2".into()],
        amount: Money::new(4500, "EUR".parse().unwrap()),
        detail: None,
    }
}

/// The value of header `name` in an RFC 5322 text (first occurrence, folded lines joined).
fn header(message: &str, name: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in message.lines() {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(value) = value.as_mut() {
                value.push_str(line);
            }
            continue;
        }
        if value.is_some() {
            break;
        }
        if let Some((field, rest)) = line.split_once(':')
            && field.eq_ignore_ascii_case(name)
        {
            value = Some(rest.trim().to_string());
        }
    }
    value
}

/// The headers every message must carry, as (name, value) pairs (Date aside: it is the sending
/// time).
fn fixed_headers(message: &str) -> Vec<(&'static str, Option<String>)> {
    [
        "Message-ID",
        "From",
        "To",
        "Subject",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Auto-Submitted",
    ]
    .into_iter()
    .map(|name| (name, header(message, name)))
    .collect()
}

/// The `.eml` files in a folder (hidden temporary files excluded).
fn eml_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
        .collect();
    files.sort();
    files
}

fn all_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn smtp_delivers_the_message_with_its_event_message_id() {
    let server = testkit::smtp();
    let mailer = SmtpMailer::new(&server.url, DEFAULT_FROM).unwrap();
    mailer.check().await.unwrap();
    let sent = email(Outcome::Confirmed);
    mailer.send(&sent).await.unwrap();

    let messages = server.wait_for_messages(1, Duration::from_secs(10));
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let message = &messages[0];
    assert_eq!(
        header(message, "Message-ID"),
        Some(format!("<{}@zingqueue>", sent.about_event_id)),
        "{message}"
    );
    assert_eq!(
        header(message, "To").as_deref(),
        Some("\"Ada Lovelace\" <ada@example.com>"),
        "{message}"
    );
    assert_eq!(
        header(message, "Subject").as_deref(),
        Some("Booking confirmed: Hamlet")
    );
    assert_eq!(
        header(message, "From").as_deref(),
        Some("ZingQueue <tickets@zingqueue.invalid>")
    );
    assert!(header(message, "Date").is_some(), "{message}");
    assert_eq!(
        header(message, "Content-Type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    // The envelope went to the customer.
    assert_eq!(
        header(message, "X-RcptTo").as_deref(),
        Some("ada@example.com")
    );
    assert!(message.contains("Paid: EUR 45.00"), "{message}");
    assert!(message.contains("Seats: A-1-1, A-1-2"), "{message}");
}

#[tokio::test]
async fn sending_the_same_event_twice_sends_the_same_message_id() {
    let server = testkit::smtp();
    let mailer = SmtpMailer::new(&server.url, "Box Office <box@example.org>").unwrap();
    let sent = email(Outcome::Refunded);
    mailer.send(&sent).await.unwrap();
    mailer.send(&sent).await.unwrap();
    let messages = server.wait_for_messages(2, Duration::from_secs(10));
    assert_eq!(messages.len(), 2);
    assert_eq!(
        header(&messages[0], "Message-ID"),
        header(&messages[1], "Message-ID")
    );
    assert_eq!(
        header(&messages[0], "From").as_deref(),
        Some("\"Box Office\" <box@example.org>")
    );
}

#[tokio::test]
async fn non_ascii_names_travel_encoded() {
    let server = testkit::smtp();
    let mailer = SmtpMailer::new(&server.url, DEFAULT_FROM).unwrap();
    let mut sent = email(Outcome::Confirmed);
    sent.customer_name = "Zoë Ødegård".into();
    sent.show_name = Some("Café Müller".into());
    mailer.send(&sent).await.unwrap();
    let messages = server.wait_for_messages(1, Duration::from_secs(10));
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert!(message.is_ascii(), "{message}");
    let to = header(message, "To").unwrap();
    assert!(to.contains("=?utf-8?"), "{to}");
    assert!(to.ends_with("<ada@example.com>"), "{to}");
    let subject = header(message, "Subject").unwrap();
    assert!(subject.contains("=?utf-8?"), "{subject}");
    assert_eq!(
        header(message, "Content-Transfer-Encoding").as_deref(),
        Some("quoted-printable")
    );
}

#[tokio::test]
async fn a_stopped_server_is_a_transient_error() {
    let server = testkit::smtp();
    let mailer = SmtpMailer::new(&server.url, DEFAULT_FROM).unwrap();
    server.stop();
    let error = mailer.send(&email(Outcome::Confirmed)).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    // Nobody answered: not a try of this email (the notifier waits for the server).
    assert!(error.is_unreachable(), "{error}");
    assert!(
        error.to_string().contains(&server.port.to_string()),
        "{error}"
    );
    let error = mailer.check().await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    // The server back on its port: the same mailer delivers again (lettre reconnects).
    server.start().unwrap();
    mailer.send(&email(Outcome::Confirmed)).await.unwrap();
    assert_eq!(
        server.wait_for_messages(1, Duration::from_secs(10)).len(),
        1
    );
}

#[tokio::test]
async fn an_address_the_server_cannot_take_is_a_permanent_error() {
    let server = testkit::smtp();
    let mailer = SmtpMailer::new(&server.url, DEFAULT_FROM).unwrap();

    let mut unparsable = email(Outcome::Confirmed);
    unparsable.customer_email = "not an address".into();
    let error = mailer.send(&unparsable).await.unwrap_err();
    assert!(matches!(error, MailError::Permanent { .. }), "{error}");
    // The reason names the booking, not the customer's address (personal data stays out of
    // logs and dead letters).
    assert!(!error.to_string().contains("not an address"), "{error}");
    assert!(
        error
            .to_string()
            .contains(&unparsable.booking_id.to_string())
    );

    // aiosmtpd does not offer SMTPUTF8, so a non-ASCII address can never be sent to it.
    let mut unicode = email(Outcome::Confirmed);
    unicode.customer_email = "zoë@example.com".into();
    let error = mailer.send(&unicode).await.unwrap_err();
    assert!(matches!(error, MailError::Permanent { .. }), "{error}");

    assert!(server.messages().is_empty());
}

/// A scripted SMTP server on a free port: greets with `greeting`, answers `RCPT` with `rcpt` and
/// every other command with 250 (221 to QUIT, 354 to DATA). Returns its URL.
async fn scripted_server(greeting: &'static str, rcpt: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                if write
                    .write_all(format!("{greeting}\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                let mut in_data = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = if in_data {
                        if line != "." {
                            continue;
                        }
                        in_data = false;
                        "250 queued"
                    } else {
                        match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                            "RCPT" => rcpt,
                            "DATA" => {
                                in_data = true;
                                "354 go on"
                            }
                            "QUIT" => "221 bye",
                            _ => "250 ok",
                        }
                    };
                    if write
                        .write_all(format!("{reply}\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn four_hundreds_are_transient_and_five_hundreds_permanent() {
    let busy = scripted_server("220 fake", "450 4.2.1 mailbox busy, try later").await;
    let error = SmtpMailer::new(&busy, DEFAULT_FROM)
        .unwrap()
        .send(&email(Outcome::Confirmed))
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error}");
    // The server answered 4xx: a try, which counts.
    assert!(!error.is_unreachable(), "{error}");
    assert!(error.to_string().contains("mailbox busy"), "{error}");

    let unknown = scripted_server("220 fake", "550 5.1.1 no such user").await;
    let error = SmtpMailer::new(&unknown, DEFAULT_FROM)
        .unwrap()
        .send(&email(Outcome::Confirmed))
        .await
        .unwrap_err();
    assert!(matches!(error, MailError::Permanent { .. }), "{error}");

    let closing = scripted_server("421 4.3.2 shutting down", "250 ok").await;
    let error = SmtpMailer::new(&closing, DEFAULT_FROM)
        .unwrap()
        .send(&email(Outcome::Confirmed))
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error}");

    let refusing = scripted_server("554 5.3.2 no service here", "250 ok").await;
    let error = SmtpMailer::new(&refusing, DEFAULT_FROM)
        .unwrap()
        .send(&email(Outcome::Confirmed))
        .await
        .unwrap_err();
    assert!(matches!(error, MailError::Permanent { .. }), "{error}");

    // The scripted server itself accepts mail: the errors above came from the replies.
    let fine = scripted_server("220 fake", "250 ok").await;
    SmtpMailer::new(&fine, DEFAULT_FROM)
        .unwrap()
        .send(&email(Outcome::Confirmed))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_silent_server_times_out_transiently() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://{}", listener.local_addr().unwrap());
    // Accepts connections and never says a word.
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let mailer = SmtpMailer::with_timeout(&url, DEFAULT_FROM, Duration::from_millis(300)).unwrap();
    let started = std::time::Instant::now();
    let error = mailer.send(&email(Outcome::Confirmed)).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5), "{error}");
}

#[tokio::test]
async fn the_mail_folder_keeps_one_file_per_message_id() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("mail");
    let mailer = MailDirMailer::new(dir.clone());
    mailer.check().await.unwrap();

    let first = email(Outcome::Confirmed);
    mailer.send(&first).await.unwrap();
    let files = eml_files(&dir);
    assert_eq!(
        files,
        [dir.join(format!("{}.eml", first.about_event_id))],
        "{:?}",
        all_files(&dir)
    );
    assert_eq!(mailer.path_for(&first), files[0]);

    // A resend (here with a changed text) replaces the file: still one file, the newest text.
    let mut again = first.clone();
    again.detail = Some("Sent again.".into());
    mailer.send(&again).await.unwrap();
    assert_eq!(eml_files(&dir), files);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("Sent again."), "{text}");
    // No temporary files are left behind.
    assert_eq!(all_files(&dir).len(), 1, "{:?}", all_files(&dir));

    // Another event is another file.
    let second = email(Outcome::Expired);
    mailer.send(&second).await.unwrap();
    assert_eq!(eml_files(&dir).len(), 2);

    // The file is an RFC 5322 message with CRLF line ends and our headers.
    assert!(text.contains("\r\n\r\n"), "{text}");
    assert_eq!(
        header(&text, "Message-ID"),
        Some(format!("<{}@zingqueue>", first.about_event_id))
    );
    assert_eq!(
        header(&text, "To").as_deref(),
        Some("\"Ada Lovelace\" <ada@example.com>")
    );
    assert_eq!(
        header(&text, "Subject").as_deref(),
        Some("Booking confirmed: Hamlet")
    );

    // The messages hold personal data: only their owner may read them.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn the_mail_folder_and_smtp_carry_the_same_headers() {
    let server = testkit::smtp();
    let root = tempfile::tempdir().unwrap();
    let sent = email(Outcome::Cancelled);

    let smtp = mailer_from_url(Some(&server.url), root.path()).unwrap();
    smtp.send(&sent).await.unwrap();
    let folder = mailer_from_url(None, root.path()).unwrap();
    folder.send(&sent).await.unwrap();

    let received = server.wait_for_messages(1, Duration::from_secs(10));
    assert_eq!(received.len(), 1);
    let files = eml_files(root.path());
    assert_eq!(files.len(), 1);
    let written = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(fixed_headers(&written), fixed_headers(&received[0]));
    assert!(
        fixed_headers(&written)
            .iter()
            .all(|(_, value)| value.is_some()),
        "{written}"
    );
    assert!(written.contains("Refund: EUR 45.00"), "{written}");
}

#[tokio::test]
async fn an_unwritable_folder_is_a_transient_error() {
    let root = tempfile::tempdir().unwrap();
    // A file where the folder should be: creating the folder fails.
    let blocked = root.path().join("mail");
    std::fs::write(&blocked, b"not a folder").unwrap();
    let mailer = MailDirMailer::new(blocked);
    let error = mailer.send(&email(Outcome::Confirmed)).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(mailer.check().await.unwrap_err().is_transient());
}
