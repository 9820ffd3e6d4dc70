//! Property tests: drive both deciders the way the services do (a small process manager over
//! one show and several bookings, with a model of Redis that can lose every key), in any order
//! and with any redelivery, and check after every step that
//! - no seat is owned by two bookings: the show's sold seats and the confirmed bookings' seats
//!   agree and never overlap, and
//! - money taken is always either paying for a paid or confirmed booking or being refunded,
//!
//! and, once the services have reacted to everything, that every booking is terminal, every
//! charge is kept by a confirmed booking or refunded, and the sold seats are exactly the
//! confirmed bookings' seats.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use domain::booking::{CancelledBy, PaymentFailureReason, RefundProgress, RequestBooking};
use domain::show::{ReleaseReason, ShowCommand};
use domain::{
    Booking, BookingCommand, BookingEvent, BookingId, BookingState, BookingStatus, DomainError,
    DomainEvent, Money, SeatId, ShowEvent, ShowState, booking, show,
};
use proptest::prelude::*;
use support::*;

const BOOKINGS: usize = 5;
/// The show of `support`: A-1-1..A-2-3 and B-1-1..B-1-2.
const SEATS: [&str; 8] = [
    "A-1-1", "A-1-2", "A-1-3", "A-2-1", "A-2-2", "A-2-3", "B-1-1", "B-1-2",
];

#[derive(Clone, Copy, Debug)]
enum PaymentOutcome {
    Succeeded,
    /// A gateway that charged twice under another charge id.
    SucceededAgain,
    /// A gateway that charged another amount than the booking's (a bug upstream).
    WrongAmount,
    Declined,
    Exhausted,
}

/// One thing a service does, possibly again (redelivery) or out of time.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// booking-api: `POST /bookings`.
    Request(usize),
    /// seat-lock on `booking.requested.v1`: hold in Redis, then `HoldSeats` or `Reject`.
    Hold(usize),
    /// payment on `booking.seats_held.v1` (or late): the gateway's outcome.
    Pay(usize, PaymentOutcome),
    /// seat-lock on `booking.payment_succeeded.v1`: sell on the show and confirm, or seats lost.
    Sell(usize),
    /// seat-lock's timer.
    Expire(usize),
    /// booking-api: `DELETE /bookings/{id}`.
    Cancel(usize, CancelledBy),
    /// seat-lock on `booking.cancelled.v1`: release the sold seats and the hold.
    Release(usize),
    /// payment on `booking.refund_requested.v1`.
    Refund(usize),
    /// Redis loses every key (holds and sold markers) and is not rebuilt.
    FlushRedis,
}

struct World {
    show: ShowState,
    bookings: Vec<BookingState>,
    requested_seats: Vec<BTreeSet<SeatId>>,
    /// Redis: the booking holding (or owning) each seat. Only a filter, never the truth.
    redis: BTreeMap<SeatId, BookingId>,
    appended: usize,
}

fn id_of(index: usize) -> BookingId {
    booking_id(index as u128 + 1)
}

impl World {
    fn new(requested_seats: Vec<BTreeSet<SeatId>>) -> Self {
        let show = [ShowEvent::Scheduled(show_scheduled())]
            .iter()
            .fold(None, show::evolve);
        Self {
            show,
            bookings: vec![None; requested_seats.len()],
            requested_seats,
            redis: BTreeMap::new(),
            appended: 0,
        }
    }

    fn booking(&self, index: usize) -> Option<&Booking> {
        self.bookings[index].as_ref()
    }

    fn status(&self, index: usize) -> Option<BookingStatus> {
        self.booking(index).map(Booking::status)
    }

    /// Appends events as the store would: each goes through the codec and evolves its stream.
    fn append_booking(&mut self, index: usize, events: Vec<BookingEvent>) {
        for event in events {
            let event = through_codec(DomainEvent::Booking(event));
            let DomainEvent::Booking(event) = event else {
                panic!("a booking event decoded as a show event");
            };
            assert_eq!(event.booking_id(), id_of(index));
            let state = self.bookings[index].take();
            self.bookings[index] = booking::evolve(state, &event);
            self.appended += 1;
        }
    }

