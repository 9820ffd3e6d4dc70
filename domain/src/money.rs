//! Money: integer minor units ("cents") of a validated ISO 4217 currency.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::DomainError;

/// An active ISO 4217 alphabetic currency code, with its minor-unit exponent.
///
/// Only codes of ISO 4217's table A.1 that have minor units are accepted: precious metals, SDR,
/// test and "no currency" codes (XAU, XDR, XTS, XXX…) cannot price a seat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency {
    code: &'static str,
    minor_units: u8,
}

/// ISO 4217 table A.1 (active codes with minor units, as of 2025), sorted by code for binary
/// search: (code, minor-unit exponent). Withdrawn codes (HRK, SLL, ZWL, ANG…) are refused.
#[rustfmt::skip]
const ACTIVE_CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2), ("AFN", 2), ("ALL", 2), ("AMD", 2), ("AOA", 2), ("ARS", 2), ("AUD", 2),
    ("AWG", 2), ("AZN", 2), ("BAM", 2), ("BBD", 2), ("BDT", 2), ("BGN", 2), ("BHD", 3),
    ("BIF", 0), ("BMD", 2), ("BND", 2), ("BOB", 2), ("BOV", 2), ("BRL", 2), ("BSD", 2),
    ("BTN", 2), ("BWP", 2), ("BYN", 2), ("BZD", 2), ("CAD", 2), ("CDF", 2), ("CHE", 2),
    ("CHF", 2), ("CHW", 2), ("CLF", 4), ("CLP", 0), ("CNY", 2), ("COP", 2), ("COU", 2),
    ("CRC", 2), ("CUP", 2), ("CVE", 2), ("CZK", 2), ("DJF", 0), ("DKK", 2), ("DOP", 2),
    ("DZD", 2), ("EGP", 2), ("ERN", 2), ("ETB", 2), ("EUR", 2), ("FJD", 2), ("FKP", 2),
    ("GBP", 2), ("GEL", 2), ("GHS", 2), ("GIP", 2), ("GMD", 2), ("GNF", 0), ("GTQ", 2),
    ("GYD", 2), ("HKD", 2), ("HNL", 2), ("HTG", 2), ("HUF", 2), ("IDR", 2), ("ILS", 2),
    ("INR", 2), ("IQD", 3), ("IRR", 2), ("ISK", 0), ("JMD", 2), ("JOD", 3), ("JPY", 0),
    ("KES", 2), ("KGS", 2), ("KHR", 2), ("KMF", 0), ("KPW", 2), ("KRW", 0), ("KWD", 3),
    ("KYD", 2), ("KZT", 2), ("LAK", 2), ("LBP", 2), ("LKR", 2), ("LRD", 2), ("LSL", 2),
    ("LYD", 3), ("MAD", 2), ("MDL", 2), ("MGA", 2), ("MKD", 2), ("MMK", 2), ("MNT", 2),
    ("MOP", 2), ("MRU", 2), ("MUR", 2), ("MVR", 2), ("MWK", 2), ("MXN", 2), ("MXV", 2),
    ("MYR", 2), ("MZN", 2), ("NAD", 2), ("NGN", 2), ("NIO", 2), ("NOK", 2), ("NPR", 2),
    ("NZD", 2), ("OMR", 3), ("PAB", 2), ("PEN", 2), ("PGK", 2), ("PHP", 2), ("PKR", 2),
    ("PLN", 2), ("PYG", 0), ("QAR", 2), ("RON", 2), ("RSD", 2), ("RUB", 2), ("RWF", 0),
    ("SAR", 2), ("SBD", 2), ("SCR", 2), ("SDG", 2), ("SEK", 2), ("SGD", 2), ("SHP", 2),
    ("SLE", 2), ("SOS", 2), ("SRD", 2), ("SSP", 2), ("STN", 2), ("SVC", 2), ("SYP", 2),
    ("SZL", 2), ("THB", 2), ("TJS", 2), ("TMT", 2), ("TND", 3), ("TOP", 2), ("TRY", 2),
    ("TTD", 2), ("TWD", 2), ("TZS", 2), ("UAH", 2), ("UGX", 0), ("USD", 2), ("USN", 2),
    ("UYI", 0), ("UYU", 2), ("UYW", 4), ("UZS", 2), ("VED", 2), ("VES", 2), ("VND", 0),
    ("VUV", 0), ("WST", 2), ("XAF", 0), ("XCD", 2), ("XCG", 2), ("XOF", 0), ("XPF", 0),
    ("YER", 2), ("ZAR", 2), ("ZMW", 2), ("ZWG", 2),
];

impl Currency {
    /// The alphabetic code, e.g. `"EUR"`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Digits after the decimal separator: 2 for EUR, 0 for JPY, 3 for KWD.
    pub fn minor_units(&self) -> u8 {
        self.minor_units
    }

    /// Every accepted currency, sorted by code.
    pub fn all() -> impl Iterator<Item = Currency> {
        ACTIVE_CURRENCIES
            .iter()
            .map(|&(code, minor_units)| Currency { code, minor_units })
    }
}

