//! # projections
//!
//! The read models the queries answer from, kept from the event log: seat maps per show (free,
//! held, sold, with the booking), booking views (status, seats, customer, amount, refund status,
//! timeline), bookings per customer and show statistics. A library: the binary runs the
//! [`runner::Projector`], the API reads through [`db::ReadModelDb`].
//!
//! Layout: [`view`] (the models as values and how each event changes them; pure), [`db`] (the
//! tables, on Postgres or SQLite, written with the checkpoint in one transaction), [`runner`]
//! (following the log in batches).
//!
//! Status: the runner and the models are in place; the queries, live updates and replay of the
//! read-model issue build on them.

pub mod db;
pub mod runner;
pub mod view;

pub use db::{ProjectionError, ReadModelDb};
pub use runner::{Projector, READ_MODELS};
