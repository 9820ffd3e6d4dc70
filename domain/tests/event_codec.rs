//! The event contract: type names, JSON round trips of every event, typed decode errors,
//! upcasters and envelopes.

mod support;

use std::collections::BTreeSet;

use domain::booking::{CancelledBy, EmailChannel, EmailSent, FailureReason, PaymentFailureReason};
use domain::show::{ReleaseReason, SeatsReleased, SeatsSold};
use domain::{
    BookingEvent, BookingStatus, DomainEvent, EventDecodeError, EventEnvelope, EventId, ShowEvent,
    Upcaster, event_types,
};
use serde_json::{Value, json};
use support::*;

/// One event of every type.
fn one_of_each() -> Vec<DomainEvent> {
    let show_events = [
        ShowEvent::Scheduled(show_scheduled()),
        ShowEvent::SeatsSold(SeatsSold {
            show_id: show_id(),
            booking_id: the_booking(),
            seats: booked_seats(),
        }),
        ShowEvent::SeatsReleased(SeatsReleased {
            show_id: show_id(),
            booking_id: the_booking(),
            seats: booked_seats(),
            reason: ReleaseReason::Refunded,
        }),
    ];
    let booking_events = [
        requested(),
        seats_held(),
        rejected(),
        hold_expired(),
        payment_succeeded(CHARGE),
        payment_failed(PaymentFailureReason::Exhausted),
        confirmed(),
        failed(FailureReason::SeatsLost),
        cancelled(CancelledBy::Admin, BookingStatus::Confirmed),
        abandoned(BookingStatus::Paid),
        refund_requested(CHARGE),
        refunded(CHARGE, "rf_1"),
        BookingEvent::EmailSent(EmailSent {
            booking_id: the_booking(),
            show_id: show_id(),
            about_event_id: EventId::new(),
            message_id: "<m1@zingqueue>".into(),
            channel: EmailChannel::Smtp,
        }),
    ];
    show_events
        .into_iter()
        .map(DomainEvent::from)
        .chain(booking_events.into_iter().map(DomainEvent::from))
        .collect()
}

#[test]
fn the_type_list_names_every_event_once() {
    let all: Vec<&str> = ShowEvent::EVENT_TYPES
        .iter()
        .chain(BookingEvent::EVENT_TYPES)
        .copied()
        .collect();
    assert_eq!(all, event_types::ALL);
    let unique: BTreeSet<&str> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len());
    let covered: BTreeSet<&str> = one_of_each().iter().map(DomainEvent::event_type).collect();
    assert_eq!(covered, unique);
}

#[test]
fn every_event_round_trips_through_decode() {
    for event in one_of_each() {
        let text = event.to_json_string();
        assert_eq!(
            DomainEvent::decode(event.event_type(), &text).as_ref(),
            Ok(&event),
            "{text}"
        );
        assert_eq!(
            DomainEvent::decode_json(event.event_type(), event.to_json()),
            Ok(event.clone())
        );
        assert!(DomainEvent::is_known_type(event.event_type()));
    }
}

#[test]
fn every_event_names_its_stream_and_partitions_by_its_show() {
    for event in one_of_each() {
        assert_eq!(event.partition_key(), show_id().to_string());
        assert_eq!(event.show_id(), show_id());
        match &event {
            DomainEvent::Show(ShowEvent::Scheduled(_)) => {
                assert_eq!(event.booking_id(), None);
                assert_eq!(event.stream_id(), show_id().stream_id());
            }
            DomainEvent::Show(_) => {
                assert_eq!(event.booking_id(), Some(the_booking()));
                assert_eq!(event.stream_id(), show_id().stream_id());
            }
            DomainEvent::Booking(_) => {
                assert_eq!(event.booking_id(), Some(the_booking()));
                assert_eq!(event.stream_id(), the_booking().stream_id());
            }
        }
    }
}

