//! The README's dev-mode walk-through, step by step, on the real binary and the
//! example Envoy configuration: `serve --dev`, a token from `/dev/token`, a
//! profile, `generate-totp` (QR printed in the terminal by `twofa-authz qr`),
//! `verify-totp` with a code computed by oathtool, then a request through
//! `envoy/envoy.yaml` reaches the application.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::envoy::{Envoy, Targets};
use crate::support::http;
use crate::support::keycloak::now;
use crate::support::ports::free_port;
use crate::support::process::{poll_until, ChildGuard};
use crate::support::upstream::{Echoed, Upstream};
use crate::user_totp::{oathtool, parse_uri, zbarimg};

fn post_json(addr: &str, path: &str, token: Option<&str>, body: Value) -> http::Request {
    let mut r = http::request("POST", addr, path)
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        r = r.bearer(t);
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_walkthrough_through_envoy() {
    // 1. `twofa-authz serve --dev` (on free ports instead of 8090/9191).
    let dir = tempfile::Builder::new()
        .prefix("twofa-dev-")
        .tempdir()
        .unwrap();
    let http_addr = format!("127.0.0.1:{}", free_port());
    let grpc_addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twofa-authz"));
    cmd.args(["serve", "--dev"])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TWOFA_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("TWOFA_SERVER__HTTP_ADDR", &http_addr)
        .env("TWOFA_SERVER__GRPC_ADDR", &grpc_addr);
    let mut dev = ChildGuard::spawn("twofa-authz --dev", cmd, &dir.path().join("dev.log"));
    let ready = poll_until(Duration::from_secs(30), || {
        let addr = http_addr.clone();
        async move {
            crate::support::process::accepts_connections(&addr).await
                && http::get(&addr, "/readyz").send().await.status == 200
        }
    })
    .await;
    if !ready {
        dev.assert_running();
        panic!("serve --dev not ready: {}", dev.log());
    }
    assert!(
        dev.log().contains("DEVELOPMENT MODE"),
        "the loud warning: {}",
        dev.log()
    );

    // The example Envoy in front of an application.
    let upstream = Upstream::start().await;
    let port = |a: &str| a.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let envoy = Envoy::start(Targets {
        grpc_port: port(&grpc_addr),
        http_port: port(&http_addr),
        app_port: upstream.port(),
    })
    .await;
    let front = envoy.addr();

    // 2. A token from the dev issuer.
    let r = post_json(&http_addr, "/dev/token", None, json!({ "sub": "alice" }))
        .send()
        .await;
    assert_eq!(r.status, 200, "/dev/token: {}", r.text());
    let token = r.json()["access_token"].as_str().unwrap().to_owned();

    // Without a second factor, Envoy refuses the application.
    let r = http::get(&front, "/").bearer(&token).send().await;
    assert_eq!(r.status, 403, "before TOTP: {} {}", r.status, r.text());
    assert_eq!(r.json()["code"], "second_factor_required");

    // 3. The profile.
    let r = http::request("POST", &http_addr, "/user")
        .bearer(&token)
        .send()
        .await;
    assert_eq!(r.status, 201, "POST /user: {}\n{}", r.text(), dev.log());

    // 4. A TOTP secret: QR code for the phone, also in the terminal.
    let r = http::request("POST", &http_addr, "/user/generate-totp")
        .bearer(&token)
        .send()
        .await;
    assert_eq!(r.status, 201, "generate-totp: {}\n{}", r.text(), dev.log());
    let generated = r.json();
    let uri = generated["otpauth_uri"].as_str().unwrap().to_owned();
    let png = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        generated["qr_png"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(zbarimg(&png), uri);
    let mut qr = Command::new(env!("CARGO_BIN_EXE_twofa-authz"))
        .arg("qr")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    qr.stdin
        .take()
        .unwrap()
        .write_all(generated.to_string().as_bytes())
        .unwrap();
    let out = qr.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().count() > 15 && text.contains('█'), "{text}");
    assert!(!text.contains(generated["secret"].as_str().unwrap()));

    // 5. The authenticator's code confirms the secret.
    let params = parse_uri(&uri);
    let code = oathtool(&params, now());
    let r = post_json(
        &http_addr,
        "/user/verify-totp",
        Some(&token),
        json!({ "totp": code, "is_new_seed": true }),
    )
    .send()
    .await;
    assert_eq!(r.status, 200, "verify-totp: {}\n{}", r.text(), dev.log());
    let body = r.json();
    assert_eq!(body["verified"], true);
    assert_eq!(body["recovery_codes"].as_array().unwrap().len(), 10);

    // 6. The same session now passes Envoy.
    let r = http::get(&front, "/").bearer(&token).send().await;
    assert_eq!(
        r.status,
        200,
        "after TOTP: {}\n{}\n{}",
        r.text(),
        envoy.log(),
        dev.log()
    );
    let echoed = Echoed::from_response(&r).expect("the application answered");
    assert_eq!(
        echoed.header("x-auth-request-second-factor").as_deref(),
        Some("totp")
    );
    assert_eq!(
        echoed.header("x-auth-request-subject").as_deref(),
        Some("alice")
    );

    // Nothing secret in the log.
    let log = dev.log();
    assert!(!log.contains(generated["secret"].as_str().unwrap()));
    for c in body["recovery_codes"].as_array().unwrap() {
        assert!(!log.contains(c.as_str().unwrap()));
    }
    assert!(dir.path().join("twofa-dev.db").exists());
}
