//! Loading a show or a booking by folding its stream (the one implementation lives in
//! `infra::streams`, shared with the services): what the commands decide against, and what the
//! queries answer from until the read models of the projections replace them.

use domain::{BookingId, ShowId, ShowState};
use event_store::EventStore;
pub use infra::streams::LoadedBooking;
use infra::streams::StreamError;

use crate::error::ApiError;

impl From<StreamError> for ApiError {
    fn from(error: StreamError) -> Self {
        match error {
            StreamError::Store(error) => error.into(),
            StreamError::Corrupt(reason) => ApiError::Internal(reason),
        }
    }
}

/// A show's state, folded from its stream (`None`: no such show).
pub async fn load_show(store: &dyn EventStore, show_id: ShowId) -> Result<ShowState, ApiError> {
    Ok(infra::streams::load_show(store, show_id).await?.show)
}

/// A booking folded from its stream (`None`: no such booking).
pub async fn load_booking(
    store: &dyn EventStore,
    booking_id: BookingId,
) -> Result<Option<LoadedBooking>, ApiError> {
    Ok(infra::streams::load_booking(store, booking_id).await?)
}
