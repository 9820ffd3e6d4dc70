//! Given/when/then tests of every transition and every refusal of the booking decider.

mod support;

use domain::booking::{
    BookingCancelled, CancelledBy, EmailChannel, EmailSent, FailureReason, PaymentFailureReason,
    PaymentSucceeded, RefundProgress, RefundRequested,
};
use domain::{
    BookingCommand, BookingDecider, BookingEvent, BookingStatus, Decider, DomainError, EventId,
    RefundStatus,
};
use support::*;

fn given_booking(events: Vec<BookingEvent>) -> Given<BookingDecider> {
    given::<BookingDecider>(events)
}

fn state_after(events: Vec<BookingEvent>) -> domain::Booking {
    BookingDecider::fold(&events).expect("a requested booking")
}

fn record_payment(charge_id: &str) -> BookingCommand {
    BookingCommand::RecordPayment {
        charge_id: charge_id.into(),
        amount: amount(),
    }
}

fn payment_failure(reason: PaymentFailureReason) -> BookingCommand {
    BookingCommand::RecordPaymentFailure {
        reason,
        detail: "card declined".into(),
    }
}

fn already(status: BookingStatus) -> DomainError {
    DomainError::AlreadyFinished { status }
}

fn cannot(command: &'static str, status: BookingStatus) -> DomainError {
    DomainError::InvalidTransition { command, status }
}

// --- request ---------------------------------------------------------------------------------

#[test]
fn a_request_records_the_booking_with_its_fixed_amount() {
    given_booking(vec![])
        .when(BookingCommand::Request(request()))
        .then([requested()]);
    let booking = state_after(history_requested());
    assert_eq!(booking.status(), BookingStatus::Requested);
    assert_eq!(booking.amount(), amount());
    assert_eq!(booking.refund_status(), RefundStatus::None);
    assert_eq!(booking.payment_method(), Some("sim_ok"));
}

#[test]
fn the_same_request_again_is_already_recorded_even_at_another_time() {
    let mut retry = request();
    retry.requested_at = at(1);
    given_booking(history_requested())
        .when(BookingCommand::Request(retry))
        .then_nothing();
    // Also once the booking has moved on.
    given_booking(history_confirmed())
        .when(BookingCommand::Request(request()))
        .then_nothing();
}

#[test]
fn another_request_under_the_same_id_is_refused() {
    let mut other = request();
    other.seats = seats(&["B-1-1"]);
    given_booking(history_requested())
        .when(BookingCommand::Request(other))
        .then_error(DomainError::BookingAlreadyExists {
            booking_id: the_booking(),
        });
}

#[test]
fn a_request_needs_one_to_ten_seats_a_non_negative_amount_and_a_sane_payment_method() {
    let mut none = request();
    none.seats.clear();
    given_booking(vec![])
        .when(BookingCommand::Request(none))
        .then_error(DomainError::NoSeats);

    let mut eleven = request();
    eleven.seats = (1..=11).map(|n| seat(&format!("A-1-{n}"))).collect();
    given_booking(vec![])
        .when(BookingCommand::Request(eleven))
        .then_error(DomainError::TooManySeats {
            requested: 11,
            max: 10,
        });

    let mut negative = request();
    negative.amount = euros(-1);
    given_booking(vec![])
        .when(BookingCommand::Request(negative))
        .then_error(DomainError::InvalidCommand {
            reason: "amount must not be negative",
        });

    for (method, reason) in [
        ("", "payment_method must be 1 to 256 characters"),
        (
            &*"x".repeat(257),
            "payment_method must be 1 to 256 characters",
        ),
        (
            "tok\n",
            "payment_method must not contain control characters",
        ),
    ] {
        let mut bad = request();
        bad.payment_method = Some(method.into());
        given_booking(vec![])
            .when(BookingCommand::Request(bad))
            .then_error(DomainError::InvalidCommand { reason });
    }

    let mut free = request();
    free.amount = euros(0);
    free.payment_method = None;
    assert!(matches!(
        domain::booking::decide(&None, BookingCommand::Request(free)).as_deref(),
        Ok([BookingEvent::Requested(_)])
    ));
}

