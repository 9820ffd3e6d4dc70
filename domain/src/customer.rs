//! The customer: the only personal data in events.
//!
//! It appears only in `booking.requested.v1` (and the read models built from it), so that it
//! can later be encrypted per customer and forgotten by deleting the key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::ids::CustomerId;

/// Who books: the client's customer id, an email address to tell them the outcome, a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub id: CustomerId,
    pub email: EmailAddress,
    pub name: CustomerName,
}

impl Customer {
    /// Validates the three parts, reporting the first that is wrong.
    pub fn new(id: &str, email: &str, name: &str) -> Result<Self, DomainError> {
        Ok(Self {
            id: id.parse()?,
            email: email.parse()?,
            name: name.parse()?,
        })
    }
}

/// The longest email address (RFC 5321's forward-path limit, less the angle brackets).
pub const MAX_EMAIL_CHARS: usize = 254;
/// The longest local part (RFC 5321).
pub const MAX_EMAIL_LOCAL_PART_CHARS: usize = 64;

/// An email address, checked simply but for real: exactly one `@`, a non-empty local part of at
/// most 64 characters, a domain with a dot and no empty label, at most 254 characters in all, and
/// no whitespace or control characters. Kept as given (no case folding).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = DomainError;

    fn try_from(email: String) -> Result<Self, Self::Error> {
        let invalid = |reason| DomainError::InvalidCustomer {
            field: "email",
            reason,
        };
        if email.chars().count() > MAX_EMAIL_CHARS {
            return Err(invalid("must be at most 254 characters"));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("must not contain spaces or control characters"));
        }
        let Some((local, domain)) = email.split_once('@') else {
            return Err(invalid("must contain an @"));
        };
        if domain.contains('@') {
            return Err(invalid("must contain exactly one @"));
        }
        if local.is_empty() {
            return Err(invalid("must have a local part before the @"));
        }
        if local.chars().count() > MAX_EMAIL_LOCAL_PART_CHARS {
            return Err(invalid("local part must be at most 64 characters"));
        }
        if !domain.contains('.') {
            return Err(invalid("domain must contain a dot"));
        }
        if domain.split('.').any(str::is_empty) {
            return Err(invalid("domain must not have empty labels"));
        }
        Ok(Self(email))
    }
}

impl FromStr for EmailAddress {
    type Err = DomainError;

    fn from_str(email: &str) -> Result<Self, Self::Err> {
        Self::try_from(email.to_owned())
    }
}

impl From<EmailAddress> for String {
    fn from(email: EmailAddress) -> Self {
        email.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub const MAX_CUSTOMER_NAME_CHARS: usize = 200;

/// The customer's name as they want to be addressed: 1..=200 characters, not only whitespace,
/// no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerName(String);

impl CustomerName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CustomerName {
    type Error = DomainError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        let invalid = |reason| DomainError::InvalidCustomer {
            field: "name",
            reason,
        };
        if name.trim().is_empty() {
            return Err(invalid("must not be empty"));
        }
        if name.chars().count() > MAX_CUSTOMER_NAME_CHARS {
            return Err(invalid("must be at most 200 characters"));
        }
        if name.chars().any(char::is_control) {
            return Err(invalid("must not contain control characters"));
        }
        Ok(Self(name))
    }
}

impl FromStr for CustomerName {
    type Err = DomainError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::try_from(name.to_owned())
    }
}

impl From<CustomerName> for String {
    fn from(name: CustomerName) -> Self {
        name.0
    }
}

impl fmt::Display for CustomerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email_reason(email: &str) -> &'static str {
        match email.parse::<EmailAddress>() {
            Err(DomainError::InvalidCustomer {
                field: "email",
                reason,
            }) => reason,
            other => panic!("{email:?} gave {other:?}"),
        }
    }

    #[test]
    fn accepts_ordinary_addresses() {
        for email in ["ada@example.com", "a.b+tag@mail.example.co.uk", "x@y.z"] {
            assert_eq!(email.parse::<EmailAddress>().unwrap().as_str(), email);
        }
        let longest = format!("{}@{}.com", "l".repeat(64), "d".repeat(185));
        assert_eq!(longest.len(), 254);
        assert!(longest.parse::<EmailAddress>().is_ok());
    }

    #[test]
    fn refuses_bad_addresses_precisely() {
        assert_eq!(email_reason("ada.example.com"), "must contain an @");
        assert_eq!(
            email_reason("a@b@example.com"),
            "must contain exactly one @"
        );
        assert_eq!(
            email_reason("@example.com"),
            "must have a local part before the @"
        );
        assert_eq!(email_reason("ada@localhost"), "domain must contain a dot");
        assert_eq!(email_reason("ada@"), "domain must contain a dot");
        assert_eq!(
            email_reason("ada@.com"),
            "domain must not have empty labels"
        );
        assert_eq!(
            email_reason("ada@example..com"),
            "domain must not have empty labels"
        );
        assert_eq!(
            email_reason("ada@example.com."),
            "domain must not have empty labels"
        );
        assert_eq!(
            email_reason("ada lovelace@example.com"),
            "must not contain spaces or control characters"
        );
        assert_eq!(
            email_reason(&format!("{}@example.com", "l".repeat(65))),
            "local part must be at most 64 characters"
        );
        assert_eq!(
            email_reason(&format!("a@{}.com", "d".repeat(250))),
            "must be at most 254 characters"
        );
    }

    #[test]
    fn names_are_bounded_and_not_blank() {
        assert!("Ada Lovelace".parse::<CustomerName>().is_ok());
        assert!("名".repeat(200).parse::<CustomerName>().is_ok());
        for bad in [String::new(), "   ".into(), "x".repeat(201), "a\tb".into()] {
            assert!(matches!(
                bad.parse::<CustomerName>(),
                Err(DomainError::InvalidCustomer { field: "name", .. })
            ));
        }
    }

    #[test]
    fn customer_validates_every_part_and_round_trips() {
        let customer = Customer::new("c-1", "ada@example.com", "Ada").unwrap();
        let json = serde_json::to_value(&customer).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "c-1", "email": "ada@example.com", "name": "Ada"})
        );
        assert_eq!(serde_json::from_value::<Customer>(json).unwrap(), customer);
        assert!(matches!(
            Customer::new("c-1", "nope", "Ada"),
            Err(DomainError::InvalidCustomer { field: "email", .. })
        ));
        assert!(
            serde_json::from_value::<Customer>(
                serde_json::json!({"id": "c-1", "email": "nope", "name": "Ada"})
            )
            .is_err()
        );
    }
}
