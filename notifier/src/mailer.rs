//! Where the notifier's emails go: the [`Mailer`] trait and its two implementations.
//!
//! - [`SmtpMailer`] hands each message to an SMTP server (lettre, plain `smtp://`: this build has
//!   no TLS) and classifies failures, so that the consumer retries what may pass later
//!   ([`MailError::Transient`]), waits for a server that is away ([`MailError::Unreachable`]) and
//!   dead-letters what never will ([`MailError::Permanent`]).
//! - [`MailDirMailer`] writes each message as an `.eml` file into a folder: the embedded default,
//!   where there is no mail server. The file is named after the Message-ID and written atomically,
//!   so a resent email replaces its file instead of adding a second one.
//!
//! Both build the very same RFC 5322 message ([`build_message`]).
//!
//! Error reasons never contain the customer's name or address: they end up in logs and in
//! dead-letter rows, and personal data must stay where it can be forgotten (DESIGN.md).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::booking::EmailChannel;
use lettre::message::Mailbox;
use lettre::message::header::{ContentType, HeaderName, HeaderValue, MIME_VERSION_1_0};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use uuid::Uuid;

use crate::email::BookingEmail;

/// The `From` of our emails unless configured otherwise. `.invalid` (RFC 2606) can never be a
/// real domain, so a reply cannot reach a stranger.
pub const DEFAULT_FROM: &str = "ZingQueue <tickets@zingqueue.invalid>";

/// How long one SMTP step (connect, each command, each reply) may take.
pub const DEFAULT_SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole of one SMTP delivery may take this many step timeouts: a server that answers each
/// step just in time must still not hold a consumer for ever.
const WHOLE_SEND_STEPS: u32 = 3;

/// Why an email was not sent.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum MailError {
    /// It may go through later: the server is unreachable or slow, or answered 4xx; the folder
    /// could not be written. Retry.
    #[error("temporary mail failure: {reason}")]
    Transient { reason: String },
    /// The SMTP server could not be reached, or dropped the connection before it answered:
    /// it is down or restarting. Transient too, but no delivery was attempted, so it does not
    /// count against the tries of an email: the notifier waits for the server (not ready
    /// meanwhile) instead of dead-lettering every email of an outage.
    #[error("the mail server is unreachable: {reason}")]
    Unreachable { reason: String },
    /// Retrying will not help: the server refused the message (5xx), the address is not one we
    /// can send to, or the configuration is wrong. Dead-letter it.
    #[error("permanent mail failure: {reason}")]
    Permanent { reason: String },
}

impl MailError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. } | Self::Unreachable { .. })
    }

    /// The server is away (see [`MailError::Unreachable`]).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }

    fn transient(reason: impl Into<String>) -> Self {
        Self::Transient {
            reason: reason.into(),
        }
    }

    fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent {
            reason: reason.into(),
        }
    }
}

/// Sends booking emails. Sending the same email twice is allowed (at-least-once): it carries the
/// same Message-ID both times.
#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Delivers one email, or says whether trying again may help.
    async fn send(&self, email: &BookingEmail) -> Result<(), MailError>;

    /// Whether mail can be sent right now (for `/readyz`): the server answers, the folder is
    /// writable. Sends nothing.
    async fn check(&self) -> Result<(), MailError> {
        Ok(())
    }

    /// How this mailer delivers, recorded in `booking.email_sent.v2`.
    fn channel(&self) -> EmailChannel {
        EmailChannel::Unknown
    }
}

#[async_trait]
impl<M: Mailer + ?Sized> Mailer for Box<M> {
    async fn send(&self, email: &BookingEmail) -> Result<(), MailError> {
        (**self).send(email).await
    }

    async fn check(&self) -> Result<(), MailError> {
        (**self).check().await
    }

    fn channel(&self) -> EmailChannel {
        (**self).channel()
    }
}

#[async_trait]
impl<M: Mailer + ?Sized> Mailer for Arc<M> {
    async fn send(&self, email: &BookingEmail) -> Result<(), MailError> {
        (**self).send(email).await
    }

    async fn check(&self) -> Result<(), MailError> {
        (**self).check().await
    }

    fn channel(&self) -> EmailChannel {
        (**self).channel()
    }
}

/// An SMTP server (`ZQ_SMTP_URL`) when one is configured, else the mail folder, with the default
/// `From`.
pub fn mailer_from_url(
    smtp_url: Option<&str>,
    mail_dir: &Path,
) -> Result<Box<dyn Mailer>, MailError> {
    mailer_with_from(smtp_url, mail_dir, DEFAULT_FROM)
}

