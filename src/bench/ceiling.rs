//! The raw ceilings the store is measured against: what the same database does with the same
//! rows and no event store in between.
//!
//! - Postgres: `pgbench` running one-row and 100-row INSERT scripts into `zq_bench_raw` (the
//!   shape and indexes of `zq_events`), and `psql`'s `\copy (select … order by position)` of the
//!   whole log to /dev/null.
//! - SQLite: one connection (same pragmas as the store) inserting the same rows one transaction
//!   per append, and one query reading the whole log in position order.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, Row};

/// The table the raw inserts go to: the columns, key and unique indexes of `zq_events`.
const POSTGRES_RAW_TABLE: &str = "
    DROP TABLE IF EXISTS zq_bench_raw;
    CREATE TABLE zq_bench_raw (
        position       bigserial   PRIMARY KEY,
        event_id       uuid        NOT NULL UNIQUE,
        stream_id      text        NOT NULL,
        stream_version bigint      NOT NULL,
        event_type     text        NOT NULL,
        data           json        NOT NULL,
        correlation_id uuid,
        causation_id   uuid,
        partition_key  text,
        trace_context  text,
        occurred_at    timestamptz NOT NULL,
        recorded_at    timestamptz NOT NULL,
        UNIQUE (stream_id, stream_version)
    );";

/// pgbench script: one row per transaction, a new stream each time (like a new booking).
const PGBENCH_ONE_ROW: &str = "\\set n random(1, 9000000000000000000)
INSERT INTO zq_bench_raw (event_id, stream_id, stream_version, event_type, data, correlation_id, \
causation_id, partition_key, occurred_at, recorded_at) VALUES (gen_random_uuid(), \
'bench-' || :client_id || '-' || :n, 1, 'bench.appended.v1', '{\"seat\":\"A-1-1\",\"n\":1}', \
gen_random_uuid(), NULL, 'show-1', now(), clock_timestamp());
";

/// pgbench script: 100 rows of one stream per transaction.
const PGBENCH_HUNDRED_ROWS: &str = "\\set n random(1, 9000000000000000000)
INSERT INTO zq_bench_raw (event_id, stream_id, stream_version, event_type, data, correlation_id, \
causation_id, partition_key, occurred_at, recorded_at) SELECT gen_random_uuid(), \
'bench-' || :client_id || '-' || :n, g, 'bench.appended.v1', '{\"seat\":\"A-1-1\",\"n\":1}', \
gen_random_uuid(), NULL, 'show-1', now(), clock_timestamp() FROM generate_series(1, 100) AS g;
";

pub async fn prepare_postgres(url: &str) -> anyhow::Result<()> {
    let mut connection = sqlx::PgConnection::connect(url)
        .await
        .context("connecting to the benchmark Postgres")?;
    sqlx::raw_sql(POSTGRES_RAW_TABLE)
        .execute(&mut connection)
        .await
        .context("creating zq_bench_raw")?;
    Ok(())
}

