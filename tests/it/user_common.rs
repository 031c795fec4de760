//! What the `/user` tests share: a stack with the real binary, real Redis, a
//! real PostgreSQL database of its own, a real SMTP server, and stand-ins for
//! Twilio and the Keycloak Admin API, plus the steps most tests take.

use std::process::Command;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::app::AppConfig;
use crate::support::http::{self, Response};
use crate::support::kc_admin::{self, KcAdmin};
use crate::support::keycloak::{Token, REALM};
use crate::support::postgres::Postgres;
use crate::support::smtp::{Mail, SmtpServer};
use crate::support::twilio::{self, Sms, Twilio};
use crate::support::{Proxy, Stack};

pub const FROM: &str = "2FA Test <no-reply@example.com>";
pub const ALICE_MOBILE: &str = "+14155550123";
/// `security.otp_resend_interval` of these stacks, plus a margin.
pub const RESEND_INTERVAL: Duration = Duration::from_millis(1100);

/// One PostgreSQL cluster shared by the tests that run at the same time (each
/// gets a database of its own); it stops when the last of them is done.
async fn shared_postgres() -> Arc<Postgres> {
    static SHARED: OnceLock<tokio::sync::Mutex<Weak<Postgres>>> = OnceLock::new();
    let mut slot = SHARED
        .get_or_init(|| tokio::sync::Mutex::new(Weak::new()))
        .lock()
        .await;
    if let Some(pg) = slot.upgrade() {
        return pg;
    }
    let pg = Arc::new(Postgres::start().await);
    *slot = Arc::downgrade(&pg);
    pg
}

/// A fresh database in `pg`; returns its URL.
pub async fn create_database(pg: &Postgres) -> String {
    let name = pg.create_database().await;
    format!("postgres://postgres@127.0.0.1:{}/{name}", pg.port())
}

pub enum Pg {
    Shared(Arc<Postgres>),
    Own(Postgres),
}

impl Pg {
    pub fn get(&self) -> &Postgres {
        match self {
            Pg::Shared(p) => p,
            Pg::Own(p) => p,
        }
    }
    pub fn own(&mut self) -> &mut Postgres {
        match self {
            Pg::Own(p) => p,
            Pg::Shared(_) => panic!("this stack shares its PostgreSQL"),
        }
    }
}

pub struct UserStack {
    pub stack: Stack,
    pub smtp: SmtpServer,
    pub twilio: Twilio,
    pub kc_admin: KcAdmin,
    pub pg: Pg,
}

#[derive(Default)]
pub struct Options {
    pub proxy: Option<Proxy>,
    /// A PostgreSQL cluster of the test's own (to stop it).
    pub own_postgres: bool,
    /// This cluster (e.g. `Postgres::start_tls`) instead, as the test's own.
    pub postgres: Option<Postgres>,
    /// The Redis deployment (default: one plain server).
    pub redis: Option<crate::support::redis::Topology>,
}

impl UserStack {
    pub async fn start(tweak: impl FnOnce(&mut AppConfig)) -> UserStack {
        UserStack::start_with(Options::default(), tweak).await
    }

    pub async fn start_with(opts: Options, tweak: impl FnOnce(&mut AppConfig)) -> UserStack {
        let pg = if let Some(pg) = opts.postgres {
            Pg::Own(pg)
        } else if opts.own_postgres {
            Pg::Own(Postgres::start().await)
        } else {
            Pg::Shared(shared_postgres().await)
        };
        let database_url = create_database(pg.get()).await;
        let smtp = SmtpServer::start().await;
        let twilio = Twilio::start().await;
        let kc_admin = KcAdmin::start().await;
        let (smtp_url, twilio_url, admin_url, db) = (
            smtp.url(),
            twilio.base_url(),
            kc_admin.base_url(),
            database_url.clone(),
        );
        let configure = move |c: &mut AppConfig| {
            // Tokens come from the Keycloak stand-in of the harness; the admin
            // API from ours: name the issuer explicitly and point
            // `keycloak.url` at the admin stand-in.
            let unquote = |v: Option<&str>| v.unwrap_or_default().trim_matches('"').to_owned();
            let issuer = format!(
                "{}/realms/{}",
                unquote(c.get("keycloak", "url")),
                unquote(c.get("keycloak", "realm"))
            );
            c.set_str("keycloak", "issuer", &issuer)
                .set_str("keycloak", "url", &admin_url)
                .set_str("keycloak", "realm", REALM)
                .set_str("keycloak", "admin_client_id", kc_admin::CLIENT_ID)
                .set_str("keycloak", "admin_client_secret", kc_admin::CLIENT_SECRET)
                .set_str("storage", "database_url", &db)
                .set_str("email", "provider", "smtp")
                .set_str("email", "from", FROM)
                .set_str("email", "smtp_url", &smtp_url)
                .set_str("sms", "provider", "twilio")
                .set_str("sms", "twilio_account_sid", twilio::ACCOUNT_SID)
                .set_str("sms", "twilio_auth_token", twilio::AUTH_TOKEN)
                .set_str("sms", "twilio_from", twilio::FROM)
                .set_str("sms", "twilio_api_url", &twilio_url)
                .set_str("security", "otp_resend_interval", "1s");
            tweak(c);
        };
        let topology = opts.redis.unwrap_or(crate::support::redis::Topology::Plain);
        let stack = Stack::start_on(topology, opts.proxy, configure).await;
        UserStack {
            stack,
            smtp,
            twilio,
            kc_admin,
            pg,
        }
    }

