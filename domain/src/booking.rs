//! The booking: one customer's request for seats of one show, from request to a terminal state,
//! with every charge of their money tracked until it is kept or refunded.
//!
//! ```text
//!                ┌─▶ rejected                      (seats taken)
//! requested ──▶ held ──▶ paid ──▶ confirmed         (seat-lock sold the seats)
//!    │           │ │       │          │
//!    │           │ │       └─▶ failed (seats_lost, refund)
//!    │           │ └─▶ failed (payment_declined | payment_exhausted | seats_lost)
//!    │           └─▶ expired ──(late payment)──▶ failed (seats_lost, refund)
//!    └───────────┴── cancel from requested, held, paid (refund), confirmed (refund, seats released)
//! ```
//!
//! Rules every caller relies on:
//! - A command whose effect is already recorded yields no events (redelivery is harmless).
//! - Hold expiry against payment: whichever of `PaymentSucceeded` and `HoldExpired` is recorded
//!   first wins. `ExpireHold` on a paid booking yields nothing; a payment on an expired booking is
//!   recorded, fails the booking (`seats_lost`) and is refunded.
//! - Money is never lost track of: a payment is never refused for the booking's state; one that
//!   cannot pay for the booking (late, duplicate, of another amount, before the hold, after the
//!   end) is recorded and refunded in the same decision, and every refund is tracked per charge
//!   until `booking.refunded.v1`.
//! - Other commands on a finished booking (`rejected`, `expired`, `cancelled`, `failed`) are
//!   refused with [`DomainError::AlreadyFinished`] (the API's 409; consumers skip them).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::customer::Customer;
use crate::error::DomainError;
use crate::event::{event_family, event_types};
use crate::ids::{BookingId, EventId, ShowId};
use crate::money::Money;
use crate::seat::SeatId;
use crate::show::MAX_SEATS_PER_BOOKING;

/// The longest payment method token, in characters.
pub const MAX_PAYMENT_METHOD_CHARS: usize = 256;

// ---------------------------------------------------------------------------------------------
// Statuses
// ---------------------------------------------------------------------------------------------

/// Where a booking stands (the `status` of `GET /bookings/{id}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BookingStatus {
    Requested,
    Held,
    Paid,
    /// Terminal unless cancelled later.
    Confirmed,
    Rejected,
    Expired,
    Cancelled,
    Failed,
}

impl BookingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Held => "held",
            Self::Paid => "paid",
            Self::Confirmed => "confirmed",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    /// Ended without the seats: the API answers 409 to a cancel. The only status change left is
    /// `expired` → `failed` when a late payment is recorded (and refunded).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Rejected | Self::Expired | Self::Cancelled | Self::Failed
        )
    }

    /// The customer has their answer: confirmed or finished.
    pub fn is_terminal(self) -> bool {
        self == Self::Confirmed || self.is_finished()
    }
}

impl fmt::Display for BookingStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the booking's refunds stand (the `refund_status` of `GET /bookings/{id}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// No refund was requested.
    None,
    /// A refund was requested and has not completed.
    Pending,
    /// Every requested refund has completed.
    Refunded,
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// `booking.requested.v1`: a customer asked for seats; the amount is fixed here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingRequested {
    pub booking_id: BookingId,
    pub show_id: ShowId,
    pub seats: BTreeSet<SeatId>,
    /// The only personal data in any event.
    pub customer: Customer,
    /// The payment provider's token, if the client gave one.
    pub payment_method: Option<String>,
    pub amount: Money,
    pub requested_at: DateTime<Utc>,
    /// How the holder proves who they are and how a repeated request is recognised. Added
    /// after v1 was first written: older events read as "no token, no key".
    #[serde(default)]
    pub access: BookingAccess,
}

/// What the API recorded about the request itself, so that the log alone can check a holder's
/// token and answer a repeated request the way it answered the first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingAccess {
    /// SHA-256 (hex) of the access token handed to the client once; the token is never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_sha256: Option<String>,
    /// The client's `Idempotency-Key`, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<IdempotencyRecord>,
}

/// An `Idempotency-Key` and the fingerprint of the request that first used it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub key: String,
    /// SHA-256 (hex) of the request body as canonical JSON.
    pub request_sha256: String,
}

/// `booking.seats_held.v1`: seat-lock holds the seats until `expires_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatsHeld {
    pub booking_id: BookingId,
    pub show_id: ShowId,
    pub seats: BTreeSet<SeatId>,
    /// The amount to charge (copied from the request, so payment needs no other event).
    pub amount: Money,
    pub expires_at: DateTime<Utc>,
}

