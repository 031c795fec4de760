//! The session cache's invalidation channel: one dedicated RESP3 connection
//! to the Redis that holds the session keys, in broadcasting client-side
//! caching mode (`CLIENT TRACKING ON BCAST PREFIX <storage.key_prefix>sv:`,
//! <https://redis.io/docs/latest/develop/reference/client-side-caching/>).
//! Redis then pushes an `invalidate` message on this connection for every
//! change of a session key by any client: a write, a delete, an expiry, a
//! flush (a null key list). BCAST, rather than the default mode, because the
//! reads come from other connections (the hot reader) and because a key that
//! did not exist when it was read (a "not verified" answer) must be reported
//! too once it is created.
//!
//! The channel is "up" only while this connection is known to be alive:
//! a PING every [`PING_EVERY`] must come back within [`PING_TIMEOUT`], and
//! redis-rs reports a closed connection at once. Anything else takes it
//! down, and the cache answers from the store until it is up again (see
//! `store::session_cache`). It is reopened every [`RETRY`].
//!
//! The connection is named by a [`Target`], so that a Sentinel setup can
//! hand over the current master after a failover. Redis Cluster is not
//! supported here: invalidations of a key come from the node that owns its
//! slot, which would take one tracking connection per primary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{watch, Notify};

/// Liveness probe interval: with [`PING_TIMEOUT`], a silent (not closed)
/// connection is declared lost within about 0.75 s, well inside the 2 s
/// that INTERFACE.md section 3 allows.
pub const PING_EVERY: Duration = Duration::from_millis(250);
pub const PING_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between two attempts to reopen the channel.
pub const RETRY: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Where the tracking connection goes.
#[derive(Clone)]
pub enum Target {
    /// One Redis server (`storage.redis_url`).
    Fixed(Box<ConnectionInfo>),
    /// Asked again before every (re)connect, e.g. Sentinel's current master.
    Dynamic(Arc<dyn Fn() -> BoxFuture<'static, Result<ConnectionInfo, String>> + Send + Sync>),
}

impl Target {
    pub fn fixed(info: ConnectionInfo) -> Self {
        Target::Fixed(Box::new(info))
    }

    async fn current(&self) -> Result<ConnectionInfo, String> {
        match self {
            Target::Fixed(info) => Ok((**info).clone()),
            Target::Dynamic(f) => f().await,
        }
    }
}

/// What the channel tells the cache. Called from redis-rs's reader task:
/// must not block.
pub trait Sink: Send + Sync + 'static {
    /// A tracked key changed (the key as Redis names it, prefix included).
    fn invalidate(&self, key: &[u8]);
    /// Everything may have changed (a flush, a message this code cannot
    /// read).
    fn invalidate_all(&self);
    /// The channel is up: every later change will be reported.
    fn channel_up(&self);
    /// The channel is down: changes may go unreported from now on.
    fn channel_down(&self);
}

pub struct Tracking {
    target: Target,
    /// The full key prefix tracked (`storage.key_prefix` + `sv:`).
    prefix: String,
    /// The open channel, for [`Tracking::sync`].
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Counts the connections opened, so that the close of an old one,
    /// reported late, cannot take a newer one's channel down.
    epoch: Arc<AtomicU64>,
}

