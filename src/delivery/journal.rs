//! What happened to one message across its attempts, shared by every layer of the
//! delivery stack, so the final answer can say truthfully whether it may have been sent.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::DeliveryState;

#[derive(Debug, Default)]
pub struct Journal {
    attempts: AtomicU32,
    /// An attempt has started and not yet finished: Jelou may be acting on it.
    in_flight: AtomicBool,
    /// A finished attempt left the outcome unknown.
    maybe_sent: AtomicBool,
}

impl Journal {
    /// Records the start of an attempt; returns its number (1 for the first).
    pub fn attempt_started(&self) -> u32 {
        self.in_flight.store(true, Ordering::SeqCst);
        self.attempts.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Records how an attempt ended; `None` means it succeeded.
    pub fn attempt_finished(&self, failure: Option<DeliveryState>) {
        if failure == Some(DeliveryState::Unknown) {
            self.maybe_sent.store(true, Ordering::SeqCst);
        }
        self.in_flight.store(false, Ordering::SeqCst);
    }

    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::SeqCst)
    }

    /// The delivery state across every attempt: one unknown attempt makes it unknown.
    pub fn delivery(&self) -> DeliveryState {
        if self.in_flight.load(Ordering::SeqCst) || self.maybe_sent.load(Ordering::SeqCst) {
            DeliveryState::Unknown
        } else {
            DeliveryState::NotSent
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_unknown_attempt_makes_the_whole_unknown() {
        let journal = Journal::default();
        assert_eq!(journal.delivery(), DeliveryState::NotSent);
        assert_eq!(journal.attempt_started(), 1);
        assert_eq!(journal.delivery(), DeliveryState::Unknown, "in flight");
        journal.attempt_finished(Some(DeliveryState::NotSent));
        assert_eq!(journal.delivery(), DeliveryState::NotSent);
        journal.attempt_started();
        journal.attempt_finished(Some(DeliveryState::Unknown));
        journal.attempt_started();
        journal.attempt_finished(Some(DeliveryState::NotSent));
        assert_eq!(journal.delivery(), DeliveryState::Unknown);
        assert_eq!(journal.attempts(), 3);
    }
}
