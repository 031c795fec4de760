//! The Check path's one Redis read, over a single long-lived multiplexed
//! connection shared by all requests. redis-rs pipelines concurrent commands
//! on a multiplexed connection: the GETs of concurrent Checks leave in one
//! write and their answers come back in one read. A pool checkout per Check
//! (a lock, bookkeeping, a wakeup) would buy nothing here, and four
//! connections measured ~15% slower than one at concurrency 32 (see
//! BENCHMARKS.md). A connection that fails is dropped and reopened by the
//! next call; while Redis is down every call fails at once (refused
//! connect), so Checks answer 503 promptly.

use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;

use super::redis::Req;
use super::StoreError;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
const OP_TIMEOUT: Duration = Duration::from_millis(1000);

pub struct HotReader {
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl HotReader {
    pub fn new(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(super::redis::connection_info(url)?)
            .map_err(|e| format!("storage.redis_url: {e}"))?;
        Ok(Self {
            client,
            conn: Mutex::new(None),
        })
    }

    async fn conn(&self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(c) = self.conn.lock().clone() {
            return Ok(c);
        }
        // Concurrent callers may each connect once after a failure; the last
        // one stored wins and the others' connections close when dropped.
        let c = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| StoreError::Unavailable("redis: connect timed out".into()))?
        .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
        *self.conn.lock() = Some(c.clone());
        Ok(c)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        self.query(Req::Cmd(&cmd)).await
    }

    /// GET and PTTL of one key in one round trip (what a session cache
    /// fills an entry from). PTTL: -2 when the key is gone, -1 without TTL.
    pub async fn get_with_pttl(&self, key: &str) -> Result<(Option<Vec<u8>>, i64), StoreError> {
        let mut p = redis::pipe();
        p.cmd("GET").arg(key).cmd("PTTL").arg(key);
        self.query(Req::Pipe(&p)).await
    }

    async fn query<T: redis::FromRedisValue>(&self, req: Req<'_>) -> Result<T, StoreError> {
        let mut c = self.conn().await?;
        let fut = async {
            match req {
                Req::Cmd(cmd) => cmd.query_async::<T>(&mut c).await,
                Req::Pipe(p) => p.query_async::<T>(&mut c).await,
                Req::Script(s) => s.invoke_async::<T>(&mut c).await,
            }
        };
        match tokio::time::timeout(OP_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if super::redis::connection_failed(&e) {
                    *self.conn.lock() = None;
                }
                Err(StoreError::Unavailable(format!("redis: {e}")))
            }
            Err(_) => {
                *self.conn.lock() = None;
                Err(StoreError::Unavailable("redis: timed out".into()))
            }
        }
    }
}
