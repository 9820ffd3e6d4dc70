//! The payment handler: charges held bookings and carries out refunds, through a
//! [`PaymentGateway`].
//!
//! - **Charge** on `booking.seats_held.v1`, keyed by the booking id on every attempt and every
//!   redrive, so the provider takes the money at most once. A booking that is no longer held
//!   (cancelled, expired) is not charged, and no charge starts with less than `min_hold_left`
//!   of the hold left: the hold would likely end while the provider works, and the money would
//!   have to go back.
//! - **Transient failures** retry with exponential backoff and jitter, up to
//!   `retry.max_attempts`, inside this booking's task: the consumer runtime runs many bookings
//!   of a partition at once, so one booking's retries hold up no other.
//! - **Unknown outcome** (a timeout): the gateway is asked for the charge's status; only a charge
//!   it never took is attempted again.
//! - **Declined** → `PaymentFailed` + `BookingFailed` at once. **Exhausted** → the same, and a
//!   dead letter (`payment-exhausted`) for an operator.
//! - **Refund** on `booking.refund_requested.v1` (a cancellation, a late payment, a lost sale),
//!   keyed by the charge id, then `booking.refunded.v1`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::booking::{
    BookingCommand, BookingEvent, PaymentFailureReason, RefundRequested, SeatsHeld,
};
use domain::{BookingStatus, DomainEvent, event_types};
use event_store::EventStore;
use infra::backoff::Backoff;
use infra::commands::{Cause, Decided, decide_booking};
use infra::consumer::dead_letters::CAUSE_PAYMENT_EXHAUSTED;
use infra::consumer::{EventRecord, Handled, Handler, HandlerError};
use infra::streams::load_booking;
use tracing::{info, warn};

use crate::gateway::{ChargeRequest, ChargeStatus, GatewayError, PaymentGateway, RefundRequest};

/// The consumer group (and service) name.
pub const GROUP: &str = "payment";

#[derive(Debug, Clone)]
pub struct PaymentConfig {
    /// Retries of transient gateway failures (`max_attempts` counts the first try).
    pub retry: Backoff,
    /// No charge starts with less hold than this left.
    pub min_hold_left: Duration,
}

impl Default for PaymentConfig {
    fn default() -> Self {
        PaymentConfig {
            retry: Backoff {
                base: Duration::from_millis(200),
                factor: 2.0,
                max_delay: Duration::from_secs(5),
                max_attempts: 5,
            },
            min_hold_left: Duration::from_secs(5),
        }
    }
}

pub struct PaymentHandler {
    store: Arc<dyn EventStore>,
    gateway: Arc<dyn PaymentGateway>,
    config: PaymentConfig,
}

impl PaymentHandler {
    pub fn new(
        store: Arc<dyn EventStore>,
        gateway: Arc<dyn PaymentGateway>,
        config: PaymentConfig,
    ) -> PaymentHandler {
        PaymentHandler {
            store,
            gateway,
            config,
        }
    }

