//! # projections
//!
//! The read models the queries answer from, kept from the event log: seat maps per show (free,
//! held, sold, with the booking), booking views (status, seats, customer, amount, refund status,
//! timeline), bookings per customer and show statistics. A library: the binary runs the
//! [`runner::Projector`], the API reads through [`db::ReadModelDb`].
//!
//! Layout: [`view`] (the models as values and how each event changes them; pure), [`db`] (the
//! tables, on Postgres or SQLite, written with the checkpoint in one transaction; live,
//! shadow and snapshot sets of them), [`runner`] (following the log in batches, pausable, with
//! a cache of the rows it last wrote), [`own_thread`] (the live runner on a thread of its own),
//! [`replay`] (rebuilding into shadow tables and switching, or building a snapshot).
//!
//! Invariants: a batch's rows and its checkpoint commit together, and only if the checkpoint
//! is still where the batch started (so a switch or a second runner can never make a batch
//! apply twice); the live tables are only ever replaced whole, in one transaction.

mod cache;
pub mod db;
pub mod own_thread;
pub mod replay;
pub mod runner;
pub mod view;

pub use db::{ProjectionError, ReadModelDb, TableRows, TableSet};
pub use own_thread::ProjectorThread;
pub use replay::{ReplayError, ReplayRequest, ReplayState, ReplayStatus, Replays};
pub use runner::{PauseGate, Projector, READ_MODELS, Until};
