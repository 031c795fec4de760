//! The Check path's one Redis read, over a few long-lived multiplexed
//! connections shared by all requests. redis-rs pipelines concurrent
//! commands on a multiplexed connection by itself, so a pool checkout per
//! Check (a lock, bookkeeping, a wakeup) buys nothing here and costs
//! throughput. A connection that fails is dropped and reopened by the next
//! call; while Redis is down every call fails at once (refused connect), so
//! Checks answer 503 promptly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;

use super::StoreError;

/// One connection pipelines best: concurrent GETs leave in one write and
/// their answers come back in one read (measured: 4 connections were ~15%
/// slower at concurrency 32, see BENCHMARKS.md). A broken connection is
/// replaced by the next call.
const CONNECTIONS: usize = 1;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
const OP_TIMEOUT: Duration = Duration::from_millis(1000);

pub struct HotReader {
    client: redis::Client,
    slots: Vec<Mutex<Option<MultiplexedConnection>>>,
    next: AtomicUsize,
}

impl HotReader {
    pub fn new(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(super::redis::connection_info(url)?)
            .map_err(|e| format!("storage.redis_url: {e}"))?;
        Ok(Self {
            client,
            slots: (0..CONNECTIONS).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        })
    }

    async fn conn(&self, i: usize) -> Result<MultiplexedConnection, StoreError> {
        if let Some(c) = self.slots[i].lock().clone() {
            return Ok(c);
        }
        let c = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| StoreError::Unavailable("redis: connect timed out".into()))?
        .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
        *self.slots[i].lock() = Some(c.clone());
        Ok(c)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % CONNECTIONS;
        let mut c = self.conn(i).await?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        match tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<Option<Vec<u8>>>(&mut c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if super::redis::connection_failed(&e) {
                    *self.slots[i].lock() = None;
                }
                Err(StoreError::Unavailable(format!("redis: {e}")))
            }
            Err(_) => {
                *self.slots[i].lock() = None;
                Err(StoreError::Unavailable("redis: timed out".into()))
            }
        }
    }
}
