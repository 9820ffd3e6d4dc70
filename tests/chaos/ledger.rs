//! The payment simulator's durable ledger, read from its tables (`payment/src/ledger.rs`
//! documents them) with psql: the money the system really took and gave back, whatever the
//! events say.

use std::process::Command;

pub struct Totals {
    /// Charges that took money.
    pub charges_taken: usize,
    /// Refunds that gave it back.
    pub refunds: usize,
}

fn psql() -> std::path::PathBuf {
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("bin/psql"))
        .find(|path| path.exists());
    debian.unwrap_or_else(|| "psql".into())
}

fn scalar(database_url: &str, sql: &str) -> usize {
    let output = Command::new(psql())
        .args([
            "--no-psqlrc",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            database_url,
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs (package postgresql-client)");
    assert!(
        output.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "{sql} answered {:?}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
}

pub fn totals(database_url: &str) -> Totals {
    Totals {
        charges_taken: scalar(
            database_url,
            "SELECT COALESCE(SUM(times_taken), 0) FROM zq_sim_charges",
        ),
        refunds: scalar(
            database_url,
            "SELECT COALESCE(SUM(times_refunded), 0) FROM zq_sim_refunds",
        ),
    }
}
