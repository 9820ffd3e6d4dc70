//! `zingqueue dlq list|show|redrive`: the dead letters in the database, the same as the admin
//! routes `/admin/dead-letters…`. A redrive is a request the letter's own consumer group picks up
//! (within a second) and runs through its handler; asking twice runs it once.

use std::time::{Duration, Instant};

use anyhow::Context;
use booking_api::dead_letters::DeadLetterView;
use event_store::{DeadLetterQuery, DeadLetterStatus};

use crate::cli::{DlqCommand, GlobalArgs};

pub async fn run(global: &GlobalArgs, command: DlqCommand) -> anyhow::Result<()> {
    let location = super::store_location(global)?;
    let store = event_store::open(location.url())
        .await
        .with_context(|| format!("opening the event store at {}", location.display_url()))?;
    match command {
        DlqCommand::List {
            group,
            cause,
            status,
            limit,
        } => {
            let status = status
                .as_deref()
                .map(|text| {
                    DeadLetterStatus::parse(text).with_context(|| {
                        format!("{text:?} is not a status (dead, redrive_requested, redriven)")
                    })
                })
                .transpose()?;
            let letters = store
                .dead_letters(&DeadLetterQuery {
                    group,
                    cause,
                    status,
                    limit,
                })
                .await?;
            for letter in letters {
                println!("{}", serde_json::to_string(&DeadLetterView::from(letter))?);
            }
        }
        DlqCommand::Show { id } => {
            let letter = store
                .dead_letter(id)
                .await?
                .with_context(|| format!("there is no dead letter {id}"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&DeadLetterView::from(letter))?
            );
        }
        DlqCommand::Redrive { id, wait } => {
            let status = store
                .request_redrive(id)
                .await?
                .with_context(|| format!("there is no dead letter {id}"))?;
            println!("dead letter {id}: {}", status.as_str());
            let deadline = Instant::now() + Duration::from_secs(wait);
            let mut status = status;
            while status == DeadLetterStatus::RedriveRequested && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                status = store
                    .dead_letter(id)
                    .await?
                    .map_or(status, |letter| letter.status);
            }
            if wait > 0 {
                println!("dead letter {id}: {}", status.as_str());
                if status == DeadLetterStatus::RedriveRequested {
                    anyhow::bail!(
                        "its group did not run the redrive within {wait} s; is it running?"
                    );
                }
            }
        }
    }
    Ok(())
}
