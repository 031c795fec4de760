//! TOTP enrollment and use, recovery codes and secrets at rest (issue 4), on the
//! real binary with a real PostgreSQL and Redis. The code a user types is always
//! computed by an independent implementation (`oathtool`), and the QR code is read
//! by an independent decoder (`zbarimg`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use crate::support::app::{toml_strings, App, AppConfig};
use crate::support::http::{self, Response};
use crate::support::keycloak::{now, Token};
use crate::support::postgres::Postgres;
use crate::support::process::tool_path;
use crate::support::Stack;

// --- the rig -------------------------------------------------------------------

/// A stack whose database is a fresh PostgreSQL cluster.
pub struct PgStack {
    pub stack: Stack,
    pub pg: Postgres,
}

pub async fn pg_stack(tweak: impl FnOnce(&mut AppConfig)) -> PgStack {
    let pg = Postgres::start().await;
    let url = pg.url();
    let stack = Stack::start_with(None, |c| {
        c.set_str("storage", "database_url", &url);
        tweak(c);
    })
    .await;
    PgStack { stack, pg }
}

/// A request to twofa-authz's HTTP listener with the token and, unless None, a
/// JSON body.
pub async fn call(
    addr: &str,
    method: &str,
    path: &str,
    token: &Token,
    body: Option<Value>,
) -> Response {
    let mut req = http::request(method, addr, path).bearer(&token.jwt);
    if let Some(b) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    req.send().await
}

fn explain(app: &App, what: &str, r: &Response) -> String {
    let log = app.log();
    let lines: Vec<&str> = log.lines().collect();
    format!(
        "{what}: status {} body {}\n--- twofa-authz log (tail) ---\n{}",
        r.status,
        r.text(),
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

#[track_caller]
fn expect(app: &App, what: &str, r: &Response, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", explain(app, what, r));
    if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    }
}

#[track_caller]
fn expect_problem(app: &App, what: &str, r: &Response, status: u16, code: &str) -> Value {
    let body = expect(app, what, r, status);
    assert_eq!(body["code"], code, "{}", explain(app, what, r));
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/problem+json"),
        "{}",
        explain(app, what, r)
    );
    body
}

/// A user of the stand-in Keycloak with a profile, and a session of theirs.
pub async fn new_user(stack: &Stack, username: &str) -> Token {
    let token = stack.keycloak.token().user(username).build();
    let r = call(stack.app.http_addr(), "POST", "/user", &token, None).await;
    expect(&stack.app, "POST /user", &r, 201);
    token
}

/// Another Keycloak session of the same user.
pub fn other_session(stack: &Stack, username: &str) -> Token {
    stack.keycloak.token().user(username).build()
}

/// What `POST /user/generate-totp` answered.
#[derive(Debug, Clone)]
pub struct Generated {
    pub secret: String,
    pub uri: String,
    pub qr_png: Vec<u8>,
    pub qr_svg: String,
    pub expires_at: i64,
}

pub async fn generate(app: &App, token: &Token) -> Generated {
    let r = call(app.http_addr(), "POST", "/user/generate-totp", token, None).await;
    let b = expect(app, "generate-totp", &r, 201);
    Generated {
        secret: b["secret"].as_str().expect("secret").to_owned(),
        uri: b["otpauth_uri"].as_str().expect("otpauth_uri").to_owned(),
        qr_png: STANDARD
            .decode(b["qr_png"].as_str().expect("qr_png"))
            .expect("qr_png is base64"),
        qr_svg: b["qr_svg"].as_str().expect("qr_svg").to_owned(),
        expires_at: b["expires_at"]
            .as_i64()
            .expect("expires_at is unix seconds"),
    }
}

/// The parameters an authenticator app reads from an otpauth URI.
#[derive(Debug, Clone)]
pub struct UriParams {
    pub label: String,
    pub secret: String,
    pub issuer: String,
    pub algorithm: String,
    pub digits: u32,
    pub period: u64,
}

pub fn parse_uri(uri: &str) -> UriParams {
    let u = url::Url::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
    assert_eq!(u.scheme(), "otpauth", "{uri}");
    assert_eq!(u.host_str(), Some("totp"), "{uri}");
    let q: std::collections::HashMap<String, String> = u.query_pairs().into_owned().collect();
    let label = percent_encoding::percent_decode_str(u.path().trim_start_matches('/'))
        .decode_utf8()
        .unwrap()
        .into_owned();
    UriParams {
        label,
        secret: q.get("secret").cloned().expect("secret="),
        issuer: q.get("issuer").cloned().expect("issuer="),
        algorithm: q.get("algorithm").cloned().expect("algorithm="),
        digits: q.get("digits").expect("digits=").parse().unwrap(),
        period: q.get("period").expect("period=").parse().unwrap(),
    }
}

