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
//! - `zq:epoch`: the epoch, `<generation>@<run_id>` or the fence marker `rebuilding:<generation>`
//!   (see the [module documentation](super)).
//!
//! # The epoch check
//!
//! Every write script (hold, release, mark sold, unmark sold) starts with one shared prelude
//! (`WRITE_PRELUDE`) that refuses to run, with an `EPOCH` error and before touching anything,
//! unless the epoch key equals the epoch the caller names **and** the run id after its `@` is the
//! server's current `run_id`, which the script reads itself (`INFO server`). The key alone is not
//! enough: a Redis restarted from an RDB or AOF file brings back the epoch key of its last
//! snapshot without the holds and sales made since; only its `run_id` is new.
//!
//! A rebuild ([`HoldStore::fence`] then [`HoldStore::rebuild`]) writes its snapshot in chunks,
//! each one script that first checks that the fence marker is still its own and that the server
//! still runs as it did when the rebuild began (a restart in the middle would lose the chunks
//! written before its last snapshot), then swaps the marker for the ready epoch in one last
//! script under the same checks.
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
use ::redis::{RedisError, Script};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{BookingId, SeatId, ShowId};

use super::{
    ExpiryDue, HoldError, HoldOutcome, HoldRequest, HoldSnapshot, HoldStore, REBUILDING_PREFIX,
    SeatClaim, duration_millis, fence_marker, hold_ttl_millis, ready_epoch,
};

/// The key prefix unless [`RedisHoldStore::with_prefix`] sets another.
pub const DEFAULT_PREFIX: &str = "zq:";

/// The error code the scripts answer when the epoch (or the fence marker) does not match.
const EPOCH_ERROR_CODE: &str = "EPOCH";

/// The value prefix of a sold marker: `sold:<booking>`.
const SOLD_PREFIX: &str = "sold:";

/// Writes per rebuild script call: large enough to be quick, small enough not to stall other
/// clients behind one long script.
const REBUILD_CHUNK: usize = 1_000;

const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Generous: a batch script over a partition's records runs in milliseconds, so a reply this
/// late means the server or the network is in trouble.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Functions every script shares. `generation_of` reads a generation number by the rule of
/// `super::parse_generation` (decimal digits only); `REBUILDING` is the fence marker's prefix.
static LUA_FUNCTIONS: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
local REBUILDING = '{REBUILDING_PREFIX}'
local function server_run_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
end
local function epoch_refused()
  return redis.error_reply('EPOCH the hold store epoch changed')
end
local function generation_of(text)
  if text and string.match(text, '^%d+$') then
    return tonumber(text)
  end
  return nil
end
-- The key holds exactly `epoch`, a ready epoch '<generation>@<run_id>' of this server run.
local function epoch_is_live(key, epoch)
  if redis.call('GET', key) ~= epoch then
    return false
  end
  local at = string.find(epoch, '@', 1, true)
  return at ~= nil
    and generation_of(string.sub(epoch, 1, at - 1)) ~= nil
    and string.sub(epoch, at + 1) == server_run_id()
end
"#
    )
});

/// The prelude of every write script: KEYS[1] is the epoch key, ARGV[1] the caller's epoch.
/// Refuses, before anything is written, unless that epoch is the store's and is live.
const WRITE_PRELUDE: &str = r#"
if not epoch_is_live(KEYS[1], ARGV[1]) then
  return epoch_refused()
end
"#;

/// A write script: the shared functions, the epoch check, then `body`.
fn write_script(body: &str) -> Script {
    Script::new(&format!("{}{WRITE_PRELUDE}{body}", *LUA_FUNCTIONS))
}

/// KEYS: epoch, expiry index. ARGV: the expected epoch, the number of requests, then per request
/// the booking id, the TTL in ms, `expires_at` in ms, the expiry member, the number of seats and
/// the seat keys. Answers, per request, the 0-based indexes of its seats taken by others (empty:
/// held).
static HOLD: LazyLock<Script> = LazyLock::new(|| {
    write_script(
        r#"
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

/// KEYS: epoch, expiry index. ARGV: epoch, booking id, expiry member, seat keys. Deletes only
/// the booking's own holds (compare and delete, atomic).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    write_script(
        r#"
for k = 4, #ARGV do
  if redis.call('GET', ARGV[k]) == ARGV[2] then
    redis.call('DEL', ARGV[k])
  end
end
redis.call('ZREM', KEYS[2], ARGV[3])
return 0
"#,
    )
});

