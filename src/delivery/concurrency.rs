//! A bounded number of requests at Jelou at once, with a bounded queue: past it,
//! requests are shed at once instead of growing memory. Sits outside the retry layer,
//! so a request keeps its permit for its whole retry sequence.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

use super::{Delivered, DeliveryFailure, DeliveryFuture, DeliveryInner, Outbound, WaitQueue};

#[derive(Clone, Debug)]
pub struct ConcurrencyLayer {
    permits: Arc<Semaphore>,
    queue: WaitQueue,
}

impl ConcurrencyLayer {
    pub fn new(max_in_flight: usize, queue: WaitQueue) -> Self {
        ConcurrencyLayer {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            queue,
        }
    }

    /// The permits, for the queue's workers: queued sends count against the same limit.
    pub fn permits(&self) -> Arc<Semaphore> {
        self.permits.clone()
    }
}

impl<S> Layer<S> for ConcurrencyLayer {
    type Service = Concurrency<S>;
    fn layer(&self, inner: S) -> Concurrency<S> {
        Concurrency {
            inner,
            limit: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Concurrency<S> {
    inner: S,
    limit: ConcurrencyLayer,
}

impl<S: DeliveryInner> Service<Outbound> for Concurrency<S> {
    type Response = Delivered;
    type Error = DeliveryFailure;
    type Future = DeliveryFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, outbound: Outbound) -> Self::Future {
        let inner = self.inner.clone();
        let limit = self.limit.clone();
        Box::pin(async move {
            let overloaded = || {
                metrics::counter!(crate::metrics::SHED, "where" => "delivery_queue").increment(1);
                DeliveryFailure::overloaded(
                    "the relay is at its limit of requests to Jelou; retry shortly",
                )
            };
            let permit = match limit.permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    let _slot = limit.queue.enter().ok_or_else(overloaded)?;
                    limit
                        .permits
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_closed| overloaded())?
                }
            };
            let result = inner.oneshot(outbound).await;
            drop(permit);
            result
        })
    }
}