    async fn charge(
        &self,
        record: &EventRecord,
        held: &SeatsHeld,
    ) -> Result<Handled, HandlerError> {
        let booking_id = held.booking_id;
        let Some(loaded) = load_booking(&*self.store, booking_id)
            .await
            .map_err(infra::commands::CommandError::from)?
        else {
            return Err(HandlerError::Permanent(format!(
                "booking {booking_id} does not exist"
            )));
        };
        let booking = &loaded.booking;
        if booking.status() != BookingStatus::Held {
            info!(%booking_id, status = booking.status().as_str(), "not held any more: no charge");
            // An earlier delivery may have charged and crashed before recording it.
            self.record_earlier_charge(record, booking_id).await?;
            return Ok(Handled::Done);
        }
        let request = ChargeRequest {
            idempotency_key: booking_id.to_string(),
            amount: held.amount,
            payment_method: booking.payment_method().map(str::to_string),
            description: format!("ZingQueue booking {booking_id}"),
        };
        let first_failed_at = Utc::now();
        let mut attempt = 0u32;
        let mut last_error = String::new();
        while attempt < self.config.retry.max_attempts {
            attempt += 1;
            if !self.enough_hold_left(held.expires_at) {
                info!(%booking_id, attempt, "too little of the hold left to start a charge; the hold will expire");
                self.record_earlier_charge(record, booking_id).await?;
                return Ok(Handled::Done);
            }
            // A revoked or stopping worker stops here, before the charge: the partition's new
            // owner charges (under the same key) once (infra::consumer::lease).
            infra::consumer::ensure_owned()?;
            let outcome = match self.gateway.charge(&request).await {
                Err(GatewayError::UnknownOutcome { reason }) => {
                    warn!(%booking_id, %reason, "charge outcome unknown; asking the provider");
                    self.resolve_unknown(&request.idempotency_key).await
                }
                other => other.map(|receipt| (receipt.charge_id, receipt.amount)),
            };
            match outcome {
                Ok((charge_id, amount)) => {
                    info!(%booking_id, %charge_id, attempt, "charged");
                    self.record(
                        record,
                        booking_id,
                        "payment/charge",
                        BookingCommand::RecordPayment {
                            charge_id: charge_id.clone(),
                            amount,
                        },
                    )
                    .await?;
                    return Ok(Handled::Done);
                }
                Err(GatewayError::Declined { reason }) => {
                    info!(%booking_id, %reason, "payment declined");
                    self.fail(record, booking_id, PaymentFailureReason::Declined, reason)
                        .await?;
                    return Ok(Handled::Done);
                }
                Err(GatewayError::Invalid { reason }) => {
                    return Err(HandlerError::Permanent(format!(
                        "the provider refused the charge: {reason}"
                    )));
                }
                // Not a try: the runtime retries the record with backoff (payment is not
                // ready meanwhile) and the hold check above bounds the wait.
                Err(GatewayError::Unreachable { reason }) => {
                    return Err(HandlerError::Transient(format!(
                        "the payment provider is unreachable: {reason}"
                    )));
                }
                Err(error) => {
                    last_error = error.to_string();
                    // A failed attempt, whether retried or not: the service's failure rate.
                    infra::metrics::count_handler_failure(
                        GROUP,
                        attempt < self.config.retry.max_attempts,
                    );
                    if attempt < self.config.retry.max_attempts {
                        let delay = self.config.retry.delay(attempt);
                        warn!(%booking_id, attempt, ?delay, error = %last_error, "charge failed transiently; retrying");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        // A timed-out attempt may have charged after all: never fail a booking that paid.
        if self.record_earlier_charge(record, booking_id).await? {
            return Ok(Handled::Done);
        }
        let detail = format!("{attempt} attempts failed; the last: {last_error}");
        warn!(%booking_id, %detail, "payment exhausted");
        self.fail(
            record,
            booking_id,
            PaymentFailureReason::Exhausted,
            detail.clone(),
        )
        .await?;
        Ok(Handled::DeadLetter {
            cause: CAUSE_PAYMENT_EXHAUSTED,
            reason: detail,
            attempts: attempt,
            first_failed_at,
        })
    }

    /// After a timeout: the charge as the provider knows it. A charge it never took is a
    /// transient failure (the next attempt charges, under the same key).
    async fn resolve_unknown(&self, key: &str) -> Result<(String, domain::Money), GatewayError> {
        match self.gateway.charge_status(key).await? {
            ChargeStatus::Charged(receipt) => Ok((receipt.charge_id, receipt.amount)),
            ChargeStatus::Declined { reason } => Err(GatewayError::Declined { reason }),
            ChargeStatus::NotCharged => Err(GatewayError::Transient {
                reason: "the timed-out charge was not taken".into(),
            }),
        }
    }

    /// Ask the provider whether a charge under this booking's key went through earlier (a crash
    /// between the provider's answer and the append, or a timeout never resolved) and record it:
    /// money taken is never left untracked (the decider refunds it when the booking has moved
    /// on). True when there was such a charge.
    async fn record_earlier_charge(
        &self,
        record: &EventRecord,
        booking_id: domain::BookingId,
    ) -> Result<bool, HandlerError> {
        match self.gateway.charge_status(&booking_id.to_string()).await {
            Ok(ChargeStatus::Charged(receipt)) => {
                warn!(%booking_id, charge_id = %receipt.charge_id, "found an unrecorded charge; recording it");
                self.record(
                    record,
                    booking_id,
                    "payment/charge",
                    BookingCommand::RecordPayment {
                        charge_id: receipt.charge_id,
                        amount: receipt.amount,
                    },
                )
                .await?;
                Ok(true)
            }
            Ok(ChargeStatus::NotCharged | ChargeStatus::Declined { .. }) => Ok(false),
            Err(error) => Err(HandlerError::Transient(format!(
                "cannot ask the provider about earlier charges: {error}"
            ))),
        }
    }

    fn enough_hold_left(&self, expires_at: DateTime<Utc>) -> bool {
        let left = expires_at - Utc::now();
        left.to_std()
            .is_ok_and(|left| left >= self.config.min_hold_left)
    }

    async fn fail(
        &self,
        record: &EventRecord,
        booking_id: domain::BookingId,
        reason: PaymentFailureReason,
        detail: String,
    ) -> Result<(), HandlerError> {
        self.record(
            record,
            booking_id,
            "payment/failure",
            BookingCommand::RecordPaymentFailure { reason, detail },
        )
        .await
    }

    async fn record(
        &self,
        record: &EventRecord,
        booking_id: domain::BookingId,
        step: &str,
        command: BookingCommand,
    ) -> Result<(), HandlerError> {
        match decide_booking(&*self.store, booking_id, Cause::of(record), step, |_| {
            command.clone()
        })
        .await?
        {
            Decided::Appended(_) | Decided::Nothing => Ok(()),
            Decided::Refused(refusal) => {
                // The booking moved on (cancelled or expired while we charged): the decider
                // records money taken anyway, so a refusal here only concerns failures.
                info!(%booking_id, %refusal, step, "nothing to record");
                Ok(())
            }
        }
    }

    async fn refund(
        &self,
        record: &EventRecord,
        refund: &RefundRequested,
    ) -> Result<Handled, HandlerError> {
        let request = RefundRequest {
            idempotency_key: refund.charge_id.clone(),
            charge_id: refund.charge_id.clone(),
            amount: refund.amount,
        };
        let first_failed_at = Utc::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            infra::consumer::ensure_owned()?;
            match self.gateway.refund(&request).await {
                Ok(receipt) => {
                    info!(booking_id = %refund.booking_id, charge_id = %refund.charge_id, refund_id = %receipt.refund_id, "refunded");
                    self.record(
                        record,
                        refund.booking_id,
                        "payment/refund",
                        BookingCommand::RecordRefund {
                            charge_id: refund.charge_id.clone(),
                            refund_id: receipt.refund_id,
                        },
                    )
                    .await?;
                    return Ok(Handled::Done);
                }
                Err(GatewayError::Unreachable { reason }) => {
                    return Err(HandlerError::Transient(format!(
                        "the payment provider is unreachable: {reason}"
                    )));
                }
                Err(
                    GatewayError::Transient { reason } | GatewayError::UnknownOutcome { reason },
                ) if attempt < self.config.retry.max_attempts => {
                    infra::metrics::count_handler_failure(GROUP, true);
                    let delay = self.config.retry.delay(attempt);
                    warn!(booking_id = %refund.booking_id, attempt, ?delay, %reason, "refund failed transiently; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(
                    error @ (GatewayError::Transient { .. } | GatewayError::UnknownOutcome { .. }),
                ) => {
                    return Ok(Handled::DeadLetter {
                        cause: CAUSE_PAYMENT_EXHAUSTED,
                        reason: format!(
                            "refund of charge {}: {attempt} attempts failed; the last: {error}",
                            refund.charge_id
                        ),
                        attempts: attempt,
                        first_failed_at,
                    });
                }
                Err(error) => {
                    return Err(HandlerError::Permanent(format!(
                        "refund of charge {}: {error}",
                        refund.charge_id
                    )));
                }
            }
        }
    }
}

#[async_trait]
impl Handler for PaymentHandler {
    fn subscribes_to(&self, event_type: &str) -> bool {
        event_type == event_types::BOOKING_SEATS_HELD
            || event_type == event_types::BOOKING_REFUND_REQUESTED
    }

    async fn handle(&self, record: &EventRecord) -> Result<Handled, HandlerError> {
        match &record.event {
            DomainEvent::Booking(BookingEvent::SeatsHeld(held)) => self.charge(record, held).await,
            DomainEvent::Booking(BookingEvent::RefundRequested(refund)) => {
                self.refund(record, refund).await
            }
            _ => Ok(Handled::Done),
        }
    }
}
