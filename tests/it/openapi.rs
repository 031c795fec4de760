//! `GET /openapi.json` (INTERFACE.md section 9) from the running binary:
//! checked by an independent validator (PyPI `openapi-spec-validator`),
//! matched against what the listener answers, and used by schemathesis to
//! fuzz the `/user` routes with a valid token: no 5xx, no status or body
//! outside the description.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::http;
use crate::support::keycloak::now;
use crate::support::smtp::python;
use crate::support::{assert_problem, Delivery, Stack};

async fn spec(stack: &Stack) -> (http::Response, Value) {
    let r = http::get(stack.app.http_addr(), "/openapi.json")
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", stack.explain("GET /openapi.json", &r));
    let v = r.json();
    (r, v)
}

fn output_text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn venv_bin(name: &str) -> PathBuf {
    python().with_file_name(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_description_passes_openapi_spec_validator() {
    let stack = Stack::start(None).await;
    let (resp, doc) = spec(&stack).await;
    assert!(
        resp.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "{:?}",
        resp.headers
    );
    assert_eq!(doc["openapi"], "3.1.0");
    // Not dev mode: no /dev/token.
    assert!(doc["paths"].get("/dev/token").is_none());
    for path in [
        "/user",
        "/user/totp",
        "/user/verify-recovery-code",
        "/authz/auth-request",
        "/authz/forward-auth",
        "/authz/ext-authz/{path}",
        "/keycloak/backchannel-logout",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    let file = stack.app.dir().join("openapi.json");
    std::fs::write(&file, &resp.body).unwrap();
    let out = Command::new(python())
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("run openapi_spec_validator");
    assert!(out.status.success(), "{}", output_text(&out));

    // The validator must be able to fail: without the Problem schema every
    // problem answer's reference dangles.
    let mut broken = doc.clone();
    let schemas = broken["components"]["schemas"].as_object_mut().unwrap();
    assert!(schemas.remove("Problem").is_some());
    let bad = stack.app.dir().join("broken.json");
    std::fs::write(&bad, broken.to_string()).unwrap();
    let out = Command::new(python())
        .args(["-m", "openapi_spec_validator"])
        .arg(&bad)
        .output()
        .expect("run openapi_spec_validator");
    assert!(!out.status.success(), "{}", output_text(&out));
}

/// Every operation of the description is a route of the listener: none is
/// answered by the 404 fallback or the 405 of a method the path does not
/// take. And a known path with a method it does not take is a 405 problem
/// that names the allowed methods, not a bare 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_described_operation_is_served_and_a_wrong_method_is_a_problem() {
    let stack = Stack::start(None).await;
    let (_, doc) = spec(&stack).await;
    let addr = stack.app.http_addr().to_string();
    let mut count = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let target = path.replace("{path}", "some/where");
            let r = http::request(&method.to_uppercase(), &addr, &target)
                .send()
                .await;
            let code = if r.body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice::<Value>(&r.body).unwrap_or(Value::Null)["code"].clone()
            };
            assert!(
                r.status != 405 && !(r.status == 404 && code == "not_found"),
                "{method} {path}: {}",
                stack.explain("a described operation", &r)
            );
            count += 1;
        }
    }
    assert!(count >= 20, "{count}");

    let r = http::request("PUT", &addr, "/user").send().await;
    assert_problem(&stack, "PUT /user", &r, 405, "method_not_allowed");
    let allow = r.header("allow").unwrap_or_default().to_string();
    for m in ["GET", "POST", "PATCH"] {
        assert!(allow.contains(m), "allow: {allow:?}");
    }
    let r = http::request("GET", &addr, "/user/verify-totp")
        .send()
        .await;
    assert_problem(
        &stack,
        "GET /user/verify-totp",
        &r,
        405,
        "method_not_allowed",
    );
    let r = http::request("POST", &addr, "/openapi.json").send().await;
    assert_problem(&stack, "POST /openapi.json", &r, 405, "method_not_allowed");
    // The fallbacks swallow nothing: the page and unknown paths keep theirs.
    let r = http::get(&addr, "/ui/").send().await;
    assert_eq!(r.status, 200, "{}", stack.explain("GET /ui/", &r));
    assert!(r.text().contains("<html"), "{}", r.text());
    let r = http::get(&addr, "/nowhere").send().await;
    assert_problem(&stack, "GET /nowhere", &r, 404, "not_found");
}

/// schemathesis 4 against the running service's `/user` routes, bounded
/// (examples per operation, a seed, one worker), with a valid token for a
/// profile that exists. Any 5xx, undocumented status, or body that does not
/// match its schema fails the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_on_the_user_routes() {
    let delivery = Delivery::start().await;
    let stack = Stack::start_with(None, |c| {
        // Fast resends so that fuzzing meets more than `resend_too_soon`.
        c.set_str("security", "otp_resend_interval", "1s");
        delivery.configure(c);
    })
    .await;
    let addr = stack.app.http_addr().to_string();
    // The token outlives the bounded run.
    let token = stack.keycloak.token().expires_in(600).build();
    let r = http::request("POST", &addr, "/user")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", stack.explain("POST /user", &r));
    // A session that passed a factor just now, so that the routes needing a
    // recent factor answer their successes too, not only 403.
    stack.mark_verified(&token, "email", now()).await;
    let r = http::request("POST", &addr, "/user/generate-totp")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", stack.explain("generate-totp", &r));

    let work = tempfile::Builder::new()
        .prefix("twofa-schemathesis-")
        .tempdir()
        .unwrap();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking({
        let url = format!("http://{addr}/openapi.json");
        let auth = format!("Authorization: Bearer {}", token.jwt);
        let dir = work.path().to_owned();
        move || {
            Command::new(venv_bin("schemathesis"))
                .current_dir(&dir)
                .env("NO_COLOR", "1")
                .args(["run", &url])
                .args(["--include-path-regex", "^/user"])
                .args([
                    "--checks",
                    "not_a_server_error,status_code_conformance,response_schema_conformance",
                ])
                .args(["--phases", "examples,coverage,fuzzing"])
                .args(["--max-examples", "300", "--seed", "20261202"])
                .args(["--workers", "1", "--request-timeout", "10"])
                .args(["--generation-database", "none"])
                .args(["--generation-with-security-parameters", "false"])
                .args(["--max-failures", "20", "--no-color"])
                .args(["-H", &auth])
                .output()
                .expect("run schemathesis")
        }
    })
    .await
    .unwrap();
    let took = started.elapsed();
    let text = output_text(&out);
    // Shown with --nocapture: what was run, per phase.
    println!("{text}");
    assert!(
        out.status.success(),
        "{text}\n--- twofa-authz log (tail) ---\n{}",
        tail(&stack.app.log(), 60)
    );
    // It really ran requests against the routes, and within its budget.
    assert!(text.contains("/user"), "{text}");
    assert!(took < Duration::from_secs(120), "took {took:?}\n{text}");
    // The profile it fuzzed is still there; nothing crashed the service.
    let r = http::get(&addr, "/healthz").send().await;
    assert_eq!(r.status, 200);
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
