//! How far a consumer group has come: per partition (the log position of the completed prefix,
//! saved with a heartbeat for operators and the dashboard) and, in the embedded default, as one
//! log watermark (every position at or below it is finished) that the relay follows.
//!
//! The embedded broker forgets everything on restart and drops a partition's oldest records past
//! about 5 MiB (DESIGN.md), so there the relay stays a bounded number of records ahead of the
//! slowest group's watermark and republishes from the lowest watermark on start. A watermark is
//! only meaningful when one member sees every partition, which the embedded default guarantees.

use std::collections::{BTreeMap, BTreeSet};

use event_store::Position;
use tokio::sync::watch;

/// The checkpoint a group's watermark is saved under.
pub fn watermark_checkpoint(group: &str) -> String {
    format!("group:{group}")
}

/// The lowest position such that every position up to it is finished, from completions that
/// arrive in any order.
#[derive(Debug, Clone, Default)]
pub struct LogPrefix {
    done_through: u64,
    completed_above: BTreeSet<u64>,
}

impl LogPrefix {
    pub fn starting_at(done_through: Position) -> LogPrefix {
        LogPrefix {
            done_through: done_through.0,
            completed_above: BTreeSet::new(),
        }
    }

    /// Mark a position finished; returns the new watermark.
    pub fn complete(&mut self, position: Position) -> Position {
        if position.0 > self.done_through {
            self.completed_above.insert(position.0);
            while self.completed_above.remove(&(self.done_through + 1)) {
                self.done_through += 1;
            }
        }
        Position(self.done_through)
    }

    pub fn watermark(&self) -> Position {
        Position(self.done_through)
    }
}

/// The watermarks of the groups in this process, shared with the relay (embedded default).
#[derive(Debug, Clone)]
pub struct Watermarks {
    groups: watch::Sender<BTreeMap<String, Position>>,
}

impl Default for Watermarks {
    fn default() -> Self {
        Watermarks {
            groups: watch::Sender::new(BTreeMap::new()),
        }
    }
}

impl Watermarks {
    /// Make `group` count (before the relay starts), at its saved watermark.
    pub fn register(&self, group: &str, start: Position) {
        self.groups.send_modify(|groups| {
            groups.insert(group.to_string(), start);
        });
    }

    /// Move a group's watermark forward.
    pub fn advance(&self, group: &str, watermark: Position) {
        self.groups
            .send_if_modified(|groups| match groups.get_mut(group) {
                Some(current) if *current < watermark => {
                    *current = watermark;
                    true
                }
                _ => false,
            });
    }

    /// The slowest group's watermark, `None` when no group is registered.
    pub fn lowest(&self) -> Option<Position> {
        self.groups.borrow().values().min().copied()
    }

    /// Wait until the slowest group has reached `position` (immediately without groups).
    pub async fn wait_for_lowest(&self, position: Position) {
        let mut receiver = self.groups.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = receiver
            .wait_for(|groups| groups.values().min().is_none_or(|low| *low >= position))
            .await;
    }

    pub fn snapshot(&self) -> BTreeMap<String, Position> {
        self.groups.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_advances_only_over_contiguous_completions() {
        let mut prefix = LogPrefix::starting_at(Position(10));
        assert_eq!(prefix.complete(Position(12)), Position(10));
        assert_eq!(prefix.complete(Position(9)), Position(10));
        assert_eq!(prefix.complete(Position(11)), Position(12));
        assert_eq!(prefix.complete(Position(13)), Position(13));
    }

    #[tokio::test]
    async fn the_relay_waits_for_the_slowest_group() {
        let marks = Watermarks::default();
        marks.register("a", Position(5));
        marks.register("b", Position(3));
        assert_eq!(marks.lowest(), Some(Position(3)));
        let waiter = {
            let marks = marks.clone();
            tokio::spawn(async move { marks.wait_for_lowest(Position(8)).await })
        };
        marks.advance("a", Position(9));
        marks.advance("b", Position(7));
        assert!(!waiter.is_finished());
        marks.advance("b", Position(8));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter wakes once the slowest group passes")
            .unwrap();
        // Never backwards.
        marks.advance("b", Position(1));
        assert_eq!(marks.snapshot()["b"], Position(8));
    }
}
