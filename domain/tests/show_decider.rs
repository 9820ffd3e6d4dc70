//! Given/when/then tests of every transition and every refusal of the show decider, and of
//! seat pricing.

mod support;

use domain::show::{ReleaseReason, SeatsReleased, SeatsSold, Section, ShowCommand};
use domain::{Decider, DomainError, ShowDecider, ShowEvent};
use support::*;

fn given_show(events: Vec<ShowEvent>) -> Given<ShowDecider> {
    given::<ShowDecider>(events)
}

fn scheduled() -> ShowEvent {
    ShowEvent::Scheduled(show_scheduled())
}

fn sold(booking: u128, ids: &[&str]) -> ShowEvent {
    ShowEvent::SeatsSold(SeatsSold {
        show_id: show_id(),
        booking_id: booking_id(booking),
        seats: seats(ids),
    })
}

fn released(booking: u128, ids: &[&str], reason: ReleaseReason) -> ShowEvent {
    ShowEvent::SeatsReleased(SeatsReleased {
        show_id: show_id(),
        booking_id: booking_id(booking),
        seats: seats(ids),
        reason,
    })
}

fn sell(booking: u128, ids: &[&str]) -> ShowCommand {
    ShowCommand::SellSeats {
        booking_id: booking_id(booking),
        seats: seats(ids),
    }
}

fn release(booking: u128) -> ShowCommand {
    ShowCommand::ReleaseSeats {
        booking_id: booking_id(booking),
        reason: ReleaseReason::Cancelled,
    }
}

fn invalid_show(reason: &str) -> DomainError {
    DomainError::InvalidShow {
        reason: reason.into(),
    }
}

fn with_sections(sections: Vec<Section>) -> ShowCommand {
    let mut schedule = schedule();
    schedule.sections = sections;
    ShowCommand::Schedule(schedule)
}

fn section(name: &str, rows: u32, seats_per_row: u32, price_cents: i64) -> Section {
    Section {
        name: name.into(),
        rows,
        seats_per_row,
        price_cents,
    }
}

// --- schedule ---------------------------------------------------------------------------------

#[test]
fn scheduling_puts_the_show_on_sale() {
    given_show(vec![])
        .when(ShowCommand::Schedule(schedule()))
        .then([scheduled()]);
    let show = ShowDecider::fold(&[scheduled()]).expect("scheduled");
    assert_eq!(show.seat_count(), 8);
    assert_eq!(show.seats().count(), 8);
    assert_eq!(show.seats().next(), Some(seat("A-1-1")));
    assert_eq!(show.seats().last(), Some(seat("B-1-2")));
    assert_eq!(show.currency(), eur());
    assert_eq!(show.name(), "Flash Sale Live");
    assert!(show.sold().is_empty());
}

#[test]
fn scheduling_the_same_show_again_is_already_recorded() {
    given_show(vec![scheduled()])
        .when(ShowCommand::Schedule(schedule()))
        .then_nothing();
}

#[test]
fn scheduling_a_show_again_with_other_data_is_refused() {
    let mut other = schedule();
    other.name = "Another Night".into();
    given_show(vec![scheduled()])
        .when(ShowCommand::Schedule(other))
        .then_error(DomainError::ShowAlreadyScheduled { show_id: show_id() });
}

#[test]
fn a_show_needs_a_name() {
    for (name, reason) in [
        ("", "name must not be empty"),
        ("  ", "name must not be empty"),
        (&*"n".repeat(201), "name must be at most 200 characters"),
        ("a\u{7}b", "name must not contain control characters"),
    ] {
        let mut schedule = schedule();
        schedule.name = name.into();
        given_show(vec![])
            .when(ShowCommand::Schedule(schedule))
            .then_error(invalid_show(reason));
    }
}

