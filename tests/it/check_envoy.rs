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
        stack.explain("/authz/auth-request /admin", &response)
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

mod grpc_direct {
    //! Check requests built by hand, in both header forms Envoy uses: the
    //! `headers` map (repeated headers joined with `,`) and, with
    //! `encode_raw_headers`, the `header_map` list (each header on its own).

    use std::collections::HashMap;
    use std::time::Duration;

    use twofa_authz::grpc::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    use twofa_authz::grpc::pb::envoy::service::auth::v3::attribute_context::{
        HeaderEntry, HttpRequest, Request,
    };
    use twofa_authz::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use twofa_authz::grpc::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

    use crate::support::keycloak::now;
    use crate::support::Stack;

    const UNAUTHENTICATED: i32 = 16;
    const PERMISSION_DENIED: i32 = 7;

    fn check(path: &str, headers: &[(&str, &str)], raw: bool) -> CheckRequest {
        let mut http = HttpRequest {
            method: "GET".into(),
            path: path.into(),
            host: "app.example.com".into(),
            ..Default::default()
        };
        if raw {
            http.header_map = Some(HeaderMap {
                headers: headers
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: k.to_string(),
                        value: String::new(),
                        raw_value: bytes::Bytes::copy_from_slice(v.as_bytes()),
                    })
                    .collect(),
            });
        } else {
            // As Envoy builds it: lower-case names, repeats joined with `,`.
            let mut map: Vec<(String, String)> = Vec::new();
            for (k, v) in headers {
                let k = k.to_ascii_lowercase();
                match map.iter_mut().find(|(n, _)| *n == k) {
                    Some((_, e)) => {
                        e.push(',');
                        e.push_str(v);
                    }
                    None => map.push((k, v.to_string())),
                }
            }
            http.headers = map.iter().map(|(k, v)| HeaderEntry::new(k, v)).collect();
        }
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request { http: Some(http) }),
                context_extensions: HashMap::new(),
            }),
        }
    }

    async fn client(stack: &Stack) -> AuthorizationClient<tonic::transport::Channel> {
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{}", stack.app.grpc_addr()))
                .unwrap()
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .expect("connect to the gRPC listener");
        AuthorizationClient::new(channel)
    }

    async fn status(
        client: &mut AuthorizationClient<tonic::transport::Channel>,
        request: CheckRequest,
    ) -> (i32, String) {
        let response = client.check(request).await.expect("Check").into_inner();
        let status = response.status.expect("a status");
        (status.code, status.message)
    }

    /// INTERFACE.md section 3: more than one credential is 401 invalid_token,
    /// in the joined `headers` form and in the `header_map` form alike.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_than_one_credential_is_unauthenticated() {
        let stack = Stack::start(None).await;
        let mut client = client(&stack).await;
        let token = stack.keycloak.token().build();
        let bearer = format!("Bearer {}", token.jwt);
        for raw in [false, true] {
            let one = check("/api/x", &[("authorization", &bearer)], raw);
            assert_eq!(status(&mut client, one).await.0, 0, "control, raw={raw}");
            let cases: [Vec<(&str, String)>; 4] = [
                vec![
                    ("authorization", bearer.clone()),
                    ("authorization", bearer.clone()),
                ],
                vec![("authorization", format!("{bearer}, {bearer}"))],
                vec![("authorization", format!("Basic YWxpY2U6cHc=, {bearer}"))],
                vec![
                    ("authorization", "Basic YWxpY2U6cHc=".into()),
                    ("Authorization", bearer.clone()),
                ],
            ];
            for case in cases {
                let headers: Vec<(&str, &str)> =
                    case.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let (code, message) = status(&mut client, check("/api/x", &headers, raw)).await;
                assert_eq!(
                    (code, message.as_str()),
                    (UNAUTHENTICATED, "invalid_token"),
                    "raw={raw}, {case:?}"
                );
            }
        }
    }

    /// A caller other than Envoy can put the same name twice in the
    /// `headers` entries (Envoy joins repeats into one). Proto3 map semantics
    /// would keep the last one; the gate sees both and refuses them as two
    /// credentials. A value that is not text is no credential, and a header
    /// name that cuts a multi-byte character where the identity prefix ends
    /// is answered, not a panic.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repeated_and_binary_header_entries_from_a_forged_caller() {
        let stack = Stack::start(None).await;
        let mut client = client(&stack).await;
        let token = stack.keycloak.token().build();
        let bearer = format!("Bearer {}", token.jwt);
        let with = |entries: Vec<HeaderEntry>| {
            let mut req = check("/api/x", &[], false);
            if let Some(http) = req
                .attributes
                .as_mut()
                .and_then(|a| a.request.as_mut())
                .and_then(|r| r.http.as_mut())
            {
                http.headers = entries;
            }
            req
        };
        let control = with(vec![HeaderEntry::new("authorization", &bearer)]);
        assert_eq!(status(&mut client, control).await.0, 0, "control");
        let twice = with(vec![
            HeaderEntry::new("authorization", "Bearer forged.by.client"),
            HeaderEntry::new("authorization", &bearer),
        ]);
        assert_eq!(
            status(&mut client, twice).await,
            (UNAUTHENTICATED, "invalid_token".to_string()),
            "a second entry must not win"
        );
        let mut binary = HeaderEntry::new("authorization", &bearer);
        binary.value =
            bytes::Bytes::from([b"Bearer \xff".as_slice(), token.jwt.as_bytes()].concat());
        assert_eq!(
            status(&mut client, with(vec![binary])).await,
            (UNAUTHENTICATED, "invalid_token".to_string())
        );
        // The prefix "x-auth-request-" is 15 bytes; a two-byte character at
        // bytes 14..16 straddles its end.
        let cut = HeaderEntry::new("x-auth-request\u{e9}-user", "admin");
        let response = client
            .check(with(vec![HeaderEntry::new("authorization", &bearer), cut]))
            .await
            .expect("answered")
            .into_inner();
        assert_eq!(response.status.map(|s| s.code), Some(0));
    }

    /// The gRPC form of the path finding: `/admin;x/users` misses the
    /// step-up rule as written and would fall to a rule without max_age.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ambiguous_paths_get_the_smallest_max_age() {
        let stack = Stack::start(None).await;
        let mut client = client(&stack).await;
        let token = stack.keycloak.token().build();
        stack.mark_verified(&token, "totp", now() - 20 * 60).await;
        let bearer = format!("Bearer {}", token.jwt);
        let auth = [("authorization", bearer.as_str())];
        // The control: no max_age on /secure (default 2fa), so 20 minutes do.
        assert_eq!(
            status(&mut client, check("/secure", &auth, false)).await.0,
            0
        );
        for path in [
            "/admin;x/users",
            "/Admin/users",
            "/admin.json",
            "/admin./users",
            "/ADMIN",
        ] {
            let (code, message) = status(&mut client, check(path, &auth, false)).await;
            assert_eq!(
                (code, message.as_str()),
                (PERMISSION_DENIED, "second_factor_required"),
                "{path}"
            );
        }
    }
}
