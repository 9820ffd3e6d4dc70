//! Fixtures and the given/when/then helper shared by the integration tests.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt::Debug;

use chrono::{DateTime, Duration, TimeZone, Utc};
use domain::booking::{
    BookingAbandoned, BookingCancelled, BookingConfirmed, BookingFailed, BookingRefunded,
    BookingRejected, BookingRequested, CancelledBy, FailureReason, HoldExpired, PaymentFailed,
    PaymentFailureReason, PaymentSucceeded, RefundRequested, RequestBooking, SeatsHeld,
};
use domain::show::{ScheduleShow, Section, ShowScheduled};
use domain::{
    BookingEvent, BookingId, BookingStatus, Currency, Customer, Decider, DomainError, Money,
    SeatId, ShowId,
};

// --- given / when / then ------------------------------------------------------------------

/// A decider's state built from past events, waiting for a command.
pub struct Given<D: Decider> {
    state: D::State,
}

/// What a command decided.
pub struct Then<D: Decider> {
    result: Result<Vec<D::Event>, DomainError>,
}

/// Starts a scenario from the events already on the stream.
pub fn given<D: Decider>(events: impl IntoIterator<Item = D::Event>) -> Given<D> {
    let events: Vec<D::Event> = events.into_iter().collect();
    Given {
        state: D::fold(&events),
    }
}

impl<D: Decider> Given<D> {
    pub fn when(self, command: D::Command) -> Then<D> {
        Then {
            result: D::decide(&self.state, command),
        }
    }

    pub fn state(&self) -> &D::State {
        &self.state
    }
}

impl<D: Decider> Then<D>
where
    D::Event: Debug + PartialEq,
{
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = D::Event>) {
        let expected: Vec<D::Event> = expected.into_iter().collect();
        assert_eq!(self.result, Ok(expected));
    }

    #[track_caller]
    pub fn then_nothing(self) {
        assert_eq!(self.result, Ok(vec![]));
    }

    #[track_caller]
    pub fn then_error(self, expected: DomainError) {
        assert_eq!(self.result, Err(expected));
    }
}

// --- values --------------------------------------------------------------------------------

/// A fixed moment, plus `minutes`.
pub fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 5, 1, 20, 0, 0)
        .single()
        .expect("a valid fixed date")
        + Duration::minutes(minutes)
}

pub fn eur() -> Currency {
    "EUR".parse().expect("EUR is a currency")
}

pub fn euros(cents: i64) -> Money {
    Money::new(cents, eur())
}

pub fn seat(id: &str) -> SeatId {
    id.parse().expect("a valid seat id")
}

pub fn seats(ids: &[&str]) -> BTreeSet<SeatId> {
    ids.iter().map(|id| seat(id)).collect()
}

pub fn show_id() -> ShowId {
    ShowId::from_uuid(uuid::Uuid::from_u128(
        0x0190_0000_0000_7000_8000_0000_0000_0001,
    ))
}

pub fn booking_id(n: u128) -> BookingId {
    BookingId::from_uuid(uuid::Uuid::from_u128(
        0x0190_0000_0000_7000_9000_0000_0000_0000 + n,
    ))
}

pub fn customer() -> Customer {
    Customer::new("cust-1", "ada@example.com", "Ada Lovelace").expect("a valid customer")
}

// --- the show: A has 2 rows of 3 seats at 50.00, B 1 row of 2 at 25.00 -----------------------

pub fn sections() -> Vec<Section> {
    vec![
        Section {
            name: "A".into(),
            rows: 2,
            seats_per_row: 3,
            price_cents: 5000,
        },
        Section {
            name: "B".into(),
            rows: 1,
            seats_per_row: 2,
            price_cents: 2500,
        },
    ]
}

pub fn schedule() -> ScheduleShow {
    ScheduleShow {
        show_id: show_id(),
        name: "Flash Sale Live".into(),
        starts_at: at(24 * 60),
        currency: eur(),
        sections: sections(),
    }
}

pub fn show_scheduled() -> ShowScheduled {
    let schedule = schedule();
    ShowScheduled {
        show_id: schedule.show_id,
        name: schedule.name,
        starts_at: schedule.starts_at,
        currency: schedule.currency,
        sections: schedule.sections,
    }
}

// --- a booking of A-1-1 and A-1-2 for 100.00 ---------------------------------------------------

pub const CHARGE: &str = "ch_1";
pub const HOLD_MINUTES: i64 = 10;

pub fn the_booking() -> BookingId {
    booking_id(1)
}

pub fn booked_seats() -> BTreeSet<SeatId> {
    seats(&["A-1-1", "A-1-2"])
}

pub fn amount() -> Money {
    euros(10_000)
}

pub fn request() -> RequestBooking {
    RequestBooking {
        booking_id: the_booking(),
        show_id: show_id(),
        seats: booked_seats(),
        customer: customer(),
        payment_method: Some("sim_ok".into()),
        amount: amount(),
        requested_at: at(0),
        access: Default::default(),
    }
}

