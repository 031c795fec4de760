//! Audit events (docs/audit.md) on the real binary: each flow writes its events
//! once, with the schema's fields and hashes only, both to the log (target
//! `audit`) and to a webhook; a dead webhook slows no request, and what its
//! queue cannot take is counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::logout::{logout_for, post_logout};
use crate::support::http::{self, Response};
use crate::support::keycloak::{now, Token};
use crate::support::standin::Server;
use crate::support::Stack;
use crate::user_common::{UserStack, ALICE_MOBILE, RESEND_INTERVAL};
use crate::user_totp::{oathtool, parse_uri};

// --- the webhook receiver --------------------------------------------------------

#[derive(Default)]
struct Received {
    /// How long each answer takes.
    delay: Duration,
    bodies: Mutex<Vec<String>>,
    /// Requests that were not a JSON POST as docs/audit.md promises.
    violations: Mutex<Vec<String>>,
}

struct Sink {
    state: Arc<Received>,
    server: Server,
    /// How many bodies earlier steps have taken.
    seen: Mutex<usize>,
}

impl Sink {
    async fn start() -> Sink {
        Sink::start_slow(Duration::ZERO).await
    }

    async fn start_slow(delay: Duration) -> Sink {
        let state = Arc::new(Received {
            delay,
            ..Received::default()
        });
        let app = Router::new()
            .route("/audit", post(receive))
            .with_state(state.clone());
        Sink {
            state,
            server: Server::start(app).await,
            seen: Mutex::new(0),
        }
    }

    fn url(&self) -> String {
        format!("{}/audit", self.server.base_url())
    }

    fn all(&self) -> Vec<String> {
        self.state.bodies.lock().clone()
    }

    /// The events received since the last call: waits for `n`, then a moment
    /// for any extra one (a flow must write each event once).
    async fn next(&self, n: usize, what: &str) -> Vec<Value> {
        let start = *self.seen.lock();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.state.bodies.lock().len() < start + n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let bodies = self.all();
        let new: Vec<Value> = bodies[start..]
            .iter()
            .map(|b| serde_json::from_str(b).expect("an audit body is JSON"))
            .collect();
        *self.seen.lock() = bodies.len();
        assert_eq!(new.len(), n, "{what}: events {new:#?}");
        new
    }
}

async fn receive(State(s): State<Arc<Received>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if ct != "application/json" {
        s.violations.lock().push(format!("content-type {ct:?}"));
    }
    tokio::time::sleep(s.delay).await;
    s.bodies
        .lock()
        .push(String::from_utf8_lossy(&body).into_owned());
    StatusCode::NO_CONTENT
}

// --- expectations ------------------------------------------------------------------

