//! # infra
//!
//! Adapters shared by ZingQueue's services. Today: where the data lives ([`config`]), how the
//! processes log ([`telemetry`]) and how domain events go into and come out of the event store
//! ([`stored_events`]). The relay, the Kafka consumer runtime, topic admin, hold stores
//! and the embedded broker join this crate as the services that need them are built.

pub mod config;
pub mod stored_events;
pub mod telemetry;
