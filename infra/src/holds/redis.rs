//! The Redis hold store: every decision is one Lua script, so it is atomic on the server and one
//! round trip, however many requests a batch carries.
//!
//! # Keys
//!
//! With the default prefix `zq:`:
//! - `zq:{<show>}:seat:<seat>`: one seat. The value is the booking id for a hold (with a `PX`
//!   TTL of `expires_at + grace - now`) or `sold:<booking>` for a sale (no TTL). The `{<show>}`
//!   hash tag puts all keys of a show in one cluster slot.
//! - `zq:expiries`: the expiry index, one sorted set; member `<show>|<booking>`, score
//!   `expires_at` in Unix milliseconds.
//! - `zq:epoch`: the epoch (see the [module documentation](super)).
//!
//! # Standalone Redis
//!
//! The scripts receive seat keys as arguments (`ARGV`), not as declared `KEYS`, because one batch
//! spans the shows of a Kafka partition and the expiry index is a single key: fine on a
//! standalone server (or a primary with replicas), not on Redis Cluster. A cluster deployment
//! would split a batch per show (all of a show's keys share a slot thanks to the hash tag) and
//! keep one expiry index and epoch per show slot; nothing of that exists yet.
//!
//! [`ZADD ... LT`](https://redis.io/docs/latest/commands/zadd/) needs Redis 6.2 or newer;
//! [`RedisHoldStore::connect`] refuses older servers.
//!
//! # Failures
//!
//! The connection is a [`ConnectionManager`], which reconnects after a server restart. The
//! scripts run through [`Script`], which falls back from `EVALSHA` to loading the script when the
//! server's script cache is empty (after a restart or `SCRIPT FLUSH`). Connection and I/O errors
//! become [`HoldError::Unavailable`]; retrying is safe because every operation is idempotent
//! (re-taking an own hold succeeds).

use std::collections::BTreeSet;
use std::sync::LazyLock;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Cmd, RedisError, Script};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{BookingId, SeatId, ShowId};

use super::{
    ExpiryDue, HoldError, HoldOutcome, HoldRequest, HoldSnapshot, HoldStore, SeatClaim,
    duration_millis, hold_ttl_millis,
};

/// The key prefix unless [`RedisHoldStore::with_prefix`] sets another.
pub const DEFAULT_PREFIX: &str = "zq:";

/// The error code the hold script answers when the epoch does not match.
const EPOCH_ERROR_CODE: &str = "EPOCH";

/// The value prefix of a sold marker: `sold:<booking>`.
const SOLD_PREFIX: &str = "sold:";

/// Commands per pipeline round trip while rebuilding: large enough to be quick, small enough not
/// to stall other clients behind one huge reply.
const REBUILD_CHUNK: usize = 1_000;

const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Generous: a batch script over a partition's records runs in milliseconds, so a reply this
/// late means the server or the network is in trouble.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// KEYS: epoch, expiry index. ARGV: the expected epoch, the number of requests, then per request
/// the booking id, the TTL in ms, `expires_at` in ms, the expiry member, the number of seats and
/// the seat keys. Answers, per request, the 0-based indexes of its seats taken by others (empty:
/// held).
static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('EPOCH the hold store epoch changed')
end
local results = {}
local at = 3
for r = 1, tonumber(ARGV[2]) do
  local booking = ARGV[at]
  local ttl = ARGV[at + 1]
  local expires = ARGV[at + 2]
  local member = ARGV[at + 3]
  local count = tonumber(ARGV[at + 4])
  local first = at + 5
  local sold = 'sold:' .. booking
  local taken = {}
  local to_hold = {}
  for s = 0, count - 1 do
    local key = ARGV[first + s]
    local value = redis.call('GET', key)
    if value == false or value == booking then
      to_hold[#to_hold + 1] = key
    elseif value ~= sold then
      taken[#taken + 1] = s
    end
  end
  if #taken == 0 and #to_hold > 0 then
    for _, key in ipairs(to_hold) do
      redis.call('SET', key, booking, 'PX', ttl)
    end
    redis.call('ZADD', KEYS[2], 'LT', expires, member)
  end
  results[r] = taken
  at = first + count
end
return results
"#,
    )
});