fn hex_sha256(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn subject_hash(t: &Token) -> String {
    hex_sha256(&format!("{}\n{}", t.iss(), t.sub()))
}

fn sid_hash(t: &Token) -> String {
    hex_sha256(&format!("sid\n{}\n{}", t.iss(), t.sid()))
}

const FIELDS: [&str; 8] = [
    "time",
    "event",
    "outcome",
    "subject_hash",
    "sid_hash",
    "client_ip",
    "user_agent",
    "request_id",
];
const USER_AGENT: &str = "audit-test/1.0 (\"quoted\")";

/// The events of one step, in any order: (name, outcome, extra fields).
#[track_caller]
fn expect_events(got: &[Value], want: &[(&str, &str, Value)], token: &Token, rid: &str) {
    let mut names: Vec<&str> = got.iter().map(|e| e["event"].as_str().unwrap()).collect();
    let mut wanted: Vec<&str> = want.iter().map(|(n, _, _)| *n).collect();
    names.sort_unstable();
    wanted.sort_unstable();
    assert_eq!(names, wanted, "{got:#?}");
    for (name, outcome, extra) in want {
        let e = got.iter().find(|e| e["event"] == *name).unwrap();
        for f in FIELDS {
            assert!(e.get(f).is_some(), "{name} has no `{f}`: {e}");
        }
        assert_eq!(e["outcome"], *outcome, "{e}");
        let time = e["time"].as_str().unwrap();
        assert!(
            time.len() == 20 && time.ends_with('Z') && &time[10..11] == "T",
            "RFC 3339 time: {e}"
        );
        assert_eq!(e["subject_hash"], subject_hash(token), "{e}");
        assert_eq!(e["sid_hash"], sid_hash(token), "{e}");
        if rid.is_empty() {
            // The request did not come with metadata: the peer.
            assert_eq!(e["client_ip"], "127.0.0.1", "{e}");
        } else {
            assert_eq!(
                e["client_ip"], "203.0.113.9",
                "first X-Forwarded-For hop: {e}"
            );
            assert_eq!(e["user_agent"], USER_AGENT, "{e}");
            assert_eq!(e["request_id"], rid, "{e}");
        }
        if let Value::Object(m) = extra {
            for (k, v) in m {
                assert_eq!(&e[k], v, "{name}.{k}: {e}");
            }
        }
    }
}

/// A `/user` request as a proxy forwards it: X-Forwarded-For (client first),
/// User-Agent, X-Request-Id.
async fn call(
    u: &UserStack,
    method: &str,
    path: &str,
    t: &Token,
    body: Value,
    rid: &str,
) -> Response {
    let mut r = u
        .req(method, path, t)
        .header("X-Forwarded-For", "203.0.113.9, 10.1.2.3")
        .header("User-Agent", USER_AGENT)
        .header("X-Request-Id", rid);
    if !body.is_null() {
        r = r.body(body.to_string());
    }
    r.send().await
}

/// The `audit` lines of a JSON-format log: each record's message.
fn logged_events(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["target"] == "audit")
        .map(|r| {
            assert_eq!(r["level"], "INFO", "{r}");
            r["fields"]["message"]
                .as_str()
                .expect("the message is the event")
                .to_owned()
        })
        .collect()
}

