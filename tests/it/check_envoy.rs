//! INTERFACE.md section 3 through a real Envoy running envoy/envoy.yaml (gRPC
//! ext_authz), plus what only Envoy does: per-route settings.

use crate::support::keycloak::now;
use crate::support::upstream::Echoed;
use crate::support::{assert_problem, assert_reached_upstream, Proxy, Stack};

scenarios_through!(Proxy::Envoy;
    requirement_none_passes_without_identity,
    missing_token_is_401,
    invalid_tokens_are_401,
    requirement_token_sets_identity,
    second_factor_required_unless_verified,
    verified_session_is_allowed,
    step_up_max_age,
    session_store_outage_fails_closed,
    authz_unreachable_fails_closed,
    path_tricks_get_the_strict_requirement,
    client_identity_headers_never_reach_upstream,
    ambiguous_paths_get_the_strictest_requirement,
    more_than_one_credential_is_401,
    spoofed_original_request_headers_are_ignored,
);

/// The route's `context_extensions` beat the rules: twofa-authz's own rule makes
/// /admin token-only, the Envoy route demands a second factor within 15 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_settings_beat_policy_rules() {
    let stack = Stack::start_with(Some(Proxy::Envoy), |config| {
        config.set(
            "policy",
            "rules",
            r#"[ { path_prefix = "/admin", require = "token" } ]"#,
        );
    })
    .await;
    let token = stack.keycloak.token().build();

    // Without the route (forward auth), the rule applies.
    let response = stack
        .authz("GET", "/admin/users")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_eq!(
        response.status,
        200,
        "{}",
        stack.explain("/authz /admin", &response)
    );

    let response = stack.get("/admin/users").bearer(&token.jwt).send().await;
    assert_problem(
        &stack,
        "Envoy /admin, not verified",
        &response,
        403,
        "second_factor_required",
    );

    stack.mark_verified(&token, "totp", now() - 30 * 60).await;
    let response = stack.get("/admin/users").bearer(&token.jwt).send().await;
    assert_problem(
        &stack,
        "Envoy /admin, verified 30 min ago",
        &response,
        403,
        "second_factor_required",
    );

    // The /public route says none although no rule does (default 2fa).
    let response = stack.get("/public/x").send().await;
    assert_reached_upstream(&stack, "Envoy /public, no rule", &response);
}

/// The /user route goes to twofa-authz's own HTTP API, behind a token check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_api_is_routed_to_twofa_authz() {
    let stack = Stack::start(Some(Proxy::Envoy)).await;
    let response = stack.get("/user").send().await;
    assert_problem(
        &stack,
        "GET /user without a token",
        &response,
        401,
        "missing_token",
    );

    let token = stack.keycloak.token().build();
    let response = stack.get("/user").bearer(&token.jwt).send().await;
    assert!(
        Echoed::from_response(&response).is_none(),
        "{}",
        stack.explain("/user reached the application", &response)
    );
    assert!(
        ![401, 403, 503].contains(&response.status),
        "{}",
        stack.explain("GET /user with a token", &response)
    );
}

/// Checks through Envoy count as `source="grpc"` in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_checks_are_counted() {
    let stack = Stack::start(Some(Proxy::Envoy)).await;
    let token = stack.keycloak.token().build();
    let _ = stack.get("/api/x").bearer(&token.jwt).send().await;
    let _ = stack.get("/api/x").send().await;
    let metrics = crate::support::http::get(stack.app.http_addr(), "/metrics")
        .send()
        .await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    let line = |decision: &str| {
        text.lines().find(|line| {
            line.starts_with("twofa_checks_total{")
                && line.contains("source=\"grpc\"")
                && line.contains(&format!("decision=\"{decision}\""))
        })
    };
    for decision in ["allow", "missing_token"] {
        let found =
            line(decision).unwrap_or_else(|| panic!("no grpc {decision} count in:\n{text}"));
        let count: f64 = found.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count >= 1.0, "{found}");
    }
}