/// [`mailer_from_url`] with another `From` (`Name <address>` or a bare address).
pub fn mailer_with_from(
    smtp_url: Option<&str>,
    mail_dir: &Path,
    from: &str,
) -> Result<Box<dyn Mailer>, MailError> {
    Ok(match smtp_url {
        Some(url) => Box::new(SmtpMailer::new(url, from)?),
        None => Box::new(MailDirMailer::new(mail_dir.to_path_buf()).with_from(from)?),
    })
}

/// Parses a `From` setting.
fn parse_from(from: &str) -> Result<Mailbox, MailError> {
    from.parse::<Mailbox>().map_err(|error| {
        MailError::permanent(format!(
            "the From address {from:?} is not a valid mailbox: {error}"
        ))
    })
}

/// [`DEFAULT_FROM`] as a mailbox, without a parse that could fail at run time (a unit test
/// checks that it equals the parsed constant).
fn default_from() -> Mailbox {
    Mailbox::new(
        Some("ZingQueue".into()),
        Address::new_dangerous("tickets", "zingqueue.invalid"),
    )
}

/// The RFC 5322 message for `email`: Message-ID from the event, Date, From, To (the customer's
/// name and address), Subject, and the body as UTF-8 `text/plain`.
///
/// Fails (permanently) when the customer's address is not one lettre can send to.
pub fn build_message(email: &BookingEmail, from: &Mailbox) -> Result<Message, MailError> {
    let to_address: Address = email.customer_email.parse().map_err(|error| {
        MailError::permanent(format!(
            "the customer's email address of booking {} cannot be sent to: {error}",
            email.booking_id
        ))
    })?;
    let name = crate::email::one_line(&email.customer_name);
    let to = Mailbox::new((!name.is_empty()).then_some(name), to_address);
    Message::builder()
        .message_id(Some(email.message_id()))
        .date_now()
        .from(from.clone())
        .to(to)
        .subject(email.subject())
        // RFC 3834: an automatic message, so that out-of-office replies are not sent back to it.
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".into(),
        ))
        .header(MIME_VERSION_1_0)
        .header(ContentType::TEXT_PLAIN)
        .body(email.body())
        .map_err(|error| {
            MailError::permanent(format!(
                "the email about event {} cannot be built: {error}",
                email.about_event_id
            ))
        })
}

// ---------------------------------------------------------------------------------------------
// SMTP
// ---------------------------------------------------------------------------------------------

/// Sends through an SMTP server, one connection per email (no pool: a restarted server or a
/// dropped connection costs nothing more than the next connect).
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `host:port`, for error messages and logs.
    server: String,
    timeout: Duration,
}

impl fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SmtpMailer {
    /// A mailer for `smtp://host[:port]` (port 25 when none is given), with the `From` given
    /// (`Name <address>` or a bare address) and [`DEFAULT_SMTP_TIMEOUT`].
    ///
    /// Only plain SMTP: `smtps://`, `?tls=…` and credentials (which must not travel unencrypted)
    /// are refused, since this build has no TLS.
    pub fn new(url: &str, from: &str) -> Result<Self, MailError> {
        Self::with_timeout(url, from, DEFAULT_SMTP_TIMEOUT)
    }

    /// [`SmtpMailer::new`] with another per-step timeout.
    pub fn with_timeout(url: &str, from: &str, timeout: Duration) -> Result<Self, MailError> {
        let from = parse_from(from)?;
        let (host, port) = parse_smtp_url(url)?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
            .port(port)
            .timeout(Some(timeout))
            .build();
        let server = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Self {
            transport,
            from,
            server,
            timeout,
        })
    }

    /// `host:port` of the server.
    pub fn server(&self) -> &str {
        &self.server
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, email: &BookingEmail) -> Result<(), MailError> {
        let message = build_message(email, &self.from)?;
        let whole = self.timeout * WHOLE_SEND_STEPS;
        match tokio::time::timeout(whole, self.transport.send(message)).await {
            Ok(Ok(response)) => {
                tracing::debug!(
                    message_id = %email.message_id(),
                    booking_id = %email.booking_id,
                    outcome = email.outcome.as_str(),
                    server = %self.server,
                    reply = ?response.code(),
                    "email accepted by the SMTP server"
                );
                Ok(())
            }
            Ok(Err(error)) => Err(classify(&self.server, &error)),
            Err(_) => Err(MailError::transient(format!(
                "SMTP {}: the delivery took longer than {whole:?}",
                self.server
            ))),
        }
    }

    async fn check(&self) -> Result<(), MailError> {
        match tokio::time::timeout(
            self.timeout * WHOLE_SEND_STEPS,
            self.transport.test_connection(),
        )
        .await
        {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(MailError::transient(format!(
                "SMTP {}: the server did not answer NOOP",
                self.server
            ))),
            Ok(Err(error)) => Err(classify(&self.server, &error)),
            Err(_) => Err(MailError::transient(format!(
                "SMTP {}: no answer within {:?}",
                self.server,
                self.timeout * WHOLE_SEND_STEPS
            ))),
        }
    }

    fn channel(&self) -> EmailChannel {
        EmailChannel::Smtp
    }
}