#[test]
fn every_other_command_needs_an_existing_booking() {
    let commands = [
        BookingCommand::HoldSeats {
            expires_at: at(HOLD_MINUTES),
        },
        BookingCommand::Reject {
            taken: booked_seats(),
        },
        BookingCommand::ExpireHold { now: at(60) },
        record_payment(CHARGE),
        payment_failure(PaymentFailureReason::Declined),
        BookingCommand::Confirm,
        BookingCommand::RecordSeatsLost,
        BookingCommand::Cancel {
            by: CancelledBy::Holder,
        },
        BookingCommand::RecordRefund {
            charge_id: CHARGE.into(),
            refund_id: "rf_1".into(),
        },
        BookingCommand::RecordEmailSent {
            about_event_id: EventId::new(),
            message_id: "<m@zq>".into(),
            channel: EmailChannel::Smtp,
        },
    ];
    for command in commands {
        given_booking(vec![])
            .when(command)
            .then_error(DomainError::BookingNotFound);
    }
}

// --- hold -------------------------------------------------------------------------------------

#[test]
fn holding_a_requested_booking_records_the_expiry_and_the_amount() {
    given_booking(history_requested())
        .when(BookingCommand::HoldSeats {
            expires_at: at(HOLD_MINUTES),
        })
        .then([seats_held()]);
    let booking = state_after(history_held());
    assert_eq!(booking.status(), BookingStatus::Held);
    assert_eq!(booking.hold_expires_at(), Some(at(HOLD_MINUTES)));
}

#[test]
fn a_hold_must_end_after_the_request() {
    given_booking(history_requested())
        .when(BookingCommand::HoldSeats { expires_at: at(0) })
        .then_error(DomainError::InvalidCommand {
            reason: "a hold must end after the booking was requested",
        });
}

#[test]
fn holding_again_is_already_recorded_and_the_first_expiry_stands() {
    for history in [history_held(), history_paid(), history_confirmed()] {
        given_booking(history.clone())
            .when(BookingCommand::HoldSeats {
                expires_at: at(HOLD_MINUTES),
            })
            .then_nothing();
        given_booking(history)
            .when(BookingCommand::HoldSeats {
                expires_at: at(HOLD_MINUTES + 5),
            })
            .then_nothing();
    }
}

#[test]
fn a_finished_booking_cannot_be_held() {
    for (status, history) in finished_histories() {
        given_booking(history)
            .when(BookingCommand::HoldSeats {
                expires_at: at(HOLD_MINUTES),
            })
            .then_error(already(status));
    }
}

// --- reject -----------------------------------------------------------------------------------

#[test]
fn a_requested_booking_is_rejected_with_the_taken_seats() {
    given_booking(history_requested())
        .when(BookingCommand::Reject {
            taken: seats(&["A-1-2"]),
        })
        .then([rejected()]);
    let booking = state_after(history_rejected());
    assert_eq!(booking.status(), BookingStatus::Rejected);
    assert_eq!(booking.taken_seats(), &seats(&["A-1-2"]));
}

#[test]
fn a_rejection_names_taken_seats_of_the_booking() {
    given_booking(history_requested())
        .when(BookingCommand::Reject { taken: seats(&[]) })
        .then_error(DomainError::InvalidCommand {
            reason: "a rejection must name the taken seats",
        });
    given_booking(history_requested())
        .when(BookingCommand::Reject {
            taken: seats(&["B-1-1"]),
        })
        .then_error(DomainError::InvalidCommand {
            reason: "taken seats must be seats of the booking",
        });
}

#[test]
fn rejecting_again_is_already_recorded() {
    given_booking(history_rejected())
        .when(BookingCommand::Reject {
            taken: seats(&["A-1-2"]),
        })
        .then_nothing();
}

