//! Load generator for the hot path: drives `envoy.service.auth.v3.Authorization/Check`
//! over gRPC against a real `twofa-authz serve` process, with valid RS256
//! tokens of second-factor-verified sessions, and prints checks/s, latency
//! percentiles and the server's peak RSS.
//!
//! It starts everything it needs on loopback: a Keycloak-shaped issuer
//! (discovery + JWKS), a throwaway redis-server, and the server binary.
//!
//! - `--floor` also starts a do-nothing `Check` server (this binary again, in
//!   its own process, with the same tonic settings as twofa-authz) and
//!   measures both in the same invocation, runs alternating, so that every
//!   figure comes with the floor it is a ratio to.
//! - `--tokens N` uses N distinct users, sessions and tokens; each is checked
//!   once before measuring. `--scale` runs 1k, 10k and 100k tokens, each
//!   against a fresh server, and prints the ratios to 1k.
//! - `--serve-stack FILE` starts issuer, Redis, twofa-authz and a do-nothing
//!   HTTP upstream, writes their addresses and a token to FILE, and serves
//!   until SIGTERM (scripts/bench-envoy.sh puts Envoy and wrk in front).
//!
//! ```text
//! cargo build --release --bins --examples
//! target/release/examples/loadgen --floor --concurrency 32 --duration 10 --runs 3
//! target/release/examples/loadgen --floor --scale --duration 10 --runs 3
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use clap::Parser;
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::json;
use tokio_stream::wrappers::TcpListenerStream;
use twofa_authz::grpc::pb::envoy::service::auth::v3::attribute_context::{
    HeaderEntry, HttpRequest, Request,
};
use twofa_authz::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use twofa_authz::grpc::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use twofa_authz::grpc::pb::envoy::service::auth::v3::check_response::HttpResponse;
use twofa_authz::grpc::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, OkHttpResponse,
};
use twofa_authz::grpc::pb::google::rpc::Status as RpcStatus;

#[derive(Parser, Debug, Clone)]
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
    /// Measured runs per side; medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Offer this many Checks per second in all, evenly paced over the
    /// `--concurrency` workers, instead of a closed loop (each worker sends
    /// its next call as soon as the last is answered). On two cores shared
    /// with the load generator, a closed loop runs each server at its own
    /// saturation, where its tail latency is mostly the scheduler's time
    /// slices; at a rate both sides sustain, the latencies compare the two
    /// servers under the same load.
    #[arg(long)]
    rate: Option<f64>,
    /// Distinct users/sessions/tokens, each checked once before measuring.
    #[arg(long, default_value_t = 1000)]
    tokens: usize,
    /// Run 1,000, 10,000 and 100,000 tokens (a fresh server each) and print
    /// the ratios to 1,000.
    #[arg(long)]
    scale: bool,
    /// Also measure a do-nothing Check server, runs alternating.
    #[arg(long)]
    floor: bool,
    /// `cache.token_capacity` of the server (default: the server's default).
    #[arg(long)]
    token_capacity: Option<usize>,
    /// `cache.session_capacity` of the server (default: the server's default).
    #[arg(long)]
    session_capacity: Option<usize>,
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
    /// Request path; /admin needs 2fa under the generated policy, /user a token.
    #[arg(long, default_value = "/admin/reports")]
    path: String,
    /// Start issuer, Redis, twofa-authz and a do-nothing HTTP upstream, write
    /// their addresses and a token to this file (shell `KEY=value` lines),
    /// and serve until SIGTERM or SIGINT.
    #[arg(long, value_name = "FILE")]
    serve_stack: Option<PathBuf>,
    /// Count instructions instead of time: each side (twofa-authz, and the
    /// floor with --floor) runs under `valgrind --tool=callgrind`, twice, in
    /// fresh processes, with every token warmed and then exactly N and 2N
    /// Checks; the difference over N is its instructions per Check. Unlike
    /// checks/s it does not move with what else the machine runs.
    #[arg(long, value_name = "N")]
    callgrind: Option<usize>,
    /// With --callgrind: where the callgrind output files go (to read with
    /// callgrind_annotate); default a temporary directory.
    #[arg(long, value_name = "DIR")]
    callgrind_dir: Option<PathBuf>,
    /// Internal: be the do-nothing Check server on this address.
    #[arg(long, hide = true, value_name = "ADDR")]
    serve_floor: Option<SocketAddr>,
}

