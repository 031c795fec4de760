//! INTERFACE.md section 4 straight against twofa-authz's HTTP listener: one
//! endpoint per kind of proxy, each reading the original request only from the
//! headers its own proxy sets.

use crate::support::http;
use crate::support::keycloak::now;
use crate::support::{assert_problem, expected_www_authenticate, Stack};

const AUTH_REQUEST: &str = "/authz/auth-request";
const FORWARD_AUTH: &str = "/authz/forward-auth";

/// A check the way nginx asks: `X-Original-Method`, `X-Original-URI`,
/// `X-Forwarded-Host`.
fn nginx(stack: &Stack, method: &str, uri: &str) -> http::Request {
    http::get(stack.app.http_addr(), AUTH_REQUEST)
        .header("X-Original-Method", method)
        .header("X-Original-URI", uri)
        .header("X-Forwarded-Host", "app.example.com")
}

/// A check the way Traefik and Caddy ask: `X-Forwarded-Method`,
/// `X-Forwarded-Uri`, `X-Forwarded-Host`.
fn traefik(stack: &Stack, method: &str, uri: &str) -> http::Request {
    http::get(stack.app.http_addr(), FORWARD_AUTH)
        .header("X-Forwarded-Method", method)
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "app.example.com")
        .header("X-Forwarded-Uri", uri)
}

/// A check the way Envoy's HTTP ext_authz asks: the original request behind
/// the path prefix.
fn envoy(stack: &Stack, method: &str, uri: &str) -> http::Request {
    http::request(
        method,
        stack.app.http_addr(),
        &format!("/authz/ext-authz{uri}"),
    )
    .host("app.example.com")
}

