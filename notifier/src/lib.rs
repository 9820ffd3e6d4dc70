pub mod email;
pub mod mailer;
