//! The service around the decisions: health, readiness, metrics, the gRPC health
//! service, shutdown, and logs that never hold a token.

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::support::http;
use crate::support::keycloak::{now, KeyPair};
use crate::support::{Proxy, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let stack = Stack::start(None).await;
    let addr = stack.app.http_addr();

    let response = http::get(addr, "/healthz").send().await;
    assert_eq!(response.status, 200, "/healthz: {}", response.text());
    let response = http::get(addr, "/readyz").send().await;
    assert_eq!(response.status, 200, "/readyz: {}", response.text());

    let token = stack.keycloak.token().build();
    let _ = stack.authz("GET", "/api/x").bearer(&token.jwt).send().await;
    let _ = stack.authz("GET", "/api/x").send().await;
    let _ = stack.authz("GET", "/api/x").bearer("garbage").send().await;
    let _ = stack
        .authz("GET", "/secure")
        .bearer(&token.jwt)
        .send()
        .await;

    let response = http::get(addr, "/metrics").send().await;
    assert_eq!(response.status, 200);
    let content_type = response
        .header("content-type")
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain"),
        "content-type {content_type}"
    );
    let text = response.text();
    for decision in [
        "allow",
        "missing_token",
        "invalid_token",
        "second_factor_required",
    ] {
        assert!(
            text.lines()
                .any(|line| line.starts_with("twofa_checks_total{")
                    && line.contains("source=\"http\"")
                    && line.contains(&format!("decision=\"{decision}\""))),
            "no twofa_checks_total for source=http decision={decision} in:\n{text}"
        );
    }
    for name in ["twofa_check_duration_seconds", "twofa_jwks_refresh_total"] {
        assert!(text.contains(name), "no {name} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_service_is_serving() {
    let stack = Stack::start(None).await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", stack.app.grpc_addr()))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to the gRPC listener");
    let mut client = HealthClient::new(channel);
    // The service re-reads its readiness in the background, so SERVING may trail
    // /readyz by a moment.
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let status = client
                .check(HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await
                .expect("grpc.health.v1.Health/Check")
                .into_inner()
                .status;
            if status == ServingStatus::Serving as i32 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "health of {service:?} is {status}, not SERVING, 3 s after /readyz said ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero() {
    let mut stack = Stack::start(None).await;
    let status = stack
        .app
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(12))
        .await
        .unwrap_or_else(|| {
            panic!(
                "still running 12 s after SIGTERM; log:\n{}",
                stack.app.log()
            )
        });
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM; log:\n{}",
        stack.app.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_zero() {
    let mut stack = Stack::start(None).await;
    let status = stack
        .app
        .signal_and_wait(libc::SIGINT, Duration::from_secs(12))
        .await
        .unwrap_or_else(|| panic!("still running 12 s after SIGINT; log:\n{}", stack.app.log()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGINT; log:\n{}",
        stack.app.log()
    );
}

/// Whatever happens to a token (allowed, refused, forged, store down), the log
/// at debug level never holds it, nor its signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_tokens() {
    let mut stack = Stack::start_with(Some(Proxy::Envoy), |config| {
        config.set_str("log", "level", "debug");
    })
    .await;
    let kc = &stack.keycloak;
    let verified = kc.token().build();
    stack.mark_verified(&verified, "totp", now()).await;
    let tokens = vec![
        verified,
        kc.token().build(),
        kc.token().expires_in(-3600).build(),
        kc.token().claim("aud", serde_json::json!("other")).build(),
        kc.token().signed_with(&KeyPair::rogue()).build(),
        kc.token().forge_hs256_with_public_key().build(),
        kc.token().forge_alg_none().build(),
        kc.token()
            .claim("typ", serde_json::json!("Refresh"))
            .build(),
    ];
    for token in &tokens {
        for target in ["/secure", "/api/x", "/admin/x", "/user"] {
            let _ = stack.get(target).bearer(&token.jwt).send().await;
            let _ = stack.authz("GET", target).bearer(&token.jwt).send().await;
        }
    }
    stack.redis.stop();
    for token in &tokens[..2] {
        let _ = stack.get("/secure").bearer(&token.jwt).send().await;
    }
    // Let buffered log lines reach the file, then stop the process so that
    // shutdown logging is included too.
    let _ = stack
        .app
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(12))
        .await;
    let log = stack.app.log();
    assert!(!log.is_empty(), "twofa-authz logged nothing at debug level");
    for token in &tokens {
        assert!(!log.contains(&token.jwt), "a token is in the log:\n{log}");
        let signature = token.signature();
        if !signature.is_empty() {
            assert!(
                !log.contains(signature),
                "a token signature is in the log:\n{log}"
            );
        }
    }
}
