//! The shows a booking request is priced against, kept in memory.
//!
//! A booking request needs the show's sections and prices, which are fixed when the show is
//! scheduled and never change (no event changes them). Reading the show stream for every request
//! would cost a database round trip per booking in a flash sale; instead the first request for a
//! show loads it and later ones reuse it. Which seats are sold is *not* taken from here: that is
//! seat-lock's decision, made from the log. Unknown shows are not remembered, so a show created
//! by another process is found as soon as it exists.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use domain::{Show, ShowId};
use event_store::EventStore;

use crate::error::ApiError;
use crate::streams::load_show;

/// Shows kept at most; beyond it the catalog starts over (shows are few; this bounds memory
/// against a flood of distinct ids all the same).
const MAX_SHOWS: usize = 10_000;

#[derive(Clone, Default)]
pub struct ShowCatalog {
    shows: Arc<RwLock<HashMap<ShowId, Arc<Show>>>>,
}

impl ShowCatalog {
    /// The show, for its sections and prices; `None` when it does not exist.
    pub async fn show(
        &self,
        store: &dyn EventStore,
        show_id: ShowId,
    ) -> Result<Option<Arc<Show>>, ApiError> {
        if let Some(show) = self.read().get(&show_id) {
            return Ok(Some(show.clone()));
        }
        let Some(show) = load_show(store, show_id).await? else {
            return Ok(None);
        };
        let show = Arc::new(show);
        let mut shows = self
            .shows
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if shows.len() >= MAX_SHOWS {
            shows.clear();
        }
        shows.insert(show_id, show.clone());
        Ok(Some(show))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ShowId, Arc<Show>>> {
        self.shows
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
