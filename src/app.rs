//! Wiring: builds the shared state from the configuration and runs the gRPC
//! and HTTP listeners until shutdown. `run` takes listeners that are already
//! bound, so tests can bind port 0 and read the address back.
//!
//! The HTTP listener has its own accept loop (INTERFACE.md section 5, abuse
//! limits): a client that has not sent its request head within 10 s is
//! dropped, and at most `server.max_connections` connections are served at
//! once. Beyond the cap, new connections are not accepted: they wait in the
//! kernel's listen backlog (or are refused by it once that is full) until an
//! open one closes, so a burst of legitimate clients is slowed, not failed,
//! and half-open connections free their slot within 10 s.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::audit::Audit;
use crate::authz::Authorizer;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::crypto::KeyRing;
use crate::delivery::Delivery;
use crate::factor::hashing::HashPool;
use crate::factor::service::{Directory, Ports, Settings};
use crate::factor::webauthn::{PasskeyPorts, Passkeys};
use crate::factor::Factors;
use crate::keycloak::AdminClient;
use crate::metrics::Metrics;
use crate::store::session_cache::CachedSessions;
use crate::store::{self, EphemeralStore, ProfileStore, SessionStore, StoreError};
use crate::token::{parse_algorithms, DevIssuer, Jwks, Validator};

/// In-flight requests get this long to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

/// A client must have sent its whole request head within this time
/// (HTTP/1: from its first byte, and from the end of the previous response
/// on a kept-alive connection; any connection: from being accepted until its
/// first bytes tell HTTP/1 from HTTP/2).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AppState {
    pub cfg: Arc<Config>,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    pub authz: Arc<Authorizer>,
    pub sessions: Arc<dyn SessionStore>,
    /// The memory in front of a Redis session store (`cache.session_capacity`),
    /// whose invalidation channel `run` opens; None when there is none.
    pub session_cache: Option<Arc<CachedSessions>>,
    pub dev: Option<Arc<DevIssuer>>,
    pub http: reqwest::Client,
    /// Pending codes, attempt counters, lockouts, resend timers, pending
    /// TOTP secrets (Redis or memory).
    pub ephemeral: Arc<dyn EphemeralStore>,
    /// Profiles, enrolled factors, recovery codes, failure counts (SQL).
    pub profiles: Arc<dyn ProfileStore>,
    /// `security.encryption_keys`: AEAD for secrets at rest, keyed code hashes.
    pub keys: Arc<KeyRing>,
    /// Code and notice delivery (`email.provider`, `sms.provider`).
    pub delivery: Arc<Delivery>,
    /// The Keycloak Admin REST API, when `keycloak.admin_client_id` is set.
    pub keycloak_admin: Option<Arc<AdminClient>>,
    /// Every rule of the `/user` API's factor and contact flows.
    pub factors: Arc<Factors>,
    /// WebAuthn passkeys (`factor::webauthn`), built on `factors`.
    pub passkeys: Arc<Passkeys>,
    /// Argon2id hashing of recovery codes, a few at a time with bounded
    /// memory (`factor::hashing`).
    pub hashing: Arc<HashPool>,
    /// Audit events: the log line and the webhook queue.
    pub audit: Arc<Audit>,
}

/// What `/readyz` and gRPC health report (INTERFACE.md section 5): each
/// dependency is `"ok"` or `"down"`, the database also `"incompatible"` (a
/// schema this binary does not know, a certificate that fails verification).
/// Decisions need only the session store and the signing keys; without the
/// database the `/user` API is degraded, decisions are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub database: &'static str,
    pub session_store: &'static str,
    pub signing_keys: &'static str,
}

/// A readiness probe answers within this however a dependency hangs (the
/// manifests give the kubelet's probe 2 s).
const READINESS_CHECK_TIMEOUT: Duration = Duration::from_millis(1000);

