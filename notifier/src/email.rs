//! The email the notifier sends when a booking reaches an outcome the customer must hear about:
//! what it says (subject and a plain-text body) and its Message-ID.
//!
//! The Message-ID is derived from the id of the event the email is about, so the same event always
//! yields the same Message-ID. Email is at-least-once (a crash between the SMTP server's OK and
//! recording `booking.email_sent.v2` resends it); a stable Message-ID lets mail systems and people
//! recognise such a duplicate, and lets the mail folder replace the file instead of adding one.
//!
//! Pure: no I/O. Turning a [`BookingEmail`] into an RFC 5322 message is the mailer's job
//! ([`crate::mailer`]).

use domain::{BookingId, EventId, Money, ShowId};

/// The right-hand side of every Message-ID we make: `<{event id}@zingqueue>`.
pub const MESSAGE_ID_DOMAIN: &str = "zingqueue";

/// Body lines are wrapped to this width, so that an ASCII body travels as `7bit` (readable as
/// is in any mail folder) rather than quoted-printable.
const WRAP_COLUMNS: usize = 72;

/// What happened to the booking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Paid, and the seats are sold to the customer.
    Confirmed,
    /// Some of the seats were taken: nothing was held, nothing was charged.
    Rejected,
    /// The hold ran out before a payment was recorded; the seats are free again.
    Expired,
    /// The holder or an admin cancelled; money kept so far is being refunded.
    Cancelled,
    /// The payment was declined or never went through, or it arrived after the seats were lost
    /// (and is being refunded).
    Failed,
    /// A refund has been made.
    Refunded,
}

impl Outcome {
    /// Every outcome, for tests and tools.
    pub const ALL: [Outcome; 6] = [
        Outcome::Confirmed,
        Outcome::Rejected,
        Outcome::Expired,
        Outcome::Cancelled,
        Outcome::Failed,
        Outcome::Refunded,
    ];

    /// A stable lowercase name (`confirmed`, `refunded`…), for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
            Self::Refunded => "refunded",
        }
    }

    /// Whether money can go back to the customer with this outcome (the body then speaks of a
    /// refund when [`BookingEmail::amount`] is above zero).
    pub fn may_refund(self) -> bool {
        matches!(self, Self::Cancelled | Self::Failed)
    }
}

/// One email to one customer about one event of their booking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookingEmail {
    pub outcome: Outcome,
    /// The event this email is about (e.g. the `booking.confirmed.v1`). It fixes the Message-ID.
    pub about_event_id: EventId,
    pub booking_id: BookingId,
    pub show_id: ShowId,
    /// The show's name, when the notifier knows it.
    pub show_name: Option<String>,
    pub customer_name: String,
    pub customer_email: String,
    /// Seat ids as customers see them (`A-3-12`). May be empty (then no seat line is shown).
    pub seats: Vec<String>,
    /// The money this email is about; what it means depends on the outcome:
    /// - `Confirmed`: what was charged.
    /// - `Rejected`, `Expired`: the booking's price, which was not charged.
    /// - `Cancelled`, `Failed`: the money going back to the customer. **Zero when nothing was
    ///   charged** (cancelled before payment, payment declined or exhausted): the email then says
    ///   that nothing was charged instead of promising a refund.
    /// - `Refunded`: what was refunded.
    pub amount: Money,
    /// A sentence for the customer about why, e.g. which seats were taken or the payment
    /// provider's explanation. Shown as its own paragraph.
    pub detail: Option<String>,
}

impl BookingEmail {
    /// `<{about_event_id}@zingqueue>`: the same event always gives the same Message-ID.
    pub fn message_id(&self) -> String {
        format!("<{}@{MESSAGE_ID_DOMAIN}>", self.about_event_id)
    }

    /// The refund this email announces, if any: the amount of a `Cancelled` or `Failed` email
    /// when it is above zero.
    pub fn money_back(&self) -> Option<Money> {
        (self.outcome.may_refund() && self.amount.amount_minor > 0).then_some(self.amount)
    }