/// `booking.rejected.v1`: some seats were taken, none are held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingRejected {
    pub booking_id: BookingId,
    pub show_id: ShowId,
    /// The requested seats that were not available.
    pub taken: BTreeSet<SeatId>,
}

/// `booking.hold_expired.v1`: the hold ran out before a payment was recorded; the seats are
/// free again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldExpired {
    pub booking_id: BookingId,
    pub show_id: ShowId,
    pub seats: BTreeSet<SeatId>,
    pub expires_at: DateTime<Utc>,
}

/// `booking.payment_succeeded.v1`: money was taken. Whatever the booking's state, this charge is
/// then either kept by a confirmed booking or refunded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentSucceeded {
    pub booking_id: BookingId,
    pub show_id: ShowId,
    pub charge_id: String,
    pub amount: Money,
}

/// Why a payment failed for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentFailureReason {
    /// The provider declined the payment.
    Declined,
    /// Transient errors went on past the last retry.
    Exhausted,
}

/// `booking.payment_failed.v1`: no money was taken and none will be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub booking_id: BookingId,
    pub show_id: ShowId,
    pub reason: PaymentFailureReason,
    /// The provider's explanation, for people.
    pub detail: String,
}

/// `booking.confirmed.v1`: the seats are sold to the booking (appended with `show.seats_sold.v1`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingConfirmed {
    pub booking_id: BookingId,
    pub show_id: ShowId,
    pub seats: BTreeSet<SeatId>,
}

/// Why a booking failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    PaymentDeclined,
    PaymentExhausted,
    /// Paid, but the seats could not be sold: the hold expired first, or the show refused the sale.
    SeatsLost,
}

impl From<PaymentFailureReason> for FailureReason {
    fn from(reason: PaymentFailureReason) -> Self {
        match reason {
            PaymentFailureReason::Declined => Self::PaymentDeclined,
            PaymentFailureReason::Exhausted => Self::PaymentExhausted,
        }
    }
}

/// `booking.failed.v1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingFailed {
    pub booking_id: BookingId,
    pub show_id: ShowId,
    pub reason: FailureReason,
}

/// Who cancelled a booking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelledBy {
    Holder,
    Admin,
}

/// `booking.cancelled.v1`. A refund, if money was kept, is requested in the same append. When
/// `previous_status` is `confirmed`, seat-lock releases the sold seats on the show stream; when
/// `held` or `paid`, it drops its hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingCancelled {
    pub booking_id: BookingId,
    pub show_id: ShowId,
    pub by: CancelledBy,
    pub seats: BTreeSet<SeatId>,
    pub previous_status: BookingStatus,
}

/// `booking.abandoned.v1`: a service gave up on a record of the booking (a dead letter: a
/// handler that failed for good or panicked, a decision the domain refused), so the booking
/// ends `failed` instead of waiting for ever (DESIGN.md). A refund, if money was kept, is
/// requested in the same append; seat-lock drops the hold. A type of its own, not a new
/// `booking.failed` reason, so that services that do not know it skip it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingAbandoned {
    pub booking_id: BookingId,
    pub show_id: ShowId,
    pub seats: BTreeSet<SeatId>,
    pub previous_status: BookingStatus,
    /// Why, for operators (the dead letter's reason).
    pub reason: String,
}

/// `booking.refund_requested.v1`: give one charge back (payment carries it out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequested {
    pub booking_id: BookingId,
    pub show_id: ShowId,
    pub charge_id: String,
    pub amount: Money,
}

/// `booking.refunded.v1`: the provider refunded one charge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingRefunded {
    pub booking_id: BookingId,
    pub show_id: ShowId,
    pub charge_id: String,
    pub refund_id: String,
    pub amount: Money,
}

/// `booking.email_sent.v2`: the notifier told the customer about an event. (`v1`, without the
/// channel, is read through an upcaster as channel `unknown`.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailSent {
    pub booking_id: BookingId,
    pub show_id: ShowId,
    /// The event the email was about.
    pub about_event_id: EventId,
    /// The email's Message-ID.
    pub message_id: String,
    /// How the email was delivered.
    pub channel: EmailChannel,
}

/// How the notifier delivered an email.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailChannel {
    /// Handed to an SMTP server.
    Smtp,
    /// Written as a file into a mail folder.
    MailFolder,
    /// Not recorded (`booking.email_sent.v1` events, mailers that do not say).
    Unknown,
}

