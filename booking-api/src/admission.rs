//! Backpressure for commands. Every command waits for the event store's writer, which gathers
//! concurrent appends into one transaction (group commit). In a flash sale requests can arrive
//! faster than the database commits them; rather than queue them without bound (memory, and
//! answers so late the client has given up), the API admits a bounded number of commands at a
//! time and answers the rest at once with `503 Service Unavailable` and `Retry-After`.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Commands admitted at once by default: as many as the store's writer queue holds, so that an
/// admitted command never waits for room in it.
pub const DEFAULT_CAPACITY: usize = 4096;

#[derive(Clone, Debug)]
pub struct CommandAdmission {
    permits: Arc<Semaphore>,
    capacity: usize,
}

impl CommandAdmission {
    pub fn new(capacity: usize) -> CommandAdmission {
        CommandAdmission {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// A place for one command, held until the permit is dropped; 503 when all are taken.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            ApiError::Overloaded(format!(
                "{} commands are already waiting for the event store",
                self.capacity
            ))
        })
    }
}

impl Default for CommandAdmission {
    fn default() -> CommandAdmission {
        CommandAdmission::new(DEFAULT_CAPACITY)
    }
}
