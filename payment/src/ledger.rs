//! The payment simulator's ledger: what it charged and refunded, kept in a database so that it
//! survives restarts of the payment process and is shared by every payment process on that
//! database, as a real provider's books are.
//!
//! The simulator keeps it in the store's own database (Postgres, or the embedded SQLite file),
//! in three tables it creates at open (`CREATE TABLE IF NOT EXISTS`; they are not part of the
//! event store's migrations because they belong to the stand-in provider, not to ZingQueue):
//!
//! - `zq_sim_charges`, one row per charge idempotency key: `idempotency_key` (primary key),
//!   `charge_id` (derived from the key, so unique with it; indexed), `status` (`pending`: no decision yet, or only
//!   transient failures; `charged`; `declined`), `amount_minor` and `currency` (what was taken,
//!   when charged), `decline_reason`, `attempts` (charge calls that reached a decision: the
//!   scripted and seeded outcomes count them), `times_taken` (times money was taken: an
//!   independent count, 0 or 1), `charge_calls` (every charge call with this key, repeats of a
//!   settled key included; not the ones refused at once for a negative amount), `status_calls`
//!   (status queries for the key once it has a row), `created_at`, `updated_at`.
//! - `zq_sim_refunds`, one row per charge that a refund named: `charge_id` (primary key),
//!   `refund_id` (NULL until refunded), `amount_minor`, `currency`, `refund_calls` (every refund
//!   call naming this existing charge), `times_refunded` (0 or 1), `created_at`, `updated_at`.
//! - `zq_sim_refund_attempts`: refund attempts per refund idempotency key, for the seeded
//!   transient draws.
//!
//! Every decision is one transaction: on Postgres, the charge's (or refund's) row is created or
//! locked by an `INSERT … ON CONFLICT DO UPDATE … RETURNING` and stays locked until the decision
//! is stored; on SQLite, the transaction is `BEGIN IMMEDIATE` (one writer at a time). So two
//! payment processes charging one key at once take the money once. The SQL is the same on both
//! backends: it lives once, in the `ledger_sql!` macro that each backend instantiates.

use std::str::FromStr;
use std::time::Duration;

use domain::{Currency, Money};

use crate::gateway::{GatewayError, RefundReceipt};

/// Why the ledger could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("payment simulator ledger: {0}")]
    Database(#[from] sqlx::Error),
    /// The commit of a decision failed: it may or may not have been stored.
    #[error("payment simulator ledger: the commit's outcome is unknown: {0}")]
    Commit(sqlx::Error),
    #[error("payment simulator ledger row {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(
        "unsupported database URL {0:?} for the payment simulator's ledger: expected postgres://… or sqlite:…"
    )]
    UnsupportedUrl(String),
}

impl infra::resilience::Transience for LedgerError {
    fn is_transient(&self) -> bool {
        match self {
            LedgerError::Database(error) | LedgerError::Commit(error) => {
                event_store::is_transient_sqlx(error)
            }
            LedgerError::Corrupt { .. } | LedgerError::UnsupportedUrl(_) => false,
        }
    }
}

/// Where a charge key stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeState {
    /// No decision yet: never decided, or only transient failures.
    Pending,
    /// The money was taken.
    Charged { amount: Money },
    /// Declined for good.
    Declined { reason: String },
}

/// What the ledger keeps of one charge key (a row of `zq_sim_charges`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeEntry {
    pub idempotency_key: String,
    pub charge_id: String,
    pub state: ChargeState,
    /// Charge calls that reached a decision (repeats of a settled key are not counted).
    pub attempts: u32,
    /// Times money was taken: 0 or 1, never more.
    pub times_taken: u32,
    /// Every charge call with this key, repeats of a settled key included.
    pub charge_calls: u32,
    /// Status queries for this key since it has a row.
    pub status_calls: u32,
}

/// What the ledger keeps of the refunds of one charge (a row of `zq_sim_refunds`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundEntry {
    pub charge_id: String,
    /// Set once refunded.
    pub refund_id: Option<String>,
    /// What was paid back, once refunded.
    pub amount: Option<Money>,
    /// Every refund call naming this charge.
    pub refund_calls: u32,
    /// Times money was paid back: 0 or 1, never more.
    pub times_refunded: u32,
}

