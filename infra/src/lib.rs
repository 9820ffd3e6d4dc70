//! # infra
//!
//! Adapters shared by ZingQueue's services. Today: where the data lives ([`config`]) and how the
//! processes log ([`telemetry`]). The relay, the Kafka consumer runtime, topic admin, hold stores
//! and the embedded broker join this crate as the services that need them are built.

pub mod config;
pub mod telemetry;