    /// Alice's token in a new Keycloak session, and Alice known to the admin
    /// API with a verified mobile number and an unrelated attribute.
    pub fn alice(&self) -> Token {
        let t = self.stack.keycloak.token().build();
        self.kc_admin.add_user(
            t.sub(),
            "alice",
            "alice@example.com",
            json!({
                "mobile": [ALICE_MOBILE],
                "mobileVerified": ["true"],
                "department": ["R&D"],
            }),
        );
        t
    }

    /// Another token of the same user in another Keycloak session.
    pub fn other_session(&self, t: &Token) -> Token {
        let username = t.claims["preferred_username"].as_str().unwrap_or("alice");
        let mut b = self
            .stack
            .keycloak
            .token()
            .sid(&crate::support::keycloak::uuid());
        if username != "alice" {
            b = b.user(username);
        }
        for claim in ["email", "email_verified"] {
            b = b.claim(claim, t.claims[claim].clone());
        }
        b.build()
    }

    pub fn addr(&self) -> &str {
        self.stack.app.http_addr()
    }

    pub fn req(&self, method: &str, path: &str, token: &Token) -> http::Request {
        http::request(method, self.addr(), path)
            .bearer(&token.jwt)
            .header("Content-Type", "application/json")
    }

    pub async fn call(&self, method: &str, path: &str, token: &Token, body: Value) -> Response {
        let mut r = self.req(method, path, token);
        if !body.is_null() {
            r = r.body(body.to_string());
        }
        r.send().await
    }

    pub async fn create_profile(&self, token: &Token) -> Value {
        let r = self.call("POST", "/user", token, Value::Null).await;
        self.expect(&r, 201, "POST /user");
        r.json()
    }

    pub async fn profile(&self, token: &Token) -> Value {
        let r = self.call("GET", "/user", token, Value::Null).await;
        self.expect(&r, 200, "GET /user");
        r.json()
    }

    pub async fn send_otp(&self, token: &Token, otp_type: &str) -> Response {
        self.call(
            "POST",
            "/user/send-otp",
            token,
            json!({ "otp_type": otp_type }),
        )
        .await
    }

    pub async fn verify(
        &self,
        token: &Token,
        otp_type: &str,
        otp: &str,
        purpose: Option<&str>,
    ) -> Response {
        let mut body = json!({ "otp": otp, "otp_type": otp_type });
        if let Some(p) = purpose {
            body["purpose"] = json!(p);
        }
        self.call("POST", "/user/verify-otp", token, body).await
    }

    /// Sends a login code by email to `addr` (its `n`-th message) and returns
    /// the message.
    pub async fn login_code_by_email(&self, token: &Token, addr: &str, n: usize) -> Mail {
        let r = self.send_otp(token, "email").await;
        self.expect(&r, 202, "send-otp email");
        self.smtp.wait_for(addr, n).await
    }

    /// Passes the second factor for `token`'s session with an emailed code.
    pub async fn login_by_email(&self, token: &Token, addr: &str) {
        let n = self.smtp.messages_to(addr).len() + 1;
        let mail = self.login_code_by_email(token, addr, n).await;
        let r = self
            .verify(token, "email", &mail.code(), Some("login"))
            .await;
        self.expect(&r, 200, "verify-otp login");
        // The next code on this channel would be "too soon" otherwise
        // (`security.otp_resend_interval` is 1s in these tests).
        tokio::time::sleep(RESEND_INTERVAL).await;
    }

    pub async fn sms_to(&self, number: &str, n: usize) -> Sms {
        self.twilio.wait_for(number, n).await
    }

    /// Asserts a status, explaining with the service's log.
    pub fn expect(&self, r: &Response, status: u16, what: &str) {
        assert_eq!(r.status, status, "{}", self.stack.explain(what, r));
    }

    /// Asserts a problem+json refusal with `code`.
    pub fn expect_problem(&self, r: &Response, status: u16, code: &str, what: &str) {
        crate::support::assert_problem(&self.stack, what, r, status, code);
    }

    /// `twofa-authz reset-user SUB` with the running service's configuration.
    pub fn reset_user(&self, sub: &str) -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_twofa-authz"));
        cmd.args(["reset-user", sub, "--config"])
            .arg(self.stack.app.dir().join("twofa.toml"))
            .current_dir(self.stack.app.dir());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TWOFA_") {
                cmd.env_remove(name);
            }
        }
        let out = cmd.output().expect("run reset-user");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "reset-user failed: {text}");
        text
    }

    /// No stand-in saw a request that its provider would have refused.
    pub fn assert_no_violations(&self) {
        assert!(
            self.twilio.violations().is_empty(),
            "Twilio: {:?}",
            self.twilio.violations()
        );
        assert!(
            self.kc_admin.violations().is_empty(),
            "Keycloak admin: {:?}",
            self.kc_admin.violations()
        );
    }

    pub async fn metrics(&self) -> String {
        http::get(self.addr(), "/metrics").send().await.text()
    }
}

/// A Retry-After header in seconds.
pub fn retry_after(r: &Response) -> u64 {
    r.header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric Retry-After in {:?}", r.headers))
}