/// A child process, killed when dropped.
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

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match args.serve_floor {
        // The same runtime shape as twofa-authz: tokio's multi-thread default.
        Some(addr) => rt.block_on(serve_floor(addr)),
        None => rt.block_on(bench(args)),
    }
}

// --- the do-nothing floor ---------------------------------------------------

struct Floor;

#[tonic::async_trait]
impl Authorization for Floor {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        // tonic has decoded the request by now, as it does for twofa-authz:
        // that much is part of the floor.
        Ok(tonic::Response::new(CheckResponse {
            status: Some(RpcStatus {
                code: 0,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
        }))
    }
}

/// Allows everything, with twofa-authz's transport settings: tonic's server
/// defaults (HTTP/2), TCP_NODELAY on every accepted connection, the same
/// decoding limit.
async fn serve_floor(addr: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("floor: bind {addr}: {e}"));
    let incoming = TcpListenerStream::new(listener).map(|s| {
        s.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    let service = AuthorizationServer::new(Floor).max_decoding_message_size(256 * 1024);
    let server = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(incoming);
    tokio::select! {
        r = server => if let Err(e) = r { eprintln!("floor: {e}"); },
        _ = shutdown() => {}
    }
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

// --- what twofa-authz needs around it ---------------------------------------

/// Issuer, Redis and signed tokens of verified sessions: shared by every
/// server started in one invocation.
struct Fixture {
    issuer: String,
    kc_addr: SocketAddr,
    redis_url: String,
    _redis: Option<Guard>,
    tokens: Arc<Vec<String>>,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(args: &Args, tokens: usize) -> Fixture {
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
        let disco = json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/protocol/openid-connect/certs") });
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

        let mut redis = None;
        let redis_url = if args.store == "redis" {
            let port = free_port();
            let child = Command::new(&args.redis_server)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("start redis-server");
            redis = Some(Guard(child));
            let url = format!("redis://127.0.0.1:{port}");
            wait_for_redis(&url).await;
            url
        } else {
            "memory://".to_string()
        };

        let now = unix_now();
        let started = Instant::now();
        let tokens = sign_tokens(&issuer, &enc, now, tokens);
        eprintln!(
            "signed {} tokens in {:.1} s",
            tokens.len(),
            started.elapsed().as_secs_f64()
        );
        if args.store == "redis" {
            let started = Instant::now();
            mark_verified(&issuer, &redis_url, tokens.len(), now).await;
            eprintln!(
                "marked {} sessions verified in {:.1} s",
                tokens.len(),
                started.elapsed().as_secs_f64()
            );
        }
        Fixture {
            issuer,
            kc_addr,
            redis_url,
            _redis: redis,
            tokens: Arc::new(tokens),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

async fn wait_for_redis(url: &str) {
    let client = redis::Client::open(url).expect("redis url");
    for _ in 0..100 {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            if redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok()
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server at {url} did not answer within 5 s");
}

fn subject(i: usize) -> (String, String) {
    (format!("user-{i}"), format!("session-{i}"))
}

/// RS256 tokens with Keycloak's claims, signed on every core.
fn sign_tokens(issuer: &str, enc: &EncodingKey, now: i64, count: usize) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(threads).max(1);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("bench".into());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| {
                let header = &header;
                s.spawn(move || {
                    (start..(start + chunk).min(count))
                        .map(|i| {
                            let (sub, sid) = subject(i);
                            let claims = json!({
                                "exp": now + 7200, "iat": now, "jti": format!("j{i}"), "iss": issuer,
                                "aud": "account", "sub": sub, "typ": "Bearer", "azp": "spa", "sid": sid,
                                "preferred_username": format!("user{i}"),
                                "email": format!("user{i}@example.com"), "email_verified": true,
                                "realm_access": { "roles": ["offline_access", "uma_authorization", "default-roles-bench"] },
                                "scope": "openid email profile",
                            });
                            let jwt = jsonwebtoken::encode(header, &claims, enc).expect("sign");
                            format!("Bearer {jwt}")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("signing thread"))
            .collect()
    })
}

/// Marks every session second-factor verified through the server's own
/// session store, so the stored format is whatever the server reads.
async fn mark_verified(issuer: &str, redis_url: &str, count: usize, now: i64) {
    use twofa_authz::store::{Factor, SessionIds, Verified};
    let cfg = twofa_authz::config::StorageConfig {
        redis_url: twofa_authz::config::SecretUrl::new(redis_url),
        ..Default::default()
    };
    let clock: twofa_authz::clock::SharedClock = Arc::new(twofa_authz::clock::SystemClock);
    let store = twofa_authz::store::session_store(&cfg, clock).expect("session store");
    let v = Verified {
        factor: Factor::Totp,
        at: now,
    };
    let failures = futures::stream::iter(0..count)
        .map(|i| {
            let store = store.clone();
            async move {
                let (sub, sid) = subject(i);
                store
                    .put(
                        &SessionIds::new(issuer, &sub, &sid),
                        v,
                        Duration::from_secs(7200),
                    )
                    .await
            }
        })
        .buffer_unordered(64)
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await;
    assert_eq!(
        failures, 0,
        "{failures} sessions could not be marked verified"
    );
}

/// A twofa-authz process on free loopback ports.
struct Twofa {
    grpc: SocketAddr,
    http: SocketAddr,
    pid: u32,
    _child: Guard,
}

async fn start_twofa(args: &Args, fx: &Fixture, name: &str) -> Twofa {
    start_twofa_in(args, fx, name, None).await
}

/// The command, run under callgrind when `profile` names an output file.
fn command(bin: &Path, profile: Option<&Path>) -> Command {
    match profile {
        Some(out) => {
            let mut c = Command::new("valgrind");
            c.arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg("--quiet")
                .arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

async fn start_twofa_in(args: &Args, fx: &Fixture, name: &str, profile: Option<&Path>) -> Twofa {
    let (grpc_port, http_port) = (free_port(), free_port());
    let cfg = fx.dir.path().join(format!("{name}.toml"));
    let mut cache = String::new();
    if let Some(n) = args.token_capacity {
        cache.push_str(&format!("token_capacity = {n}\n"));
    }
    if let Some(n) = args.session_capacity {
        cache.push_str(&format!("session_capacity = {n}\n"));
    }
    if !cache.is_empty() {
        cache.insert_str(0, "[cache]\n");
    }
    std::fs::write(
        &cfg,
        format!(
            "[server]\ngrpc_addr = \"127.0.0.1:{grpc_port}\"\nhttp_addr = \"127.0.0.1:{http_port}\"\n\
             [keycloak]\nurl = \"http://{}\"\nrealm = \"bench\"\n\
             [storage]\nredis_url = \"{}\"\ndatabase_url = \"sqlite://{}\"\n\
             {cache}\
             [security]\nencryption_keys = [\"bench:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"]\n\
             methods = [\"totp\", \"recovery\"]\n\
             [policy]\ndefault = \"2fa\"\nrules = [{{ path_prefix = \"/user\", require = \"token\" }}]\n\
             [log]\nlevel = \"warn\"\n",
            fx.kc_addr,
            fx.redis_url,
            fx.dir.path().join(format!("{name}.db")).display()
        ),
    )
    .expect("write config");
    let child = command(&args.server_bin, profile)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", args.server_bin.display()));
    let pid = child.id();
    let server = Twofa {
        grpc: SocketAddr::from(([127, 0, 0, 1], grpc_port)),
        http: SocketAddr::from(([127, 0, 0, 1], http_port)),
        pid,
        _child: Guard(child),
    };
    let http = reqwest::Client::new();
    let ready = format!("http://{}/readyz", server.http);
    // Under valgrind everything is some 50 times slower.
    let tries = if profile.is_some() { 4000 } else { 200 };
    for _ in 0..tries {
        if http
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("twofa-authz was not ready in time");
}

/// The floor in its own process: this binary with `--serve-floor`.
async fn start_floor() -> (SocketAddr, u32, Guard) {
    start_floor_in(None).await
}

async fn start_floor_in(profile: Option<&Path>) -> (SocketAddr, u32, Guard) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let exe = std::env::current_exe().expect("own executable");
    let child = command(&exe, profile)
        .arg("--serve-floor")
        .arg(addr.to_string())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the floor server");
    let pid = child.id();
    let guard = Guard(child);
    let tries = if profile.is_some() { 8000 } else { 200 };
    for _ in 0..tries {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return (addr, pid, guard);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the floor server did not listen in time");
}

async fn channels(addr: SocketAddr, n: usize) -> Vec<tonic::transport::Channel> {
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        out.push(ch);
    }
    out
}

// --- measuring --------------------------------------------------------------

#[derive(Clone, Copy)]
struct RunResult {
    rate: f64,
    /// The server process's CPU time (user + system) per answered Check, in
    /// microseconds: what one Check costs the machine, whatever the
    /// scheduler made of the latencies.
    cpu_us: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    ok: u64,
    bad: u64,
}

fn check_request(token: &str, path: &str, n: usize) -> CheckRequest {
    let headers = vec![
        HeaderEntry::new("authorization", token),
        HeaderEntry::new("x-request-id", &format!("bench-{n}")),
    ];
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: path.to_string(),
                    host: "app.example.com".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    headers,
                    ..Default::default()
                }),
            }),
            context_extensions: Default::default(),
        }),
    }
}

fn allowed(r: &Result<tonic::Response<CheckResponse>, tonic::Status>) -> bool {
    matches!(r, Ok(r) if r.get_ref().status.as_ref().is_some_and(|s| s.code == 0))
}

/// Checks every token exactly once (the signature cache fills), spread over
/// the connections; returns how many were not allowed.
async fn warm_every_token(
    channels: &[tonic::transport::Channel],
    tokens: &Arc<Vec<String>>,
    args: &Args,
) -> u64 {
    let workers = args.concurrency.max(1);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut client = AuthorizationClient::new(channels[w % channels.len()].clone());
        let (tokens, path) = (tokens.clone(), args.path.clone());
        tasks.push(tokio::spawn(async move {
            let mut bad = 0u64;
            for i in (w..tokens.len()).step_by(workers) {
                if !allowed(&client.check(check_request(&tokens[i], &path, i)).await) {
                    bad += 1;
                }
            }
            bad
        }));
    }
    let mut bad = 0;
    for t in tasks {
        bad += t.await.unwrap_or(u64::MAX / 2);
    }
    bad
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
    let workers = args.concurrency.max(1);
    // With --rate, worker w sends its k-th call at start + (k + w/workers)
    // intervals (or at once when behind); latency is still measured from
    // the send.
    let interval = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(workers as f64 / r));
    for w in 0..workers {
        let mut client = AuthorizationClient::new(channels[w % channels.len()].clone());
        let (tokens, path) = (tokens.clone(), args.path.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let (mut ok, mut bad) = (0u64, 0u64);
            // Workers start spread over the token list, so that concurrent
            // calls are of different sessions, and each walks all of it.
            let mut i = w * tokens.len() / workers;
            let mut next = interval.map(|iv| start + iv.mul_f64(w as f64 / workers as f64));
            while Instant::now() < deadline {
                if let (Some(at), Some(iv)) = (next, interval) {
                    tokio::time::sleep_until(at.into()).await;
                    next = Some(at + iv);
                }
                let req = check_request(&tokens[i % tokens.len()], &path, i);
                i += 1;
                let t = Instant::now();
                let resp = client.check(req).await;
                lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                if allowed(&resp) {
                    ok += 1;
                } else {
                    bad += 1;
                }
            }
            (lat, ok, bad)
        }));
    }
    let mut all = Vec::new();
    let (mut ok, mut bad) = (0, 0);
    for t in tasks {
        match t.await {
            Ok((l, o, b)) => {
                all.extend(l);
                ok += o;
                bad += b;
            }
            Err(e) => {
                eprintln!("a load worker failed: {e}");
                bad += 1;
            }
        }
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
        cpu_us: 0.0,
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
        max: all.last().copied().unwrap_or(0) as f64 / 1000.0,
        ok,
        bad,
    }
}