event_family! {
    /// An event of a booking stream. Every payload carries the booking id and the show id (the
    /// partition key).
    pub enum BookingEvent {
        ids { booking_id: BookingId, show_id: ShowId }
        Requested(BookingRequested) = event_types::BOOKING_REQUESTED,
        SeatsHeld(SeatsHeld) = event_types::BOOKING_SEATS_HELD,
        Rejected(BookingRejected) = event_types::BOOKING_REJECTED,
        HoldExpired(HoldExpired) = event_types::BOOKING_HOLD_EXPIRED,
        PaymentSucceeded(PaymentSucceeded) = event_types::BOOKING_PAYMENT_SUCCEEDED,
        PaymentFailed(PaymentFailed) = event_types::BOOKING_PAYMENT_FAILED,
        Confirmed(BookingConfirmed) = event_types::BOOKING_CONFIRMED,
        Failed(BookingFailed) = event_types::BOOKING_FAILED,
        Cancelled(BookingCancelled) = event_types::BOOKING_CANCELLED,
        Abandoned(BookingAbandoned) = event_types::BOOKING_ABANDONED,
        RefundRequested(RefundRequested) = event_types::BOOKING_REFUND_REQUESTED,
        Refunded(BookingRefunded) = event_types::BOOKING_REFUNDED,
        EmailSent(EmailSent) = event_types::BOOKING_EMAIL_SENT,
    }
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// Request seats (the API, after [`crate::show::Show::price_seats`] fixed the amount).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestBooking {
    pub booking_id: BookingId,
    pub show_id: ShowId,
    pub seats: BTreeSet<SeatId>,
    pub customer: Customer,
    pub payment_method: Option<String>,
    pub amount: Money,
    pub requested_at: DateTime<Utc>,
    pub access: BookingAccess,
}

/// A command on a booking stream. Apart from `Request`, commands address the booking whose
/// state they are decided against.
// A command lives for one decision and is never stored in bulk: its size does not matter, and
// boxing the request would only make every caller's construction noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BookingCommand {
    /// Create the booking (API).
    Request(RequestBooking),
    /// Record that seat-lock holds the seats until `expires_at` (seat-lock).
    HoldSeats { expires_at: DateTime<Utc> },
    /// Record that some seats were taken (seat-lock).
    Reject { taken: BTreeSet<SeatId> },
    /// End an unpaid hold; refused before `expires_at` (seat-lock's timer).
    ExpireHold { now: DateTime<Utc> },
    /// Record money taken (payment).
    RecordPayment { charge_id: String, amount: Money },
    /// Record a payment that failed for good (payment).
    RecordPaymentFailure {
        reason: PaymentFailureReason,
        detail: String,
    },
    /// Record that the seats were sold (seat-lock, in one append with `show.seats_sold.v1`).
    Confirm,
    /// Record that the seats could not be sold (seat-lock, when the show refused the sale).
    RecordSeatsLost,
    /// Cancel (the holder or an admin, through the API).
    Cancel { by: CancelledBy },
    /// Record a completed refund of one charge (payment).
    RecordRefund {
        charge_id: String,
        refund_id: String,
    },
    /// End the booking because a service gave up on one of its records (the consumer runtime,
    /// after a dead letter): `failed`, refunded if paid. Nothing to do once it has ended.
    Abandon { reason: String },
    /// Record an email sent about an event (notifier).
    RecordEmailSent {
        about_event_id: EventId,
        message_id: String,
        channel: EmailChannel,
    },
}

impl BookingCommand {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Request(_) => "request",
            Self::HoldSeats { .. } => "hold_seats",
            Self::Reject { .. } => "reject",
            Self::ExpireHold { .. } => "expire_hold",
            Self::RecordPayment { .. } => "record_payment",
            Self::RecordPaymentFailure { .. } => "record_payment_failure",
            Self::Confirm => "confirm",
            Self::RecordSeatsLost => "record_seats_lost",
            Self::Cancel { .. } => "cancel",
            Self::RecordRefund { .. } => "record_refund",
            Self::Abandon { .. } => "abandon",
            Self::RecordEmailSent { .. } => "record_email_sent",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/// The refund of one charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundProgress {
    /// Not asked for: the charge pays for the booking (or is about to be refunded in the same
    /// decision that recorded it).
    NotRequested,
    Pending,
    Refunded {
        refund_id: String,
    },
}

/// Money taken for a booking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    pub amount: Money,
    pub refund: RefundProgress,
}