pub fn requested() -> BookingEvent {
    let request = request();
    BookingEvent::Requested(BookingRequested {
        booking_id: request.booking_id,
        show_id: request.show_id,
        seats: request.seats,
        customer: request.customer,
        payment_method: request.payment_method,
        amount: request.amount,
        requested_at: request.requested_at,
        access: request.access,
    })
}

pub fn seats_held() -> BookingEvent {
    BookingEvent::SeatsHeld(SeatsHeld {
        booking_id: the_booking(),
        show_id: show_id(),
        seats: booked_seats(),
        amount: amount(),
        expires_at: at(HOLD_MINUTES),
    })
}

pub fn rejected() -> BookingEvent {
    BookingEvent::Rejected(BookingRejected {
        booking_id: the_booking(),
        show_id: show_id(),
        taken: seats(&["A-1-2"]),
    })
}

pub fn hold_expired() -> BookingEvent {
    BookingEvent::HoldExpired(HoldExpired {
        booking_id: the_booking(),
        show_id: show_id(),
        seats: booked_seats(),
        expires_at: at(HOLD_MINUTES),
    })
}

pub fn payment_succeeded(charge_id: &str) -> BookingEvent {
    BookingEvent::PaymentSucceeded(PaymentSucceeded {
        booking_id: the_booking(),
        show_id: show_id(),
        charge_id: charge_id.into(),
        amount: amount(),
    })
}

pub fn payment_failed(reason: PaymentFailureReason) -> BookingEvent {
    BookingEvent::PaymentFailed(PaymentFailed {
        booking_id: the_booking(),
        show_id: show_id(),
        reason,
        detail: "card declined".into(),
    })
}

pub fn confirmed() -> BookingEvent {
    BookingEvent::Confirmed(BookingConfirmed {
        booking_id: the_booking(),
        show_id: show_id(),
        seats: booked_seats(),
    })
}

pub fn failed(reason: FailureReason) -> BookingEvent {
    BookingEvent::Failed(BookingFailed {
        booking_id: the_booking(),
        show_id: show_id(),
        reason,
    })
}

pub fn cancelled(by: CancelledBy, previous_status: BookingStatus) -> BookingEvent {
    BookingEvent::Cancelled(BookingCancelled {
        booking_id: the_booking(),
        show_id: show_id(),
        by,
        seats: booked_seats(),
        previous_status,
    })
}

pub fn abandoned(previous_status: BookingStatus) -> BookingEvent {
    BookingEvent::Abandoned(BookingAbandoned {
        booking_id: the_booking(),
        show_id: show_id(),
        seats: booked_seats(),
        previous_status,
        reason: "the handler panicked".into(),
    })
}

pub fn refund_requested(charge_id: &str) -> BookingEvent {
    BookingEvent::RefundRequested(RefundRequested {
        booking_id: the_booking(),
        show_id: show_id(),
        charge_id: charge_id.into(),
        amount: amount(),
    })
}

pub fn refunded(charge_id: &str, refund_id: &str) -> BookingEvent {
    BookingEvent::Refunded(BookingRefunded {
        booking_id: the_booking(),
        show_id: show_id(),
        charge_id: charge_id.into(),
        refund_id: refund_id.into(),
        amount: amount(),
    })
}

// --- histories, one per status ----------------------------------------------------------------

pub fn history_requested() -> Vec<BookingEvent> {
    vec![requested()]
}

pub fn history_held() -> Vec<BookingEvent> {
    vec![requested(), seats_held()]
}

pub fn history_paid() -> Vec<BookingEvent> {
    vec![requested(), seats_held(), payment_succeeded(CHARGE)]
}

pub fn history_confirmed() -> Vec<BookingEvent> {
    vec![
        requested(),
        seats_held(),
        payment_succeeded(CHARGE),
        confirmed(),
    ]
}

pub fn history_rejected() -> Vec<BookingEvent> {
    vec![requested(), rejected()]
}

pub fn history_expired() -> Vec<BookingEvent> {
    vec![requested(), seats_held(), hold_expired()]
}

pub fn history_cancelled() -> Vec<BookingEvent> {
    vec![
        requested(),
        seats_held(),
        cancelled(CancelledBy::Holder, BookingStatus::Held),
    ]
}

pub fn history_failed_declined() -> Vec<BookingEvent> {
    vec![
        requested(),
        seats_held(),
        payment_failed(PaymentFailureReason::Declined),
        failed(FailureReason::PaymentDeclined),
    ]
}

/// One history for each finished status, with the status.
pub fn finished_histories() -> Vec<(BookingStatus, Vec<BookingEvent>)> {
    vec![
        (BookingStatus::Rejected, history_rejected()),
        (BookingStatus::Expired, history_expired()),
        (BookingStatus::Cancelled, history_cancelled()),
        (BookingStatus::Failed, history_failed_declined()),
    ]
}