impl Readiness {
    /// 200 from `/readyz`, SERVING from gRPC health: Check decisions can be
    /// made.
    pub fn ready(&self) -> bool {
        self.not_ready().is_empty()
    }
    /// What keeps decisions from being made.
    pub fn not_ready(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.session_store != "ok" {
            v.push("session_store");
        }
        if self.signing_keys != "ok" {
            v.push("signing_keys");
        }
        v
    }
    /// What is down without stopping decisions.
    pub fn degraded(&self) -> Vec<&'static str> {
        if self.database == "ok" {
            vec![]
        } else {
            vec!["database"]
        }
    }
    /// `ok`, `degraded` (ready, the `/user` API is not) or `unavailable`.
    pub fn status(&self) -> &'static str {
        if !self.ready() {
            "unavailable"
        } else if self.degraded().is_empty() {
            "ok"
        } else {
            "degraded"
        }
    }
}

fn state_of(r: Result<Result<(), StoreError>, tokio::time::error::Elapsed>) -> &'static str {
    match r {
        Ok(Ok(())) => "ok",
        Ok(Err(StoreError::Incompatible(_))) => "incompatible",
        Ok(Err(_)) | Err(_) => "down",
    }
}

impl AppState {
    /// `http_addr` is the bound HTTP address: the dev issuer's URL names it.
    pub fn build(
        cfg: Config,
        clock: SharedClock,
        http_addr: SocketAddr,
    ) -> Result<Arc<Self>, String> {
        let metrics = Arc::new(Metrics::new().map_err(|e| format!("metrics: {e}"))?);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("twofa-authz/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let algorithms = parse_algorithms(&cfg.keycloak.algorithms);
        let leeway = cfg.keycloak.leeway.as_secs() as i64;
        let (validator, dev) = if cfg.dev {
            let issuer = format!("http://{http_addr}/dev");
            let dev = DevIssuer::generate(issuer.clone(), clock.clone())?;
            let jwks = Jwks::fixed(dev.key_set()?, metrics.clone());
            let v = Validator::new(
                issuer,
                algorithms,
                vec![],
                vec![],
                leeway,
                jwks,
                clock.clone(),
                cfg.cache.token_capacity,
            );
            (v, Some(dev))
        } else {
            let kc = &cfg.keycloak;
            let issuer = kc
                .effective_issuer()
                .ok_or("keycloak.url and keycloak.realm (or keycloak.issuer) are required")?;
            let jwks = Jwks::remote(
                http.clone(),
                issuer.clone(),
                kc.jwks_url.clone(),
                algorithms.clone(),
                kc.jwks_cache_ttl.get(),
                kc.jwks_min_refresh_interval.get(),
                metrics.clone(),
            );
            let v = Validator::new(
                issuer,
                algorithms,
                kc.audiences.clone(),
                kc.allowed_clients.clone(),
                leeway,
                jwks,
                clock.clone(),
                cfg.cache.token_capacity,
            );
            (v, None)
        };
        validator.cache().count_with(metrics.token_cache.clone());
        let validator = Arc::new(validator);
        {
            // Weak: the validator's key set holds the metrics.
            let v = Arc::downgrade(&validator);
            metrics.observe_entries("token", move || v.upgrade().map_or(0, |v| v.cache().len()));
        }
        let (sessions, session_cache) = store::cached_session_store(
            &cfg.storage,
            cfg.cache.session_capacity,
            clock.clone(),
            metrics.session_cache.clone(),
        )?;
        if let Some(c) = &session_cache {
            metrics.observe_entries("session", c.entries());
        }
        let delivery = Arc::new(Delivery::from_config(&cfg, http.clone(), metrics.clone())?);
        let keycloak_admin =
            AdminClient::from_config(&cfg.keycloak, http.clone(), clock.clone())?.map(Arc::new);
        let ephemeral = store::ephemeral_store(&cfg.storage, clock.clone())?;
        let profiles = store::profile_store(&cfg.storage)?;
        let keys = Arc::new(
            KeyRing::from_config(&cfg.security.encryption_keys)
                .map_err(|e| format!("security.encryption_keys: {e}"))?,
        );
        let hashing = Arc::new(HashPool::for_host()?);
        let audit = Arc::new(Audit::from_config(
            &cfg.audit,
            http.clone(),
            clock.clone(),
            &metrics,
        ));
        let factors = Arc::new(Factors::new(
            Ports {
                ephemeral: ephemeral.clone(),
                profiles: profiles.clone(),
                devices: profiles.clone(),
                sessions: sessions.clone(),
                keys: keys.clone(),
                delivery: delivery.clone(),
                directory: keycloak_admin.clone().map(|a| a as Arc<dyn Directory>),
                metrics: metrics.clone(),
                hashing: hashing.clone(),
                audit: audit.clone(),
                clock: clock.clone(),
            },
            Settings {
                security: cfg.security.clone(),
                totp: cfg.totp.clone(),
                sync_verified_contacts: cfg.keycloak.sync_verified_contacts,
                mobile_attribute: cfg.keycloak.mobile_attribute.clone(),
            },
        ));
        let passkeys = Arc::new(Passkeys::new(
            PasskeyPorts {
                factors: factors.clone(),
                ephemeral: ephemeral.clone(),
                profiles: profiles.clone(),
                metrics: metrics.clone(),
                clock: clock.clone(),
            },
            &cfg.webauthn,
            &cfg.totp.issuer,
        )?);
        let authz = Arc::new(Authorizer::new(
            &cfg,
            validator,
            sessions.clone(),
            ephemeral.clone(),
            clock.clone(),
        ));
        Ok(Arc::new(Self {
            cfg: Arc::new(cfg),
            clock,
            metrics,
            authz,
            sessions,
            session_cache,
            dev,
            http,
            ephemeral,
            profiles,
            keys,
            delivery,
            keycloak_admin,
            factors,
            passkeys,
            hashing,
            audit,
        }))
    }

    /// Every dependency, checked at once, each bounded.
    pub async fn readiness(&self) -> Readiness {
        let t = READINESS_CHECK_TIMEOUT;
        let (database, session_store) = tokio::join!(
            tokio::time::timeout(t, self.profiles.ping()),
            tokio::time::timeout(t, self.sessions.ping()),
        );
        Readiness {
            database: state_of(database),
            session_store: state_of(session_store),
            signing_keys: self.signing_keys_state(),
        }
    }

    /// Whether Check decisions can be made; the database is not asked (the
    /// Check path never uses it).
    pub async fn can_decide(&self) -> bool {
        let store = tokio::time::timeout(READINESS_CHECK_TIMEOUT, self.sessions.ping()).await;
        state_of(store) == "ok" && self.signing_keys_state() == "ok"
    }

    fn signing_keys_state(&self) -> &'static str {
        if self.authz.validator().jwks().is_loaded() {
            "ok"
        } else {
            "down"
        }
    }
}

