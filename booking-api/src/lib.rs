//! # booking-api
//!
//! ZingQueue's HTTP API (axum), with the routes, roles, shapes and status codes of API.md. The
//! command side only appends events to the store (the store's writer gathers concurrent appends
//! into one transaction): it never waits for Kafka, Redis or payment. Queries answer from the
//! projections' read models (with `?min_position` for read-your-writes).
//!
//! Layout:
//! - [`router`]: the state, the routes and the 1 MiB body limit; [`serve`] with graceful shutdown.
//! - [`shows`]: `POST /shows` (admin), `GET /shows/{id}`, `GET /shows/{id}/seats`.
//! - [`bookings`]: `POST /bookings`, `GET /bookings/{id}`, `DELETE /bookings/{id}`.
//! - [`queries`]: `GET /shows/{id}/stats`, `GET /customers/{id}/bookings`, `?min_position`.
//! - [`live`]: server-sent events of a booking's status and a show's seats.
//! - [`dead_letters`], [`replays`]: the admin routes over dead letters and read-model replays.
//! - [`idempotency`]: `Idempotency-Key`: derived ids, request fingerprints, in-flight keys.
//! - [`access`]: booking access tokens (derived, only their hash stored) and who may see what.
//! - [`auth`]: the admin bearer token, compared in constant time.
//! - [`admission`]: the bound on commands in flight (503 with `Retry-After` beyond it).
//! - [`streams`]: shows and bookings folded from their streams.
//! - [`catalog`]: shows kept in memory for pricing booking requests (their prices never change).
//! - [`error`]: `ApiError`, every failure as `application/problem+json` (RFC 9457).
//! - [`json`]: the JSON body extractor whose rejections are precise 400/413/415/422 problems.
//! - [`openapi`]: `GET /openapi.json` (utoipa), from the handlers' annotations.
//! - [`health`]: liveness and readiness.
//! - [`observability`]: `GET /metrics` and the HTTP metrics of every route; [`monitor`]: lags,
//!   dead letters, consumer lag and the booking funnel read from the database and the broker
//!   once a second; [`dashboard`]: `GET /dashboard`, the page that charts them.

pub mod access;
pub mod admission;
pub mod auth;
pub mod bookings;
pub mod catalog;
pub mod dashboard;
pub mod dead_letters;
pub mod error;
pub mod health;
pub mod idempotency;
pub mod json;
pub mod live;
pub mod monitor;
pub mod observability;
pub mod openapi;
pub mod queries;
pub mod replays;
pub mod router;
pub mod shows;
pub mod streams;

pub use router::{ApiState, router, serve};
