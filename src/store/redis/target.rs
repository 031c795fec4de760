//! Where Redis is, from the storage keys: one server (`storage.redis_url`,
//! `redis://` or `rediss://`), a Redis Cluster (`storage.redis_cluster_urls`),
//! or the primary that Redis Sentinel names (`storage.redis_sentinel_urls`
//! with `storage.redis_sentinel_master`).
//!
//! TLS (`rediss://`) is rustls on aws-lc-rs, verified against
//! `storage.redis_ca_path` or the system roots; redis-rs never falls back to
//! plaintext, and `#insecure` URLs are refused at configuration time. A
//! certificate that does not verify is reported as
//! [`StoreError::Incompatible`] with what went wrong, so that `serve`
//! refuses to start instead of waiting for a Redis that will never verify.
//!
//! Under Sentinel the user name, password, database and scheme of the
//! sentinel URLs apply to the sentinels and to the primary alike (the usual
//! deployment: one `requirepass`, `tls-port` on every node). Each connect asks
//! the sentinels again and checks `ROLE` on the answer, so a failover is
//! followed by the next reconnect, and while no primary is known connects fail
//! (decisions fail closed).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError,
    TlsCertificates, TlsMode,
};

use super::super::StoreError;
use crate::config::StorageConfig;

/// One connect (TCP, TLS, `HELLO`/`AUTH`) to one node. A healthy connect,
/// TLS included, takes a few milliseconds; this bounds how long a Check
/// waits before answering 503 while Redis is unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Finding the primary through Sentinel: a sentinel round trip, then a
/// connect to the primary to check its `ROLE`, then the connection itself.
pub const SENTINEL_TIMEOUT: Duration = Duration::from_millis(1500);
/// One request (a command, a MULTI, a script), including a cluster's
/// redirections: a slow or dead Redis must turn into a prompt 503, not a
/// hung proxy.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1000);

/// The three ways to reach Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One server: `storage.redis_url`.
    Single,
    /// `storage.redis_cluster_urls`.
    Cluster,
    /// `storage.redis_sentinel_urls` and `storage.redis_sentinel_master`.
    Sentinel,
}

/// A Redis deployment, ready to be connected to (nothing is connected yet).
pub struct RedisTarget {
    kind: Kind,
    /// What verifies certificates, for error messages.
    trust: String,
    /// What is connected to, for error messages (no credentials).
    shown: String,
}

enum Kind {
    Single(Client),
    Cluster(ClusterClient),
    Sentinel {
        // The sentinel client caches its connections to the sentinels and
        // needs `&mut` to ask them; one lookup at a time is plenty.
        client: tokio::sync::Mutex<SentinelClient>,
    },
}