/// Connections the `server.metrics_addr` listener serves at once: a few
/// Prometheus replicas scrape it, nobody else.
const METRICS_MAX_CONNECTIONS: usize = 16;

/// Serves gRPC and HTTP (and, when given, the metrics listener of
/// `server.metrics_addr`) until `shutdown` completes, then stops accepting and
/// gives in-flight requests up to 10 s.
pub async fn run(
    state: Arc<AppState>,
    grpc: TcpListener,
    http: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (tx, rx) = watch::channel(false);
    state.authz.validator().jwks().spawn_refresher(rx.clone());
    state.audit.start();
    prepare_redis(&state).await?;
    if let Some(cache) = &state.session_cache {
        cache.start(rx.clone());
    }
    prepare_database(state.clone(), rx.clone()).await?;

    let (reporter, health) = tonic_health::server::health_reporter();
    spawn_health_monitor(state.clone(), reporter, rx.clone());

    let incoming = TcpListenerStream::new(grpc).map(|s| {
        s.inspect(|s| {
            // Check responses are tiny; Nagle would add latency to each.
            let _ = s.set_nodelay(true);
        })
    });
    let grpc_server = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(crate::grpc::service(state.clone()))
        .serve_with_incoming_shutdown(incoming, stopped(rx.clone()));
    let app = crate::http::router(state.clone());
    let http_server = serve_http(
        http,
        app,
        state.cfg.server.max_connections,
        stopped(rx.clone()),
    );

    let mut grpc_task = tokio::spawn(grpc_server);
    let mut http_task = tokio::spawn(http_server);
    let mut metrics_task = tokio::spawn({
        let app = crate::http::metrics_router(state.clone());
        let stop = stopped(rx.clone());
        async move {
            match metrics {
                Some(l) => serve_http(l, app, METRICS_MAX_CONNECTIONS, stop).await,
                None => {
                    stop.await;
                    Ok(())
                }
            }
        }
    });

    tokio::select! {
        _ = shutdown => {
            tracing::info!("shutting down: no new connections, draining in-flight requests");
        }
        r = &mut grpc_task => {
            let _ = tx.send(true);
            return Err(anyhow::anyhow!("gRPC server stopped: {:?}", r));
        }
        r = &mut http_task => {
            let _ = tx.send(true);
            return Err(anyhow::anyhow!("HTTP server stopped: {:?}", r));
        }
        r = &mut metrics_task => {
            let _ = tx.send(true);
            return Err(anyhow::anyhow!("metrics listener stopped: {:?}", r));
        }
    }
    let _ = tx.send(true);
    let drained = tokio::time::timeout(DRAIN, async {
        let g = grpc_task.await;
        let h = http_task.await;
        let m = metrics_task.await;
        (g, h, m)
    })
    .await;
    state
        .audit
        .close(state.cfg.audit.webhook_timeout.get())
        .await;
    match drained {
        Ok((Ok(Ok(())), Ok(Ok(())), Ok(Ok(())))) => Ok(()),
        Ok((g, h, m)) => Err(anyhow::anyhow!(
            "server error during shutdown: {g:?} {h:?} {m:?}"
        )),
        Err(_) => {
            tracing::warn!("in-flight requests did not finish within 10s; exiting anyway");
            Ok(())
        }
    }
}