/// The status with the data that only exists in it, so that, say, a paid booking always knows
/// the charge that paid it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Requested,
    Held {
        expires_at: DateTime<Utc>,
    },
    Paid {
        charge_id: String,
    },
    Confirmed {
        charge_id: String,
    },
    Rejected,
    Expired,
    Cancelled {
        by: CancelledBy,
    },
    Failed {
        reason: FailureReason,
    },
    /// Ended by a service that gave up on one of its records (status `failed`).
    Abandoned,
}

/// A booking, as its events made it. Build it by folding its events ([`evolve`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Booking {
    booking_id: BookingId,
    show_id: ShowId,
    seats: BTreeSet<SeatId>,
    customer: Customer,
    payment_method: Option<String>,
    amount: Money,
    requested_at: DateTime<Utc>,
    access: BookingAccess,
    phase: Phase,
    hold_expires_at: Option<DateTime<Utc>>,
    taken_seats: BTreeSet<SeatId>,
    last_payment_failure: Option<(PaymentFailureReason, String)>,
    charges: BTreeMap<String, Charge>,
    emails_sent: BTreeSet<EventId>,
}

/// The state of a booking stream: `None` until it is requested.
pub type BookingState = Option<Booking>;

impl Booking {
    pub fn booking_id(&self) -> BookingId {
        self.booking_id
    }

    pub fn show_id(&self) -> ShowId {
        self.show_id
    }

    pub fn seats(&self) -> &BTreeSet<SeatId> {
        &self.seats
    }

    pub fn customer(&self) -> &Customer {
        &self.customer
    }

    pub fn payment_method(&self) -> Option<&str> {
        self.payment_method.as_deref()
    }

    /// The amount fixed when the booking was requested.
    pub fn amount(&self) -> Money {
        self.amount
    }

    pub fn requested_at(&self) -> DateTime<Utc> {
        self.requested_at
    }

    /// The token hash and idempotency key recorded with the request.
    pub fn access(&self) -> &BookingAccess {
        &self.access
    }

    pub fn status(&self) -> BookingStatus {
        match self.phase {
            Phase::Requested => BookingStatus::Requested,
            Phase::Held { .. } => BookingStatus::Held,
            Phase::Paid { .. } => BookingStatus::Paid,
            Phase::Confirmed { .. } => BookingStatus::Confirmed,
            Phase::Rejected => BookingStatus::Rejected,
            Phase::Expired => BookingStatus::Expired,
            Phase::Cancelled { .. } => BookingStatus::Cancelled,
            Phase::Failed { .. } | Phase::Abandoned => BookingStatus::Failed,
        }
    }

    /// The recorded end of the hold, once seats were held (it stays after the hold ended).
    pub fn hold_expires_at(&self) -> Option<DateTime<Utc>> {
        self.hold_expires_at
    }

    /// The seats found taken, when the booking was rejected.
    pub fn taken_seats(&self) -> &BTreeSet<SeatId> {
        &self.taken_seats
    }

    pub fn cancelled_by(&self) -> Option<CancelledBy> {
        match self.phase {
            Phase::Cancelled { by } => Some(by),
            _ => None,
        }
    }

    pub fn failure_reason(&self) -> Option<FailureReason> {
        match self.phase {
            Phase::Failed { reason } => Some(reason),
            _ => None,
        }
    }

    /// The last recorded payment failure and the provider's detail.
    pub fn last_payment_failure(&self) -> Option<(PaymentFailureReason, &str)> {
        self.last_payment_failure
            .as_ref()
            .map(|(reason, detail)| (*reason, detail.as_str()))
    }

    /// Every charge recorded, by charge id.
    pub fn charges(&self) -> &BTreeMap<String, Charge> {
        &self.charges
    }

    /// The charge that pays for the booking, while it is paid or confirmed.
    pub fn paying_charge_id(&self) -> Option<&str> {
        match &self.phase {
            Phase::Paid { charge_id } | Phase::Confirmed { charge_id } => Some(charge_id),
            _ => None,
        }
    }

    pub fn refund_status(&self) -> RefundStatus {
        let mut requested = false;
        for charge in self.charges.values() {
            match charge.refund {
                RefundProgress::NotRequested => {}
                RefundProgress::Pending => return RefundStatus::Pending,
                RefundProgress::Refunded { .. } => requested = true,
            }
        }
        if requested {
            RefundStatus::Refunded
        } else {
            RefundStatus::None
        }
    }

    /// The events an email was recorded for.
    pub fn emails_sent(&self) -> &BTreeSet<EventId> {
        &self.emails_sent
    }