/// A live connection: multiplexed (one server, or Sentinel's primary) or a
/// cluster connection (one multiplexed connection per node, routed by slot).
/// Both are cheap to clone and share one socket per node.
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl RedisTarget {
    /// The target the storage keys name, `None` for `memory://`. Parses and
    /// reads the CA bundle; connects to nothing.
    pub fn from_config(cfg: &StorageConfig) -> Result<Option<Self>, String> {
        let certs = match &cfg.redis_ca_path {
            Some(p) => {
                // Checked here as well as in the configuration, for callers
                // that build a target from a hand-made StorageConfig.
                crate::tls::read_ca_bundle(p).map_err(|e| format!("storage.redis_ca_path: {e}"))?;
                let pem = std::fs::read(p).map_err(|e| {
                    format!("storage.redis_ca_path: cannot read {}: {e}", p.display())
                })?;
                Some(TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                })
            }
            None => None,
        };
        let trust = match &cfg.redis_ca_path {
            Some(p) => format!("the CA bundle storage.redis_ca_path = {}", p.display()),
            None => "the system roots (storage.redis_ca_path is unset)".into(),
        };
        // redis-rs builds its rustls configuration with the process-default
        // provider.
        crate::tls::install_default_provider();
        if !cfg.redis_cluster_urls.is_empty() {
            let key = "storage.redis_cluster_urls";
            let infos = cfg
                .redis_cluster_urls
                .iter()
                .map(|u| node_info(key, u.expose()))
                .collect::<Result<Vec<_>, _>>()?;
            let shown = format!(
                "the Redis Cluster of {}",
                infos
                    .iter()
                    .map(|i| addr_of(i.addr()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut b = ClusterClient::builder(infos)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(OP_TIMEOUT)
                // Redirections and TRYAGAIN during a resharding or a
                // failover are retried within OP_TIMEOUT.
                .retries(3)
                .min_retry_wait(20)
                .max_retry_wait(200)
                .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
            if let Some(c) = certs {
                b = b.certs(c);
            }
            let client = b.build().map_err(|e| format!("{key}: {e}"))?;
            return Ok(Some(Self {
                kind: Kind::Cluster(client),
                trust,
                shown,
            }));
        }
        if !cfg.redis_sentinel_urls.is_empty() {
            let key = "storage.redis_sentinel_urls";
            let master = cfg.redis_sentinel_master.clone().ok_or_else(|| {
                "storage.redis_sentinel_master: required with storage.redis_sentinel_urls"
                    .to_string()
            })?;
            let infos = cfg
                .redis_sentinel_urls
                .iter()
                .map(|u| node_info(key, u.expose()))
                .collect::<Result<Vec<_>, _>>()?;
            let first = infos
                .first()
                .ok_or_else(|| format!("{key}: empty"))?
                .clone();
            let tls = matches!(first.addr(), ConnectionAddr::TcpTls { .. });
            let shown = format!(
                "the primary `{master}` named by the sentinels {}",
                infos
                    .iter()
                    .map(|i| addr_of(i.addr()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let nodelay = redis::io::tcp::TcpSettings::default().set_nodelay(true);
            let mut b = SentinelClientBuilder::new(
                infos.iter().map(|i| i.addr().clone()),
                &master,
                SentinelServerType::Master,
            )
            .map_err(|e| format!("{key}: {e}"))?
            .set_client_to_redis_db(first.redis_settings().db())
            .set_client_to_redis_tcp_settings(nodelay.clone())
            .set_client_to_sentinel_tcp_settings(nodelay);
            let r = first.redis_settings();
            if let Some(u) = r.username() {
                b = b
                    .set_client_to_redis_username(u)
                    .set_client_to_sentinel_username(u);
            }
            if let Some(p) = r.password() {
                b = b
                    .set_client_to_redis_password(p)
                    .set_client_to_sentinel_password(p);
            }
            if tls {
                b = b
                    .set_client_to_redis_tls_mode(TlsMode::Secure)
                    .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                if let Some(c) = certs {
                    b = b
                        .set_client_to_redis_certificates(c.clone())
                        .set_client_to_sentinel_certificates(c);
                }
            }
            let client = b.build().map_err(|e| format!("{key}: {e}"))?;
            return Ok(Some(Self {
                kind: Kind::Sentinel {
                    client: tokio::sync::Mutex::new(client),
                },
                trust,
                shown,
            }));
        }
        let url = cfg.redis_url.expose();
        if url == "memory://" {
            return Ok(None);
        }
        let key = "storage.redis_url";
        let info = node_info(key, url)?;
        let shown = format!("Redis at {}", addr_of(info.addr()));
        let client = match (certs, matches!(info.addr(), ConnectionAddr::TcpTls { .. })) {
            (Some(c), true) => Client::build_with_tls(info, c),
            _ => Client::open(info),
        }
        .map_err(|e| format!("{key}: {e}"))?;
        Ok(Some(Self {
            kind: Kind::Single(client),
            trust,
            shown,
        }))
    }

    pub fn topology(&self) -> Topology {
        match self.kind {
            Kind::Single(_) => Topology::Single,
            Kind::Cluster(_) => Topology::Cluster,
            Kind::Sentinel { .. } => Topology::Sentinel,
        }
    }

    /// Where a tracking (invalidation) connection goes: the current primary
    /// for one server and for Sentinel (asked afresh, so call it again after a
    /// failover), `None` for a Cluster, whose keys live on several nodes.
    /// The `ConnectionInfo` carries the TLS settings and credentials.
    pub async fn tracking_info(&self) -> Result<Option<ConnectionInfo>, StoreError> {
        match &self.kind {
            Kind::Single(c) => Ok(Some(c.get_connection_info().clone())),
            Kind::Cluster(_) => Ok(None),
            Kind::Sentinel { .. } => {
                let c = tokio::time::timeout(SENTINEL_TIMEOUT, self.sentinel_primary())
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable("redis: no answer from the sentinels".into())
                    })?
                    .map_err(|e| self.failure(&e))?;
                Ok(Some(c.get_connection_info().clone()))
            }
        }
    }

    /// How long one [`connect`](Self::connect) may take.
    pub fn connect_timeout(&self) -> Duration {
        match self.kind {
            Kind::Sentinel { .. } => SENTINEL_TIMEOUT,
            // A cluster connect reaches the seeds, then every primary.
            Kind::Cluster(_) => CONNECT_TIMEOUT * 2,
            Kind::Single(_) => CONNECT_TIMEOUT,
        }
    }

    /// A new connection (for Sentinel: to the primary the sentinels name
    /// now, after it confirmed its role).
    pub async fn connect(&self) -> Result<Conn, RedisError> {
        match &self.kind {
            Kind::Single(c) => c
                .get_multiplexed_async_connection_with_config(&conn_config())
                .await
                .map(Conn::Single),
            Kind::Cluster(c) => c.get_async_connection().await.map(Conn::Cluster),
            Kind::Sentinel { .. } => {
                let c = self.sentinel_primary().await?;
                c.get_multiplexed_async_connection_with_config(&conn_config())
                    .await
                    .map(Conn::Single)
            }
        }
    }

    async fn sentinel_primary(&self) -> Result<Client, RedisError> {
        let Kind::Sentinel { client } = &self.kind else {
            return Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "not a Sentinel target",
            )));
        };
        client.lock().await.async_get_client().await
    }

    /// A Redis error as the stores report it: a certificate that does not
    /// verify is `Incompatible`, with what is wrong; anything else
    /// `Unavailable`.
    pub fn failure(&self, e: &RedisError) -> StoreError {
        match tls_problem(&e.to_string()) {
            Some(why) => StoreError::Incompatible(format!(
                "the TLS certificate of {} does not verify against {}: {why}",
                self.shown, self.trust
            )),
            None => StoreError::Unavailable(format!("redis: {e}")),
        }
    }
}

