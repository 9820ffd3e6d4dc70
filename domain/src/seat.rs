//! Seat ids: `SECTION-ROW-NUMBER`, e.g. `A-3-12`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;

/// The longest section name, in characters.
pub const MAX_SECTION_NAME_CHARS: usize = 16;

/// One seat of a show: a section name (`[A-Za-z0-9]{1,16}`), a row from 1 and a seat number
/// from 1.
///
/// The string form is canonical (no leading zeros, no sign), so two different strings never
/// name the same seat. Seats order by section, then row, then number (numerically).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SeatId {
    // Field order is the sort order.
    section: String,
    row: u32,
    number: u32,
}

impl SeatId {
    pub fn new(section: &str, row: u32, number: u32) -> Result<Self, DomainError> {
        let invalid = |reason| DomainError::InvalidSeatId {
            input: format!("{section}-{row}-{number}"),
            reason,
        };
        validate_section_name(section).map_err(invalid)?;
        if row == 0 {
            return Err(invalid("row must be at least 1"));
        }
        if number == 0 {
            return Err(invalid("seat number must be at least 1"));
        }
        Ok(Self {
            section: section.to_owned(),
            row,
            number,
        })
    }

    pub fn section(&self) -> &str {
        &self.section
    }

    pub fn row(&self) -> u32 {
        self.row
    }

    pub fn number(&self) -> u32 {
        self.number
    }
}

/// Checks a section name: 1 to 16 ASCII letters or digits (a hyphen would make seat ids
/// ambiguous).
pub fn validate_section_name(section: &str) -> Result<(), &'static str> {
    if section.is_empty() {
        return Err("section must not be empty");
    }
    if section.len() > MAX_SECTION_NAME_CHARS {
        return Err("section must be at most 16 characters");
    }
    if !section.bytes().all(|byte| byte.is_ascii_alphanumeric()) {
        return Err("section must contain only ASCII letters and digits");
    }
    Ok(())
}

/// Parses a row or seat number: ASCII digits only, no leading zero, at least 1, fits in `u32`.
fn parse_position(
    digits: &str,
    what_missing: &'static str,
    what_bad: &'static str,
    what_zero: &'static str,
) -> Result<u32, &'static str> {
    if digits.is_empty() {
        return Err(what_missing);
    }
    if !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(what_bad);
    }
    if digits.starts_with('0') {
        // "0" itself, or a leading zero that would give one seat two names.
        return Err(if digits.len() == 1 {
            what_zero
        } else {
            "row and seat number must not have leading zeros"
        });
    }
    digits
        .parse()
        .map_err(|_| "row and seat number must be at most 4294967295")
}

impl FromStr for SeatId {
    type Err = DomainError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| DomainError::InvalidSeatId {
            input: input.to_owned(),
            reason,
        };
        let mut parts = input.split('-');
        let (Some(section), Some(row), Some(number), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid(
                "expected SECTION-ROW-NUMBER with exactly two hyphens",
            ));
        };
        validate_section_name(section).map_err(invalid)?;
        let row = parse_position(
            row,
            "row is missing",
            "row must be a decimal number",
            "row must be at least 1",
        )
        .map_err(invalid)?;
        let number = parse_position(
            number,
            "seat number is missing",
            "seat number must be a decimal number",
            "seat number must be at least 1",
        )
        .map_err(invalid)?;
        Ok(Self {
            section: section.to_owned(),
            row,
            number,
        })
    }
}

impl TryFrom<String> for SeatId {
    type Error = DomainError;

    fn try_from(input: String) -> Result<Self, Self::Error> {
        input.parse()
    }
}

impl From<SeatId> for String {
    fn from(seat: SeatId) -> Self {
        seat.to_string()
    }
}

impl fmt::Display for SeatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.section, self.row, self.number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(input: &str) -> &'static str {
        match input.parse::<SeatId>() {
            Err(DomainError::InvalidSeatId { reason, .. }) => reason,
            other => panic!("{input:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_and_displays_canonical_seat_ids() {
        let seat: SeatId = "A-3-12".parse().unwrap();
        assert_eq!((seat.section(), seat.row(), seat.number()), ("A", 3, 12));
        assert_eq!(seat.to_string(), "A-3-12");
        assert_eq!(seat, SeatId::new("A", 3, 12).unwrap());
        assert!("Balcony2-1-1".parse::<SeatId>().is_ok());
        assert!("ABCDEFGHIJKLMNOP-4294967295-1".parse::<SeatId>().is_ok());
    }

    #[test]
    fn rejects_malformed_seat_ids_precisely() {
        assert_eq!(
            reason("A-3"),
            "expected SECTION-ROW-NUMBER with exactly two hyphens"
        );
        assert_eq!(
            reason("A-3-1-2"),
            "expected SECTION-ROW-NUMBER with exactly two hyphens"
        );
        assert_eq!(reason("-3-1"), "section must not be empty");
        assert_eq!(
            reason("ABCDEFGHIJKLMNOPQ-1-1"),
            "section must be at most 16 characters"
        );
        assert_eq!(
            reason("A_B-1-1"),
            "section must contain only ASCII letters and digits"
        );
        assert_eq!(
            reason("Ä-1-1"),
            "section must contain only ASCII letters and digits"
        );
        assert_eq!(reason("A--1"), "row is missing");
        assert_eq!(reason("A-1-"), "seat number is missing");
        assert_eq!(reason("A-x-1"), "row must be a decimal number");
        assert_eq!(reason("A-+1-1"), "row must be a decimal number");
        assert_eq!(reason("A-1- 1"), "seat number must be a decimal number");
        assert_eq!(reason("A-0-1"), "row must be at least 1");
        assert_eq!(reason("A-1-0"), "seat number must be at least 1");
        assert_eq!(
            reason("A-01-1"),
            "row and seat number must not have leading zeros"
        );
        assert_eq!(
            reason("A-4294967296-1"),
            "row and seat number must be at most 4294967295"
        );
        assert!(SeatId::new("A", 0, 1).is_err());
        assert!(SeatId::new("A-B", 1, 1).is_err());
    }

    #[test]
    fn orders_numerically_within_a_section() {
        let mut seats: Vec<SeatId> = ["B-1-1", "A-10-1", "A-2-10", "A-2-9"]
            .iter()
            .map(|seat| seat.parse().unwrap())
            .collect();
        seats.sort();
        let sorted: Vec<String> = seats.iter().map(ToString::to_string).collect();
        assert_eq!(sorted, ["A-2-9", "A-2-10", "A-10-1", "B-1-1"]);
    }

    #[test]
    fn serializes_as_the_string() {
        let seat: SeatId = "A-3-12".parse().unwrap();
        assert_eq!(serde_json::to_string(&seat).unwrap(), "\"A-3-12\"");
        assert_eq!(serde_json::from_str::<SeatId>("\"A-3-12\"").unwrap(), seat);
        assert!(serde_json::from_str::<SeatId>("\"A-0-12\"").is_err());
    }
}