#[test]
fn a_show_needs_sound_sections() {
    let cases = [
        (vec![], "at least one section is required"),
        (
            vec![section("A", 1, 1, 100), section("A", 2, 2, 100)],
            "section \"A\" is defined twice (names are compared ignoring case)",
        ),
        (
            vec![section("A", 1, 1, 100), section("a", 2, 2, 100)],
            "section \"a\" is defined twice (names are compared ignoring case)",
        ),
        (
            vec![section("A-1", 1, 1, 100)],
            "section \"A-1\": section must contain only ASCII letters and digits",
        ),
        (
            vec![section("", 1, 1, 100)],
            "section \"\": section must not be empty",
        ),
        (
            vec![section("A", 0, 1, 100)],
            "section \"A\": rows must be at least 1",
        ),
        (
            vec![section("A", 1, 0, 100)],
            "section \"A\": seats_per_row must be at least 1",
        ),
        (
            vec![section("A", 1, 1, -1)],
            "section \"A\": price_cents must not be negative",
        ),
        (
            vec![section("A", 1000, 100, 1), section("B", 1, 1, 1)],
            "100001 seats, at most 100000 are allowed",
        ),
        (
            vec![section("A", u32::MAX, u32::MAX, 1)],
            "18446744065119617025 seats, at most 100000 are allowed",
        ),
        (
            vec![section("A", 1, 1, i64::MAX / 5)],
            "price_cents is too large",
        ),
    ];
    for (sections, reason) in cases {
        given_show(vec![])
            .when(with_sections(sections))
            .then_error(invalid_show(reason));
    }
    let too_many: Vec<Section> = (0..1001)
        .map(|n| section(&format!("S{n}"), 1, 1, 1))
        .collect();
    given_show(vec![])
        .when(with_sections(too_many))
        .then_error(invalid_show("at most 1000 sections are allowed"));
}

#[test]
fn free_seats_and_the_largest_show_are_allowed() {
    let largest = with_sections(vec![section("A", 1000, 100, 0)]);
    assert!(matches!(
        domain::show::decide(&None, largest).as_deref(),
        Ok([ShowEvent::Scheduled(_)])
    ));
}

#[test]
fn seat_commands_need_a_scheduled_show() {
    given_show(vec![])
        .when(sell(1, &["A-1-1"]))
        .then_error(DomainError::ShowNotFound);
    given_show(vec![])
        .when(release(1))
        .then_error(DomainError::ShowNotFound);
}

// --- sell -------------------------------------------------------------------------------------

#[test]
fn free_seats_are_sold_to_the_booking() {
    given_show(vec![scheduled()])
        .when(sell(1, &["A-1-1", "B-1-2"]))
        .then([sold(1, &["A-1-1", "B-1-2"])]);
    let show = ShowDecider::fold(&[scheduled(), sold(1, &["A-1-1", "B-1-2"])]).expect("show");
    assert_eq!(show.owner_of(&seat("A-1-1")), Some(booking_id(1)));
    assert_eq!(show.owner_of(&seat("A-1-2")), None);
    assert_eq!(show.seats_of(booking_id(1)), seats(&["A-1-1", "B-1-2"]));
}

#[test]
fn selling_again_to_the_same_booking_is_already_recorded() {
    given_show(vec![scheduled(), sold(1, &["A-1-1", "A-1-2"])])
        .when(sell(1, &["A-1-1", "A-1-2"]))
        .then_nothing();
}

#[test]
fn seats_sold_to_another_booking_are_not_sold_again() {
    given_show(vec![scheduled(), sold(1, &["A-1-1", "A-1-2"])])
        .when(sell(2, &["A-1-2", "A-1-3"]))
        .then_error(DomainError::SeatsUnavailable {
            taken: seats(&["A-1-2"]),
        });
}

#[test]
fn only_existing_seats_are_sold() {
    given_show(vec![scheduled()])
        .when(sell(1, &["A-1-1", "A-3-1", "A-1-4", "C-1-1"]))
        .then_error(DomainError::UnknownSeats {
            seats: seats(&["A-3-1", "A-1-4", "C-1-1"]),
        });
    given_show(vec![scheduled()])
        .when(sell(1, &[]))
        .then_error(DomainError::NoSeats);
}

#[test]
fn a_booking_that_owns_other_seats_cannot_buy_more() {
    given_show(vec![scheduled(), sold(1, &["A-1-1"])])
        .when(sell(1, &["A-1-1", "A-1-2"]))
        .then_error(DomainError::BookingOwnsOtherSeats {
            booking_id: booking_id(1),
            owned: seats(&["A-1-1"]),
        });
}

// --- release ----------------------------------------------------------------------------------

