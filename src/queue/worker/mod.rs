//! Each replica's worker: takes ready messages, paces those not paced at acceptance
//! onto reserved rate-limit cells (`pacing`), marks each `sending` in the store before
//! its one attempt, and records what the attempt came to. It also closes attempts whose replica died (`unknown`, never
//! re-sent), moves waiting messages back when their time comes, and reports the depth.

mod send;

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use metrics::Counter;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::message::now_ms;
use super::pacing::{self, Slot};
use super::{AsyncConfig, Message, MessageError, Placement, QueueStore, Status, Taken};
use crate::delivery::Paced;
use crate::domain::BotRegistry;

/// How often the worker looks for work when nothing woke it.
const POLL: Duration = Duration::from_millis(100);
/// How often lapsed leases are closed and the depth reported.
const SWEEP: Duration = Duration::from_millis(500);
/// Messages being handled at once by one worker (most of them pacing or waiting for a
/// permit to Jelou, which bounds the attempts).
const HANDLING: usize = 1024;
/// How long a `sending` message outlives its attempt's timeout without an answer
/// before it is taken as interrupted.
pub const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// A reserved cell this close is taken as now.
const NOW_SLACK_MS: u64 = 5;
/// A reserved cell this close (ms) is waited for in hand (its entry held, well within
/// the claim time); a later one in the store's waiting set.
const HOLD_MS: u64 = 250;

/// Whether a message just queued should wake this replica's worker: it is ready, or
/// due before the next poll. A later one is found by the poll before its time, which
/// then sleeps until it.
pub fn wakes_worker(message: &Message) -> bool {
    message.not_before_ms <= now_ms() + POLL.as_millis() as u64
}

/// What the worker needs.
#[derive(Clone)]
pub struct Worker {
    pub queue: Arc<dyn QueueStore>,
    pub paced: Paced,
    pub bots: Arc<BotRegistry>,
    pub config: AsyncConfig,
    /// Woken when this replica queues a message, so it need not wait for the poll.
    pub wake: Arc<Notify>,
    /// Callers told of their messages' final statuses (a callback each).
    pub subscribers: Arc<BTreeSet<String>>,
}

