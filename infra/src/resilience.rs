//! Riding out servers that go away: the readiness every component reports, and the one retry
//! loop every long-running component uses when a server it needs (Postgres, Redis, SMTP, the
//! broker) fails.
//!
//! DESIGN.md: "a database, Redis, SMTP or broker error is transient until proven otherwise: back
//! off, report not-ready, resume from durable state. Only a configuration error stops a process."
//!
//! - [`Readiness`] is this process's registry of components and whether each can work now. A
//!   component that is retrying is *not ready* with the reason; `GET /readyz` answers `503` while
//!   any is (booking-api's health route, and every component run on its own).
//! - [`Retrying`] is the state of one component's retry loop: after a transient failure it marks
//!   the component not ready, logs, and sleeps a capped, jittered exponential backoff
//!   ([`crate::backoff`]) unless the process is stopping; after a success it marks it ready and
//!   starts the backoff over. Components resume from their durable state (checkpoints, the log),
//!   so a retry only repeats idempotent work.
//! - [`Transience`] says which errors are worth retrying; everything else is a configuration
//!   error that stops the process with its message.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::backoff::Backoff;

/// Whether an error is worth retrying as it is (a server away or busy) or stops the component
/// (bad configuration, a topic with the wrong partition count, a schema newer than the binary).
pub trait Transience {
    fn is_transient(&self) -> bool;
}

impl Transience for event_store::StoreError {
    fn is_transient(&self) -> bool {
        // A store that is closing is this process stopping, not a failure to stop for.
        event_store::StoreError::is_transient(self)
            || matches!(self, event_store::StoreError::Closed)
    }
}

impl Transience for crate::kafka::TopicError {
    fn is_transient(&self) -> bool {
        use crate::kafka::TopicError;
        match self {
            // The broker is away or slow: its metadata or creation timed out.
            TopicError::Kafka(_) | TopicError::Missing { .. } => true,
            // A partition count that is not ours, or a broker that cannot create topics: only
            // an operator can fix these.
            TopicError::PartitionMismatch { .. } | TopicError::Create { .. } => false,
        }
    }
}

impl Transience for crate::holds::HoldError {
    fn is_transient(&self) -> bool {
        matches!(self, crate::holds::HoldError::Unavailable(_))
    }
}

/// One component's state as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentState {
    Ready,
    /// Retrying: why, and since when (this process's clock).
    NotReady {
        reason: String,
        since: Instant,
    },
}

/// The components of this process and whether each can work now.
#[derive(Debug, Default)]
pub struct Readiness {
    components: Mutex<BTreeMap<String, ComponentState>>,
}

impl Readiness {
    /// This process's registry (one per process, like the metrics recorder: every component
    /// of `zingqueue up` reports into the same `/readyz`).
    pub fn global() -> &'static Readiness {
        static GLOBAL: OnceLock<Readiness> = OnceLock::new();
        GLOBAL.get_or_init(Readiness::default)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ComponentState>> {
        // Only plain values live behind this lock: a panic elsewhere leaves them usable.
        self.components
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_ready(&self, component: &str) {
        let mut components = self.lock();
        match components.get_mut(component) {
            Some(state @ ComponentState::NotReady { .. }) => {
                info!(component, "ready again");
                *state = ComponentState::Ready;
            }
            Some(ComponentState::Ready) => {}
            None => {
                components.insert(component.to_string(), ComponentState::Ready);
            }
        }
    }

    pub fn set_not_ready(&self, component: &str, reason: &str) {
        let mut components = self.lock();
        let since = match components.get(component) {
            Some(ComponentState::NotReady { since, .. }) => *since,
            _ => Instant::now(),
        };
        components.insert(
            component.to_string(),
            ComponentState::NotReady {
                reason: reason.to_string(),
                since,
            },
        );
    }

    /// A component that stopped for good (shutdown) no longer counts.
    pub fn remove(&self, component: &str) {
        self.lock().remove(component);
    }

    /// The components not ready now, with their reasons and how long they have been waiting.
    pub fn not_ready(&self) -> Vec<(String, String, Duration)> {
        self.lock()
            .iter()
            .filter_map(|(name, state)| match state {
                ComponentState::Ready => None,
                ComponentState::NotReady { reason, since } => {
                    Some((name.clone(), reason.clone(), since.elapsed()))
                }
            })
            .collect()
    }

    pub fn all_ready(&self) -> bool {
        self.not_ready().is_empty()
    }
}

/// A run that lasted this long before failing counts as a recovery: the backoff starts over.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// The backoff between a component's attempts: quick at first (a restart of Postgres takes about
/// a second), at most 2 s apart (so a component resumes within about a second of its server, on
/// average, however long the server was away; a retry is one cheap connection attempt).
pub const COMPONENT_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(100),
    factor: 2.0,
    max_delay: Duration::from_secs(2),
    max_attempts: u32::MAX,
};

