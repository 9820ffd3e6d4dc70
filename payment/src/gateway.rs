//! The payment provider abstraction: what the payment service needs from whoever moves the money.
//!
//! The service charges a held booking, asks about a charge whose outcome it never heard, and refunds
//! a booking whose seats were lost or that was cancelled. Kafka delivers at least once and the
//! service retries, so every call here may be made many times for the same effect: each one carries
//! an idempotency key and a provider must apply a key at most once. The bundled
//! [`PaymentSimulator`](crate::simulator::PaymentSimulator) implements this trait; a real provider
//! plugs in behind it.

use domain::Money;

/// What a payment provider offers.
///
/// Every call is idempotent by key: the booking id keys a charge on every attempt and every
/// redrive, so a repeated charge returns the first charge instead of taking money twice, and a
/// repeated refund returns the first refund instead of paying back twice.
#[async_trait::async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    /// Takes `request.amount` once per idempotency key. A repeat of a key that was charged returns
    /// the first receipt; a repeat of a key that was declined is declined again.
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeReceipt, GatewayError>;

    /// The outcome of an earlier charge with this key, to resolve an unknown outcome (a timeout)
    /// without charging blindly again.
    async fn charge_status(&self, idempotency_key: &str) -> Result<ChargeStatus, GatewayError>;

    /// Pays a charge back, once per charge: a repeat returns the first refund.
    async fn refund(&self, request: &RefundRequest) -> Result<RefundReceipt, GatewayError>;
}

/// A request to take money for one booking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// The booking id: the same on every attempt and every redrive, so the provider can tell a
    /// retry from a new purchase.
    pub idempotency_key: String,
    /// What to take.
    pub amount: Money,
    /// The provider's token for the customer's payment method (see API.md); `None` lets the
    /// provider use its default (the simulator then applies its configured rates).
    pub payment_method: Option<String>,
    /// Shown on the customer's statement and in the provider's dashboard.
    pub description: String,
}

/// Proof that money was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeReceipt {
    /// The provider's id of the charge: what a refund names.
    pub charge_id: String,
    /// What was taken, as the provider recorded it.
    pub amount: Money,
}

/// What the provider knows about a charge key, asked after a timeout left the outcome unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeStatus {
    /// The money was taken: record the payment, do not charge again.
    Charged(ChargeReceipt),
    /// No money was taken under this key (never seen, or only transient failures): charging again
    /// is safe.
    NotCharged,
    /// The provider refused the charge for good: charging again will be refused again.
    Declined { reason: String },
}

/// A request to pay back one charge in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// The charge id: one refund per charge, whichever step asks for it and however often.
    pub idempotency_key: String,
    /// The charge to pay back.
    pub charge_id: String,
    /// Must equal the charged amount: a provider refuses anything else rather than guess.
    pub amount: Money,
}

/// Proof that a refund was issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundReceipt {
    /// The provider's id of the refund.
    pub refund_id: String,
}

/// Why a gateway call did not succeed. The variants differ in what the caller may do next, which
/// is why they are kept apart rather than folded into one message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// Permanent: the provider said no (card declined, insufficient funds). Retrying cannot help;
    /// the booking fails.
    #[error("payment declined: {reason}")]
    Declined { reason: String },
    /// Temporary, and no money moved: retry with backoff.
    #[error("transient payment gateway failure: {reason}")]
    Transient { reason: String },
    /// The call timed out and money may or may not have moved: ask
    /// [`PaymentGateway::charge_status`] before anything else, never charge blindly.
    #[error("payment outcome unknown: {reason}")]
    UnknownOutcome { reason: String },
    /// The provider could not be reached: nothing was sent, no money moved. Not a try of the
    /// payment (it does not count against the retry limit): the caller waits for the provider
    /// as for any server that is away, and the hold's deadline bounds the wait.
    #[error("payment provider unreachable: {reason}")]
    Unreachable { reason: String },
    /// Permanent: the request itself is wrong (refund of an unknown charge, an amount that does not
    /// match the charge, a key reused with another amount). A bug or corrupt state, not bad luck.
    #[error("invalid payment request: {reason}")]
    Invalid { reason: String },
}

impl GatewayError {
    /// Whether the same call may simply be retried after a backoff. Only [`Transient`] qualifies:
    /// an [`UnknownOutcome`] is not transient because a blind retry of a charge could be the
    /// second one; it must be resolved through `charge_status` first.
    ///
    /// [`Transient`]: GatewayError::Transient
    /// [`UnknownOutcome`]: GatewayError::UnknownOutcome
    pub fn is_transient(&self) -> bool {
        matches!(self, GatewayError::Transient { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_errors_are_transient() {
        let reason = || "r".to_owned();
        assert!(GatewayError::Transient { reason: reason() }.is_transient());
        assert!(!GatewayError::Declined { reason: reason() }.is_transient());
        assert!(!GatewayError::UnknownOutcome { reason: reason() }.is_transient());
        assert!(!GatewayError::Invalid { reason: reason() }.is_transient());
    }

    #[test]
    fn errors_name_their_kind_and_reason() {
        let error = GatewayError::Declined {
            reason: "insufficient funds".to_owned(),
        };
        assert_eq!(error.to_string(), "payment declined: insufficient funds");
    }
}
