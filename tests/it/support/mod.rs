//! The integration-test harness: real processes (twofa-authz, Redis, Envoy, nginx,
//! Caddy, PostgreSQL) on free loopback ports, and in-process stand-ins for Keycloak and
//! the protected application.

// Not every test uses every helper.
#![allow(dead_code)]

pub mod app;
pub mod browser;
pub mod burst;
pub mod caddy;
pub mod envoy;
pub mod http;
pub mod kc_admin;
pub mod keycloak;
pub mod nginx;
pub mod otlp;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod resend;
pub mod sms_webhook;
pub mod smtp;
pub mod standin;
pub mod tls;
pub mod twilio;
pub mod upstream;

use std::time::Duration;

use app::{test_encryption_key, toml_strings, App, AppConfig};
use caddy::Caddy;
use envoy::{Envoy, Targets};
use keycloak::{Keycloak, Token};
use nginx::Nginx;
use redis::{RedisServer, SessionKey, TestRedis, Topology};
use upstream::{Echoed, Upstream};

pub const KEY_PREFIX: &str = "twofa:";
pub const SECOND_FACTOR_TTL: Duration = Duration::from_secs(12 * 3600);
pub const IDENTITY_PREFIX: &str = "x-auth-request-";

/// The policy the stacks run, mirroring the routes of envoy/envoy.yaml so that a
/// path gets the same requirement through Envoy (route settings) and through
/// nginx (these rules alone).
pub const POLICY_RULES: &str = r#"[
  { path_prefix = "/user", require = "token" },
  { path_prefix = "/public", require = "none" },
  { path_prefix = "/admin", require = "2fa", max_age = "15m" },
  { path_prefix = "/api", require = "token" },
]"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxy {
    Envoy,
    Nginx,
    Caddy,
}

/// The configuration every test starts from: fast key refetches, the stand-ins'
/// addresses, the policy above.
pub fn base_config(keycloak: &Keycloak, redis: &RedisServer) -> AppConfig {
    let mut config = base_config_without_redis(keycloak);
    config.set_str("storage", "redis_url", &redis.url());
    config
}

/// [`base_config`] on a Redis deployment of any topology.
pub fn base_config_on(keycloak: &Keycloak, redis: &TestRedis) -> AppConfig {
    let mut config = base_config_without_redis(keycloak);
    redis.configure(&mut config);
    config
}

fn base_config_without_redis(keycloak: &Keycloak) -> AppConfig {
    let mut config = AppConfig::default();
    config
        .set_str("keycloak", "url", keycloak.base_url())
        .set_str("keycloak", "realm", keycloak.realm())
        .set("keycloak", "audiences", toml_strings(&[keycloak::AUDIENCE]))
        .set(
            "keycloak",
            "allowed_clients",
            toml_strings(&[keycloak::CLIENT]),
        )
        .set_str("keycloak", "leeway", "30s")
        .set_str("keycloak", "jwks_min_refresh_interval", "1s")
        .set_str("keycloak", "jwks_cache_ttl", "10m")
        // Relative to the process's working directory, its own temp dir.
        .set_str("storage", "database_url", "sqlite://twofa.db")
        .set_str("storage", "key_prefix", KEY_PREFIX)
        .set(
            "security",
            "encryption_keys",
            toml_strings(&[&test_encryption_key()]),
        )
        .set_str("security", "second_factor_ttl", "12h")
        .set_str("policy", "default", "2fa")
        .set("policy", "rules", POLICY_RULES)
        .set_str("log", "format", "text")
        .set_str("log", "level", "info")
        // `serve` refuses the `log` delivery provider outside dev mode while
        // email and SMS are in security.methods (the default): these stacks
        // name real providers that lead nowhere (a closed loopback port).
        // Tests that deliver codes (user_common) point them at stand-ins.
        .set_str("email", "provider", "smtp")
        .set_str("email", "from", "2FA <no-reply@example.com>")
        .set_str("email", "smtp_url", "smtp://127.0.0.1:9?tls=none")
        .set_str("sms", "provider", "webhook")
        .set_str("sms", "webhook_url", "http://127.0.0.1:9/sms");
    config
}