#[test]
fn held_paid_or_confirmed_bookings_cannot_be_rejected() {
    for (status, history) in [
        (BookingStatus::Held, history_held()),
        (BookingStatus::Paid, history_paid()),
        (BookingStatus::Confirmed, history_confirmed()),
    ] {
        given_booking(history)
            .when(BookingCommand::Reject {
                taken: seats(&["A-1-2"]),
            })
            .then_error(cannot("reject", status));
    }
    for (status, history) in finished_histories() {
        if status != BookingStatus::Rejected {
            given_booking(history)
                .when(BookingCommand::Reject {
                    taken: seats(&["A-1-2"]),
                })
                .then_error(already(status));
        }
    }
}

// --- expire -----------------------------------------------------------------------------------

#[test]
fn an_unpaid_hold_expires_at_its_end() {
    given_booking(history_held())
        .when(BookingCommand::ExpireHold {
            now: at(HOLD_MINUTES),
        })
        .then([hold_expired()]);
    given_booking(history_held())
        .when(BookingCommand::ExpireHold { now: at(60) })
        .then([hold_expired()]);
    assert_eq!(
        state_after(history_expired()).status(),
        BookingStatus::Expired
    );
}

#[test]
fn a_hold_does_not_expire_early() {
    given_booking(history_held())
        .when(BookingCommand::ExpireHold {
            now: at(HOLD_MINUTES - 1),
        })
        .then_error(DomainError::HoldNotExpired {
            expires_at: at(HOLD_MINUTES),
        });
}

#[test]
fn expiry_after_the_payment_was_recorded_does_nothing() {
    // The payment was recorded first, so it won the race.
    for history in [history_paid(), history_confirmed(), history_expired()] {
        given_booking(history)
            .when(BookingCommand::ExpireHold { now: at(60) })
            .then_nothing();
    }
}

#[test]
fn expiry_of_a_booking_without_a_hold_is_refused() {
    given_booking(history_requested())
        .when(BookingCommand::ExpireHold { now: at(60) })
        .then_error(cannot("expire the hold of", BookingStatus::Requested));
    for (status, history) in finished_histories() {
        if status != BookingStatus::Expired {
            given_booking(history)
                .when(BookingCommand::ExpireHold { now: at(60) })
                .then_error(already(status));
        }
    }
}

// --- payment ----------------------------------------------------------------------------------

#[test]
fn a_payment_on_a_held_booking_pays_it() {
    given_booking(history_held())
        .when(record_payment(CHARGE))
        .then([payment_succeeded(CHARGE)]);
    let booking = state_after(history_paid());
    assert_eq!(booking.status(), BookingStatus::Paid);
    assert_eq!(booking.paying_charge_id(), Some(CHARGE));
    assert_eq!(
        booking.charges()[CHARGE].refund,
        RefundProgress::NotRequested
    );
}

#[test]
fn a_payment_recorded_after_the_hold_ran_out_but_before_its_expiry_still_wins() {
    // Nothing but the order on the stream decides the race: the payment lands first (whatever
    // the clock says), so the expiry that follows it is moot.
    let mut history = history_held();
    let paid = BookingDecider::decide(&BookingDecider::fold(&history), record_payment(CHARGE))
        .expect("the payment is recorded");
    assert_eq!(paid, [payment_succeeded(CHARGE)]);
    history.extend(paid);
    given_booking(history.clone())
        .when(BookingCommand::ExpireHold {
            now: at(HOLD_MINUTES + 1),
        })
        .then_nothing();
    assert_eq!(state_after(history).status(), BookingStatus::Paid);
}

#[test]
fn a_payment_needs_a_charge_id() {
    given_booking(history_held())
        .when(record_payment(" "))
        .then_error(DomainError::InvalidCommand {
            reason: "charge_id must not be empty",
        });
}