    /// A short subject naming the outcome and the show, e.g. `Booking confirmed: Hamlet`.
    pub fn subject(&self) -> String {
        let headline = match self.outcome {
            Outcome::Confirmed => "Booking confirmed",
            Outcome::Rejected => "Booking not possible",
            Outcome::Expired => "Seat hold expired",
            Outcome::Cancelled => "Booking cancelled",
            Outcome::Failed => "Booking failed",
            Outcome::Refunded => "Refund made",
        };
        match self.show_name() {
            Some(show) => format!("{headline}: {show}"),
            None => format!("{headline} (booking {})", self.booking_id),
        }
    }

    /// The plain-text body: what happened, the seats and the money, what happens next.
    pub fn body(&self) -> String {
        let show = self.show_name().unwrap_or_else(|| "your show".to_string());
        let amount = format_money(self.amount);
        let refund = self.money_back().map(format_money);

        let headline = match self.outcome {
            Outcome::Confirmed => format!("Good news: your booking for {show} is confirmed."),
            Outcome::Rejected => format!(
                "We are sorry: your booking for {show} could not be made, because some of the \
                 seats you chose had just been taken by someone else."
            ),
            Outcome::Expired => format!(
                "We are sorry: we held seats for {show} for you, but the payment was not \
                 completed in time, so the hold has ended and the seats have been released."
            ),
            Outcome::Cancelled => format!("Your booking for {show} has been cancelled."),
            Outcome::Failed => {
                format!("We are sorry: your booking for {show} could not be completed.")
            }
            Outcome::Refunded => format!("Your refund for {show} has been made."),
        };

        let money_line = match (self.outcome, &refund) {
            (Outcome::Confirmed, _) => Some(format!("Paid: {amount}")),
            (Outcome::Rejected | Outcome::Expired, _) => {
                Some(format!("Price: {amount} (not charged)"))
            }
            (Outcome::Cancelled | Outcome::Failed, Some(refund)) => {
                Some(format!("Refund: {refund}"))
            }
            (Outcome::Cancelled | Outcome::Failed, None) => None,
            (Outcome::Refunded, _) => Some(format!("Refunded: {amount}")),
        };

        let next = match (self.outcome, &refund) {
            (Outcome::Confirmed, _) => "The seats are yours. Please keep this email, and quote \
                 the booking reference if you contact us."
                .to_string(),
            (Outcome::Rejected, _) => "No seats were reserved for you and you have not been \
                 charged. Other seats may still be available: you are welcome to try again."
                .to_string(),
            (Outcome::Expired, _) => "You have not been charged. If a payment was already on \
                 its way, it will be refunded in full and we will email you about it. You are \
                 welcome to book again while seats are available."
                .to_string(),
            (Outcome::Cancelled, Some(refund)) => format!(
                "The seats have been released. A refund of {refund} is on its way to your \
                 original payment method; we will email you once it has been made."
            ),
            (Outcome::Cancelled, None) => {
                "The seats have been released. You have not been charged.".to_string()
            }
            (Outcome::Failed, Some(refund)) => format!(
                "You will not lose any money: a refund of {refund} is on its way to your \
                 original payment method, and we will email you once it has been made."
            ),
            (Outcome::Failed, None) => {
                "You have not been charged. You are welcome to try again.".to_string()
            }
            (Outcome::Refunded, _) => format!(
                "The refund of {amount} has been sent to your original payment method. \
                 Depending on your bank, it can take a few days to appear on your statement."
            ),
        };

        let mut facts = Vec::new();
        if !self.seats.is_empty() {
            facts.push(format!("Seats: {}", self.seats.join(", ")));
        }
        facts.extend(money_line);
        facts.push(format!("Booking reference: {}", self.booking_id));

        let mut paragraphs = vec![
            format!("Hello {},", one_line(&self.customer_name)),
            headline,
            facts.join("\n"),
        ];
        if let Some(detail) = self.detail.as_deref().map(str::trim)
            && !detail.is_empty()
        {
            paragraphs.push(detail.to_string());
        }
        paragraphs.push(next);
        paragraphs.push("Kind regards,\nZingQueue".to_string());

        let mut body = paragraphs
            .iter()
            .map(|paragraph| wrap(paragraph, WRAP_COLUMNS))
            .collect::<Vec<_>>()
            .join("\n\n");
        body.push('\n');
        body
    }

