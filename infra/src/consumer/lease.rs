//! The lease a handler works under: whether this member still owns the record's partition.
//!
//! A rebalance (a member joining, leaving, or timing out) takes partitions away from a member
//! while its handlers may be in the middle of a record; the partition's new owner starts on the
//! same record from the committed offset. Effects in the store are idempotent and fenced by
//! expected versions, but side effects outside it (an email, a charge) are not: a revoked
//! worker that carried on with its retries would repeat them beside the new owner. So the
//! runtime runs every handler call inside its worker's lease, and a handler asks
//! [`ensure_owned`] right before each side effect: once the partition is revoked or the member
//! is stopping, it gets a transient error instead, the runtime drops the record without
//! committing it, and the new owner (or this member after a restart) does the work once.
//!
//! What is left is a send that had already started when the partition was revoked: an email
//! the SMTP server accepted just before, recorded by nobody yet. DESIGN.md accepts that window
//! (at least once, a duplicate only there), never a missing email.
//!
//! The lease travels as a task-local value, so the `Handler` trait needs no extra argument;
//! outside a consumer (a redrive run by hand, a unit test) everything counts as owned.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::handler::HandlerError;

tokio::task_local! {
    static LEASE: Lease;
}

/// Ownership of one partition by one worker: void once the worker is revoked or its group is
/// stopping.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    revoked: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
}

impl Lease {
    pub(crate) fn new(revoked: Arc<AtomicBool>, stopping: Arc<AtomicBool>) -> Lease {
        Lease { revoked, stopping }
    }

    fn valid(&self) -> bool {
        !self.revoked.load(Ordering::SeqCst) && !self.stopping.load(Ordering::SeqCst)
    }

    /// Run a handler call under this lease.
    pub(crate) async fn scope<F: Future>(self, call: F) -> F::Output {
        LEASE.scope(self, call).await
    }
}

/// Whether the record being handled is still this member's to work on (true outside a
/// consumer's handler call).
pub fn still_owned() -> bool {
    LEASE.try_with(Lease::valid).unwrap_or(true)
}

/// Call right before a side effect outside the store (an email, a charge, a refund): a
/// transient error once the partition moved to another member or the member is stopping, so
/// the handler stops before the effect and the record is redone by whoever owns it.
pub fn ensure_owned() -> Result<(), HandlerError> {
    if still_owned() {
        Ok(())
    } else {
        Err(HandlerError::Transient(
            "the partition moved to another member, or this one is stopping: not starting the side effect"
                .into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lease_is_void_once_revoked_or_stopping_and_absent_means_owned() {
        assert!(still_owned());
        let revoked = Arc::new(AtomicBool::new(false));
        let stopping = Arc::new(AtomicBool::new(false));
        let lease = Lease::new(revoked.clone(), stopping.clone());
        let seen = lease
            .clone()
            .scope(async {
                let before = still_owned();
                revoked.store(true, Ordering::SeqCst);
                (before, still_owned(), ensure_owned().is_err())
            })
            .await;
        assert_eq!(seen, (true, false, true));
        revoked.store(false, Ordering::SeqCst);
        stopping.store(true, Ordering::SeqCst);
        assert!(!lease.scope(async { still_owned() }).await);
    }
}
