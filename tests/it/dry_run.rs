//! Dry run (docs/dry-run.md): a rule's `dry_run` and Envoy's
//! `twofa.mode = "dry-run"` let through what enforcement would refuse, mark
//! it for the upstream with `x-auth-request-would-deny` and count it as
//! `decision="dry_run"` with the refusal's reason; identity headers only from
//! a valid token; a rule without `dry_run` still refuses.

use std::collections::HashMap;

use crate::reasons::count;
use crate::support::http::Response;
use crate::support::keycloak::now;
use crate::support::upstream::Echoed;
use crate::support::{assert_problem, assert_reached_upstream, Proxy, Stack, POLICY_RULES};

const WOULD_DENY: &str = "x-auth-request-would-deny";

async fn stack(proxy: Option<Proxy>) -> Stack {
    // `/trial` first: in dry run, needing a second factor.
    let rules = POLICY_RULES.replacen(
        "[",
        "[\n  { path_prefix = \"/trial\", require = \"2fa\", dry_run = true },",
        1,
    );
    Stack::start_with(proxy, |c| {
        c.set("policy", "rules", &rules);
    })
    .await
}

fn would_deny(stack: &Stack, what: &str, response: &Response) -> (Echoed, Option<String>) {
    let echoed = assert_reached_upstream(stack, what, response);
    let code = echoed.header(WOULD_DENY);
    (echoed, code)
}