/// The state of one component's retry loop (see the module's documentation).
#[derive(Debug)]
pub struct Retrying {
    component: String,
    backoff: Backoff,
    /// Failures since the last healthy stretch.
    failures: u32,
    /// When the current attempt started.
    attempt_started: Instant,
    readiness: &'static Readiness,
}

impl Retrying {
    pub fn new(component: &str) -> Retrying {
        Retrying {
            component: component.to_string(),
            backoff: COMPONENT_BACKOFF,
            failures: 0,
            attempt_started: Instant::now(),
            readiness: Readiness::global(),
        }
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Retrying {
        self.backoff = backoff;
        self
    }

    /// The component works: ready. The backoff starts over only once an attempt has lasted a
    /// while (`HEALTHY_RUN`): a server that answers the first query and fails the next must not
    /// be retried at the first, shortest delay for ever.
    pub fn succeeded(&mut self) {
        self.readiness.set_ready(&self.component);
    }

    /// A transient failure: not ready, logged, then wait out the backoff. Returns false when
    /// `shutdown` resolved meanwhile (the caller stops instead of trying again).
    pub async fn failed(&mut self, reason: String, shutdown: impl Future<Output = ()>) -> bool {
        if self.attempt_started.elapsed() >= HEALTHY_RUN {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.readiness.set_not_ready(&self.component, &reason);
        let delay = self
            .backoff
            .delay(self.failures)
            .max(Duration::from_millis(20));
        warn!(component = %self.component, failures = self.failures, ?delay, %reason,
              "a server this component needs failed; retrying");
        let resumed = tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = shutdown => false,
        };
        self.attempt_started = Instant::now();
        resumed
    }

    /// The component stops (shutdown or a configuration error): it no longer counts for
    /// readiness.
    pub fn stopped(&self) {
        self.readiness.remove(&self.component);
    }
}

/// Run `attempt` until it succeeds, retrying transient errors (see [`Retrying`]); `None` when
/// `shutdown` resolved first. For the steps a component takes before its loop (opening the
/// store, creating topics), so that a process started while its servers are down waits for them.
pub async fn until_available<T, E, F, Fut, S>(
    component: &str,
    what: &str,
    shutdown: S,
    mut attempt: F,
) -> Result<Option<T>, E>
where
    E: Transience + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    S: Future<Output = ()>,
{
    let mut retrying = Retrying::new(component);
    tokio::pin!(shutdown);
    loop {
        match attempt().await {
            Ok(value) => {
                retrying.succeeded();
                return Ok(Some(value));
            }
            Err(error) if error.is_transient() => {
                let reason = format!("{what}: {error}");
                if !retrying.failed(reason, &mut shutdown).await {
                    return Ok(None);
                }
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error("away")]
        Away,
        #[error("misconfigured")]
        Misconfigured,
    }

    impl Transience for TestError {
        fn is_transient(&self) -> bool {
            matches!(self, TestError::Away)
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success_and_readiness_follows() {
        let component = "test-retried";
        let mut calls = 0;
        let outcome = until_available(component, "opening", std::future::pending(), || {
            calls += 1;
            let call = calls;
            async move {
                if call < 4 {
                    Err(TestError::Away)
                } else {
                    Ok(call)
                }
            }
        })
        .await;
        assert_eq!(outcome.ok().flatten(), Some(4));
        assert!(
            !Readiness::global()
                .not_ready()
                .iter()
                .any(|(name, ..)| name == component)
        );
    }

    #[tokio::test]
    async fn a_configuration_error_stops_at_once() {
        let mut calls = 0;
        let outcome: Result<Option<()>, TestError> =
            until_available("test-config", "opening", std::future::pending(), || {
                calls += 1;
                async { Err(TestError::Misconfigured) }
            })
            .await;
        assert!(matches!(outcome, Err(TestError::Misconfigured)));
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait() {
        let outcome: Result<Option<()>, TestError> =
            until_available("test-shutdown", "opening", async {}, || async {
                Err(TestError::Away)
            })
            .await;
        assert!(matches!(outcome, Ok(None)));
        assert!(
            Readiness::global()
                .not_ready()
                .iter()
                .any(|(name, reason, _)| name == "test-shutdown" && reason.contains("away"))
        );
    }
}