#[test]
fn the_json_shapes_are_the_contract() {
    assert_eq!(
        DomainEvent::from(requested()).event_type(),
        "booking.requested.v1"
    );
    assert_eq!(
        DomainEvent::from(requested()).to_json(),
        json!({
            "booking_id": the_booking().to_string(),
            "show_id": show_id().to_string(),
            "seats": ["A-1-1", "A-1-2"],
            "customer": {"id": "cust-1", "email": "ada@example.com", "name": "Ada Lovelace"},
            "payment_method": "sim_ok",
            "amount": {"amount_minor": 10000, "currency": "EUR"},
            "requested_at": "2030-05-01T20:00:00Z",
            "access": {},
        })
    );
    assert_eq!(
        DomainEvent::from(ShowEvent::Scheduled(show_scheduled())).to_json(),
        json!({
            "show_id": show_id().to_string(),
            "name": "Flash Sale Live",
            "starts_at": "2030-05-02T20:00:00Z",
            "currency": "EUR",
            "sections": [
                {"name": "A", "rows": 2, "seats_per_row": 3, "price_cents": 5000},
                {"name": "B", "rows": 1, "seats_per_row": 2, "price_cents": 2500},
            ],
        })
    );
    assert_eq!(
        DomainEvent::from(cancelled(CancelledBy::Holder, BookingStatus::Paid)).to_json()["by"],
        json!("holder")
    );
    assert_eq!(
        DomainEvent::from(failed(FailureReason::PaymentExhausted)).to_json()["reason"],
        json!("payment_exhausted")
    );
    assert_eq!(
        DomainEvent::from(payment_failed(PaymentFailureReason::Declined)).to_json()["reason"],
        json!("declined")
    );
}

/// The field names of every stored type: a rename would still round-trip, so only a pinned list
/// notices that old data no longer decodes.
#[test]
fn every_type_keeps_its_field_names() {
    let expected: &[(&str, &[&str])] = &[
        (
            "show.scheduled.v1",
            &["currency", "name", "sections", "show_id", "starts_at"],
        ),
        ("show.seats_sold.v1", &["booking_id", "seats", "show_id"]),
        (
            "show.seats_released.v1",
            &["booking_id", "reason", "seats", "show_id"],
        ),
        (
            "booking.requested.v1",
            &[
                "access",
                "amount",
                "booking_id",
                "customer",
                "payment_method",
                "requested_at",
                "seats",
                "show_id",
            ],
        ),
        (
            "booking.seats_held.v1",
            &["amount", "booking_id", "expires_at", "seats", "show_id"],
        ),
        ("booking.rejected.v1", &["booking_id", "show_id", "taken"]),
        (
            "booking.hold_expired.v1",
            &["booking_id", "expires_at", "seats", "show_id"],
        ),
        (
            "booking.payment_succeeded.v1",
            &["amount", "booking_id", "charge_id", "show_id"],
        ),
        (
            "booking.payment_failed.v1",
            &["booking_id", "detail", "reason", "show_id"],
        ),
        ("booking.confirmed.v1", &["booking_id", "seats", "show_id"]),
        ("booking.failed.v1", &["booking_id", "reason", "show_id"]),
        (
            "booking.cancelled.v1",
            &["booking_id", "by", "previous_status", "seats", "show_id"],
        ),
        (
            "booking.abandoned.v1",
            &[
                "booking_id",
                "previous_status",
                "reason",
                "seats",
                "show_id",
            ],
        ),
        (
            "booking.refund_requested.v1",
            &["amount", "booking_id", "charge_id", "show_id"],
        ),
        (
            "booking.refunded.v1",
            &["amount", "booking_id", "charge_id", "refund_id", "show_id"],
        ),
        (
            "booking.email_sent.v2",
            &[
                "about_event_id",
                "booking_id",
                "channel",
                "message_id",
                "show_id",
            ],
        ),
    ];
    let actual: Vec<(&str, Vec<String>)> = one_of_each()
        .iter()
        .map(|event| {
            let mut keys: Vec<String> = event
                .to_json()
                .as_object()
                .expect("an object")
                .keys()
                .cloned()
                .collect();
            keys.sort();
            (event.event_type(), keys)
        })
        .collect();
    let expected: Vec<(&str, Vec<String>)> = expected
        .iter()
        .map(|(event_type, keys)| (*event_type, keys.iter().map(|k| k.to_string()).collect()))
        .collect();
    assert_eq!(actual, expected);
}

#[test]
fn every_enum_value_keeps_its_spelling() {
    let spell = |value: Value| value.as_str().expect("a string").to_owned();
    let spellings = [
        spell(json!(ReleaseReason::Cancelled)),
        spell(json!(ReleaseReason::Refunded)),
        spell(json!(FailureReason::PaymentDeclined)),
        spell(json!(FailureReason::PaymentExhausted)),
        spell(json!(FailureReason::SeatsLost)),
        spell(json!(PaymentFailureReason::Declined)),
        spell(json!(PaymentFailureReason::Exhausted)),
        spell(json!(CancelledBy::Holder)),
        spell(json!(CancelledBy::Admin)),
        spell(json!(EmailChannel::Smtp)),
        spell(json!(EmailChannel::MailFolder)),
        spell(json!(EmailChannel::Unknown)),
    ];
    assert_eq!(
        spellings,
        [
            "cancelled",
            "refunded",
            "payment_declined",
            "payment_exhausted",
            "seats_lost",
            "declined",
            "exhausted",
            "holder",
            "admin",
            "smtp",
            "mail_folder",
            "unknown",
        ]
    );
    // Statuses travel in `booking.cancelled.v1` and are the API's `status` values.
    for status in [
        BookingStatus::Requested,
        BookingStatus::Held,
        BookingStatus::Paid,
        BookingStatus::Confirmed,
        BookingStatus::Rejected,
        BookingStatus::Expired,
        BookingStatus::Cancelled,
        BookingStatus::Failed,
    ] {
        assert_eq!(spell(json!(status)), status.as_str());
    }
}

