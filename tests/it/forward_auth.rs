//! INTERFACE.md section 4 straight against twofa-authz's HTTP listener: the three
//! ways a forward-auth proxy names the original request.

use crate::support::http;
use crate::support::keycloak::now;
use crate::support::{assert_problem, expected_www_authenticate, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_style_original_headers() {
    let stack = Stack::start(None).await;
    let token = stack.keycloak.token().build();

    let response = stack.authz("GET", "/public/x").send().await;
    assert_eq!(response.status, 200, "{}", stack.explain("none", &response));
    assert_eq!(response.header("x-auth-request-user"), None);

    let response = stack.authz("GET", "/api/x").send().await;
    assert_problem(&stack, "no token", &response, 401, "missing_token");
    assert_eq!(
        response.header("www-authenticate"),
        Some(expected_www_authenticate(&stack.keycloak, false).as_str())
    );

    let response = stack.authz("GET", "/api/x").bearer(&token.jwt).send().await;
    assert_eq!(
        response.status,
        200,
        "{}",
        stack.explain("token", &response)
    );
    assert_eq!(response.header("x-auth-request-user"), Some("alice"));
    assert_eq!(response.header("x-auth-request-subject"), Some(token.sub()));
    assert_eq!(
        response.header("x-auth-request-email"),
        Some("alice@example.com")
    );

    let response = stack
        .authz("GET", "/secure")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_problem(&stack, "2fa", &response, 403, "second_factor_required");

    let at = now();
    stack.mark_verified(&token, "totp", at).await;
    // The check itself may be any method; the original method is the header's.
    let response = http::request("POST", stack.app.http_addr(), "/authz")
        .header("X-Original-Method", "DELETE")
        .header("X-Original-URI", "/secure/thing?x=1")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_eq!(
        response.status,
        200,
        "{}",
        stack.explain("2fa verified", &response)
    );
    assert_eq!(
        response.header("x-auth-request-second-factor"),
        Some("totp")
    );
    assert_eq!(
        response.header("x-auth-request-second-factor-at"),
        Some(at.to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_style_forwarded_headers() {
    let stack = Stack::start(None).await;
    let token = stack.keycloak.token().build();
    let forwarded = |uri: &str| {
        http::get(stack.app.http_addr(), "/authz")
            .header("X-Forwarded-Method", "GET")
            .header("X-Forwarded-Proto", "https")
            .header("X-Forwarded-Host", "app.example.com")
            .header("X-Forwarded-Uri", uri)
    };
    let response = forwarded("/public/x").send().await;
    assert_eq!(response.status, 200, "{}", stack.explain("none", &response));
    let response = forwarded("/api/x").send().await;
    assert_problem(&stack, "no token", &response, 401, "missing_token");
    let response = forwarded("/api/x").bearer(&token.jwt).send().await;
    assert_eq!(
        response.status,
        200,
        "{}",
        stack.explain("token", &response)
    );
    let response = forwarded("/public/../secure")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_problem(
        &stack,
        "dot segments",
        &response,
        403,
        "second_factor_required",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_http_style_path_suffix() {
    let stack = Stack::start(None).await;
    let token = stack.keycloak.token().build();
    let addr = stack.app.http_addr().to_owned();
    let response = http::get(&addr, "/authz/public/x").send().await;
    assert_eq!(response.status, 200, "{}", stack.explain("none", &response));
    let response = http::get(&addr, "/authz/api/x").send().await;
    assert_problem(&stack, "no token", &response, 401, "missing_token");
    let response = http::get(&addr, "/authz/api/x")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_eq!(
        response.status,
        200,
        "{}",
        stack.explain("token", &response)
    );
    let response = http::get(&addr, "/authz/secure")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_problem(&stack, "2fa", &response, 403, "second_factor_required");
}