/// Sums over the whole ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerTotals {
    /// Charge keys seen.
    pub keys: u64,
    /// Charge calls, over all keys.
    pub charge_calls: u64,
    /// Status queries of known keys.
    pub status_calls: u64,
    /// Charges that took money.
    pub charges_taken: u64,
    /// Refund calls naming a charge that exists.
    pub refund_calls: u64,
    /// Refunds that paid money back.
    pub refunds_made: u64,
}

/// What a refund call does once the ledger has told the charge and its refund.
pub(crate) enum RefundPlan {
    /// The answer, without a draw: refused, or the earlier refund.
    Answer(Result<RefundReceipt, GatewayError>),
    /// A new refund attempt: draw its outcome (the attempt number comes from the ledger).
    Attempt,
}

/// The ledger's database.
#[derive(Debug, Clone)]
pub(crate) struct Ledger {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Postgres(sqlx::PgPool),
    Sqlite {
        pool: sqlx::SqlitePool,
        /// A file's in-process turn to write, shared with the event store's writer and the
        /// projector (see [`event_store::sqlite::write_gate`]); none for an in-memory database.
        gate: Option<event_store::sqlite::WriteGate>,
    },
}

/// Runs `$body` in one write transaction of the ledger's backend, `$sql` naming that backend's
/// module; commits after it. An error in the body rolls back (the transaction is dropped); a
/// failed commit is [`LedgerError::Commit`].
macro_rules! in_transaction {
    ($ledger:expr, |$tx:ident, $sql:ident| $body:expr) => {
        match &$ledger.backend {
            Backend::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                let value = {
                    use self::postgres as $sql;
                    $body
                };
                $tx.commit().await.map_err(LedgerError::Commit)?;
                Ok::<_, LedgerError>(value)
            }
            Backend::Sqlite { pool, gate } => {
                let _turn = match gate {
                    Some(gate) => Some(gate.lock().await),
                    None => None,
                };
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let value = {
                    use self::sqlite as $sql;
                    $body
                };
                $tx.commit().await.map_err(LedgerError::Commit)?;
                Ok::<_, LedgerError>(value)
            }
        }
    };
}

/// Runs `$function(pool, args…)` on the backend's read pool.
macro_rules! on_pool {
    ($ledger:expr, $function:ident($($arg:expr),*)) => {
        match &$ledger.backend {
            Backend::Postgres(pool) => postgres::$function(pool $(, $arg)*).await,
            Backend::Sqlite { pool, .. } => sqlite::$function(pool $(, $arg)*).await,
        }
    };
}

