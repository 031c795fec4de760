//! Spans over OTLP (docs/tracing.md): the real binary exports to a collector
//! stand-in that speaks OTLP/gRPC and decodes the real protobuf. A Check's
//! span is a child of the caller's `traceparent` and carries the request id,
//! route, decision and reason, and a hashed subject; nothing secret crosses
//! the wire. Without an endpoint nothing is exported at all.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use twofa_authz::grpc::pb::envoy::service::auth::v3::attribute_context::{
    HeaderEntry, HttpRequest, Request as AttrRequest,
};
use twofa_authz::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use twofa_authz::grpc::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

use crate::support::http;
use crate::support::keycloak::Token;
use crate::support::otlp::{Collector, Exported};
use crate::support::Stack;
use crate::user_totp;

/// The W3C trace context example's ids.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
/// A second caller, whose context comes in the gRPC call's metadata (as
/// Envoy sends its own ext_authz span's) rather than in the checked request.
const TRACE_ID_2: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID_2: &str = "b7ad6b7169203331";
/// A third, for forward auth.
const TRACE_ID_3: &str = "5b8efff798038103d269b633813fc60c";
const PARENT_ID_3: &str = "eee19b7ec3c1b174";

fn traceparent(trace: &str, parent: &str) -> String {
    format!("00-{trace}-{parent}-01")
}

/// A Check as Envoy sends it, for a `2fa` route, with `extra` headers.
fn check_request(token: &Token, extra: &[(&str, &str)]) -> CheckRequest {
    let mut headers = vec![
        HeaderEntry::new("authorization", &format!("Bearer {}", token.jwt)),
        HeaderEntry::new(":authority", "app.example.com"),
    ];
    headers.extend(extra.iter().map(|(k, v)| HeaderEntry::new(k, v)));
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/admin/reports".into(),
                    host: "app.example.com".into(),
                    scheme: "http".into(),
                    headers,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

fn with_request_id<'a>(spans: &'a [Exported], id: &str) -> Option<&'a Exported> {
    spans
        .iter()
        .find(|s| s.attr("request_id").as_deref() == Some(id))
}