// --- the flows ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flow_writes_its_event_once_to_the_log_and_the_webhook() {
    let sink = Sink::start().await;
    let url = sink.url();
    let u = UserStack::start(|c| {
        c.set_str("audit", "webhook_url", &url)
            .set_str("log", "format", "json")
            .set("security", "max_attempts", "2")
            .set_str("security", "lockout", "1s")
            .set("security", "max_consecutive_failures", "3");
    })
    .await;
    let mut secrets: Vec<String> = Vec::new();

    // profile_created
    let a1 = u.alice();
    secrets.extend([a1.jwt.clone(), a1.sub().to_owned(), a1.sid().to_owned()]);
    let r = call(&u, "POST", "/user", &a1, Value::Null, "rid-profile").await;
    u.expect(&r, 201, "POST /user");
    let e = sink.next(1, "profile").await;
    expect_events(
        &e,
        &[("profile_created", "success", json!({}))],
        &a1,
        "rid-profile",
    );

    // factor_passed (email), without request metadata: the peer's address.
    let r = u.send_otp(&a1, "email").await;
    u.expect(&r, 202, "send-otp email");
    let code = u.smtp.wait_for("alice@example.com", 1).await.code();
    secrets.push(code.clone());
    let r = u.verify(&a1, "email", &code, Some("login")).await;
    u.expect(&r, 200, "verify-otp login");
    let e = sink.next(1, "email login").await;
    expect_events(
        &e,
        &[("factor_passed", "success", json!({"method": "email"}))],
        &a1,
        "",
    );
    // The next code would be "too soon" (`security.otp_resend_interval`).
    tokio::time::sleep(RESEND_INTERVAL).await;

    // contact_change_requested, contact_change_confirmed
    let new_email = "alice.audit@example.com";
    let r = call(
        &u,
        "PATCH",
        "/user",
        &a1,
        json!({"email": new_email}),
        "rid-patch",
    )
    .await;
    u.expect(&r, 202, "PATCH email");
    let e = sink.next(1, "contact change").await;
    expect_events(
        &e,
        &[(
            "contact_change_requested",
            "success",
            json!({"channel": "email"}),
        )],
        &a1,
        "rid-patch",
    );
    let code = u.smtp.wait_for(new_email, 1).await.code();
    secrets.push(code.clone());
    let body = json!({"otp": code, "otp_type": "email", "purpose": "contact"});
    let r = call(&u, "POST", "/user/verify-otp", &a1, body, "rid-confirm").await;
    u.expect(&r, 200, "verify contact code");
    let e = sink.next(1, "contact confirmed").await;
    expect_events(
        &e,
        &[(
            "contact_change_confirmed",
            "success",
            json!({"channel": "email"}),
        )],
        &a1,
        "rid-confirm",
    );

    // TOTP enrollment: codes generated, the factor passed, TOTP enrolled.
    let r = call(
        &u,
        "POST",
        "/user/generate-totp",
        &a1,
        Value::Null,
        "rid-gen",
    )
    .await;
    u.expect(&r, 201, "generate-totp");
    let g = r.json();
    secrets.push(g["secret"].as_str().unwrap().to_owned());
    let params = parse_uri(g["otpauth_uri"].as_str().unwrap());
    let totp = oathtool(&params, now());
    secrets.push(totp.clone());
    let body = json!({"totp": totp, "is_new_seed": true});
    let r = call(&u, "POST", "/user/verify-totp", &a1, body, "rid-enroll").await;
    u.expect(&r, 200, "verify-totp new seed");
    let codes: Vec<String> = r.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    secrets.extend(codes.iter().cloned());
    let e = sink.next(3, "enrollment").await;
    expect_events(
        &e,
        &[
            (
                "recovery_codes_generated",
                "success",
                json!({"count": codes.len()}),
            ),
            ("factor_passed", "success", json!({"method": "totp"})),
            ("totp_enrolled", "success", json!({})),
        ],
        &a1,
        "rid-enroll",
    );

    // A recovery code in another session: used, and the factor passed.
    let a2 = u.other_session(&a1);
    secrets.push(a2.jwt.clone());
    let body = json!({"code": codes[0]});
    let r = call(
        &u,
        "POST",
        "/user/verify-recovery-code",
        &a2,
        body,
        "rid-rec",
    )
    .await;
    u.expect(&r, 200, "verify-recovery-code");
    let e = sink.next(2, "recovery code").await;
    expect_events(
        &e,
        &[
            (
                "recovery_code_used",
                "success",
                json!({"remaining": codes.len() - 1}),
            ),
            ("factor_passed", "success", json!({"method": "recovery"})),
        ],
        &a2,
        "rid-rec",
    );

    // Regenerated codes, then TOTP removed.
    let r = call(
        &u,
        "POST",
        "/user/recovery-codes",
        &a2,
        Value::Null,
        "rid-regen",
    )
    .await;
    u.expect(&r, 201, "recovery-codes");
    for c in r.json()["recovery_codes"].as_array().unwrap() {
        secrets.push(c.as_str().unwrap().to_owned());
    }
    let e = sink.next(1, "regenerated").await;
    expect_events(
        &e,
        &[(
            "recovery_codes_generated",
            "success",
            json!({"count": codes.len()}),
        )],
        &a2,
        "rid-regen",
    );
    let r = call(&u, "DELETE", "/user/totp", &a2, Value::Null, "rid-del").await;
    u.expect(&r, 204, "DELETE /user/totp");
    let e = sink.next(1, "TOTP removed").await;
    expect_events(
        &e,
        &[("totp_removed", "success", json!({}))],
        &a2,
        "rid-del",
    );

    // factor_passed (sms)
    let a3 = u.other_session(&a1);
    secrets.push(a3.jwt.clone());
    let r = u.send_otp(&a3, "mobile").await;
    u.expect(&r, 202, "send-otp mobile");
    let code = u.sms_to(ALICE_MOBILE, 1).await.code();
    secrets.push(code.clone());
    let body = json!({"otp": code, "otp_type": "mobile", "purpose": "login"});
    let r = call(&u, "POST", "/user/verify-otp", &a3, body, "rid-sms").await;
    u.expect(&r, 200, "verify-otp sms");
    let e = sink.next(1, "sms login").await;
    expect_events(
        &e,
        &[("factor_passed", "success", json!({"method": "sms"}))],
        &a3,
        "rid-sms",
    );

    // Wrong codes: a lockout (the budget of 2 spent), then, after it, the
    // consecutive cap of 3: factor_locked. A wrong code itself is no event.
    let c1 = u.stack.keycloak.token().user("carol").build();
    u.kc_admin
        .add_user(c1.sub(), "carol", "carol@example.com", json!({}));
    secrets.extend([c1.jwt.clone(), c1.sub().to_owned()]);
    let r = call(&u, "POST", "/user", &c1, Value::Null, "rid-carol").await;
    u.expect(&r, 201, "POST /user carol");
    sink.next(1, "carol's profile").await;
    let wrong = json!({"code": "AAAA-BBBB-CCCC-DDDD-EEEE"});
    let r = call(
        &u,
        "POST",
        "/user/verify-recovery-code",
        &c1,
        wrong.clone(),
        "rid-w1",
    )
    .await;
    u.expect(&r, 400, "first wrong code");
    sink.next(0, "a wrong code").await;
    let r = call(
        &u,
        "POST",
        "/user/verify-recovery-code",
        &c1,
        wrong.clone(),
        "rid-w2",
    )
    .await;
    u.expect(&r, 429, "second wrong code");
    let e = sink.next(1, "lockout").await;
    expect_events(
        &e,
        &[(
            "lockout",
            "failure",
            json!({"method": "recovery", "lockout_seconds": 1}),
        )],
        &c1,
        "rid-w2",
    );
    // Refused unchecked (429, no event) until the lockout lapses.
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = call(
            &u,
            "POST",
            "/user/verify-recovery-code",
            &c1,
            wrong.clone(),
            "rid-w3",
        )
        .await;
        if r.status != 429 || Instant::now() > deadline {
            break r;
        }
    };
    u.expect(&r, 423, "third wrong code");
    let e = sink.next(1, "factor locked").await;
    expect_events(
        &e,
        &[("factor_locked", "failure", json!({"method": "recovery"}))],
        &c1,
        "rid-w3",
    );
    let r = call(
        &u,
        "POST",
        "/user/verify-recovery-code",
        &c1,
        wrong,
        "rid-w4",
    )
    .await;
    u.expect(&r, 423, "refused while locked");
    sink.next(0, "a refusal while locked").await;

    // Back-channel logout of Alice's first session.
    let logout = logout_for(u.stack.keycloak.token(), &a1).build();
    secrets.push(logout.jwt.clone());
    let r = post_logout(&u.stack, &format!("logout_token={}", logout.jwt)).await;
    u.expect(&r, 200, "back-channel logout");
    let e = sink.next(1, "logout").await;
    assert_eq!(e[0]["event"], "backchannel_logout", "{e:?}");
    assert_eq!(e[0]["outcome"], "success", "{e:?}");
    assert_eq!(e[0]["subject_hash"], subject_hash(&a1), "{e:?}");
    assert_eq!(e[0]["sid_hash"], sid_hash(&a1), "{e:?}");
    // The same token again is refused: a failure naming no one.
    let r = post_logout(&u.stack, &format!("logout_token={}", logout.jwt)).await;
    u.expect(&r, 400, "replayed logout");
    let e = sink.next(1, "replayed logout").await;
    assert_eq!(e[0]["event"], "backchannel_logout", "{e:?}");
    assert_eq!(e[0]["outcome"], "failure", "{e:?}");
    assert_eq!(e[0]["reason"], "replayed", "{e:?}");
    assert_eq!(e[0]["subject_hash"], Value::Null, "{e:?}");

    // Everything the server posted, it logged, the same line, once.
    let posted = sink.all();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut logged = logged_events(&u.stack.app.log());
    while logged.len() < posted.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        logged = logged_events(&u.stack.app.log());
    }
    assert_eq!(
        logged, posted,
        "the log's audit lines are the webhook's bodies"
    );

    // reset-user: from the command, without request metadata.
    let out = u.reset_user(c1.sub());
    let e = sink.next(1, "reset-user").await;
    let ev = &e[0];
    assert_eq!(ev["event"], "user_reset", "{ev}");
    assert_eq!(ev["outcome"], "success", "{ev}");
    assert_eq!(ev["subject_hash"], subject_hash(&c1), "{ev}");
    for f in ["sid_hash", "client_ip", "user_agent", "request_id"] {
        assert_eq!(ev[f], Value::Null, "{f}: {ev}");
    }
    let from_cli = logged_events(&out);
    assert_eq!(
        from_cli,
        vec![sink.all().last().unwrap().clone()],
        "reset-user logs its event: {out}"
    );

    // Hashes only: no token, sub, sid, contact, code or secret anywhere.
    let contacts = [
        "alice@example.com",
        new_email,
        ALICE_MOBILE,
        "carol@example.com",
    ];
    for body in sink.all() {
        for s in secrets.iter().map(String::as_str).chain(contacts) {
            assert!(!body.contains(s), "{s:?} in clear in {body}");
        }
        let v: Value = serde_json::from_str(&body).unwrap();
        let Value::Object(m) = v else {
            panic!("{body}")
        };
        for f in FIELDS {
            assert!(m.contains_key(f), "{f} in {body}");
        }
    }
    assert!(
        sink.state.violations.lock().is_empty(),
        "{:?}",
        sink.state.violations.lock()
    );
    let m = u.metrics().await;
    assert!(m.contains("twofa_audit_dropped_total 0"), "{m}");
    assert!(m.contains("twofa_audit_webhook_failures_total 0"), "{m}");
}

