//! The group-commit writer every backend runs.
//!
//! Appends are not written by the task that asks for them. They are queued to one writer task,
//! which takes whatever is waiting (up to a bound), decides each append on its own
//! ([`crate::plan`]) and writes them all in one transaction. Under load a transaction carries many
//! appends, so the cost of a commit (and of the log-head lock that keeps positions dense and in
//! commit order) is shared; with no load a batch is a single append and nothing waits for a timer.
//!
//! Backpressure: the queue is bounded, so callers wait (asynchronously) when the writer falls
//! behind instead of piling up memory.
//!
//! Cancellation: an append that has joined the queue is written even if its caller stops waiting;
//! a caller that gave up retries with the same event ids and gets the original positions back.
//!
//! Shutdown: [`Writer::close`] closes the queue (later appends get [`StoreError::Closed`]), lets
//! the writer write every append already queued, and returns when it has. Dropping the store
//! without closing it ends the writer the same way once the runtime lets it run.

use std::future::Future;
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug_span, warn};

use crate::error::StoreError;
use crate::event::{AppendResult, Position, StreamAppend};

/// How many appends may wait for the writer.
const QUEUE_CAPACITY: usize = 4096;
/// At most this many events go into one transaction (an append is never split).
const MAX_BATCH_EVENTS: usize = 5000;

struct PendingAppend {
    streams: Vec<StreamAppend>,
    reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

/// What a backend writes one batch with.
pub(crate) trait BatchSink: Send + 'static {
    /// Decide and write `appends` in one transaction. On `Ok`, the outcome of each append (in
    /// order) and the log head after the commit; on `Err`, nothing was written.
    fn write_batch<'a>(
        &'a mut self,
        appends: &'a [&'a [StreamAppend]],
    ) -> impl Future<Output = Result<(Vec<Result<AppendResult, StoreError>>, Position), StoreError>>
    + Send
    + 'a;
}

/// A store's handle on its writer task.
pub(crate) struct Writer {
    queue: mpsc::Sender<PendingAppend>,
    close: Mutex<Option<oneshot::Sender<()>>>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    pub(crate) fn spawn(sink: impl BatchSink, head_hint: watch::Sender<Position>) -> Writer {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let (close, closed) = oneshot::channel();
        let task = tokio::spawn(run_writer(sink, receiver, closed, head_hint));
        Writer {
            queue,
            close: Mutex::new(Some(close)),
            task: tokio::sync::Mutex::new(Some(task)),
        }
    }

    /// Queue an append and wait for its answer: the part of `append_many` every backend shares.
    pub(crate) async fn submit(
        &self,
        streams: Vec<StreamAppend>,
    ) -> Result<AppendResult, StoreError> {
        crate::plan::validate(&streams)?;
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(PendingAppend { streams, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Refuse new appends, write the queued ones, and return once the writer has stopped.
    pub(crate) async fn close(&self) {
        let signal = match self.close.lock() {
            Ok(mut close) => close.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(signal) = signal {
            let _ = signal.send(());
        }
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

async fn run_writer(
    mut sink: impl BatchSink,
    mut queue: mpsc::Receiver<PendingAppend>,
    mut closed: oneshot::Receiver<()>,
    head_hint: watch::Sender<Position>,
) {
    loop {
        let first = tokio::select! {
            // Prefer writing what is queued; close only when the queue is idle or closed.
            biased;
            next = queue.recv() => match next {
                Some(first) => first,
                None => break,
            },
            _ = &mut closed, if !queue.is_closed() => {
                // No new appends from now on; the loop drains what is buffered, then `recv`
                // answers `None`.
                queue.close();
                continue;
            }
        };
        let mut events = event_count(&first);
        let mut batch = vec![first];
        while events < MAX_BATCH_EVENTS {
            match queue.try_recv() {
                Ok(next) => {
                    events += event_count(&next);
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let span = debug_span!("append_batch", appends = batch.len(), events);
        write_and_answer(&mut sink, batch, &head_hint)
            .instrument(span)
            .await;
    }
}

async fn write_and_answer(
    sink: &mut impl BatchSink,
    batch: Vec<PendingAppend>,
    head_hint: &watch::Sender<Position>,
) {
    let appends: Vec<&[StreamAppend]> = batch.iter().map(|p| p.streams.as_slice()).collect();
    match sink.write_batch(&appends).await {
        Ok((outcomes, head)) => {
            announce(head_hint, head);
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                // The caller may have given up waiting; its append stands all the same.
                let _ = pending.reply.send(outcome);
            }
        }
        Err(error) if batch.len() > 1 && !error.is_transient() => {
            // Something in the batch broke the transaction in a way the planner could not
            // foresee (a trigger, a constraint added by hand). Find the culprits by halving.
            warn!(%error, appends = batch.len(), "batch failed; isolating the appends at fault");
            isolate_failures(sink, batch, head_hint).await;
        }
        Err(error) => {
            warn!(%error, appends = batch.len(), "batch failed");
            let reason = error.to_string();
            let mut batch = batch.into_iter();
            if let Some(first) = batch.next() {
                let _ = first.reply.send(Err(error));
            }
            for pending in batch {
                let _ = pending
                    .reply
                    .send(Err(StoreError::Unavailable(reason.clone())));
            }
        }
    }
}

/// Write a failed batch again in halves, and halves of the halves that fail, until every append
/// is written or has failed alone: only the appends at fault fail, in far fewer transactions than
/// one per append. Arrival order is kept (the first half is written first). If the database
/// itself goes away meanwhile, the rest are answered at once instead of waiting on it.
async fn isolate_failures(
    sink: &mut impl BatchSink,
    batch: Vec<PendingAppend>,
    head_hint: &watch::Sender<Position>,
) {
    // A stack of groups still to write; the group on top is the earliest.
    let mut groups = halves(batch);
    let mut unavailable: Option<String> = None;
    while let Some(group) = groups.pop() {
        if let Some(reason) = &unavailable {
            for pending in group {
                let _ = pending
                    .reply
                    .send(Err(StoreError::Unavailable(reason.clone())));
            }
            continue;
        }
        let appends: Vec<&[StreamAppend]> = group.iter().map(|p| p.streams.as_slice()).collect();
        match sink.write_batch(&appends).await {
            Ok((outcomes, head)) => {
                announce(head_hint, head);
                for (pending, outcome) in group.into_iter().zip(outcomes) {
                    let _ = pending.reply.send(outcome);
                }
            }
            Err(error) if error.is_transient() => {
                unavailable = Some(error.to_string());
                groups.push(group);
            }
            Err(error) if group.len() == 1 => {
                if let Some(pending) = group.into_iter().next() {
                    let _ = pending.reply.send(Err(error));
                }
            }
            Err(_) => groups.extend(halves(group)),
        }
    }
}

/// Split a group in two, as stack entries: the second half below the first.
fn halves(mut group: Vec<PendingAppend>) -> Vec<Vec<PendingAppend>> {
    let second = group.split_off(group.len().div_ceil(2));
    [second, group]
        .into_iter()
        .filter(|g| !g.is_empty())
        .collect()
}

/// Tell readers of a newer head; an older or equal one changes nothing.
pub(crate) fn announce(head_hint: &watch::Sender<Position>, head: Position) {
    head_hint.send_if_modified(|known| {
        if head > *known {
            *known = head;
            true
        } else {
            false
        }
    });
}

fn event_count(pending: &PendingAppend) -> usize {
    pending.streams.iter().map(|s| s.events.len()).sum()
}
