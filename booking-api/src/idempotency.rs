//! `Idempotency-Key` on `POST /bookings` (API.md): same key and same body → the same answer and
//! no second booking; same key, other body → 422; same key while the first request is still in
//! flight → 409. A key is scoped to the customer id and kept 24 hours.
//!
//! No table remembers keys. A keyed request's booking id is derived from (customer id, key)
//! (UUIDv5), and its `booking.requested.v1` event id from the booking id, so the event store
//! itself recognises a repeat: an append whose event ids are all stored already returns the
//! original positions, also when both requests land in the same group-commit batch, and also
//! across API processes. The event records the key and the fingerprint of the body (SHA-256 of
//! canonical JSON), which is what tells "the same request again" from "the key reused with
//! another body". A key older than [`KEY_LIFETIME`] is forgotten: the request becomes a new
//! booking with a fresh id.
//!
//! The in-flight check is per process ([`InFlightKeys`]): two processes racing on one key both
//! reach the store, which then keeps exactly one booking and both get its answer (or a 422 for
//! the one whose body differs).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use chrono::{DateTime, Duration, Utc};
use domain::{BookingId, CustomerId, EventId};
use serde_json::Value;
use uuid::Uuid;

use crate::access::sha256_hex;
use crate::error::ApiError;

/// How long a key is remembered.
pub const KEY_LIFETIME: Duration = Duration::hours(24);

/// Keys are 1 to this many visible ASCII characters (a UUID, an order number, …).
pub const MAX_KEY_CHARS: usize = 255;

pub const HEADER: &str = "idempotency-key";

/// Namespace of the booking ids derived from idempotency keys.
const BOOKING_ID_NAMESPACE: Uuid = Uuid::from_u128(0x3b9e_61d2_7c4a_4f0e_a5d8_9c12_e0b7_46f3);

/// The `Idempotency-Key` header, if present: 400 when it is empty, too long or not visible ASCII.
pub fn key_from(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters"
        ))
    };
    let key = value.to_str().map_err(|_| invalid())?.trim();
    if key.is_empty()
        || key.len() > MAX_KEY_CHARS
        || !key
            .bytes()
            .all(|byte| byte.is_ascii_graphic() || byte == b' ')
    {
        return Err(invalid());
    }
    Ok(Some(key.to_string()))
}

/// The booking id a keyed request of this customer gets, the same on every repeat. `generation`
/// counts the times the key was forgotten (after [`KEY_LIFETIME`]) and used again.
pub fn booking_id_for(customer: &CustomerId, key: &str, generation: u32) -> BookingId {
    // A NUL cannot occur in a customer id (no control characters) or a key (visible ASCII),
    // so every triple maps to a name of its own.
    let name = format!("{}\0{key}\0{generation}", customer.as_str());
    BookingId::from_uuid(Uuid::new_v5(&BOOKING_ID_NAMESPACE, name.as_bytes()))
}

/// The id of the `index`-th event a keyed booking request appends, the same on every repeat.
pub fn requested_event_id(booking_id: BookingId, index: u32) -> EventId {
    let name = format!("booking-api/request/{index}");
    EventId::from_uuid(Uuid::new_v5(&booking_id.as_uuid(), name.as_bytes()))
}

/// Whether a key first used at `first_used` is still remembered at `now`.
pub fn is_remembered(first_used: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now - first_used < KEY_LIFETIME
}

/// SHA-256 of the body as canonical JSON: object keys sorted, no insignificant whitespace. Two
/// bodies that differ only in key order or spacing are the same request.
pub fn fingerprint(body: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(body, &mut canonical);
    sha256_hex(canonical.as_bytes())
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (index, (key, value)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The keys whose first request this process is still working on.
#[derive(Clone, Default)]
pub struct InFlightKeys {
    keys: Arc<Mutex<HashSet<(String, String)>>>,
}

impl InFlightKeys {
    /// Claim (customer, key) for one request, or 409 when another request holds it. The claim
    /// ends when the guard is dropped, whatever the request's outcome.
    pub fn claim(&self, customer: &CustomerId, key: &str) -> Result<InFlightGuard, ApiError> {
        let entry = (customer.as_str().to_string(), key.to_string());
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !keys.insert(entry.clone()) {
            return Err(ApiError::Conflict(format!(
                "a request with Idempotency-Key {key:?} is still in flight; retry when it has \
                 been answered"
            )));
        }
        Ok(InFlightGuard {
            keys: self.keys.clone(),
            entry,
        })
    }
}

/// Releases a claimed key when dropped.
pub struct InFlightGuard {
    keys: Arc<Mutex<HashSet<(String, String)>>>,
    entry: (String, String),
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.remove(&self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn customer(id: &str) -> CustomerId {
        id.parse().unwrap()
    }

    #[test]
    fn key_order_and_spacing_do_not_change_the_fingerprint() {
        let a: Value = serde_json::from_str(r#"{"b": [1, {"y": 2, "x": 1}], "a": "s"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":"s","b":[1,{"x":1,"y":2}]}"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(
            fingerprint(&a),
            fingerprint(&json!({"a": "s", "b": [{"x":1,"y":2}, 1]}))
        );
        assert_ne!(
            fingerprint(&a),
            fingerprint(&json!({"a": "t", "b": [1, {"x":1,"y":2}]}))
        );
    }

    #[test]
    fn booking_ids_are_per_customer_and_key() {
        let ada = customer("ada");
        assert_eq!(booking_id_for(&ada, "k1", 0), booking_id_for(&ada, "k1", 0));
        assert_ne!(booking_id_for(&ada, "k1", 0), booking_id_for(&ada, "k2", 0));
        assert_ne!(booking_id_for(&ada, "k1", 0), booking_id_for(&ada, "k1", 1));
        assert_ne!(
            booking_id_for(&ada, "k1", 0),
            booking_id_for(&customer("bob"), "k1", 0)
        );
    }

    #[test]
    fn keys_are_remembered_for_24_hours() {
        let first = Utc::now();
        assert!(is_remembered(first, first + Duration::hours(23)));
        assert!(!is_remembered(first, first + Duration::hours(24)));
    }

    #[test]
    fn a_key_is_claimed_once_until_released() {
        let keys = InFlightKeys::default();
        let ada = customer("ada");
        let guard = keys.claim(&ada, "k").unwrap();
        assert!(matches!(keys.claim(&ada, "k"), Err(ApiError::Conflict(_))));
        assert!(keys.claim(&customer("bob"), "k").is_ok());
        drop(guard);
        assert!(keys.claim(&ada, "k").is_ok());
    }

    #[test]
    fn malformed_keys_are_refused() {
        let mut headers = HeaderMap::new();
        assert_eq!(key_from(&headers).unwrap(), None);
        headers.insert(HEADER, "order-17".parse().unwrap());
        assert_eq!(key_from(&headers).unwrap().as_deref(), Some("order-17"));
        headers.insert(HEADER, "".parse().unwrap());
        assert!(matches!(key_from(&headers), Err(ApiError::BadRequest(_))));
        headers.insert(HEADER, "x".repeat(256).parse().unwrap());
        assert!(matches!(key_from(&headers), Err(ApiError::BadRequest(_))));
    }
}
