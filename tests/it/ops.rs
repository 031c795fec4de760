//! Operations (issue 12): the refusal of `log` delivery providers outside dev
//! mode, warnings about `TWOFA_*` variables that name no key, the build-info
//! and process metrics, and the optional separate metrics listener.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::http;
use crate::support::ports::free_port;
use crate::support::Stack;

const BIN: &str = env!("CARGO_BIN_EXE_twofa-authz");
const KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const BASE: [(&str, &str); 3] = [
    ("TWOFA_KEYCLOAK__URL", "https://sso.example.com"),
    ("TWOFA_KEYCLOAK__REALM", "demo"),
    ("TWOFA_SECURITY__ENCRYPTION_KEYS", KEY),
];

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("NO_COLOR", "1").env_remove("RUST_LOG");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TWOFA_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    cmd
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().expect("run twofa-authz")
}

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    BASE.iter().chain(extra.iter()).copied().collect()
}

#[test]
fn serve_and_check_config_refuse_log_providers_for_enabled_channels() {
    let smtp = [
        ("TWOFA_EMAIL__PROVIDER", "smtp"),
        ("TWOFA_EMAIL__FROM", "2FA <no-reply@example.com>"),
        ("TWOFA_EMAIL__SMTP_URL", "smtp://mail.example.com:587"),
    ];
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (with(&[]), "email.provider"),
        (with(&smtp), "sms.provider"),
        (
            with(&[("TWOFA_SECURITY__METHODS", "totp,sms,recovery")]),
            "sms.provider",
        ),
    ];
    for (env, key) in &cases {
        for args in [&["check-config"][..], &["serve"][..]] {
            let out = run(args, env);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
            assert!(
                err.contains(&format!("`{key}`")) && err.contains("security.methods"),
                "{args:?} must name {key}: {err}"
            );
        }
    }
    // The same channels with real providers, or without the channels: accepted.
    let mut both = with(&smtp);
    both.extend([
        ("TWOFA_SMS__PROVIDER", "webhook"),
        ("TWOFA_SMS__WEBHOOK_URL", "https://sms.example.com/send"),
    ]);
    for env in [both, with(&[("TWOFA_SECURITY__METHODS", "totp,recovery")])] {
        let out = run(&["check-config"], &env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{env:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // `migrate` sends nothing: the providers are not its concern (it fails
    // later, on the database, not with exit 2 for the provider).
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("m.db").display());
    let mut env = with(&[]);
    env.push(("TWOFA_STORAGE__DATABASE_URL", &db));
    let out = run(&["migrate"], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_warns_about_variables_that_name_no_key() {
    let env = with(&[
        ("TWOFA_SECURITY__METHODS", "totp,recovery"),
        ("TWOFA_KEYCLOAK_AUDIENCES", "account"),
        ("TWOFA_STORAGE_REDIS_URL_FILE", "/run/secrets/redis-url"),
        ("TWOFA_WHATEVER", "1"),
    ]);
    let out = run(&["check-config"], &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    for want in [
        "TWOFA_KEYCLOAK_AUDIENCES names no configuration key and is ignored; did you mean TWOFA_KEYCLOAK__AUDIENCES?",
        "did you mean TWOFA_STORAGE__REDIS_URL_FILE?",
        "TWOFA_WHATEVER names no configuration key",
    ] {
        assert!(err.contains(want), "`{want}` in:\n{err}");
    }
    // The ignored variable really was ignored: the audience list is empty.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("audiences = []"), "{stdout}");
    // Nothing to warn about: nothing on stderr.
    let out = run(
        &["check-config"],
        &with(&[("TWOFA_SECURITY__METHODS", "totp,recovery")]),
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn serve_logs_the_warning_about_a_single_underscore_variable() {
    let dir = tempfile::tempdir().unwrap();
    let (http_addr, grpc_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let log = dir.path().join("serve.log");
    let mut child = command(
        &["serve", "--dev"],
        &[
            ("TWOFA_SERVER__HTTP_ADDR", &http_addr),
            ("TWOFA_SERVER__GRPC_ADDR", &grpc_addr),
            ("TWOFA_KEYCLOAK_URL", "https://sso.example.com"),
        ],
    )
    .current_dir(dir.path())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .expect("spawn serve --dev");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while Instant::now() < deadline {
        text.clear();
        std::fs::File::open(&log)
            .and_then(|mut f| f.read_to_string(&mut text))
            .ok();
        if text.contains("twofa-authz listening") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("twofa-authz listening"), "{text}");
    assert!(
        text.contains("WARN")
            && text.contains("TWOFA_KEYCLOAK_URL names no configuration key")
            && text.contains("did you mean TWOFA_KEYCLOAK__URL?"),
        "{text}"
    );
}

fn sample(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_on_the_http_listener_by_default() {
    let stack = Stack::start(None).await;
    let r = http::get(stack.app.http_addr(), "/metrics").send().await;
    assert_eq!(r.status, 200);
    let text = r.text();
    let info = sample(&text, "twofa_build_info{").expect("twofa_build_info");
    assert!(
        info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && info.contains("commit=\"")
            && info.ends_with(" 1"),
        "{info}"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        let line = sample(&text, name).unwrap_or_else(|| panic!("{name} in {text}"));
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        // This process really is measured: it holds memory and descriptors.
        if name != "process_cpu_seconds_total" {
            assert!(v > 0.0, "{line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_addr_moves_metrics_to_a_listener_of_their_own() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let addr = metrics_addr.clone();
    let stack = Stack::start_with(None, move |c| {
        c.set_str("server", "metrics_addr", &addr);
    })
    .await;
    let r = http::get(&metrics_addr, "/metrics").send().await;
    assert_eq!(r.status, 200, "{}", stack.app.log());
    let text = r.text();
    assert!(sample(&text, "twofa_build_info{").is_some(), "{text}");
    assert!(sample(&text, "twofa_checks_total{").is_some(), "{text}");
    assert!(sample(&text, "process_open_fds").is_some(), "{text}");
    // Not on the API listener any more, and nothing but /metrics on this one.
    let r = http::get(stack.app.http_addr(), "/metrics").send().await;
    assert_eq!(r.status, 404);
    assert_eq!(http::get(&metrics_addr, "/readyz").send().await.status, 404);
    assert_eq!(http::get(&metrics_addr, "/user").send().await.status, 404);
    assert_eq!(
        http::get(stack.app.http_addr(), "/readyz")
            .send()
            .await
            .status,
        200
    );
}

/// HTTP request metrics are labelled by route template and a bounded method
/// name: a raw path or an invented method never becomes a label value (which
/// would let a client grow the registry without bound).
#[tokio::test]
async fn http_request_metrics_use_route_templates_and_bounded_methods() {
    let stack = Stack::start(None).await;
    let addr = stack.app.http_addr();
    for path in [
        "/authz/ext-authz/secret-path-a",
        "/authz/ext-authz/secret-path-b",
    ] {
        http::get(addr, path).send().await;
    }
    http::request("BREW", addr, "/healthz").send().await;
    http::get(addr, "/no-such-route-xyz").send().await;
    let m = http::get(addr, "/metrics").send().await.text();
    let lines: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("twofa_http_requests_total{"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("route=\"/authz/ext-authz/{*path}\"")
                && l.contains("method=\"GET\"")),
        "{m}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("method=\"other\"") && l.contains("route=\"/healthz\"")),
        "{m}"
    );
    assert!(
        lines.iter().any(|l| l.contains("route=\"unmatched\"")),
        "{m}"
    );
    assert!(
        !m.contains("secret-path") && !m.contains("BREW") && !m.contains("no-such-route"),
        "{m}"
    );
}