impl Worker {
    /// Runs until `draining` turns true; then stops taking work, lets the attempts it
    /// has out finish, and puts back what it took but did not start.
    pub async fn run(self, mut draining: watch::Receiver<bool>) {
        let handling = Arc::new(Semaphore::new(HANDLING));
        let mut tasks = JoinSet::new();
        let mut last_sweep: Option<Instant> = None;
        loop {
            if *draining.borrow() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            if last_sweep.is_none_or(|at| at.elapsed() >= SWEEP) {
                last_sweep = Some(Instant::now());
                self.sweep().await;
            }
            if let Err(error) = self.queue.promote(now_ms()).await {
                tracing::debug!(%error, "queue: cannot move due messages");
            }
            let room = handling.available_permits().min(64);
            let taken = if room == 0 {
                Vec::new()
            } else {
                match self.queue.take(room).await {
                    Ok(taken) => taken,
                    Err(error) => {
                        tracing::debug!(%error, "queue: cannot take messages");
                        Vec::new()
                    }
                }
            };
            if taken.is_empty() {
                // Until the next message is due (so paced messages leave on their
                // reserved time, not on the poll's), a wake-up, or the poll.
                let next = match self.queue.next_due().await {
                    Ok(Some(at)) => Duration::from_millis(at.saturating_sub(now_ms())),
                    _ => POLL,
                };
                let pause = next.clamp(Duration::from_millis(1), POLL);
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(pause) => {}
                    _ = draining.changed() => {}
                }
                continue;
            }
            for taken in taken {
                let Ok(slot) = handling.clone().acquire_owned().await else {
                    break;
                };
                let worker = self.clone();
                let draining = draining.clone();
                // The message's lines carry its id, its caller's request id and its bot.
                let span = tracing::info_span!(
                    "queued",
                    id = %taken.message.id,
                    request_id = %taken.message.request_id,
                    bot = %taken.message.bot,
                );
                tasks.spawn(
                    async move {
                        worker.handle(taken, draining).await;
                        drop(slot);
                    }
                    .instrument(span),
                );
            }
        }
        let out = tasks.len();
        if out > 0 {
            tracing::info!(
                messages = out,
                "queue: finishing the attempts out before exit"
            );
        }
        while tasks.join_next().await.is_some() {}
    }

    /// One taken message, from pacing to its attempt's outcome.
    async fn handle(&self, taken: Taken, draining: watch::Receiver<bool>) {
        let Taken { entry, mut message } = taken;
        let now = now_ms();
        if message.status != Status::Queued {
            // Final, or being sent: this entry is a stale copy.
            if let Err(error) = self.queue.drop_entry(&entry).await {
                tracing::debug!(%error, "queue: cannot drop a stale entry");
            }
            return;
        }
        if message.not_before_ms > now + NOW_SLACK_MS {
            // Early: a stale copy, or a replica whose clock runs ahead promoted it. It
            // goes (back) to wait for its time; never dropped, so it cannot be lost.
            self.commit(
                &message,
                Placement::Due(message.not_before_ms),
                Some(&entry),
            )
            .await;
            return;
        }
        if now >= message.expires_ms {
            let last = message.error.take();
            message.error = Some(MessageError::expired(last.as_ref()));
            message.set(Status::Expired);
            self.commit(&message, self.closed(), Some(&entry)).await;
            return;
        }
        let Some(request) = message.request(&self.bots) else {
            message.error = Some(MessageError::bot_gone(&message.bot));
            message.set(Status::Failed);
            self.commit(&message, self.closed(), Some(&entry)).await;
            return;
        };
        match message.slot_ms {
            Some(slot) if slot > now + NOW_SLACK_MS => {
                self.commit(&message, Placement::Due(slot), Some(&entry))
                    .await;
                return;
            }
            Some(_) => {}
            None => {
                let wait_until = match pacing::reserve(&self.paced, &request, &mut message).await {
                    Ok(Slot::At(at)) if at <= now_ms() + HOLD_MS => {
                        // Its cell comes soon: wait for it here rather than through the
                        // store, so that it leaves on time.
                        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms())))
                            .await;
                        None
                    }
                    Ok(Slot::At(at)) => Some(at),
                    Ok(Slot::Never) => Some(message.expires_ms),
                    // The shared limits cannot be read: try again shortly.
                    Err(_) => Some(now + 1000),
                };
                if let Some(at) = wait_until {
                    self.commit(&message, Placement::Due(at), Some(&entry))
                        .await;
                    return;
                }
            }
        }
        if *draining.borrow() {
            // Left for another replica or this one's successor, its cell kept.
            self.commit(&message, Placement::Due(now), Some(&entry))
                .await;
            return;
        }
        self.send(message, entry, request).await;
    }

    /// Closes lapsed attempts, trims what is finished, and reports the depth.
    async fn sweep(&self) {
        let now = now_ms();
        match self.queue.lapsed(now).await {
            Ok(ids) => {
                for id in ids {
                    let Ok(Some(mut message)) = self.queue.get(&id).await else {
                        continue;
                    };
                    if message.status != Status::Sending {
                        continue;
                    }
                    message.error = Some(MessageError::interrupted());
                    message.set(Status::Unknown);
                    self.commit(&message, self.closed(), None).await;
                }
            }
            Err(error) => tracing::debug!(%error, "queue: cannot read lapsed attempts"),
        }
        if let Err(error) = self.queue.tidy().await {
            tracing::debug!(%error, "queue: cannot trim finished entries");
        }
        if let Ok(depth) = self.queue.depth().await {
            metrics::gauge!(crate::metrics::QUEUE_DEPTH).set(depth.open as f64);
            let oldest = depth
                .oldest_ms
                .map_or(0.0, |created| now.saturating_sub(created) as f64 / 1000.0);
            metrics::gauge!(crate::metrics::QUEUE_OLDEST).set(oldest);
        }
    }
}

/// `jelou_relay_async_messages_total` by status, registered once (`counter!` looked the
/// key up in the recorder's registry on every change).
static CHANGES: LazyLock<[Counter; Status::ALL.len()]> = LazyLock::new(|| {
    Status::ALL.map(
        |status| metrics::counter!(crate::metrics::ASYNC_MESSAGES, "status" => status.as_str()),
    )
});

/// One line per status change, and its count.
pub fn log_change(message: &Message) {
    CHANGES[message.status.place()].increment(1);
    let code = message.error.as_ref().map(|e| e.code.as_str());
    let status = message.status.as_str();
    match message.status {
        Status::Unknown => tracing::warn!(
            id = %message.id,
            status,
            attempts = message.attempts,
            code,
            "message status"
        ),
        _ => tracing::info!(
            id = %message.id,
            status,
            attempts = message.attempts,
            code,
            "message status"
        ),
    }
}
