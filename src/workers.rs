//! The threads that serve connections: one single-threaded tokio runtime each, the way
//! nginx runs one event loop per worker process.
//!
//! A request's tasks (its connection, its delivery, the pooled connection it takes to
//! Jelou) then all run on one thread: no task is woken across threads, so no request
//! pays for a futex wake-up and a context switch, and its data stays in one core's cache.
//! The listener hands each accepted connection to the next worker in turn.

use std::cell::Cell;
use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker running on this thread; 0 on any other thread.
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// How many workers `configured` asks for: 0 means one per available CPU.
pub fn count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

struct Worker {
    handle: Handle,
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

/// The running workers.
pub struct Workers {
    workers: Vec<Worker>,
    next: usize,
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
                    INDEX.with(|i| i.set(index));
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
        Ok(Workers { workers, next: 0 })
    }

    /// The next worker's runtime, in turn.
    pub fn next_in_turn(&mut self) -> &Handle {
        let worker = &self.workers[self.next % self.workers.len()];
        self.next = self.next.wrapping_add(1);
        &worker.handle
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
    async fn each_worker_runs_on_its_own_thread_and_knows_its_index() {
        let mut workers = Workers::start(3).unwrap();
        let mut seen = Vec::new();
        for _ in 0..6 {
            let task = workers
                .next_in_turn()
                .spawn(async { (current(), std::thread::current().name().map(str::to_owned)) });
            seen.push(task.await.unwrap());
        }
        assert_eq!(
            seen.iter().map(|(index, _)| *index).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2]
        );
        assert_eq!(seen[1].1.as_deref(), Some("relay-worker-1"));
        assert_eq!(current(), 0);
        workers.stop().await;
    }

    #[test]
    fn zero_means_one_per_cpu() {
        assert!(count(0) >= 1);
        assert_eq!(count(3), 3);
    }
}
