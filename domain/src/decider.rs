//! The decider shape shared by the show and the booking: `decide(&state, command)` and
//! `evolve(state, &event)`, with the state of a stream being the fold of its events.

use crate::booking::{self, BookingCommand, BookingEvent, BookingState};
use crate::error::DomainError;
use crate::show::{self, ShowCommand, ShowEvent, ShowState};

/// A decider, for code that loads a stream, decides and appends without caring which one.
pub trait Decider {
    type State: Default;
    type Command;
    type Event;

    /// The events a command produces in a state, or why it is refused. Pure.
    fn decide(state: &Self::State, command: Self::Command)
    -> Result<Vec<Self::Event>, DomainError>;

    /// The state after one recorded event. Pure and total.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// The state of a stream: its events folded from the initial state.
    fn fold<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self::State
    where
        Self::Event: 'a,
    {
        events
            .into_iter()
            .fold(Self::State::default(), |state, event| {
                Self::evolve(state, event)
            })
    }
}

/// The show stream's decider: [`show::decide`] and [`show::evolve`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ShowDecider;

impl Decider for ShowDecider {
    type State = ShowState;
    type Command = ShowCommand;
    type Event = ShowEvent;

    fn decide(state: &ShowState, command: ShowCommand) -> Result<Vec<ShowEvent>, DomainError> {
        show::decide(state, command)
    }

    fn evolve(state: ShowState, event: &ShowEvent) -> ShowState {
        show::evolve(state, event)
    }
}

/// The booking stream's decider: [`booking::decide`] and [`booking::evolve`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BookingDecider;

impl Decider for BookingDecider {
    type State = BookingState;
    type Command = BookingCommand;
    type Event = BookingEvent;

    fn decide(
        state: &BookingState,
        command: BookingCommand,
    ) -> Result<Vec<BookingEvent>, DomainError> {
        booking::decide(state, command)
    }

    fn evolve(state: BookingState, event: &BookingEvent) -> BookingState {
        booking::evolve(state, event)
    }
}