type Ask = fn(&Stack, &str, &str) -> http::Request;
const ENDPOINTS: [(&str, Ask); 3] = [
    ("auth-request", nginx),
    ("forward-auth", traefik),
    ("ext-authz", envoy),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_decides_as_the_contract_says() {
    let stack = Stack::start(None).await;
    let token = stack.keycloak.token().build();
    let verified = stack.keycloak.token().build();
    let at = now();
    stack.mark_verified(&verified, "totp", at).await;

    for (name, ask) in ENDPOINTS {
        let what = |w: &str| format!("{name}: {w}");
        let response = ask(&stack, "GET", "/public/x").send().await;
        assert_eq!(
            response.status,
            200,
            "{}",
            stack.explain(&what("none"), &response)
        );
        assert_eq!(response.header("x-auth-request-user"), None);

        let response = ask(&stack, "GET", "/").send().await;
        assert_problem(
            &stack,
            &what("/ without a token"),
            &response,
            401,
            "missing_token",
        );

        let response = ask(&stack, "GET", "/api/x").send().await;
        assert_problem(&stack, &what("no token"), &response, 401, "missing_token");
        assert_eq!(
            response.header("www-authenticate"),
            Some(expected_www_authenticate(&stack.keycloak, false).as_str())
        );

        let response = ask(&stack, "GET", "/api/x").bearer(&token.jwt).send().await;
        assert_eq!(
            response.status,
            200,
            "{}",
            stack.explain(&what("token"), &response)
        );
        assert_eq!(response.header("x-auth-request-user"), Some("alice"));
        assert_eq!(response.header("x-auth-request-subject"), Some(token.sub()));
        assert_eq!(
            response.header("x-auth-request-email"),
            Some("alice@example.com")
        );

        let response = ask(&stack, "GET", "/secure")
            .bearer(&token.jwt)
            .send()
            .await;
        assert_problem(
            &stack,
            &what("2fa"),
            &response,
            403,
            "second_factor_required",
        );

        let response = ask(&stack, "GET", "/public/../secure")
            .bearer(&token.jwt)
            .send()
            .await;
        assert_problem(
            &stack,
            &what("dot segments"),
            &response,
            403,
            "second_factor_required",
        );

        let response = ask(&stack, "DELETE", "/secure/thing?x=1")
            .bearer(&verified.jwt)
            .send()
            .await;
        assert_eq!(
            response.status,
            200,
            "{}",
            stack.explain(&what("2fa verified"), &response)
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

    // The check itself may be any method; the original method is the header's.
    let response = http::request("POST", stack.app.http_addr(), AUTH_REQUEST)
        .header("X-Original-Method", "GET")
        .header("X-Original-URI", "/api/x")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_eq!(
        response.status,
        200,
        "{}",
        stack.explain("POST check", &response)
    );
}

/// The old `/authz` (which took whichever proxy's headers it found) is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catch_all_endpoint_is_gone() {
    let stack = Stack::start(None).await;
    for target in ["/authz", "/authz/public/x", "/authz/x"] {
        let response = http::get(stack.app.http_addr(), target)
            .header("X-Original-Method", "GET")
            .header("X-Original-URI", "/public")
            .send()
            .await;
        assert_problem(&stack, target, &response, 404, "not_found");
    }
}

/// A header of another proxy's kind never names the original request: a
/// client can send `X-Original-URI` through Caddy or `X-Forwarded-Uri`
/// through nginx, and the endpoint of that proxy must not read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_ignores_the_other_proxies_headers() {
    let stack = Stack::start(None).await;
    let token = stack.keycloak.token().build();
    let spoof = |request: http::Request| {
        request
            .header("X-Original-URI", "/public")
            .header("X-Original-Method", "GET")
            .header("X-Forwarded-Uri", "/public")
            .header("X-Forwarded-Method", "GET")
            .header("X-Envoy-Original-Path", "/public")
            .header("X-Original-URL", "/public")
            .header("X-Rewrite-URL", "/public")
    };

    // nginx's endpoint, asked about /admin, with Traefik-style headers too.
    let base = http::get(stack.app.http_addr(), AUTH_REQUEST)
        .header("X-Original-Method", "GET")
        .header("X-Original-URI", "/admin/x")
        .header("X-Forwarded-Host", "app.example.com");
    let response = base.header("X-Forwarded-Uri", "/public").send().await;
    assert_problem(
        &stack,
        "auth-request + X-Forwarded-Uri",
        &response,
        401,
        "missing_token",
    );

    // Traefik/Caddy's endpoint, asked about /admin, with nginx-style headers.
    let response = http::get(stack.app.http_addr(), FORWARD_AUTH)
        .header("X-Original-URI", "/public")
        .header("X-Original-Method", "GET")
        .header("X-Forwarded-Method", "GET")
        .header("X-Forwarded-Host", "app.example.com")
        .header("X-Forwarded-Uri", "/admin/x")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_problem(
        &stack,
        "forward-auth + X-Original-URI, unverified token",
        &response,
        403,
        "second_factor_required",
    );

    // Envoy's endpoint, asked about /admin by its path, with both kinds.
    let response = spoof(envoy(&stack, "GET", "/admin/x")).send().await;
    assert_problem(
        &stack,
        "ext-authz + spoofs",
        &response,
        401,
        "missing_token",
    );

    // And never a fallback: without its own URI header, an endpoint refuses
    // rather than read another proxy's.
    let response = http::get(stack.app.http_addr(), FORWARD_AUTH)
        .header("X-Original-URI", "/public")
        .header("X-Original-Method", "GET")
        .header("X-Forwarded-Method", "GET")
        .header("X-Forwarded-Host", "app.example.com")
        .send()
        .await;
    assert_problem(
        &stack,
        "forward-auth with X-Original-URI only",
        &response,
        400,
        "invalid_request",
    );
    let response = http::get(stack.app.http_addr(), AUTH_REQUEST)
        .header("X-Forwarded-Uri", "/public")
        .header("X-Forwarded-Method", "GET")
        .header("X-Original-Method", "GET")
        .send()
        .await;
    assert_problem(
        &stack,
        "auth-request with X-Forwarded-Uri only",
        &response,
        400,
        "invalid_request",
    );
}

/// A proxy sets each header once. Missing or repeated means a misconfigured
/// proxy or a client talking to the endpoint directly: 400, never a decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_repeated_proxy_headers_are_400() {
    let stack = Stack::start(None).await;
    let addr = stack.app.http_addr().to_owned();
    let headers_of = |endpoint: &str| -> Vec<(&'static str, &'static str)> {
        if endpoint == AUTH_REQUEST {
            vec![
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "/public/x"),
            ]
        } else {
            vec![
                ("X-Forwarded-Method", "GET"),
                ("X-Forwarded-Uri", "/public/x"),
                ("X-Forwarded-Host", "app.example.com"),
            ]
        }
    };
    for endpoint in [AUTH_REQUEST, FORWARD_AUTH] {
        let all = headers_of(endpoint);
        // The control: all present once is a decision (none: 200).
        let mut request = http::get(&addr, endpoint);
        for (n, v) in &all {
            request = request.header(n, v);
        }
        let response = request.send().await;
        assert_eq!(
            response.status,
            200,
            "{}",
            stack.explain(endpoint, &response)
        );

        for (left_out, _) in &all {
            let mut request = http::get(&addr, endpoint);
            for (n, v) in all.iter().filter(|(n, _)| n != left_out) {
                request = request.header(n, v);
            }
            let response = request.send().await;
            let what = format!("{endpoint} without {left_out}");
            assert_problem(&stack, &what, &response, 400, "invalid_request");
        }
        for (twice, _) in &all {
            let mut request = http::get(&addr, endpoint);
            for (n, v) in &all {
                request = request.header(n, v);
            }
            let response = request.header(twice, "/public/y").send().await;
            let what = format!("{endpoint} with {twice} twice");
            assert_problem(&stack, &what, &response, 400, "invalid_request");
        }
    }
    // nginx's endpoint falls back to Host for the host, as nginx passes it.
    let response = http::get(&addr, AUTH_REQUEST)
        .header("X-Original-Method", "GET")
        .header("X-Original-URI", "/public/x")
        .send()
        .await;
    assert_eq!(
        response.status,
        200,
        "{}",
        stack.explain("auth-request, Host only", &response)
    );
    // Envoy's endpoint: two Host headers.
    let response = envoy(&stack, "GET", "/public/x")
        .header("Host", "evil.example.com")
        .send()
        .await;
    assert_eq!(
        response.status,
        400,
        "{}",
        stack.explain("ext-authz, Host twice", &response)
    );
}

