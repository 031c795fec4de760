//! INTERFACE.md sections 3 and 4 through a real Caddy running envoy/Caddyfile
//! (forward_auth to /authz/forward-auth). Caddy, like Traefik, passes every
//! client header on to the auth service: this is where a client-sent
//! `X-Original-URI` or identity header would get through if anything read it.

use crate::support::keycloak::now;
use crate::support::upstream::Echoed;
use crate::support::{assert_problem, assert_reached_upstream, Proxy, Stack, IDENTITY_PREFIX};

scenarios_through!(Proxy::Caddy;
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

/// The finding: behind a proxy that passes client headers on, a client-sent
/// `X-Original-URI: /public` chose what was checked, and `/api/admin` was
/// allowed without a token or with one that never passed a second factor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_original_uri_never_opens_api_admin() {
    let stack = Stack::start_with(Some(Proxy::Caddy), |config| {
        config.set(
            "policy",
            "rules",
            r#"[
              { path_prefix = "/public", require = "none" },
              { path_prefix = "/api/admin", require = "2fa", max_age = "15m" },
              { path_prefix = "/api", require = "token" },
            ]"#,
        );
    })
    .await;
    let unverified = stack.keycloak.token().build();
    let spoofs: [&[(&str, &str)]; 4] = [
        &[("X-Original-URI", "/public")],
        &[("X-Original-URI", "/public"), ("X-Original-Method", "GET")],
        &[
            ("X-Forwarded-Uri", "/public"),
            ("X-Forwarded-Method", "GET"),
        ],
        &[
            ("X-Original-URI", "/public"),
            ("X-Forwarded-Uri", "/public"),
            ("X-Forwarded-Host", "public.example.com"),
            ("X-Forwarded-Method", "OPTIONS"),
        ],
    ];
    for method in ["GET", "POST"] {
        for headers in spoofs {
            let spoofed = || {
                let mut request = stack.request(method, "/api/admin");
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                request
            };
            let what = format!("{method} /api/admin with {headers:?}");
            let response = spoofed().send().await;
            assert_problem(
                &stack,
                &format!("{what}, no token"),
                &response,
                401,
                "missing_token",
            );
            let response = spoofed().bearer(&unverified.jwt).send().await;
            assert_problem(
                &stack,
                &format!("{what}, unverified token"),
                &response,
                403,
                "second_factor_required",
            );
        }
    }
    // The control: the same spoofs on a token path pass with a token, and the
    // application sees the real path.
    let response = stack
        .get("/api/x")
        .header("X-Original-URI", "/public")
        .bearer(&unverified.jwt)
        .send()
        .await;
    let echoed = assert_reached_upstream(&stack, "spoofed /api/x with a token", &response);
    assert_eq!(echoed.path(), "/api/x");
}

/// A user with no email, a session not verified: the auth response has no
/// `x-auth-request-email` and no `-second-factor-at`. Caddy 2.6 would copy
/// its placeholder text into them; the Caddyfile removes that, and a client's
/// own value never gets through either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_the_response_lacks_are_absent_upstream() {
    let stack = Stack::start(Some(Proxy::Caddy)).await;
    let token = stack.keycloak.token().without("email").build();
    let response = stack
        .get("/api/x")
        .header("X-Auth-Request-Email", "mallory@evil.example")
        .header("X-Auth-Request-Second-Factor-At", "1")
        .header("X-Auth-Request-Second-Factor", "totp")
        .bearer(&token.jwt)
        .send()
        .await;
    let echoed = assert_reached_upstream(&stack, "token without email", &response);
    assert_eq!(
        echoed.header_values("x-auth-request-email"),
        Vec::<String>::new(),
        "{echoed:?}"
    );
    assert_eq!(
        echoed.header_values("x-auth-request-second-factor-at"),
        Vec::<String>::new(),
        "{echoed:?}"
    );
    assert_eq!(
        echoed.header("x-auth-request-second-factor").as_deref(),
        Some("none")
    );
    assert_eq!(
        echoed.header("x-auth-request-user").as_deref(),
        Some("alice")
    );
    for name in echoed.header_names_with_prefix(IDENTITY_PREFIX) {
        for value in echoed.header_values(&name) {
            assert!(
                !value.contains('{'),
                "{name}: {value:?} reached the upstream"
            );
        }
    }

    // Verified: every header is set, with the real values.
    let at = now() - 5;
    stack.mark_verified(&token, "email", at).await;
    let response = stack
        .get("/secure")
        .header("X-Auth-Request-Second-Factor-At", "1")
        .bearer(&token.jwt)
        .send()
        .await;
    let echoed = assert_reached_upstream(&stack, "verified, token without email", &response);
    assert_eq!(
        echoed.header("x-auth-request-second-factor-at"),
        Some(at.to_string())
    );
    assert_eq!(
        echoed.header("x-auth-request-second-factor").as_deref(),
        Some("email")
    );
}

/// The user API and the back-channel logout are routed to twofa-authz itself,
/// so that users can enroll through Caddy; `/userdata` is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_api_is_routed_to_twofa_authz() {
    let stack = Stack::start(Some(Proxy::Caddy)).await;
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
    assert_problem(
        &stack,
        "GET /user, no profile yet",
        &response,
        404,
        "profile_not_found",
    );
    let response = stack
        .request("POST", "/keycloak/backchannel-logout")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("logout_token=not-a-jwt")
        .send()
        .await;
    assert_problem(
        &stack,
        "back-channel logout",
        &response,
        400,
        "invalid_logout_token",
    );
    // /userdata is the application's, behind the check (default 2fa).
    let response = stack.get("/userdata").bearer(&token.jwt).send().await;
    assert_problem(
        &stack,
        "GET /userdata",
        &response,
        403,
        "second_factor_required",
    );
    assert!(Echoed::from_response(&response).is_none());
}
