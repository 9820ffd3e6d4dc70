//! A catch-up subscription to the global log: reads in batches from a position until it reaches
//! the head, then waits for new events and goes on.
//!
//! Gap safety comes from the store (positions are dense and committed in order), so the
//! subscription only has to remember the last position it handed out. It waits on the store's
//! head hint and also polls every `poll_interval`, so a lost notification delays it by at most
//! one interval and never stops it.

use std::sync::Arc;
use std::time::Duration;

use crate::error::StoreError;
use crate::event::{Position, RecordedEvent};
use crate::store::EventStore;

pub struct Subscription {
    store: Arc<dyn EventStore>,
    after: Position,
    batch_size: usize,
    poll_interval: Duration,
}

impl Subscription {
    pub const DEFAULT_BATCH_SIZE: usize = 1000;
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

    /// Events after `after` (pass [`Position::START`] for the whole log).
    pub fn new(store: Arc<dyn EventStore>, after: Position) -> Subscription {
        Subscription {
            store,
            after,
            batch_size: Self::DEFAULT_BATCH_SIZE,
            poll_interval: Self::DEFAULT_POLL_INTERVAL,
        }
    }

    pub fn with_batch_size(mut self, batch_size: usize) -> Subscription {
        self.batch_size = batch_size.max(1);
        self
    }

    pub fn with_poll_interval(mut self, poll_interval: Duration) -> Subscription {
        self.poll_interval = poll_interval;
        self
    }

    /// The last position handed out.
    pub fn position(&self) -> Position {
        self.after
    }

    /// The next events, at least one, in position order; waits while there are none.
    ///
    /// Cancel-safe: dropping the future loses nothing, because the position only moves once a
    /// batch is returned.
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut hint = self.store.head_hint();
        loop {
            // Mark the hint seen before reading, so an append that lands between the read and
            // the wait still wakes us.
            hint.borrow_and_update();
            let batch = self.store.read_all(self.after, self.batch_size).await?;
            if let Some(last) = batch.last() {
                self.after = last.position;
                return Ok(batch);
            }
            // Either a newer head is announced, or the poll interval passes: read again. If the
            // hint's sender is gone (the store's writer stopped), poll at the interval.
            match tokio::time::timeout(self.poll_interval, hint.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(_)) => tokio::time::sleep(self.poll_interval).await,
            }
        }
    }
}
