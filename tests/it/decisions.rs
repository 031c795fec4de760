//! The decisions of INTERFACE.md section 3, one scenario per row (and per attack),
//! each run through Envoy (`check_envoy`), nginx (`check_nginx`) and Caddy
//! (`check_caddy`) against the echo application.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::support::http::Response;
use crate::support::keycloak::{now, uuid, KeyPair, ROLES};
use crate::support::process::poll_until;
use crate::support::upstream::Echoed;
use crate::support::{
    assert_problem, assert_reached_upstream, expected_www_authenticate, Proxy, Stack,
    IDENTITY_PREFIX,
};

/// Identity headers a client tries to smuggle in, in varied spellings, one twice,
/// and one the service never sets.
const SPOOFED: [(&str, &str); 9] = [
    ("X-Auth-Request-User", "mallory"),
    ("x-auth-request-user", "mallory-again"),
    (
        "X-AUTH-REQUEST-SUBJECT",
        "00000000-0000-4000-8000-000000000000",
    ),
    ("x-auth-request-email", "mallory@evil.example"),
    ("X-Auth-Request-Groups", "admin,realm-admin"),
    ("x-auth-request-second-factor", "spoofed-factor"),
    ("x-auth-request-second-factor-at", "1"),
    ("X-Auth-Request-Foo", "bar"),
    ("x-auth-request-", "empty-suffix"),
];

fn spoof(mut request: crate::support::http::Request) -> crate::support::http::Request {
    for (name, value) in SPOOFED {
        request = request.header(name, value);
    }
    request
}

fn assert_www_authenticate(stack: &Stack, what: &str, response: &Response, invalid: bool) {
    let expected = expected_www_authenticate(&stack.keycloak, invalid);
    assert_eq!(
        response.header("www-authenticate"),
        Some(expected.as_str()),
        "{}",
        stack.explain(what, response)
    );
}

/// The identity headers twofa-authz set for the default test user.
fn assert_identity(stack: &Stack, what: &str, echoed: &Echoed, sub: &str) {
    let ctx = || format!("{} {what}: upstream got {echoed:?}", stack.name());
    assert_eq!(
        echoed.header("x-auth-request-user").as_deref(),
        Some("alice"),
        "{}",
        ctx()
    );
    assert_eq!(
        echoed.header("x-auth-request-subject").as_deref(),
        Some(sub),
        "{}",
        ctx()
    );
    assert_eq!(
        echoed.header("x-auth-request-email").as_deref(),
        Some("alice@example.com"),
        "{}",
        ctx()
    );
    assert_eq!(
        echoed.header("x-auth-request-groups"),
        Some(ROLES.join(",")),
        "{}",
        ctx()
    );
}

/// Nothing the client sent with the identity prefix got through: every prefixed
/// header the upstream saw is one twofa-authz sets, with a value it chose.
fn assert_no_spoofed_header(stack: &Stack, what: &str, echoed: &Echoed) {
    let ctx = || format!("{} {what}: upstream got {echoed:?}", stack.name());
    let known = [
        "x-auth-request-user",
        "x-auth-request-subject",
        "x-auth-request-email",
        "x-auth-request-groups",
        "x-auth-request-second-factor",
        "x-auth-request-second-factor-at",
    ];
    for name in echoed.header_names_with_prefix(IDENTITY_PREFIX) {
        assert!(
            known.contains(&name.as_str()),
            "client header {name} reached the upstream: {}",
            ctx()
        );
        let values = echoed.header_values(&name);
        assert_eq!(
            values.len(),
            1,
            "{name} arrived {} times: {}",
            values.len(),
            ctx()
        );
        for (spoofed_name, spoofed_value) in SPOOFED {
            if spoofed_name.eq_ignore_ascii_case(&name) {
                assert_ne!(
                    values[0],
                    spoofed_value,
                    "spoofed {name} reached the upstream: {}",
                    ctx()
                );
            }
        }
    }
}