/// KEYS: epoch, expiry index. ARGV: epoch, booking id, expiry member, seat keys. A plain SET
/// also drops a TTL.
static MARK_SOLD: LazyLock<Script> = LazyLock::new(|| {
    write_script(
        r#"
local marker = 'sold:' .. ARGV[2]
for k = 4, #ARGV do
  redis.call('SET', ARGV[k], marker)
end
redis.call('ZREM', KEYS[2], ARGV[3])
return 0
"#,
    )
});

/// KEYS: epoch. ARGV: epoch, booking id, seat keys. Deletes only the booking's own sold markers.
static UNMARK_SOLD: LazyLock<Script> = LazyLock::new(|| {
    write_script(
        r#"
local marker = 'sold:' .. ARGV[2]
for k = 3, #ARGV do
  if redis.call('GET', ARGV[k]) == marker then
    redis.call('DEL', ARGV[k])
  end
end
return 0
"#,
    )
});

/// KEYS: epoch. ARGV: epoch. The write scripts' check alone.
static CHECK_EPOCH: LazyLock<Script> = LazyLock::new(|| write_script("return 0"));

/// KEYS: epoch. ARGV: the generation. Sets the fence marker unless a generation at least as
/// new is in force: a marker of a greater generation, or a ready epoch of this server run whose
/// generation is not smaller. A ready epoch of another run is dead and is overwritten.
static FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{}",
        *LUA_FUNCTIONS,
        r#"
local wanted = generation_of(ARGV[1])
local marker = REBUILDING .. ARGV[1]
local current = redis.call('GET', KEYS[1])
if current and current ~= marker then
  local fenced = nil
  if string.sub(current, 1, #REBUILDING) == REBUILDING then
    fenced = generation_of(string.sub(current, #REBUILDING + 1))
  end
  if fenced then
    if fenced > wanted then
      return epoch_refused()
    end
  else
    local at = string.find(current, '@', 1, true)
    if at and string.sub(current, at + 1) == server_run_id() then
      local ready = generation_of(string.sub(current, 1, at - 1))
      if ready and ready >= wanted then
        return epoch_refused()
      end
    end
  end
end
redis.call('SET', KEYS[1], marker)
return 0
"#
    ))
});

/// The check of every rebuild script: KEYS[1] holds the fence marker ARGV[1] and the server
/// still runs as ARGV[2], the run the rebuild began on.
const REBUILD_PRELUDE: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] or server_run_id() ~= ARGV[2] then
  return epoch_refused()
end
"#;

/// KEYS: epoch, expiry index. ARGV: fence marker, run id, the number of seat writes, then per
/// seat write its key, value and TTL in ms (0: none), then pairs of expiry score and member.
static REBUILD_CHUNK_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{REBUILD_PRELUDE}{}",
        *LUA_FUNCTIONS,
        r#"
local at = 4
for i = 1, tonumber(ARGV[3]) do
  local ttl = tonumber(ARGV[at + 2])
  if ttl > 0 then
    redis.call('SET', ARGV[at], ARGV[at + 1], 'PX', ttl)
  else
    redis.call('SET', ARGV[at], ARGV[at + 1])
  end
  at = at + 3
end
while at < #ARGV do
  redis.call('ZADD', KEYS[2], ARGV[at], ARGV[at + 1])
  at = at + 2
end
return 0
"#
    ))
});

/// KEYS: epoch, expiry index. ARGV: fence marker, run id, `1` to drop the expiry index (else
/// `0`), then seat keys to delete: what the store held before the rebuild, which the snapshot
/// replaces whole (a store restored from an older RDB file holds sold markers and holds the log
/// has since undone).
static REBUILD_CLEAR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{REBUILD_PRELUDE}{}",
        *LUA_FUNCTIONS,
        r#"
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[2])
end
for k = 4, #ARGV do
  redis.call('DEL', ARGV[k])