/// Rows per second pgbench inserts with `clients` clients for `seconds`, one row or 100 rows a
/// transaction.
pub fn pgbench_rows_per_second(
    url: &str,
    clients: usize,
    seconds: u64,
    rows_per_transaction: u32,
    scratch: &Path,
) -> anyhow::Result<f64> {
    let script = scratch.join(format!("pgbench-{rows_per_transaction}.sql"));
    let text = match rows_per_transaction {
        1 => PGBENCH_ONE_ROW,
        100 => PGBENCH_HUNDRED_ROWS,
        other => bail!("no pgbench script for {other} rows"),
    };
    std::fs::write(&script, text)?;
    let threads = clients.clamp(1, 2);
    let output = Command::new("pgbench")
        .args(["-n", "-M", "prepared"])
        .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &seconds.to_string(), "-f"])
        .arg(&script)
        .arg(url)
        .output()
        .context("running pgbench (Debian package postgresql-client; see scripts/install-deps)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tps = stdout
        .lines()
        .find_map(|line| {
            let rest = line.trim().strip_prefix("tps = ")?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .with_context(|| format!("no tps line in pgbench's output: {stdout}"))?;
    Ok(tps * f64::from(rows_per_transaction))
}

/// Rows per second `psql \copy` reads the whole log in position order, writing it to /dev/null.
pub fn psql_copy_rows_per_second(url: &str, rows: u64) -> anyhow::Result<f64> {
    let copy = "\\copy (SELECT position, event_id, stream_id, stream_version, event_type, data, \
                correlation_id, causation_id, partition_key, trace_context, occurred_at, \
                recorded_at FROM zq_events ORDER BY position) TO '/dev/null'";
    let started = Instant::now();
    let output = Command::new("psql")
        .args([
            "--no-psqlrc",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            copy,
        ])
        .output()
        .context("running psql (Debian package postgresql-client)")?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "psql \\copy failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(rows as f64 / elapsed.as_secs_f64())
}

/// A plain SQLite connection with the store's pragmas, on its own database file.
pub struct RawSqlite {
    connection: sqlx::SqliteConnection,
}

impl RawSqlite {
    pub async fn open(path: &Path) -> anyhow::Result<RawSqlite> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let mut connection = sqlx::SqliteConnection::connect_with(&options).await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS zq_bench_raw (
                position       INTEGER PRIMARY KEY,
                event_id       BLOB    NOT NULL UNIQUE,
                stream_id      TEXT    NOT NULL,
                stream_version INTEGER NOT NULL,
                event_type     TEXT    NOT NULL,
                data           TEXT    NOT NULL,
                correlation_id BLOB,
                causation_id   BLOB,
                partition_key  TEXT,
                trace_context  TEXT,
                occurred_at    TEXT    NOT NULL,
                recorded_at    TEXT    NOT NULL,
                UNIQUE (stream_id, stream_version)
            )",
        )
        .execute(&mut connection)
        .await?;
        Ok(RawSqlite { connection })
    }

    /// Rows per second for `seconds`, `rows_per_transaction` rows of a new stream per
    /// transaction (one writer: SQLite has one at a time anyway).
    pub async fn insert_rows_per_second(
        &mut self,
        seconds: u64,
        rows_per_transaction: usize,
    ) -> anyhow::Result<f64> {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let mut rows = 0u64;
        let mut stream = 0u64;
        while Instant::now() < deadline {
            stream += 1;
            let stream_id = format!("raw-{}-{stream}", uuid::Uuid::now_v7());
            let now = chrono::Utc::now();
            let mut tx = self.connection.begin_with("BEGIN IMMEDIATE").await?;
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO zq_bench_raw (event_id, stream_id, stream_version, event_type, data, \
                 correlation_id, causation_id, partition_key, trace_context, occurred_at, \
                 recorded_at) ",
            );
            insert.push_values(1..=rows_per_transaction as i64, |mut values, version| {
                values
                    .push_bind(uuid::Uuid::now_v7())
                    .push_bind(&stream_id)
                    .push_bind(version)
                    .push_bind("bench.appended.v1")
                    .push_bind(r#"{"seat":"A-1-1","n":1}"#)
                    .push_bind(Some(uuid::Uuid::now_v7()))
                    .push_bind(None::<uuid::Uuid>)
                    .push_bind("show-1")
                    .push_bind(None::<String>)
                    .push_bind(now)
                    .push_bind(now);
            });
            insert.build().execute(&mut *tx).await?;
            tx.commit().await?;
            rows += rows_per_transaction as u64;
        }
        Ok(rows as f64 / started.elapsed().as_secs_f64())
    }

    /// Rows per second one query reads `zq_events` of the store's database in position order.
    pub async fn read_rows_per_second(store_path: &Path) -> anyhow::Result<(u64, f64)> {
        let options = SqliteConnectOptions::new()
            .filename(store_path)
            .read_only(true);
        let mut connection = sqlx::SqliteConnection::connect_with(&options).await?;
        let started = Instant::now();
        let mut rows = 0u64;
        let mut bytes = 0usize;
        let mut stream = sqlx::query(
            "SELECT position, event_id, stream_id, stream_version, event_type, data, \
             correlation_id, causation_id, partition_key, trace_context, occurred_at, recorded_at \
             FROM zq_events ORDER BY position",
        )
        .fetch(&mut connection);
        while let Some(row) = stream.try_next().await? {
            // Touch the data so the row is really read.
            bytes += row.try_get::<&str, _>("data")?.len();
            rows += 1;
        }
        anyhow::ensure!(bytes > 0 || rows == 0, "read rows carried no data");
        Ok((rows, rows as f64 / started.elapsed().as_secs_f64()))
    }
}
