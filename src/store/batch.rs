//! Coalesces concurrent session lookups into one Redis `MGET`. Under load
//! many Checks wait on Redis at the same moment; one MGET of N keys costs
//! Redis and the kernel far less than N GETs, and every Check still reads
//! the current state (nothing is cached, so a logout or reset is seen by the
//! very next request). At low load a batch is one key and adds no wait: the
//! batcher never sleeps to fill a batch.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::redis::{run, Pool, Req};
use super::StoreError;

/// Larger batches gain little and delay the first caller's answer.
const MAX_BATCH: usize = 64;
const QUEUE: usize = 4096;
/// A caller never waits longer than this for its answer (on top of the
/// Redis call's own timeout): a stuck batch fails closed.
const WAIT: Duration = Duration::from_millis(1500);

type Reply = oneshot::Sender<Result<Option<Vec<u8>>, StoreError>>;

#[derive(Clone)]
pub struct GetBatcher {
    tx: mpsc::Sender<(String, Reply)>,
}

impl GetBatcher {
    /// Starts the batching task; it ends when the last `GetBatcher` clone is
    /// dropped.
    pub fn spawn(pool: Pool) -> Self {
        let (tx, mut rx) = mpsc::channel::<(String, Reply)>(QUEUE);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = Vec::with_capacity(8);
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                // The next batch is collected while this one is in flight.
                let pool = pool.clone();
                tokio::spawn(async move { fetch(&pool, batch).await });
            }
        });
        Self { tx }
    }

    pub async fn get(&self, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((key, reply))
            .await
            .map_err(|_| StoreError::Unavailable("redis batcher stopped".into()))?;
        match tokio::time::timeout(WAIT, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(StoreError::Unavailable("redis batch dropped".into())),
            Err(_) => Err(StoreError::Unavailable("redis: timed out".into())),
        }
    }
}

async fn fetch(pool: &Pool, batch: Vec<(String, Reply)>) {
    let mut cmd = redis::cmd(if batch.len() == 1 { "GET" } else { "MGET" });
    for (key, _) in &batch {
        cmd.arg(key);
    }
    if let [_] = batch.as_slice() {
        let r: Result<Option<Vec<u8>>, StoreError> = run(pool, Req::Cmd(&cmd)).await;
        if let Some((_, reply)) = batch.into_iter().next() {
            let _ = reply.send(r);
        }
        return;
    }
    let r: Result<Vec<Option<Vec<u8>>>, StoreError> = run(pool, Req::Cmd(&cmd)).await;
    match r {
        Ok(values) if values.len() == batch.len() => {
            for ((_, reply), v) in batch.into_iter().zip(values) {
                let _ = reply.send(Ok(v));
            }
        }
        Ok(_) => {
            for (_, reply) in batch {
                let _ = reply.send(Err(StoreError::Corrupt(
                    "MGET answered a different number of values".into(),
                )));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(StoreError::Unavailable(msg.clone())));
            }
        }
    }
}