    fn requested(event: &BookingRequested) -> Self {
        Self {
            booking_id: event.booking_id,
            show_id: event.show_id,
            seats: event.seats.clone(),
            customer: event.customer.clone(),
            payment_method: event.payment_method.clone(),
            amount: event.amount,
            requested_at: event.requested_at,
            access: event.access.clone(),
            phase: Phase::Requested,
            hold_expires_at: None,
            taken_seats: BTreeSet::new(),
            last_payment_failure: None,
            charges: BTreeMap::new(),
            emails_sent: BTreeSet::new(),
        }
    }

    fn already_finished(&self) -> DomainError {
        DomainError::AlreadyFinished {
            status: self.status(),
        }
    }

    fn cannot(&self, command: &'static str) -> DomainError {
        DomainError::InvalidTransition {
            command,
            status: self.status(),
        }
    }

    fn refund(&self, charge_id: &str, amount: Money) -> BookingEvent {
        BookingEvent::RefundRequested(RefundRequested {
            booking_id: self.booking_id,
            show_id: self.show_id,
            charge_id: charge_id.to_owned(),
            amount,
        })
    }

    /// The refund of the charge that paid for the booking.
    fn refund_paying_charge(&self, charge_id: &str) -> BookingEvent {
        // The paying charge was accepted only for the booking's amount, so the booking's amount
        // is the fallback should the charge be missing from a hand-built history.
        let amount = self
            .charges
            .get(charge_id)
            .map_or(self.amount, |charge| charge.amount);
        self.refund(charge_id, amount)
    }

    fn failed(&self, reason: FailureReason) -> BookingEvent {
        BookingEvent::Failed(BookingFailed {
            booking_id: self.booking_id,
            show_id: self.show_id,
            reason,
        })
    }

    // --- decisions ---------------------------------------------------------------------------

    fn request_again(&self, request: &RequestBooking) -> Result<Vec<BookingEvent>, DomainError> {
        // The same request again (a retried API call) is already recorded; `requested_at` of a
        // retry differs, so it is not compared.
        let same = self.show_id == request.show_id
            && self.seats == request.seats
            && self.customer == request.customer
            && self.payment_method == request.payment_method
            && self.amount == request.amount;
        if same {
            Ok(vec![])
        } else {
            Err(DomainError::BookingAlreadyExists {
                booking_id: self.booking_id,
            })
        }
    }

    fn decide(&self, command: BookingCommand) -> Result<Vec<BookingEvent>, DomainError> {
        match command {
            BookingCommand::Request(request) => self.request_again(&request),
            BookingCommand::HoldSeats { expires_at } => self.hold_seats(expires_at),
            BookingCommand::Reject { taken } => self.reject(taken),
            BookingCommand::ExpireHold { now } => self.expire_hold(now),
            BookingCommand::RecordPayment { charge_id, amount } => {
                self.record_payment(charge_id, amount)
            }
            BookingCommand::RecordPaymentFailure { reason, detail } => {
                self.record_payment_failure(reason, detail)
            }
            BookingCommand::Confirm => self.confirm(),
            BookingCommand::RecordSeatsLost => self.record_seats_lost(),
            BookingCommand::Cancel { by } => self.cancel(by),
            BookingCommand::Abandon { reason } => Ok(self.abandon(reason)),
            BookingCommand::RecordRefund {
                charge_id,
                refund_id,
            } => self.record_refund(&charge_id, refund_id),
            BookingCommand::RecordEmailSent {
                about_event_id,
                message_id,
                channel,
            } => self.record_email_sent(about_event_id, message_id, channel),
        }
    }

    fn hold_seats(&self, expires_at: DateTime<Utc>) -> Result<Vec<BookingEvent>, DomainError> {
        match self.phase {
            Phase::Requested => {
                if expires_at <= self.requested_at {
                    return Err(DomainError::InvalidCommand {
                        reason: "a hold must end after the booking was requested",
                    });
                }
                Ok(vec![BookingEvent::SeatsHeld(SeatsHeld {
                    booking_id: self.booking_id,
                    show_id: self.show_id,
                    seats: self.seats.clone(),
                    amount: self.amount,
                    expires_at,
                })])
            }
            // Held already (or past it): the recorded `expires_at` stands, whatever this
            // redelivery computed.
            Phase::Held { .. } | Phase::Paid { .. } | Phase::Confirmed { .. } => Ok(vec![]),
            _ => Err(self.already_finished()),
        }
    }

