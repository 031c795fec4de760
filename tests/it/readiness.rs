//! Readiness (INTERFACE.md section 5): `/readyz` is 200 while Check decisions
//! can be made (session store and signing keys), whatever the database's state,
//! and its JSON names every dependency; gRPC health follows the same rule. Each
//! dependency is taken down in turn.

use std::time::Duration;

use serde_json::{json, Value};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::support::app::App;
use crate::support::base_config;
use crate::support::http;
use crate::support::keycloak::Keycloak;
use crate::support::postgres::Postgres;
use crate::support::process::poll_until;
use crate::support::redis::RedisServer;
use crate::user_common::create_database;

const CHECK_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// `grpc.health.v1.Health/Check` of `service` (`""` is the server); -1 when
/// the call fails (e.g. NOT_FOUND before the service's first report).
pub async fn grpc_health(grpc_addr: &str, service: &str) -> i32 {
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to the gRPC listener");
    match HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
    {
        Ok(r) => r.into_inner().status,
        Err(_) => -1,
    }
}

/// Waits until gRPC health of both names is `want`.
pub async fn grpc_health_becomes(grpc_addr: &str, want: ServingStatus) -> bool {
    poll_until(Duration::from_secs(5), || async {
        grpc_health(grpc_addr, "").await == want as i32
            && grpc_health(grpc_addr, CHECK_SERVICE).await == want as i32
    })
    .await
}

async fn readyz(app: &App) -> (u16, Value) {
    let r = http::get(app.http_addr(), "/readyz").send().await;
    (r.status, r.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_each_dependency_in_turn() {
    let mut pg = Postgres::start().await;
    let url = create_database(&pg).await;
    let mut redis = RedisServer::start().await;
    let keycloak = Keycloak::start().await;
    let mut config = base_config(&keycloak, &redis);
    config.set_str("storage", "database_url", &url);
    let app = App::start(&config).await;

    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "status": "ok",
            "ready": true,
            "checks": {"database": "ok", "session_store": "ok", "signing_keys": "ok"},
            "not_ready": [],
            "degraded": [],
        })
    );
    assert!(grpc_health_becomes(app.grpc_addr(), ServingStatus::Serving).await);

    // The database down: degraded, still ready, still serving.
    pg.stop().await;
    let degraded = poll_until(Duration::from_secs(10), || async {
        readyz(&app).await.1["checks"]["database"] == "down"
    })
    .await;
    assert!(degraded, "/readyz never showed the database down");
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "a database outage must not unready: {body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["degraded"], json!(["database"]), "{body}");
    assert_eq!(body["not_ready"], json!([]), "{body}");
    // Over 3 s (three rounds of the health monitor) gRPC stays SERVING.
    for _ in 0..6 {
        for service in ["", CHECK_SERVICE] {
            assert_eq!(
                grpc_health(app.grpc_addr(), service).await,
                ServingStatus::Serving as i32,
                "gRPC health of {service:?} with the database down"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pg.start_server().await;
    let back = poll_until(Duration::from_secs(10), || async {
        readyz(&app).await.1["status"] == "ok"
    })
    .await;
    assert!(
        back,
        "the database came back, /readyz did not: {}",
        app.log()
    );

    // The session store down: decisions cannot be made.
    redis.stop();
    let unready = poll_until(Duration::from_secs(10), || async {
        readyz(&app).await.0 == 503
    })
    .await;
    assert!(unready, "/readyz stayed 200 with Redis down");
    let (_, body) = readyz(&app).await;
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["checks"]["session_store"], "down", "{body}");
    assert_eq!(body["not_ready"], json!(["session_store"]), "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    assert!(
        grpc_health_becomes(app.grpc_addr(), ServingStatus::NotServing).await,
        "gRPC health stayed SERVING with Redis down"
    );
    redis.restart().await;
    assert!(
        grpc_health_becomes(app.grpc_addr(), ServingStatus::Serving).await,
        "gRPC health did not come back with Redis"
    );
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");
}

/// No signing keys (Keycloak never answered): 503 naming them, NOT_SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_signing_keys_unready_and_not_serving() {
    let redis = RedisServer::start().await;
    let keycloak = Keycloak::start().await;
    keycloak.stop().await;
    let mut config = base_config(&keycloak, &redis);
    config.set_str("keycloak", "jwks_cache_ttl", "1s");
    let app = App::start_unready(&config).await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["signing_keys"], "down", "{body}");
    assert_eq!(body["not_ready"], json!(["signing_keys"]), "{body}");
    assert_eq!(body["checks"]["session_store"], "ok", "{body}");
    assert!(
        grpc_health_becomes(app.grpc_addr(), ServingStatus::NotServing).await,
        "gRPC health SERVING without signing keys"
    );
    keycloak.restart().await;
    assert!(
        grpc_health_becomes(app.grpc_addr(), ServingStatus::Serving).await,
        "gRPC health did not follow the keys: {}",
        app.log()
    );
}
