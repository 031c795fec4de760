//! One reconnecting Redis connection: a single multiplexed connection (or a
//! cluster connection) shared by every caller of a store. redis-rs pipelines
//! concurrent commands on it: the GETs of concurrent Checks leave in one
//! write and their answers come back in one read. A pool checkout per Check
//! would buy nothing here, and four connections measured ~15% slower than
//! one at concurrency 32 (BENCHMARKS.md).
//!
//! The link heals by itself:
//! - a request that fails because the connection is gone (I/O error, time-out,
//!   and, for Sentinel's primary, `READONLY`: the node was demoted) drops the
//!   connection; the next request connects again, for Sentinel by asking the
//!   sentinels for the primary again;
//! - a read-only request that met a dead connection is sent once more on a
//!   fresh one, so that the first request after a Redis restart succeeds; a
//!   request that changes state is not repeated (it may have run), it fails
//!   closed once;
//! - at most one connect runs at a time, and callers that waited for it share
//!   its outcome, so an outage is not answered with a storm of connects.
//!
//! While Redis cannot be reached every request fails promptly (a refused or
//! timed-out connect) and callers answer 503.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use redis::{FromRedisValue, RedisError, RedisResult};

use super::target::{Conn, RedisTarget, OP_TIMEOUT};
use crate::store::StoreError;

/// A request to send: a command, a pipeline (MULTI/EXEC included) or a
/// script. Every one of them names keys of one hash slot only (see
/// `store::keys`).
pub enum Req<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
    Script(&'a redis::ScriptInvocation<'a>),
}

impl Req<'_> {
    async fn on<T, C>(&self, c: &mut C) -> RedisResult<T>
    where
        T: FromRedisValue,
        C: redis::aio::ConnectionLike + Send,
    {
        match self {
            Req::Cmd(c2) => c2.query_async(c).await,
            Req::Pipe(p) => p.query_async(c).await,
            Req::Script(s) => s.invoke_async(c).await,
        }
    }
}

/// The outcome of the latest connect, shared by the callers that waited.
#[derive(Clone)]
enum ConnectFailure {
    Unavailable(String),
    Incompatible(String),
}

impl From<ConnectFailure> for StoreError {
    fn from(f: ConnectFailure) -> Self {
        match f {
            ConnectFailure::Unavailable(s) => StoreError::Unavailable(s),
            ConnectFailure::Incompatible(s) => StoreError::Incompatible(s),
        }
    }
}

pub struct Link {
    target: Arc<RedisTarget>,
    /// The connection and its generation: a failure drops the connection
    /// only if it is still the one that failed.
    current: Mutex<Option<(u64, Conn)>>,
    generation: AtomicU64,
    /// Held while connecting; holds the latest connect's failure.
    connecting: tokio::sync::Mutex<Option<ConnectFailure>>,
    /// Connect attempts finished so far.
    attempts: AtomicU64,
}

impl Link {
    /// Connects to nothing yet: the service starts (and reports not ready)
    /// while Redis is down, and recovers on its own when it is back.
    pub fn new(target: Arc<RedisTarget>) -> Self {
        Self {
            target,
            current: Mutex::new(None),
            generation: AtomicU64::new(0),
            connecting: tokio::sync::Mutex::new(None),
            attempts: AtomicU64::new(0),
        }
    }

    pub fn target(&self) -> &Arc<RedisTarget> {
        &self.target
    }

    /// Sends a request that changes state: a failure is never repeated.
    pub async fn run<T: FromRedisValue>(&self, req: Req<'_>) -> Result<T, StoreError> {
        let (g, mut c) = self.conn().await?;
        self.once(&req, g, &mut c).await.map_err(|(e, _)| e)
    }

    /// Sends a request that only reads, or whose repetition changes nothing
    /// (`GET`, `PTTL`, `PING`, a plain `SET … PX`): when the connection turns
    /// out to be dead, it is sent once more on a new one.
    pub async fn read<T: FromRedisValue>(&self, req: Req<'_>) -> Result<T, StoreError> {
        let (g, mut c) = self.conn().await?;
        match self.once(&req, g, &mut c).await {
            Ok(v) => Ok(v),
            Err((_, true)) => {
                let (g, mut c) = self.conn().await?;
                self.once(&req, g, &mut c).await.map_err(|(e, _)| e)
            }
            Err((e, false)) => Err(e),
        }
    }