impl Tracking {
    pub fn new(target: Target, prefix: String) -> Self {
        Self {
            target,
            prefix,
            conn: Mutex::new(None),
            epoch: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Runs the channel until `shutdown`, reporting to `sink`.
    pub fn spawn(self: &Arc<Self>, sink: Arc<dyn Sink>, shutdown: watch::Receiver<bool>) {
        let this = self.clone();
        tokio::spawn(async move { this.run(sink, shutdown).await });
    }

    /// Waits until every invalidation that Redis sent before now has been
    /// handed to the sink: a PING on the channel itself, whose answer
    /// arrives after them on the same stream. False when the channel is
    /// down or does not answer in time (the caller cannot rely on it then).
    pub async fn sync(&self) -> bool {
        let Some(mut conn) = self.conn.lock().clone() else {
            return false;
        };
        ping(&mut conn).await
    }

    async fn run(&self, sink: Arc<dyn Sink>, mut shutdown: watch::Receiver<bool>) {
        let mut reported = false;
        while !*shutdown.borrow() {
            match self.open(&sink).await {
                Ok((conn, lost)) => {
                    *self.conn.lock() = Some(conn.clone());
                    sink.channel_up();
                    tracing::info!("session cache: invalidation channel up");
                    reported = false;
                    watch_channel(conn, &lost, &mut shutdown).await;
                    *self.conn.lock() = None;
                    sink.channel_down();
                    if !*shutdown.borrow() {
                        tracing::warn!(
                            "session cache: invalidation channel lost; reading the session store until it is back"
                        );
                    }
                }
                Err(e) => {
                    if !reported {
                        tracing::warn!(error = %e, "session cache: no invalidation channel; reading the session store until there is one");
                        reported = true;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = shutdown.changed() => break,
            }
        }
        sink.channel_down();
    }

    /// Connects (RESP3, pushes to `sink`) and turns tracking on; the
    /// `Notify` fires when redis-rs sees the connection close.
    async fn open(
        &self,
        sink: &Arc<dyn Sink>,
    ) -> Result<(MultiplexedConnection, Arc<Notify>), String> {
        let info = self.target.current().await?;
        let redis = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(redis);
        let client = redis::Client::open(info).map_err(|e| format!("redis: {e}"))?;
        let lost = Arc::new(Notify::new());
        let mine = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let pushes = {
            let sink = sink.clone();
            let lost = lost.clone();
            let epoch = self.epoch.clone();
            move |push: PushInfo| -> Result<(), std::convert::Infallible> {
                match push.kind {
                    PushKind::Invalidate => invalidations(sink.as_ref(), &push.data),
                    PushKind::Disconnection => {
                        // Down here, on redis-rs's reader task, as soon as
                        // the close is read: waiting for `run` to wake up
                        // would leave the cache answering for as long as the
                        // scheduler takes (`run` reports it again, which
                        // costs nothing).
                        if epoch.load(Ordering::SeqCst) == mine {
                            sink.channel_down();
                        }
                        // `notify_one` keeps the wakeup if nobody waits yet.
                        lost.notify_one();
                    }
                    _ => {}
                }
                Ok(())
            }
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(PING_TIMEOUT))
            .set_push_sender(pushes);
        let mut conn = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| "redis: connect timed out".to_string())?
        .map_err(|e| format!("redis: {e}"))?;
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(&self.prefix);
        tokio::time::timeout(PING_TIMEOUT, cmd.query_async::<()>(&mut conn))
            .await
            .map_err(|_| "redis: CLIENT TRACKING timed out".to_string())?
            .map_err(|e| format!("redis: CLIENT TRACKING: {e}"))?;
        Ok((conn, lost))
    }
}

/// Returns once the channel is lost or shutdown begins.
async fn watch_channel(
    mut conn: MultiplexedConnection,
    lost: &Notify,
    shutdown: &mut watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = lost.notified() => return,
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(PING_EVERY) => {}
        }
        if !ping(&mut conn).await {
            return;
        }
    }
}

async fn ping(conn: &mut MultiplexedConnection) -> bool {
    let cmd = redis::cmd("PING");
    matches!(
        tokio::time::timeout(PING_TIMEOUT, cmd.query_async::<String>(conn)).await,
        Ok(Ok(_))
    )
}

/// An `invalidate` push: its data is one array of keys, or null when the
/// server flushed its keys. Anything else is read as "everything changed".
fn invalidations(sink: &dyn Sink, data: &[Value]) {
    if data.is_empty() {
        sink.invalidate_all();
        return;
    }
    for v in data {
        match v {
            Value::Array(keys) => {
                for k in keys {
                    match k {
                        Value::BulkString(b) => sink.invalidate(b),
                        Value::SimpleString(s) => sink.invalidate(s.as_bytes()),
                        _ => sink.invalidate_all(),
                    }
                }
            }
            _ => sink.invalidate_all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Record(parking_lot::Mutex<Vec<String>>);

    impl Sink for Record {
        fn invalidate(&self, key: &[u8]) {
            self.0
                .lock()
                .push(String::from_utf8_lossy(key).into_owned());
        }
        fn invalidate_all(&self) {
            self.0.lock().push("*".into());
        }
        fn channel_up(&self) {}
        fn channel_down(&self) {}
    }

    #[test]
    fn invalidate_messages_name_keys_or_everything() {
        let r = Record::default();
        invalidations(
            &r,
            &[Value::Array(vec![
                Value::BulkString(b"twofa:sv:{a}:b".to_vec()),
                Value::BulkString(b"twofa:sv:{a}:c".to_vec()),
            ])],
        );
        invalidations(&r, &[Value::Nil]);
        invalidations(&r, &[]);
        invalidations(&r, &[Value::Array(vec![Value::Int(1)])]);
        assert_eq!(
            *r.0.lock(),
            ["twofa:sv:{a}:b", "twofa:sv:{a}:c", "*", "*", "*"]
        );
    }
}