    fn append_show(&mut self, events: Vec<ShowEvent>) {
        for event in events {
            let DomainEvent::Show(event) = through_codec(DomainEvent::Show(event)) else {
                panic!("a show event decoded as a booking event");
            };
            self.show = show::evolve(self.show.take(), &event);
            self.appended += 1;
        }
    }

    fn decide_booking(
        &self,
        index: usize,
        command: BookingCommand,
    ) -> Result<Vec<BookingEvent>, DomainError> {
        booking::decide(&self.bookings[index], command)
    }

    fn release_redis(&mut self, index: usize) {
        let id = id_of(index);
        self.redis.retain(|_, owner| *owner != id);
    }

    fn run(&mut self, step: Step) {
        match step {
            Step::Request(index) => self.request(index),
            Step::Hold(index) => self.hold(index),
            Step::Pay(index, outcome) => self.pay(index, outcome),
            Step::Sell(index) => self.sell(index),
            Step::Expire(index) => self.expire(index),
            Step::Cancel(index, by) => self.cancel(index, by),
            Step::Release(index) => self.release(index),
            Step::Refund(index) => self.refund(index),
            Step::FlushRedis => self.redis.clear(),
        }
    }

    fn request(&mut self, index: usize) {
        let show = self.show.as_ref().expect("the show is scheduled");
        let wanted: Vec<SeatId> = self.requested_seats[index].iter().cloned().collect();
        let priced = show.price_seats(&wanted).expect("valid seats");
        let command = BookingCommand::Request(RequestBooking {
            booking_id: id_of(index),
            show_id: show_id(),
            seats: priced.seats,
            customer: customer(),
            payment_method: None,
            amount: priced.amount,
            requested_at: at(0),
            access: Default::default(),
        });
        // A retried request is already recorded.
        let events = self
            .decide_booking(index, command)
            .expect("a request is accepted");
        self.append_booking(index, events);
    }

    fn hold(&mut self, index: usize) {
        let Some(status) = self.status(index) else {
            return; // Not requested yet: nothing was delivered.
        };
        let id = id_of(index);
        if status != BookingStatus::Requested {
            // A redelivery: the hold (or rejection) is recorded, or the booking has ended.
            match self.decide_booking(index, hold_command()) {
                Ok(events) => assert!(events.is_empty()),
                Err(DomainError::AlreadyFinished { .. }) => {}
                Err(error) => panic!("hold redelivery refused: {error}"),
            }
            return;
        }
        let seats = self.requested_seats[index].clone();
        let taken: BTreeSet<SeatId> = seats
            .iter()
            .filter(|seat| self.redis.get(seat).is_some_and(|owner| *owner != id))
            .cloned()
            .collect();
        if taken.is_empty() {
            for seat in seats {
                self.redis.insert(seat, id);
            }
            let events = self.decide_booking(index, hold_command()).expect("held");
            self.append_booking(index, events);
        } else {
            let events = self
                .decide_booking(index, BookingCommand::Reject { taken })
                .expect("rejected");
            self.append_booking(index, events);
        }
    }

