//! OIDC Back-Channel Logout 1.0 end to end: Keycloak posts a logout token to
//! twofa-authz, and Envoy stops letting that session through.

use serde_json::json;

use crate::support::http;
use crate::support::keycloak::{now, uuid, Token, TokenBuilder, CLIENT};
use crate::support::{assert_problem, Proxy, Stack};

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// A logout token as Keycloak sends it: addressed to the client, typ Logout,
/// the back-channel event, sub and sid, no nonce.
pub fn logout_for(builder: TokenBuilder, token: &Token) -> TokenBuilder {
    builder
        .claim("sub", json!(token.sub()))
        .sid(token.sid())
        .without("session_state")
        .claim("typ", json!("Logout"))
        .claim("aud", json!(CLIENT))
        .claim("jti", json!(uuid()))
        .claim("events", json!({ EVENT: {} }))
        .without("azp")
        .without("scope")
        .without("realm_access")
}

pub async fn post_logout(stack: &Stack, body: &str) -> http::Response {
    http::request(
        "POST",
        stack.app.http_addr(),
        "/keycloak/backchannel-logout",
    )
    .header("Content-Type", "application/x-www-form-urlencoded")
    .body(body.as_bytes().to_vec())
    .send()
    .await
}

async fn admin_status(stack: &Stack, token: &Token) -> u16 {
    stack
        .get("/admin/reports")
        .bearer(&token.jwt)
        .send()
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_verified_session_behind_envoy() {
    let stack = Stack::start(Some(Proxy::Envoy)).await;
    let token = stack.keycloak.token().build();
    let other = stack.keycloak.token().user("bob").build();
    stack.mark_verified(&token, "totp", now()).await;
    stack.mark_verified(&other, "totp", now()).await;
    assert_eq!(admin_status(&stack, &token).await, 200);

    let logout = logout_for(stack.keycloak.token(), &token).build();
    let response = post_logout(&stack, &format!("logout_token={}", logout.jwt)).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        stack.explain("logout", &response)
    );
    assert_eq!(response.header("cache-control"), Some("no-store"));

    let response = stack.get("/admin/reports").bearer(&token.jwt).send().await;
    assert_problem(
        &stack,
        "after logout",
        &response,
        403,
        "second_factor_required",
    );
    assert_eq!(
        admin_status(&stack, &other).await,
        200,
        "another user's session is untouched"
    );

    // The same logout token again is a replay.
    let response = post_logout(&stack, &format!("logout_token={}", logout.jwt)).await;
    assert_problem(
        &stack,
        "replayed logout",
        &response,
        400,
        "invalid_logout_token",
    );

    let metrics = http::get(stack.app.http_addr(), "/metrics")
        .send()
        .await
        .text();
    assert!(
        metrics.contains("twofa_backchannel_logouts_total{result=\"success\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_by_sid_only_or_sub_only() {
    let stack = Stack::start(None).await;
    let a1 = stack.keycloak.token().sid("s-1").build();
    let a2 = stack.keycloak.token().sid("s-2").build();
    let a3 = stack.keycloak.token().sid("s-3").build();
    for t in [&a1, &a2, &a3] {
        stack.mark_verified(t, "sms", now()).await;
    }
    let status = |t: &Token| {
        let req = stack.authz("GET", "/admin/x").bearer(&t.jwt);
        async move { req.send().await.status }
    };

    // sid only: exactly that session ends.
    let by_sid = logout_for(stack.keycloak.token(), &a1)
        .without("sub")
        .build();
    let r = post_logout(&stack, &format!("logout_token={}", by_sid.jwt)).await;
    assert_eq!(r.status, 200, "{}", stack.explain("sid-only logout", &r));
    assert_eq!(status(&a1).await, 403);
    assert_eq!(status(&a2).await, 200);

    // sub only: every session of the user ends.
    let by_sub = logout_for(stack.keycloak.token(), &a2)
        .without("sid")
        .build();
    let r = post_logout(&stack, &format!("logout_token={}", by_sub.jwt)).await;
    assert_eq!(r.status, 200, "{}", stack.explain("sub-only logout", &r));
    assert_eq!(status(&a2).await, 403);
    assert_eq!(status(&a3).await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_logout_tokens_are_400_and_change_nothing() {
    let stack = Stack::start(None).await;
    let token = stack.keycloak.token().build();
    stack.mark_verified(&token, "totp", now()).await;
    let kc = &stack.keycloak;
    let rogue = crate::support::keycloak::KeyPair::rogue();
    let real_kid = crate::support::keycloak::KeyPair::sig_a().kid;
    let cases: Vec<(&str, String)> = vec![
        ("empty body", String::new()),
        ("not a form field we know", "token=abc".into()),
        ("not a JWT", "logout_token=abc.def".into()),
        ("an access token", format!("logout_token={}", token.jwt)),
        (
            "with a nonce",
            format!(
                "logout_token={}",
                logout_for(kc.token(), &token)
                    .claim("nonce", json!("n"))
                    .build()
                    .jwt
            ),
        ),
        (
            "without events",
            format!(
                "logout_token={}",
                logout_for(kc.token(), &token).without("events").build().jwt
            ),
        ),
        (
            "wrong event",
            format!(
                "logout_token={}",
                logout_for(kc.token(), &token)
                    .claim("events", json!({"urn:other": {}}))
                    .build()
                    .jwt
            ),
        ),
        (
            "without jti",
            format!(
                "logout_token={}",
                logout_for(kc.token(), &token).without("jti").build().jwt
            ),
        ),
        (
            "without sub and sid",
            format!(
                "logout_token={}",
                logout_for(kc.token(), &token)
                    .without("sub")
                    .without("sid")
                    .build()
                    .jwt
            ),
        ),
        (
            "expired",
            format!(
                "logout_token={}",
                logout_for(kc.token(), &token).expires_in(-120).build().jwt
            ),
        ),
        (
            "issued in the future",
            format!(
                "logout_token={}",
                logout_for(kc.token(), &token).issued_in(600).build().jwt
            ),
        ),
        (
            "another audience",
            format!(
                "logout_token={}",
                logout_for(kc.token(), &token)
                    .claim("aud", json!("someone-else"))
                    .build()
                    .jwt
            ),
        ),
        (
            "a forged signature",
            format!(
                "logout_token={}",
                logout_for(kc.token(), &token)
                    .signed_with(&rogue)
                    .kid(&real_kid)
                    .build()
                    .jwt
            ),
        ),
        (
            "alg none",
            format!(
                "logout_token={}",
                logout_for(kc.token(), &token).forge_alg_none().build().jwt
            ),
        ),
    ];
    for (what, body) in cases {
        let response = post_logout(&stack, &body).await;
        assert_problem(&stack, what, &response, 400, "invalid_logout_token");
    }
    let still = stack
        .authz("GET", "/admin/x")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_eq!(still.status, 200, "no malformed token may log anyone out");
}