#[test]
fn a_payment_of_another_amount_is_recorded_and_refunded_and_the_booking_stays_held() {
    for wrong in [
        euros(9_999),
        domain::Money::new(10_000, "USD".parse().expect("USD")),
    ] {
        let succeeded = BookingEvent::PaymentSucceeded(PaymentSucceeded {
            booking_id: the_booking(),
            show_id: show_id(),
            charge_id: CHARGE.into(),
            amount: wrong,
        });
        let refund = BookingEvent::RefundRequested(RefundRequested {
            booking_id: the_booking(),
            show_id: show_id(),
            charge_id: CHARGE.into(),
            amount: wrong,
        });
        given_booking(history_held())
            .when(BookingCommand::RecordPayment {
                charge_id: CHARGE.into(),
                amount: wrong,
            })
            .then([succeeded.clone(), refund.clone()]);
        let booking = state_after([history_held(), vec![succeeded, refund]].concat());
        assert_eq!(booking.status(), BookingStatus::Held);
        assert_eq!(booking.paying_charge_id(), None);
        assert_eq!(booking.charges()[CHARGE].amount, wrong);
        assert_eq!(booking.refund_status(), RefundStatus::Pending);
    }
}

#[test]
fn the_same_charge_again_is_already_recorded() {
    let late_payment = [
        history_expired(),
        vec![
            payment_succeeded(CHARGE),
            failed(FailureReason::SeatsLost),
            refund_requested(CHARGE),
        ],
    ]
    .concat();
    for history in [history_paid(), history_confirmed(), late_payment] {
        given_booking(history)
            .when(record_payment(CHARGE))
            .then_nothing();
    }
}

#[test]
fn a_payment_after_the_hold_expired_is_recorded_fails_the_booking_and_is_refunded() {
    given_booking(history_expired())
        .when(record_payment(CHARGE))
        .then([
            payment_succeeded(CHARGE),
            failed(FailureReason::SeatsLost),
            refund_requested(CHARGE),
        ]);
    let booking = state_after(
        [
            history_expired(),
            vec![
                payment_succeeded(CHARGE),
                failed(FailureReason::SeatsLost),
                refund_requested(CHARGE),
            ],
        ]
        .concat(),
    );
    assert_eq!(booking.status(), BookingStatus::Failed);
    assert_eq!(booking.failure_reason(), Some(FailureReason::SeatsLost));
    assert_eq!(booking.refund_status(), RefundStatus::Pending);
}

#[test]
fn a_second_charge_is_recorded_and_refunded() {
    for history in [history_paid(), history_confirmed()] {
        given_booking(history)
            .when(record_payment("ch_2"))
            .then([payment_succeeded("ch_2"), refund_requested("ch_2")]);
    }
}

#[test]
fn money_taken_after_the_booking_ended_is_recorded_and_refunded() {
    for (status, history) in finished_histories() {
        if status == BookingStatus::Expired {
            continue; // Fails the booking too: tested above.
        }
        given_booking(history)
            .when(record_payment(CHARGE))
            .then([payment_succeeded(CHARGE), refund_requested(CHARGE)]);
    }
}

#[test]
fn a_payment_before_the_hold_is_recorded_and_refunded() {
    given_booking(history_requested())
        .when(record_payment(CHARGE))
        .then([payment_succeeded(CHARGE), refund_requested(CHARGE)]);
    let booking = state_after(
        [
            history_requested(),
            vec![payment_succeeded(CHARGE), refund_requested(CHARGE)],
        ]
        .concat(),
    );
    assert_eq!(booking.status(), BookingStatus::Requested);
    assert_eq!(booking.refund_status(), RefundStatus::Pending);
}

#[test]
fn a_declined_or_exhausted_payment_fails_a_held_booking() {
    given_booking(history_held())
        .when(payment_failure(PaymentFailureReason::Declined))
        .then([
            payment_failed(PaymentFailureReason::Declined),
            failed(FailureReason::PaymentDeclined),
        ]);
    given_booking(history_held())
        .when(payment_failure(PaymentFailureReason::Exhausted))
        .then([
            payment_failed(PaymentFailureReason::Exhausted),
            failed(FailureReason::PaymentExhausted),
        ]);
    let booking = state_after(history_failed_declined());
    assert_eq!(booking.status(), BookingStatus::Failed);
    assert_eq!(
        booking.last_payment_failure(),
        Some((PaymentFailureReason::Declined, "card declined"))
    );
    assert_eq!(booking.refund_status(), RefundStatus::None);
}

