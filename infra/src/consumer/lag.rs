//! Consumer lag, as Kafka users chart it, and a Burrow-style status per group.
//!
//! [`LagProbe`] asks the broker, for each group, its committed offset per partition
//! (OffsetFetch, as a client with the group's id that never joins it) and each partition's
//! earliest and latest offsets. [`LagTracker`] keeps a short window of those samples per
//! partition and derives:
//! - lag in records (latest minus committed; everything since the earliest when the group has
//!   committed nothing yet) and in seconds: how long ago the log end passed the committed
//!   offset, interpolated from the window of latest offsets, as kafka-lag-exporter does;
//! - a status per group, Burrow's rules per partition (the group takes its worst), except that
//!   STOP comes from heartbeats (no member has reported for a while) rather than commit times:
//!   - OK: no lag, or the lag was zero at some point of the window;
//!   - REWIND: the committed offset went back;
//!   - STOP: no live member;
//!   - STALL: the committed offset has not moved over the whole window while there is lag;
//!   - WARN: the lag never went down over the window (it is growing).
//!
//! The in-process broker of the embedded default starts empty at each start: a latest offset
//! that went back means a new broker, and the window starts over instead of reporting REWIND.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

/// Samples kept per partition (one a second: a 10-second window, Burrow's default size).
const WINDOW: usize = 10;
/// Latest-offset samples kept per partition for lag in seconds.
const HISTORY: usize = 120;

/// A group's health, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum GroupStatus {
    Rewind,
    Stop,
    Stall,
    Warn,
    Ok,
}

impl GroupStatus {
    pub const ALL: [GroupStatus; 5] = [
        GroupStatus::Rewind,
        GroupStatus::Stop,
        GroupStatus::Stall,
        GroupStatus::Warn,
        GroupStatus::Ok,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupStatus::Rewind => "REWIND",
            GroupStatus::Stop => "STOP",
            GroupStatus::Stall => "STALL",
            GroupStatus::Warn => "WARN",
            GroupStatus::Ok => "OK",
        }
    }
}

/// One look at one partition for one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetSample {
    /// `None`: the group has committed nothing on this partition.
    pub committed: Option<i64>,
    pub earliest: i64,
    pub latest: i64,
}

impl OffsetSample {
    pub fn lag(&self) -> i64 {
        (self.latest - self.committed.unwrap_or(self.earliest)).max(0)
    }
}

/// What the tracker says of one partition of one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionLag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub committed: Option<i64>,
    pub earliest: i64,
    pub latest: i64,
    pub lag: i64,
    pub lag_seconds: f64,
    pub status: GroupStatus,
}

#[derive(Debug, Default)]
struct PartitionWindow {
    samples: VecDeque<OffsetSample>,
    /// (latest offset, when seen), oldest first.
    history: VecDeque<(i64, Instant)>,
}

/// Lag and status over time, for every (group, topic, partition) it is given samples of.
#[derive(Debug, Default)]
pub struct LagTracker {
    partitions: BTreeMap<(String, String, i32), PartitionWindow>,
}

impl LagTracker {
    /// Add one look at every partition of `group` on `topic`; `alive`: a member of the group
    /// has reported recently.
    pub fn observe(
        &mut self,
        group: &str,
        topic: &str,
        samples: &[(i32, OffsetSample)],
        alive: bool,
        now: Instant,
    ) -> Vec<PartitionLag> {
        samples
            .iter()
            .map(|(partition, sample)| {
                let key = (group.to_string(), topic.to_string(), *partition);
                let window = self.partitions.entry(key).or_default();
                if window
                    .samples
                    .back()
                    .is_some_and(|last| sample.latest < last.latest)
                {
                    // A broker that started over (the embedded one, after a restart).
                    *window = PartitionWindow::default();
                }
                window.samples.push_back(*sample);
                if window.samples.len() > WINDOW {
                    window.samples.pop_front();
                }
                if window
                    .history
                    .back()
                    .is_none_or(|(latest, _)| *latest != sample.latest)
                {
                    window.history.push_back((sample.latest, now));
                    if window.history.len() > HISTORY {
                        window.history.pop_front();
                    }
                }
                PartitionLag {
                    group: group.to_string(),
                    topic: topic.to_string(),
                    partition: *partition,
                    committed: sample.committed,
                    earliest: sample.earliest,
                    latest: sample.latest,
                    lag: sample.lag(),
                    lag_seconds: lag_seconds(&window.history, sample, now),
                    status: partition_status(&window.samples, alive),
                }
            })
            .collect()
    }
}

