//! The one multiplexed Redis connection every call shares.

use std::sync::atomic::{AtomicBool, Ordering};

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

/// The multiplexed connection, made on first use and again after a failure.
pub(super) struct Connection {
    pub(super) client: redis::Client,
    pub(super) config: AsyncConnectionConfig,
    pub(super) current: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Connection {
    async fn get(&self) -> redis::RedisResult<MultiplexedConnection> {
        // One connection attempt at a time; the others wait for it (within their timeout).
        let mut current = self.current.lock().await;
        if let Some(connection) = current.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *current = Some(connection.clone());
        Ok(connection)
    }

    /// Runs `command`, setting `sent` once it has a connection to go out on.
    pub(super) async fn run<T, F>(&self, command: F, sent: &AtomicBool) -> redis::RedisResult<T>
    where
        F: AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    {
        let mut connection = self.get().await?;
        sent.store(true, Ordering::Relaxed);
        let result = command(&mut connection).await;
        if let Err(error) = &result
            && (error.is_io_error()
                || error.is_connection_dropped()
                || error.is_timeout()
                || error.is_unrecoverable_error())
        {
            self.current.lock().await.take();
        }
        result
    }

    /// Drops the connection (after a timeout: it may be stuck), unless a connection
    /// attempt is under way.
    pub(super) fn reset(&self) {
        if let Ok(mut current) = self.current.try_lock() {
            current.take();
        }
    }
}
