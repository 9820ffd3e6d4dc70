//! # infra
//!
//! Adapters shared by ZingQueue's services: where the data lives ([`config`]), logging
//! ([`telemetry`]) and Prometheus metrics ([`metrics`]), domain events in and out of the store
//! ([`stored_events`], [`streams`], [`commands`]), the relay from the store to Kafka ([`relay`]),
//! Kafka settings and topic admin ([`kafka`]), the in-process broker of the embedded default
//! ([`embedded_broker`]), the consumer runtime ([`consumer`]), the seat hold stores ([`holds`])
//! retry timing ([`backoff`]), and riding out servers that go away: readiness and the retry loop
//! of every long-running component ([`resilience`]).

pub mod backoff;
pub mod commands;
pub mod config;
pub mod consumer;
pub mod embedded_broker;
pub mod holds;
pub mod kafka;
pub mod metrics;
pub mod relay;
pub mod resilience;
pub mod stored_events;
pub mod streams;
pub mod telemetry;
