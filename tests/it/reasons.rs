//! The `reason` label of `twofa_checks_total`: every token attack kind and
//! every denial of INTERFACE.md section 3 moves exactly its own series, once,
//! through Envoy (gRPC Check) and nginx (HTTP forward auth).

use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::support::keycloak::{now, KeyPair};
use crate::support::{Proxy, Stack};

/// The value of one `twofa_checks_total` series, 0 when absent.
pub async fn count(stack: &Stack, source: &str, decision: &str, reason: &str) -> f64 {
    let text = crate::support::http::get(stack.app.http_addr(), "/metrics")
        .send()
        .await
        .text();
    let series = format!(
        "twofa_checks_total{{decision=\"{decision}\",reason=\"{reason}\",source=\"{source}\"}}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every `twofa_checks_total` series of one source.
async fn total(stack: &Stack, source: &str) -> f64 {
    let text = crate::support::http::get(stack.app.http_addr(), "/metrics")
        .send()
        .await
        .text();
    text.lines()
        .filter(|l| {
            l.starts_with("twofa_checks_total{") && l.contains(&format!("source=\"{source}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Case {
    name: &'static str,
    path: &'static str,
    authorization: Vec<String>,
    decision: &'static str,
    reason: &'static str,
}

fn case(
    name: &'static str,
    path: &'static str,
    jwt: Option<&str>,
    decision: &'static str,
    reason: &'static str,
) -> Case {
    Case {
        name,
        path,
        authorization: jwt.map(|j| format!("Bearer {j}")).into_iter().collect(),
        decision,
        reason,
    }
}

async fn each_denial_has_its_reason(proxy: Proxy) {
    let mut stack = Stack::start(Some(proxy)).await;
    let source = match proxy {
        Proxy::Envoy => "grpc",
        _ => "http",
    };
    let kc = &stack.keycloak;
    let valid = kc.token().build();
    let tampered = {
        let mut claims = valid.claims.clone();
        claims["preferred_username"] = json!("admin");
        let parts: Vec<&str> = valid.jwt.split('.').collect();
        use base64::Engine;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    let other_issuer = format!("{}/realms/other", kc.base_url());
    let bad = "invalid_token";
    let t = |b: crate::support::keycloak::TokenBuilder| b.build().jwt;
    let tokens: Vec<(&'static str, String, &'static str)> = vec![
        ("expired", t(kc.token().expires_in(-120)), "expired"),
        ("without exp", t(kc.token().without("exp")), "malformed"),
        (
            "nbf ahead",
            t(kc.token().not_before_in(600)),
            "not_yet_valid",
        ),
        (
            "iat ahead",
            t(kc.token().issued_in(600)),
            "issued_in_future",
        ),
        (
            "another realm",
            t(kc.token().claim("iss", json!(other_issuer))),
            "wrong_issuer",
        ),
        (
            "wrong audience",
            t(kc.token().claim("aud", json!("other-api"))),
            "wrong_audience",
        ),
        (
            "no audience",
            t(kc.token().without("aud")),
            "wrong_audience",
        ),
        (
            "client not allowed",
            t(kc.token().claim("azp", json!("evil-client"))),
            "wrong_client",
        ),
        ("alg none", t(kc.token().forge_alg_none()), "malformed"),
        (
            "HS256 with the public key",
            t(kc.token().forge_hs256_with_public_key()),
            "bad_algorithm",
        ),
        (
            "RS384",
            t(kc.token().algorithm(Algorithm::RS384)),
            "bad_algorithm",
        ),
        (
            "rogue key under the realm kid",
            t(kc.token()
                .signed_with(&KeyPair::rogue())
                .kid(&KeyPair::sig_a().kid)),
            "bad_signature",
        ),
        (
            "unknown kid",
            t(kc.token().signed_with(&KeyPair::rogue())),
            "unknown_kid",
        ),
        (
            "the realm's enc key",
            t(kc.token().signed_with(&KeyPair::enc())),
            "unknown_kid",
        ),
        ("tampered payload", tampered, "bad_signature"),
        (
            "truncated signature",
            valid.jwt[..valid.jwt.len() - 10].to_owned(),
            "bad_signature",
        ),
        (
            "ID token",
            t(kc.token().claim("typ", json!("ID"))),
            "wrong_type",
        ),
        (
            "refresh token",
            t(kc.token().claim("typ", json!("Refresh"))),
            "wrong_type",
        ),
        ("not a JWT", "not-a-jwt".to_owned(), "malformed"),
    ];
    let mut cases: Vec<Case> = tokens
        .iter()
        .map(|(name, jwt, reason)| case(name, "/api/things", Some(jwt), bad, reason))
        .collect();
    let other = kc.token().user("bob").build();
    cases.push(Case {
        name: "Bearer a, Bearer b",
        path: "/api/things",
        authorization: vec![format!("Bearer {}, Bearer {}", valid.jwt, other.jwt)],
        decision: bad,
        reason: "multiple_credentials",
    });
    if proxy == Proxy::Envoy {
        // nginx itself refuses a repeated Authorization header with 400.
        cases.push(Case {
            name: "two Authorization headers",
            path: "/api/things",
            authorization: vec![
                format!("Bearer {}", valid.jwt),
                format!("Bearer {}", other.jwt),
            ],
            decision: bad,
            reason: "multiple_credentials",
        });
    }
    cases.push(case(
        "no token",
        "/api/things",
        None,
        "missing_token",
        "missing_token",
    ));
    cases.push(case(
        "valid token",
        "/api/things",
        Some(&valid.jwt),
        "allow",
        "none",
    ));
    let unverified = kc.token().build();
    cases.push(case(
        "not verified",
        "/secure",
        Some(&unverified.jwt),
        "second_factor_required",
        "not_verified",
    ));
    let sessionless = kc.token().no_session().build();
    cases.push(case(
        "token without sid",
        "/secure",
        Some(&sessionless.jwt),
        "second_factor_required",
        "no_sid",
    ));
    let stale = kc.token().build();
    stack.mark_verified(&stale, "totp", now() - 20 * 60).await;
    cases.push(case(
        "verified 20 min ago, max_age 15m",
        "/admin/users",
        Some(&stale.jwt),
        "second_factor_required",
        "too_old",
    ));
    let fresh = kc.token().build();
    stack.mark_verified(&fresh, "totp", now() - 5).await;
    cases.push(case(
        "verified",
        "/secure",
        Some(&fresh.jwt),
        "allow",
        "none",
    ));

    // Every case is tried before failing, so one run lists all the gaps.
    let mut wrong = Vec::new();
    for c in &cases {
        let before = count(&stack, source, c.decision, c.reason).await;
        let all_before = total(&stack, source).await;
        let mut request = stack.get(c.path);
        for v in &c.authorization {
            request = request.header("Authorization", v);
        }
        let response = request.send().await;
        let after = count(&stack, source, c.decision, c.reason).await;
        let all_after = total(&stack, source).await;
        // nginx asks twice for a denial (envoy/nginx.conf: auth_request
        // keeps only the status, so @twofa_refused asks again for the body),
        // so the HTTP source counts a denied request twice; whatever the
        // count, all of it is on this one series.
        let moved = after - before;
        let exact = proxy == Proxy::Envoy || c.decision == "allow";
        if moved < 1.0 || (exact && moved != 1.0) || all_after - all_before != moved {
            wrong.push(format!(
                "{}: status {}, {source}/{}/{} moved by {}, all series by {}",
                c.name,
                response.status,
                c.decision,
                c.reason,
                after - before,
                all_after - all_before
            ));
        }
    }

    // The session store gone: 503 with its own reason.
    stack.redis.stop();
    let before = count(&stack, source, "unavailable", "store_unavailable").await;
    let response = stack.get("/secure").bearer(&fresh.jwt).send().await;
    let after = count(&stack, source, "unavailable", "store_unavailable").await;
    if response.status != 503 || after < before + 1.0 {
        wrong.push(format!(
            "Redis down: status {}, unavailable/store_unavailable moved by {}",
            response.status,
            after - before
        ));
    }
    assert!(
        wrong.is_empty(),
        "{}: decisions without their reason label:\n  {}",
        stack.name(),
        wrong.join("\n  ")
    );
}

#[tokio::test]
async fn grpc_each_denial_has_its_reason() {
    each_denial_has_its_reason(Proxy::Envoy).await;
}

#[tokio::test]
async fn http_each_denial_has_its_reason() {
    each_denial_has_its_reason(Proxy::Nginx).await;
}

/// The debug decision line names the same decision and reason as the
/// metric, and the subject only by its hash: never the token, `sub` or email.
#[tokio::test]
async fn the_debug_decision_line_gives_the_reason_and_a_hashed_subject() {
    let mut stack = Stack::start_with(Some(Proxy::Envoy), |config| {
        config.set_str("log", "level", "debug");
    })
    .await;
    let kc = &stack.keycloak;
    let expired = kc.token().expires_in(-3600).build();
    let unverified = kc.token().user("bob").build();
    let verified = kc.token().user("carol").build();
    stack.mark_verified(&verified, "totp", now()).await;
    let _ = stack.get("/api/x").bearer(&expired.jwt).send().await;
    let _ = stack.get("/secure").bearer(&unverified.jwt).send().await;
    let _ = stack.get("/secure").bearer(&verified.jwt).send().await;
    let _ = stack
        .app
        .signal_and_wait(libc::SIGTERM, std::time::Duration::from_secs(12))
        .await;
    let log = stack.app.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("authorization decision"))
        .collect();
    let has = |decision: &str, reason: &str, subject: Option<&str>| {
        lines.iter().any(|l| {
            l.contains(decision) && l.contains(reason) && subject.is_none_or(|s| l.contains(s))
        })
    };
    let hash = |t: &crate::support::keycloak::Token| {
        twofa_authz::token::subject_hash(t.iss(), t.sub())[..16].to_owned()
    };
    assert!(has("invalid_token", "expired", None), "{log}");
    assert!(
        has(
            "second_factor_required",
            "not_verified",
            Some(&hash(&unverified))
        ),
        "{log}"
    );
    assert!(has("allow", "none", Some(&hash(&verified))), "{log}");
    for t in [&expired, &unverified, &verified] {
        for secret in [t.jwt.as_str(), t.sub()] {
            assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
        }
        if let Some(email) = t.claims["email"].as_str() {
            assert!(
                !lines.iter().any(|l| l.contains(email)),
                "an email is in a decision line"
            );
        }
    }
}

/// No signing keys yet: the 503 says `keys_unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_keys_is_keys_unavailable() {
    use crate::support::app::App;
    use crate::support::http;
    use crate::support::keycloak::Keycloak;
    use crate::support::redis::RedisServer;

    let redis = RedisServer::start().await;
    let kc = Keycloak::start().await;
    kc.stop().await;
    let config = crate::support::base_config(&kc, &redis);
    let app = App::start_unready(&config).await;
    let token = kc.token().build();
    let response = http::get(app.http_addr(), "/authz/auth-request")
        .header("X-Original-Method", "GET")
        .header("X-Original-URI", "/api/x")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_eq!(response.status, 503, "{}", response.text());
    let text = http::get(app.http_addr(), "/metrics").send().await.text();
    let series =
        "twofa_checks_total{decision=\"unavailable\",reason=\"keys_unavailable\",source=\"http\"} 1";
    assert!(text.lines().any(|l| l == series), "no {series} in:\n{text}");
}

/// A route whose per-route setting is not a requirement fails closed, and
/// the 503 says `malformed` (the route's configuration, not the client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_route_setting_is_unavailable_malformed() {
    use std::collections::HashMap;
    use twofa_authz::grpc::pb::envoy::service::auth::v3::attribute_context::{
        HeaderEntry, HttpRequest, Request,
    };
    use twofa_authz::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use twofa_authz::grpc::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

    let stack = Stack::start(None).await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", stack.app.grpc_addr()))
            .expect("an address")
            .connect()
            .await
            .expect("connect to the gRPC listener");
    let mut client = AuthorizationClient::new(channel);
    let token = stack.keycloak.token().build();
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/api/x".into(),
                    host: "app.example.com".into(),
                    headers: vec![HeaderEntry::new(
                        "authorization",
                        &format!("Bearer {}", token.jwt),
                    )],
                    ..Default::default()
                }),
            }),
            context_extensions: HashMap::from([(
                twofa_authz::authz::EXT_REQUIRE.to_owned(),
                "sometimes".to_owned(),
            )]),
        }),
    };
    let response = client.check(request).await.expect("Check").into_inner();
    assert_eq!(response.status.map(|s| s.code), Some(14), "UNAVAILABLE");
    assert_eq!(
        count(&stack, "grpc", "unavailable", "malformed").await,
        1.0,
        "the bad route setting was not counted as unavailable/malformed"
    );
}