/// The HTTP listener: HTTP/1 and h2c on one port (told apart by the HTTP/2
/// preface), TCP_NODELAY, the head timeout and the connection cap. On
/// `shutdown` it stops accepting, lets every open connection finish its
/// in-flight requests and returns; `run` bounds that by [`DRAIN`].
async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: the process is out of descriptors
                    // for a moment; spinning on accept would not help.
                    tracing::warn!(error = %e, "HTTP listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (stream, peer) = stream;
        // Check responses are tiny; Nagle would add latency to each.
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(FirstBytesDeadline::new(stream));
        let svc = crate::http::WithRequestMeta::new(app.clone(), peer.ip());
        let conn = builder
            .serve_connection_with_upgrades(io, TowerToHyperService::new(svc))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // Errors here are the client's (reset, timeout, bad request).
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// hyper's HTTP/1 head timer starts only once the connection is known to be
/// HTTP/1, which takes its first bytes: a client that connects and sends
/// nothing (or a few bytes of the HTTP/2 preface) would hold its slot for
/// ever. This fails reads with `TimedOut` once [`HEADER_READ_TIMEOUT`] has
/// passed before the first [`PREFACE_LEN`] bytes arrived; after them it is
/// out of the way.
struct FirstBytesDeadline {
    inner: TcpStream,
    read: usize,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The length of the HTTP/2 connection preface (RFC 9113 section 3.4).
const PREFACE_LEN: usize = 24;

impl FirstBytesDeadline {
    fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            read: 0,
            deadline: Some(Box::pin(tokio::time::sleep(HEADER_READ_TIMEOUT))),
        }
    }
}

impl AsyncRead for FirstBytesDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let Some(deadline) = this.deadline.as_mut() else {
            return polled;
        };
        match polled {
            Poll::Ready(Ok(())) => {
                this.read += buf.filled().len() - before;
                if this.read >= PREFACE_LEN || buf.filled().len() == before {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Err(
                io::Error::new(io::ErrorKind::TimedOut, "no request head within 10 s"),
            )),
            other => other,
        }
    }
}

