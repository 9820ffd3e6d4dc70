//! `zingqueue bench replay`: how fast a replay rebuilds the read models, over a log of at least
//! `--events` (default 1,000,000) booking events, on Postgres and on SQLite, each beside the raw
//! ceiling measured in the same run: pgbench inserting 100 rows per transaction from one client
//! (a rebuild is one sequential writer), and a raw SQLite connection inserting the same 100 event
//! rows per transaction.
//!
//! The log is what sales leave: shows of 5,000 seats; four bookings in five confirmed
//! (`requested`, `seats_held`, `payment_succeeded`, `show.seats_sold`, `confirmed`,
//! `email_sent`), one in five rejected (`requested`, `rejected`, `email_sent`); all decided by
//! the domain's deciders. It is written once and kept: a rerun on the same database or folder
//! only measures.
//!
//! Figure: log positions applied per second by a full rebuild (shadow tables from position 0,
//! then the switch), from start to switched, the median of `--runs`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use domain::booking::{self, BookingCommand, EmailChannel, RequestBooking};
use domain::show::{self, ScheduleShow, Section, ShowCommand};
use domain::{BookingId, Customer, DomainEvent, EventEnvelope, Money, SeatId, ShowId};
use event_store::{EventStore, ExpectedVersion, StreamAppend};
use indicatif::{ProgressBar, ProgressStyle};
use infra::stored_events::to_new_event;
use projections::{ReadModelDb, ReplayRequest, ReplayState, Replays};

use super::ceiling::{self, RawSqlite};
use super::{Comparison, Figure};
use crate::cli::ReplayBenchArgs;

const SEATS_PER_SHOW: u32 = 5_000;
/// Bookings per append (one transaction of about 500 events).
const BOOKINGS_PER_APPEND: usize = 100;
const WRITERS: usize = 4;

pub async fn run(args: ReplayBenchArgs) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir().context("creating a scratch folder")?;
    let mut comparisons = Vec::new();
    match &args.postgres_url {
        Some(url) => {
            let events = fill(url, args.events, "postgres").await?;
            let ours = rebuilds(url, &args).await?;
            ceiling::prepare_postgres(url).await?;
            // A rebuild is one sequential writer: the ceiling is one pgbench client.
            let raw =
                ceiling::pgbench_runs(url, args.runs, args.seconds, 1, 100, scratch.path()).await?;
            comparisons.push(Comparison {
                backend: "postgres",
                what: format!("full rebuild of the read models over {events} events (events/s)"),
                ours,
                ceiling_name: "pgbench",
                ceiling: raw,
                target: Some(0.5),
                latency: None,
            });
        }
        None => println!(
            "Postgres figures skipped: give --postgres-url (ZQ_BENCH_POSTGRES_URL) a database; \
             scripts/bench replay starts a throwaway server for you"
        ),
    }
    if !args.skip_sqlite {
        let dir = match &args.sqlite_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                dir.clone()
            }
            None => scratch.path().to_path_buf(),
        };
        let store_path = dir.join("zingqueue.db");
        let url = format!("sqlite://{}", store_path.display());
        let events = fill(&url, args.events, "sqlite").await?;
        let ours = rebuilds(&url, &args).await?;
        let mut raw_db = RawSqlite::open(&dir.join("raw.db"), &store_path).await?;
        let mut raw = Vec::new();
        for _ in 0..args.runs {
            raw.push(raw_db.insert_rows_per_second(args.seconds, 100).await?);
        }
        comparisons.push(Comparison {
            backend: "sqlite",
            what: format!("full rebuild of the read models over {events} events (events/s)"),
            ours,
            ceiling_name: "raw 100/tx",
            ceiling: Figure::new(raw),
            target: Some(0.5),
            latency: None,
        });
    }
    println!();
    println!(
        "== zingqueue bench replay: medians of {} runs ==",
        args.runs
    );
    for comparison in &comparisons {
        comparison.print();
    }
    Ok(())
}

/// `args.runs` full rebuilds; positions per second of each.
async fn rebuilds(url: &str, args: &ReplayBenchArgs) -> anyhow::Result<Figure> {
    let store = event_store::open(url).await?;
    let db = ReadModelDb::open(url).await?;
    let replays = Replays::new(store.clone(), db);
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let started = Instant::now();
        let status = replays.start(ReplayRequest {
            batch_size: args.batch_size,
            ..ReplayRequest::default()
        })?;
        let mut follow = replays
            .follow(status.id)
            .context("the replay just started is unknown")?;
        let bar = ProgressBar::new(1);
        bar.set_style(ProgressStyle::with_template(
            "rebuild {msg}: {bar:40} {human_pos}/{human_len} positions, {per_sec}, ETA {eta}",
        )?);
        bar.set_message(run.to_string());
        let done = loop {
            let status = follow.borrow_and_update().clone();
            bar.set_length(status.target.max(1));
            bar.set_position(status.position);
            if status.finished() {
                break status;
            }
            let _ = tokio::time::timeout(Duration::from_millis(250), follow.changed()).await;
        };
        bar.finish_and_clear();
        anyhow::ensure!(
            done.state == ReplayState::Done,
            "the rebuild failed: {:?}",
            done.error
        );
        let rate = done.position as f64 / started.elapsed().as_secs_f64();
        println!(
            "rebuild {run}: {} positions in {:.1} s, {rate:.0}/s",
            done.position,
            started.elapsed().as_secs_f64()
        );
        runs.push(rate);
    }
    store.close().await;
    Ok(Figure::new(runs))
}