/// KEYS: expiry index. ARGV: booking id, expiry member, seat keys. Deletes only the booking's own
/// holds (compare and delete, atomic).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for k = 3, #ARGV do
  if redis.call('GET', ARGV[k]) == ARGV[1] then
    redis.call('DEL', ARGV[k])
  end
end
redis.call('ZREM', KEYS[1], ARGV[2])
return 0
"#,
    )
});

/// KEYS: expiry index. ARGV: booking id, expiry member, seat keys. A plain SET also drops a TTL.
static MARK_SOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local marker = 'sold:' .. ARGV[1]
for k = 3, #ARGV do
  redis.call('SET', ARGV[k], marker)
end
redis.call('ZREM', KEYS[1], ARGV[2])
return 0
"#,
    )
});

/// ARGV: booking id, seat keys. Deletes only the booking's own sold markers.
static UNMARK_SOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local marker = 'sold:' .. ARGV[1]
for k = 2, #ARGV do
  if redis.call('GET', ARGV[k]) == marker then
    redis.call('DEL', ARGV[k])
  end
end
return 0
"#,
    )
});

/// The Redis [`HoldStore`]. Cheap to clone (the connection is shared).
#[derive(Clone)]
pub struct RedisHoldStore {
    connection: ConnectionManager,
    grace_millis: i64,
    prefix: String,
}