tokio::task_local! {
    /// Settings that every stack started in the current test task gets on
    /// top of its own (see [`with_settings`]).
    static EXTRA_SETTINGS: Vec<(String, String, String)>;
}

/// Runs `test` with these `(section, key, TOML literal)` settings added to
/// every stack it starts: how a whole scenario table runs again under
/// another configuration (e.g. `cache.session_capacity = 0`).
pub async fn with_settings<F: std::future::Future>(
    settings: &[(&str, &str, &str)],
    test: F,
) -> F::Output {
    let settings = settings
        .iter()
        .map(|(s, k, v)| (s.to_string(), k.to_string(), v.to_string()))
        .collect();
    EXTRA_SETTINGS.scope(settings, test).await
}

/// One isolated set of services for one test.
pub struct Stack {
    pub proxy: Option<Proxy>,
    envoy: Option<Envoy>,
    nginx: Option<Nginx>,
    caddy: Option<Caddy>,
    pub app: App,
    pub upstream: Upstream,
    pub keycloak: Keycloak,
    pub redis: TestRedis,
    pub config: AppConfig,
}

impl Stack {
    pub async fn start(proxy: Option<Proxy>) -> Stack {
        Stack::start_with(proxy, |_| {}).await
    }

    /// Starts a stack whose configuration `tweak` may change first.
    pub async fn start_with(proxy: Option<Proxy>, tweak: impl FnOnce(&mut AppConfig)) -> Stack {
        Stack::start_on(Topology::Plain, proxy, tweak).await
    }

    /// A stack on a Redis deployment of the given topology.
    pub async fn start_on(
        topology: Topology,
        proxy: Option<Proxy>,
        tweak: impl FnOnce(&mut AppConfig),
    ) -> Stack {
        let (redis, keycloak, upstream) = tokio::join!(
            TestRedis::start(topology),
            Keycloak::start(),
            Upstream::start()
        );
        let mut config = base_config_on(&keycloak, &redis);
        let _ = EXTRA_SETTINGS.try_with(|extra| {
            for (section, key, value) in extra {
                config.set(section, key, value.clone());
            }
        });
        tweak(&mut config);
        let app = App::start(&config).await;
        let targets = Targets {
            grpc_port: app.grpc_port(),
            http_port: app.http_port(),
            app_port: upstream.port(),
        };
        let (mut envoy, mut nginx, mut caddy) = (None, None, None);
        match proxy {
            Some(Proxy::Envoy) => envoy = Some(Envoy::start(targets).await),
            Some(Proxy::Nginx) => nginx = Some(Nginx::start(targets).await),
            Some(Proxy::Caddy) => caddy = Some(Caddy::start(targets).await),
            None => {}
        }
        Stack {
            proxy,
            envoy,
            nginx,
            caddy,
            app,
            upstream,
            keycloak,
            redis,
            config,
        }
    }

    /// The address clients talk to: the proxy's listener.
    pub fn proxy_addr(&self) -> String {
        match (&self.envoy, &self.nginx, &self.caddy) {
            (Some(envoy), _, _) => envoy.addr(),
            (_, Some(nginx), _) => nginx.addr(),
            (_, _, Some(caddy)) => caddy.addr(),
            _ => panic!("this stack runs no proxy"),
        }
    }

    pub fn proxy_log(&self) -> String {
        match (&self.envoy, &self.nginx, &self.caddy) {
            (Some(envoy), _, _) => envoy.log(),
            (_, Some(nginx), _) => nginx.log(),
            (_, _, Some(caddy)) => caddy.log(),
            _ => String::new(),
        }
    }

    /// A GET through the proxy.
    pub fn get(&self, target: &str) -> http::Request {
        http::get(&self.proxy_addr(), target)
    }

    pub fn request(&self, method: &str, target: &str) -> http::Request {
        http::request(method, &self.proxy_addr(), target)
    }

    /// A forward-auth check straight to twofa-authz, the way nginx asks it
    /// (`/authz/auth-request`).
    pub fn authz(&self, method: &str, uri: &str) -> http::Request {
        http::get(self.app.http_addr(), "/authz/auth-request")
            .header("X-Original-Method", method)
            .header("X-Original-URI", uri)
            .header("X-Forwarded-Host", "app.example.com")
    }