/// A group's status: its worst partition's.
pub fn group_status(partitions: &[PartitionLag], alive: bool) -> GroupStatus {
    let worst = partitions
        .iter()
        .map(|p| p.status)
        .min()
        .unwrap_or(GroupStatus::Ok);
    if !alive && worst == GroupStatus::Ok && partitions.iter().all(|p| p.lag == 0) {
        // Nothing to do and nobody doing it: still no consumer.
        return GroupStatus::Stop;
    }
    worst
}

fn partition_status(samples: &VecDeque<OffsetSample>, alive: bool) -> GroupStatus {
    let Some(current) = samples.back() else {
        return GroupStatus::Ok;
    };
    let committed: Vec<i64> = samples.iter().filter_map(|s| s.committed).collect();
    if committed.windows(2).any(|pair| pair[1] < pair[0]) {
        return GroupStatus::Rewind;
    }
    if !alive {
        return GroupStatus::Stop;
    }
    if current.lag() == 0 || samples.iter().any(|s| s.lag() == 0) {
        return GroupStatus::Ok;
    }
    if samples.len() >= WINDOW
        && committed.len() == samples.len()
        && committed.iter().all(|offset| *offset == committed[0])
    {
        return GroupStatus::Stall;
    }
    let lags: Vec<i64> = samples.iter().map(OffsetSample::lag).collect();
    if samples.len() >= WINDOW && lags.windows(2).all(|pair| pair[1] >= pair[0]) {
        return GroupStatus::Warn;
    }
    GroupStatus::Ok
}

/// How long ago the log end passed the committed offset: the time of the first latest-offset
/// sample beyond it (a lower bound when that is older than the history kept).
fn lag_seconds(history: &VecDeque<(i64, Instant)>, sample: &OffsetSample, now: Instant) -> f64 {
    let consumed = sample.committed.unwrap_or(sample.earliest);
    if consumed >= sample.latest {
        return 0.0;
    }
    let passed = history
        .iter()
        .find(|(latest, _)| *latest > consumed)
        .or(history.front());
    passed.map_or(0.0, |(_, at)| now.duration_since(*at).as_secs_f64())
}

/// Asks the broker for offsets; its calls block (run it off the async workers).
pub struct LagProbe {
    brokers: String,
    consumers: BTreeMap<String, BaseConsumer>,
}

impl LagProbe {
    pub fn new(brokers: &str) -> LagProbe {
        LagProbe {
            brokers: brokers.to_string(),
            consumers: BTreeMap::new(),
        }
    }