#[test]
fn the_same_payment_failure_again_is_already_recorded() {
    given_booking(history_failed_declined())
        .when(payment_failure(PaymentFailureReason::Declined))
        .then_nothing();
}

#[test]
fn a_payment_failure_out_of_place_is_refused() {
    for (status, history) in [
        (BookingStatus::Requested, history_requested()),
        (BookingStatus::Paid, history_paid()),
        (BookingStatus::Confirmed, history_confirmed()),
    ] {
        given_booking(history)
            .when(payment_failure(PaymentFailureReason::Declined))
            .then_error(cannot("record a payment failure for", status));
    }
    for (status, history) in finished_histories() {
        given_booking(history)
            .when(payment_failure(PaymentFailureReason::Exhausted))
            .then_error(already(status));
    }
}

// --- confirm ----------------------------------------------------------------------------------

#[test]
fn a_paid_booking_is_confirmed() {
    given_booking(history_paid())
        .when(BookingCommand::Confirm)
        .then([confirmed()]);
    let booking = state_after(history_confirmed());
    assert_eq!(booking.status(), BookingStatus::Confirmed);
    assert_eq!(booking.paying_charge_id(), Some(CHARGE));
    assert!(booking.status().is_terminal() && !booking.status().is_finished());
}

#[test]
fn confirming_again_is_already_recorded() {
    given_booking(history_confirmed())
        .when(BookingCommand::Confirm)
        .then_nothing();
}

#[test]
fn an_unpaid_or_finished_booking_cannot_be_confirmed() {
    for (status, history) in [
        (BookingStatus::Requested, history_requested()),
        (BookingStatus::Held, history_held()),
    ] {
        given_booking(history)
            .when(BookingCommand::Confirm)
            .then_error(cannot("confirm", status));
    }
    for (status, history) in finished_histories() {
        given_booking(history)
            .when(BookingCommand::Confirm)
            .then_error(already(status));
    }
}

// --- seats lost -------------------------------------------------------------------------------

#[test]
fn seats_lost_after_payment_fail_the_booking_and_refund_it() {
    given_booking(history_paid())
        .when(BookingCommand::RecordSeatsLost)
        .then([failed(FailureReason::SeatsLost), refund_requested(CHARGE)]);
}

#[test]
fn seats_lost_before_payment_fail_the_booking_without_a_refund() {
    given_booking(history_held())
        .when(BookingCommand::RecordSeatsLost)
        .then([failed(FailureReason::SeatsLost)]);
}

#[test]
fn seats_lost_again_is_already_recorded() {
    let history = [
        history_paid(),
        vec![failed(FailureReason::SeatsLost), refund_requested(CHARGE)],
    ]
    .concat();
    given_booking(history)
        .when(BookingCommand::RecordSeatsLost)
        .then_nothing();
}

#[test]
fn seats_cannot_be_lost_before_a_hold_after_a_sale_or_after_the_end() {
    for (status, history) in [
        (BookingStatus::Requested, history_requested()),
        (BookingStatus::Confirmed, history_confirmed()),
    ] {
        given_booking(history)
            .when(BookingCommand::RecordSeatsLost)
            .then_error(cannot("record lost seats for", status));
    }
    for (status, history) in finished_histories() {
        given_booking(history)
            .when(BookingCommand::RecordSeatsLost)
            .then_error(already(status));
    }
}

// --- cancel -----------------------------------------------------------------------------------

#[test]
fn an_unpaid_booking_is_cancelled_without_a_refund() {
    given_booking(history_requested())
        .when(BookingCommand::Cancel {
            by: CancelledBy::Holder,
        })
        .then([cancelled(CancelledBy::Holder, BookingStatus::Requested)]);
    given_booking(history_held())
        .when(BookingCommand::Cancel {
            by: CancelledBy::Admin,
        })
        .then([cancelled(CancelledBy::Admin, BookingStatus::Held)]);
    let booking = state_after(history_cancelled());
    assert_eq!(booking.status(), BookingStatus::Cancelled);
    assert_eq!(booking.cancelled_by(), Some(CancelledBy::Holder));
    assert_eq!(booking.refund_status(), RefundStatus::None);
}

