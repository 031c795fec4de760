//! Throwaway Redis deployments in each topology the service supports
//! ([`TestRedis`]: one server, one server over TLS, a 3-primary Cluster, a
//! primary with a replica and a sentinel), and the session-store layout the
//! tests write into.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use redis::AsyncCommands;
use tempfile::TempDir;

use super::app::{toml_string, toml_strings, AppConfig};
use super::ports::free_port;
use super::process::{tool_path, wait_until, ChildGuard};
use super::tls::TestCa;

/// The PEM files of a TLS server: what `storage.redis_ca_path` names, and the
/// CA certificate for the test's own clients.
pub struct TlsFiles {
    pub ca_path: PathBuf,
    pub ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    /// A certificate for `127.0.0.1` and `localhost` issued by `ca`, written
    /// to `dir` with the CA's certificate.
    pub fn issue(ca: &TestCa, dir: &std::path::Path, stem: &str) -> TlsFiles {
        let (cert, key) = ca
            .issue_server(&["127.0.0.1", "localhost"])
            .write(dir, stem);
        TlsFiles {
            ca_path: ca.write_cert(dir, "ca.pem"),
            ca_pem: ca.cert_pem().to_owned(),
            cert,
            key,
        }
    }
}

/// A Redis server on a free loopback port that keeps nothing on disk, so that a
/// restart comes back empty, as a crashed production Redis without persistence does.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<ChildGuard>,
    tls: Option<TlsFiles>,
    extra: Vec<String>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        RedisServer::start_with(None, &[]).await
    }

    /// A server over TLS only (`--tls-port`, `--port 0`), with a certificate
    /// for `127.0.0.1` and `localhost` issued by a CA of its own.
    pub async fn start_tls() -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("twofa-redis-tls-")
            .tempdir()
            .expect("temp dir");
        let ca = TestCa::new("twofa test Redis CA");
        let files = TlsFiles::issue(&ca, dir.path(), "redis");
        RedisServer::start_in(dir, Some(files), &[]).await
    }

    /// A server over TLS with a certificate of `ca`.
    pub async fn start_tls_of(ca: &TestCa, extra: &[String]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("twofa-redis-tls-")
            .tempdir()
            .expect("temp dir");
        let files = TlsFiles::issue(ca, dir.path(), "redis");
        RedisServer::start_in(dir, Some(files), extra).await
    }

    /// A server with extra arguments (`--cluster-enabled yes`, `--replicaof …`).
    pub async fn start_with(tls: Option<TlsFiles>, extra: &[String]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("twofa-redis-")
            .tempdir()
            .expect("temp dir");
        RedisServer::start_in(dir, tls, extra).await
    }

    async fn start_in(dir: TempDir, tls: Option<TlsFiles>, extra: &[String]) -> RedisServer {
        let mut server = RedisServer::unstarted(dir, tls, extra);
        server.spawn().await;
        server
    }

    fn unstarted(dir: TempDir, tls: Option<TlsFiles>, extra: &[String]) -> RedisServer {
        RedisServer {
            port: free_port(),
            dir,
            child: None,
            tls,
            extra: extra.to_vec(),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("rediss://127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// A client of this server (over TLS with the server's CA when it has one).
    pub fn client(&self) -> redis::Client {
        client_for(&self.url(), self.tls.as_ref())
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
        let child = self.spawn_only();
        self.wait_ready(child).await;
    }

    fn spawn_only(&mut self) -> ChildGuard {
        let mut cmd = Command::new(redis_server_binary());
        match &self.tls {
            Some(t) => {
                cmd.args(["--port", "0"])
                    .args(["--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&t.cert)
                    .arg("--tls-key-file")
                    .arg(&t.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&t.ca_path)
                    .args(["--tls-auth-clients", "no"]);
            }
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(&self.extra);
        ChildGuard::spawn("redis-server", cmd, &self.dir.path().join("redis.log"))
    }

    async fn wait_ready(&mut self, mut child: ChildGuard) {
        let client = self.client();
        wait_until(
            "redis-server to answer PING",
            Duration::from_secs(10),
            || {
                child.assert_running();
                ping(client.clone())
            },
        )
        .await;
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }

    /// Records, the way twofa-authz does, that the Keycloak session (`iss`, `sub`,
    /// `sid`) passed `factor` at unix time `at`. This stands in for a completed
    /// verification until the verification API exists; it is a test-only door,
    /// never a route of the service.
    pub async fn mark_verified(&self, key: &SessionKey<'_>, factor: &str, at: i64, ttl: Duration) {
        write_verified(&mut self.connection().await, key, factor, at, ttl).await;
    }

    /// All keys, to check what the service stored (prefix, TTL).
    pub async fn keys(&self) -> Vec<String> {
        let mut con = self.connection().await;
        con.keys("*").await.expect("KEYS *")
    }
}

fn redis_server_binary() -> PathBuf {
    tool_path("TWOFA_TEST_REDIS", &["redis-server"])
}

/// `redis-cli`, beside `redis-server`.
pub fn redis_cli_binary() -> PathBuf {
    let server = redis_server_binary();
    let beside = server.with_file_name("redis-cli");
    if beside.exists() {
        beside
    } else {
        tool_path("TWOFA_TEST_REDIS_CLI", &["redis-cli"])
    }
}

/// A client of `url`, trusting `tls`'s CA for `rediss://`.
pub fn client_for(url: &str, tls: Option<&TlsFiles>) -> redis::Client {
    // redis-rs builds its rustls configuration with the process default.
    twofa_authz::tls::install_default_provider();
    match tls {
        Some(t) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(t.ca_pem.clone().into_bytes()),
            },
        ),
        None => redis::Client::open(url),
    }
    .expect("redis url")
}

async fn ping(client: redis::Client) -> bool {
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

/// Records, the way twofa-authz does, that the Keycloak session (`iss`, `sub`,
/// `sid`) passed `factor` at unix time `at`: a test-only door, never a route of
/// the service. One command per key, so that it works on a Cluster too.
pub async fn write_verified<C: redis::aio::ConnectionLike + Send + Sync>(
    con: &mut C,
    key: &SessionKey<'_>,
    factor: &str,
    at: i64,
    ttl: Duration,
) {
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

/// The Redis deployments the service supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    Plain,
    Tls,
    Cluster,
    Sentinel,
    /// Sentinel with every node (sentinel, primary, replica) over TLS.
    SentinelTls,
}

/// One Redis deployment of a given [`Topology`], started for one test.
pub enum TestRedis {
    Plain(RedisServer),
    Tls(RedisServer),
    Cluster(RedisCluster),
    Sentinel(RedisSentinel),
}

/// A connection to any [`TestRedis`]: a cluster connection routes each
/// command by its key's slot.
#[derive(Clone)]
pub enum TestConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for TestConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            TestConn::Single(c) => c.req_packed_command(cmd),
            TestConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            TestConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            TestConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        0
    }
}

impl TestRedis {
    pub async fn start(topology: Topology) -> TestRedis {
        match topology {
            Topology::Plain => TestRedis::Plain(RedisServer::start().await),
            Topology::Tls => TestRedis::Tls(RedisServer::start_tls().await),
            Topology::Cluster => TestRedis::Cluster(RedisCluster::start().await),
            Topology::Sentinel => TestRedis::Sentinel(RedisSentinel::start().await),
            Topology::SentinelTls => TestRedis::Sentinel(RedisSentinel::start_with(true).await),
        }
    }

    pub fn topology(&self) -> Topology {
        match self {
            TestRedis::Plain(_) => Topology::Plain,
            TestRedis::Tls(_) => Topology::Tls,
            TestRedis::Cluster(_) => Topology::Cluster,
            TestRedis::Sentinel(s) if s.ca_path().is_some() => Topology::SentinelTls,
            TestRedis::Sentinel(_) => Topology::Sentinel,
        }
    }

    /// Points the service's storage keys at this deployment.
    pub fn configure(&self, config: &mut AppConfig) {
        match self {
            TestRedis::Plain(s) => {
                config.set_str("storage", "redis_url", &s.url());
            }
            TestRedis::Tls(s) => {
                config.set_str("storage", "redis_url", &s.url());
                if let Some(t) = s.tls() {
                    config.set_str("storage", "redis_ca_path", &t.ca_path.display().to_string());
                }
            }
            TestRedis::Cluster(c) => {
                let urls = c.urls();
                let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
                config.set_str("storage", "redis_url", "memory://").set(
                    "storage",
                    "redis_cluster_urls",
                    toml_strings(&refs),
                );
            }
            TestRedis::Sentinel(s) => {
                config
                    .set_str("storage", "redis_url", "memory://")
                    .set(
                        "storage",
                        "redis_sentinel_urls",
                        toml_strings(&[&s.sentinel_url()]),
                    )
                    .set(
                        "storage",
                        "redis_sentinel_master",
                        toml_string(SENTINEL_MASTER),
                    );
                if let Some(ca) = s.ca_path() {
                    config.set_str("storage", "redis_ca_path", &ca.display().to_string());
                }
            }
        }
    }

    /// The storage configuration as the library takes it, for store tests.
    pub fn storage_config(&self, prefix: &str) -> twofa_authz::config::StorageConfig {
        use twofa_authz::config::SecretUrl;
        let mut c = twofa_authz::config::StorageConfig {
            key_prefix: prefix.to_owned(),
            ..Default::default()
        };
        match self {
            TestRedis::Plain(s) => c.redis_url = SecretUrl::new(s.url()),
            TestRedis::Tls(s) => {
                c.redis_url = SecretUrl::new(s.url());
                c.redis_ca_path = s.tls().map(|t| t.ca_path.clone());
            }
            TestRedis::Cluster(k) => {
                c.redis_cluster_urls = k.urls().into_iter().map(SecretUrl::new).collect()
            }
            TestRedis::Sentinel(s) => {
                c.redis_sentinel_urls = vec![SecretUrl::new(s.sentinel_url())];
                c.redis_sentinel_master = Some(SENTINEL_MASTER.into());
                c.redis_ca_path = s.ca_path();
            }
        }
        c
    }

    /// A connection for the test's own inspection (to the current primary
    /// under Sentinel).
    pub async fn connection(&self) -> TestConn {
        match self {
            TestRedis::Plain(s) | TestRedis::Tls(s) => TestConn::Single(s.connection().await),
            TestRedis::Cluster(c) => TestConn::Cluster(c.connection().await),
            TestRedis::Sentinel(s) => TestConn::Single(s.primary_connection().await),
        }
    }

    /// All keys (of every primary of a Cluster).
    pub async fn keys(&self) -> Vec<String> {
        match self {
            TestRedis::Cluster(c) => {
                let mut all = Vec::new();
                for n in &c.nodes {
                    all.extend(n.keys().await);
                }
                all
            }
            _ => {
                let mut con = self.connection().await;
                redis::cmd("KEYS")
                    .arg("*")
                    .query_async(&mut con)
                    .await
                    .expect("KEYS *")
            }
        }
    }

    pub async fn mark_verified(&self, key: &SessionKey<'_>, factor: &str, at: i64, ttl: Duration) {
        let mut con = self.connection().await;
        write_verified(&mut con, key, factor, at, ttl).await;
        if let TestRedis::Sentinel(_) = self {
            // On the replica too before anything fails over.
            let _: i64 = redis::cmd("WAIT")
                .arg(1)
                .arg(2000)
                .query_async(&mut con)
                .await
                .expect("WAIT");
        }
    }

    fn single(&mut self) -> &mut RedisServer {
        match self {
            TestRedis::Plain(s) | TestRedis::Tls(s) => s,
            other => panic!("{:?} is not one server", other.topology()),
        }
    }

    /// One server only: stops it.
    pub fn stop(&mut self) {
        self.single().stop();
    }

    /// One server only: starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.single().restart().await;
    }

    pub fn url(&self) -> String {
        match self {
            TestRedis::Plain(s) | TestRedis::Tls(s) => s.url(),
            other => panic!("{:?} has no single URL", other.topology()),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            TestRedis::Plain(s) | TestRedis::Tls(s) => s.port(),
            other => panic!("{:?} has no single port", other.topology()),
        }
    }
}

/// A Redis Cluster of three primaries without replicas, created with
/// `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        // Started at once: each waits for its own PING.
        let nodes = futures::future::join_all((0..3).map(|_| {
            let bus = free_port();
            async move {
                RedisServer::start_with(
                    None,
                    &[
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        "nodes.conf".into(),
                        "--cluster-node-timeout".into(),
                        "2000".into(),
                        "--cluster-port".into(),
                        bus.to_string(),
                    ],
                )
                .await
            }
        }))
        .await;
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new(redis_cli_binary())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        for n in &cluster.nodes {
            let client = n.client();
            wait_until("the cluster to be ok", Duration::from_secs(20), || {
                let client = client.clone();
                async move {
                    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                        return false;
                    };
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    info.contains("cluster_state:ok")
                }
            })
            .await;
        }
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("connect to the test cluster")
    }
}