impl AsyncWrite for FirstBytesDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Before serving: one attempt to migrate (`storage.auto_migrate`) or to
/// check the schema. A database this binary cannot use (migrations it does
/// not know or with other checksums, a TLS certificate that does not
/// verify) stops the start with that reason. A database that cannot be
/// reached does not: serving starts anyway (the Check path never needs the
/// database), `/user` answers 503 until it is back, and migration is
/// retried in the background.
async fn prepare_database(
    state: Arc<AppState>,
    mut rx: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let auto = state.cfg.storage.auto_migrate;
    let first = if auto {
        state.profiles.migrate().await
    } else {
        state.profiles.check_schema().await
    };
    match first {
        Ok(()) => return Ok(()),
        Err(StoreError::Incompatible(why)) => {
            return Err(anyhow::anyhow!("refusing to start: {why}"));
        }
        Err(e) if auto => {
            tracing::warn!(error = %e, "database migration failed; retrying in the background")
        }
        Err(e) => {
            // Pending migrations are left to `twofa-authz migrate`; every
            // store call checks the schema again until they are applied.
            tracing::warn!(error = %e, "the database cannot be used yet; /user answers 503 until it can");
            return Ok(());
        }
    }
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = rx.changed() => return,
            }
            match state.profiles.migrate().await {
                Ok(()) => {
                    tracing::info!("database migrations applied");
                    return;
                }
                Err(StoreError::Incompatible(why)) => {
                    // Decisions go on; /user fails closed and /readyz shows
                    // the database as incompatible.
                    tracing::error!(error = %why, "the database cannot be used by this binary; not retrying");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "database migration failed; retrying"),
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    });
    Ok(())
}

/// Before serving: one connect to Redis. A Redis that cannot be used as
/// configured (a TLS certificate that fails verification, e.g. a wrong
/// `storage.redis_ca_path`) stops the start with that reason; a Redis that
/// is down does not: serving starts, not ready, and the stores connect when
/// it is back.
async fn prepare_redis(state: &AppState) -> anyhow::Result<()> {
    let t = READINESS_CHECK_TIMEOUT * 2;
    let (sessions, ephemeral) = tokio::join!(
        tokio::time::timeout(t, state.sessions.ping()),
        tokio::time::timeout(t, state.ephemeral.ping()),
    );
    for r in [sessions, ephemeral] {
        match r {
            Ok(Err(StoreError::Incompatible(why))) => {
                return Err(anyhow::anyhow!("refusing to start: {why}"));
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Redis cannot be reached yet; not ready until it can");
                return Ok(());
            }
            Err(_) => {
                tracing::warn!("Redis did not answer at start; not ready until it does");
                return Ok(());
            }
            Ok(Ok(())) => {}
        }
    }
    Ok(())
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// `grpc.health.v1` answers SERVING only while decisions can be made.
fn spawn_health_monitor(
    state: Arc<AppState>,
    reporter: tonic_health::server::HealthReporter,
    mut rx: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        use tonic_health::ServingStatus;
        let service = "envoy.service.auth.v3.Authorization";
        let mut last = None;
        loop {
            // The gRPC health of the Check service follows what Check needs:
            // a database outage must not make Envoy stop asking us.
            let ready = state.can_decide().await;
            if last != Some(ready) {
                let status = if ready {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                reporter.set_service_status("", status).await;
                reporter.set_service_status(service, status).await;
                last = Some(ready);
            }
            // A Redis PING a second: gRPC health and /readyz agree within
            // about a second.
            let wait = if ready {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(250)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = rx.changed() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::Readiness;

    fn r(
        database: &'static str,
        session_store: &'static str,
        signing_keys: &'static str,
    ) -> Readiness {
        Readiness {
            database,
            session_store,
            signing_keys,
        }
    }

    #[test]
    fn decisions_need_the_session_store_and_the_keys_not_the_database() {
        let all = r("ok", "ok", "ok");
        assert!(all.ready() && all.status() == "ok" && all.degraded().is_empty());
        for db in ["down", "incompatible"] {
            let d = r(db, "ok", "ok");
            assert!(d.ready(), "{db}");
            assert_eq!(d.status(), "degraded");
            assert_eq!(d.degraded(), ["database"]);
            assert!(d.not_ready().is_empty());
        }
        let s = r("ok", "down", "ok");
        assert!(!s.ready());
        assert_eq!(
            (s.status(), s.not_ready()),
            ("unavailable", vec!["session_store"])
        );
        let k = r("down", "ok", "down");
        assert_eq!(k.not_ready(), ["signing_keys"]);
        assert_eq!(k.status(), "unavailable");
    }
}