    fn pay(&mut self, index: usize, outcome: PaymentOutcome) {
        // Payment starts only once seats were held; its result may land at any time after.
        let Some(booking) = self.booking(index) else {
            return;
        };
        if booking.hold_expires_at().is_none() {
            return;
        }
        let amount = booking.amount();
        let command = match outcome {
            PaymentOutcome::Succeeded => BookingCommand::RecordPayment {
                charge_id: format!("ch-{index}"),
                amount,
            },
            PaymentOutcome::SucceededAgain => BookingCommand::RecordPayment {
                charge_id: format!("ch-{index}-again-{}", booking.charges().len()),
                amount,
            },
            PaymentOutcome::WrongAmount => BookingCommand::RecordPayment {
                charge_id: format!("ch-{index}-wrong-{}", booking.charges().len()),
                amount: Money::new(amount.amount_minor + 1, amount.currency),
            },
            PaymentOutcome::Declined => BookingCommand::RecordPaymentFailure {
                reason: PaymentFailureReason::Declined,
                detail: "declined".into(),
            },
            PaymentOutcome::Exhausted => BookingCommand::RecordPaymentFailure {
                reason: PaymentFailureReason::Exhausted,
                detail: "timeouts".into(),
            },
        };
        let is_payment = matches!(command, BookingCommand::RecordPayment { .. });
        match self.decide_booking(index, command) {
            Ok(events) => self.append_booking(index, events),
            // Money taken is always accepted: a refused payment would be lost track of.
            Err(error) if is_payment => panic!("payment refused: {error}"),
            Err(DomainError::AlreadyFinished { .. } | DomainError::InvalidTransition { .. }) => {}
            Err(error) => panic!("payment failure refused: {error}"),
        }
    }

    fn sell(&mut self, index: usize) {
        if self.status(index) != Some(BookingStatus::Paid) {
            // A redelivery or a stale message: the booking decides it is moot.
            if self.booking(index).is_some() {
                match self.decide_booking(index, BookingCommand::Confirm) {
                    Ok(events) => assert!(events.is_empty()),
                    Err(
                        DomainError::AlreadyFinished { .. } | DomainError::InvalidTransition { .. },
                    ) => {}
                    Err(error) => panic!("confirm redelivery refused: {error}"),
                }
            }
            return;
        }
        let id = id_of(index);
        let seats = self.requested_seats[index].clone();
        let sale = show::decide(
            &self.show,
            ShowCommand::SellSeats {
                booking_id: id,
                seats: seats.clone(),
            },
        );
        match sale {
            Ok(show_events) => {
                // One atomic append of both streams.
                let booking_events = self
                    .decide_booking(index, BookingCommand::Confirm)
                    .expect("a paid booking is confirmed");
                self.append_show(show_events);
                self.append_booking(index, booking_events);
                for seat in seats {
                    self.redis.insert(seat, id);
                }
            }
            Err(DomainError::SeatsUnavailable { .. }) => {
                let events = self
                    .decide_booking(index, BookingCommand::RecordSeatsLost)
                    .expect("seats lost are recorded");
                self.append_booking(index, events);
                self.release_redis(index);
            }
            Err(error) => panic!("sale refused: {error}"),
        }
    }

    fn expire(&mut self, index: usize) {
        let Some(booking) = self.booking(index) else {
            return;
        };
        let Some(expires_at) = booking.hold_expires_at() else {
            return; // No hold, no timer.
        };
        match self.decide_booking(index, BookingCommand::ExpireHold { now: expires_at }) {
            Ok(events) => {
                let expired = !events.is_empty();
                self.append_booking(index, events);
                if expired {
                    self.release_redis(index);
                }
            }
            Err(DomainError::AlreadyFinished { .. }) => {}
            Err(error) => panic!("expiry refused: {error}"),
        }
    }

    fn cancel(&mut self, index: usize, by: CancelledBy) {
        if self.booking(index).is_none() {
            return;
        }
        match self.decide_booking(index, BookingCommand::Cancel { by }) {
            Ok(events) => self.append_booking(index, events),
            Err(DomainError::AlreadyFinished { .. }) => {}
            Err(error) => panic!("cancel refused: {error}"),
        }
    }

    fn release(&mut self, index: usize) {
        if self.status(index) != Some(BookingStatus::Cancelled) {
            return;
        }
        let events = show::decide(
            &self.show,
            ShowCommand::ReleaseSeats {
                booking_id: id_of(index),
                reason: ReleaseReason::Cancelled,
            },
        )
        .expect("release is always possible");
        self.append_show(events);
        self.release_redis(index);
    }

