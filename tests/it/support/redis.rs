//! A throwaway `redis-server`, and the session-store layout the tests write into.

use std::process::Command;
use std::time::Duration;

use redis::AsyncCommands;
use tempfile::TempDir;

use super::ports::free_port;
use super::process::{tool_path, wait_until, ChildGuard};

/// A Redis server on a free loopback port that keeps nothing on disk, so that a
/// restart comes back empty, as a crashed production Redis without persistence does.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<ChildGuard>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::Builder::new()
                .prefix("twofa-redis-")
                .tempdir()
                .expect("temp dir"),
            child: None,
        };
        server.spawn().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server. Clients see connection refused until `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop();
        }
    }

    /// Starts the server again on the same port, empty.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(tool_path("TWOFA_TEST_REDIS", &["redis-server"]));
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &self.dir.path().display().to_string()]);
        let mut child = ChildGuard::spawn("redis-server", cmd, &self.dir.path().join("redis.log"));
        let url = self.url();
        wait_until(
            "redis-server to answer PING",
            Duration::from_secs(10),
            || {
                child.assert_running();
                ping(url.clone())
            },
        )
        .await;
        self.child = Some(child);
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }

    /// Records, the way twofa-authz does, that the Keycloak session (`iss`, `sub`,
    /// `sid`) passed `factor` at unix time `at`. This stands in for a completed
    /// verification until the verification API exists; it is a test-only door,
    /// never a route of the service.
    pub async fn mark_verified(&self, key: &SessionKey<'_>, factor: &str, at: i64, ttl: Duration) {
        let mut con = self.connection().await;
        // The service's own key names (`store::keys`), so that a layout
        // change cannot drift apart.
        use twofa_authz::store::keys;
        let ids = twofa_authz::store::SessionIds::new(key.iss, key.sub, key.sid);
        let value = serde_json::json!({ "f": factor, "at": at }).to_string();
        let ttl = ttl.as_secs().max(1);
        let p = key.prefix;
        let _: () = con
            .set_ex(
                format!("{p}{}", keys::session(&ids.subject, &ids.session)),
                value,
                ttl,
            )
            .await
            .expect("SET the verified session");
        let _: () = con
            .set_ex(
                format!("{p}{}", keys::session_by_sid(&ids.sid)),
                keys::sid_target(&ids.subject, &ids.session),
                ttl,
            )
            .await
            .expect("SET the sid index");
        let index = format!("{p}{}", keys::subject_sessions(&ids.subject));
        let _: () = con
            .sadd(&index, &ids.session)
            .await
            .expect("SADD the subject index");
        let _: () = con
            .expire(&index, ttl as i64)
            .await
            .expect("EXPIRE the subject index");
    }

    /// All keys, to check what the service stored (prefix, TTL).
    pub async fn keys(&self) -> Vec<String> {
        let mut con = self.connection().await;
        con.keys("*").await.expect("KEYS *")
    }
}

async fn ping(url: String) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(Ok(mut con)) = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    else {
        return false;
    };
    let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut con).await;
    pong.is_ok()
}

/// Names a Keycloak session in the session store (INTERFACE.md: verified state
/// belongs to the triple `iss`, `sub`, `sid`).
pub struct SessionKey<'a> {
    pub prefix: &'a str,
    pub iss: &'a str,
    pub sub: &'a str,
    pub sid: &'a str,
}

impl SessionKey<'_> {
    pub fn session_hash(&self) -> String {
        twofa_authz::token::session_hash(self.iss, self.sub, self.sid)
    }

    pub fn subject_hash(&self) -> String {
        twofa_authz::token::subject_hash(self.iss, self.sub)
    }
}