#[test]
fn a_paid_booking_is_cancelled_and_refunded() {
    given_booking(history_paid())
        .when(BookingCommand::Cancel {
            by: CancelledBy::Holder,
        })
        .then([
            cancelled(CancelledBy::Holder, BookingStatus::Paid),
            refund_requested(CHARGE),
        ]);
}

#[test]
fn a_confirmed_booking_is_cancelled_refunded_and_says_its_seats_were_sold() {
    given_booking(history_confirmed())
        .when(BookingCommand::Cancel {
            by: CancelledBy::Admin,
        })
        .then([
            BookingEvent::Cancelled(BookingCancelled {
                booking_id: the_booking(),
                show_id: show_id(),
                by: CancelledBy::Admin,
                seats: booked_seats(),
                previous_status: BookingStatus::Confirmed,
            }),
            refund_requested(CHARGE),
        ]);
    let history = [
        history_confirmed(),
        vec![
            cancelled(CancelledBy::Admin, BookingStatus::Confirmed),
            refund_requested(CHARGE),
        ],
    ]
    .concat();
    let booking = state_after(history.clone());
    assert_eq!(booking.status(), BookingStatus::Cancelled);
    assert_eq!(booking.refund_status(), RefundStatus::Pending);
    assert_eq!(booking.paying_charge_id(), None);
    let booking = state_after([history, vec![refunded(CHARGE, "rf_1")]].concat());
    assert_eq!(booking.refund_status(), RefundStatus::Refunded);
}

#[test]
fn a_finished_booking_cannot_be_cancelled() {
    for (status, history) in finished_histories() {
        given_booking(history)
            .when(BookingCommand::Cancel {
                by: CancelledBy::Holder,
            })
            .then_error(already(status));
    }
}

// --- abandon (a service gave up on one of the booking's records) ------------------------------

fn abandon() -> BookingCommand {
    BookingCommand::Abandon {
        reason: "the handler panicked".into(),
    }
}

#[test]
fn an_unfinished_booking_is_abandoned_as_failed_and_refunded_if_paid() {
    given_booking(history_requested())
        .when(abandon())
        .then([abandoned(BookingStatus::Requested)]);
    given_booking(history_held())
        .when(abandon())
        .then([abandoned(BookingStatus::Held)]);
    given_booking(history_paid())
        .when(abandon())
        .then([abandoned(BookingStatus::Paid), refund_requested(CHARGE)]);
    let booking = state_after(
        [
            history_paid(),
            vec![abandoned(BookingStatus::Paid), refund_requested(CHARGE)],
        ]
        .concat(),
    );
    assert_eq!(booking.status(), BookingStatus::Failed);
    assert_eq!(booking.refund_status(), RefundStatus::Pending);
}

#[test]
fn an_ended_booking_is_left_as_it_is_by_an_abandon() {
    let mut ended = finished_histories();
    ended.push((BookingStatus::Confirmed, history_confirmed()));
    ended.push((
        BookingStatus::Failed,
        [history_held(), vec![abandoned(BookingStatus::Held)]].concat(),
    ));
    for (status, history) in ended {
        given_booking(history.clone())
            .when(abandon())
            .then_nothing();
        assert_eq!(state_after(history).status(), status);
    }
}

#[test]
fn a_payment_after_an_abandon_is_recorded_and_refunded() {
    given_booking([history_held(), vec![abandoned(BookingStatus::Held)]].concat())
        .when(record_payment(CHARGE))
        .then([payment_succeeded(CHARGE), refund_requested(CHARGE)]);
}

// --- refunds ----------------------------------------------------------------------------------

fn history_refund_pending() -> Vec<BookingEvent> {
    [
        history_paid(),
        vec![
            cancelled(CancelledBy::Holder, BookingStatus::Paid),
            refund_requested(CHARGE),
        ],
    ]
    .concat()
}

fn record_refund(charge_id: &str, refund_id: &str) -> BookingCommand {
    BookingCommand::RecordRefund {
        charge_id: charge_id.into(),
        refund_id: refund_id.into(),
    }
}

