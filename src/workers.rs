//! The threads that serve HTTP/1 connections: one single-threaded tokio runtime each, the
//! way nginx runs one event loop per worker process. h2c connections stay on tokio's
//! shared multi-threaded runtime, so their streams spread over every core.
//!
//! A request's tasks (its connection, its delivery, the pooled connection it takes to
//! Jelou) then all run on one thread: no task is woken across threads, and its data stays
//! in one core's cache. Kept by hand because the crate costs more than 10 %: serving
//! HTTP/1 on the shared runtime too gave 0.83 to 0.92 of the throughput at 16 connections
//! (3 rounds) and 0.66 at 64, with 1.11 to 1.21 and 1.64 times the CPU per request
//! (2026-12-01, 2 cores; `LOAD=wrk CONNECTIONS=16 DURATION=5 bash
//! benches/side_by_side.sh A B`, figures in `benches/README.md`). The listener hands each HTTP/1 connection to the next worker in
//! turn.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

struct Worker {
    handle: Handle,
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

/// The running workers.
pub struct Workers {
    workers: Vec<Worker>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `count` workers (at least one), each on a thread of its own.
    pub fn start(count: usize) -> io::Result<Workers> {
        let mut workers = Vec::with_capacity(count);
        for index in 0..count.max(1) {
            let (ready, handle) = std::sync::mpsc::channel();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("relay-worker-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(error) => {
                            let _ = ready.send(Err(error));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(runtime.handle().clone()));
                    // Runs the connections spawned onto this worker until told to stop;
                    // dropping the runtime then cancels whatever is left.
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            let handle = handle
                .recv()
                .map_err(|_| io::Error::other("a worker thread ended before starting"))??;
            workers.push(Worker {
                handle,
                stop,
                thread,
            });
        }
        Ok(Workers {
            workers,
            next: AtomicUsize::new(0),
        })
    }

    /// The next worker's runtime, in turn.
    pub fn next_in_turn(&self) -> &Handle {
        let next = self.next.fetch_add(1, Ordering::Relaxed);
        &self.workers[next % self.workers.len()].handle
    }

    /// Stops every worker, cancelling what still runs on them, and waits for their threads.
    pub async fn stop(self) {
        let threads: Vec<_> = self
            .workers
            .into_iter()
            .map(|worker| {
                let _ = worker.stop.send(());
                worker.thread
            })
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_go_to_each_worker_in_turn_on_its_own_thread() {
        let workers = Workers::start(3).unwrap();
        let mut seen = Vec::new();
        for _ in 0..6 {
            let task = workers
                .next_in_turn()
                .spawn(async { std::thread::current().name().map(str::to_owned) });
            seen.push(task.await.unwrap());
        }
        let names: Vec<_> = seen
            .iter()
            .map(|name| name.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(
            names,
            [
                "relay-worker-0",
                "relay-worker-1",
                "relay-worker-2",
                "relay-worker-0",
                "relay-worker-1",
                "relay-worker-2"
            ]
        );
        workers.stop().await;
    }
}