/// Transient: 4xx replies and garbled replies; unreachable: timeouts, refused or dropped
/// connections (the server or the network may recover). Permanent: 5xx replies, and lettre's "client" errors, which mean
/// this message cannot be sent to this server as it is (e.g. a non-ASCII address to a server
/// without SMTPUTF8), so a retry would fail the same way.
fn classify(server: &str, error: &lettre::transport::smtp::Error) -> MailError {
    let reason = format!("SMTP {server}: {error}");
    if error.is_permanent() || error.is_client() {
        MailError::permanent(reason)
    } else if error.is_transient() || error.is_response() || error.is_transport_shutdown() {
        // A 4xx reply or a garbled one: the server took part, so this was a try.
        MailError::transient(reason)
    } else {
        // No reply at all: a refused, dropped or timed-out connection (lettre's connection
        // and network errors, which it does not name).
        MailError::Unreachable { reason }
    }
}

/// `smtp://host[:port][/]` → (host, port). An IPv6 host is written in brackets and returned
/// without them.
fn parse_smtp_url(url: &str) -> Result<(String, u16), MailError> {
    let shown = redacted(url);
    let invalid = |why: &str| MailError::permanent(format!("SMTP URL {shown:?}: {why}"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid("expected smtp://host:port"));
    };
    if !scheme.eq_ignore_ascii_case("smtp") {
        return Err(invalid(
            "only plain smtp:// is supported (this build has no TLS)",
        ));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        return Err(invalid(
            "credentials are not supported: they would travel unencrypted (this build has no TLS)",
        ));
    }
    if authority.contains(['/', '?', '#']) {
        return Err(invalid(
            "expected only smtp://host[:port] (no path, no query such as ?tls=)",
        ));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| invalid("unclosed [ in the host"))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| invalid("expected :port after the ]"))?,
            ),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    let port = match port {
        None => 25,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| invalid("the port must be a number from 1 to 65535"))?,
    };
    Ok((host.to_string(), port))
}

/// The URL with any `user:password@` replaced by `***@`, for error messages: a configuration
/// mistake must not print a password into the logs.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Mail folder
// ---------------------------------------------------------------------------------------------

/// Writes each email as `<folder>/<event id>.eml` (RFC 5322, CRLF line ends), the same bytes an
/// SMTP server would receive. The folder is created on demand, readable by its owner only, as
/// the messages hold personal data.
#[derive(Debug, Clone)]
pub struct MailDirMailer {
    dir: PathBuf,
    from: Mailbox,
}