/// The master name the test sentinels monitor.
pub const SENTINEL_MASTER: &str = "twofa-primary";

/// A primary, its replica and one sentinel (quorum 1) that fails over
/// quickly.
pub struct RedisSentinel {
    pub servers: Vec<RedisServer>,
    sentinel_port: u16,
    sentinel_tls: Option<TlsFiles>,
    _sentinel: ChildGuard,
    _dir: TempDir,
}

impl RedisSentinel {
    pub async fn start() -> RedisSentinel {
        RedisSentinel::start_with(false).await
    }

    /// With `tls`: every node, the sentinel included, over TLS only, with
    /// certificates of one CA, replication over TLS too.
    pub async fn start_with(tls: bool) -> RedisSentinel {
        let ca = TestCa::new("twofa test Sentinel CA");
        let tls_args: Vec<String> = if tls {
            vec!["--tls-replication".into(), "yes".into()]
        } else {
            vec![]
        };
        let primary = if tls {
            RedisServer::start_tls_of(&ca, &tls_args).await
        } else {
            RedisServer::start().await
        };
        let mut replica_args = vec![
            "--replicaof".to_string(),
            "127.0.0.1".into(),
            primary.port().to_string(),
        ];
        replica_args.extend(tls_args.iter().cloned());
        let replica = if tls {
            RedisServer::start_tls_of(&ca, &replica_args).await
        } else {
            RedisServer::start_with(None, &replica_args).await
        };
        let pc = primary.client();
        wait_until("the replica to be in sync", Duration::from_secs(20), || {
            let pc = pc.clone();
            async move {
                let Ok(mut c) = pc.get_multiplexed_async_connection().await else {
                    return false;
                };
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                info.contains("connected_slaves:1") && info.contains("state=online")
            }
        })
        .await;
        let dir = tempfile::Builder::new()
            .prefix("twofa-sentinel-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        let tls_files = tls.then(|| TlsFiles::issue(&ca, dir.path(), "sentinel"));
        let listen = match &tls_files {
            Some(t) => format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                t.cert.display(),
                t.key.display(),
                t.ca_path.display()
            ),
            None => format!("port {port}\n"),
        };
        std::fs::write(
            &conf,
            format!(
                "{listen}bind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {m} 127.0.0.1 {p} 1\n\
                 sentinel down-after-milliseconds {m} 1000\n\
                 sentinel failover-timeout {m} 5000\n\
                 sentinel parallel-syncs {m} 1\n",
                dir = dir.path().display(),
                m = SENTINEL_MASTER,
                p = primary.port(),
            ),
        )
        .expect("write sentinel.conf");
        let mut cmd = Command::new(redis_server_binary());
        cmd.arg(&conf).arg("--sentinel");
        let mut child = ChildGuard::spawn("redis-sentinel", cmd, &dir.path().join("sentinel.log"));
        let s = RedisSentinel {
            servers: vec![primary, replica],
            sentinel_port: port,
            sentinel_tls: tls_files,
            _sentinel: {
                child.assert_running();
                child
            },
            _dir: dir,
        };
        let sc = client_for(&s.sentinel_url(), s.sentinel_tls.as_ref());
        wait_until(
            "the sentinel to know the replica",
            Duration::from_secs(20),
            || {
                let sc = sc.clone();
                async move {
                    let Ok(mut c) = sc.get_multiplexed_async_connection().await else {
                        return false;
                    };
                    let replicas: Vec<std::collections::HashMap<String, String>> =
                        redis::cmd("SENTINEL")
                            .arg("REPLICAS")
                            .arg(SENTINEL_MASTER)
                            .query_async(&mut c)
                            .await
                            .unwrap_or_default();
                    replicas
                        .iter()
                        .any(|r| r.get("flags").is_some_and(|f| f == "slave"))
                }
            },
        )
        .await;
        s
    }

