//! The notifier handler: one email per terminal outcome of a booking, then `EmailSent`.
//!
//! The email is about one event (its Message-ID comes from the event id). `EmailSent` is
//! appended only after the server said OK, and a redelivered record whose email is recorded is
//! not sent again: at least once, with one duplicate only after a crash between the server's OK
//! and the append, never none. Transient failures retry at most [`MAX_RETRIES`] times with
//! backoff, then the record is dead-lettered (`email-failed`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use domain::booking::{BookingCommand, BookingEvent, FailureReason};
use domain::{DomainEvent, EventId, Money, event_types};
use event_store::EventStore;
use infra::backoff::Backoff;
use infra::commands::{Cause, decide_booking};
use infra::consumer::dead_letters::CAUSE_EMAIL_FAILED;
use infra::consumer::{EventRecord, Handled, Handler, HandlerError};
use infra::streams::{LoadedBooking, load_booking};
use tracing::{info, warn};

use crate::email::{BookingEmail, Outcome};
use crate::mailer::Mailer;

/// The consumer group (and service) name.
pub const GROUP: &str = "notifier";
/// Retries after the first attempt.
pub const MAX_RETRIES: u32 = 3;
/// Attempts at recording a sent email before the record is handed back to the runtime (which
/// then sends again: the one duplicate at-least-once allows).
const RECORD_ATTEMPTS: u32 = 30;

pub struct NotifierHandler {
    store: Arc<dyn EventStore>,
    mailer: Arc<dyn Mailer>,
    retry: Backoff,
}

impl NotifierHandler {
    pub fn new(store: Arc<dyn EventStore>, mailer: Arc<dyn Mailer>) -> NotifierHandler {
        NotifierHandler {
            store,
            mailer,
            retry: Backoff {
                base: Duration::from_millis(500),
                factor: 2.0,
                max_delay: Duration::from_secs(10),
                max_attempts: MAX_RETRIES + 1,
            },
        }
    }

    /// Shorter pauses between retries (tests).
    pub fn with_retry_base(mut self, base: Duration) -> Self {
        self.retry.base = base;
        self
    }
}

/// The outcome an event announces, with the money it concerns and a sentence of detail.
fn outcome_of(
    event: &BookingEvent,
    loaded: &LoadedBooking,
) -> Option<(Outcome, Money, Option<String>)> {
    let booking = &loaded.booking;
    let nothing = Money::new(0, booking.amount().currency);
    Some(match event {
        BookingEvent::Confirmed(_) => (Outcome::Confirmed, booking.amount(), None),
        BookingEvent::Rejected(rejected) => {
            let taken: Vec<String> = rejected.taken.iter().map(ToString::to_string).collect();
            (
                Outcome::Rejected,
                booking.amount(),
                Some(format!("Already taken: {}.", taken.join(", "))),
            )
        }
        BookingEvent::HoldExpired(_) => (Outcome::Expired, booking.amount(), None),
        BookingEvent::Cancelled(cancelled) => {
            let paid = matches!(
                cancelled.previous_status,
                domain::BookingStatus::Paid | domain::BookingStatus::Confirmed
            );
            (
                Outcome::Cancelled,
                if paid { booking.amount() } else { nothing },
                None,
            )
        }
        BookingEvent::Failed(failed) => {
            let money_back: i64 = booking
                .charges()
                .values()
                .filter(|charge| charge.refund != domain::booking::RefundProgress::NotRequested)
                .map(|charge| charge.amount.amount_minor)
                .sum();
            let detail = match failed.reason {
                FailureReason::PaymentDeclined => booking
                    .last_payment_failure()
                    .map(|(_, detail)| format!("The payment was declined: {detail}")),
                FailureReason::PaymentExhausted => Some("The payment did not go through.".into()),
                FailureReason::SeatsLost => Some("The seats could not be kept for you.".into()),
            };
            // Money goes back only when a payment came in after all (seats lost).
            let amount = if failed.reason == FailureReason::SeatsLost {
                Money::new(money_back, booking.amount().currency)
            } else {
                nothing
            };
            (Outcome::Failed, amount, detail)
        }
        BookingEvent::Abandoned(abandoned) => {
            let paid = abandoned.previous_status == domain::BookingStatus::Paid;
            (
                Outcome::Failed,
                if paid { booking.amount() } else { nothing },
                Some("We could not complete your booking.".into()),
            )
        }
        BookingEvent::Refunded(refunded) => (Outcome::Refunded, refunded.amount, None),
        _ => return None,
    })
}

