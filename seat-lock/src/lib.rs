//! placeholder: this service arrives with issue 8.
