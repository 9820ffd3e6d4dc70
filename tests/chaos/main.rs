//! The chaos suite (issue 16): ZingQueue run as separate processes on real servers, a contended
//! sale with every kind of card running throughout, and one fault after another — Postgres
//! restarted (fast, then immediate), Redis restarted from an older snapshot and flushed, the
//! broker killed and restarted, every service killed with SIGKILL and restarted in turn, a
//! payment member joining and leaving. After each fault: every accepted booking ends, no seat
//! is sold twice, nobody got a `500`; at the end, money taken equals confirmed plus refunded
//! bookings exactly (from the simulator's durable ledger), every outcome was emailed at least
//! once and a duplicate email only follows a notifier kill. It prints the recovery time of each
//! fault (fault over → a new booking confirmed).
//!
//! Servers, all from testkit: a Postgres of the suite's own (restarted), a Redis with RDB
//! persistence of its own (restarted, flushed), nisshi with its log in a database of the shared
//! Postgres (killed and restarted: a real Kafka keeps its log), aiosmtpd.
//!
//! `ZQ_CHAOS_ROUNDS` (default 1) repeats the whole list of faults.

#[path = "../binary/support/mod.rs"]
mod support;

mod cluster;
mod ledger;
mod sale;

use std::time::{Duration, Instant};

use cluster::{Cluster, Fault};
use sale::Sale;

#[test]
fn the_saga_rides_out_every_fault_in_turn() {
    let rounds: usize = std::env::var("ZQ_CHAOS_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(1);
    let started = Instant::now();
    let mut cluster = Cluster::start();
    let sale = Sale::start(&cluster);
    sale.wait_for_accepted(30, Duration::from_secs(60));
    let mut recoveries: Vec<(Fault, Duration)> = Vec::new();
    for round in 0..rounds {
        for fault in Fault::ALL {
            eprintln!("chaos: round {} fault {fault:?}", round + 1);
            cluster.inject(fault);
            // Recovery: from the fault being over to a new booking confirmed.
            let recovery = sale.probe_confirmed(&cluster, Duration::from_secs(90));
            recoveries.push((fault, recovery));
            // Every booking accepted so far ends; nothing sold twice; no 500; every component
            // says it is ready again.
            sale.check_so_far(&cluster, Duration::from_secs(120));
            cluster.wait_all_ready(Duration::from_secs(60));
        }
    }
    let outcome = sale.stop();
    cluster.assert_all_running();
    let settled = outcome.settle(&cluster, Duration::from_secs(180));
    settled.check_money(&cluster);
    let duplicates = settled.check_emails(&cluster);
    eprintln!(
        "chaos: {} bookings accepted ({} confirmed), {} answers 503, {duplicates} duplicate \
         emails after {} notifier kills, {} s in all",
        settled.bookings.len(),
        settled.confirmed(),
        outcome.unavailable,
        cluster.notifier_kills,
        started.elapsed().as_secs()
    );
    println!("{}", recovery_table(&recoveries));
    println!("{}", unrecorded_window(&cluster.metrics_of("notifier")));
}

/// How long an email accepted by the SMTP server waited for its `EmailSent` to be stored (the
/// window in which a notifier crash sends it again), from the last notifier's histogram.
fn unrecorded_window(page: &str) -> String {
    let value = |series: &str| {
        page.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let count = value("zq_email_unrecorded_seconds_count");
    let sum = value("zq_email_unrecorded_seconds_sum");
    // The smallest bucket bound holding 99% of the emails: an upper bound of the p99.
    let p99 = page
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("zq_email_unrecorded_seconds_bucket{le=\"")?;
            let (bound, n) = rest.split_once("\"} ")?;
            Some((bound.parse::<f64>().ok()?, n.trim().parse::<f64>().ok()?))
        })
        .find(|(_, n)| *n >= count * 0.99)
        .map_or(f64::NAN, |(bound, _)| bound);
    format!(
        "chaos: email accepted → EmailSent stored: {count} emails, mean {:.1} ms, p99 ≤ {:.0} ms",
        if count > 0.0 {
            sum / count * 1000.0
        } else {
            0.0
        },
        p99 * 1000.0
    )
}

/// The recovery times as a Markdown table (median and worst per fault over the rounds).
fn recovery_table(recoveries: &[(Fault, Duration)]) -> String {
    let mut table = String::from("| fault | recovery (median) | recovery (worst) | rounds |\n");
    table.push_str("|---|---:|---:|---:|\n");
    for fault in Fault::ALL {
        let mut times: Vec<Duration> = recoveries
            .iter()
            .filter(|(f, _)| *f == fault)
            .map(|(_, t)| *t)
            .collect();
        if times.is_empty() {
            continue;
        }
        times.sort();
        let median = times[times.len() / 2];
        let worst = times[times.len() - 1];
        table.push_str(&format!(
            "| {} | {:.2} s | {:.2} s | {} |\n",
            fault.describe(),
            median.as_secs_f64(),
            worst.as_secs_f64(),
            times.len()
        ));
    }
    table
}
