//! # seat-lock
//!
//! The seat-lock service: a consumer group (`seat-lock`, in-order mode: seat decisions follow
//! store order per show) that holds seats all-or-nothing in a hold store (Redis, or the
//! in-process store of the embedded default), expires unpaid holds, sells paid seats on the
//! show stream (the truth against double sales) and releases the seats of bookings that end.
//!
//! Layout: [`service`] (the handler, the expiry sweeper and the rebuild of the hold store from
//! the log). The hold stores themselves live in `infra::holds`, beside the other adapters.

pub mod service;

pub use service::{GROUP, SeatLock, SeatLockConfig, run_sweeper, snapshot_from_log};