/// One measured side: a name, its connections and its process.
struct Side {
    name: &'static str,
    channels: Vec<tonic::transport::Channel>,
    pid: u32,
    runs: Vec<RunResult>,
}

struct Summary {
    rate: f64,
    cpu_us: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    hwm_mib: f64,
    bad: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Side {
    fn summary(&self) -> Summary {
        let of = |f: fn(&RunResult) -> f64| median(self.runs.iter().map(f).collect());
        Summary {
            rate: of(|r| r.rate),
            cpu_us: of(|r| r.cpu_us),
            p50: of(|r| r.p50),
            p99: of(|r| r.p99),
            p999: of(|r| r.p999),
            hwm_mib: rss_of(self.pid).0 as f64 / 1024.0,
            bad: self.runs.iter().map(|r| r.bad).sum(),
        }
    }
}

fn print_run(i: usize, name: &str, r: &RunResult) {
    println!(
        "run {i} {name:<11} {:>8.0} checks/s  cpu {:>5.1} us/check  p50 {:>6.3} ms  p99 {:>6.3} ms  p99.9 {:>6.3} ms  max {:>7.3} ms  ok {} denied/errors {}",
        r.rate, r.cpu_us, r.p50, r.p99, r.p999, r.max, r.ok, r.bad
    );
}

fn print_summary(name: &str, s: &Summary) {
    println!(
        "{name:<11} median {:>8.0} checks/s  cpu {:.1} us/check  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  peak RSS {:.1} MiB",
        s.rate, s.cpu_us, s.p50, s.p99, s.p999, s.hwm_mib
    );
    if s.bad > 0 {
        println!(
            "{name:<11} WARNING: {} calls denied or failed; these figures are not of the allowed path",
            s.bad
        );
    }
}

/// Measures one token count against a fresh twofa-authz (and the floor, if
/// given), runs alternating; returns (twofa, floor) summaries.
async fn measure(
    args: &Args,
    fx: &Fixture,
    tokens: usize,
    floor: Option<(SocketAddr, u32)>,
) -> (Summary, Option<Summary>) {
    let tokens = Arc::new(fx.tokens[..tokens].to_vec());
    let server = start_twofa(args, fx, &format!("twofa-{}", tokens.len())).await;
    let mut sides = vec![Side {
        name: "twofa-authz",
        channels: channels(server.grpc, args.connections).await,
        pid: server.pid,
        runs: vec![],
    }];
    if let Some((addr, pid)) = floor {
        sides.push(Side {
            name: "floor",
            channels: channels(addr, args.connections).await,
            pid,
            runs: vec![],
        });
    }
    println!(
        "--- {} tokens, path {}, store {}, concurrency {}, connections {}, {} runs of {} s per side{}{}",
        tokens.len(),
        args.path,
        args.store,
        args.concurrency,
        args.connections,
        args.runs,
        args.duration,
        args.rate
            .map(|r| format!(", offered {r:.0} checks/s"))
            .unwrap_or_default(),
        args.token_capacity
            .map(|n| format!(", cache.token_capacity {n}"))
            .unwrap_or_default()
    );
    let started = Instant::now();
    let bad = warm_every_token(&sides[0].channels, &tokens, args).await;
    assert_eq!(
        bad,
        0,
        "{bad} of {} tokens were not allowed while warming up",
        tokens.len()
    );
    println!(
        "warm-up: each of the {} tokens checked once ({:.1} s)",
        tokens.len(),
        started.elapsed().as_secs_f64()
    );
    for side in &sides {
        // Connections hot, and the server past its first allocations.
        run(&side.channels, &tokens, args, Duration::from_secs(2)).await;
    }
    for i in 1..=args.runs {
        for side in &mut sides {
            let cpu_before = cpu_seconds(side.pid);
            let mut r = run(
                &side.channels,
                &tokens,
                args,
                Duration::from_secs(args.duration),
            )
            .await;
            let answered = (r.ok + r.bad).max(1) as f64;
            r.cpu_us = (cpu_seconds(side.pid) - cpu_before) * 1e6 / answered;
            print_run(i, side.name, &r);
            side.runs.push(r);
        }
    }
    let twofa = sides[0].summary();
    print_summary(sides[0].name, &twofa);
    let floor = sides.get(1).map(|f| {
        let s = f.summary();
        print_summary(f.name, &s);
        println!(
            "ratio twofa-authz/floor: {:.2} (checks/s)  cpu per check {:.2}x  p99 {:+.3} ms  p99.9 {:+.3} ms",
            twofa.rate / s.rate.max(1.0),
            twofa.cpu_us / s.cpu_us.max(f64::MIN_POSITIVE),
            twofa.p99 - s.p99,
            twofa.p999 - s.p999
        );
        s
    });
    (twofa, floor)
}

async fn bench(args: Args) {
    if let Some(file) = args.serve_stack.clone() {
        return serve_stack(&args, &file).await;
    }
    if let Some(n) = args.callgrind {
        return callgrind(&args, n.max(1)).await;
    }
    let counts: Vec<usize> = if args.scale {
        vec![1_000, 10_000, 100_000]
    } else {
        vec![args.tokens.max(1)]
    };
    let most = counts.iter().copied().max().unwrap_or(1);
    let fx = Fixture::start(&args, most).await;
    let (floor, _floor_guard) = if args.floor {
        let (addr, pid, guard) = start_floor().await;
        (Some((addr, pid)), Some(guard))
    } else {
        (None, None)
    };
    let mut results = Vec::new();
    for &n in &counts {
        let (twofa, floor) = measure(&args, &fx, n, floor).await;
        results.push((n, twofa, floor));
    }
    if results.len() > 1 {
        let base = results[0].1.rate.max(1.0);
        println!(
            "--- scale (cache.token_capacity {}):",
            args.token_capacity.map_or_else(
                || format!(
                    "{} (default)",
                    twofa_authz::token::DEFAULT_TOKEN_CACHE_CAPACITY
                ),
                |n| n.to_string()
            )
        );
        println!(
            "{:>8}  {:>12}  {:>8}  {:>8}  {:>10}  {:>9}  {:>11}",
            "tokens", "checks/s", "p99 ms", "p99.9 ms", "peak MiB", "ratio 1k", "twofa/floor"
        );
        for (n, t, f) in &results {
            println!(
                "{n:>8}  {:>12.0}  {:>8.3}  {:>8.3}  {:>10.1}  {:>9.2}  {:>11}",
                t.rate,
                t.p99,
                t.p999,
                t.hwm_mib,
                t.rate / base,
                f.as_ref().map_or("-".to_string(), |f| format!(
                    "{:.2}",
                    t.rate / f.rate.max(1.0)
                ))
            );
        }
    }
}

// --- instructions per Check (--callgrind) -----------------------------------

/// Sends exactly `count` Checks, `--concurrency` at a time; returns how many
/// were not allowed.
async fn run_count(
    channels: &[tonic::transport::Channel],
    tokens: &Arc<Vec<String>>,
    args: &Args,
    count: usize,
) -> u64 {
    let workers = args.concurrency.max(1);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut client = AuthorizationClient::new(channels[w % channels.len()].clone());
        let (tokens, path) = (tokens.clone(), args.path.clone());
        tasks.push(tokio::spawn(async move {
            let mut bad = 0u64;
            for i in (w..count).step_by(workers) {
                let req = check_request(&tokens[i % tokens.len()], &path, i);
                if !allowed(&client.check(req).await) {
                    bad += 1;
                }
            }
            bad
        }));
    }
    let mut bad = 0;
    for t in tasks {
        bad += t.await.unwrap_or(u64::MAX / 2);
    }
    bad
}

