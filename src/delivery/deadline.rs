//! The outermost delivery layer: one deadline for the whole request, and the final
//! attempt count and delivery state taken from the journal.

use std::task::{Context, Poll};

use tower::{Layer, Service, ServiceExt};

use super::{Delivered, DeliveryFailure, DeliveryFuture, DeliveryInner, Outbound};

#[derive(Clone, Debug, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

impl<S: DeliveryInner> Service<Outbound> for Deadline<S> {
    type Response = Delivered;
    type Error = DeliveryFailure;
    type Future = DeliveryFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, outbound: Outbound) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let journal = outbound.journal.clone();
            let deadline = outbound.deadline;
            let result = tokio::time::timeout_at(deadline, inner.oneshot(outbound)).await;
            match result {
                Ok(Ok(mut delivered)) => {
                    delivered.attempts = journal.attempts();
                    Ok(delivered)
                }
                Ok(Err(mut failure)) => {
                    failure.attempts = journal.attempts();
                    failure.delivery = failure.delivery.max(journal.delivery());
                    Err(failure)
                }
                Err(_elapsed) => Err(DeliveryFailure::deadline_passed(&journal)),
            }
        })
    }
}