fn conn_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(OP_TIMEOUT))
}

/// A node's URL with TCP_NODELAY: redis-rs leaves Nagle's algorithm on by
/// default, which holds back each small pipelined command until the previous
/// one is acknowledged and adds milliseconds to every Check. Errors name the
/// key, never the URL (it may hold a password).
fn node_info(key: &str, url: &str) -> Result<ConnectionInfo, String> {
    let info = url
        .into_connection_info()
        .map_err(|e| format!("{key}: {e}"))?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    Ok(info.set_tcp_settings(tcp))
}

fn addr_of(a: &ConnectionAddr) -> String {
    match a {
        ConnectionAddr::Tcp(h, p) => format!("{h}:{p}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port} (TLS)"),
        other => other.to_string(),
    }
}

/// What is wrong with a certificate, from a connect error's text (rustls'
/// error reaches us only as text inside redis-rs' I/O error).
fn tls_problem(text: &str) -> Option<String> {
    if !(text.contains("invalid peer certificate") || text.contains("InvalidCertificate")) {
        return None;
    }
    let why = if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        "it is not signed by a trusted CA (wrong CA?)"
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        "it does not name the host connected to"
    } else if text.contains("Expired") {
        "it has expired"
    } else if text.contains("NotValidYet") {
        "it is not valid yet"
    } else {
        "it was refused"
    };
    Some(format!("{why} ({text})"))
}

#[cfg(test)]
mod tests {
    use super::tls_problem;

    #[test]
    fn certificate_failures_are_named() {
        let t = tls_problem("I/O error: invalid peer certificate: UnknownIssuer").unwrap();
        assert!(t.contains("wrong CA"), "{t}");
        let t = tls_problem("invalid peer certificate: NotValidForName").unwrap();
        assert!(t.contains("does not name the host"), "{t}");
        assert!(tls_problem("Connection refused (os error 111)").is_none());
    }
}