/// The code an authenticator app shows at unix time `at`, computed by oathtool.
pub fn oathtool(p: &UriParams, at: i64) -> String {
    let tool = tool_path("TWOFA_TEST_OATHTOOL", &["oathtool"]);
    let out = Command::new(&tool)
        .arg(format!("--totp={}", p.algorithm.to_ascii_lowercase()))
        .arg(format!("--digits={}", p.digits))
        .arg(format!("--time-step-size={}s", p.period))
        .arg(format!("--now=@{at}"))
        .arg("-b")
        .arg(&p.secret)
        .output()
        .unwrap_or_else(|e| panic!("run {tool:?}: {e}"));
    assert!(
        out.status.success(),
        "oathtool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// What zbarimg reads from a PNG.
pub fn zbarimg(png: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qr.png");
    std::fs::write(&path, png).unwrap();
    let tool = tool_path("TWOFA_TEST_ZBARIMG", &["zbarimg"]);
    let out = Command::new(&tool)
        .args(["--raw", "-q"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("run {tool:?}: {e}"));
    assert!(
        out.status.success(),
        "zbarimg found no code ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end_matches('\n')
        .to_owned()
}

pub async fn verify_totp(app: &App, token: &Token, code: &str, is_new_seed: bool) -> Response {
    call(
        app.http_addr(),
        "POST",
        "/user/verify-totp",
        token,
        Some(json!({ "totp": code, "is_new_seed": is_new_seed })),
    )
    .await
}

pub async fn verify_recovery(app: &App, token: &Token, code: &str) -> Response {
    call(
        app.http_addr(),
        "POST",
        "/user/verify-recovery-code",
        token,
        Some(json!({ "code": code })),
    )
    .await
}

pub async fn profile(app: &App, token: &Token) -> Value {
    let r = call(app.http_addr(), "GET", "/user", token, None).await;
    expect(app, "GET /user", &r, 200)
}

/// An enrolled user: generate (with a verified session, since the token's
/// Keycloak-verified email already is a factor), confirm with oathtool's code.
pub struct Enrolled {
    pub token: Token,
    pub params: UriParams,
    pub generated: Generated,
    pub recovery_codes: Vec<String>,
    /// The unix time whose code confirmed the enrollment.
    pub at: i64,
}

pub async fn enroll(stack: &Stack, app: &App, username: &str) -> Enrolled {
    enroll_ahead(stack, app, username, 0).await
}

/// [`enroll`] with the code of `steps` time steps ahead (within `totp.skew`).
/// The last accepted step is kept per user across re-enrollment, so a user
/// who enrolls again within the same step needs the next code.
pub async fn enroll_ahead(stack: &Stack, app: &App, username: &str, steps: i64) -> Enrolled {
    let token = stack.keycloak.token().user(username).build();
    let r = call(app.http_addr(), "POST", "/user", &token, None).await;
    assert!(
        r.status == 201 || r.status == 409,
        "{}",
        explain(app, "POST /user", &r)
    );
    stack.mark_verified(&token, "email", now()).await;
    let generated = generate(app, &token).await;
    let params = parse_uri(&generated.uri);
    let at = now() + steps * params.period as i64;
    let code = oathtool(&params, at);
    let r = verify_totp(app, &token, &code, true).await;
    let body = expect(app, "verify-totp (new seed)", &r, 200);
    assert_eq!(body["verified"], true);
    let recovery_codes = body["recovery_codes"]
        .as_array()
        .expect("recovery_codes on enrollment")
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    Enrolled {
        token,
        params,
        generated,
        recovery_codes,
        at,
    }
}

/// Runs the binary's administrator command with `config`; (exit code, output).
pub fn admin(config: &AppConfig, args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twofa.toml");
    std::fs::write(&path, config.render()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twofa-authz"));
    cmd.args(args)
        .arg("--config")
        .arg(&path)
        .current_dir(dir.path())
        .env("NO_COLOR", "1");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TWOFA_") {
            cmd.env_remove(name);
        }
    }
    let out = cmd.output().expect("run twofa-authz");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn pg_tool(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("TWOFA_TEST_PG_BINDIR") {
        return Path::new(&dir).join(name);
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    dirs.sort();
    dirs.pop().expect("no PostgreSQL client tools").1.join(name)
}

/// Every row of every table, as `pg_dump --data-only` writes it.
pub fn pg_dump(pg: &Postgres) -> String {
    let out = Command::new(pg_tool("pg_dump"))
        .args([
            "--data-only",
            "--no-owner",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .arg("-p")
        .arg(pg.port().to_string())
        .arg("postgres")
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rows of a query, one per line (`psql -At`).
pub fn psql(pg: &Postgres, sql: &str) -> String {
    let out = Command::new(pg_tool("psql"))
        .args(["-At", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
        .arg("-p")
        .arg(pg.port().to_string())
        .arg("-c")
        .arg(sql)
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The forms in which a leaked secret could appear in storage: base32 as
/// shown, lower case, hex and raw bytes (as Postgres prints bytea).
fn secret_forms(base32: &str) -> Vec<String> {
    let bytes = decode_base32(base32);
    vec![
        base32.to_owned(),
        base32.to_ascii_lowercase(),
        hex(&bytes),
        STANDARD.encode(&bytes),
    ]
}

fn decode_base32(s: &str) -> Vec<u8> {
    const A: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.trim_end_matches('=').chars() {
        buf = (buf << 5) | A.find(c.to_ascii_uppercase()).expect("base32") as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
        buf &= (1 << bits) - 1;
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// --- the tests -----------------------------------------------------------------

/// For each algorithm and digit count: the QR code reads back (zbarimg) as the
/// URI, the URI says what the server verifies, and oathtool's code from that URI's
/// secret enrolls and later verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_qr_and_independent_codes_for_each_algorithm() {
    let PgStack { stack, pg: _pg } = pg_stack(|_| {}).await;
    for (algorithm, digits, period, secret_bytes) in [
        ("SHA1", 6, 30, 20),
        ("SHA1", 8, 30, 20),
        ("SHA256", 6, 30, 32),
        ("SHA256", 8, 60, 32),
        ("SHA512", 8, 30, 64),
    ] {
        let mut config = stack.config.clone();
        config
            .set_str("totp", "algorithm", algorithm)
            .set("totp", "digits", digits.to_string())
            .set("totp", "period", period.to_string())
            .set_str("totp", "issuer", "ACME Corp");
        let app = App::start(&config).await;
        let username = format!("user-{}-{digits}-{period}", algorithm.to_lowercase());
        let what = format!("{algorithm}/{digits}/{period}s");

        let token = new_user(&stack, &username).await;
        stack.mark_verified(&token, "email", now()).await;
        let g = generate(&app, &token).await;

        // The QR code says exactly the URI.
        assert_eq!(zbarimg(&g.qr_png), g.uri, "{what}: QR PNG");
        assert!(g.qr_svg.contains("<svg"), "{what}: qr_svg");
        let p = parse_uri(&g.uri);
        assert_eq!(p.secret, g.secret, "{what}");
        assert_eq!(p.algorithm, algorithm, "{what}");
        assert_eq!(p.digits, digits, "{what}");
        assert_eq!(p.period, period, "{what}");
        assert_eq!(p.issuer, "ACME Corp", "{what}");
        assert_eq!(p.label, format!("ACME Corp:{username}"), "{what}");
        assert!(
            g.uri.starts_with("otpauth://totp/ACME%20Corp:"),
            "{}",
            g.uri
        );
        assert!(!g.secret.contains('='), "{what}: unpadded base32");
        assert_eq!(decode_base32(&g.secret).len(), secret_bytes, "{what}");
        let t = now();
        assert!(
            (t + 590..=t + 601).contains(&g.expires_at),
            "{what}: expires_at {} (now {t}, pending_totp_ttl 10m)",
            g.expires_at
        );

        // Enrollment with oathtool's code.
        let at = now();
        let code = oathtool(&p, at);
        assert_eq!(code.len(), digits as usize);
        let r = verify_totp(&app, &token, &code, true).await;
        let body = expect(&app, &format!("{what}: confirm"), &r, 200);
        assert_eq!(body["verified"], true);
        assert_eq!(body["recovery_codes"].as_array().unwrap().len(), 10);
        let prof = profile(&app, &token).await;
        assert_eq!(prof["totp_enabled"], true, "{what}: {prof}");
        assert_eq!(prof["recovery_codes_remaining"], 10, "{what}: {prof}");
        assert_eq!(prof["session"]["second_factor"], "totp", "{what}: {prof}");
        assert!(
            prof["methods"].as_array().unwrap().contains(&json!("totp")),
            "{what}: {prof}"
        );

        // A later code, in another session, verifies the enrolled secret and
        // marks that session.
        let later = other_session(&stack, &username);
        let code = oathtool(&p, at + period as i64);
        let r = verify_totp(&app, &later, &code, false).await;
        let body = expect(&app, &format!("{what}: verify"), &r, 200);
        assert_eq!(body["verified"], true);
        assert!(body.get("recovery_codes").is_none() || body["recovery_codes"].is_null());
        let prof = profile(&app, &later).await;
        assert_eq!(prof["session"]["second_factor"], "totp", "{what}: {prof}");
    }
}

/// A code (time step) accepted once is never accepted again, for the same or an
/// earlier step, and of N parallel requests with one fresh code exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_replay_rejected_also_in_parallel() {
    let PgStack { stack, pg: _pg } = pg_stack(|c| {
        c.set("security", "max_attempts", "50");
    })
    .await;
    let app = &stack.app;
    let e = enroll(&stack, app, "replay").await;
    let code0 = oathtool(&e.params, e.at);

    // The enrollment code again: a replay.
    let r = verify_totp(app, &e.token, &code0, false).await;
    expect_problem(app, "replayed enrollment code", &r, 400, "invalid_code");

    // The next step's code, twenty times at once: exactly one succeeds.
    let code1 = oathtool(&e.params, e.at + 30);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let session = other_session(&stack, "replay");
        let addr = app.http_addr().to_owned();
        let code = code1.clone();
        tasks.push(tokio::spawn(async move {
            call(
                &addr,
                "POST",
                "/user/verify-totp",
                &session,
                Some(json!({ "totp": code, "is_new_seed": false })),
            )
            .await
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 1, "parallel statuses: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 400),
        "{statuses:?}"
    );

    // The earlier step is now behind the accepted one: refused as well.
    let r = verify_totp(app, &e.token, &code0, false).await;
    expect_problem(app, "an older step", &r, 400, "invalid_code");

    // The last accepted step is kept in the database: a Redis flush does not
    // reopen it.
    let mut con = stack.redis.connection().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    let r = verify_totp(app, &e.token, &code1, false).await;
    expect_problem(app, "replay after a Redis flush", &r, 400, "invalid_code");
}

/// Wrong TOTP and recovery codes draw on one attempt budget per user; once it
/// is spent even the right code is refused with 429 and Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_share_the_attempt_budget_and_lock_out() {
    let PgStack { stack, pg: _pg } = pg_stack(|c| {
        c.set("security", "max_attempts", "3")
            .set_str("security", "lockout", "1m");
    })
    .await;
    let app = &stack.app;
    let e = enroll(&stack, app, "budget").await;
    let s = other_session(&stack, "budget");
    let wrong_totp = if e.params.digits == 6 {
        "000000"
    } else {
        "00000000"
    };
    let good_code = oathtool(&e.params, e.at + 30);
    let wrong_totp = if wrong_totp == good_code {
        "111111"
    } else {
        wrong_totp
    };

    let r = verify_totp(app, &s, wrong_totp, false).await;
    let b = expect_problem(app, "wrong TOTP 1", &r, 400, "invalid_code");
    assert_eq!(b["attempts_remaining"], 2, "{b}");
    let r = verify_recovery(app, &s, "AAAA-BBBB-CCCC-DDDD-EEEE").await;
    let b = expect_problem(app, "wrong recovery code", &r, 400, "invalid_code");
    assert_eq!(b["attempts_remaining"], 1, "{b}");
    let r = verify_totp(app, &s, wrong_totp, false).await;
    assert!(
        r.status == 429 || (r.status == 400 && r.json()["attempts_remaining"] == 0),
        "{}",
        explain(app, "wrong TOTP 3", &r)
    );
    // Locked out: the right TOTP code and a right recovery code are refused.
    let r = verify_totp(app, &s, &good_code, false).await;
    expect_problem(
        app,
        "right code while locked out",
        &r,
        429,
        "too_many_attempts",
    );
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let r = verify_recovery(app, &s, &e.recovery_codes[0]).await;
    expect_problem(
        app,
        "recovery code while locked out",
        &r,
        429,
        "too_many_attempts",
    );
    let prof = profile(app, &e.token).await;
    assert_eq!(
        prof["recovery_codes_remaining"], 10,
        "nothing spent: {prof}"
    );
}

/// After `security.max_consecutive_failures` wrong codes in a row every
/// verification answers 423 until `reset-user`, which also removes TOTP and the
/// recovery codes so that the user can enroll again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_lock_the_factor_until_reset_user() {
    let PgStack { stack, pg: _pg } = pg_stack(|c| {
        c.set("security", "max_attempts", "100")
            .set("security", "max_consecutive_failures", "3");
    })
    .await;
    let app = &stack.app;
    let e = enroll(&stack, app, "locked").await;
    let s = other_session(&stack, "locked");
    for i in 0..3 {
        let r = verify_recovery(app, &s, "AAAA-BBBB-CCCC-DDDD-EEEE").await;
        assert!(
            r.status == 400 || r.status == 423,
            "{}",
            explain(app, &format!("wrong code {i}"), &r)
        );
    }
    let good = oathtool(&e.params, e.at + 30);
    let r = verify_totp(app, &s, &good, false).await;
    expect_problem(app, "TOTP when locked", &r, 423, "factor_locked");
    let r = verify_recovery(app, &s, &e.recovery_codes[0]).await;
    expect_problem(app, "recovery code when locked", &r, 423, "factor_locked");

    let (code, out) = admin(&stack.config, &["reset-user", e.token.sub()]);
    assert_eq!(code, 0, "reset-user: {out}");
    let lower = out.to_lowercase();
    assert!(
        lower.contains("totp"),
        "reset-user says what it removed: {out}"
    );
    assert!(
        lower.contains("recovery"),
        "reset-user says what it removed: {out}"
    );

    let fresh = other_session(&stack, "locked");
    let prof = profile(app, &fresh).await;
    assert_eq!(prof["totp_enabled"], false, "{prof}");
    assert_eq!(prof["recovery_codes_remaining"], 0, "{prof}");
    let r = verify_totp(app, &fresh, &good, false).await;
    expect_problem(app, "TOTP after reset", &r, 404, "totp_not_enabled");
    // The user enrolls again (with the next step's code: the step accepted
    // at the first enrollment stays used).
    let again = enroll_ahead(&stack, app, "locked", 1).await;
    assert_eq!(again.recovery_codes.len(), 10);
}

/// A recovery code verifies once (case, spaces and dashes ignored) and marks the
/// session with `recovery`; regenerating replaces the old set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_codes_are_spent_once_and_regenerated() {
    let PgStack { stack, pg: _pg } = pg_stack(|c| {
        c.set("security", "max_attempts", "50")
            .set("security", "recovery_code_count", "6");
    })
    .await;
    let app = &stack.app;
    let e = enroll(&stack, app, "recover").await;
    assert_eq!(e.recovery_codes.len(), 6);
    for c in &e.recovery_codes {
        let groups: Vec<&str> = c.split('-').collect();
        assert!(
            groups.len() >= 4 && groups.iter().all(|g| g.len() == 4),
            "{c}"
        );
        assert!(
            !c.chars().any(|ch| "01OIL".contains(ch)),
            "{c} has a look-alike character"
        );
    }

    let s1 = other_session(&stack, "recover");
    let sloppy = e.recovery_codes[0].to_lowercase().replace('-', " ");
    let r = verify_recovery(app, &s1, &sloppy).await;
    let b = expect(app, "recovery code", &r, 200);
    assert_eq!(b["verified"], true);
    assert_eq!(b["recovery_codes_remaining"], 5);
    let prof = profile(app, &s1).await;
    assert_eq!(prof["session"]["second_factor"], "recovery", "{prof}");
    assert_eq!(prof["recovery_codes_remaining"], 5, "{prof}");

    // Spent: refused in any later session.
    let s2 = other_session(&stack, "recover");
    let r = verify_recovery(app, &s2, &e.recovery_codes[0]).await;
    expect_problem(app, "spent code", &r, 400, "invalid_code");

    // One code, eight requests at once: exactly one wins.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = other_session(&stack, "recover");
        let addr = app.http_addr().to_owned();
        let code = e.recovery_codes[1].clone();
        tasks.push(tokio::spawn(async move {
            call(
                &addr,
                "POST",
                "/user/verify-recovery-code",
                &s,
                Some(json!({ "code": code })),
            )
            .await
            .status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    let prof = profile(app, &s2).await;
    assert_eq!(prof["recovery_codes_remaining"], 4, "{prof}");

    // Regenerating needs a verified session.
    let r = call(app.http_addr(), "POST", "/user/recovery-codes", &s2, None).await;
    expect_problem(
        app,
        "regenerate unverified",
        &r,
        403,
        "second_factor_required",
    );
    let r = call(app.http_addr(), "POST", "/user/recovery-codes", &s1, None).await;
    let b = expect(app, "regenerate", &r, 201);
    let fresh: Vec<String> = b["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fresh.len(), 6);
    let r = verify_recovery(app, &s2, &e.recovery_codes[2]).await;
    expect_problem(
        app,
        "an old code after regenerating",
        &r,
        400,
        "invalid_code",
    );
    let r = verify_recovery(app, &s2, &fresh[0]).await;
    expect(app, "a new code", &r, 200);
}

/// The enrollment routes: a verified session where a factor exists, 409 while
/// enabled, 404s without a pending or enrolled secret, DELETE needing a verified
/// session, and a pending secret that lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_rules() {
    let PgStack { stack, pg: _pg } = pg_stack(|c| {
        c.set_str("security", "pending_totp_ttl", "2s");
    })
    .await;
    let app = &stack.app;

    // No profile yet.
    let stranger = stack.keycloak.token().user("stranger").build();
    let r = call(
        app.http_addr(),
        "POST",
        "/user/generate-totp",
        &stranger,
        None,
    )
    .await;
    expect_problem(app, "no profile", &r, 404, "profile_not_found");

    // The Keycloak-verified email is a factor: a password alone may not bind an
    // authenticator.
    let t = new_user(&stack, "rules").await;
    let r = call(app.http_addr(), "POST", "/user/generate-totp", &t, None).await;
    expect_problem(
        app,
        "generate unverified",
        &r,
        403,
        "second_factor_required",
    );

    // Nothing pending / nothing enrolled.
    let r = verify_totp(app, &t, "123456", true).await;
    expect_problem(app, "confirm without pending", &r, 404, "no_pending_totp");
    let r = verify_totp(app, &t, "123456", false).await;
    expect_problem(app, "verify without TOTP", &r, 404, "totp_not_enabled");

    // A pending secret lapses after pending_totp_ttl.
    stack.mark_verified(&t, "email", now()).await;
    let g = generate(app, &t).await;
    assert!(g.expires_at <= now() + 3);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let code = oathtool(&parse_uri(&g.uri), now());
    let r = verify_totp(app, &t, &code, true).await;
    expect_problem(app, "confirm after expiry", &r, 404, "no_pending_totp");

    // Bad bodies.
    let r = call(
        app.http_addr(),
        "POST",
        "/user/verify-totp",
        &t,
        Some(json!({ "totp": "123456" })),
    )
    .await;
    expect_problem(app, "missing is_new_seed", &r, 422, "invalid_request");
    let r = call(
        app.http_addr(),
        "POST",
        "/user/verify-recovery-code",
        &t,
        Some(json!({ "code": 5 })),
    )
    .await;
    expect_problem(app, "code of the wrong type", &r, 422, "invalid_request");

    // Enroll; now generate is 409.
    let e = enroll(&stack, app, "rules").await;
    let r = call(
        app.http_addr(),
        "POST",
        "/user/generate-totp",
        &e.token,
        None,
    )
    .await;
    expect_problem(
        app,
        "generate while enabled",
        &r,
        409,
        "totp_already_enabled",
    );

    // DELETE needs a verified session.
    let unverified = other_session(&stack, "rules");
    let r = call(app.http_addr(), "DELETE", "/user/totp", &unverified, None).await;
    expect_problem(app, "delete unverified", &r, 403, "second_factor_required");
    let r = call(app.http_addr(), "DELETE", "/user/totp", &e.token, None).await;
    assert_eq!(r.status, 204, "{}", explain(app, "delete", &r));
    let prof = profile(app, &e.token).await;
    assert_eq!(prof["totp_enabled"], false, "{prof}");
    assert!(
        !prof["methods"].as_array().unwrap().contains(&json!("totp")),
        "{prof}"
    );
    let r = call(app.http_addr(), "DELETE", "/user/totp", &e.token, None).await;
    expect_problem(app, "delete again", &r, 404, "totp_not_enabled");
    // And it can be enrolled again.
    let g = generate(app, &e.token).await;
    assert_ne!(g.secret, e.generated.secret);
}

/// No TOTP secret and no recovery code is stored in plaintext, in PostgreSQL
/// (read with pg_dump), in Redis (the pending secret), or in SQLite (the file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_secret_at_rest() {
    let PgStack { stack, pg } = pg_stack(|_| {}).await;
    let app = &stack.app;

    // A pending secret, in Redis.
    let t = new_user(&stack, "pending").await;
    stack.mark_verified(&t, "email", now()).await;
    let g = generate(app, &t).await;
    let mut con = stack.redis.connection().await;
    let keys = stack.redis.keys().await;
    let mut dump = String::new();
    for k in &keys {
        assert!(k.starts_with("twofa:"), "unprefixed Redis key {k}");
        let ttl: i64 = redis::cmd("TTL")
            .arg(k)
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(ttl > 0, "Redis key {k} has no TTL");
        let kind: String = redis::cmd("TYPE")
            .arg(k)
            .query_async(&mut con)
            .await
            .unwrap();
        if kind == "string" {
            let v: Vec<u8> = redis::cmd("GET")
                .arg(k)
                .query_async(&mut con)
                .await
                .unwrap();
            dump.push_str(&String::from_utf8_lossy(&v));
        }
    }
    for form in secret_forms(&g.secret) {
        assert!(!dump.contains(&form), "pending secret in Redis as {form}");
    }

    // Enrolled secret and recovery codes, in PostgreSQL.
    let e = enroll(&stack, app, "atrest").await;
    let dump = pg_dump(&pg);
    assert!(
        dump.contains(e.token.sub()),
        "the dump holds the user's rows: {dump}"
    );
    for form in secret_forms(&e.generated.secret) {
        assert!(!dump.contains(&form), "TOTP secret in PostgreSQL as {form}");
    }
    for c in &e.recovery_codes {
        assert!(
            !dump.contains(c.as_str()),
            "recovery code {c} in PostgreSQL"
        );
        let bare = c.replace('-', "");
        assert!(!dump.contains(&bare), "recovery code {bare} in PostgreSQL");
        assert!(!dump.to_lowercase().contains(&bare.to_lowercase()));
    }
    assert!(
        dump.contains("$argon2id$"),
        "recovery codes hashed with Argon2id"
    );
    // The row itself: a ciphertext (nonce, sealed secret, tag) and the key id.
    let row = psql(
        &pg,
        &format!(
            "SELECT key_id, encode(ciphertext, 'hex') FROM totp_secret WHERE sub = '{}'",
            e.token.sub()
        ),
    );
    let (key_id, ct_hex) = row.split_once('|').expect("one TOTP row");
    assert_eq!(key_id, "test1");
    assert!(ct_hex.len() / 2 >= 12 + 20 + 16, "{row}");
    assert!(!ct_hex.contains(&hex(&decode_base32(&e.generated.secret))));
    let hashes = psql(
        &pg,
        &format!(
            "SELECT hash FROM recovery_code WHERE sub = '{}'",
            e.token.sub()
        ),
    );
    assert_eq!(hashes.lines().count(), 10);
    assert!(
        hashes.lines().all(|h| h.starts_with("$argon2id$v=19$")),
        "{hashes}"
    );

    // The same with the embedded SQLite store.
    let mut config = stack.config.clone();
    config.set_str("storage", "database_url", "sqlite://twofa.db");
    let lite = App::start(&config).await;
    let e = enroll(&stack, &lite, "atrest-sqlite").await;
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(lite.dir()).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("twofa.db") {
            bytes.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert!(
        text.contains("$argon2id$"),
        "the SQLite file holds the hashes"
    );
    let raw = decode_base32(&e.generated.secret);
    for form in secret_forms(&e.generated.secret) {
        assert!(!text.contains(&form), "TOTP secret in SQLite as {form}");
    }
    assert!(
        !bytes.windows(raw.len()).any(|w| w == raw.as_slice()),
        "raw TOTP secret bytes in SQLite"
    );
    for c in &e.recovery_codes {
        assert!(
            !text.contains(&c.replace('-', "")),
            "recovery code in SQLite"
        );
    }
}

/// Key rotation: with a new first key, secrets sealed under the old one still
/// verify; `migrate --reencrypt` rewrites them under the new key, after which the
/// old key can go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_and_migrate_reencrypt() {
    let old_key = format!("old:{}", STANDARD.encode([1u8; 32]));
    let new_key = format!("new:{}", STANDARD.encode([2u8; 32]));
    let PgStack { mut stack, pg } = pg_stack(|c| {
        c.set("security", "encryption_keys", toml_strings(&[&old_key]))
            // Codes of two steps ahead stay valid however fast this runs.
            .set("totp", "skew", "2");
    })
    .await;
    let e = enroll(&stack, &stack.app, "rotate").await;
    let e2 = enroll(&stack, &stack.app, "rotate2").await;
    stack.app.stop();

    // Both keys, the new one first.
    let mut both = stack.config.clone();
    both.set(
        "security",
        "encryption_keys",
        toml_strings(&[&new_key, &old_key]),
    );
    let app = App::start(&both).await;
    let s = other_session(&stack, "rotate");
    let r = verify_totp(&app, &s, &oathtool(&e.params, e.at + 30), false).await;
    expect(&app, "old-key secret under the rotated ring", &r, 200);
    // A secret enrolled now is sealed under the new key.
    let e3 = enroll(&stack, &app, "rotate3").await;
    drop(app);

    let (code, out) = admin(&both, &["migrate", "--reencrypt"]);
    assert_eq!(code, 0, "migrate --reencrypt: {out}");
    assert!(
        out.contains("re-encrypted 2 TOTP secret(s) under key `new`; 1 already under it"),
        "migrate --reencrypt says how many it rewrote: {out}"
    );
    // Idempotent: nothing left to do.
    let (code, out2) = admin(&both, &["migrate", "--reencrypt"]);
    assert_eq!(code, 0, "{out2}");
    assert!(
        out2.contains("re-encrypted 0 TOTP secret(s) under key `new`; 3 already under it"),
        "second run rewrites nothing: {out2}"
    );

    // Only the new key now: everything still verifies.
    let mut only_new = stack.config.clone();
    only_new.set("security", "encryption_keys", toml_strings(&[&new_key]));
    let app = App::start(&only_new).await;
    for (who, en, at) in [
        ("rotate", &e, e.at + 60),
        ("rotate2", &e2, e2.at + 30),
        ("rotate3", &e3, e3.at + 30),
    ] {
        let s = other_session(&stack, who);
        let r = verify_totp(&app, &s, &oathtool(&en.params, at), false).await;
        expect(&app, &format!("{who} under the new key only"), &r, 200);
    }
    assert_eq!(
        psql(&pg, "SELECT key_id FROM totp_secret ORDER BY key_id"),
        "new\nnew\nnew",
        "every TOTP row is under the new key"
    );
}

/// With `security.notify_changes`, enrolling TOTP, regenerating recovery codes
/// and removing TOTP each send the user a notice (real SMTP server), without any
/// code or secret in it; the whole flow behind a verified email login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factor_changes_are_notified_by_email() {
    let us = crate::user_common::UserStack::start(|_| {}).await;
    let app = &us.stack.app;
    let alice = us.alice();
    us.create_profile(&alice).await;
    // The Keycloak-verified email is a factor: pass it first.
    let r = call(app.http_addr(), "POST", "/user/generate-totp", &alice, None).await;
    expect_problem(
        app,
        "generate before login",
        &r,
        403,
        "second_factor_required",
    );
    us.login_by_email(&alice, "alice@example.com").await;
    let seen = us.smtp.messages_to("alice@example.com").len();

    let g = generate(app, &alice).await;
    let p = parse_uri(&g.uri);
    let r = verify_totp(app, &alice, &oathtool(&p, now()), true).await;
    let body = expect(app, "confirm", &r, 200);
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "recovery codes are not cached"
    );
    let codes: Vec<String> = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let mail = us.smtp.wait_for("alice@example.com", seen + 1).await;
    assert!(
        mail.subject.contains("authenticator app was added"),
        "{}",
        mail.subject
    );
    for text in [&mail.text, &mail.html] {
        assert!(!text.contains(&g.secret));
        assert!(codes.iter().all(|c| !text.contains(c.as_str())));
    }

    let r = call(
        app.http_addr(),
        "POST",
        "/user/recovery-codes",
        &alice,
        None,
    )
    .await;
    let body = expect(app, "regenerate", &r, 201);
    let mail = us.smtp.wait_for("alice@example.com", seen + 2).await;
    assert!(mail.subject.contains("recovery codes"), "{}", mail.subject);
    for c in body["recovery_codes"].as_array().unwrap() {
        assert!(!mail.text.contains(c.as_str().unwrap()));
    }

    let r = call(app.http_addr(), "DELETE", "/user/totp", &alice, None).await;
    assert_eq!(r.status, 204, "{}", explain(app, "delete", &r));
    let mail = us.smtp.wait_for("alice@example.com", seen + 3).await;
    assert!(
        mail.subject.contains("authenticator app was removed"),
        "{}",
        mail.subject
    );

    // The metrics count the TOTP verification.
    let metrics = us.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("twofa_verifications_total{")
                && l.contains("method=\"totp\"")
                && l.contains("result=\"success\"")),
        "{metrics}"
    );
    us.assert_no_violations();
}