impl std::fmt::Debug for RedisHoldStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHoldStore")
            .field("grace_millis", &self.grace_millis)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisHoldStore {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`); held seats outlive their
    /// `expires_at` by `grace`. Fails when the server is older than 6.2.
    pub async fn connect(url: &str, grace: Duration) -> Result<Self, HoldError> {
        let client = ::redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECTION_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT);
        let mut connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unavailable)?;
        let info: String = ::redis::cmd("INFO")
            .arg("server")
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        check_version(&info)?;
        Ok(Self {
            connection,
            grace_millis: duration_millis(grace),
            prefix: DEFAULT_PREFIX.to_string(),
        })
    }

    /// The same store under another key prefix (default `zq:`), e.g. to keep tests apart.
    /// Run a script that takes the expiry set as its key and (booking, expiry member, seat
    /// keys…) as arguments: release and mark-sold.
    async fn on_booking_seats(
        &self,
        script: &Script,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), HoldError> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.expiries_key())
            .arg(booking_id.to_string())
            .arg(expiry_member(show_id, booking_id));
        for seat in seats {
            invocation.arg(self.seat_key(show_id, seat));
        }
        invocation
            .invoke_async::<()>(&mut self.connection())
            .await
            .map_err(unavailable)
    }

    pub fn with_prefix(self, prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            ..self
        }
    }

    fn seat_key(&self, show_id: ShowId, seat: &SeatId) -> String {
        format!("{}{{{show_id}}}:seat:{seat}", self.prefix)
    }

    fn expiries_key(&self) -> String {
        format!("{}expiries", self.prefix)
    }

    fn epoch_key(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    /// A clone of the shared connection (`ConnectionManager` queries need `&mut`).
    fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }
}

fn expiry_member(show_id: ShowId, booking_id: BookingId) -> String {
    format!("{show_id}|{booking_id}")
}

fn unavailable(error: RedisError) -> HoldError {
    HoldError::Unavailable(error.to_string())
}

/// The hold script's epoch refusal is [`HoldError::EpochChanged`]; anything else is transient.
fn hold_error(error: RedisError) -> HoldError {
    if error.code() == Some(EPOCH_ERROR_CODE) {
        HoldError::EpochChanged
    } else {
        unavailable(error)
    }
}

fn corrupt(what: &str, value: &str) -> HoldError {
    // Only something other than this store writing its keys gets here; retrying will not help,
    // but the caller's retry loop will keep reporting it loudly.
    HoldError::Unavailable(format!("unexpected {what} in the hold store: {value:?}"))
}

/// Refuses servers without `ZADD ... LT` (Redis < 6.2).
fn check_version(info: &str) -> Result<(), HoldError> {
    let version = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("redis_version:"))
        .unwrap_or_default();
    let mut parts = version.split('.').map(|part| part.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) if (major, minor) >= (6, 2) => Ok(()),
        _ => Err(HoldError::Unavailable(format!(
            "the hold store needs Redis 6.2 or newer (ZADD LT); the server reports version {version:?}"
        ))),
    }
}

#[async_trait]
impl HoldStore for RedisHoldStore {
    async fn epoch(&self) -> Result<Option<String>, HoldError> {
        ::redis::cmd("GET")
            .arg(self.epoch_key())
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)
    }

    async fn rebuild(
        &self,
        snapshot: &HoldSnapshot,
        now: DateTime<Utc>,
    ) -> Result<String, HoldError> {
        let mut commands = Vec::new();
        for hold in &snapshot.held {
            let ttl = hold_ttl_millis(hold.expires_at, self.grace_millis, now);
            if ttl > 0 {
                let booking = hold.booking_id.to_string();
                for seat in &hold.seats {
                    let mut set = Cmd::new();
                    set.arg("SET")
                        .arg(self.seat_key(hold.show_id, seat))
                        .arg(&booking)
                        .arg("PX")
                        .arg(ttl);
                    commands.push(set);
                }
            }
            // Kept even when the TTL has run out: the booking still needs its HoldExpired. A
            // plain ZADD: the snapshot is the truth.
            let mut zadd = Cmd::new();
            zadd.arg("ZADD")
                .arg(self.expiries_key())
                .arg(hold.expires_at.timestamp_millis())
                .arg(expiry_member(hold.show_id, hold.booking_id));
            commands.push(zadd);
        }
        // After the holds, so that a sale wins over a hold of the same seat.
        for (show_id, seat, booking_id) in &snapshot.sold {
            let mut set = Cmd::new();
            set.arg("SET")
                .arg(self.seat_key(*show_id, seat))
                .arg(format!("{SOLD_PREFIX}{booking_id}"));
            commands.push(set);
        }
        let mut connection = self.connection();
        // Chunks run in order on one connection, so the holds-then-sold order holds across them.
        for chunk in commands.chunks(REBUILD_CHUNK) {
            let mut pipe = ::redis::pipe();
            for command in chunk {
                pipe.add_command(command.clone()).ignore();
            }
            pipe.query_async::<()>(&mut connection)
                .await
                .map_err(unavailable)?;
        }
        // Last: until the epoch exists, every hold fails, so nobody holds on a half-built store.
        let epoch = uuid::Uuid::new_v4().to_string();
        ::redis::cmd("SET")
            .arg(self.epoch_key())
            .arg(&epoch)
            .query_async::<()>(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(epoch)
    }

    async fn hold(
        &self,
        epoch: &str,
        requests: &[HoldRequest],
        now: DateTime<Utc>,
    ) -> Result<Vec<HoldOutcome>, HoldError> {
        let mut invocation = HOLD.prepare_invoke();
        invocation
            .key(self.epoch_key())
            .key(self.expiries_key())
            .arg(epoch)
            .arg(requests.len());
        for request in requests {
            // At least 1 ms: PX refuses zero and negative TTLs. A hold that has run out already
            // is then free again at once, as it would have been had it been taken in time.
            let ttl = hold_ttl_millis(request.expires_at, self.grace_millis, now).max(1);
            invocation
                .arg(request.booking_id.to_string())
                .arg(ttl)
                .arg(request.expires_at.timestamp_millis())
                .arg(expiry_member(request.show_id, request.booking_id))
                .arg(request.seats.len());
            for seat in &request.seats {
                invocation.arg(self.seat_key(request.show_id, seat));
            }
        }
        let answers: Vec<Vec<usize>> = invocation
            .invoke_async(&mut self.connection())
            .await
            .map_err(hold_error)?;
        if answers.len() != requests.len() {
            return Err(HoldError::Unavailable(format!(
                "the hold script answered {} results for {} requests",
                answers.len(),
                requests.len()
            )));
        }
        requests
            .iter()
            .zip(answers)
            .map(|(request, taken)| {
                if taken.is_empty() {
                    return Ok(HoldOutcome::Held);
                }
                // The script's indexes count the seats in the order they were sent: the set's.
                let seats: Vec<&SeatId> = request.seats.iter().collect();
                taken
                    .iter()
                    .map(|&index| {
                        seats
                            .get(index)
                            .map(|seat| (*seat).clone())
                            .ok_or_else(|| corrupt("seat index", &index.to_string()))
                    })
                    .collect::<Result<BTreeSet<_>, _>>()
                    .map(HoldOutcome::Taken)
            })
            .collect()
    }

    async fn release(
        &self,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), HoldError> {
        self.on_booking_seats(&RELEASE, show_id, booking_id, seats)
            .await
    }

    async fn mark_sold(
        &self,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), HoldError> {
        self.on_booking_seats(&MARK_SOLD, show_id, booking_id, seats)
            .await
    }

    async fn unmark_sold(
        &self,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), HoldError> {
        if seats.is_empty() {
            return Ok(());
        }
        let mut invocation = UNMARK_SOLD.prepare_invoke();
        invocation.arg(booking_id.to_string());
        for seat in seats {
            invocation.arg(self.seat_key(show_id, seat));
        }
        invocation
            .invoke_async::<()>(&mut self.connection())
            .await
            .map_err(unavailable)
    }

    async fn due_expiries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<ExpiryDue>, HoldError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let entries: Vec<(String, f64)> = ::redis::cmd("ZRANGE")
            .arg(self.expiries_key())
            .arg("-inf")
            .arg(now.timestamp_millis())
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .arg("WITHSCORES")
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        entries
            .into_iter()
            .map(|(member, score)| {
                let (show, booking) = member
                    .split_once('|')
                    .ok_or_else(|| corrupt("expiry member", &member))?;
                let show_id = show
                    .parse()
                    .map_err(|_| corrupt("expiry member", &member))?;
                let booking_id = booking
                    .parse()
                    .map_err(|_| corrupt("expiry member", &member))?;
                // Scores are whole milliseconds well below 2^53, so the f64 holds them exactly.
                let expires_at = DateTime::from_timestamp_millis(score as i64)
                    .ok_or_else(|| corrupt("expiry score", &score.to_string()))?;
                Ok(ExpiryDue {
                    show_id,
                    booking_id,
                    expires_at,
                })
            })
            .collect()
    }

    async fn forget_expiry(&self, show_id: ShowId, booking_id: BookingId) -> Result<(), HoldError> {
        ::redis::cmd("ZREM")
            .arg(self.expiries_key())
            .arg(expiry_member(show_id, booking_id))
            .query_async::<()>(&mut self.connection())
            .await
            .map_err(unavailable)
    }

    async fn seat(&self, show_id: ShowId, seat: &SeatId) -> Result<Option<SeatClaim>, HoldError> {
        let value: Option<String> = ::redis::cmd("GET")
            .arg(self.seat_key(show_id, seat))
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        let Some(value) = value else {
            return Ok(None);
        };
        let (booking, sold) = match value.strip_prefix(SOLD_PREFIX) {
            Some(booking) => (booking, true),
            None => (value.as_str(), false),
        };
        let booking_id = booking.parse().map_err(|_| corrupt("seat value", &value))?;
        Ok(Some(SeatClaim { booking_id, sold }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_6_2_are_refused() {
        assert!(check_version("# Server\r\nredis_version:7.0.15\r\n").is_ok());
        assert!(check_version("redis_version:6.2.0").is_ok());
        assert!(check_version("redis_version:10.0.0").is_ok());
        assert!(check_version("redis_version:6.0.16").is_err());
        assert!(check_version("redis_version:5.0.7").is_err());
        assert!(check_version("no version here").is_err());
    }
}