impl Ledger {
    /// Connects to the database a URL names (`postgres://…` or `sqlite:…`, the event store's)
    /// and creates the ledger's tables if missing.
    pub(crate) async fn open(database_url: &str) -> Result<Ledger, LedgerError> {
        let backend = if database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
        {
            let options = sqlx::postgres::PgConnectOptions::from_str(database_url)?;
            Backend::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(16)
                    // Longer than the store's bound: under a burst, payments queue for a
                    // connection rather than fail a charge attempt.
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await?,
            )
        } else if database_url.starts_with("sqlite:") {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(database_url)?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(30));
            let gate = event_store::sqlite::write_gate(options.get_filename());
            Backend::Sqlite {
                pool: sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await?,
                gate: Some(gate),
            }
        } else {
            return Err(LedgerError::UnsupportedUrl(database_url.to_string()));
        };
        Ledger::create_tables(Ledger { backend }).await
    }

    /// A ledger in an in-memory SQLite database, gone with this value: for unit tests.
    pub(crate) async fn in_memory() -> Result<Ledger, LedgerError> {
        let options = sqlx::sqlite::SqliteConnectOptions::from_str("sqlite::memory:")?;
        // One connection, never closed: the database lives exactly as long as it.
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        Ledger::create_tables(Ledger {
            backend: Backend::Sqlite { pool, gate: None },
        })
        .await
    }

    async fn create_tables(ledger: Ledger) -> Result<Ledger, LedgerError> {
        in_transaction!(ledger, |tx, sql| sql::create_tables(&mut tx).await?)?;
        Ok(ledger)
    }

    /// Closes the connections.
    pub(crate) async fn close(&self) {
        match &self.backend {
            Backend::Postgres(pool) => pool.close().await,
            Backend::Sqlite { pool, .. } => pool.close().await,
        }
    }

    /// One charge call, atomically: counts it on `key`'s row (created `Pending` if new), lets
    /// `decide` change the row (state, attempts, times taken) and stores what it changed.
    pub(crate) async fn charge<T, F>(
        &self,
        key: &str,
        charge_id: &str,
        decide: F,
    ) -> Result<T, LedgerError>
    where
        T: Send,
        F: FnOnce(&mut ChargeEntry) -> T + Send,
    {
        in_transaction!(self, |tx, sql| sql::charge(&mut tx, key, charge_id, decide)
            .await?)
    }

    /// One status query: `key`'s row, its status call counted; `None` for a key never seen.
    pub(crate) async fn charge_status(
        &self,
        key: &str,
    ) -> Result<Option<ChargeEntry>, LedgerError> {
        in_transaction!(self, |tx, sql| sql::charge_status(&mut tx, key).await?)
    }

    /// One refund call, atomically: finds the charge (`None` to `plan` unless charged) and its
    /// earlier refund, counts the call on the refund's row, and asks `plan`. For a new attempt,
    /// counts it under `attempt_key` and has `draw` decide it (given the attempt number); a
    /// refund it grants is stored.
    pub(crate) async fn refund<P, D>(
        &self,
        charge_id: &str,
        attempt_key: &str,
        plan: P,
        draw: D,
    ) -> Result<Result<RefundReceipt, GatewayError>, LedgerError>
    where
        P: FnOnce(Option<Money>, Option<RefundReceipt>) -> RefundPlan + Send,
        D: FnOnce(u32) -> Result<RefundReceipt, GatewayError> + Send,
    {
        in_transaction!(self, |tx, sql| sql::refund(
            &mut tx,
            charge_id,
            attempt_key,
            plan,
            draw
        )
        .await?)
    }

    /// `key`'s row, without counting anything.
    pub(crate) async fn charge_entry(&self, key: &str) -> Result<Option<ChargeEntry>, LedgerError> {
        on_pool!(self, charge_entry(key))
    }

    /// The refund row of a charge, without counting anything.
    pub(crate) async fn refund_entry(
        &self,
        charge_id: &str,
    ) -> Result<Option<RefundEntry>, LedgerError> {
        on_pool!(self, refund_entry(charge_id))
    }

    pub(crate) async fn totals(&self) -> Result<LedgerTotals, LedgerError> {
        on_pool!(self, totals())
    }
}

const CREATE_TABLES: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS zq_sim_charges ( \
         idempotency_key TEXT PRIMARY KEY, \
         charge_id TEXT NOT NULL, \
         status TEXT NOT NULL, \
         amount_minor BIGINT, \
         currency TEXT, \
         decline_reason TEXT, \
         attempts BIGINT NOT NULL, \
         times_taken BIGINT NOT NULL, \
         charge_calls BIGINT NOT NULL, \
         status_calls BIGINT NOT NULL, \
         created_at TIMESTAMPTZ NOT NULL, \
         updated_at TIMESTAMPTZ NOT NULL)",
    "CREATE TABLE IF NOT EXISTS zq_sim_refunds ( \
         charge_id TEXT PRIMARY KEY, \
         refund_id TEXT, \
         amount_minor BIGINT, \
         currency TEXT, \
         refund_calls BIGINT NOT NULL, \
         times_refunded BIGINT NOT NULL, \
         created_at TIMESTAMPTZ NOT NULL, \
         updated_at TIMESTAMPTZ NOT NULL)",
    "CREATE TABLE IF NOT EXISTS zq_sim_refund_attempts ( \
         idempotency_key TEXT PRIMARY KEY, \
         attempts BIGINT NOT NULL)",
    // Not UNIQUE: the charge id is derived from the key, so the key's uniqueness is its; a
    // second unique index would make two first charges of one key race on it, and Postgres
    // answers that race with an error instead of the `ON CONFLICT (idempotency_key)` path.
    "CREATE INDEX IF NOT EXISTS zq_sim_charges_charge_id ON zq_sim_charges (charge_id)",
];

const CHARGE_COLUMNS: &str = "idempotency_key, charge_id, status, amount_minor, currency, \
     decline_reason, attempts, times_taken, charge_calls, status_calls";

const STATUS_PENDING: &str = "pending";
const STATUS_CHARGED: &str = "charged";
const STATUS_DECLINED: &str = "declined";