    /// The show's name on one line, if it has a usable one.
    fn show_name(&self) -> Option<String> {
        self.show_name
            .as_deref()
            .map(one_line)
            .filter(|name| !name.is_empty())
    }
}

/// `EUR 45.00`, `JPY 1250`, `KWD 0.001`: the code first, as customers read prices on tickets.
///
/// The digits come from `Money`'s own `Display` (`45.00 EUR`), which knows each currency's
/// minor-unit exponent; only the order is changed here.
pub fn format_money(money: Money) -> String {
    let text = money.to_string();
    match text.rsplit_once(' ') {
        Some((number, code)) => format!("{code} {number}"),
        // Display always puts a space before the code; keep its text should that ever change.
        None => text,
    }
}

/// Collapses line breaks, tabs and other control characters (and runs of spaces) into single
/// spaces: names go into one line of text and into headers, where a line break would be wrong.
pub(crate) fn one_line(text: &str) -> String {
    text.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Wraps each line of `text` at spaces to at most `columns` characters (a longer word stays
/// whole on a line of its own). Existing line breaks are kept.
fn wrap(text: &str, columns: usize) -> String {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut current = String::new();
        for word in line.split(' ').filter(|word| !word.is_empty()) {
            let needed = current.chars().count() + 1 + word.chars().count();
            if !current.is_empty() && needed > columns {
                out.push(std::mem::take(&mut current));
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
        out.push(current);
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(outcome: Outcome, amount_minor: i64) -> BookingEmail {
        BookingEmail {
            outcome,
            about_event_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".parse().unwrap(),
            booking_id: "0190a1b2-0000-7e5f-8a9b-0c1d2e3f4a5b".parse().unwrap(),
            show_id: ShowId::new(),
            show_name: Some("Hamlet".into()),
            customer_name: "Ada Lovelace".into(),
            customer_email: "ada@example.com".into(),
            seats: vec!["A-1-1".into(), "A-1-2".into()],
            amount: Money::new(amount_minor, "EUR".parse().unwrap()),
            detail: None,
        }
    }

    /// The body with line breaks as spaces, to find sentences wherever wrapping broke them.
    fn flat(body: &str) -> String {
        body.replace('\n', " ")
    }

    #[test]
    fn the_message_id_is_derived_from_the_event_id_only() {
        let first = email(Outcome::Confirmed, 4500);
        assert_eq!(
            first.message_id(),
            "<0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b@zingqueue>"
        );
        let mut other = email(Outcome::Refunded, 100);
        other.customer_name = "Someone Else".into();
        assert_eq!(other.message_id(), first.message_id());
        other.about_event_id = EventId::new();
        assert_ne!(other.message_id(), first.message_id());
    }

    #[test]
    fn money_reads_code_first_with_the_currency_exponent() {
        let money = |minor, code: &str| Money::new(minor, code.parse().unwrap());
        assert_eq!(format_money(money(4500, "EUR")), "EUR 45.00");
        assert_eq!(format_money(money(5, "USD")), "USD 0.05");
        assert_eq!(format_money(money(1250, "JPY")), "JPY 1250");
        assert_eq!(format_money(money(1, "KWD")), "KWD 0.001");
    }

    #[test]
    fn subjects_name_the_outcome_and_the_show() {
        let subjects: Vec<String> = Outcome::ALL
            .iter()
            .map(|&outcome| email(outcome, 4500).subject())
            .collect();
        assert_eq!(
            subjects,
            [
                "Booking confirmed: Hamlet",
                "Booking not possible: Hamlet",
                "Seat hold expired: Hamlet",
                "Booking cancelled: Hamlet",
                "Booking failed: Hamlet",
                "Refund made: Hamlet",
            ]
        );
        let mut unnamed = email(Outcome::Confirmed, 4500);
        unnamed.show_name = None;
        assert_eq!(
            unnamed.subject(),
            "Booking confirmed (booking 0190a1b2-0000-7e5f-8a9b-0c1d2e3f4a5b)"
        );
        // A line break in a name must not reach a header.
        unnamed.show_name = Some("Hamlet\r\nBcc: evil@example.com".into());
        assert_eq!(
            unnamed.subject(),
            "Booking confirmed: Hamlet Bcc: evil@example.com"
        );
    }

    #[test]
    fn a_confirmation_lists_seats_amount_and_reference() {
        let body = email(Outcome::Confirmed, 4500).body();
        assert!(body.starts_with("Hello Ada Lovelace,\n\n"), "{body}");
        assert!(
            body.contains("your booking for Hamlet is confirmed"),
            "{body}"
        );
        assert!(body.contains("Seats: A-1-1, A-1-2\n"), "{body}");
        assert!(body.contains("Paid: EUR 45.00\n"), "{body}");
        assert!(
            body.contains("Booking reference: 0190a1b2-0000-7e5f-8a9b-0c1d2e3f4a5b"),
            "{body}"
        );
        assert!(!body.contains("refund"), "{body}");
        assert!(body.ends_with("ZingQueue\n"), "{body}");
    }

    #[test]
    fn outcomes_before_any_charge_say_nothing_was_charged() {
        for outcome in [Outcome::Rejected, Outcome::Expired] {
            let body = flat(&email(outcome, 4500).body());
            assert!(body.contains("Price: EUR 45.00 (not charged)"), "{body}");
            assert!(body.contains("have not been charged"), "{body}");
            assert!(!body.contains("Refund:"), "{body}");
            assert!(email(outcome, 4500).money_back().is_none());
        }
        assert!(email(Outcome::Rejected, 4500).body().contains("taken"));
        assert!(email(Outcome::Expired, 4500).body().contains("released"));
    }

    #[test]
    fn the_refund_line_appears_only_when_money_goes_back() {
        for outcome in [Outcome::Cancelled, Outcome::Failed] {
            let with_refund = email(outcome, 4500);
            assert_eq!(with_refund.money_back(), Some(with_refund.amount));
            let body = with_refund.body();
            assert!(body.contains("Refund: EUR 45.00\n"), "{body}");
            assert!(
                flat(&body).contains("refund of EUR 45.00 is on its way"),
                "{body}"
            );

            let nothing_charged = email(outcome, 0);
            assert_eq!(nothing_charged.money_back(), None);
            let body = nothing_charged.body();
            assert!(!body.to_lowercase().contains("refund"), "{body}");
            assert!(!body.contains("EUR"), "{body}");
            assert!(body.contains("You have not been charged."), "{body}");
        }
        for outcome in [Outcome::Confirmed, Outcome::Rejected, Outcome::Expired] {
            assert!(!email(outcome, 4500).body().contains("Refund:"));
        }
    }

    #[test]
    fn a_refund_confirmation_names_the_amount() {
        let body = email(Outcome::Refunded, 4500).body();
        assert!(
            body.contains("Your refund for Hamlet has been made."),
            "{body}"
        );
        assert!(body.contains("Refunded: EUR 45.00\n"), "{body}");
        assert!(
            flat(&body).contains("The refund of EUR 45.00 has been sent"),
            "{body}"
        );
    }

    #[test]
    fn the_detail_is_its_own_paragraph_and_lines_are_wrapped() {
        let mut with_detail = email(Outcome::Rejected, 4500);
        with_detail.detail = Some("  Seat A-1-2 was taken.  ".into());
        with_detail.show_name = None;
        let body = with_detail.body();
        assert!(body.contains("\n\nSeat A-1-2 was taken.\n\n"), "{body}");
        assert!(flat(&body).contains("your booking for your show"), "{body}");
        for outcome in Outcome::ALL {
            let body = email(outcome, 4500).body();
            assert!(
                body.lines()
                    .all(|line| line.chars().count() <= WRAP_COLUMNS),
                "{body}"
            );
            assert!(!body.contains("  "), "double space in {body}");
        }
        let mut blank = email(Outcome::Confirmed, 4500);
        blank.detail = Some("   ".into());
        assert!(!blank.body().contains("\n\n\n"));
    }

    #[test]
    fn wrapping_keeps_long_words_whole() {
        assert_eq!(wrap("aaa bbb ccc", 7), "aaa bbb\nccc");
        assert_eq!(wrap("a verylongword b", 4), "a\nverylongword\nb");
        assert_eq!(wrap("x\ny", 10), "x\ny");
    }
}
