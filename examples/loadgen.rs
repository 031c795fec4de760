//! Load generator for the hot path: drives `envoy.service.auth.v3.Authorization/Check`
//! over gRPC against a real `twofa-authz serve` process, with valid RS256
//! tokens of second-factor-verified sessions (Redis session store), and
//! prints checks/s, latency percentiles and the server's peak RSS.
//!
//! It starts everything it needs on loopback: a Keycloak-shaped issuer
//! (discovery + JWKS), a throwaway redis-server, and the server binary.
//!
//! ```text
//! cargo build --release --bins --examples
//! target/release/examples/loadgen --concurrency 32 --duration 10 --runs 5
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::json;
use twofa_authz::grpc::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use twofa_authz::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use twofa_authz::grpc::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

#[derive(Parser, Debug)]
struct Args {
    /// Concurrent in-flight Check calls.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the calls are spread over (Envoy opens a few).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Measured runs; the median run is reported last.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Distinct users/sessions/tokens.
    #[arg(long, default_value_t = 1000)]
    tokens: usize,
    /// The server binary.
    #[arg(long, default_value = "target/release/twofa-authz")]
    server_bin: PathBuf,
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// Session store: "redis" (throwaway redis-server) or "memory" (only
    /// useful with --path on a `token` route, since sessions cannot be
    /// marked from outside).
    #[arg(long, default_value = "redis")]
    store: String,
    /// Request path; /admin needs 2fa under the generated policy.
    #[arg(long, default_value = "/admin/reports")]
    path: String,
}

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let pem = std::fs::read_to_string(root.join("tests/fixtures/keycloak/sig-a.key.pem"))
        .expect("key fixture");
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).expect("pkcs8");
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let (n, e) = (b64(key.n().to_bytes_be()), b64(key.e().to_bytes_be()));
    let enc = EncodingKey::from_rsa_der(key.to_pkcs1_der().expect("der").as_bytes());

    // A Keycloak-shaped issuer: discovery and certs under /realms/bench.
    let kc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let kc_addr: SocketAddr = kc.local_addr().expect("addr");
    let issuer = format!("http://{kc_addr}/realms/bench");
    let disco =
        json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/protocol/openid-connect/certs") });
    let certs = json!({ "keys": [{ "kid": "bench", "kty": "RSA", "alg": "RS256", "use": "sig", "n": n, "e": e }] });
    let app = axum::Router::new()
        .route(
            "/realms/bench/.well-known/openid-configuration",
            axum::routing::get(move || async move { axum::Json(disco) }),
        )
        .route(
            "/realms/bench/protocol/openid-connect/certs",
            axum::routing::get(move || async move { axum::Json(certs) }),
        );
    tokio::spawn(async move { axum::serve(kc, app).await });

    let dir = tempfile::tempdir().expect("tempdir");
    let mut _redis = None;
    let redis_url = if args.store == "redis" {
        let port = free_port();
        let child = Command::new(&args.redis_server)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        _redis = Some(Guard(child));
        tokio::time::sleep(Duration::from_millis(300)).await;
        format!("redis://127.0.0.1:{port}")
    } else {
        "memory://".to_string()
    };

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let mut tokens = Vec::with_capacity(args.tokens);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("bench".into());
    for i in 0..args.tokens {
        let (sub, sid) = (format!("user-{i}"), format!("session-{i}"));
        let claims = json!({
            "exp": now + 7200, "iat": now, "jti": format!("j{i}"), "iss": issuer, "aud": "account",
            "sub": sub, "typ": "Bearer", "azp": "spa", "sid": sid, "preferred_username": format!("user{i}"),
            "email": format!("user{i}@example.com"), "email_verified": true,
            "realm_access": { "roles": ["offline_access", "uma_authorization", "default-roles-bench"] },
            "scope": "openid email profile",
        });
        tokens.push(format!(
            "Bearer {}",
            jsonwebtoken::encode(&header, &claims, &enc).expect("sign")
        ));
        if args.store == "redis" {
            let ids = twofa_authz::store::SessionIds::new(&issuer, &sub, &sid);
            let client = redis::Client::open(redis_url.as_str()).expect("redis url");
            let mut c = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            let _: () = redis::cmd("SET")
                .arg(format!("twofa:sv:{}", ids.session))
                .arg(json!({"f": "totp", "at": now}).to_string())
                .arg("EX")
                .arg(7200)
                .query_async(&mut c)
                .await
                .expect("mark session");
        }
    }

    let (grpc_port, http_port) = (free_port(), free_port());
    let cfg = dir.path().join("bench.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ngrpc_addr = \"127.0.0.1:{grpc_port}\"\nhttp_addr = \"127.0.0.1:{http_port}\"\n\
             [keycloak]\nurl = \"http://{kc_addr}\"\nrealm = \"bench\"\n\
             [storage]\nredis_url = \"{redis_url}\"\ndatabase_url = \"sqlite://{}\"\n\
             [security]\nencryption_keys = [\"bench:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"]\n\
             [policy]\ndefault = \"2fa\"\nrules = [{{ path_prefix = \"/user\", require = \"token\" }}]\n\
             [log]\nlevel = \"warn\"\n",
            dir.path().join("bench.db").display()
        ),
    )
    .expect("write config");
    let server = Command::new(&args.server_bin)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", args.server_bin.display()));
    let pid = server.id();
    let _server = Guard(server);
    let http = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{http_port}/readyz");
    for _ in 0..100 {
        if http
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc_port}"))
            .expect("endpoint")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        channels.push(ch);
    }
    let tokens = Arc::new(tokens);
    println!(
        "twofa-authz loadgen: concurrency {}, connections {}, {} tokens, path {}, store {}, {} runs of {}s",
        args.concurrency, args.connections, args.tokens, args.path, args.store, args.runs, args.duration
    );
    // Warm-up: every token verified once (signature cache filled), connections hot.
    run(&channels, &tokens, &args, Duration::from_secs(2)).await;
    let mut results = Vec::new();
    for i in 0..args.runs {
        let r = run(
            &channels,
            &tokens,
            &args,
            Duration::from_secs(args.duration),
        )
        .await;
        println!(
            "run {}: {:>8.0} checks/s  p50 {:>6.3} ms  p99 {:>6.3} ms  p99.9 {:>6.3} ms  max {:>6.3} ms  ok {} denied/errors {}",
            i + 1, r.rate, r.p50, r.p99, r.p999, r.max, r.ok, r.bad
        );
        results.push(r);
    }
    let (hwm, rss) = rss_of(pid);
    results.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let med = &results[results.len() / 2];
    println!(
        "median: {:.0} checks/s  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  | server peak RSS {:.1} MB (now {:.1} MB)",
        med.rate, med.p50, med.p99, med.p999, hwm as f64 / 1024.0, rss as f64 / 1024.0
    );
}