#[test]
fn fields_added_by_a_newer_writer_are_ignored() {
    let mut data = DomainEvent::from(confirmed()).to_json();
    data["added_later"] = json!(true);
    assert_eq!(
        DomainEvent::decode_json(event_types::BOOKING_CONFIRMED, data),
        Ok(DomainEvent::from(confirmed()))
    );
}

#[test]
fn an_unknown_type_is_reported_as_unknown_whatever_its_data() {
    for data in ["{}", "not json"] {
        let error = DomainEvent::decode("booking.teleported.v1", data).unwrap_err();
        assert_eq!(
            error,
            EventDecodeError::UnknownType {
                event_type: "booking.teleported.v1".into()
            }
        );
        assert!(error.is_unknown_type());
    }
    assert!(!DomainEvent::is_known_type("booking.requested.v2"));
}

#[test]
fn bad_data_of_a_known_type_is_invalid() {
    let mut bad_seat = DomainEvent::from(confirmed()).to_json();
    bad_seat["seats"] = json!(["A-0-1"]);
    let mut bad_currency = DomainEvent::from(payment_succeeded(CHARGE)).to_json();
    bad_currency["amount"]["currency"] = json!("XXX");
    let mut missing_field = DomainEvent::from(seats_held()).to_json();
    missing_field
        .as_object_mut()
        .expect("an object")
        .remove("expires_at");
    let mut bad_email = DomainEvent::from(requested()).to_json();
    bad_email["customer"]["email"] = json!("nope");
    let cases = [
        (event_types::BOOKING_CONFIRMED, bad_seat.to_string()),
        (
            event_types::BOOKING_PAYMENT_SUCCEEDED,
            bad_currency.to_string(),
        ),
        (event_types::BOOKING_SEATS_HELD, missing_field.to_string()),
        (event_types::BOOKING_REQUESTED, bad_email.to_string()),
        (event_types::SHOW_SEATS_SOLD, "not json".into()),
        (event_types::SHOW_SCHEDULED, "[]".into()),
    ];
    for (event_type, data) in cases {
        let error = DomainEvent::decode(event_type, &data).unwrap_err();
        assert!(
            matches!(&error, EventDecodeError::InvalidData { event_type: t, .. } if t == event_type),
            "{error:?}"
        );
        assert!(!error.is_unknown_type());
    }
}

// --- upcasters --------------------------------------------------------------------------------

/// A made-up earlier version of `booking.email_sent`: short field names.
const EMAIL_SENT_V0: &str = "booking.email_sent.v0";
/// A made-up even earlier version: no show id.
const EMAIL_SENT_V00: &str = "booking.email_sent.v00";

fn email_sent_v0_to_v2(data: Value) -> Result<(&'static str, Value), String> {
    let field = |name: &str| data.get(name).cloned().ok_or(format!("{name} is missing"));
    Ok((
        event_types::BOOKING_EMAIL_SENT,
        json!({
            "booking_id": field("booking")?,
            "show_id": field("show")?,
            "about_event_id": field("about")?,
            "message_id": field("message_id")?,
            "channel": "unknown",
        }),
    ))
}

fn email_sent_v00_to_v0(mut data: Value) -> Result<(&'static str, Value), String> {
    data["show"] = json!(show_id().to_string());
    Ok((EMAIL_SENT_V0, data))
}

const TEST_UPCASTERS: &[Upcaster] = &[
    Upcaster {
        from_type: EMAIL_SENT_V0,
        upcast: email_sent_v0_to_v2,
    },
    Upcaster {
        from_type: EMAIL_SENT_V00,
        upcast: email_sent_v00_to_v0,
    },
];