    /// One try; on failure also whether it is worth one more on a new
    /// connection (the old one was found dead).
    async fn once<T: FromRedisValue>(
        &self,
        req: &Req<'_>,
        generation: u64,
        c: &mut Conn,
    ) -> Result<T, (StoreError, bool)> {
        let fut = async {
            match c {
                Conn::Single(m) => req.on(m).await,
                Conn::Cluster(k) => req.on(k).await,
            }
        };
        match tokio::time::timeout(OP_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let broken = connection_failed(&e);
                if broken {
                    self.drop_conn(generation);
                }
                // A slow Redis is not helped by asking again: only a dead
                // connection is worth a second try.
                Err((self.target.failure(&e), broken && !e.is_timeout()))
            }
            Err(_) => {
                self.drop_conn(generation);
                Err((StoreError::Unavailable("redis: timed out".into()), false))
            }
        }
    }

    fn drop_conn(&self, generation: u64) {
        let mut cur = self.current.lock();
        if cur.as_ref().is_some_and(|(g, _)| *g == generation) {
            *cur = None;
        }
    }

    fn live(&self) -> Option<(u64, Conn)> {
        self.current.lock().clone()
    }

    async fn conn(&self) -> Result<(u64, Conn), StoreError> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let seen = self.attempts.load(Ordering::SeqCst);
        let limit = self.target.connect_timeout();
        let attempt = async {
            let mut last = self.connecting.lock().await;
            if let Some(c) = self.live() {
                return Ok(c);
            }
            // A connect finished while we waited and failed: its answer is
            // ours too.
            if self.attempts.load(Ordering::SeqCst) != seen {
                if let Some(f) = last.clone() {
                    return Err(StoreError::from(f));
                }
            }
            let r = tokio::time::timeout(limit, self.target.connect()).await;
            self.attempts.fetch_add(1, Ordering::SeqCst);
            match r {
                Ok(Ok(conn)) => {
                    let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                    if last.is_some() {
                        tracing::info!("redis: connected again");
                    }
                    *self.current.lock() = Some((g, conn.clone()));
                    *last = None;
                    Ok((g, conn))
                }
                Ok(Err(e)) => {
                    let f = match self.target.failure(&e) {
                        StoreError::Incompatible(s) => ConnectFailure::Incompatible(s),
                        StoreError::Unavailable(s) | StoreError::Corrupt(s) => {
                            ConnectFailure::Unavailable(s)
                        }
                    };
                    if last.is_none() {
                        // Once per outage, not once per request.
                        match &f {
                            ConnectFailure::Incompatible(s) => {
                                tracing::error!(error = %s, "redis: cannot be used")
                            }
                            ConnectFailure::Unavailable(s) => {
                                tracing::warn!(error = %s, "redis: cannot connect")
                            }
                        }
                    }
                    *last = Some(f.clone());
                    Err(f.into())
                }
                Err(_) => {
                    let f = ConnectFailure::Unavailable("redis: connect timed out".into());
                    *last = Some(f.clone());
                    Err(f.into())
                }
            }
        };
        // Waiting for someone else's connect counts against the same bound.
        tokio::time::timeout(limit + limit / 2, attempt)
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("redis: connect timed out".into())))
    }
}

impl Link {
    /// Whether decisions can be made: `PING` on one server (Sentinel's
    /// primary included); on a Cluster, `CLUSTER INFO` of a node must say
    /// `cluster_state:ok` (every slot served), since a key of any user may
    /// live on any primary.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if self.target.topology() == super::Topology::Cluster {
            let mut c = redis::cmd("CLUSTER");
            c.arg("INFO");
            let info: String = self.read(Req::Cmd(&c)).await?;
            if !info.contains("cluster_state:ok") {
                return Err(StoreError::Unavailable(
                    "redis: the cluster is not ok (cluster_state:fail)".into(),
                ));
            }
            return Ok(());
        }
        let c = redis::cmd("PING");
        let _: redis::Value = self.read(Req::Cmd(&c)).await?;
        Ok(())
    }
}

/// Whether an error means the connection itself is unusable (to be
/// replaced), rather than a command that failed on a healthy connection.
/// `READONLY` and `MASTERDOWN` mean the node is (now) a replica: under
/// Sentinel the primary has moved, and the next connect asks where to.
pub fn connection_failed(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly)
                | ErrorKind::Server(ServerErrorKind::MasterDown)
        )
}