impl MailDirMailer {
    /// A mailer writing into `dir` (created at the first email), with the default `From`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            from: default_from(),
        }
    }

    /// The same mailer with another `From` (`Name <address>` or a bare address).
    pub fn with_from(self, from: &str) -> Result<Self, MailError> {
        Ok(Self {
            from: parse_from(from)?,
            ..self
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file an email is (or will be) written to.
    pub fn path_for(&self, email: &BookingEmail) -> PathBuf {
        self.dir.join(file_name(&email.message_id()))
    }
}

#[async_trait]
impl Mailer for MailDirMailer {
    async fn send(&self, email: &BookingEmail) -> Result<(), MailError> {
        let bytes = build_message(email, &self.from)?.formatted();
        let dir = self.dir.clone();
        let name = file_name(&email.message_id());
        let written = tokio::task::spawn_blocking(move || write_atomically(&dir, &name, &bytes))
            .await
            .map_err(|error| MailError::transient(format!("the mail writer stopped: {error}")))?;
        written.map_err(|error| {
            MailError::transient(format!(
                "cannot write the email into {}: {error}",
                self.dir.display()
            ))
        })?;
        tracing::debug!(
            message_id = %email.message_id(),
            booking_id = %email.booking_id,
            outcome = email.outcome.as_str(),
            dir = %self.dir.display(),
            "email written to the mail folder"
        );
        Ok(())
    }

    async fn check(&self) -> Result<(), MailError> {
        let dir = self.dir.clone();
        let probed = tokio::task::spawn_blocking(move || {
            let probe = format!(".probe-{}", Uuid::new_v4().simple());
            write_atomically(&dir, &probe, b"")?;
            std::fs::remove_file(dir.join(probe))
        })
        .await
        .map_err(|error| MailError::transient(format!("the mail writer stopped: {error}")))?;
        probed.map_err(|error| {
            MailError::transient(format!(
                "the mail folder {} is not writable: {error}",
                self.dir.display()
            ))
        })
    }

    fn channel(&self) -> EmailChannel {
        EmailChannel::MailFolder
    }
}

/// The file name for a Message-ID: `<{event id}@zingqueue>` → `{event id}.eml`.
///
/// Only the part before the `@` is kept (all our Message-IDs share the part after it), and any
/// character but ASCII letters, digits, `-` and `_` becomes `_`, so that no Message-ID can name a
/// path outside the folder or a hidden file.
fn file_name(message_id: &str) -> String {
    let inner = message_id.trim_start_matches('<').trim_end_matches('>');
    let local = inner.split_once('@').map_or(inner, |(local, _)| local);
    let safe: String = local
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() {
        "_.eml".to_string()
    } else {
        format!("{safe}.eml")
    }
}

/// Writes `dir/name` so that readers see the old file or the whole new one, never a part: a
/// hidden temporary file in the same folder (same file system), flushed to disk, then renamed
/// over the target, and the folder flushed so that the rename itself survives a crash.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let temporary = dir.join(format!(".{name}.{}.tmp", Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, dir.join(name))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_from_is_the_documented_one() {
        assert_eq!(default_from(), DEFAULT_FROM.parse::<Mailbox>().unwrap());
        assert_eq!(
            default_from().to_string(),
            "ZingQueue <tickets@zingqueue.invalid>"
        );
    }

    #[test]
    fn smtp_urls_name_a_host_and_a_port() {
        let ok = |url: &str| parse_smtp_url(url).unwrap();
        assert_eq!(ok("smtp://127.0.0.1:2525"), ("127.0.0.1".into(), 2525));
        assert_eq!(
            ok("smtp://mail.example.com"),
            ("mail.example.com".into(), 25)
        );
        assert_eq!(
            ok("SMTP://mail.example.com:587/"),
            ("mail.example.com".into(), 587)
        );
        assert_eq!(ok("smtp://[::1]:2525"), ("::1".into(), 2525));
        assert_eq!(ok("smtp://[::1]"), ("::1".into(), 25));
        for bad in [
            "mail.example.com:25",
            "smtps://mail.example.com",
            "smtp://user:secret@mail.example.com",
            "smtp://mail.example.com?tls=required",
            "smtp://mail.example.com/ehlo-name",
            "smtp://:25",
            "smtp://mail.example.com:0",
            "smtp://mail.example.com:99999",
            "smtp://mail.example.com:x",
            "smtp://[::1",
            "smtp://[::1]2525",
        ] {
            let error = parse_smtp_url(bad).expect_err(bad);
            assert!(!error.is_transient(), "{bad}: {error}");
            assert!(!error.to_string().contains("secret"), "{error}");
        }
        assert_eq!(
            redacted("smtp://user:secret@mail.example.com:25/"),
            "smtp://***@mail.example.com:25/"
        );
        assert_eq!(redacted("smtp://host:25"), "smtp://host:25");
    }

    #[test]
    fn file_names_come_from_the_message_id_and_stay_in_the_folder() {
        assert_eq!(
            file_name("<0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b@zingqueue>"),
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b.eml"
        );
        assert_eq!(file_name("<../../etc/passwd@x>"), "______etc_passwd.eml");
        assert_eq!(file_name("<.hidden@x>"), "_hidden.eml");
        assert_eq!(file_name("<@x>"), "_.eml");
    }

    #[test]
    fn a_bad_from_is_a_permanent_error() {
        let error = SmtpMailer::new("smtp://127.0.0.1:25", "not an address").unwrap_err();
        assert!(!error.is_transient(), "{error}");
        assert!(
            MailDirMailer::new(PathBuf::from("/tmp/x"))
                .with_from("nope")
                .is_err()
        );
        assert!(
            MailDirMailer::new(PathBuf::from("/tmp/x"))
                .with_from("tickets@example.com")
                .is_ok()
        );
    }
}