pub async fn requirement_none_passes_without_identity(proxy: Proxy) {
    let stack = Stack::start(Some(proxy)).await;

    let response = spoof(stack.get("/public/page?x=1")).send().await;
    let echoed = assert_reached_upstream(&stack, "GET /public/page", &response);
    assert_eq!(echoed.path(), "/public/page?x=1");
    assert_eq!(
        echoed.header_names_with_prefix(IDENTITY_PREFIX),
        Vec::<String>::new(),
        "{} requirement none: identity headers must be removed",
        stack.name()
    );

    // A token changes nothing on an open path: still no identity for the upstream.
    let token = stack.keycloak.token().build();
    let response = spoof(stack.get("/public")).bearer(&token.jwt).send().await;
    let echoed = assert_reached_upstream(&stack, "GET /public with a token", &response);
    assert_eq!(
        echoed.header_names_with_prefix(IDENTITY_PREFIX),
        Vec::<String>::new()
    );

    let response = stack
        .request("POST", "/public/form")
        .body("a=1")
        .send()
        .await;
    let echoed = assert_reached_upstream(&stack, "POST /public/form", &response);
    assert_eq!(echoed.method(), "POST");
}

pub async fn missing_token_is_401(proxy: Proxy) {
    let stack = Stack::start(Some(proxy)).await;
    for target in ["/api/things", "/secure", "/admin/users", "/"] {
        let response = stack.get(target).send().await;
        let what = format!("GET {target} without a token");
        assert_problem(&stack, &what, &response, 401, "missing_token");
        assert_www_authenticate(&stack, &what, &response, false);
    }
    // Credentials that are not a bearer token are no token.
    for authorization in ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer ", "Token abc"] {
        let response = stack
            .get("/api/things")
            .header("Authorization", authorization)
            .send()
            .await;
        let what = format!("Authorization: {authorization:?}");
        assert_eq!(response.status, 401, "{}", stack.explain(&what, &response));
        assert!(Echoed::from_response(&response).is_none());
    }
}