#[test]
fn upcasters_turn_old_versions_into_the_current_type_step_by_step() {
    let about = EventId::new();
    let expected = DomainEvent::from(BookingEvent::EmailSent(EmailSent {
        booking_id: the_booking(),
        show_id: show_id(),
        about_event_id: about,
        message_id: "<m1@zingqueue>".into(),
        channel: EmailChannel::Unknown,
    }));
    let v0 = json!({
        "booking": the_booking().to_string(),
        "show": show_id().to_string(),
        "about": about.to_string(),
        "message_id": "<m1@zingqueue>",
    });
    assert_eq!(
        DomainEvent::decode_with_upcasters(TEST_UPCASTERS, EMAIL_SENT_V0, &v0.to_string()),
        Ok(expected.clone())
    );
    // Two steps: v00 → v0 → v2.
    let mut v00 = v0.clone();
    v00.as_object_mut().expect("an object").remove("show");
    assert_eq!(
        DomainEvent::decode_with_upcasters(TEST_UPCASTERS, EMAIL_SENT_V00, &v00.to_string()),
        Ok(expected.clone())
    );
    // Current data goes through untouched.
    assert_eq!(
        DomainEvent::decode_with_upcasters(
            TEST_UPCASTERS,
            expected.event_type(),
            &expected.to_json_string()
        ),
        Ok(expected)
    );
    // Without the upcasters, the old type is unknown.
    assert!(
        DomainEvent::decode(EMAIL_SENT_V0, &v0.to_string())
            .unwrap_err()
            .is_unknown_type()
    );
}

/// `booking.email_sent.v1` as it was written, before the channel was recorded.
fn email_sent_v1_data(about: EventId) -> Value {
    json!({
        "booking_id": the_booking().to_string(),
        "show_id": show_id().to_string(),
        "about_event_id": about.to_string(),
        "message_id": "<m1@zingqueue>",
    })
}

#[test]
fn email_sent_v1_is_an_old_type_read_as_v2_with_an_unknown_channel() {
    assert_eq!(event_types::BOOKING_EMAIL_SENT, "booking.email_sent.v2");
    assert_eq!(event_types::BOOKING_EMAIL_SENT_V1, "booking.email_sent.v1");
    assert!(!event_types::ALL.contains(&event_types::BOOKING_EMAIL_SENT_V1));
    assert!(DomainEvent::is_known_type("booking.email_sent.v1"));

    let about = EventId::new();
    let v1 = email_sent_v1_data(about);
    let expected = DomainEvent::from(BookingEvent::EmailSent(EmailSent {
        booking_id: the_booking(),
        show_id: show_id(),
        about_event_id: about,
        message_id: "<m1@zingqueue>".into(),
        channel: EmailChannel::Unknown,
    }));
    assert_eq!(
        DomainEvent::decode("booking.email_sent.v1", &v1.to_string()),
        Ok(expected.clone())
    );
    assert_eq!(
        DomainEvent::decode_json("booking.email_sent.v1", v1),
        Ok(expected.clone())
    );
    // Read as the current type, and written back under it.
    assert_eq!(expected.event_type(), "booking.email_sent.v2");
    assert_eq!(expected.to_json()["channel"], json!("unknown"));
}

#[test]
fn email_sent_v2_round_trips_with_its_channel() {
    for channel in [
        EmailChannel::Smtp,
        EmailChannel::MailFolder,
        EmailChannel::Unknown,
    ] {
        let event = DomainEvent::from(BookingEvent::EmailSent(EmailSent {
            booking_id: the_booking(),
            show_id: show_id(),
            about_event_id: EventId::new(),
            message_id: "<m1@zingqueue>".into(),
            channel,
        }));
        let text = event.to_json_string();
        assert_eq!(
            DomainEvent::decode("booking.email_sent.v2", &text),
            Ok(event),
            "{text}"
        );
    }
    // v2 data must say its channel.
    let mut missing = email_sent_v1_data(EventId::new());
    assert!(matches!(
        DomainEvent::decode_json("booking.email_sent.v2", missing.clone()),
        Err(EventDecodeError::InvalidData { .. })
    ));
    missing["channel"] = json!("carrier_pigeon");
    assert!(matches!(
        DomainEvent::decode_json("booking.email_sent.v2", missing),
        Err(EventDecodeError::InvalidData { .. })
    ));
}

#[test]
fn email_sent_v1_data_that_is_not_an_object_is_invalid() {
    for data in ["[]", "\"sent\"", "42", "null"] {
        let error = DomainEvent::decode("booking.email_sent.v1", data).unwrap_err();
        assert_eq!(
            error,
            EventDecodeError::InvalidData {
                event_type: "booking.email_sent.v1".into(),
                reason: "upcasting booking.email_sent.v1: the data is not a JSON object".into(),
            },
            "{data}"
        );
        assert!(!error.is_unknown_type());
    }
    // An object missing a field gets past the upcaster and fails as v2 data.
    let mut incomplete = email_sent_v1_data(EventId::new());
    incomplete.as_object_mut().unwrap().remove("message_id");
    assert!(matches!(
        DomainEvent::decode("booking.email_sent.v1", &incomplete.to_string()),
        Err(EventDecodeError::InvalidData { event_type, .. }) if event_type == "booking.email_sent.v1"
    ));
}

