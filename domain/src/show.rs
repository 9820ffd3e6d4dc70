//! The show: its seats and prices, and which booking owns each sold seat.
//!
//! The show stream is the truth about sold seats (Redis holds are only a fast filter): a sale is
//! decided here, against this state, and appended with the stream's expected version as the
//! fencing token. Holds are not recorded on the show; they live on the booking stream.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::event::{event_family, event_types};
use crate::ids::{BookingId, ShowId};
use crate::money::{Currency, Money};
use crate::seat::{SeatId, validate_section_name};

/// The most seats one booking may take.
pub const MAX_SEATS_PER_BOOKING: usize = 10;
/// The most seats a show may have.
pub const MAX_SEATS_PER_SHOW: u64 = 100_000;
/// The most sections a show may have.
pub const MAX_SECTIONS_PER_SHOW: usize = 1_000;
/// The longest show name, in characters.
pub const MAX_SHOW_NAME_CHARS: usize = 200;

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// One block of seats with one price: rows `1..=rows`, seats `1..=seats_per_row` in each row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub name: String,
    pub rows: u32,
    pub seats_per_row: u32,
    /// The price of one seat, in minor units of the show's currency.
    pub price_cents: i64,
}

impl Section {
    pub fn seat_count(&self) -> u64 {
        u64::from(self.rows) * u64::from(self.seats_per_row)
    }

    fn contains(&self, seat: &SeatId) -> bool {
        seat.section() == self.name
            && (1..=self.rows).contains(&seat.row())
            && (1..=self.seats_per_row).contains(&seat.number())
    }
}

/// `show.scheduled.v1`: a show was put on sale.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShowScheduled {
    pub show_id: ShowId,
    pub name: String,
    pub starts_at: DateTime<Utc>,
    pub currency: Currency,
    pub sections: Vec<Section>,
}

/// `show.seats_sold.v1`: seats now belong to a booking (decided after its payment succeeded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatsSold {
    pub show_id: ShowId,
    pub booking_id: BookingId,
    pub seats: BTreeSet<SeatId>,
}

/// Why sold seats went back on sale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The booking was cancelled (by its holder or an admin).
    Cancelled,
    /// The booking's money was given back without a cancellation (an admin refund).
    Refunded,
}

/// `show.seats_released.v1`: seats a booking owned are free again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatsReleased {
    pub show_id: ShowId,
    pub booking_id: BookingId,
    pub seats: BTreeSet<SeatId>,
    pub reason: ReleaseReason,
}

event_family! {
    /// An event of a show stream.
    pub enum ShowEvent {
        ids { show_id: ShowId }
        Scheduled(ShowScheduled) = event_types::SHOW_SCHEDULED,
        SeatsSold(SeatsSold) = event_types::SHOW_SEATS_SOLD,
        SeatsReleased(SeatsReleased) = event_types::SHOW_SEATS_RELEASED,
    }
}