// --- a dead webhook -------------------------------------------------------------------

/// A webhook that accepts connections and never answers; counts them.
async fn silent_webhook() -> (SocketAddr, Arc<Mutex<usize>>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0usize));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            *count.lock() += 1;
            held.push(s);
        }
    });
    (addr, accepted, task)
}

fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_webhook_neither_blocks_nor_slows_requests() {
    let (addr, accepted, _task) = silent_webhook().await;
    let stack = Stack::start_with(None, |c| {
        c.set_str("audit", "webhook_url", &format!("http://{addr}/audit"))
            .set("audit", "queue_capacity", "2")
            .set_str("audit", "webhook_timeout", "60s")
            // Audit lines are written whatever the level.
            .set_str("log", "level", "warn");
    })
    .await;
    const USERS: usize = 12;
    let mut slowest = Duration::ZERO;
    for i in 0..USERS {
        let t = stack.keycloak.token().user(&format!("user{i}")).build();
        let start = Instant::now();
        let r = http::request("POST", stack.app.http_addr(), "/user")
            .bearer(&t.jwt)
            .send()
            .await;
        slowest = slowest.max(start.elapsed());
        assert_eq!(r.status, 201, "{}", stack.explain("POST /user", &r));
    }
    // A request that waited for the webhook would take its 60 s.
    assert!(
        slowest < Duration::from_secs(2),
        "slowest request {slowest:?}"
    );
    let m = http::get(stack.app.http_addr(), "/metrics")
        .send()
        .await
        .text();
    // One event is on its way (the POST that never ends), two wait in the
    // queue; every other one was dropped, and counted.
    let dropped = sample(&m, "twofa_audit_dropped_total ");
    assert!(
        (USERS as f64 - 3.0..=USERS as f64 - 2.0).contains(&dropped),
        "dropped {dropped} of {USERS}\n{m}"
    );
    assert!(*accepted.lock() >= 1, "the webhook was called");
    // The log still has every event (text format: the message is the JSON).
    let log = stack.app.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" audit: {") && l.contains("\"event\":\"profile_created\""))
        .collect();
    assert_eq!(lines.len(), USERS, "{log}");
    assert!(
        !log.contains(" INFO twofa_authz"),
        "log.level = warn still applies to the rest: {log}"
    );
    for l in lines {
        let json = &l[l.find(" audit: ").unwrap() + 8..];
        let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert_eq!(v["client_ip"], "127.0.0.1", "{v}");
    }
    // Checks do not wait either.
    let start = Instant::now();
    let r = stack.authz("GET", "/public/x").send().await;
    assert_eq!(r.status, 200, "{}", stack.explain("check", &r));
    assert!(start.elapsed() < Duration::from_secs(2));
}