#[async_trait]
impl Handler for NotifierHandler {
    fn subscribes_to(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            event_types::BOOKING_CONFIRMED
                | event_types::BOOKING_REJECTED
                | event_types::BOOKING_HOLD_EXPIRED
                | event_types::BOOKING_CANCELLED
                | event_types::BOOKING_FAILED
                | event_types::BOOKING_ABANDONED
                | event_types::BOOKING_REFUNDED
        )
    }

    async fn handle(&self, record: &EventRecord) -> Result<Handled, HandlerError> {
        let DomainEvent::Booking(event) = &record.event else {
            return Ok(Handled::Done);
        };
        let booking_id = event.booking_id();
        let about_event_id = EventId::from_uuid(record.event_id);
        let loaded = load_booking(&*self.store, booking_id)
            .await
            .map_err(infra::commands::CommandError::from)?
            .ok_or_else(|| {
                HandlerError::Permanent(format!("booking {booking_id} does not exist"))
            })?;
        if loaded.booking.emails_sent().contains(&about_event_id) {
            return Ok(Handled::Done);
        }
        let Some((outcome, amount, detail)) = outcome_of(event, &loaded) else {
            return Ok(Handled::Done);
        };
        let booking = &loaded.booking;
        let email = BookingEmail {
            outcome,
            about_event_id,
            booking_id,
            show_id: booking.show_id(),
            show_name: None,
            customer_name: booking.customer().name.as_str().to_string(),
            customer_email: booking.customer().email.as_str().to_string(),
            seats: booking.seats().iter().map(ToString::to_string).collect(),
            amount,
            detail,
        };
        let first_failed_at = Utc::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A revoked or stopping worker stops here, before the send: the partition's new
            // owner sends this email once (infra::consumer::lease).
            infra::consumer::ensure_owned()?;
            match self.mailer.send(&email).await {
                Ok(()) => break,
                // The server is away: not a try. The runtime retries the record with backoff
                // (the notifier is not ready meanwhile) until the server is back.
                Err(error) if error.is_unreachable() => {
                    return Err(HandlerError::Transient(error.to_string()));
                }
                Err(error) if error.is_transient() && self.retry.may_retry_after(attempt) => {
                    let delay = self.retry.delay(attempt);
                    warn!(%booking_id, attempt, ?delay, %error, "sending an email failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    return Ok(Handled::DeadLetter {
                        cause: CAUSE_EMAIL_FAILED,
                        reason: format!("{} email: {error}", outcome.as_str()),
                        attempts: attempt,
                        first_failed_at,
                    });
                }
            }
        }
        info!(%booking_id, outcome = outcome.as_str(), message_id = %email.message_id(), "email sent");
        // From here until `EmailSent` is stored, a crash sends this email again (the one
        // duplicate DESIGN.md allows): how long that window is open, in
        // `zq_email_unrecorded_seconds`.
        let accepted = std::time::Instant::now();
        let message_id = email.message_id();
        let channel = self.mailer.channel();
        // The server has the email: from here on only the record is retried, never the send
        // (a failed append would otherwise send the email again on every retry).
        let mut attempt = 0;
        loop {
            attempt += 1;
            let recorded = decide_booking(
                &*self.store,
                booking_id,
                Cause::of(record),
                "notifier/email",
                |_| BookingCommand::RecordEmailSent {
                    about_event_id,
                    message_id: message_id.clone(),
                    channel,
                },
            )
            .await;
            match recorded.map_err(HandlerError::from) {
                Ok(_) => {
                    metrics::histogram!("zq_email_unrecorded_seconds")
                        .record(accepted.elapsed().as_secs_f64());
                    break;
                }
                Err(HandlerError::Transient(reason)) if attempt < RECORD_ATTEMPTS => {
                    let delay = self.retry.delay(attempt.min(5));
                    warn!(%booking_id, attempt, ?delay, %reason, "recording a sent email failed; retrying the record only");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(Handled::Done)
    }
}