struct RunResult {
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    ok: u64,
    bad: u64,
}

async fn run(
    channels: &[tonic::transport::Channel],
    tokens: &Arc<Vec<String>>,
    args: &Args,
    dur: Duration,
) -> RunResult {
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let mut client = AuthorizationClient::new(channels[w % channels.len()].clone());
        let tokens = tokens.clone();
        let path = args.path.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let (mut ok, mut bad) = (0u64, 0u64);
            let mut i = w;
            while Instant::now() < deadline {
                let mut headers = std::collections::HashMap::new();
                headers.insert(
                    "authorization".to_string(),
                    tokens[i % tokens.len()].clone(),
                );
                headers.insert("x-request-id".to_string(), format!("{w}-{i}"));
                i += args_stride();
                let req = CheckRequest {
                    attributes: Some(AttributeContext {
                        request: Some(Request {
                            http: Some(HttpRequest {
                                method: "GET".into(),
                                path: path.clone(),
                                host: "app.example.com".into(),
                                scheme: "http".into(),
                                protocol: "HTTP/1.1".into(),
                                headers,
                                ..Default::default()
                            }),
                        }),
                        context_extensions: Default::default(),
                    }),
                };
                let t = Instant::now();
                let resp = client.check(req).await;
                lat.push(t.elapsed().as_micros() as u32);
                match resp {
                    Ok(r) if r.get_ref().status.as_ref().is_some_and(|s| s.code == 0) => ok += 1,
                    _ => bad += 1,
                }
            }
            (lat, ok, bad)
        }));
    }
    let mut all = Vec::new();
    let (mut ok, mut bad) = (0, 0);
    for t in tasks {
        let (l, o, b) = t.await.expect("worker");
        all.extend(l);
        ok += o;
        bad += b;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    RunResult {
        rate: all.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
        max: all.last().copied().unwrap_or(0) as f64 / 1000.0,
        ok,
        bad,
    }
}

/// Workers step through the token list with a prime stride so that
/// concurrent calls use different sessions.
fn args_stride() -> usize {
    7
}

/// (VmHWM, VmRSS) in KiB from /proc.
fn rss_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}
