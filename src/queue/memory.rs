//! The queue in this process: for one replica, and lost at exit (logged then).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::message::now_ms;
use super::{Depth, Message, Notice, Placement, QueueError, QueueStore, Status, Taken};

#[derive(Debug, Default)]
struct Inner {
    messages: HashMap<String, Message>,
    /// Ready to be taken, in order: those whose wait is over before those just
    /// accepted, so a large batch never delays a send that is due.
    due: VecDeque<String>,
    ready: VecDeque<String>,
    /// Waiting until a time: (due ms, id).
    waiting: BTreeSet<(u64, String)>,
    /// Attempts out: (lease end ms, id).
    leases: BTreeSet<(u64, String)>,
    /// Open messages by creation: (created ms, id).
    open: BTreeSet<(u64, String)>,
    /// Final messages by the end of their retention: (forget at ms, id).
    retained: BTreeSet<(u64, String)>,
    /// Where each waiting or leased message is, to take it out in one step.
    placed: HashMap<String, Placed>,
    /// Notices of final statuses, by when they are due: (due ms, id).
    outbox: BTreeSet<(u64, String)>,
    notices: HashMap<String, (u64, Notice)>,
}

#[derive(Debug, Clone, Copy)]
enum Placed {
    Waiting(u64),
    Leased(u64),
}

impl Inner {
    fn unplace(&mut self, id: &str) {
        match self.placed.remove(id) {
            Some(Placed::Waiting(at)) => {
                self.waiting.remove(&(at, id.to_string()));
            }
            Some(Placed::Leased(until)) => {
                self.leases.remove(&(until, id.to_string()));
            }
            None => {}
        }
    }

    /// Puts `notice` in the outbox, due at `at` (replacing its earlier place).
    fn schedule(&mut self, notice: Notice, at: u64) {
        if let Some((earlier, _)) = self.notices.get(&notice.id) {
            self.outbox.remove(&(*earlier, notice.id.clone()));
        }
        self.outbox.insert((at, notice.id.clone()));
        self.notices.insert(notice.id.clone(), (at, notice));
    }

    fn forget_expired(&mut self, now: u64) {
        while let Some((at, id)) = self.retained.first().cloned() {
            if at > now {
                break;
            }
            self.retained.pop_first();
            self.messages.remove(&id);
        }
    }
}

#[derive(Debug, Default)]
pub struct MemoryQueue {
    inner: Mutex<Inner>,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl QueueStore for MemoryQueue {
    async fn enqueue(&self, messages: &[Message], max_queued: usize) -> Result<(), QueueError> {
        let mut inner = self.lock();
        if inner.open.len() + messages.len() > max_queued {
            return Err(QueueError::Full);
        }
        let now = now_ms();
        for message in messages {
            let mut message = message.clone();
            message.version = 1;
            let id = message.id.clone();
            inner.open.insert((message.created_ms, id.clone()));
            match message.due_later(now) {
                Some(at) => {
                    inner.placed.insert(id.clone(), Placed::Waiting(at));
                    inner.waiting.insert((at, id.clone()));
                }
                None => inner.ready.push_back(id.clone()),
            }
            inner.messages.insert(id, message);
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Message>, QueueError> {
        let mut inner = self.lock();
        inner.forget_expired(now_ms());
        Ok(inner.messages.get(id).cloned())
    }

    async fn change(
        &self,
        message: &Message,
        placement: Placement,
        _entry: Option<&str>,
        notice: Option<&Notice>,
    ) -> Result<Option<u64>, QueueError> {
        let mut inner = self.lock();
        let Some(stored) = inner.messages.get_mut(&message.id) else {
            return Ok(None);
        };
        if stored.version != message.version {
            return Ok(None);
        }
        let version = message.version + 1;
        *stored = Message {
            version,
            ..message.clone()
        };
        let (id, created) = (message.id.clone(), message.created_ms);
        inner.unplace(&id);
        match placement {
            Placement::Due(at) => {
                inner.placed.insert(id.clone(), Placed::Waiting(at));
                inner.waiting.insert((at, id));
            }
            Placement::Leased(until) => {
                inner.placed.insert(id.clone(), Placed::Leased(until));
                inner.leases.insert((until, id));
            }
            Placement::Final(retention) => {
                inner.open.remove(&(created, id.clone()));
                let now = now_ms();
                let forget_at = now + retention.as_millis() as u64;
                inner.retained.insert((forget_at, id));
                if let Some(notice) = notice {
                    inner.schedule(notice.clone(), now);
                }
            }
        }
        Ok(Some(version))
    }

    async fn notices_due(
        &self,
        now: u64,
        max: usize,
        hold_until: u64,
    ) -> Result<Vec<Notice>, QueueError> {
        let mut inner = self.lock();
        let due: Vec<String> = inner
            .outbox
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(max)
            .map(|(_, id)| id.clone())
            .collect();
        let mut notices = Vec::with_capacity(due.len());
        for id in due {
            if let Some((_, notice)) = inner.notices.get(&id).cloned() {
                inner.schedule(notice.clone(), hold_until);
                notices.push(notice);
            }
        }
        Ok(notices)
    }

    async fn notice_done(&self, id: &str) -> Result<(), QueueError> {
        let mut inner = self.lock();
        if let Some((at, _)) = inner.notices.remove(id) {
            inner.outbox.remove(&(at, id.to_string()));
        }
        Ok(())
    }

    async fn notice_retry(&self, notice: &Notice, at: u64) -> Result<(), QueueError> {
        self.lock().schedule(notice.clone(), at);
        Ok(())
    }

    async fn notices_pending(&self) -> Result<u64, QueueError> {
        Ok(self.lock().notices.len() as u64)
    }

    async fn take(&self, max: usize) -> Result<Vec<Taken>, QueueError> {
        let mut inner = self.lock();
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some(id) = inner.due.pop_front().or_else(|| inner.ready.pop_front()) else {
                break;
            };
            if let Some(message) = inner.messages.get(&id) {
                taken.push(Taken {
                    entry: id,
                    message: message.clone(),
                });
            }
        }
        Ok(taken)
    }

    async fn drop_entry(&self, _entry: &str) -> Result<(), QueueError> {
        Ok(())
    }

    async fn promote(&self, now: u64) -> Result<(), QueueError> {
        let mut inner = self.lock();
        while let Some((at, id)) = inner.waiting.first().cloned() {
            if at > now {
                break;
            }
            inner.waiting.pop_first();
            inner.placed.remove(&id);
            inner.due.push_back(id);
        }
        inner.forget_expired(now);
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<u64>, QueueError> {
        Ok(self.lock().waiting.first().map(|(at, _)| *at))
    }

    async fn lapsed(&self, now: u64) -> Result<Vec<String>, QueueError> {
        let inner = self.lock();
        Ok(inner
            .leases
            .iter()
            .take_while(|(until, _)| *until <= now)
            .map(|(_, id)| id.clone())
            .collect())
    }

    async fn depth(&self) -> Result<Depth, QueueError> {
        let inner = self.lock();
        Ok(Depth {
            open: inner.open.len() as u64,
            oldest_ms: inner.open.first().map(|(created, _)| *created),
        })
    }

    async fn remaining(&self) -> Vec<Message> {
        let inner = self.lock();
        let mut remaining: Vec<Message> = inner
            .open
            .iter()
            .filter_map(|(_, id)| inner.messages.get(id))
            .filter(|m| m.status == Status::Queued)
            .cloned()
            .collect();
        remaining.sort_by_key(|m| m.created_ms);
        remaining
    }

    fn durable(&self) -> bool {
        false
    }
}