#[test]
fn a_pending_refund_completes() {
    given_booking(history_refund_pending())
        .when(record_refund(CHARGE, "rf_1"))
        .then([refunded(CHARGE, "rf_1")]);
}

#[test]
fn the_same_refund_again_is_already_recorded() {
    given_booking([history_refund_pending(), vec![refunded(CHARGE, "rf_1")]].concat())
        .when(record_refund(CHARGE, "rf_1"))
        .then_nothing();
}

#[test]
fn refund_completions_that_do_not_fit_are_refused() {
    given_booking([history_refund_pending(), vec![refunded(CHARGE, "rf_1")]].concat())
        .when(record_refund(CHARGE, "rf_2"))
        .then_error(DomainError::RefundAlreadyRecorded {
            charge_id: CHARGE.into(),
            refund_id: "rf_1".into(),
        });
    given_booking(history_refund_pending())
        .when(record_refund("ch_9", "rf_1"))
        .then_error(DomainError::UnknownCharge {
            charge_id: "ch_9".into(),
        });
    given_booking(history_confirmed())
        .when(record_refund(CHARGE, "rf_1"))
        .then_error(DomainError::RefundNotRequested {
            charge_id: CHARGE.into(),
        });
    given_booking(history_refund_pending())
        .when(record_refund(CHARGE, ""))
        .then_error(DomainError::InvalidCommand {
            reason: "refund_id must not be empty",
        });
}

#[test]
fn refund_status_is_pending_while_any_charge_awaits_its_refund() {
    let history = [
        history_confirmed(),
        vec![payment_succeeded("ch_2"), refund_requested("ch_2")],
    ]
    .concat();
    let booking = state_after(history.clone());
    assert_eq!(booking.status(), BookingStatus::Confirmed);
    assert_eq!(booking.refund_status(), RefundStatus::Pending);
    let booking = state_after([history, vec![refunded("ch_2", "rf_2")]].concat());
    assert_eq!(booking.refund_status(), RefundStatus::Refunded);
    assert_eq!(booking.paying_charge_id(), Some(CHARGE));
}

// --- emails -----------------------------------------------------------------------------------

#[test]
fn emails_are_recorded_once_per_event() {
    let about = EventId::new();
    let sent = BookingEvent::EmailSent(EmailSent {
        booking_id: the_booking(),
        show_id: show_id(),
        about_event_id: about,
        message_id: "<m1@zingqueue>".into(),
        channel: EmailChannel::Smtp,
    });
    given_booking(history_confirmed())
        .when(BookingCommand::RecordEmailSent {
            about_event_id: about,
            message_id: "<m1@zingqueue>".into(),
            channel: EmailChannel::Smtp,
        })
        .then([sent.clone()]);
    given_booking([history_confirmed(), vec![sent]].concat())
        .when(BookingCommand::RecordEmailSent {
            about_event_id: about,
            message_id: "<m1@zingqueue>".into(),
            channel: EmailChannel::Smtp,
        })
        .then_nothing();
    given_booking(history_confirmed())
        .when(BookingCommand::RecordEmailSent {
            about_event_id: about,
            message_id: String::new(),
            channel: EmailChannel::Smtp,
        })
        .then_error(DomainError::InvalidCommand {
            reason: "message_id must not be empty",
        });
}

// --- errors map to HTTP -------------------------------------------------------------------------

#[test]
fn errors_say_how_to_react() {
    use domain::ErrorKind;
    assert_eq!(
        already(BookingStatus::Cancelled).kind(),
        ErrorKind::Conflict
    );
    assert_eq!(DomainError::BookingNotFound.kind(), ErrorKind::NotFound);
    assert_eq!(DomainError::NoSeats.kind(), ErrorKind::Invalid);
    assert_eq!(
        already(BookingStatus::Expired).to_string(),
        "booking is already expired"
    );
    assert_eq!(
        cannot("confirm", BookingStatus::Held).to_string(),
        "cannot confirm a booking that is held"
    );
}
