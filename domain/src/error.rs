//! The one error type of the domain: every refusal of a value, a show or a booking command.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::booking::BookingStatus;
use crate::ids::{BookingId, ShowId};
use crate::money::Currency;
use crate::seat::SeatId;

/// Why the domain refused a value or a command.
///
/// [`DomainError::kind`] groups the variants the way a caller reacts to them (the API maps
/// [`ErrorKind::Invalid`] to 422, [`ErrorKind::NotFound`] to 404, [`ErrorKind::Conflict`] to 409).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    // --- malformed values -------------------------------------------------------------------
    /// A UUID-based id (show, booking, event) that does not parse.
    #[error("invalid {kind}: {input:?} is not a UUID")]
    InvalidId { kind: &'static str, input: String },
    /// A seat id that is not `SECTION-ROW-NUMBER`.
    #[error("invalid seat id {input:?}: {reason}")]
    InvalidSeatId { input: String, reason: &'static str },
    /// A currency that is malformed or not an active ISO 4217 code.
    #[error("invalid currency {input:?}: {reason}")]
    InvalidCurrency { input: String, reason: &'static str },
    /// A part of the customer (`field` is `id`, `email` or `name`) that is not acceptable.
    #[error("invalid customer {field}: {reason}")]
    InvalidCustomer {
        field: &'static str,
        reason: &'static str,
    },
    /// A show definition that breaks a scheduling rule.
    #[error("invalid show: {reason}")]
    InvalidShow { reason: String },
    /// A command field that is not acceptable (an empty charge id, a hold ending before the request…).
    #[error("invalid command: {reason}")]
    InvalidCommand { reason: &'static str },

    // --- seat selection (checked when a booking is requested) -------------------------------
    /// A booking must name at least one seat.
    #[error("no seats requested")]
    NoSeats,
    /// A booking names more seats than one booking may take.
    #[error("{requested} seats requested, at most {max} per booking")]
    TooManySeats { requested: usize, max: usize },
    /// A seat named more than once in one request.
    #[error("duplicate seats: {}", seat_list(seats))]
    DuplicateSeats { seats: BTreeSet<SeatId> },
    /// Seats that do not exist in the show.
    #[error("unknown seats: {}", seat_list(seats))]
    UnknownSeats { seats: BTreeSet<SeatId> },

    // --- money -----------------------------------------------------------------------------
    #[error("currency mismatch: expected {expected}, got {found}")]
    CurrencyMismatch { expected: Currency, found: Currency },
    #[error("amount overflow")]
    AmountOverflow,

    // --- missing streams --------------------------------------------------------------------
    #[error("show not found")]
    ShowNotFound,
    #[error("booking not found")]
    BookingNotFound,

    // --- conflicts with the current state ---------------------------------------------------
    /// The show was scheduled already, with other data.
    #[error("show {show_id} is already scheduled with other data")]
    ShowAlreadyScheduled { show_id: ShowId },
    /// The booking id is taken by a request with other data.
    #[error("booking {booking_id} already exists with other data")]
    BookingAlreadyExists { booking_id: BookingId },
    /// Seats sold to another booking.
    #[error("seats not available: {}", seat_list(taken))]
    SeatsUnavailable { taken: BTreeSet<SeatId> },
    /// A sale for a booking that already owns a different set of seats of the show.
    #[error("booking {booking_id} already owns other seats: {}", seat_list(owned))]
    BookingOwnsOtherSeats {
        booking_id: BookingId,
        owned: BTreeSet<SeatId>,
    },
    /// The booking has reached `rejected`, `expired`, `cancelled` or `failed`: it takes no more
    /// commands except money bookkeeping (late payments are refunded, refunds are recorded).
    #[error("booking is already {status}")]
    AlreadyFinished { status: BookingStatus },
    /// A command that makes no sense in the booking's current status (confirm an unpaid booking…).
    #[error("cannot {command} a booking that is {status}")]
    InvalidTransition {
        command: &'static str,
        status: BookingStatus,
    },
    /// `ExpireHold` before the recorded `expires_at`.
    #[error("hold does not expire before {expires_at}")]
    HoldNotExpired { expires_at: DateTime<Utc> },
    /// A refund completion for a charge the booking never recorded.
    #[error("unknown charge {charge_id:?}")]
    UnknownCharge { charge_id: String },
    /// A refund completion for a charge whose refund was never requested.
    #[error("no refund was requested for charge {charge_id:?}")]
    RefundNotRequested { charge_id: String },
    /// A second, different refund for a charge already refunded.
    #[error("charge {charge_id:?} was already refunded by {refund_id:?}")]
    RefundAlreadyRecorded {
        charge_id: String,
        refund_id: String,
    },
}

/// How a caller should react to a [`DomainError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input is well-formed but invalid (HTTP 422).
    Invalid,
    /// The show or booking does not exist (HTTP 404).
    NotFound,
    /// The command conflicts with the current state (HTTP 409).
    Conflict,
}

impl DomainError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidId { .. }
            | Self::InvalidSeatId { .. }
            | Self::InvalidCurrency { .. }
            | Self::InvalidCustomer { .. }
            | Self::InvalidShow { .. }
            | Self::InvalidCommand { .. }
            | Self::NoSeats
            | Self::TooManySeats { .. }
            | Self::DuplicateSeats { .. }
            | Self::UnknownSeats { .. }
            | Self::CurrencyMismatch { .. }
            | Self::AmountOverflow => ErrorKind::Invalid,
            Self::ShowNotFound | Self::BookingNotFound => ErrorKind::NotFound,
            Self::ShowAlreadyScheduled { .. }
            | Self::BookingAlreadyExists { .. }
            | Self::SeatsUnavailable { .. }
            | Self::BookingOwnsOtherSeats { .. }
            | Self::AlreadyFinished { .. }
            | Self::InvalidTransition { .. }
            | Self::HoldNotExpired { .. }
            | Self::UnknownCharge { .. }
            | Self::RefundNotRequested { .. }
            | Self::RefundAlreadyRecorded { .. } => ErrorKind::Conflict,
        }
    }
}

fn seat_list(seats: &BTreeSet<SeatId>) -> String {
    let mut list = String::new();
    for (index, seat) in seats.iter().enumerate() {
        if index > 0 {
            list.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = write!(list, "{seat}");
    }
    list
}