/// Every kind of bad token: 401 `invalid_token`, never the application.
pub async fn invalid_tokens_are_401(proxy: Proxy) {
    let stack = Stack::start(Some(proxy)).await;
    let kc = &stack.keycloak;
    let valid = kc.token().build();
    let tampered = {
        let forged_claims = serde_json::json!({"preferred_username": "admin"});
        let mut claims = valid.claims.clone();
        claims["preferred_username"] = forged_claims["preferred_username"].clone();
        let parts: Vec<&str> = valid.jwt.split('.').collect();
        use base64::Engine;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    let other_issuer = format!("{}/realms/other", kc.base_url());
    let cases: Vec<(&str, String)> = vec![
        (
            "expired beyond the leeway",
            kc.token().expires_in(-120).build().jwt,
        ),
        ("without exp", kc.token().without("exp").build().jwt),
        (
            "not yet valid (nbf)",
            kc.token().not_before_in(600).build().jwt,
        ),
        (
            "issued in the future (iat)",
            kc.token().issued_in(600).build().jwt,
        ),
        (
            "another realm's issuer",
            kc.token().claim("iss", json!(other_issuer)).build().jwt,
        ),
        (
            "another server's issuer",
            kc.token()
                .claim("iss", json!("https://sso.evil.example/realms/test"))
                .build()
                .jwt,
        ),
        (
            "wrong audience",
            kc.token().claim("aud", json!("other-api")).build().jwt,
        ),
        ("no audience", kc.token().without("aud").build().jwt),
        (
            "client not allowed (azp)",
            kc.token().claim("azp", json!("evil-client")).build().jwt,
        ),
        ("alg none", kc.token().forge_alg_none().build().jwt),
        (
            "HS256 keyed with the public key",
            kc.token().forge_hs256_with_public_key().build().jwt,
        ),
        (
            "unknown key under the realm key's kid",
            kc.token()
                .signed_with(&KeyPair::rogue())
                .kid(&KeyPair::sig_a().kid)
                .build()
                .jwt,
        ),
        (
            "unknown key and kid",
            kc.token().signed_with(&KeyPair::rogue()).build().jwt,
        ),
        (
            "signed with the realm's enc key",
            kc.token().signed_with(&KeyPair::enc()).build().jwt,
        ),
        (
            "RS384, not an allowed algorithm",
            kc.token().algorithm(Algorithm::RS384).build().jwt,
        ),
        ("tampered payload", tampered),
        (
            "ID token (typ ID)",
            kc.token().claim("typ", json!("ID")).build().jwt,
        ),
        (
            "refresh token (typ Refresh)",
            kc.token().claim("typ", json!("Refresh")).build().jwt,
        ),
        (
            "logout token (typ Logout)",
            kc.token().claim("typ", json!("Logout")).build().jwt,
        ),
        (
            "truncated signature",
            valid.jwt[..valid.jwt.len() - 10].to_owned(),
        ),
        ("not a JWT", "not-a-jwt".to_owned()),
        (
            "two segments",
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0".to_owned(),
        ),
    ];
    // Every case is tried before failing, so one run lists all the gaps.
    let expected_challenge = expected_www_authenticate(&stack.keycloak, true);
    let mut wrong = Vec::new();
    for (name, jwt) in cases {
        let response = stack.get("/api/things").bearer(&jwt).send().await;
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
        let reached_upstream = Echoed::from_response(&response).is_some();
        if response.status != 401
            || body["code"] != "invalid_token"
            || response.header("www-authenticate") != Some(expected_challenge.as_str())
            || reached_upstream
        {
            wrong.push(format!(
                "token {name}: status {}, code {}, www-authenticate {:?}{}",
                response.status,
                body["code"],
                response.header("www-authenticate"),
                if reached_upstream {
                    ", REACHED THE APPLICATION"
                } else {
                    ""
                }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{}: bad tokens not refused as the contract says:\n  {}",
        stack.name(),
        wrong.join("\n  ")
    );
    // The control: the untouched token passes.
    let response = stack.get("/api/things").bearer(&valid.jwt).send().await;
    assert_reached_upstream(&stack, "the valid token", &response);
}

pub async fn requirement_token_sets_identity(proxy: Proxy) {
    let stack = Stack::start(Some(proxy)).await;
    let token = stack.keycloak.token().build();

    let response = spoof(stack.get("/api/me")).bearer(&token.jwt).send().await;
    let echoed = assert_reached_upstream(&stack, "GET /api/me with a token", &response);
    assert_eq!(echoed.path(), "/api/me");
    assert_identity(&stack, "requirement token", &echoed, token.sub());
    assert_eq!(
        echoed.header("x-auth-request-second-factor").as_deref(),
        Some("none"),
        "{} requirement token, session not verified: {echoed:?}",
        stack.name()
    );
    assert_no_spoofed_header(&stack, "requirement token", &echoed);

    // The scheme is case-insensitive (RFC 9110).
    let response = stack
        .get("/api/me")
        .header("Authorization", &format!("bearer {}", token.jwt))
        .send()
        .await;
    assert_reached_upstream(&stack, "lower-case bearer scheme", &response);
}

pub async fn second_factor_required_unless_verified(proxy: Proxy) {
    let stack = Stack::start(Some(proxy)).await;
    let kc = &stack.keycloak;
    let token = kc.token().build();

    let response = stack.get("/secure").bearer(&token.jwt).send().await;
    assert_problem(
        &stack,
        "not verified",
        &response,
        403,
        "second_factor_required",
    );
    let body = response.json();
    assert!(
        body["methods"].is_array(),
        "{}",
        stack.explain("methods", &response)
    );

    // Verified state belongs to (iss, sub, sid): none of these verify `token`.
    let other_sid = uuid();
    stack
        .mark_verified_triple(token.iss(), token.sub(), &other_sid, "totp", now())
        .await;
    let other_user = kc.token().user("bob").sid(token.sid()).build();
    stack.mark_verified(&other_user, "totp", now()).await;
    let other_issuer = format!("{}/realms/other", kc.base_url());
    stack
        .mark_verified_triple(&other_issuer, token.sub(), token.sid(), "totp", now())
        .await;
    let response = stack.get("/secure").bearer(&token.jwt).send().await;
    assert_problem(
        &stack,
        "verified elsewhere only",
        &response,
        403,
        "second_factor_required",
    );

    // A token of no session can never be verified, even if an empty sid is.
    let sessionless = kc.token().no_session().build();
    stack
        .mark_verified_triple(sessionless.iss(), sessionless.sub(), "", "totp", now())
        .await;
    let response = stack.get("/secure").bearer(&sessionless.jwt).send().await;
    assert_problem(
        &stack,
        "token without sid",
        &response,
        403,
        "second_factor_required",
    );
}

pub async fn verified_session_is_allowed(proxy: Proxy) {
    let stack = Stack::start(Some(proxy)).await;
    let token = stack.keycloak.token().build();
    let at = now() - 5;
    stack.mark_verified(&token, "totp", at).await;

    let response = spoof(stack.get("/secure/report"))
        .bearer(&token.jwt)
        .send()
        .await;
    let echoed = assert_reached_upstream(&stack, "verified session", &response);
    assert_identity(&stack, "requirement 2fa", &echoed, token.sub());
    assert_eq!(
        echoed.header("x-auth-request-second-factor").as_deref(),
        Some("totp")
    );
    assert_eq!(
        echoed.header("x-auth-request-second-factor-at"),
        Some(at.to_string()),
        "{}: {echoed:?}",
        stack.name()
    );
    assert_no_spoofed_header(&stack, "requirement 2fa", &echoed);

    // Another factor is reported as such.
    let token = stack.keycloak.token().build();
    stack.mark_verified(&token, "recovery", at).await;
    let response = stack.get("/secure").bearer(&token.jwt).send().await;
    let echoed = assert_reached_upstream(&stack, "verified by recovery code", &response);
    assert_eq!(
        echoed.header("x-auth-request-second-factor").as_deref(),
        Some("recovery")
    );
}

/// `/admin` wants a second factor from the last 15 minutes (route setting for
/// Envoy, rule for nginx).
pub async fn step_up_max_age(proxy: Proxy) {
    let stack = Stack::start(Some(proxy)).await;
    let token = stack.keycloak.token().build();
    stack.mark_verified(&token, "totp", now() - 20 * 60).await;

    let response = stack.get("/admin/users").bearer(&token.jwt).send().await;
    assert_problem(
        &stack,
        "verified 20 min ago, max_age 15m",
        &response,
        403,
        "second_factor_required",
    );
    assert!(response.json()["methods"].is_array());
    // Without max_age the same session is good.
    let response = stack.get("/secure").bearer(&token.jwt).send().await;
    assert_reached_upstream(&stack, "verified 20 min ago, no max_age", &response);

    let fresh = stack.keycloak.token().build();
    stack.mark_verified(&fresh, "email", now() - 60).await;
    let response = stack.get("/admin/users").bearer(&fresh.jwt).send().await;
    let echoed = assert_reached_upstream(&stack, "verified 1 min ago, max_age 15m", &response);
    assert_eq!(
        echoed.header("x-auth-request-second-factor").as_deref(),
        Some("email")
    );
}

/// Redis gone: 503, never 200. Redis back (empty): decisions recover without
/// restarting twofa-authz.
pub async fn session_store_outage_fails_closed(proxy: Proxy) {
    let mut stack = Stack::start(Some(proxy)).await;
    let token = stack.keycloak.token().build();
    stack.mark_verified(&token, "totp", now()).await;
    let response = stack.get("/secure").bearer(&token.jwt).send().await;
    assert_reached_upstream(&stack, "before the outage", &response);

    stack.redis.stop();
    // With the session cache on, INTERFACE.md section 3 lets an instance
    // answer from memory until it notices that the invalidation channel is
    // gone, for 2 s at most, and only with what Redis held when it went
    // away (`session_cache::redis_lost_means_503_within_2s_*` measures it).
    // Without the cache there is no such window: the first answer is 503.
    let cached = stack.config.get("cache", "session_capacity") != Some("0");
    if cached {
        let stopped = poll_until(Duration::from_secs(2), || async {
            stack.get("/secure").bearer(&token.jwt).send().await.status != 200
        })
        .await;
        assert!(
            stopped,
            "still allowed from memory 2 s after Redis died:\n{}",
            stack.app.log()
        );
    }
    for attempt in 0..5 {
        for target in ["/secure", "/admin/users"] {
            let started = std::time::Instant::now();
            let response = stack.get(target).bearer(&token.jwt).send().await;
            let what = format!(
                "Redis down, GET {target} (attempt {attempt}, answered in {} ms)",
                started.elapsed().as_millis()
            );
            assert_problem(&stack, &what, &response, 503, "authz_unavailable");
        }
    }
    let app_addr = stack.app.http_addr().to_owned();
    let unready = poll_until(Duration::from_secs(10), || {
        let addr = app_addr.clone();
        async move {
            crate::support::http::get(&addr, "/readyz")
                .send()
                .await
                .status
                == 503
        }
    })
    .await;
    assert!(unready, "/readyz stayed 200 with Redis down");

    stack.redis.restart().await;
    // Redis came back empty: the session is no longer verified, and saying so is
    // the proof that decisions work again.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = stack.get("/secure").bearer(&token.jwt).send().await;
        assert_ne!(
            response.status,
            200,
            "{}",
            stack.explain("allowed while the store was empty", &response)
        );
        if response.status == 403 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            stack.explain("20 s after the Redis restart", &response)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.mark_verified(&token, "totp", now()).await;
    let response = stack.get("/secure").bearer(&token.jwt).send().await;
    assert_reached_upstream(&stack, "verified again after the restart", &response);
}

/// twofa-authz itself unreachable: the proxy refuses with 503, whatever the path.
pub async fn authz_unreachable_fails_closed(proxy: Proxy) {
    let mut stack = Stack::start(Some(proxy)).await;
    let token = stack.keycloak.token().build();
    stack.mark_verified(&token, "totp", now()).await;
    stack.app.stop();
    for target in ["/secure", "/public/page", "/api/me"] {
        let response = stack.get(target).bearer(&token.jwt).send().await;
        let what = format!("twofa-authz down, GET {target}");
        assert_eq!(response.status, 503, "{}", stack.explain(&what, &response));
        assert!(
            Echoed::from_response(&response).is_none(),
            "{}",
            stack.explain(&what, &response)
        );
    }
}

/// Path tricks must never land a request on a stricter path with a laxer
/// requirement.
pub async fn path_tricks_get_the_strict_requirement(proxy: Proxy) {
    let stack = Stack::start(Some(proxy)).await;
    let token = stack.keycloak.token().build();

    let response = stack.get("/public/ok").bearer(&token.jwt).send().await;
    assert_reached_upstream(&stack, "control: /public/ok", &response);

    let tricks = [
        "/public/../admin",
        "/public/./../admin/users",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "//admin",
        "/public/..//admin",
        "/publicx",
        "/public.x",
        "/PUBLIC/x",
        "/api/../admin",
        "/api/%2e%2e/secure",
        "/api/../secure?next=/public",
    ];
    for target in tricks {
        let response = stack.get(target).bearer(&token.jwt).send().await;
        assert_problem(
            &stack,
            &format!("GET {target}"),
            &response,
            403,
            "second_factor_required",
        );
    }

    // Encoded slashes cannot be normalized: the strictest requirement, unless the
    // proxy already refused the request (Envoy: path_with_escaped_slashes_action).
    for target in ["/public%2F..%2Fadmin", "/public%2fx", "/api%2F..%2Fadmin"] {
        let response = stack.get(target).bearer(&token.jwt).send().await;
        let what = format!("GET {target}");
        assert!(
            Echoed::from_response(&response).is_none(),
            "{}",
            stack.explain(&what, &response)
        );
        if response.status != 400 {
            assert_problem(&stack, &what, &response, 403, "second_factor_required");
        }
    }

    // And without a token the same tricks are 401, not a way in.
    for target in ["/public/../admin", "//admin", "/publicx"] {
        let response = stack.get(target).send().await;
        assert_problem(
            &stack,
            &format!("GET {target} without a token"),
            &response,
            401,
            "missing_token",
        );
    }
}

/// Every allowed kind of request (none, token, 2fa), with the full set of spoofed
/// headers: none of them reaches the upstream.
pub async fn client_identity_headers_never_reach_upstream(proxy: Proxy) {
    let stack = Stack::start(Some(proxy)).await;
    let token = stack.keycloak.token().build();
    stack.mark_verified(&token, "sms", now()).await;
    for target in ["/public/x", "/api/x", "/secure/x", "/admin/x"] {
        let response = spoof(stack.get(target)).bearer(&token.jwt).send().await;
        let echoed = assert_reached_upstream(&stack, &format!("spoofed GET {target}"), &response);
        assert_no_spoofed_header(&stack, target, &echoed);
        assert!(
            echoed.header_values("x-auth-request-foo").is_empty(),
            "{}: x-auth-request-foo reached the upstream",
            stack.name()
        );
    }
}

/// The rules of the path-form finding: a step-up rule under a token rule, and
/// another step-up rule with a smaller `max_age` elsewhere (the smallest of any
/// rule is what an ambiguous path gets).
const AMBIGUOUS_RULES: &str = r#"[
  { path_prefix = "/user", require = "token" },
  { path_prefix = "/public", require = "none" },
  { path_prefix = "/admin", require = "2fa", max_age = "15m" },
  { path_prefix = "/api/admin", require = "2fa", max_age = "30m" },
  { path_prefix = "/api", require = "token" },
]"#;

/// Forms of `/api/admin` that Tomcat/Spring, Express or IIS serve as
/// `/api/admin`, but that the rule does not match as written.
const API_ADMIN_FORMS: [&str; 6] = [
    "/api/Admin/x",
    "/api/admin;jsessionid=1/x",
    "/api/admin.json",
    "/api/admin./x",
    "/API/ADMIN",
    "/api/admin;x=1.json",
];

/// Forms of `/admin` (a route of its own in envoy/envoy.yaml): through Envoy
/// they miss that route and fall to the catch-all, which has no max_age.
const ADMIN_FORMS: [&str; 4] = [
    "/admin;x/users",
    "/Admin/users",
    "/admin.json",
    "/admin./users",
];

/// INTERFACE.md section 3: a path that a rule matches only when read leniently
/// (case, `;`-parameters, trailing dots, `.ext`) gets `2fa` with the smallest
/// `max_age` of any rule, whatever weaker rule matches it as written; so does
/// a path that cannot be normalized.
pub async fn ambiguous_paths_get_the_strictest_requirement(proxy: Proxy) {
    let stack = Stack::start_with(Some(proxy), |config| {
        config.set("policy", "rules", AMBIGUOUS_RULES);
    })
    .await;
    let kc = &stack.keycloak;

    // Unverified: the rule as written is token-only for /api, 2fa for
    // /api/admin; every form of /api/admin is 2fa.
    let unverified = kc.token().build();
    let response = stack.get("/api/x").bearer(&unverified.jwt).send().await;
    assert_reached_upstream(&stack, "control: /api/x, token", &response);
    for target in ["/api/admin/x"]
        .iter()
        .chain(&API_ADMIN_FORMS)
        .chain(&ADMIN_FORMS)
    {
        let response = stack.get(target).bearer(&unverified.jwt).send().await;
        let what = format!("GET {target}, session not verified");
        assert_problem(&stack, &what, &response, 403, "second_factor_required");
    }

    // Verified 20 minutes ago: /api/admin as written allows it (30m), its
    // forms and the /admin forms do not (the smallest max_age, 15m).
    let older = kc.token().build();
    stack.mark_verified(&older, "totp", now() - 20 * 60).await;
    let response = stack.get("/api/admin/x").bearer(&older.jwt).send().await;
    assert_reached_upstream(
        &stack,
        "control: /api/admin/x, verified 20 min ago",
        &response,
    );
    for target in API_ADMIN_FORMS.iter().chain(&ADMIN_FORMS) {
        let response = stack.get(target).bearer(&older.jwt).send().await;
        let what = format!("GET {target}, verified 20 min ago (smallest max_age 15m)");
        assert_problem(&stack, &what, &response, 403, "second_factor_required");
    }
    // A path that cannot be normalized also gets the smallest max_age (here
    // also on the /public route, whose per-route `none` does not stand).
    // Envoy resolves `..;` itself (normalize_path): then the upstream gets,
    // and twofa-authz decides, the resolved path, never the form as sent.
    for target in [
        "/public/..;/admin/users",
        "/api/admin/..;/x",
        "/public/.../admin",
    ] {
        let response = stack.get(target).bearer(&older.jwt).send().await;
        let what = format!("GET {target}, verified 20 min ago");
        if let Some(echoed) = Echoed::from_response(&response) {
            assert!(
                proxy == Proxy::Envoy && echoed.path() != target && !echoed.path().contains(".."),
                "{}",
                stack.explain(&what, &response)
            );
            continue;
        }
        if response.status != 400 {
            assert_problem(&stack, &what, &response, 403, "second_factor_required");
        }
    }

    // Verified a minute ago: the forms are allowed, not blanket-refused.
    let fresh = kc.token().build();
    stack.mark_verified(&fresh, "totp", now() - 60).await;
    for target in API_ADMIN_FORMS.iter().chain(&ADMIN_FORMS) {
        let response = stack.get(target).bearer(&fresh.jwt).send().await;
        let echoed = assert_reached_upstream(&stack, &format!("GET {target}, fresh"), &response);
        assert_eq!(
            echoed.header("x-auth-request-second-factor").as_deref(),
            Some("totp")
        );
    }
}

/// INTERFACE.md section 3: more than one credential is 401 `invalid_token`,
/// whichever way the proxy hands the duplicate on (Envoy joins the headers
/// with `,`; Caddy passes both; nginx refuses two Authorization headers with
/// its own 400 before asking anyone).
pub async fn more_than_one_credential_is_401(proxy: Proxy) {
    let stack = Stack::start(Some(proxy)).await;
    let token = stack.keycloak.token().build();
    let other = stack.keycloak.token().user("bob").build();
    let response = stack.get("/api/x").bearer(&token.jwt).send().await;
    assert_reached_upstream(&stack, "control: one token", &response);
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "two Authorization headers",
            vec![
                format!("Bearer {}", token.jwt),
                format!("Bearer {}", other.jwt),
            ],
        ),
        (
            "Bearer a, Bearer b",
            vec![format!("Bearer {}, Bearer {}", token.jwt, other.jwt)],
        ),
        (
            "Basic x, Bearer y",
            vec![format!("Basic YWxpY2U6cHc=, Bearer {}", token.jwt)],
        ),
    ];
    for (case, values) in cases {
        for target in ["/api/x", "/secure"] {
            let mut request = stack.get(target);
            for v in &values {
                request = request.header("Authorization", v);
            }
            let response = request.send().await;
            let what = format!("GET {target}, {case}");
            if proxy == Proxy::Nginx && values.len() > 1 {
                assert_eq!(response.status, 400, "{}", stack.explain(&what, &response));
                assert!(Echoed::from_response(&response).is_none());
                continue;
            }
            assert_problem(&stack, &what, &response, 401, "invalid_token");
            assert_www_authenticate(&stack, &what, &response, true);
        }
    }
}

/// The headers by which other proxies name the original request, sent by the
/// client: none of them chooses what is checked.
pub async fn spoofed_original_request_headers_are_ignored(proxy: Proxy) {
    let stack = Stack::start(Some(proxy)).await;
    let unverified = stack.keycloak.token().build();
    let spoofed = |target: &str| {
        stack
            .get(target)
            .header("X-Original-URI", "/public")
            .header("X-Original-Method", "GET")
            .header("X-Forwarded-Uri", "/public")
            .header("X-Forwarded-Method", "GET")
            .header("X-Forwarded-Host", "public.example.com")
            .header("X-Forwarded-Prefix", "/public")
            .header("X-Envoy-Original-Path", "/public")
            .header("X-Original-URL", "/public")
    };
    for target in ["/admin/users", "/secure", "/api/x"] {
        let response = spoofed(target).send().await;
        let what = format!("GET {target}, spoofed, no token");
        assert_problem(&stack, &what, &response, 401, "missing_token");
    }
    for target in ["/admin/users", "/secure"] {
        let response = spoofed(target).bearer(&unverified.jwt).send().await;
        let what = format!("GET {target}, spoofed, unverified token");
        assert_problem(&stack, &what, &response, 403, "second_factor_required");
    }
}