/// SIGTERM, so that valgrind writes its output as the process exits, and
/// wait for the exit.
fn stop(mut guard: Guard, pid: u32) {
    // SAFETY: kill(2) with a pid this process started and still owns.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = guard.0.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("process {pid} did not exit on SIGTERM; killed");
    drop(guard);
}

/// The total instruction count (`summary:` or `totals:`) of a callgrind file.
fn instructions(out: &Path) -> u64 {
    let text =
        std::fs::read_to_string(out).unwrap_or_else(|e| panic!("read {}: {e}", out.display()));
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no instruction total in {}", out.display()))
}

async fn callgrind(args: &Args, n: usize) {
    let fx = Fixture::start(args, args.tokens.max(1)).await;
    let dir = args
        .callgrind_dir
        .clone()
        .unwrap_or_else(|| fx.dir.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("callgrind dir");
    let tokens = fx.tokens.clone();
    let mut per_check = Vec::new();
    let sides: &[&str] = if args.floor {
        &["twofa-authz", "floor"]
    } else {
        &["twofa-authz"]
    };
    for &side in sides {
        let mut totals = Vec::new();
        for count in [n, 2 * n] {
            let out = dir.join(format!("callgrind.{side}.{count}.out"));
            let (addr, pid, guard) = if side == "floor" {
                start_floor_in(Some(&out)).await
            } else {
                let t = start_twofa_in(args, &fx, &format!("cg-{count}"), Some(&out)).await;
                (t.grpc, t.pid, t._child)
            };
            {
                let chans = channels(addr, args.connections).await;
                let bad = warm_every_token(&chans, &tokens, args).await;
                assert_eq!(bad, 0, "{side}: {bad} tokens not allowed while warming up");
                let bad = run_count(&chans, &tokens, args, count).await;
                assert_eq!(bad, 0, "{side}: {bad} of {count} Checks not allowed");
            }
            stop(guard, pid);
            let ir = instructions(&out);
            println!(
                "{side:<11} {count:>7} Checks after warm-up: {ir} instructions in all ({})",
                out.display()
            );
            totals.push(ir);
        }
        let each = totals[1].saturating_sub(totals[0]) as f64 / n as f64;
        println!("{side:<11} {each:>10.0} instructions per Check");
        per_check.push(each);
    }
    if let [twofa, floor] = per_check[..] {
        println!(
            "ratio instructions per Check twofa-authz/floor: {:.2} (+{:.0} per Check)",
            twofa / floor.max(1.0),
            twofa - floor
        );
    }
}

// --- the stack for scripts/bench-envoy.sh -----------------------------------

async fn serve_stack(args: &Args, file: &Path) {
    let fx = Fixture::start(args, args.tokens.max(1)).await;
    let server = start_twofa(args, &fx, "twofa").await;
    // The do-nothing upstream behind Envoy.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the upstream");
    let upstream_addr = upstream.local_addr().expect("addr");
    let app = axum::Router::new().fallback(|| async { "" });
    tokio::spawn(async move { axum::serve(upstream, app).await });
    // Shell-quotable: tokens and addresses hold no quote characters.
    let env = format!(
        "TWOFA_GRPC={}\nTWOFA_HTTP={}\nTWOFA_PID={}\nUPSTREAM={}\nISSUER={}\nTOKEN='{}'\n",
        server.grpc, server.http, server.pid, upstream_addr, fx.issuer, fx.tokens[0]
    );
    // Written whole, then renamed: a reader never sees half of it.
    let tmp = file.with_extension("partial");
    std::fs::write(&tmp, env).expect("write the stack file");
    std::fs::rename(&tmp, file).expect("rename the stack file");
    eprintln!("stack ready: {}", file.display());
    shutdown().await;
}

/// CPU seconds (user + system) the process has used, from /proc (clock
/// ticks of `sysconf(_SC_CLK_TCK)`, 100 on Linux); 0 when unreadable.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are the 14th and 15th fields of the line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
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