impl ShowEvent {
    /// The booking the event concerns (none for `show.scheduled.v1`).
    pub fn booking_id(&self) -> Option<BookingId> {
        match self {
            Self::Scheduled(_) => None,
            Self::SeatsSold(sold) => Some(sold.booking_id),
            Self::SeatsReleased(released) => Some(released.booking_id),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/// A scheduled show. Build it by folding its events ([`evolve`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Show {
    show_id: ShowId,
    name: String,
    starts_at: DateTime<Utc>,
    currency: Currency,
    sections: Vec<Section>,
    seat_count: u64,
    sold: BTreeMap<SeatId, BookingId>,
}

/// The state of a show stream: `None` until it is scheduled.
pub type ShowState = Option<Show>;

/// Seats checked against a show, with their total price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PricedSeats {
    pub seats: BTreeSet<SeatId>,
    pub amount: Money,
}

impl Show {
    pub fn show_id(&self) -> ShowId {
        self.show_id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn starts_at(&self) -> DateTime<Utc> {
        self.starts_at
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    pub fn seat_count(&self) -> u64 {
        self.seat_count
    }

    /// Every seat of the show, section by section, row by row.
    pub fn seats(&self) -> impl Iterator<Item = SeatId> + '_ {
        self.sections.iter().flat_map(|section| {
            (1..=section.rows).flat_map(move |row| {
                (1..=section.seats_per_row).filter_map(move |number| {
                    // Section names were validated when the show was scheduled, so this never
                    // skips a seat of a show this crate decided.
                    SeatId::new(&section.name, row, number).ok()
                })
            })
        })
    }

    pub fn section_of(&self, seat: &SeatId) -> Option<&Section> {
        self.sections.iter().find(|section| section.contains(seat))
    }

    pub fn contains(&self, seat: &SeatId) -> bool {
        self.section_of(seat).is_some()
    }

    /// The price of one seat, if the seat exists.
    pub fn price_of(&self, seat: &SeatId) -> Option<Money> {
        self.section_of(seat)
            .map(|section| Money::new(section.price_cents, self.currency))
    }

    /// The booking a seat is sold to, if it is sold.
    pub fn owner_of(&self, seat: &SeatId) -> Option<BookingId> {
        self.sold.get(seat).copied()
    }

    /// Sold seats and the booking owning each.
    pub fn sold(&self) -> &BTreeMap<SeatId, BookingId> {
        &self.sold
    }

    /// The seats sold to one booking.
    pub fn seats_of(&self, booking_id: BookingId) -> BTreeSet<SeatId> {
        self.sold
            .iter()
            .filter(|(_, owner)| **owner == booking_id)
            .map(|(seat, _)| seat.clone())
            .collect()
    }

    /// Checks the seats a booking request names and prices them: at least one, at most
    /// [`MAX_SEATS_PER_BOOKING`], no duplicates, all in the show. The API fixes the booking's
    /// amount with this when the booking is requested. Availability is not checked here: that is
    /// seat-lock's decision, in order.
    pub fn price_seats(&self, seats: &[SeatId]) -> Result<PricedSeats, DomainError> {
        if seats.is_empty() {
            return Err(DomainError::NoSeats);
        }
        if seats.len() > MAX_SEATS_PER_BOOKING {
            return Err(DomainError::TooManySeats {
                requested: seats.len(),
                max: MAX_SEATS_PER_BOOKING,
            });
        }
        let mut unique = BTreeSet::new();
        let duplicates: BTreeSet<SeatId> = seats
            .iter()
            .filter(|seat| !unique.insert((*seat).clone()))
            .cloned()
            .collect();
        if !duplicates.is_empty() {
            return Err(DomainError::DuplicateSeats { seats: duplicates });
        }
        let unknown: BTreeSet<SeatId> = unique
            .iter()
            .filter(|seat| !self.contains(seat))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(DomainError::UnknownSeats { seats: unknown });
        }
        let mut amount = Money::zero(self.currency);
        for seat in &unique {
            if let Some(price) = self.price_of(seat) {
                amount = amount.checked_add(price)?;
            }
        }
        Ok(PricedSeats {
            seats: unique,
            amount,
        })
    }

