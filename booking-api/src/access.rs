//! Booking access tokens (API.md, "booking holder"): `POST /bookings` hands the client a token
//! once; the booking's `booking.requested.v1` event keeps only its SHA-256.
//!
//! The token is derived, not drawn: `HMAC-SHA256(key, booking id)`, with a key derived from the
//! admin token. That is what lets a repeated request with the same `Idempotency-Key` get the very
//! same answer, token included, without the token being stored anywhere. Checking a presented
//! token needs only the stored hash, so a token stays valid even if the key changes later (only
//! replays of requests made before the change would then hand out a token that does not match).
//! The key is as secret as the admin token, and whoever holds the admin token can read every
//! booking anyway.

use axum::http::HeaderMap;
use domain::{Booking, BookingId};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::auth::{AdminToken, bearer, constant_time_eq};
use crate::error::ApiError;

/// Tokens start with this, so that one pasted in the wrong place is recognisable.
const TOKEN_PREFIX: &str = "zqb_";

/// Derives booking access tokens.
#[derive(Clone)]
pub struct BookingTokens {
    key: [u8; 32],
}

impl BookingTokens {
    /// Tokens keyed by (a hash of) the admin token, under a label of their own so that the key
    /// is never the admin token itself.
    pub fn derived_from(admin: &AdminToken) -> BookingTokens {
        let mut hasher = Sha256::new();
        hasher.update(b"zingqueue/booking-access-token/v1\0");
        hasher.update(admin.expose().as_bytes());
        BookingTokens {
            key: hasher.finalize().into(),
        }
    }

    /// The access token of a booking.
    pub fn token_for(&self, booking_id: BookingId) -> String {
        // HMAC accepts keys of any length: `new_from_slice` cannot fail for SHA-256.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        mac.update(booking_id.as_uuid().as_bytes());
        format!("{TOKEN_PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
    }
}

impl std::fmt::Debug for BookingTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BookingTokens(***)")
    }
}

/// SHA-256 of `text`, in hex: what is stored of a token, and the fingerprint of a request.
pub fn sha256_hex(text: &[u8]) -> String {
    hex::encode(Sha256::digest(text))
}

/// Who is asking about a booking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Holder,
}

/// The caller of a booking route: 401 without a bearer token, the admin for the admin token, the
/// holder for the booking's own token, 403 for any other token.
pub fn authorize(
    headers: &HeaderMap,
    admin: &AdminToken,
    booking: &Booking,
) -> Result<Caller, ApiError> {
    authorize_by_hash(
        headers,
        admin,
        booking.access().access_token_sha256.as_deref(),
    )
}

/// [`authorize`] against the stored SHA-256 of a booking's access token (as the read models
/// keep it).
pub fn authorize_by_hash(
    headers: &HeaderMap,
    admin: &AdminToken,
    access_token_sha256: Option<&str>,
) -> Result<Caller, ApiError> {
    let presented = bearer(headers).ok_or(ApiError::Unauthorized)?;
    if admin.matches(presented) {
        return Ok(Caller::Admin);
    }
    let presented_hash = sha256_hex(presented.as_bytes());
    match access_token_sha256 {
        Some(stored) if constant_time_eq(presented_hash.as_bytes(), stored.as_bytes()) => {
            Ok(Caller::Holder)
        }
        _ => Err(ApiError::Forbidden),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_per_booking_and_differ_between_bookings_and_keys() {
        let tokens = BookingTokens::derived_from(&AdminToken::new("admin-1"));
        let other_key = BookingTokens::derived_from(&AdminToken::new("admin-2"));
        let (a, b) = (BookingId::new(), BookingId::new());
        assert_eq!(tokens.token_for(a), tokens.token_for(a));
        assert_ne!(tokens.token_for(a), tokens.token_for(b));
        assert_ne!(tokens.token_for(a), other_key.token_for(a));
        assert!(tokens.token_for(a).starts_with(TOKEN_PREFIX));
        assert_eq!(tokens.token_for(a).len(), TOKEN_PREFIX.len() + 64);
    }

    #[test]
    fn the_hash_is_sha256_in_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
