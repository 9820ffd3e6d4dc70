//! The read models as values, and how each event changes them: pure code, no I/O (the runner
//! loads the rows an event batch touches, applies the events here, and writes the rows back).
//!
//! - [`BookingView`]: what `GET /bookings/{id}` answers (status, seats, customer, amount,
//!   currency, refund status, timeline), also listed per customer.
//! - [`SeatClaim`]: a seat that is not free (held or sold, and by which booking); a seat with no
//!   claim is free.
//! - [`ShowStats`]: per show, how many bookings reached each status, and money taken and given
//!   back per currency.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::booking::BookingEvent;
use domain::{BookingId, BookingStatus, Customer, RefundStatus, SeatId, ShowId};
use serde::{Deserialize, Serialize};

/// One event of a booking's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    #[serde(rename = "type")]
    pub event_type: String,
    pub at: DateTime<Utc>,
    pub position: u64,
}

/// A booking as queries show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingView {
    pub booking_id: BookingId,
    pub show_id: ShowId,
    pub seats: Vec<SeatId>,
    pub customer: Customer,
    pub status: BookingStatus,
    pub amount_cents: i64,
    pub currency: String,
    pub refund_status: RefundStatus,
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// Every charge and where its refund stands.
    pub charges: BTreeMap<String, ChargeRefund>,
    pub timeline: Vec<TimelineEntry>,
    /// The SHA-256 of the holder's access token (never the token).
    pub access_token_sha256: Option<String>,
    pub last_position: u64,
}

impl BookingView {
    /// The view a booking starts as; `None` for any other first event.
    pub fn requested(event: &BookingEvent, entry: TimelineEntry) -> Option<BookingView> {
        let BookingEvent::Requested(requested) = event else {
            return None;
        };
        Some(BookingView {
            booking_id: requested.booking_id,
            show_id: requested.show_id,
            seats: requested.seats.iter().cloned().collect(),
            customer: requested.customer.clone(),
            status: BookingStatus::Requested,
            amount_cents: requested.amount.amount_minor,
            currency: requested.amount.currency.to_string(),
            refund_status: RefundStatus::None,
            hold_expires_at: None,
            charges: BTreeMap::new(),
            last_position: entry.position,
            timeline: vec![entry],
            access_token_sha256: requested.access.access_token_sha256.clone(),
        })
    }

    /// Apply a later event of the booking (the status follows the booking decider's rules:
    /// facts arrive in the order they were decided).
    pub fn apply(&mut self, event: &BookingEvent, entry: TimelineEntry) {
        if entry.position <= self.last_position {
            // Already applied (a replayed batch): views are idempotent by position.
            return;
        }
        self.last_position = entry.position;
        self.timeline.push(entry);
        match event {
            BookingEvent::Requested(_) => {}
            BookingEvent::SeatsHeld(held) => {
                if self.status == BookingStatus::Requested {
                    self.status = BookingStatus::Held;
                    self.hold_expires_at = Some(held.expires_at);
                }
            }
            BookingEvent::Rejected(_) => self.status = BookingStatus::Rejected,
            BookingEvent::HoldExpired(_) => self.status = BookingStatus::Expired,
            BookingEvent::PaymentSucceeded(paid) => {
                self.charges
                    .entry(paid.charge_id.clone())
                    .or_insert(ChargeRefund::NotRequested);
                if self.status == BookingStatus::Held
                    && paid.amount.amount_minor == self.amount_cents
                {
                    self.status = BookingStatus::Paid;
                }
            }
            BookingEvent::PaymentFailed(_) => {}
            BookingEvent::Confirmed(_) => self.status = BookingStatus::Confirmed,
            BookingEvent::Failed(_) | BookingEvent::Abandoned(_) => {
                self.status = BookingStatus::Failed
            }
            BookingEvent::Cancelled(_) => self.status = BookingStatus::Cancelled,
            BookingEvent::RefundRequested(refund) => {
                self.charges
                    .insert(refund.charge_id.clone(), ChargeRefund::Pending);
            }
            BookingEvent::Refunded(refunded) => {
                self.charges
                    .insert(refunded.charge_id.clone(), ChargeRefund::Refunded);
            }
            BookingEvent::EmailSent(_) => {}
        }
        // As the booking decider reports it: pending while any requested refund is open.
        self.refund_status = if self.charges.values().any(|c| *c == ChargeRefund::Pending) {
            RefundStatus::Pending
        } else if self.charges.values().any(|c| *c == ChargeRefund::Refunded) {
            RefundStatus::Refunded
        } else {
            RefundStatus::None
        };
    }
}

/// Where the refund of one charge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeRefund {
    /// Kept (it paid for the booking), or not yet decided.
    NotRequested,
    Pending,
    Refunded,
}

/// A seat that is held or sold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatClaim {
    pub booking_id: BookingId,
    pub sold: bool,
}

/// Per show: bookings per outcome, money per currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShowStats {
    pub requested: u64,
    pub held: u64,
    pub confirmed: u64,
    pub rejected: u64,
    pub expired: u64,
    pub cancelled: u64,
    pub failed: u64,
    /// Money taken, per currency (minor units).
    pub revenue: BTreeMap<String, i64>,
    /// Money given back, per currency (minor units).
    pub refunds: BTreeMap<String, i64>,
    pub last_position: u64,
}

impl ShowStats {
    pub fn apply(&mut self, event: &BookingEvent, position: u64) {
        if position <= self.last_position {
            return;
        }
        self.last_position = position;
        match event {
            BookingEvent::Requested(_) => self.requested += 1,
            BookingEvent::SeatsHeld(_) => self.held += 1,
            BookingEvent::Confirmed(_) => self.confirmed += 1,
            BookingEvent::Rejected(_) => self.rejected += 1,
            BookingEvent::HoldExpired(_) => self.expired += 1,
            BookingEvent::Cancelled(_) => self.cancelled += 1,
            BookingEvent::Failed(_) | BookingEvent::Abandoned(_) => self.failed += 1,
            BookingEvent::PaymentSucceeded(paid) => {
                *self
                    .revenue
                    .entry(paid.amount.currency.to_string())
                    .or_default() += paid.amount.amount_minor;
            }
            BookingEvent::Refunded(refunded) => {
                *self
                    .refunds
                    .entry(refunded.amount.currency.to_string())
                    .or_default() += refunded.amount.amount_minor;
            }
            BookingEvent::PaymentFailed(_)
            | BookingEvent::RefundRequested(_)
            | BookingEvent::EmailSent(_) => {}
        }
    }
}
