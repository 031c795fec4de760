//! The Envoy configurations shipped for deployment (Kubernetes sidecar and
//! shared-service patterns, the compose stack) run for real: addresses and
//! ports are pointed at this test's twofa-authz and application, nothing
//! else changes.

use crate::support::envoy::Envoy;
use crate::support::http;
use crate::support::keycloak::now;
use crate::support::ports::free_port;
use crate::support::process::render;
use crate::support::upstream::Echoed;
use crate::support::{assert_problem, Stack};

async fn run_deployed(file: &str, hosts: &[&str]) {
    let stack = Stack::start(None).await;
    let (port, admin) = (free_port(), free_port());
    let text = std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR")))
        .expect("read config");
    let mut replacements: Vec<(String, String)> = [
        (9901, admin),
        (8000, port),
        (9191, stack.app.grpc_port()),
        (8090, stack.app.http_port()),
        (8080, stack.upstream.port()),
    ]
    .iter()
    .map(|(from, to)| (format!("port_value: {from} "), format!("port_value: {to} ")))
    .collect();
    if text.contains("port_value: 9902 ") {
        replacements.push((
            "port_value: 9902 ".into(),
            format!("port_value: {} ", free_port()),
        ));
    }
    // Bind on loopback only, and resolve the cluster DNS names to this machine.
    replacements.push(("address: 0.0.0.0,".into(), "address: 127.0.0.1,".into()));
    for h in hosts {
        replacements.push((format!("address: {h},"), "address: localhost,".into()));
    }
    let envoy = Envoy::run(render(&text, &replacements, file), port, admin).await;
    let addr = envoy.addr();

    let r = http::get(&addr, "/admin/reports").send().await;
    assert_problem(
        &stack,
        &format!("{file}: no token"),
        &r,
        401,
        "missing_token",
    );

    let token = stack.keycloak.token().build();
    let r = http::get(&addr, "/admin/reports")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_problem(
        &stack,
        &format!("{file}: not verified"),
        &r,
        403,
        "second_factor_required",
    );

    stack.mark_verified(&token, "totp", now()).await;
    let r = http::get(&addr, "/admin/reports")
        .bearer(&token.jwt)
        .header("x-auth-request-user", "mallory")
        .send()
        .await;
    assert_eq!(r.status, 200, "{file}: {}", stack.explain("verified", &r));
    let echoed = Echoed::from_response(&r).expect("reached the application");
    assert_eq!(
        echoed.header("x-auth-request-user").as_deref(),
        Some("alice"),
        "{file}"
    );
    assert_eq!(
        echoed.header("x-auth-request-second-factor").as_deref(),
        Some("totp"),
        "{file}"
    );

    // /user goes to twofa-authz's HTTP listener, needing only a token.
    let r = http::get(&addr, "/user").bearer(&token.jwt).send().await;
    assert_problem(
        &stack,
        &format!("{file}: /user"),
        &r,
        404,
        "profile_not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_sidecar_envoy_config_runs() {
    run_deployed("k8s/base/config/envoy.yaml", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_shared_service_envoy_config_runs() {
    run_deployed(
        "k8s/overlays/shared/config/envoy.yaml",
        &["twofa-authz-headless", "twofa-authz"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_envoy_config_runs() {
    run_deployed("deploy/compose/envoy.yaml", &["twofa-authz", "echo"]).await;
}