    /// For each of `groups`, every partition of `topic`: committed, earliest and latest.
    pub fn sample(
        &mut self,
        topic: &str,
        groups: &[&str],
        timeout: Duration,
    ) -> Result<BTreeMap<String, Vec<(i32, OffsetSample)>>, KafkaError> {
        let mut by_group = BTreeMap::new();
        let mut ends: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for group in groups {
            let consumer = match self.consumers.get(*group) {
                Some(consumer) => consumer,
                None => {
                    // The group's id, never subscribed: OffsetFetch does not join the group.
                    let consumer: BaseConsumer = ClientConfig::new()
                        .set("bootstrap.servers", &self.brokers)
                        .set("group.id", *group)
                        .set("enable.auto.commit", "false")
                        .create()?;
                    self.consumers.entry(group.to_string()).or_insert(consumer)
                }
            };
            let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic)
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            let mut wanted = TopicPartitionList::new();
            for partition in &partitions {
                wanted.add_partition(topic, *partition);
            }
            let committed = consumer.committed_offsets(wanted, timeout)?;
            let mut samples = Vec::with_capacity(partitions.len());
            for element in committed.elements() {
                let partition = element.partition();
                let (earliest, latest) = match ends.get(&partition) {
                    Some(ends) => *ends,
                    None => {
                        let fetched = consumer.fetch_watermarks(topic, partition, timeout)?;
                        ends.insert(partition, fetched);
                        fetched
                    }
                };
                let committed = match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                };
                samples.push((
                    partition,
                    OffsetSample {
                        committed,
                        earliest,
                        latest,
                    },
                ));
            }
            by_group.insert(group.to_string(), samples);
        }
        Ok(by_group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(committed: i64, latest: i64) -> (i32, OffsetSample) {
        (
            0,
            OffsetSample {
                committed: Some(committed),
                earliest: 0,
                latest,
            },
        )
    }

    /// Given a sequence of looks a second apart, the last status.
    fn status_after(looks: &[(i64, i64)], alive: bool) -> GroupStatus {
        let mut tracker = LagTracker::default();
        let start = Instant::now();
        let mut last = GroupStatus::Ok;
        for (second, (committed, latest)) in looks.iter().enumerate() {
            let now = start + Duration::from_secs(second as u64);
            let lags = tracker.observe("g", "t", &[at(*committed, *latest)], alive, now);
            last = group_status(&lags, alive);
        }
        last
    }

    #[test]
    fn a_group_keeping_up_is_ok() {
        let looks: Vec<(i64, i64)> = (0..12).map(|n| (n * 10, n * 10)).collect();
        assert_eq!(status_after(&looks, true), GroupStatus::Ok);
    }

    #[test]
    fn a_group_behind_but_catching_up_is_ok() {
        let looks: Vec<(i64, i64)> = (0..12).map(|n| (n * 20, 300)).collect();
        assert_eq!(status_after(&looks, true), GroupStatus::Ok);
    }

    #[test]
    fn lag_that_only_grows_is_a_warning() {
        let looks: Vec<(i64, i64)> = (0..12).map(|n| (n * 10, 100 + n * 20)).collect();
        assert_eq!(status_after(&looks, true), GroupStatus::Warn);
    }

    #[test]
    fn a_committed_offset_that_does_not_move_under_lag_is_a_stall() {
        let looks: Vec<(i64, i64)> = (0..12).map(|n| (50, 100 + n)).collect();
        assert_eq!(status_after(&looks, true), GroupStatus::Stall);
    }

    #[test]
    fn no_live_member_is_stop_with_or_without_lag() {
        assert_eq!(status_after(&[(50, 100)], false), GroupStatus::Stop);
        assert_eq!(status_after(&[(100, 100)], false), GroupStatus::Stop);
    }

    #[test]
    fn a_committed_offset_going_back_is_a_rewind() {
        assert_eq!(
            status_after(&[(80, 100), (10, 100)], true),
            GroupStatus::Rewind
        );
    }

    #[test]
    fn a_broker_that_starts_over_is_not_a_rewind() {
        // The embedded broker after a restart: its latest offset went back too.
        assert_eq!(status_after(&[(80, 100), (10, 20)], true), GroupStatus::Ok);
    }

    #[test]
    fn lag_in_seconds_is_when_the_log_end_passed_the_committed_offset() {
        let mut tracker = LagTracker::default();
        let start = Instant::now();
        // The log end moves 10 records a second; the group stops at 30.
        let mut last = Vec::new();
        for second in 0..8u64 {
            let latest = second as i64 * 10;
            last = tracker.observe(
                "g",
                "t",
                &[at(latest.min(30), latest)],
                true,
                start + Duration::from_secs(second),
            );
        }
        // The log end passed 30 at second 4 (40 > 30); now is second 7.
        assert_eq!(last[0].lag, 40);
        assert!((last[0].lag_seconds - 3.0).abs() < 1e-9, "{last:?}");
        // A group with nothing to consume has no lag in seconds.
        let caught_up = tracker.observe(
            "g",
            "t",
            &[at(80, 80)],
            true,
            start + Duration::from_secs(8),
        );
        assert_eq!(caught_up[0].lag_seconds, 0.0);
    }
}