/// A stored count as a `u32`, saturating (counts are never negative).
fn count(stored: i64) -> u32 {
    u32::try_from(stored.max(0)).unwrap_or(u32::MAX)
}

fn total(stored: i64) -> u64 {
    u64::try_from(stored).unwrap_or(0)
}

fn money(
    key: &str,
    amount_minor: Option<i64>,
    currency: Option<String>,
) -> Result<Option<Money>, LedgerError> {
    match (amount_minor, currency) {
        (Some(amount_minor), Some(currency)) => {
            let currency = Currency::from_str(&currency).map_err(|error| LedgerError::Corrupt {
                key: key.to_string(),
                reason: format!("currency {currency:?}: {error}"),
            })?;
            Ok(Some(Money::new(amount_minor, currency)))
        }
        (None, None) => Ok(None),
        _ => Err(LedgerError::Corrupt {
            key: key.to_string(),
            reason: "an amount without a currency, or the reverse".to_string(),
        }),
    }
}

fn charge_state(
    key: &str,
    status: &str,
    amount: Option<Money>,
    decline_reason: Option<String>,
) -> Result<ChargeState, LedgerError> {
    match (status, amount) {
        (STATUS_PENDING, _) => Ok(ChargeState::Pending),
        (STATUS_CHARGED, Some(amount)) => Ok(ChargeState::Charged { amount }),
        (STATUS_DECLINED, _) => Ok(ChargeState::Declined {
            reason: decline_reason.unwrap_or_default(),
        }),
        (status, _) => Err(LedgerError::Corrupt {
            key: key.to_string(),
            reason: format!("status {status:?} (charged needs an amount)"),
        }),
    }
}

/// The columns that store a [`ChargeState`]: status, amount, currency, decline reason.
fn state_columns(state: &ChargeState) -> (&'static str, Option<i64>, Option<&str>, Option<&str>) {
    match state {
        ChargeState::Pending => (STATUS_PENDING, None, None, None),
        ChargeState::Charged { amount } => (
            STATUS_CHARGED,
            Some(amount.amount_minor),
            Some(amount.currency.code()),
            None,
        ),
        ChargeState::Declined { reason } => (STATUS_DECLINED, None, None, Some(reason.as_str())),
    }
}