impl FromStr for Currency {
    type Err = DomainError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| DomainError::InvalidCurrency {
            input: input.to_owned(),
            reason,
        };
        if input.len() != 3 || !input.bytes().all(|byte| byte.is_ascii_uppercase()) {
            return Err(invalid("expected three uppercase letters (ISO 4217)"));
        }
        ACTIVE_CURRENCIES
            .binary_search_by(|&(code, _)| code.cmp(input))
            .map(|index| {
                let (code, minor_units) = ACTIVE_CURRENCIES[index];
                Currency { code, minor_units }
            })
            .map_err(|_| invalid("not an active ISO 4217 currency code"))
    }
}

impl TryFrom<String> for Currency {
    type Error = DomainError;

    fn try_from(input: String) -> Result<Self, Self::Error> {
        input.parse()
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        code.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

/// An amount in minor units of a currency: `Money { amount_minor: 1250, currency: EUR }` is
/// 12.50 EUR. Integer arithmetic only: no rounding ever happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    pub const fn new(amount_minor: i64, currency: Currency) -> Self {
        Self {
            amount_minor,
            currency,
        }
    }

    pub const fn zero(currency: Currency) -> Self {
        Self::new(0, currency)
    }

    /// The sum, refusing another currency and overflow.
    pub fn checked_add(self, other: Money) -> Result<Money, DomainError> {
        if self.currency != other.currency {
            return Err(DomainError::CurrencyMismatch {
                expected: self.currency,
                found: other.currency,
            });
        }
        self.amount_minor
            .checked_add(other.amount_minor)
            .map(|amount_minor| Money::new(amount_minor, self.currency))
            .ok_or(DomainError::AmountOverflow)
    }
}

impl fmt::Display for Money {
    /// `12.50 EUR`, `1250 JPY`, `-0.05 USD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.amount_minor < 0 { "-" } else { "" };
        let magnitude = self.amount_minor.unsigned_abs();
        let digits = usize::from(self.currency.minor_units);
        if digits == 0 {
            return write!(f, "{sign}{magnitude} {}", self.currency);
        }
        let scale = 10u64.pow(u32::from(self.currency.minor_units));
        write!(
            f,
            "{sign}{}.{:0digits$} {}",
            magnitude / scale,
            magnitude % scale,
            self.currency
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn currency(code: &str) -> Currency {
        code.parse().unwrap()
    }

    #[test]
    fn the_table_is_sorted_and_unique_so_binary_search_works() {
        assert!(
            ACTIVE_CURRENCIES
                .windows(2)
                .all(|pair| pair[0].0 < pair[1].0)
        );
        assert!(Currency::all().all(|c| c.code().parse::<Currency>() == Ok(c)));
    }

    #[test]
    fn accepts_active_codes_with_their_exponents() {
        assert_eq!(currency("EUR").minor_units(), 2);
        assert_eq!(currency("JPY").minor_units(), 0);
        assert_eq!(currency("KWD").minor_units(), 3);
        assert_eq!(currency("EUR").to_string(), "EUR");
    }

    #[test]
    fn refuses_malformed_unknown_and_withdrawn_codes() {
        for (input, reason) in [
            ("eur", "expected three uppercase letters (ISO 4217)"),
            ("EURO", "expected three uppercase letters (ISO 4217)"),
            ("", "expected three uppercase letters (ISO 4217)"),
            ("ABC", "not an active ISO 4217 currency code"),
            ("HRK", "not an active ISO 4217 currency code"),
            ("XAU", "not an active ISO 4217 currency code"),
        ] {
            assert_eq!(
                input.parse::<Currency>(),
                Err(DomainError::InvalidCurrency {
                    input: input.into(),
                    reason
                })
            );
        }
    }

    #[test]
    fn money_serializes_with_the_code_and_displays_with_the_exponent() {
        let price = Money::new(1250, currency("EUR"));
        assert_eq!(
            serde_json::to_value(price).unwrap(),
            serde_json::json!({"amount_minor": 1250, "currency": "EUR"})
        );
        assert_eq!(
            serde_json::from_value::<Money>(
                serde_json::json!({"amount_minor": 1250, "currency": "EUR"})
            )
            .unwrap(),
            price
        );
        assert!(
            serde_json::from_value::<Money>(
                serde_json::json!({"amount_minor": 1, "currency": "XXX"})
            )
            .is_err()
        );
        assert_eq!(price.to_string(), "12.50 EUR");
        assert_eq!(Money::new(-5, currency("USD")).to_string(), "-0.05 USD");
        assert_eq!(Money::new(1250, currency("JPY")).to_string(), "1250 JPY");
        assert_eq!(Money::new(1, currency("KWD")).to_string(), "0.001 KWD");
    }

    #[test]
    fn addition_refuses_mixed_currencies_and_overflow() {
        let eur = currency("EUR");
        assert_eq!(
            Money::new(1, eur).checked_add(Money::new(2, eur)),
            Ok(Money::new(3, eur))
        );
        assert_eq!(
            Money::new(1, eur).checked_add(Money::new(2, currency("USD"))),
            Err(DomainError::CurrencyMismatch {
                expected: eur,
                found: currency("USD")
            })
        );
        assert_eq!(
            Money::new(i64::MAX, eur).checked_add(Money::new(1, eur)),
            Err(DomainError::AmountOverflow)
        );
    }
}