    fn reject(&self, taken: BTreeSet<SeatId>) -> Result<Vec<BookingEvent>, DomainError> {
        match self.phase {
            Phase::Requested => {
                if taken.is_empty() {
                    return Err(DomainError::InvalidCommand {
                        reason: "a rejection must name the taken seats",
                    });
                }
                if !taken.is_subset(&self.seats) {
                    return Err(DomainError::InvalidCommand {
                        reason: "taken seats must be seats of the booking",
                    });
                }
                Ok(vec![BookingEvent::Rejected(BookingRejected {
                    booking_id: self.booking_id,
                    show_id: self.show_id,
                    taken,
                })])
            }
            Phase::Rejected => Ok(vec![]),
            Phase::Held { .. } | Phase::Paid { .. } | Phase::Confirmed { .. } => {
                Err(self.cannot("reject"))
            }
            _ => Err(self.already_finished()),
        }
    }

    fn expire_hold(&self, now: DateTime<Utc>) -> Result<Vec<BookingEvent>, DomainError> {
        match self.phase {
            Phase::Held { expires_at } => {
                if now < expires_at {
                    return Err(DomainError::HoldNotExpired { expires_at });
                }
                Ok(vec![BookingEvent::HoldExpired(HoldExpired {
                    booking_id: self.booking_id,
                    show_id: self.show_id,
                    seats: self.seats.clone(),
                    expires_at,
                })])
            }
            // Paid first: the payment won the race, the expiry is moot.
            Phase::Paid { .. } | Phase::Confirmed { .. } | Phase::Expired => Ok(vec![]),
            Phase::Requested => Err(self.cannot("expire the hold of")),
            _ => Err(self.already_finished()),
        }
    }

    fn record_payment(
        &self,
        charge_id: String,
        amount: Money,
    ) -> Result<Vec<BookingEvent>, DomainError> {
        if charge_id.trim().is_empty() {
            return Err(DomainError::InvalidCommand {
                reason: "charge_id must not be empty",
            });
        }
        if self.charges.contains_key(&charge_id) {
            return Ok(vec![]);
        }
        let succeeded = BookingEvent::PaymentSucceeded(PaymentSucceeded {
            booking_id: self.booking_id,
            show_id: self.show_id,
            charge_id: charge_id.clone(),
            amount,
        });
        // Money taken is never refused (a refusal would leave it untracked): a charge that
        // cannot pay for the booking is recorded and refunded in the same decision.
        match self.phase {
            Phase::Held { .. } if amount == self.amount => Ok(vec![succeeded]),
            // The hold expired first: the payment lost the race, so the money goes back.
            Phase::Expired => Ok(vec![
                succeeded,
                self.failed(FailureReason::SeatsLost),
                self.refund(&charge_id, amount),
            ]),
            // Not the booking's amount (the booking stays held), before the hold (payment only
            // starts on held seats), a second charge, or money taken after the booking ended.
            Phase::Held { .. }
            | Phase::Requested
            | Phase::Paid { .. }
            | Phase::Confirmed { .. }
            | Phase::Rejected
            | Phase::Cancelled { .. }
            | Phase::Failed { .. }
            | Phase::Abandoned => Ok(vec![succeeded, self.refund(&charge_id, amount)]),
        }
    }

    fn record_payment_failure(
        &self,
        reason: PaymentFailureReason,
        detail: String,
    ) -> Result<Vec<BookingEvent>, DomainError> {
        match self.phase {
            Phase::Held { .. } => Ok(vec![
                BookingEvent::PaymentFailed(PaymentFailed {
                    booking_id: self.booking_id,
                    show_id: self.show_id,
                    reason,
                    detail,
                }),
                self.failed(reason.into()),
            ]),
            Phase::Failed { reason: failed } if failed == FailureReason::from(reason) => Ok(vec![]),
            Phase::Requested | Phase::Paid { .. } | Phase::Confirmed { .. } => {
                Err(self.cannot("record a payment failure for"))
            }
            _ => Err(self.already_finished()),
        }
    }

    fn confirm(&self) -> Result<Vec<BookingEvent>, DomainError> {
        match self.phase {
            Phase::Paid { .. } => Ok(vec![BookingEvent::Confirmed(BookingConfirmed {
                booking_id: self.booking_id,
                show_id: self.show_id,
                seats: self.seats.clone(),
            })]),
            Phase::Confirmed { .. } => Ok(vec![]),
            Phase::Requested | Phase::Held { .. } => Err(self.cannot("confirm")),
            _ => Err(self.already_finished()),
        }
    }

