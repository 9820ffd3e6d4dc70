//! # notifier
//!
//! The notifier service: a consumer group (`notifier`, concurrent mode) that emails the customer
//! about every terminal outcome of a booking (confirmed, rejected, expired, cancelled, failed,
//! refunded) and records `EmailSent`.
//!
//! Layout: [`email`] (what an email says, its Message-ID), [`mailer`] (SMTP through lettre, or
//! `.eml` files in a mail folder for the embedded default), [`service`] (the handler).

pub mod email;
pub mod mailer;
pub mod service;

pub use service::{GROUP, NotifierHandler};