fn describe(spans: &[Exported]) -> String {
    spans
        .iter()
        .map(|s| format!("{} {:?}", s.span.name, s.span.attributes))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_and_user_requests_are_spans_in_the_callers_trace_without_secrets() {
    let collector = Collector::start().await;
    let endpoint = collector.endpoint();
    let stack = Stack::start_with(None, |c| {
        c.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .set_env("OTEL_SERVICE_NAME", "twofa-test")
            .set_env("OTEL_BSP_SCHEDULE_DELAY", "100");
    })
    .await;
    let app = &stack.app;

    // A user who enrolls TOTP: `/user` requests, one of them verify-totp
    // with a real code; then a wrong code, refused.
    let enrolled = user_totp::enroll(&stack, app, "tracy").await;
    let token = &enrolled.token;
    let code = user_totp::oathtool(&enrolled.params, enrolled.at);
    let wrong = format!(
        "{:06}",
        (code.parse::<u32>().unwrap() + 500_000) % 1_000_000
    );
    let r = user_totp::verify_totp(app, token, &wrong, false).await;
    assert_eq!(r.status, 400, "a wrong code: {}", r.text());

    // Two Checks: the enrolled session (allowed) with the caller's context
    // in the checked request, and another session of the same user (refused)
    // with it in the call's metadata.
    let mut grpc = AuthorizationClient::connect(format!("http://{}", app.grpc_addr()))
        .await
        .expect("connect to the gRPC listener");
    let tp = traceparent(TRACE_ID, PARENT_ID);
    let allowed = grpc
        .check(check_request(
            token,
            &[("x-request-id", "req-allow-1"), ("traceparent", &tp)],
        ))
        .await
        .expect("Check")
        .into_inner();
    assert_eq!(allowed.status.map(|s| s.code), Some(0), "allowed");
    let unverified = stack.keycloak.token().user("tracy").build();
    let mut call = tonic::Request::new(check_request(
        &unverified,
        &[("x-request-id", "req-deny-2")],
    ));
    call.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(traceparent(TRACE_ID_2, PARENT_ID_2)).unwrap(),
    );
    let refused = grpc.check(call).await.expect("Check").into_inner();
    assert_eq!(refused.status.map(|s| s.code), Some(7), "refused");

    // Forward auth (Traefik/Caddy style), the context in the request's
    // headers as the proxy passes them on.
    let r = http::request("GET", app.http_addr(), "/authz/forward-auth")
        .bearer(&token.jwt)
        .header("X-Forwarded-Method", "GET")
        .header("X-Forwarded-Uri", "/admin/reports")
        .header("X-Forwarded-Host", "app.example.com")
        .header("x-request-id", "req-fwd-3")
        .header("traceparent", &traceparent(TRACE_ID_3, PARENT_ID_3))
        .send()
        .await;
    assert_eq!(r.status, 200, "forward auth: {}", r.text());

    let got = collector
        .wait_for(Duration::from_secs(10), |spans| {
            with_request_id(spans, "req-allow-1").is_some()
                && with_request_id(spans, "req-deny-2").is_some()
                && with_request_id(spans, "req-fwd-3").is_some()
                && spans.iter().any(|s| {
                    s.attr("route").as_deref() == Some("/user/verify-totp")
                        && s.attr("decision").as_deref() == Some("refused")
                })
        })
        .await;
    let spans = collector.spans();
    assert!(
        got,
        "spans did not arrive within 10 s; bad requests: {:?}; got:\n{}\n--- log ---\n{}",
        collector.bad_requests(),
        describe(&spans),
        app.log()
    );
    assert!(
        collector.bad_requests().is_empty(),
        "{:?}",
        collector.bad_requests()
    );
    let subject = &twofa_authz::token::subject_hash(token.iss(), token.sub())[..16];

    let allow = with_request_id(&spans, "req-allow-1").unwrap();
    assert_eq!(allow.span.name, "authz.check");
    assert_eq!(hex::encode(&allow.span.trace_id), TRACE_ID, "trace id");
    assert_eq!(
        hex::encode(&allow.span.parent_span_id),
        PARENT_ID,
        "remote parent"
    );
    assert_eq!(allow.span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(
        allow.attr("route").as_deref(),
        Some("envoy.service.auth.v3.Authorization/Check")
    );
    assert_eq!(allow.attr("decision").as_deref(), Some("allow"));
    assert_eq!(allow.attr("reason").as_deref(), Some("none"));
    assert_eq!(allow.attr("subject").as_deref(), Some(subject));
    assert_eq!(
        allow.resource_attr("service.name").as_deref(),
        Some("twofa-test")
    );

    let deny = with_request_id(&spans, "req-deny-2").unwrap();
    assert_eq!(hex::encode(&deny.span.trace_id), TRACE_ID_2);
    assert_eq!(hex::encode(&deny.span.parent_span_id), PARENT_ID_2);
    assert_eq!(
        deny.attr("decision").as_deref(),
        Some("second_factor_required")
    );
    assert_eq!(deny.attr("reason").as_deref(), Some("not_verified"));
    assert_eq!(deny.attr("subject").as_deref(), Some(subject));

    let fwd: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.attr("request_id").as_deref() == Some("req-fwd-3"))
        .collect();
    assert_eq!(
        fwd.len(),
        1,
        "one span per forward-auth Check:\n{}",
        describe(&spans)
    );
    assert_eq!(fwd[0].span.name, "authz.check");
    assert_eq!(fwd[0].attr("route").as_deref(), Some("/authz/forward-auth"));
    assert_eq!(hex::encode(&fwd[0].span.trace_id), TRACE_ID_3);
    assert_eq!(hex::encode(&fwd[0].span.parent_span_id), PARENT_ID_3);
    assert_eq!(fwd[0].attr("decision").as_deref(), Some("allow"));
    assert_eq!(fwd[0].attr("subject").as_deref(), Some(subject));

    let verifies: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.attr("route").as_deref() == Some("/user/verify-totp"))
        .collect();
    let ok = verifies
        .iter()
        .find(|s| s.attr("decision").as_deref() == Some("ok"))
        .unwrap_or_else(|| panic!("no verify-totp span that passed:\n{}", describe(&spans)));
    assert_eq!(ok.span.name, "POST /user/verify-totp");
    assert_eq!(ok.attr("http.request.method").as_deref(), Some("POST"));
    assert_eq!(ok.attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(ok.attr("subject").as_deref(), Some(subject));
    let bad = verifies
        .iter()
        .find(|s| s.attr("decision").as_deref() == Some("refused"))
        .unwrap();
    assert_eq!(bad.attr("reason").as_deref(), Some("invalid_code"));
    assert_eq!(bad.attr("subject").as_deref(), Some(subject));
    assert!(
        spans.iter().all(
            |s| !s.attr("route").unwrap_or_default().starts_with("/healthz")
                && !s.attr("route").unwrap_or_default().starts_with("/readyz")
        ),
        "only Checks and /user requests are spans:\n{}",
        describe(&spans)
    );

    // No secret in any byte that was sent.
    let raw = collector.raw();
    let email = token.claims["email"].as_str().unwrap();
    let mut secrets = vec![
        ("the bearer token", token.jwt.as_str()),
        ("the other session's token", unverified.jwt.as_str()),
        ("sub", token.sub()),
        ("the email address", email),
        ("the user name", "tracy"),
        ("the TOTP code", code.as_str()),
        ("the wrong code", wrong.as_str()),
        ("the TOTP secret", enrolled.generated.secret.as_str()),
    ];
    for c in &enrolled.recovery_codes {
        secrets.push(("a recovery code", c.as_str()));
    }
    for (what, secret) in secrets {
        assert!(
            !contains(&raw, secret.as_bytes()),
            "{what} ({secret}) was exported"
        );
    }
    // And the JWT's parts on their own (a signature alone is no less a leak).
    for part in token.jwt.split('.') {
        assert!(
            !contains(&raw, part.as_bytes()),
            "a part of the token was exported"
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported() {
    // Where the SDK sends when no endpoint is configured, so that export
    // turned on by mistake would be seen (the port may be taken: then the
    // log line below still tells).
    let collector = match Collector::start_on_default_port().await {
        Some(c) => c,
        None => Collector::start().await,
    };
    let stack = Stack::start_with(None, |c| {
        c.set_env("OTEL_SERVICE_NAME", "twofa-test")
            .set_env("OTEL_BSP_SCHEDULE_DELAY", "100");
    })
    .await;
    let token = stack.keycloak.token().user("quiet").build();
    let mut grpc = AuthorizationClient::connect(format!("http://{}", stack.app.grpc_addr()))
        .await
        .expect("connect to the gRPC listener");
    let tp = traceparent(TRACE_ID, PARENT_ID);
    let r = grpc
        .check(check_request(
            &token,
            &[("x-request-id", "req-quiet"), ("traceparent", &tp)],
        ))
        .await
        .expect("Check")
        .into_inner();
    assert_eq!(r.status.map(|s| s.code), Some(7));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(collector.request_count(), 0);
    assert!(collector.raw().is_empty());
    assert!(
        !stack.app.log().contains("OTLP"),
        "export was not configured: {}",
        stack.app.log()
    );
    assert!(collector.bad_requests().is_empty());
}

/// The spans still queued when SIGTERM comes are exported before the process
/// exits: with a batch delay of a minute, only the shutdown can send them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_spans_are_exported_on_sigterm() {
    let collector = Collector::start().await;
    let endpoint = collector.endpoint();
    let mut stack = Stack::start_with(None, |c| {
        c.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .set_env("OTEL_BSP_SCHEDULE_DELAY", "60000");
    })
    .await;
    let token = stack.keycloak.token().user("last").build();
    let mut grpc = AuthorizationClient::connect(format!("http://{}", stack.app.grpc_addr()))
        .await
        .expect("connect to the gRPC listener");
    grpc.check(check_request(&token, &[("x-request-id", "req-last")]))
        .await
        .expect("Check");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        with_request_id(&collector.spans(), "req-last").is_none(),
        "exported before the batch delay: the test proves nothing"
    );
    let status = stack
        .app
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(15))
        .await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit after SIGTERM; log:\n{}",
        stack.app.log()
    );
    let spans = collector.spans();
    let last = with_request_id(&spans, "req-last")
        .unwrap_or_else(|| panic!("the queued span was lost:\n{}", describe(&spans)));
    assert_eq!(
        last.resource_attr("service.name").as_deref(),
        Some("twofa-authz"),
        "the default service name"
    );
}