end
return 0
"#
    ))
});

/// KEYS: epoch. ARGV: fence marker, run id, the ready epoch (`<generation>@<run id>`). Replaces
/// the marker with the ready epoch.
static REBUILD_FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{REBUILD_PRELUDE}{}",
        *LUA_FUNCTIONS,
        r#"
redis.call('SET', KEYS[1], ARGV[3])
return 0
"#
    ))
});

/// One write of a rebuild.
enum RebuildWrite {
    /// SET key value, with a PX TTL when `ttl_millis > 0`.
    Seat {
        key: String,
        value: String,
        ttl_millis: i64,
    },
    /// ZADD expiries score member (a plain ZADD: the snapshot is the truth).
    Expiry { score: i64, member: String },
}

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
        let client = ::redis::Client::open(url)
            .map_err(|error| HoldError::Misconfigured(format!("the Redis URL: {error}")))?;
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

    /// Runs a write script that takes the epoch and expiry keys and (epoch, booking, expiry
    /// member, seat keys…) as arguments: release and mark sold.
    async fn on_booking_seats(
        &self,
        script: &Script,
        epoch: &str,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), HoldError> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.epoch_key())
            .key(self.expiries_key())
            .arg(epoch)
            .arg(booking_id.to_string())
            .arg(expiry_member(show_id, booking_id));
        for seat in seats {
            invocation.arg(self.seat_key(show_id, seat));
        }
        invocation
            .invoke_async::<()>(&mut self.connection())
            .await
            .map_err(script_error)
    }

    /// The server's current `run_id` (`INFO server`).
    async fn run_id(&self) -> Result<String, HoldError> {
        let info: String = ::redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        run_id_of(&info)
            .map(str::to_string)
            .ok_or_else(|| HoldError::Unavailable("the server reports no run_id".to_string()))
    }

    /// Runs one rebuild script: fence marker and run id first, then `args`.
    async fn rebuild_step(
        &self,
        script: &Script,
        marker: &str,
        run_id: &str,
        keys: &[String],
        args: impl IntoIterator<Item = String>,
    ) -> Result<(), HoldError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        invocation.arg(marker).arg(run_id);
        for arg in args {
            invocation.arg(arg);
        }
        invocation
            .invoke_async::<()>(&mut self.connection())
            .await
            .map_err(script_error)
    }

    /// Delete every seat key and the expiry index, under the fence: the snapshot is the whole
    /// truth. Seat keys are found with `SCAN` (no command blocks the server for long) and
    /// deleted a page at a time by a script that checks the fence first.
    async fn clear_under_fence(
        &self,
        marker: &str,
        run_id: &str,
        keys: &[String],
    ) -> Result<(), HoldError> {
        self.rebuild_step(&REBUILD_CLEAR, marker, run_id, keys, ["1".to_string()])
            .await?;
        let pattern = format!("{}{{*}}:seat:*", self.prefix);
        let mut cursor: u64 = 0;
        loop {
            let (next, found): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(REBUILD_CHUNK)
                .query_async(&mut self.connection())
                .await
                .map_err(unavailable)?;
            if !found.is_empty() {
                let args = std::iter::once("0".to_string()).chain(found);
                self.rebuild_step(&REBUILD_CLEAR, marker, run_id, keys, args)
                    .await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// The same store under another key prefix (default `zq:`), e.g. to keep tests apart.
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

/// A script's epoch refusal is [`HoldError::EpochChanged`]; anything else is transient.
fn script_error(error: RedisError) -> HoldError {
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

/// The `run_id` line of `INFO server`.
fn run_id_of(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix("run_id:"))
        .filter(|run_id| !run_id.is_empty())
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
        _ => Err(HoldError::Misconfigured(format!(
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

    async fn check_epoch(&self, epoch: &str) -> Result<(), HoldError> {
        CHECK_EPOCH
            .prepare_invoke()
            .key(self.epoch_key())
            .arg(epoch)
            .invoke_async::<()>(&mut self.connection())
            .await
            .map_err(script_error)
    }

    async fn fence(&self, generation: u64) -> Result<(), HoldError> {
        FENCE
            .prepare_invoke()
            .key(self.epoch_key())
            .arg(generation.to_string())
            .invoke_async::<()>(&mut self.connection())
            .await
            .map_err(script_error)
    }

    async fn rebuild(
        &self,
        generation: u64,
        snapshot: &HoldSnapshot,
        now: DateTime<Utc>,
    ) -> Result<String, HoldError> {
        let marker = fence_marker(generation);
        // Every script below also checks that the server still runs as now: a restart in the
        // middle could bring the marker back from a snapshot without the chunks written since.
        let run_id = self.run_id().await?;
        let mut writes = Vec::new();
        for hold in &snapshot.held {
            let ttl = hold_ttl_millis(hold.expires_at, self.grace_millis, now);
            if ttl > 0 {
                let booking = hold.booking_id.to_string();
                for seat in &hold.seats {
                    writes.push(RebuildWrite::Seat {
                        key: self.seat_key(hold.show_id, seat),
                        value: booking.clone(),
                        ttl_millis: ttl,
                    });
                }
            }
            // Kept even when the TTL has run out: the booking still needs its HoldExpired.
            writes.push(RebuildWrite::Expiry {
                score: hold.expires_at.timestamp_millis(),
                member: expiry_member(hold.show_id, hold.booking_id),
            });
        }
        // After the holds, so that a sale wins over a hold of the same seat.
        for (show_id, seat, booking_id) in &snapshot.sold {
            writes.push(RebuildWrite::Seat {
                key: self.seat_key(*show_id, seat),
                value: format!("{SOLD_PREFIX}{booking_id}"),
                ttl_millis: 0,
            });
        }
        let keys = [self.epoch_key(), self.expiries_key()];
        self.clear_under_fence(&marker, &run_id, &keys).await?;
        // Chunks run in order, each writing its seats in order, so the holds-then-sold order
        // holds across them (expiry entries are independent of seats).
        for chunk in writes.chunks(REBUILD_CHUNK) {
            let mut seats = Vec::new();
            let mut expiries = Vec::new();
            for write in chunk {
                match write {
                    RebuildWrite::Seat {
                        key,
                        value,
                        ttl_millis,
                    } => seats.extend([key.clone(), value.clone(), ttl_millis.to_string()]),
                    RebuildWrite::Expiry { score, member } => {
                        expiries.extend([score.to_string(), member.clone()]);
                    }
                }
            }
            let args = std::iter::once((seats.len() / 3).to_string())
                .chain(seats)
                .chain(expiries);
            self.rebuild_step(&REBUILD_CHUNK_SCRIPT, &marker, &run_id, &keys, args)
                .await?;
        }
        // Last: until the ready epoch is set, every write fails, so nobody writes into a
        // half-built store.
        let epoch = ready_epoch(generation, &run_id);
        self.rebuild_step(
            &REBUILD_FINISH,
            &marker,
            &run_id,
            &keys[..1],
            [epoch.clone()],
        )
        .await?;
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
            .map_err(script_error)?;
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
        epoch: &str,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), HoldError> {
        self.on_booking_seats(&RELEASE, epoch, show_id, booking_id, seats)
            .await
    }

    async fn mark_sold(
        &self,
        epoch: &str,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), HoldError> {
        self.on_booking_seats(&MARK_SOLD, epoch, show_id, booking_id, seats)
            .await
    }

    async fn unmark_sold(
        &self,
        epoch: &str,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), HoldError> {
        let mut invocation = UNMARK_SOLD.prepare_invoke();
        invocation
            .key(self.epoch_key())
            .arg(epoch)
            .arg(booking_id.to_string());
        for seat in seats {
            invocation.arg(self.seat_key(show_id, seat));
        }
        invocation
            .invoke_async::<()>(&mut self.connection())
            .await
            .map_err(script_error)
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

    #[test]
    fn the_run_id_is_read_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:e8e248e026e6e863cba93aed4cd01b79f4929adc\r\ntcp_port:6379\r\n";
        assert_eq!(
            run_id_of(info),
            Some("e8e248e026e6e863cba93aed4cd01b79f4929adc")
        );
        assert_eq!(run_id_of("run_id:\r\n"), None);
        assert_eq!(run_id_of("redis_version:7.0.15"), None);
    }
}