#[test]
fn a_failing_or_broken_upcaster_makes_the_data_invalid_not_unknown() {
    let error =
        DomainEvent::decode_with_upcasters(TEST_UPCASTERS, EMAIL_SENT_V0, "{}").unwrap_err();
    assert_eq!(
        error,
        EventDecodeError::InvalidData {
            event_type: EMAIL_SENT_V0.into(),
            reason: "upcasting booking.email_sent.v0: booking is missing".into()
        }
    );

    fn to_nowhere(data: Value) -> Result<(&'static str, Value), String> {
        Ok(("booking.nowhere.v1", data))
    }
    fn to_itself(data: Value) -> Result<(&'static str, Value), String> {
        Ok(("booking.loop.v0", data))
    }
    let broken = [
        Upcaster {
            from_type: "booking.lost.v0",
            upcast: to_nowhere,
        },
        Upcaster {
            from_type: "booking.loop.v0",
            upcast: to_itself,
        },
    ];
    for event_type in ["booking.lost.v0", "booking.loop.v0"] {
        let error = DomainEvent::decode_with_upcasters(&broken, event_type, "{}").unwrap_err();
        assert!(
            matches!(error, EventDecodeError::InvalidData { .. }),
            "{error:?}"
        );
    }
}

// --- envelopes --------------------------------------------------------------------------------

#[test]
fn fresh_envelopes_get_new_ids_correlated_by_the_first() {
    let envelopes = EventEnvelope::fresh([requested(), seats_held()]);
    assert_eq!(envelopes.len(), 2);
    assert_ne!(envelopes[0].event_id, envelopes[1].event_id);
    assert_eq!(envelopes[0].correlation_id, envelopes[0].event_id);
    assert_eq!(envelopes[1].correlation_id, envelopes[0].event_id);
    assert_eq!(envelopes[1].causation_id, None);
    assert_eq!(envelopes[1].event, DomainEvent::from(seats_held()));
}

#[test]
fn derived_envelopes_get_the_same_ids_on_redelivery() {
    let cause = EventId::new();
    let correlation = EventId::new();
    let derive = || {
        EventEnvelope::derived(
            cause,
            correlation,
            "seat-lock",
            [
                DomainEvent::from(ShowEvent::SeatsSold(SeatsSold {
                    show_id: show_id(),
                    booking_id: the_booking(),
                    seats: booked_seats(),
                })),
                DomainEvent::from(confirmed()),
            ],
        )
    };
    let first = derive();
    assert_eq!(first, derive());
    assert_eq!(first[0].event_id, EventId::derived(cause, "seat-lock", 0));
    assert_eq!(first[1].event_id, EventId::derived(cause, "seat-lock", 1));
    assert_eq!(first[1].causation_id, Some(cause));
    assert_eq!(first[1].correlation_id, correlation);
}

#[test]
fn a_booking_requested_written_before_access_was_recorded_reads_as_no_token_and_no_key() {
    let mut written: Value =
        serde_json::from_str(&DomainEvent::from(requested()).to_json_string()).unwrap();
    written.as_object_mut().unwrap().remove("access");
    let decoded =
        DomainEvent::decode(event_types::BOOKING_REQUESTED, &written.to_string()).unwrap();
    let DomainEvent::Booking(BookingEvent::Requested(requested)) = decoded else {
        panic!("decoded {decoded:?}");
    };
    assert_eq!(requested.access, domain::booking::BookingAccess::default());
}

#[test]
fn a_booking_requested_keeps_its_token_hash_and_idempotency_key() {
    let BookingEvent::Requested(mut event) = requested() else {
        unreachable!()
    };
    event.access = domain::booking::BookingAccess {
        access_token_sha256: Some("ab".repeat(32)),
        idempotency: Some(domain::booking::IdempotencyRecord {
            key: "order-17".into(),
            request_sha256: "cd".repeat(32),
        }),
    };
    let stored = DomainEvent::from(BookingEvent::Requested(event.clone()));
    let decoded = DomainEvent::decode(stored.event_type(), &stored.to_json_string()).unwrap();
    assert_eq!(decoded, DomainEvent::from(BookingEvent::Requested(event)));
}
