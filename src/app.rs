//! Wiring: builds the shared state from the configuration and runs the gRPC
//! and HTTP listeners until shutdown. `run` takes listeners that are already
//! bound, so tests can bind port 0 and read the address back.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::authz::Authorizer;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::crypto::KeyRing;
use crate::delivery::Delivery;
use crate::factor::hashing::HashPool;
use crate::factor::service::{Directory, Ports, Settings};
use crate::factor::Factors;
use crate::keycloak::AdminClient;
use crate::metrics::Metrics;
use crate::store::{self, EphemeralStore, ProfileStore, SessionStore};
use crate::token::{parse_algorithms, DevIssuer, Jwks, Validator};

/// In-flight requests get this long to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

pub struct AppState {
    pub cfg: Arc<Config>,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    pub authz: Arc<Authorizer>,
    pub sessions: Arc<dyn SessionStore>,
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
    /// Argon2id hashing of recovery codes, a few at a time with bounded
    /// memory (`factor::hashing`).
    pub hashing: Arc<HashPool>,
}

pub struct Readiness {
    pub database: &'static str,
    pub session_store: &'static str,
    pub signing_keys: &'static str,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.failing().is_empty()
    }
    /// Whether Check decisions can be made: the session store and the
    /// signing keys, never the database (the Check path does not use it).
    pub fn can_decide(&self) -> bool {
        self.session_store == "ok" && self.signing_keys == "ok"
    }
    pub fn failing(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.database == "unavailable" {
            v.push("database");
        }
        if self.session_store != "ok" {
            v.push("session_store");
        }
        if self.signing_keys != "ok" {
            v.push("signing_keys");
        }
        v
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
            );
            (v, None)
        };
        let sessions = store::session_store(&cfg.storage, clock.clone())?;
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
        let factors = Arc::new(Factors::new(
            Ports {
                ephemeral: ephemeral.clone(),
                profiles: profiles.clone(),
                sessions: sessions.clone(),
                keys: keys.clone(),
                delivery: delivery.clone(),
                directory: keycloak_admin.clone().map(|a| a as Arc<dyn Directory>),
                metrics: metrics.clone(),
                hashing: hashing.clone(),
                clock: clock.clone(),
            },
            Settings {
                security: cfg.security.clone(),
                totp: cfg.totp.clone(),
                sync_verified_contacts: cfg.keycloak.sync_verified_contacts,
                mobile_attribute: cfg.keycloak.mobile_attribute.clone(),
            },
        ));
        let authz = Arc::new(Authorizer::new(
            &cfg,
            Arc::new(validator),
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
            dev,
            http,
            ephemeral,
            profiles,
            keys,
            delivery,
            keycloak_admin,
            factors,
            hashing,
        }))
    }

    pub async fn readiness(&self) -> Readiness {
        Readiness {
            database: match self.profiles.ping().await {
                Ok(()) => "ok",
                Err(_) => "unavailable",
            },
            session_store: match self.sessions.ping().await {
                Ok(()) => "ok",
                Err(_) => "unavailable",
            },
            signing_keys: if self.authz.validator().jwks().is_loaded() {
                "ok"
            } else {
                "unavailable"
            },
        }
    }
}

/// Serves gRPC and HTTP until `shutdown` completes, then stops accepting and
/// gives in-flight requests up to 10 s.
pub async fn run(
    state: Arc<AppState>,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (tx, rx) = watch::channel(false);
    state.authz.validator().jwks().spawn_refresher(rx.clone());
    if state.cfg.storage.auto_migrate {
        migrate_at_start(state.clone(), rx.clone()).await;
    }

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
    let http_server = axum::serve(http, app).with_graceful_shutdown(stopped(rx.clone()));

    let mut grpc_task = tokio::spawn(grpc_server);
    let mut http_task = tokio::spawn(async move { http_server.await });

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
    }
    let _ = tx.send(true);
    let drained = tokio::time::timeout(DRAIN, async {
        let g = grpc_task.await;
        let h = http_task.await;
        (g, h)
    })
    .await;
    match drained {
        Ok((Ok(Ok(())), Ok(Ok(())))) => Ok(()),
        Ok((g, h)) => Err(anyhow::anyhow!("server error during shutdown: {g:?} {h:?}")),
        Err(_) => {
            tracing::warn!("in-flight requests did not finish within 10s; exiting anyway");
            Ok(())
        }
    }
}

/// `storage.auto_migrate`: one attempt before serving; if the database is
/// not reachable yet, serving starts anyway (the Check path never needs the
/// database) and migration is retried in the background until it succeeds.
async fn migrate_at_start(state: Arc<AppState>, mut rx: watch::Receiver<bool>) {
    match state.profiles.migrate().await {
        Ok(()) => return,
        Err(e) => {
            tracing::warn!(error = %e, "database migration failed; retrying in the background")
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
                Err(e) => tracing::warn!(error = %e, "database migration failed; retrying"),
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    });
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
            let ready = state.readiness().await.can_decide();
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
            let wait = if ready {
                Duration::from_secs(5)
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