    fn record_seats_lost(&self) -> Result<Vec<BookingEvent>, DomainError> {
        match &self.phase {
            // Not paid yet: fail now; a payment arriving later is refunded.
            Phase::Held { .. } => Ok(vec![self.failed(FailureReason::SeatsLost)]),
            Phase::Paid { charge_id } => Ok(vec![
                self.failed(FailureReason::SeatsLost),
                self.refund_paying_charge(charge_id),
            ]),
            Phase::Failed {
                reason: FailureReason::SeatsLost,
            } => Ok(vec![]),
            // Requested: nothing was held, that is a rejection. Confirmed: the seats are sold.
            Phase::Requested | Phase::Confirmed { .. } => Err(self.cannot("record lost seats for")),
            _ => Err(self.already_finished()),
        }
    }

    fn cancel(&self, by: CancelledBy) -> Result<Vec<BookingEvent>, DomainError> {
        let cancelled = BookingEvent::Cancelled(BookingCancelled {
            booking_id: self.booking_id,
            show_id: self.show_id,
            by,
            seats: self.seats.clone(),
            previous_status: self.status(),
        });
        match &self.phase {
            Phase::Requested | Phase::Held { .. } => Ok(vec![cancelled]),
            Phase::Paid { charge_id } | Phase::Confirmed { charge_id } => {
                Ok(vec![cancelled, self.refund_paying_charge(charge_id)])
            }
            // Cancelling twice is refused too: the API answers 409 to a finished booking.
            _ => Err(self.already_finished()),
        }
    }

    fn abandon(&self, reason: String) -> Vec<BookingEvent> {
        let abandoned = BookingEvent::Abandoned(BookingAbandoned {
            booking_id: self.booking_id,
            show_id: self.show_id,
            seats: self.seats.clone(),
            previous_status: self.status(),
            reason,
        });
        match &self.phase {
            Phase::Requested | Phase::Held { .. } => vec![abandoned],
            Phase::Paid { charge_id } => vec![abandoned, self.refund_paying_charge(charge_id)],
            // Ended already (a confirmed booking stays confirmed: a dead letter about its email
            // does not undo the sale). Nothing to do, so a redelivered abandon is harmless.
            Phase::Confirmed { .. }
            | Phase::Rejected
            | Phase::Expired
            | Phase::Cancelled { .. }
            | Phase::Failed { .. }
            | Phase::Abandoned => vec![],
        }
    }

    fn record_refund(
        &self,
        charge_id: &str,
        refund_id: String,
    ) -> Result<Vec<BookingEvent>, DomainError> {
        if refund_id.trim().is_empty() {
            return Err(DomainError::InvalidCommand {
                reason: "refund_id must not be empty",
            });
        }
        let Some(charge) = self.charges.get(charge_id) else {
            return Err(DomainError::UnknownCharge {
                charge_id: charge_id.to_owned(),
            });
        };
        match &charge.refund {
            RefundProgress::Pending => Ok(vec![BookingEvent::Refunded(BookingRefunded {
                booking_id: self.booking_id,
                show_id: self.show_id,
                charge_id: charge_id.to_owned(),
                refund_id,
                amount: charge.amount,
            })]),
            RefundProgress::Refunded {
                refund_id: recorded,
            } if *recorded == refund_id => Ok(vec![]),
            RefundProgress::Refunded {
                refund_id: recorded,
            } => Err(DomainError::RefundAlreadyRecorded {
                charge_id: charge_id.to_owned(),
                refund_id: recorded.clone(),
            }),
            RefundProgress::NotRequested => Err(DomainError::RefundNotRequested {
                charge_id: charge_id.to_owned(),
            }),
        }
    }

    fn record_email_sent(
        &self,
        about_event_id: EventId,
        message_id: String,
        channel: EmailChannel,
    ) -> Result<Vec<BookingEvent>, DomainError> {
        if message_id.trim().is_empty() {
            return Err(DomainError::InvalidCommand {
                reason: "message_id must not be empty",
            });
        }
        if self.emails_sent.contains(&about_event_id) {
            return Ok(vec![]);
        }
        Ok(vec![BookingEvent::EmailSent(EmailSent {
            booking_id: self.booking_id,
            show_id: self.show_id,
            about_event_id,
            message_id,
            channel,
        })])
    }

    // --- evolution ---------------------------------------------------------------------------

