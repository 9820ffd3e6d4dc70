//! # payment
//!
//! The payment service: a consumer group (`payment`, concurrent mode) that charges held
//! bookings and carries out refunds through a [`gateway::PaymentGateway`]. The bundled
//! [`simulator::PaymentSimulator`] is the default provider (latency, decline and transient rates,
//! seeded; the `sim_*` payment methods of API.md), its ledger kept in the store's database; a real
//! provider plugs in behind the trait.
//!
//! Layout: [`gateway`] (the provider trait and its shapes), [`simulator`] and its [`ledger`],
//! [`service`] (the handler: charge, retries, unknown outcomes, refunds, dead letters).

pub mod gateway;
pub mod ledger;
pub mod service;
pub mod simulator;

pub use service::{GROUP, PaymentConfig, PaymentHandler};