    fn refund(&mut self, index: usize) {
        let Some(booking) = self.booking(index) else {
            return;
        };
        let charges: Vec<String> = booking
            .charges()
            .iter()
            .filter(|(_, charge)| charge.refund != RefundProgress::NotRequested)
            .map(|(charge_id, _)| charge_id.clone())
            .collect();
        for charge_id in charges {
            let refund_id = format!("rf-{charge_id}");
            let events = self
                .decide_booking(
                    index,
                    BookingCommand::RecordRefund {
                        charge_id,
                        refund_id,
                    },
                )
                .expect("a requested refund completes");
            self.append_booking(index, events);
        }
    }

    /// Lets every service react to everything until nothing changes; time passes, so holds run
    /// out.
    fn settle(&mut self) {
        for _ in 0..20 {
            let before = self.appended;
            for index in 0..self.bookings.len() {
                for step in [
                    Step::Hold(index),
                    Step::Sell(index),
                    Step::Expire(index),
                    Step::Release(index),
                    Step::Refund(index),
                ] {
                    self.run(step);
                    self.check_invariants();
                }
            }
            if self.appended == before {
                return;
            }
        }
        panic!("the services never settled");
    }

    fn check_invariants(&self) {
        let show = self.show.as_ref().expect("the show is scheduled");
        // Every sold seat belongs to a confirmed booking (or one cancelled whose seats seat-lock
        // has not released yet) that asked for it.
        for (seat, owner) in show.sold() {
            let index = (0..self.bookings.len())
                .find(|index| id_of(*index) == *owner)
                .expect("sold to a known booking");
            let booking = self.booking(index).expect("sold to a requested booking");
            assert!(booking.seats().contains(seat), "{seat} sold to {owner}");
            assert!(
                matches!(
                    booking.status(),
                    BookingStatus::Confirmed | BookingStatus::Cancelled
                ),
                "{seat} sold to a {} booking",
                booking.status()
            );
        }
        // Every confirmed booking owns its seats, so no two confirmed bookings share one.
        let mut confirmed_seats = BTreeSet::new();
        for booking in self.bookings.iter().flatten() {
            if booking.status() == BookingStatus::Confirmed {
                for seat in booking.seats() {
                    assert_eq!(show.owner_of(seat), Some(booking.booking_id()));
                    assert!(
                        confirmed_seats.insert(seat.clone()),
                        "{seat} confirmed twice"
                    );
                }
            }
        }
        // Every charge pays for the booking or is being refunded.
        for booking in self.bookings.iter().flatten() {
            for (charge_id, charge) in booking.charges() {
                if charge.refund == RefundProgress::NotRequested {
                    assert!(
                        matches!(
                            booking.status(),
                            BookingStatus::Paid | BookingStatus::Confirmed
                        ) && booking.paying_charge_id() == Some(charge_id.as_str()),
                        "charge {charge_id} of a {} booking is neither kept nor refunded",
                        booking.status()
                    );
                }
            }
        }
    }

    fn check_settled(&self) {
        let show = self.show.as_ref().expect("the show is scheduled");
        let mut confirmed_seats = BTreeMap::new();
        for booking in self.bookings.iter().flatten() {
            assert!(
                booking.status().is_terminal(),
                "a {} booking after settling",
                booking.status()
            );
            for (charge_id, charge) in booking.charges() {
                let kept = booking.status() == BookingStatus::Confirmed
                    && booking.paying_charge_id() == Some(charge_id.as_str());
                let refunded = matches!(charge.refund, RefundProgress::Refunded { .. });
                assert!(
                    kept != refunded,
                    "charge {charge_id}: kept {kept}, refunded {refunded}"
                );
            }
            if booking.status() == BookingStatus::Confirmed {
                for seat in booking.seats() {
                    confirmed_seats.insert(seat.clone(), booking.booking_id());
                }
            }
        }
        assert_eq!(show.sold(), &confirmed_seats);
    }
}

fn hold_command() -> BookingCommand {
    BookingCommand::HoldSeats {
        expires_at: at(HOLD_MINUTES),
    }
}