    fn apply(&mut self, event: &BookingEvent) {
        match event {
            BookingEvent::Requested(_) => {}
            BookingEvent::SeatsHeld(held) => {
                if self.phase == Phase::Requested {
                    self.phase = Phase::Held {
                        expires_at: held.expires_at,
                    };
                    self.hold_expires_at = Some(held.expires_at);
                }
            }
            BookingEvent::Rejected(rejected) => {
                self.phase = Phase::Rejected;
                self.taken_seats = rejected.taken.clone();
            }
            BookingEvent::HoldExpired(_) => self.phase = Phase::Expired,
            BookingEvent::PaymentSucceeded(paid) => {
                self.charges.insert(
                    paid.charge_id.clone(),
                    Charge {
                        amount: paid.amount,
                        refund: RefundProgress::NotRequested,
                    },
                );
                // Only a charge of the booking's amount pays for it (others are refunded).
                if matches!(self.phase, Phase::Held { .. }) && paid.amount == self.amount {
                    self.phase = Phase::Paid {
                        charge_id: paid.charge_id.clone(),
                    };
                }
            }
            BookingEvent::PaymentFailed(failed) => {
                self.last_payment_failure = Some((failed.reason, failed.detail.clone()));
            }
            BookingEvent::Confirmed(_) => {
                if let Phase::Paid { charge_id } = &self.phase {
                    self.phase = Phase::Confirmed {
                        charge_id: charge_id.clone(),
                    };
                }
            }
            BookingEvent::Failed(failed) => {
                self.phase = Phase::Failed {
                    reason: failed.reason,
                }
            }
            BookingEvent::Cancelled(cancelled) => {
                self.phase = Phase::Cancelled { by: cancelled.by }
            }
            BookingEvent::Abandoned(_) => self.phase = Phase::Abandoned,
            BookingEvent::RefundRequested(refund) => {
                // A refund of a charge this state never saw still has to be tracked.
                self.charges
                    .entry(refund.charge_id.clone())
                    .or_insert(Charge {
                        amount: refund.amount,
                        refund: RefundProgress::NotRequested,
                    })
                    .refund = RefundProgress::Pending;
            }
            BookingEvent::Refunded(refunded) => {
                self.charges
                    .entry(refunded.charge_id.clone())
                    .or_insert(Charge {
                        amount: refunded.amount,
                        refund: RefundProgress::NotRequested,
                    })
                    .refund = RefundProgress::Refunded {
                    refund_id: refunded.refund_id.clone(),
                };
            }
            BookingEvent::EmailSent(sent) => {
                self.emails_sent.insert(sent.about_event_id);
            }
        }
    }
}

fn request_booking(request: RequestBooking) -> Result<Vec<BookingEvent>, DomainError> {
    if request.seats.is_empty() {
        return Err(DomainError::NoSeats);
    }
    if request.seats.len() > MAX_SEATS_PER_BOOKING {
        return Err(DomainError::TooManySeats {
            requested: request.seats.len(),
            max: MAX_SEATS_PER_BOOKING,
        });
    }
    if request.amount.amount_minor < 0 {
        return Err(DomainError::InvalidCommand {
            reason: "amount must not be negative",
        });
    }
    if let Some(method) = &request.payment_method {
        if method.is_empty() || method.chars().count() > MAX_PAYMENT_METHOD_CHARS {
            return Err(DomainError::InvalidCommand {
                reason: "payment_method must be 1 to 256 characters",
            });
        }
        if method.chars().any(char::is_control) {
            return Err(DomainError::InvalidCommand {
                reason: "payment_method must not contain control characters",
            });
        }
    }
    Ok(vec![BookingEvent::Requested(BookingRequested {
        booking_id: request.booking_id,
        show_id: request.show_id,
        seats: request.seats,
        customer: request.customer,
        payment_method: request.payment_method,
        amount: request.amount,
        requested_at: request.requested_at,
        access: request.access,
    })])
}

// ---------------------------------------------------------------------------------------------
// Decide and evolve
// ---------------------------------------------------------------------------------------------

/// Decides what a command on a booking stream means: the events to append, or why not. See the
/// module documentation for the rules.
pub fn decide(
    state: &BookingState,
    command: BookingCommand,
) -> Result<Vec<BookingEvent>, DomainError> {
    match (state, command) {
        (None, BookingCommand::Request(request)) => request_booking(request),
        (None, _) => Err(DomainError::BookingNotFound),
        (Some(booking), command) => booking.decide(command),
    }
}

/// Applies one recorded event. Events are facts: evolve never refuses one, and an event that
/// does not fit the state (which the decider never produces) changes as little as it can.
pub fn evolve(state: BookingState, event: &BookingEvent) -> BookingState {
    match (state, event) {
        (None, BookingEvent::Requested(requested)) => Some(Booking::requested(requested)),
        (None, _) => None,
        (Some(mut booking), event) => {
            booking.apply(event);
            Some(booking)
        }
    }
}