#[test]
fn releasing_frees_exactly_the_seats_of_the_booking() {
    given_show(vec![
        scheduled(),
        sold(1, &["A-1-1", "A-1-2"]),
        sold(2, &["B-1-1"]),
    ])
    .when(release(1))
    .then([released(1, &["A-1-1", "A-1-2"], ReleaseReason::Cancelled)]);
    given_show(vec![scheduled(), sold(1, &["A-1-1"])])
        .when(ShowCommand::ReleaseSeats {
            booking_id: booking_id(1),
            reason: ReleaseReason::Refunded,
        })
        .then([released(1, &["A-1-1"], ReleaseReason::Refunded)]);
}

#[test]
fn releasing_a_booking_without_seats_does_nothing() {
    given_show(vec![scheduled()])
        .when(release(1))
        .then_nothing();
    given_show(vec![
        scheduled(),
        sold(1, &["A-1-1"]),
        released(1, &["A-1-1"], ReleaseReason::Cancelled),
    ])
    .when(release(1))
    .then_nothing();
}

#[test]
fn released_seats_can_be_sold_to_another_booking() {
    given_show(vec![
        scheduled(),
        sold(1, &["A-1-1"]),
        released(1, &["A-1-1"], ReleaseReason::Cancelled),
    ])
    .when(sell(2, &["A-1-1"]))
    .then([sold(2, &["A-1-1"])]);
}

// --- pricing ----------------------------------------------------------------------------------

#[test]
fn pricing_sums_the_section_prices() {
    let show = ShowDecider::fold(&[scheduled()]).expect("show");
    let priced = show
        .price_seats(&[seat("B-1-1"), seat("A-2-3"), seat("A-1-1")])
        .expect("priced");
    assert_eq!(priced.amount, euros(12_500));
    assert_eq!(priced.seats, seats(&["A-1-1", "A-2-3", "B-1-1"]));
    assert_eq!(show.price_of(&seat("B-1-2")), Some(euros(2500)));
    assert_eq!(show.price_of(&seat("B-2-1")), None);
}

#[test]
fn pricing_refuses_empty_oversized_duplicate_and_unknown_selections() {
    let show = ShowDecider::fold(&[scheduled()]).expect("show");
    assert_eq!(show.price_seats(&[]), Err(DomainError::NoSeats));
    let eleven: Vec<_> = (0..11).map(|_| seat("A-1-1")).collect();
    assert_eq!(
        show.price_seats(&eleven),
        Err(DomainError::TooManySeats {
            requested: 11,
            max: 10
        })
    );
    assert_eq!(
        show.price_seats(&[seat("A-1-1"), seat("A-1-2"), seat("A-1-1")]),
        Err(DomainError::DuplicateSeats {
            seats: seats(&["A-1-1"])
        })
    );
    assert_eq!(
        show.price_seats(&[seat("A-1-1"), seat("A-3-1"), seat("Z-1-1")]),
        Err(DomainError::UnknownSeats {
            seats: seats(&["A-3-1", "Z-1-1"])
        })
    );
    assert_eq!(
        DomainError::UnknownSeats {
            seats: seats(&["A-3-1", "Z-1-1"])
        }
        .to_string(),
        "unknown seats: A-3-1, Z-1-1"
    );
}

// --- evolve -----------------------------------------------------------------------------------

#[test]
fn evolve_takes_events_the_decider_would_never_produce_without_panicking() {
    // Evolve is total: a hand-built or foreign event must not crash a projection or a service.
    let mut huge = show_scheduled();
    huge.sections = vec![
        section("A", u32::MAX, u32::MAX, 1),
        section("B", u32::MAX, u32::MAX, 1),
    ];
    let show = ShowDecider::fold(&[ShowEvent::Scheduled(huge)]).expect("scheduled");
    assert_eq!(show.seat_count(), u64::MAX);

    // A release naming a seat the booking does not own leaves its owner alone.
    let show = ShowDecider::fold(&[
        scheduled(),
        sold(1, &["A-1-1"]),
        sold(2, &["A-1-2"]),
        released(1, &["A-1-1", "A-1-2"], ReleaseReason::Cancelled),
    ])
    .expect("scheduled");
    assert_eq!(show.owner_of(&seat("A-1-1")), None);
    assert_eq!(show.owner_of(&seat("A-1-2")), Some(booking_id(2)));
    // Seat events before the schedule change nothing.
    assert_eq!(ShowDecider::fold(&[sold(1, &["A-1-1"])]), None);
}