/// INTERFACE.md section 3: two `Authorization` headers, or one naming two
/// credentials, are 401 `invalid_token` on every endpoint and on `/user`,
/// never "the first one wins".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_one_credential_is_invalid_token() {
    let stack = Stack::start(None).await;
    let token = stack.keycloak.token().build();
    let other = stack.keycloak.token().user("bob").build();
    let bearer = |t: &str| format!("Bearer {t}");
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("two headers", vec![bearer(&token.jwt), bearer(&other.jwt)]),
        (
            "the same token twice",
            vec![bearer(&token.jwt), bearer(&token.jwt)],
        ),
        (
            "Bearer a, Bearer b",
            vec![format!("Bearer {}, Bearer {}", token.jwt, other.jwt)],
        ),
        (
            "Basic x, Bearer y",
            vec![format!("Basic YWxpY2U6cHc=, Bearer {}", token.jwt)],
        ),
        (
            "Bearer y, Basic x",
            vec![format!("Bearer {}, Basic YWxpY2U6cHc=", token.jwt)],
        ),
        (
            "a Basic header and a Bearer header",
            vec!["Basic YWxpY2U6cHc=".into(), bearer(&token.jwt)],
        ),
    ];
    let challenge = expected_www_authenticate(&stack.keycloak, true);
    let request = |surface: &str| match ENDPOINTS.iter().find(|(name, _)| *name == surface) {
        Some((_, ask)) => ask(&stack, "GET", "/api/x"),
        None => http::get(stack.app.http_addr(), "/user"),
    };
    let surfaces = ["auth-request", "forward-auth", "ext-authz", "GET /user"];
    for surface in surfaces {
        // The control: one credential is decided (a token route: 200; /user:
        // anything but 401).
        let response = request(surface).bearer(&token.jwt).send().await;
        assert_ne!(
            response.status,
            401,
            "{}",
            stack.explain(surface, &response)
        );
        for (case, values) in &cases {
            let mut r = request(surface);
            for v in values {
                r = r.header("Authorization", v);
            }
            let response = r.send().await;
            let what = format!("{surface}: {case}");
            assert_problem(&stack, &what, &response, 401, "invalid_token");
            assert_eq!(
                response.header("www-authenticate"),
                Some(challenge.as_str()),
                "{}",
                stack.explain(&what, &response)
            );
        }
    }
}