/// The event as a reader of the store sees it.
fn through_codec(event: DomainEvent) -> DomainEvent {
    let decoded = DomainEvent::decode(event.event_type(), &event.to_json_string())
        .expect("every event decodes");
    assert_eq!(decoded, event);
    decoded
}

fn seat_choice() -> impl Strategy<Value = BTreeSet<SeatId>> {
    proptest::collection::btree_set(0..SEATS.len(), 1..=3).prop_map(|indexes| {
        indexes
            .into_iter()
            .map(|index| seat(SEATS[index]))
            .collect()
    })
}

fn step() -> impl Strategy<Value = Step> {
    let index = 0..BOOKINGS;
    let outcome = prop_oneof![
        6 => Just(PaymentOutcome::Succeeded),
        1 => Just(PaymentOutcome::SucceededAgain),
        1 => Just(PaymentOutcome::WrongAmount),
        2 => Just(PaymentOutcome::Declined),
        1 => Just(PaymentOutcome::Exhausted),
    ];
    let by = prop_oneof![Just(CancelledBy::Holder), Just(CancelledBy::Admin)];
    prop_oneof![
        2 => index.clone().prop_map(Step::Request),
        3 => index.clone().prop_map(Step::Hold),
        4 => (index.clone(), outcome).prop_map(|(index, outcome)| Step::Pay(index, outcome)),
        4 => index.clone().prop_map(Step::Sell),
        1 => index.clone().prop_map(Step::Expire),
        1 => (index.clone(), by).prop_map(|(index, by)| Step::Cancel(index, by)),
        2 => index.clone().prop_map(Step::Release),
        2 => index.prop_map(Step::Refund),
        1 => Just(Step::FlushRedis),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_seat_is_sold_twice_and_no_money_is_lost(
        requested_seats in proptest::collection::vec(seat_choice(), BOOKINGS),
        steps in proptest::collection::vec(step(), 0..120),
    ) {
        let mut world = World::new(requested_seats);
        for step in steps {
            world.run(step);
            world.check_invariants();
        }
        world.settle();
        world.check_settled();
    }
}

/// The race of the design, spelled out: the hold expires, its seats go to another booking, and
/// the first booking's payment lands late.
#[test]
fn a_late_payment_after_the_seats_went_elsewhere_is_refunded() {
    let mut world = World::new(vec![seats(&["A-1-1"]), seats(&["A-1-1"])]);
    for step in [
        Step::Request(0),
        Step::Hold(0),
        Step::Expire(0),
        Step::Request(1),
        Step::Hold(1),
        Step::Pay(1, PaymentOutcome::Succeeded),
        Step::Sell(1),
        Step::Pay(0, PaymentOutcome::Succeeded),
    ] {
        world.run(step);
        world.check_invariants();
    }
    let late = world.booking(0).expect("requested");
    assert_eq!(late.status(), BookingStatus::Failed);
    assert_eq!(late.refund_status(), domain::RefundStatus::Pending);
    assert_eq!(world.status(1), Some(BookingStatus::Confirmed));
    world.settle();
    world.check_settled();
}

/// Redis forgets a sale; the show stream still refuses to sell the seat twice.
#[test]
fn a_flushed_redis_cannot_make_the_show_sell_a_seat_twice() {
    let mut world = World::new(vec![seats(&["B-1-1"]), seats(&["B-1-1", "B-1-2"])]);
    for step in [
        Step::Request(0),
        Step::Hold(0),
        Step::Pay(0, PaymentOutcome::Succeeded),
        Step::Sell(0),
        Step::FlushRedis,
        Step::Request(1),
        Step::Hold(1),
        Step::Pay(1, PaymentOutcome::Succeeded),
        Step::Sell(1),
    ] {
        world.run(step);
        world.check_invariants();
    }
    assert_eq!(world.status(0), Some(BookingStatus::Confirmed));
    let second = world.booking(1).expect("requested");
    assert_eq!(second.status(), BookingStatus::Failed);
    assert_eq!(
        second.failure_reason(),
        Some(domain::booking::FailureReason::SeatsLost)
    );
    world.settle();
    world.check_settled();
}
