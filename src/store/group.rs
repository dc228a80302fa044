//! Group commit: calls of one kind go to one writer task, and those that arrive while
//! its call is in Redis go together in the next one (one script run for all of them).
//! Each caller's item is still judged alone and answered alone; grouping changes how
//! many calls reach Redis, not what any caller is told. A lone call waits for nothing:
//! it is sent at once. Under load the items pile up behind the call in flight, so the
//! group grows with the load.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// Items gathered into one call, at most, counted by [`Grouped::weight`] (an item is
/// never split, so one heavier item goes alone).
const MOST_PER_CALL: usize = 128;

/// One kind of call that can carry many callers' items.
pub trait Grouped: Send + Sync + 'static {
    type Item: Send + 'static;
    type Answer: Send + 'static;
    /// What `item` counts toward a call's size.
    fn weight(item: &Self::Item) -> usize;
    /// One call for `items`: one answer each, in order.
    fn call(
        &self,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Self::Answer>, StoreError>> + Send;
}

type Pending<G> = (
    <G as Grouped>::Item,
    oneshot::Sender<Result<<G as Grouped>::Answer, StoreError>>,
);

/// The sending side of a writer task; the task ends when this is dropped.
pub struct GroupCommit<G: Grouped> {
    pending: mpsc::UnboundedSender<Pending<G>>,
}

impl<G: Grouped> std::fmt::Debug for GroupCommit<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl<G: Grouped> GroupCommit<G> {
    /// Starts the writer task on `runtime`.
    pub fn start(calls: G, runtime: &tokio::runtime::Handle) -> Self {
        let (pending, received) = mpsc::unbounded_channel();
        runtime.spawn(write(calls, received));
        GroupCommit { pending }
    }

    /// `item`'s answer, from the next call.
    pub async fn submit(&self, item: G::Item) -> Result<G::Answer, StoreError> {
        let (answer, answered) = oneshot::channel();
        let stopped = || StoreError::new("the store's writer has stopped; nothing was written");
        self.pending.send((item, answer)).map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// The writer task: one call at a time, each carrying every item waiting for it.
async fn write<G: Grouped>(calls: G, mut received: mpsc::UnboundedReceiver<Pending<G>>) {
    let mut items = Vec::new();
    let mut answers = Vec::new();
    while let Some((first, answer)) = received.recv().await {
        let mut weight = G::weight(&first);
        items.push(first);
        answers.push(answer);
        while weight < MOST_PER_CALL
            && let Ok((next, answer)) = received.try_recv()
        {
            weight += G::weight(&next);
            items.push(next);
            answers.push(answer);
        }
        let result = match calls.call(&items).await {
            Ok(answered) if answered.len() == items.len() => Ok(answered),
            // The call ran, so its writes may have been made: what it answered cannot
            // say which.
            Ok(answered) => Err(StoreError::unanswered(format!(
                "a grouped call answered {} of {} items",
                answered.len(),
                items.len()
            ))),
            Err(error) => Err(error),
        };
        items.clear();
        match result {
            Ok(answered) => {
                for (answer, answered) in answers.drain(..).zip(answered) {
                    let _ = answer.send(Ok(answered));
                }
            }
            Err(error) => {
                for answer in answers.drain(..) {
                    let _ = answer.send(Err(error.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers one item fewer than it was given.
    struct Short;

    impl Grouped for Short {
        type Item = u8;
        type Answer = u8;
        fn weight(_: &u8) -> usize {
            1
        }
        async fn call(&self, items: &[u8]) -> Result<Vec<u8>, StoreError> {
            Ok(items[1..].to_vec())
        }
    }

    #[tokio::test]
    async fn a_call_that_answers_the_wrong_count_may_have_run() {
        let group = GroupCommit::start(Short, &tokio::runtime::Handle::current());
        let error = group.submit(7).await.unwrap_err();
        assert!(error.may_have_run(), "{error:?}");
        assert!(error.to_string().contains("answered 0 of 1"), "{error}");
    }
}
