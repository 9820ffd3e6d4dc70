//! # infra
//!
//! Adapters shared by ZingQueue's services. Today: where the data lives ([`config`]), how the
//! processes log ([`telemetry`]) and how domain events go into and come out of the event store
//! ([`stored_events`]); the relay that publishes the log to Kafka ([`relay`]) and the Kafka
//! settings and topic administration it needs ([`kafka`]); the in-process Kafka-protocol broker of
//! the embedded default ([`embedded_broker`]). The relay, the Kafka consumer runtime, topic admin, hold stores
//! and the embedded broker join this crate as the services that need them are built.

pub mod backoff;
pub mod commands;
pub mod config;
pub mod consumer;
pub mod embedded_broker;
pub mod holds;
pub mod kafka;
pub mod relay;
pub mod stored_events;
pub mod streams;
pub mod telemetry;