    pub fn sentinel_url(&self) -> String {
        match self.sentinel_tls {
            Some(_) => format!("rediss://127.0.0.1:{}/", self.sentinel_port),
            None => format!("redis://127.0.0.1:{}/", self.sentinel_port),
        }
    }

    /// The CA of every node when they speak TLS.
    pub fn ca_path(&self) -> Option<PathBuf> {
        self.sentinel_tls.as_ref().map(|t| t.ca_path.clone())
    }

    async fn sentinel(&self) -> redis::aio::MultiplexedConnection {
        client_for(&self.sentinel_url(), self.sentinel_tls.as_ref())
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the sentinel")
    }

    /// The port of the primary the sentinel names now.
    pub async fn primary_port(&self) -> u16 {
        let mut c = self.sentinel().await;
        let (_, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(SENTINEL_MASTER)
            .query_async(&mut c)
            .await
            .expect("SENTINEL GET-MASTER-ADDR-BY-NAME");
        port
    }

    pub async fn primary_connection(&self) -> redis::aio::MultiplexedConnection {
        let port = self.primary_port().await;
        let s = self
            .servers
            .iter()
            .find(|s| s.port() == port)
            .expect("the primary is one of ours");
        s.connection().await
    }

    /// `SENTINEL FAILOVER`: the replica becomes the primary.
    pub async fn failover(&self) {
        let mut c = self.sentinel().await;
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(SENTINEL_MASTER)
            .query_async(&mut c)
            .await
            .expect("SENTINEL FAILOVER");
    }
}