    fn scheduled_as(&self, schedule: &ScheduleShow) -> bool {
        self.name == schedule.name
            && self.starts_at == schedule.starts_at
            && self.currency == schedule.currency
            && self.sections == schedule.sections
    }
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// Put a show on sale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleShow {
    pub show_id: ShowId,
    pub name: String,
    pub starts_at: DateTime<Utc>,
    pub currency: Currency,
    pub sections: Vec<Section>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShowCommand {
    Schedule(ScheduleShow),
    /// Sell seats to a booking whose payment succeeded (seat-lock).
    SellSeats {
        booking_id: BookingId,
        seats: BTreeSet<SeatId>,
    },
    /// Put back on sale whatever seats a booking owns (seat-lock, after a cancellation).
    ReleaseSeats {
        booking_id: BookingId,
        reason: ReleaseReason,
    },
}

// ---------------------------------------------------------------------------------------------
// Decide and evolve
// ---------------------------------------------------------------------------------------------

/// Decides what a command on a show stream means: the events to append, or why not.
///
/// Repeating a command that was applied already yields no events.
pub fn decide(state: &ShowState, command: ShowCommand) -> Result<Vec<ShowEvent>, DomainError> {
    match (state, command) {
        (None, ShowCommand::Schedule(schedule)) => {
            validate_schedule(&schedule)?;
            Ok(vec![ShowEvent::Scheduled(ShowScheduled {
                show_id: schedule.show_id,
                name: schedule.name,
                starts_at: schedule.starts_at,
                currency: schedule.currency,
                sections: schedule.sections,
            })])
        }
        (Some(show), ShowCommand::Schedule(schedule)) => {
            if show.show_id == schedule.show_id && show.scheduled_as(&schedule) {
                Ok(vec![])
            } else {
                Err(DomainError::ShowAlreadyScheduled {
                    show_id: show.show_id,
                })
            }
        }
        (None, _) => Err(DomainError::ShowNotFound),
        (Some(show), ShowCommand::SellSeats { booking_id, seats }) => {
            sell_seats(show, booking_id, seats)
        }
        (Some(show), ShowCommand::ReleaseSeats { booking_id, reason }) => {
            let seats = show.seats_of(booking_id);
            if seats.is_empty() {
                return Ok(vec![]);
            }
            Ok(vec![ShowEvent::SeatsReleased(SeatsReleased {
                show_id: show.show_id,
                booking_id,
                seats,
                reason,
            })])
        }
    }
}

fn sell_seats(
    show: &Show,
    booking_id: BookingId,
    seats: BTreeSet<SeatId>,
) -> Result<Vec<ShowEvent>, DomainError> {
    if seats.is_empty() {
        return Err(DomainError::NoSeats);
    }
    let unknown: BTreeSet<SeatId> = seats
        .iter()
        .filter(|seat| !show.contains(seat))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(DomainError::UnknownSeats { seats: unknown });
    }
    let taken: BTreeSet<SeatId> = seats
        .iter()
        .filter(|seat| show.owner_of(seat).is_some_and(|owner| owner != booking_id))
        .cloned()
        .collect();
    if !taken.is_empty() {
        return Err(DomainError::SeatsUnavailable { taken });
    }
    let owned = show.seats_of(booking_id);
    if owned == seats {
        // A redelivered sale: already done.
        return Ok(vec![]);
    }
    if !owned.is_empty() {
        // A booking's seats are fixed when it is requested and sold in one event, so another
        // set for the same booking is a bug upstream, not something to merge.
        return Err(DomainError::BookingOwnsOtherSeats { booking_id, owned });
    }
    Ok(vec![ShowEvent::SeatsSold(SeatsSold {
        show_id: show.show_id,
        booking_id,
        seats,
    })])
}

fn validate_schedule(schedule: &ScheduleShow) -> Result<(), DomainError> {
    let invalid = |reason: String| Err(DomainError::InvalidShow { reason });
    let name_chars = schedule.name.chars().count();
    if schedule.name.trim().is_empty() {
        return invalid("name must not be empty".into());
    }
    if name_chars > MAX_SHOW_NAME_CHARS {
        return invalid(format!(
            "name must be at most {MAX_SHOW_NAME_CHARS} characters"
        ));
    }
    if schedule.name.chars().any(char::is_control) {
        return invalid("name must not contain control characters".into());
    }
    if schedule.sections.is_empty() {
        return invalid("at least one section is required".into());
    }
    if schedule.sections.len() > MAX_SECTIONS_PER_SHOW {
        return invalid(format!(
            "at most {MAX_SECTIONS_PER_SHOW} sections are allowed"
        ));
    }
    // Names are compared ignoring case: `a-1-1` and `A-1-1` naming different seats would only
    // confuse customers.
    let mut names = BTreeSet::new();
    let mut seat_count: u64 = 0;
    for section in &schedule.sections {
        if let Err(reason) = validate_section_name(&section.name) {
            return invalid(format!("section {:?}: {reason}", section.name));
        }
        if !names.insert(section.name.to_ascii_uppercase()) {
            return invalid(format!(
                "section {:?} is defined twice (names are compared ignoring case)",
                section.name
            ));
        }
        if section.rows == 0 {
            return invalid(format!(
                "section {:?}: rows must be at least 1",
                section.name
            ));
        }
        if section.seats_per_row == 0 {
            return invalid(format!(
                "section {:?}: seats_per_row must be at least 1",
                section.name
            ));
        }
        if section.price_cents < 0 {
            return invalid(format!(
                "section {:?}: price_cents must not be negative",
                section.name
            ));
        }
        seat_count = seat_count.saturating_add(section.seat_count());
    }
    if seat_count > MAX_SEATS_PER_SHOW {
        return invalid(format!(
            "{seat_count} seats, at most {MAX_SEATS_PER_SHOW} are allowed"
        ));
    }
    // Ten seats of the dearest section must still add up without overflow.
    let dearest = schedule
        .sections
        .iter()
        .map(|section| section.price_cents)
        .max()
        .unwrap_or(0);
    if dearest.checked_mul(MAX_SEATS_PER_BOOKING as i64).is_none() {
        return invalid("price_cents is too large".into());
    }
    Ok(())
}

/// Applies one recorded event. Events are facts: evolve never refuses one, and an event that
/// does not fit the state (which a decider never produces) leaves the state unchanged.
pub fn evolve(state: ShowState, event: &ShowEvent) -> ShowState {
    match (state, event) {
        (None, ShowEvent::Scheduled(scheduled)) => Some(Show {
            show_id: scheduled.show_id,
            name: scheduled.name.clone(),
            starts_at: scheduled.starts_at,
            currency: scheduled.currency,
            sections: scheduled.sections.clone(),
            // Saturating: evolve is total, even for a hand-built event the decider would refuse.
            seat_count: scheduled.sections.iter().fold(0, |count: u64, section| {
                count.saturating_add(section.seat_count())
            }),
            sold: BTreeMap::new(),
        }),
        (Some(mut show), ShowEvent::SeatsSold(sold)) => {
            for seat in &sold.seats {
                show.sold.insert(seat.clone(), sold.booking_id);
            }
            Some(show)
        }
        (Some(mut show), ShowEvent::SeatsReleased(released)) => {
            for seat in &released.seats {
                if show.sold.get(seat) == Some(&released.booking_id) {
                    show.sold.remove(seat);
                }
            }
            Some(show)
        }
        (state, _) => state,
    }
}