/// Write sales into the log until it holds at least `target` events; returns its size.
async fn fill(url: &str, target: u64, backend: &str) -> anyhow::Result<u64> {
    let store = event_store::open(url).await?;
    let head = store.head().await?.0;
    if head < target {
        let bar = ProgressBar::new(target);
        bar.set_style(ProgressStyle::with_template(&format!(
            "{backend}: writing sales into the log {{bar:40}} {{human_pos}}/{{human_len}} events, \
             {{per_sec}}, ETA {{eta}}"
        ))?);
        bar.set_position(head);
        let tasks: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (store, bar) = (store.clone(), bar.clone());
                tokio::spawn(async move {
                    while store.head().await?.0 < target {
                        let appended = sell_out_a_show(&store).await?;
                        bar.inc(appended);
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        bar.finish();
    }
    let head = store.head().await?.0;
    store.close().await;
    Ok(head)
}

/// One show, scheduled and sold out: four bookings in five confirmed, one in five rejected.
/// Returns the events appended.
async fn sell_out_a_show(store: &Arc<dyn EventStore>) -> anyhow::Result<u64> {
    let show_id = ShowId::new();
    let rows = SEATS_PER_SHOW / 100;
    let schedule = ShowCommand::Schedule(ScheduleShow {
        show_id,
        name: "Replay Bench Live".into(),
        starts_at: Utc::now() + chrono::Duration::days(30),
        currency: "EUR".parse()?,
        sections: vec![Section {
            name: "A".into(),
            rows,
            seats_per_row: 100,
            price_cents: 4_500,
        }],
    });
    let scheduled = show::decide(&None, schedule)?;
    let mut show = scheduled.iter().fold(None, show::evolve);
    store
        .append(stream_append(
            show_id.stream_id(),
            &EventEnvelope::fresh(scheduled),
        )?)
        .await?;
    let mut appended = 1;
    let seats: Vec<SeatId> = (1..=rows)
        .flat_map(|row| (1..=100).map(move |number| SeatId::new("A", row, number)))
        .collect::<Result<_, _>>()?;
    for (chunk_number, chunk) in seats.chunks(BOOKINGS_PER_APPEND).enumerate() {
        let mut streams = Vec::with_capacity(chunk.len() + 1);
        let mut sold = Vec::new();
        for (n, seat) in chunk.iter().enumerate() {
            let booking_id = BookingId::new();
            let rejected = (chunk_number * BOOKINGS_PER_APPEND + n) % 5 == 4;
            let seats: BTreeSet<SeatId> = [seat.clone()].into();
            let customer = format!("c-{}", (chunk_number * 7 + n) % 1_000);
            let (events, sale) = booking_events(booking_id, show_id, &seats, &customer, rejected)?;
            if sale {
                let sale = show::decide(
                    &show,
                    ShowCommand::SellSeats {
                        booking_id,
                        seats: seats.clone(),
                    },
                )?;
                for event in &sale {
                    show = show::evolve(show.take(), event);
                }
                sold.extend(sale);
            }
            streams.push(stream_append(booking_id.stream_id(), &events)?);
        }
        streams.push(stream_append(
            show_id.stream_id(),
            &EventEnvelope::fresh(sold),
        )?);
        appended += streams.iter().map(|s| s.events.len() as u64).sum::<u64>();
        store.append_many(streams).await?;
    }
    Ok(appended)
}

/// A booking's events (and whether its seats are sold on the show stream).
fn booking_events(
    booking_id: BookingId,
    show_id: ShowId,
    seats: &BTreeSet<SeatId>,
    customer: &str,
    rejected: bool,
) -> anyhow::Result<(Vec<EventEnvelope>, bool)> {
    let request = RequestBooking {
        booking_id,
        show_id,
        seats: seats.clone(),
        customer: Customer::new(customer, &format!("{customer}@example.com"), customer)?,
        payment_method: Some("sim_ok".into()),
        amount: Money::new(4_500, "EUR".parse()?),
        requested_at: Utc::now(),
        access: Default::default(),
    };
    let mut commands = vec![BookingCommand::Request(request)];
    if rejected {
        commands.push(BookingCommand::Reject {
            taken: seats.clone(),
        });
    } else {
        commands.extend([
            BookingCommand::HoldSeats {
                expires_at: Utc::now() + chrono::Duration::minutes(10),
            },
            BookingCommand::RecordPayment {
                charge_id: format!("ch-{booking_id}"),
                amount: Money::new(4_500, "EUR".parse()?),
            },
            BookingCommand::Confirm,
        ]);
    }
    let mut state = None;
    let mut events: Vec<DomainEvent> = Vec::new();
    for command in commands {
        for event in booking::decide(&state, command)? {
            state = booking::evolve(state, &event);
            events.push(event.into());
        }
    }
    let mut envelopes = EventEnvelope::fresh(events);
    let outcome = envelopes
        .last()
        .map(|envelope| envelope.event_id)
        .context("a booking without events")?;
    let email = booking::decide(
        &state,
        BookingCommand::RecordEmailSent {
            about_event_id: outcome,
            message_id: format!("<{outcome}@zingqueue>"),
            channel: EmailChannel::MailFolder,
        },
    )?;
    envelopes.extend(EventEnvelope::fresh(email));
    Ok((envelopes, !rejected))
}

fn stream_append(stream_id: String, envelopes: &[EventEnvelope]) -> anyhow::Result<StreamAppend> {
    let now = Utc::now();
    let events = envelopes
        .iter()
        .map(|envelope| to_new_event(envelope, now))
        .collect::<Result<_, _>>()?;
    Ok(StreamAppend::new(stream_id, ExpectedVersion::Any, events))
}
