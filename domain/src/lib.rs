//! ZingQueue's domain: the only place the booking rules live.
//!
//! Pure code (no I/O, no async, no clock: time comes in through commands). Two event-sourced
//! aggregates, each a decider in the style of cqrs-es and disintegrate:
//! `decide(&state, command) -> Result<Vec<Event>, DomainError>` says what a command means in the
//! state of a stream, `evolve(state, &event) -> state` folds a stream's events into its state.
//!
//! - The **show** (stream `show-<uuid>`) knows its seats, their prices and which booking owns
//!   each sold seat. It is the truth against double sales.
//! - The **booking** (stream `booking-<uuid>`) goes from `requested` to a terminal status and
//!   tracks every charge until it is kept or refunded.
//!
//! Services drive the deciders like a saga: seat-lock, payment and the notifier consume events,
//! decide a command on the right stream and append the result (see `DESIGN.md`). A command that
//! was already applied yields no events, so redelivery is harmless.
//!
//! # Layout
//! | module | what |
//! |---|---|
//! | [`ids`] | `ShowId`, `BookingId`, `EventId` (UUIDv7, derived UUIDv5), stream ids, `CustomerId` |
//! | [`seat`] | `SeatId` (`SECTION-ROW-NUMBER`) |
//! | [`money`] | `Currency` (ISO 4217), `Money` in minor units |
//! | [`customer`] | `Customer`: the only personal data in events |
//! | [`show`] | show events, `ShowCommand`, the show decider, seat pricing |
//! | [`booking`] | booking events, statuses, `BookingCommand`, the booking decider |
//! | [`event`] | type names, `DomainEvent`, the JSON codec and upcasters, `EventEnvelope` |
//! | [`decider`] | the `Decider` trait both deciders implement |
//! | [`error`] | `DomainError`, the one error of the rules |
//!
//! # Example
//! ```
//! use domain::booking::{self, BookingCommand, BookingEvent, CancelledBy, RequestBooking};
//! use domain::{BookingId, Customer, DomainEvent, Money, ShowId};
//!
//! let request = RequestBooking {
//!     booking_id: BookingId::new(),
//!     show_id: ShowId::new(),
//!     seats: ["A-1-1".parse()?].into(),
//!     customer: Customer::new("c-1", "ada@example.com", "Ada")?,
//!     payment_method: None,
//!     amount: Money::new(4500, "EUR".parse()?),
//!     requested_at: chrono::Utc::now(),
//!     access: Default::default(),
//! };
//! let events = booking::decide(&None, BookingCommand::Request(request))?;
//! let state = events.iter().fold(None, booking::evolve);
//! let cancelled = booking::decide(&state, BookingCommand::Cancel { by: CancelledBy::Holder })?;
//! assert!(matches!(cancelled[..], [BookingEvent::Cancelled(_)]));
//!
//! let stored = DomainEvent::from(events[0].clone());
//! let decoded = DomainEvent::decode(stored.event_type(), &stored.to_json_string())?;
//! assert_eq!(decoded, stored);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod booking;
pub mod customer;
pub mod decider;
pub mod error;
pub mod event;
pub mod ids;
pub mod money;
pub mod seat;
pub mod show;

pub use booking::{
    Booking, BookingCommand, BookingEvent, BookingState, BookingStatus, RefundStatus,
};
pub use customer::{Customer, CustomerName, EmailAddress};
pub use decider::{BookingDecider, Decider, ShowDecider};
pub use error::{DomainError, ErrorKind};
pub use event::{DomainEvent, EventDecodeError, EventEnvelope, Upcaster, event_types};
pub use ids::{BookingId, CustomerId, EventId, ShowId};
pub use money::{Currency, Money};
pub use seat::SeatId;
pub use show::{Show, ShowCommand, ShowEvent, ShowState};
