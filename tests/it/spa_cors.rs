//! What docs/spa.md promises a single-page application on another origin,
//! with real HTTP requests to the real binary: the CORS preflight and the
//! actual requests carry the CORS headers for an origin listed in
//! `server.cors_allowed_origins` and not for any other; errors (401, 429)
//! are readable cross-origin, with `Retry-After` exposed.

use crate::support::app::toml_strings;
use crate::support::http::{self, Response};
use crate::support::{Delivery, Stack};

const SPA: &str = "https://spa.example.com";
const OTHER: &str = "https://evil.example.net";

async fn stack() -> (Stack, Delivery) {
    let delivery = Delivery::start().await;
    let stack = Stack::start_with(None, |c| {
        c.set("server", "cors_allowed_origins", toml_strings(&[SPA]));
        delivery.configure(c);
    })
    .await;
    (stack, delivery)
}

fn preflight(addr: &str, path: &str, origin: &str, method: &str) -> http::Request {
    http::request("OPTIONS", addr, path)
        .header("Origin", origin)
        .header("Access-Control-Request-Method", method)
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
}

fn list(r: &Response, name: &str) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

fn assert_allowed(stack: &Stack, what: &str, r: &Response) {
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(SPA),
        "{}",
        stack.explain(what, r)
    );
    // Bearer tokens, not cookies: credentials are never allowed.
    assert!(
        r.header("access-control-allow-credentials").is_none(),
        "{}",
        stack.explain(what, r)
    );
    assert!(
        list(r, "vary").iter().any(|v| v == "origin"),
        "{}",
        stack.explain(what, r)
    );
}

/// The Fetch standard's CORS check passes only on a matching
/// `Access-Control-Allow-Origin`; the other `Access-Control-*` headers (which
/// the layer sends whatever the origin) grant nothing without it.
fn assert_not_allowed(stack: &Stack, what: &str, r: &Response) {
    for h in [
        "access-control-allow-origin",
        "access-control-allow-credentials",
    ] {
        assert!(r.header(h).is_none(), "{h}: {}", stack.explain(what, r));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_answers_the_allowed_origin_only() {
    let (stack, _delivery) = stack().await;
    let addr = stack.app.http_addr().to_string();
    for (path, method) in [
        ("/user", "GET"),
        ("/user", "PATCH"),
        ("/user/verify-totp", "POST"),
        ("/user/totp", "DELETE"),
    ] {
        let r = preflight(&addr, path, SPA, method).send().await;
        let what = format!("preflight {method} {path} from {SPA}");
        assert!(
            (200..300).contains(&r.status),
            "{}",
            stack.explain(&what, &r)
        );
        assert_allowed(&stack, &what, &r);
        let methods = list(&r, "access-control-allow-methods");
        assert!(
            methods.contains(&method.to_ascii_lowercase()),
            "{methods:?}: {}",
            stack.explain(&what, &r)
        );
        let headers = list(&r, "access-control-allow-headers");
        for h in ["authorization", "content-type"] {
            assert!(headers.iter().any(|x| x == h), "{headers:?}");
        }

        let r = preflight(&addr, path, OTHER, method).send().await;
        assert_not_allowed(
            &stack,
            &format!("preflight {method} {path} from {OTHER}"),
            &r,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actual_requests_and_errors_are_readable_from_the_allowed_origin_only() {
    let (stack, _delivery) = stack().await;
    let addr = stack.app.http_addr().to_string();
    let token = stack.keycloak.token().build();

    // An error without a token: the app must be able to read its `code`.
    let r = http::get(&addr, "/user").header("Origin", SPA).send().await;
    assert_eq!(r.status, 401, "{}", stack.explain("no token", &r));
    assert_allowed(&stack, "401 from the SPA", &r);
    assert_eq!(r.json()["code"], "missing_token");

    let r = http::request("POST", &addr, "/user")
        .header("Origin", SPA)
        .bearer(&token.jwt)
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", stack.explain("POST /user", &r));
    assert_allowed(&stack, "POST /user from the SPA", &r);

    let r = http::get(&addr, "/user")
        .header("Origin", SPA)
        .bearer(&token.jwt)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", stack.explain("GET /user", &r));
    assert_allowed(&stack, "GET /user from the SPA", &r);
    assert_eq!(r.json()["email"], "alice@example.com");

    // CORS is the browser's to enforce: the other origin's request is
    // answered, but without the headers that would let its page read it.
    let r = http::get(&addr, "/user")
        .header("Origin", OTHER)
        .bearer(&token.jwt)
        .send()
        .await;
    assert_not_allowed(&stack, "GET /user from another origin", &r);

    // A second code too soon: 429 with Retry-After, which the browser lets
    // the page read only because it is exposed.
    let send = || {
        http::request("POST", &addr, "/user/send-otp")
            .header("Origin", SPA)
            .header("Content-Type", "application/json")
            .bearer(&token.jwt)
            .body(r#"{"otp_type":"email"}"#)
            .send()
    };
    let r = send().await;
    assert_eq!(r.status, 202, "{}", stack.explain("send-otp", &r));
    let r = send().await;
    assert_eq!(r.status, 429, "{}", stack.explain("send-otp again", &r));
    assert_allowed(&stack, "429 from the SPA", &r);
    assert_eq!(r.json()["code"], "resend_too_soon");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{}", stack.explain("Retry-After", &r)));
    assert!(retry >= 1, "{retry}");
    assert!(
        list(&r, "access-control-expose-headers")
            .iter()
            .any(|h| h == "retry-after"),
        "{}",
        stack.explain("expose Retry-After", &r)
    );
}

/// CORS belongs to the API, not to the forward-auth endpoints: Envoy's HTTP
/// ext_authz sends the original method, so an `OPTIONS` (with or without
/// `Origin`) must be decided like any request, never answered as a
/// preflight, which would be a 200, an allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_on_forward_auth_is_decided_not_preflighted() {
    let (stack, _delivery) = stack().await;
    let addr = stack.app.http_addr().to_string();
    for origin in [None, Some(SPA)] {
        let requests = [
            http::request("OPTIONS", &addr, "/authz/ext-authz/api/admin").host("app.example.com"),
            http::request("OPTIONS", &addr, "/authz/forward-auth")
                .header("X-Forwarded-Method", "OPTIONS")
                .header("X-Forwarded-Uri", "/api/admin")
                .header("X-Forwarded-Host", "app.example.com"),
            http::request("OPTIONS", &addr, "/authz/auth-request")
                .header("X-Original-Method", "OPTIONS")
                .header("X-Original-URI", "/api/admin"),
        ];
        for mut req in requests {
            if let Some(o) = origin {
                req = req
                    .header("Origin", o)
                    .header("Access-Control-Request-Method", "GET");
            }
            let r = req.send().await;
            let what = format!("OPTIONS forward auth, origin {origin:?}");
            crate::support::assert_problem(&stack, &what, &r, 401, "missing_token");
            assert!(
                r.header("access-control-allow-origin").is_none(),
                "{}",
                stack.explain(&what, &r)
            );
        }
    }
    // Wrong methods behind CORS: the SPA can read the 405 problem.
    let r = http::request("PUT", &addr, "/user")
        .header("Origin", SPA)
        .send()
        .await;
    assert_eq!(r.status, 405, "{}", stack.explain("PUT /user", &r));
    assert_allowed(&stack, "PUT /user from the SPA", &r);
}