/// A webhook that refuses connections: every event is a counted failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_webhook_counts_failures() {
    let port = crate::support::ports::free_port();
    let stack = Stack::start_with(None, |c| {
        c.set_str(
            "audit",
            "webhook_url",
            &format!("http://127.0.0.1:{port}/audit"),
        );
    })
    .await;
    for i in 0..3 {
        let t = stack.keycloak.token().user(&format!("r{i}")).build();
        let r = http::request("POST", stack.app.http_addr(), "/user")
            .bearer(&t.jwt)
            .send()
            .await;
        assert_eq!(r.status, 201, "{}", stack.explain("POST /user", &r));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = http::get(stack.app.http_addr(), "/metrics")
            .send()
            .await
            .text();
        let failures = sample(&m, "twofa_audit_webhook_failures_total ");
        if failures == 3.0 {
            assert_eq!(sample(&m, "twofa_audit_dropped_total "), 0.0, "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "failures {failures}\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Behind Envoy: the request id is the one Envoy generates, the client the
/// one the proxy reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_envoy_the_request_id_is_envoys() {
    let sink = Sink::start().await;
    let url = sink.url();
    let stack = Stack::start_with(Some(crate::support::Proxy::Envoy), |c| {
        c.set_str("audit", "webhook_url", &url);
    })
    .await;
    let t = stack.keycloak.token().user("enid").build();
    let r = stack
        .request("POST", "/user")
        .bearer(&t.jwt)
        .header("X-Forwarded-For", "198.51.100.23")
        .send()
        .await;
    assert_eq!(
        r.status,
        201,
        "{}",
        stack.explain("POST /user via Envoy", &r)
    );
    let e = sink.next(1, "profile via Envoy").await;
    let ev = &e[0];
    assert_eq!(ev["event"], "profile_created", "{ev}");
    assert_eq!(ev["subject_hash"], subject_hash(&t), "{ev}");
    assert_eq!(ev["client_ip"], "198.51.100.23", "{ev}");
    let rid = ev["request_id"].as_str().unwrap_or_default();
    assert!(
        rid.len() == 36 && rid.chars().filter(|c| *c == '-').count() == 4,
        "Envoy's x-request-id (a UUID): {ev}"
    );
}

/// On SIGTERM the events still queued are delivered before the process
/// exits (within `audit.webhook_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_events_are_delivered_on_shutdown() {
    let sink = Sink::start_slow(Duration::from_millis(300)).await;
    let url = sink.url();
    let mut stack = Stack::start_with(None, |c| {
        c.set_str("audit", "webhook_url", &url);
    })
    .await;
    const USERS: usize = 5;
    for i in 0..USERS {
        let t = stack.keycloak.token().user(&format!("s{i}")).build();
        let r = http::request("POST", stack.app.http_addr(), "/user")
            .bearer(&t.jwt)
            .send()
            .await;
        assert_eq!(r.status, 201, "{}", stack.explain("POST /user", &r));
    }
    assert!(
        sink.all().len() < USERS,
        "the webhook is slower than the requests"
    );
    let status = stack
        .app
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(20))
        .await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(sink.all().len(), USERS, "{}", stack.app.log());
}