/// The ledger's operations for one sqlx backend; each backend instantiates it in a module of
/// its own.
macro_rules! ledger_sql {
    ($db:ty, $row:ty) => {
        use chrono::Utc;
        use domain::Money;
        use sqlx::Row;

        use super::{
            CHARGE_COLUMNS, CREATE_TABLES, ChargeEntry, LedgerError, LedgerTotals, RefundEntry,
            RefundPlan, charge_state, count, money, state_columns, total,
        };
        use crate::gateway::{GatewayError, RefundReceipt};

        type Transaction = sqlx::Transaction<'static, $db>;
        type Pool = sqlx::Pool<$db>;

        fn charge_entry_from(row: &$row) -> Result<ChargeEntry, LedgerError> {
            let key: String = row.try_get("idempotency_key")?;
            let status: String = row.try_get("status")?;
            let amount = money(&key, row.try_get("amount_minor")?, row.try_get("currency")?)?;
            let state = charge_state(&key, &status, amount, row.try_get("decline_reason")?)?;
            Ok(ChargeEntry {
                charge_id: row.try_get("charge_id")?,
                state,
                attempts: count(row.try_get("attempts")?),
                times_taken: count(row.try_get("times_taken")?),
                charge_calls: count(row.try_get("charge_calls")?),
                status_calls: count(row.try_get("status_calls")?),
                idempotency_key: key,
            })
        }

        fn refund_entry_from(row: &$row) -> Result<RefundEntry, LedgerError> {
            let charge_id: String = row.try_get("charge_id")?;
            let amount = money(
                &charge_id,
                row.try_get("amount_minor")?,
                row.try_get("currency")?,
            )?;
            Ok(RefundEntry {
                refund_id: row.try_get("refund_id")?,
                amount,
                refund_calls: count(row.try_get("refund_calls")?),
                times_refunded: count(row.try_get("times_refunded")?),
                charge_id,
            })
        }

        pub(super) async fn create_tables(tx: &mut Transaction) -> Result<(), LedgerError> {
            lock_schema(tx).await?;
            for statement in CREATE_TABLES {
                sqlx::query(statement).execute(&mut **tx).await?;
            }
            Ok(())
        }

        pub(super) async fn charge<T, F>(
            tx: &mut Transaction,
            key: &str,
            charge_id: &str,
            decide: F,
        ) -> Result<T, LedgerError>
        where
            F: FnOnce(&mut ChargeEntry) -> T,
        {
            let now = Utc::now();
            // Creates the row or locks it, counting the call either way.
            let row = sqlx::query(&format!(
                "INSERT INTO zq_sim_charges (idempotency_key, charge_id, status, attempts, \
                 times_taken, charge_calls, status_calls, created_at, updated_at) \
                 VALUES ($1, $2, 'pending', 0, 0, 1, 0, $3, $4) \
                 ON CONFLICT (idempotency_key) DO UPDATE SET \
                 charge_calls = zq_sim_charges.charge_calls + 1, updated_at = excluded.updated_at \
                 RETURNING {CHARGE_COLUMNS}"
            ))
            .bind(key)
            .bind(charge_id)
            .bind(now)
            .bind(now)
            .fetch_one(&mut **tx)
            .await?;
            let before = charge_entry_from(&row)?;
            let mut after = before.clone();
            let value = decide(&mut after);
            if (&after.state, after.attempts, after.times_taken)
                != (&before.state, before.attempts, before.times_taken)
            {
                let (status, amount_minor, currency, decline_reason) = state_columns(&after.state);
                sqlx::query(
                    "UPDATE zq_sim_charges SET status = $2, amount_minor = $3, currency = $4, \
                     decline_reason = $5, attempts = $6, times_taken = $7, updated_at = $8 \
                     WHERE idempotency_key = $1",
                )
                .bind(key)
                .bind(status)
                .bind(amount_minor)
                .bind(currency)
                .bind(decline_reason)
                .bind(i64::from(after.attempts))
                .bind(i64::from(after.times_taken))
                .bind(now)
                .execute(&mut **tx)
                .await?;
            }
            Ok(value)
        }

        pub(super) async fn charge_status(
            tx: &mut Transaction,
            key: &str,
        ) -> Result<Option<ChargeEntry>, LedgerError> {
            let row = sqlx::query(&format!(
                "UPDATE zq_sim_charges SET status_calls = zq_sim_charges.status_calls + 1 \
                 WHERE idempotency_key = $1 RETURNING {CHARGE_COLUMNS}"
            ))
            .bind(key)
            .fetch_optional(&mut **tx)
            .await?;
            row.as_ref().map(charge_entry_from).transpose()
        }

        pub(super) async fn refund<P, D>(
            tx: &mut Transaction,
            charge_id: &str,
            attempt_key: &str,
            plan: P,
            draw: D,
        ) -> Result<Result<RefundReceipt, GatewayError>, LedgerError>
        where
            P: FnOnce(Option<Money>, Option<RefundReceipt>) -> RefundPlan,
            D: FnOnce(u32) -> Result<RefundReceipt, GatewayError>,
        {
            let now = Utc::now();
            let charge = sqlx::query(
                "SELECT amount_minor, currency FROM zq_sim_charges \
                 WHERE charge_id = $1 AND status = 'charged'",
            )
            .bind(charge_id)
            .fetch_optional(&mut **tx)
            .await?;
            let charged = match &charge {
                Some(row) => money(charge_id, row.try_get("amount_minor")?, row.try_get("currency")?)?,
                None => None,
            };
            let Some(charged_amount) = charged else {
                return Ok(match plan(None, None) {
                    RefundPlan::Answer(answer) => answer,
                    RefundPlan::Attempt => Err(GatewayError::Invalid {
                        reason: format!("no charge {charge_id} to refund"),
                    }),
                });
            };
            // Creates the refund's row or locks it, counting the call either way.
            let earlier: Option<String> = sqlx::query_scalar(
                "INSERT INTO zq_sim_refunds (charge_id, refund_calls, times_refunded, \
                 created_at, updated_at) VALUES ($1, 1, 0, $2, $3) \
                 ON CONFLICT (charge_id) DO UPDATE SET \
                 refund_calls = zq_sim_refunds.refund_calls + 1, updated_at = excluded.updated_at \
                 RETURNING refund_id",
            )
            .bind(charge_id)
            .bind(now)
            .bind(now)
            .fetch_one(&mut **tx)
            .await?;
            let earlier = earlier.map(|refund_id| RefundReceipt { refund_id });
            match plan(Some(charged_amount), earlier) {
                RefundPlan::Answer(answer) => Ok(answer),
                RefundPlan::Attempt => {
                    let attempts: i64 = sqlx::query_scalar(
                        "INSERT INTO zq_sim_refund_attempts (idempotency_key, attempts) \
                         VALUES ($1, 1) ON CONFLICT (idempotency_key) DO UPDATE SET \
                         attempts = zq_sim_refund_attempts.attempts + 1 RETURNING attempts",
                    )
                    .bind(attempt_key)
                    .fetch_one(&mut **tx)
                    .await?;
                    let outcome = draw(count(attempts - 1));
                    if let Ok(receipt) = &outcome {
                        sqlx::query(
                            "UPDATE zq_sim_refunds SET refund_id = $2, amount_minor = $3, \
                             currency = $4, times_refunded = zq_sim_refunds.times_refunded + 1, \
                             updated_at = $5 WHERE charge_id = $1",
                        )
                        .bind(charge_id)
                        .bind(&receipt.refund_id)
                        .bind(charged_amount.amount_minor)
                        .bind(charged_amount.currency.code())
                        .bind(now)
                        .execute(&mut **tx)
                        .await?;
                    }
                    Ok(outcome)
                }
            }
        }

        pub(super) async fn charge_entry(
            pool: &Pool,
            key: &str,
        ) -> Result<Option<ChargeEntry>, LedgerError> {
            let row = sqlx::query(&format!(
                "SELECT {CHARGE_COLUMNS} FROM zq_sim_charges WHERE idempotency_key = $1"
            ))
            .bind(key)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(charge_entry_from).transpose()
        }

        pub(super) async fn refund_entry(
            pool: &Pool,
            charge_id: &str,
        ) -> Result<Option<RefundEntry>, LedgerError> {
            let row = sqlx::query(
                "SELECT charge_id, refund_id, amount_minor, currency, refund_calls, \
                 times_refunded FROM zq_sim_refunds WHERE charge_id = $1",
            )
            .bind(charge_id)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(refund_entry_from).transpose()
        }

        pub(super) async fn totals(pool: &Pool) -> Result<LedgerTotals, LedgerError> {
            let charges = sqlx::query(
                "SELECT CAST(COUNT(*) AS BIGINT) AS keys, \
                 CAST(COALESCE(SUM(charge_calls), 0) AS BIGINT) AS charge_calls, \
                 CAST(COALESCE(SUM(status_calls), 0) AS BIGINT) AS status_calls, \
                 CAST(COALESCE(SUM(times_taken), 0) AS BIGINT) AS charges_taken \
                 FROM zq_sim_charges",
            )
            .fetch_one(pool)
            .await?;
            let refunds = sqlx::query(
                "SELECT CAST(COALESCE(SUM(refund_calls), 0) AS BIGINT) AS refund_calls, \
                 CAST(COALESCE(SUM(times_refunded), 0) AS BIGINT) AS refunds_made \
                 FROM zq_sim_refunds",
            )
            .fetch_one(pool)
            .await?;
            Ok(LedgerTotals {
                keys: total(charges.try_get("keys")?),
                charge_calls: total(charges.try_get("charge_calls")?),
                status_calls: total(charges.try_get("status_calls")?),
                charges_taken: total(charges.try_get("charges_taken")?),
                refund_calls: total(refunds.try_get("refund_calls")?),
                refunds_made: total(refunds.try_get("refunds_made")?),
            })
        }
    };
}

mod postgres {
    ledger_sql!(sqlx::Postgres, sqlx::postgres::PgRow);

    /// Two processes creating the tables at once would race in Postgres's catalog (`CREATE
    /// TABLE IF NOT EXISTS` is not safe against a concurrent one): they take turns.
    async fn lock_schema(tx: &mut Transaction) -> Result<(), LedgerError> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('zq_sim_ledger schema'))")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

mod sqlite {
    ledger_sql!(sqlx::Sqlite, sqlx::sqlite::SqliteRow);

    /// `BEGIN IMMEDIATE` already makes schema changes take turns.
    async fn lock_schema(_tx: &mut Transaction) -> Result<(), LedgerError> {
        Ok(())
    }
}