async fn each_refusal_is_let_through_marked_and_counted(proxy: Proxy) {
    let mut stack = stack(Some(proxy)).await;
    let source = if proxy == Proxy::Envoy {
        "grpc"
    } else {
        "http"
    };

    // No token: 401 would be the answer. No identity at all upstream, and a
    // forged identity (or would-deny) header of the client never arrives.
    let r = stack
        .get("/trial/x")
        .header("X-Auth-Request-User", "admin")
        .header(WOULD_DENY, "none")
        .send()
        .await;
    let (echoed, code) = would_deny(&stack, "no token on a dry-run rule", &r);
    assert_eq!(code.as_deref(), Some("401"));
    assert_eq!(
        echoed.header_names_with_prefix("x-auth-request-"),
        vec![WOULD_DENY.to_string()],
        "identity headers without a valid token"
    );
    assert!(count(&stack, source, "dry_run", "missing_token").await >= 1.0);

    // An expired token: 401 again, still no identity from it.
    let expired = stack.keycloak.token().expires_in(-3600).build();
    let r = stack.get("/trial/x").bearer(&expired.jwt).send().await;
    let (echoed, code) = would_deny(&stack, "expired token on a dry-run rule", &r);
    assert_eq!(code.as_deref(), Some("401"));
    assert_eq!(echoed.header("x-auth-request-subject"), None);
    assert!(count(&stack, source, "dry_run", "expired").await >= 1.0);

    // A valid token whose session never passed a factor: 403 would be the
    // answer; the identity is the token's, the factor `none`.
    let token = stack.keycloak.token().build();
    let r = stack.get("/trial/x").bearer(&token.jwt).send().await;
    let (echoed, code) = would_deny(&stack, "unverified session on a dry-run rule", &r);
    assert_eq!(code.as_deref(), Some("403"));
    assert_eq!(
        echoed.header("x-auth-request-subject").as_deref(),
        Some(token.sub())
    );
    assert_eq!(
        echoed.header("x-auth-request-second-factor").as_deref(),
        Some("none")
    );
    assert!(count(&stack, source, "dry_run", "not_verified").await >= 1.0);

    // A rule without dry_run still refuses the same token.
    let r = stack.get("/admin/users").bearer(&token.jwt).send().await;
    assert_problem(
        &stack,
        "unverified session on an enforced rule",
        &r,
        403,
        "second_factor_required",
    );

    // Verified: an ordinary allow, with no would-deny (a forged one is gone).
    // The harness writes the session to Redis itself, and this instance has
    // just answered "not verified" for it: the change reaches its session
    // cache by Redis's invalidation push, within 1 s (INTERFACE.md section 3).
    stack.mark_verified(&token, "totp", now()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let r = loop {
        let r = stack
            .get("/trial/x")
            .bearer(&token.jwt)
            .header(WOULD_DENY, "403")
            .send()
            .await;
        let seen = Echoed::from_response(&r).is_some_and(|e| e.header(WOULD_DENY).is_none());
        if seen || std::time::Instant::now() >= deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let (echoed, code) = would_deny(&stack, "verified session on a dry-run rule", &r);
    assert_eq!(code, None, "would-deny on an allowed request");
    assert_eq!(
        echoed.header("x-auth-request-second-factor").as_deref(),
        Some("totp")
    );

    // The session store gone: 503 would be the answer.
    stack.redis.stop();
    let other = stack.keycloak.token().build();
    let r = stack.get("/trial/x").bearer(&other.jwt).send().await;
    let (_, code) = would_deny(&stack, "session store down on a dry-run rule", &r);
    assert_eq!(code.as_deref(), Some("503"));
    assert!(count(&stack, source, "dry_run", "store_unavailable").await >= 1.0);
    // ...while an enforced rule fails closed.
    let r = stack.get("/admin/users").bearer(&other.jwt).send().await;
    assert_problem(
        &stack,
        "session store down on an enforced rule",
        &r,
        503,
        "authz_unavailable",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_envoy() {
    each_refusal_is_let_through_marked_and_counted(Proxy::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx() {
    each_refusal_is_let_through_marked_and_counted(Proxy::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_caddy() {
    each_refusal_is_let_through_marked_and_counted(Proxy::Caddy).await;
}

/// Envoy's per-route `twofa.mode`: `dry-run` lets a refusal through on a
/// route whose rule enforces, `enforce` refuses on a dry-run rule, and any
/// other value fails closed (an operator error is never a dry run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_mode_beats_the_rule() {
    use twofa_authz::grpc::pb::envoy::service::auth::v3::attribute_context::{
        HeaderEntry, HttpRequest, Request,
    };
    use twofa_authz::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use twofa_authz::grpc::pb::envoy::service::auth::v3::check_response::HttpResponse;
    use twofa_authz::grpc::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

    let stack = stack(None).await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", stack.app.grpc_addr()))
            .expect("an address")
            .connect()
            .await
            .expect("connect to the gRPC listener");
    let mut client = AuthorizationClient::new(channel);
    let token = stack.keycloak.token().build();
    let check = |path: &str, mode: Option<&str>| CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    host: "app.example.com".into(),
                    headers: vec![HeaderEntry::new(
                        "authorization",
                        &format!("Bearer {}", token.jwt),
                    )],
                    ..Default::default()
                }),
            }),
            context_extensions: mode
                .map(|m| HashMap::from([(twofa_authz::authz::EXT_MODE.to_owned(), m.to_owned())]))
                .unwrap_or_default(),
        }),
    };
    let would = |resp: &twofa_authz::grpc::pb::envoy::service::auth::v3::CheckResponse| match &resp
        .http_response
    {
        Some(HttpResponse::OkResponse(ok)) => ok
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == WOULD_DENY)
            .map(|h| h.value.clone()),
        _ => None,
    };
    let code = |resp: &twofa_authz::grpc::pb::envoy::service::auth::v3::CheckResponse| {
        resp.status.as_ref().map(|s| s.code)
    };

    let r = client
        .check(check("/admin/x", Some("dry-run")))
        .await
        .expect("Check")
        .into_inner();
    assert_eq!(code(&r), Some(0), "dry-run route on an enforcing rule");
    assert_eq!(would(&r).as_deref(), Some("403"));

    let r = client
        .check(check("/trial/x", Some("enforce")))
        .await
        .expect("Check")
        .into_inner();
    assert_eq!(code(&r), Some(7), "enforcing route on a dry-run rule");

    let r = client
        .check(check("/trial/x", None))
        .await
        .expect("Check")
        .into_inner();
    assert_eq!(code(&r), Some(0));
    assert_eq!(would(&r).as_deref(), Some("403"));

    let r = client
        .check(check("/trial/x", Some("dryrun")))
        .await
        .expect("Check")
        .into_inner();
    assert_eq!(code(&r), Some(14), "an unknown mode fails closed");
}