    /// Marks the Keycloak session of `token` as having passed `factor` at `at`.
    pub async fn mark_verified(&self, token: &Token, factor: &str, at: i64) {
        self.mark_verified_triple(token.iss(), token.sub(), token.sid(), factor, at)
            .await;
    }

    pub async fn mark_verified_triple(
        &self,
        iss: &str,
        sub: &str,
        sid: &str,
        factor: &str,
        at: i64,
    ) {
        let key = SessionKey {
            prefix: KEY_PREFIX,
            iss,
            sub,
            sid,
        };
        self.redis
            .mark_verified(&key, factor, at, SECOND_FACTOR_TTL)
            .await;
    }

    /// A label for assertion messages.
    pub fn name(&self) -> String {
        match self.proxy {
            Some(proxy) => format!("{proxy:?}"),
            None => "twofa-authz".into(),
        }
    }

    /// Explains a surprising response with everything that might say why.
    pub fn explain(&self, what: &str, response: &http::Response) -> String {
        format!(
            "{} {what}: got status {} headers {:?} body {:?}\n--- twofa-authz log (tail) ---\n{}\n--- proxy log (tail) ---\n{}",
            self.name(),
            response.status,
            response.headers,
            response.text(),
            tail(&self.app.log(), 40),
            tail(&self.proxy_log(), 20),
        )
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Asserts a response is a refusal in the contract's shape (INTERFACE.md sections
/// 3 and 5): the status, problem+json with `code`, and that it did not come from
/// the application.
pub fn assert_problem(
    stack: &Stack,
    what: &str,
    response: &http::Response,
    status: u16,
    code: &str,
) {
    let explain = || stack.explain(what, response);
    assert_eq!(response.status, status, "{}", explain());
    assert!(
        Echoed::from_response(response).is_none(),
        "a refusal reached the application: {}",
        explain()
    );
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/problem+json"),
        "content-type {content_type:?}: {}",
        explain()
    );
    let body = response.json();
    assert_eq!(body["code"], code, "{}", explain());
    assert_eq!(body["status"], status, "{}", explain());
    for member in ["type", "title"] {
        assert!(body.get(member).is_some(), "no {member}: {}", explain());
    }
}

/// `Bearer realm="<issuer>"` (missing token) or with `, error="invalid_token"`.
pub fn expected_www_authenticate(keycloak: &Keycloak, invalid: bool) -> String {
    let realm = format!("Bearer realm=\"{}\"", keycloak.issuer());
    if invalid {
        format!("{realm}, error=\"invalid_token\"")
    } else {
        realm
    }
}

/// The response came from the echo application; returns what it received.
pub fn assert_reached_upstream(stack: &Stack, what: &str, response: &http::Response) -> Echoed {
    assert_eq!(response.status, 200, "{}", stack.explain(what, response));
    Echoed::from_response(response).unwrap_or_else(|| {
        panic!(
            "not the application's answer: {}",
            stack.explain(what, response)
        )
    })
}

/// Real delivery for a stack whose test sends codes: the SMTP server of the
/// tests and the Twilio stand-in (outside dev mode the `log` providers are
/// refused, and the base configuration's providers point at closed ports).
pub struct Delivery {
    pub smtp: smtp::SmtpServer,
    pub twilio: twilio::Twilio,
}

impl Delivery {
    pub async fn start() -> Delivery {
        let (smtp, twilio) = tokio::join!(smtp::SmtpServer::start(), twilio::Twilio::start());
        Delivery { smtp, twilio }
    }

    pub fn configure(&self, c: &mut AppConfig) {
        c.set_str("email", "provider", "smtp")
            .set_str("email", "from", "2FA Test <no-reply@example.com>")
            .set_str("email", "smtp_url", &self.smtp.url())
            .set_str("sms", "provider", "twilio")
            .set_str("sms", "twilio_account_sid", twilio::ACCOUNT_SID)
            .set_str("sms", "twilio_auth_token", twilio::AUTH_TOKEN)
            .set_str("sms", "twilio_from", twilio::FROM)
            .set_str("sms", "twilio_api_url", &self.twilio.base_url());
    }
}
