//! Bounded password hashing (issue 8, "any signed-in user can exhaust
//! memory"): a burst of recovery-code regenerations and wrong recovery codes
//! from one account keeps the real process within its 128 MiB container
//! limit, every answer is one the contract allows (or the documented 503
//! `busy`), and another user's Check keeps answering within a second.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use twofa_authz::grpc::pb::envoy::service::auth::v3::attribute_context::{
    HeaderEntry, HttpRequest, Request as AttrRequest,
};
use twofa_authz::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use twofa_authz::grpc::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

use crate::support::burst;
use crate::support::http;
use crate::support::keycloak::{now, Token};
use crate::support::Stack;

/// The container limit of the shipped manifests.
const LIMIT_BYTES: u64 = 128 * 1024 * 1024;
/// How fast a Check must answer while the burst runs.
const CHECK_DEADLINE: Duration = Duration::from_secs(1);

/// `VmHWM` (peak resident set) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status:\n{status}"));
    kib * 1024
}

fn user_request(
    stack: &Stack,
    path: &str,
    token: &Token,
    body: Option<serde_json::Value>,
) -> http::Request {
    let mut r = http::request("POST", stack.app.http_addr(), path).bearer(&token.jwt);
    if let Some(b) = body {
        r = r
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    r
}

/// A Check as Envoy sends it, for a 2fa route.
fn check_request(token: &Token) -> CheckRequest {
    let headers = vec![
        HeaderEntry::new("authorization", &format!("Bearer {}", token.jwt)),
        HeaderEntry::new(":authority", "app.example.com"),
    ];
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_code_burst_stays_within_128_mib_and_checks_keep_answering() {
    let stack = Stack::start_with(None, |c| {
        // Every wrong code gets compared against every stored code: the
        // worst case for hashing, whatever the attempt budget would allow.
        c.set("security", "max_attempts", "100")
            .set("security", "max_consecutive_failures", "100000")
            .set("security", "recovery_code_count", "10");
    })
    .await;
    let pid = stack.app.pid();

    // The account under attack: a Keycloak-verified email (a factor), a
    // session that passed it just now, and a set of recovery codes.
    let mallory = stack.keycloak.token().user("mallory").build();
    let r = user_request(&stack, "/user", &mallory, None).send().await;
    assert_eq!(r.status, 201, "{}", stack.explain("POST /user", &r));
    stack.mark_verified(&mallory, "email", now()).await;
    let r = user_request(&stack, "/user/recovery-codes", &mallory, None)
        .send()
        .await;
    assert_eq!(
        r.status,
        201,
        "{}",
        stack.explain("first recovery codes", &r)
    );

    // Another user, whose Checks must not suffer.
    let bob = stack.keycloak.token().user("bob").build();
    stack.mark_verified(&bob, "totp", now()).await;
    let mut grpc = AuthorizationClient::connect(format!("http://{}", stack.app.grpc_addr()))
        .await
        .expect("connect to the gRPC listener");
    let warm = grpc.check(check_request(&bob)).await.expect("Check");
    assert_eq!(
        warm.get_ref().status.as_ref().map(|s| s.code),
        Some(0),
        "bob's Check before the burst: {:?}",
        warm.get_ref()
    );
    let before = peak_rss(pid);

    let mut requests = Vec::new();
    for _ in 0..40 {
        requests.push(user_request(&stack, "/user/recovery-codes", &mallory, None));
        // Well-formed codes that match nothing: each is tried against
        // every stored hash.
        let wrong = twofa_authz::factor::recovery::generate();
        requests.push(user_request(
            &stack,
            "/user/verify-recovery-code",
            &mallory,
            Some(json!({ "code": wrong })),
        ));
    }
    let burst = burst::release(requests, Duration::from_secs(60)).await;

    // Bob's Checks, one after another, for as long as the burst runs.
    let mut during = 0;
    let mut slowest = Duration::ZERO;
    while !burst.is_done() {
        let started = Instant::now();
        let answer = tokio::time::timeout(CHECK_DEADLINE, grpc.check(check_request(&bob)))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "a Check took longer than {CHECK_DEADLINE:?} during the burst (peak RSS so far {} MiB)",
                    peak_rss(pid) >> 20
                )
            })
            .expect("Check during the burst");
        let code = answer.get_ref().status.as_ref().map(|s| s.code);
        assert_eq!(
            code,
            Some(0),
            "bob's Check during the burst: {:?}",
            answer.get_ref()
        );
        slowest = slowest.max(started.elapsed());
        if !burst.is_done() {
            during += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let released = burst.released_at();
    let answers = burst.answers().await;
    let took = released.elapsed();
    let peak = peak_rss(pid);

    let mut by_status: HashMap<(u16, String), usize> = HashMap::new();
    for a in &answers {
        let r = &a.response;
        let code = if r.body.is_empty() {
            String::new()
        } else {
            r.json()["code"].as_str().unwrap_or_default().to_owned()
        };
        assert!(
            matches!(r.status, 201 | 400 | 429) || (r.status == 503 && code == "busy"),
            "an answer outside 201/400/429/503 busy: {}",
            stack.explain("burst request", r)
        );
        if r.status == 503 {
            let retry: u64 = r
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("503 busy without Retry-After: {:?}", r.headers));
            assert!(retry >= 1, "{:?}", r.headers);
        }
        *by_status.entry((r.status, code)).or_default() += 1;
    }
    let summary = format!(
        "answers {by_status:?}; peak RSS {} MiB before the burst, {} MiB after; burst took {took:?}; \
         {during} Checks during it, slowest {slowest:?}",
        before >> 20,
        peak >> 20
    );
    eprintln!("{summary}");
    assert!(
        peak < LIMIT_BYTES,
        "the process reached {} MiB (limit 128 MiB): {summary}",
        peak >> 20
    );
    // The burst did real hashing work (it is not all refused). Which kind
    // wins the few queue places is up to the scheduler: both go through the
    // same pool and the same per-worker memory, and each kind is exercised
    // again on its own below.
    let hashed = by_status.get(&(201, "".into())).copied().unwrap_or(0)
        + by_status
            .get(&(400, "invalid_code".into()))
            .copied()
            .unwrap_or(0);
    assert!(hashed >= 1, "no request did any hashing: {summary}");
    // ...and Bob was checked while it ran.
    assert!(during >= 1, "no Check ran during the burst: {summary}");

    // Afterwards the pool takes work again.
    let r = user_request(&stack, "/user/recovery-codes", &mallory, None)
        .send()
        .await;
    assert_eq!(
        r.status,
        201,
        "{}",
        stack.explain("regenerate after the burst", &r)
    );
    let codes: Vec<String> = r.json()["recovery_codes"]
        .as_array()
        .expect("recovery_codes")
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let r = user_request(
        &stack,
        "/user/verify-recovery-code",
        &mallory,
        Some(json!({ "code": codes[3] })),
    )
    .send()
    .await;
    assert_eq!(
        r.status,
        200,
        "{}",
        stack.explain("right code after the burst", &r)
    );
    assert_eq!(r.json()["recovery_codes_remaining"], 9);
}
