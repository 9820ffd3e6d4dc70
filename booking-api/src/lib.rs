//! # booking-api
//!
//! ZingQueue's HTTP API (axum), with the routes, roles, shapes and status codes of API.md. The
//! command side only appends events to the store: it never waits for Kafka, Redis or payment.
//!
//! This crate is being built route by route. Today it serves `POST /shows` (admin),
//! `GET /shows/{show_id}`, `GET /shows/{show_id}/seats`, `/healthz` and `/readyz`; bookings, seat maps, idempotency and the
//! OpenAPI document come next (issue "Booking command API, outbox relay …").
//!
//! Layout:
//! - [`error`]: `ApiError`, every failure as `application/problem+json` (RFC 9457).
//! - [`auth`]: the admin bearer token, compared in constant time.
//! - [`json`]: the JSON body extractor whose rejections are precise 400/413/415 problems.
//! - [`shows`]: the show routes.
//! - [`health`]: liveness and readiness.
//! - [`router`]: the state and the router, with the 1 MiB body limit.

pub mod auth;
pub mod error;
pub mod health;
pub mod json;
pub mod router;
pub mod shows;

pub use router::{ApiState, router, serve};
