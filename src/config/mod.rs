//! Configuration: the keys of INTERFACE.md section 2, loaded from a TOML file,
//! overridden by `TWOFA_<SECTION>__<KEY>` environment variables, with `X_file`
//! indirection for secrets (Kubernetes secret mounts), then validated so that
//! every error names the key at fault.

mod duration;
pub mod keys;
mod load;
mod secret;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use duration::{format_duration, parse_duration, Dur};
pub use load::{check_delivery, load, ConfigError, SECRET_KEYS};
pub use secret::{Secret, SecretList, SecretUrl, REDACTED};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub keycloak: KeycloakConfig,
    pub storage: StorageConfig,
    pub cache: CacheConfig,
    pub security: SecurityConfig,
    pub totp: TotpConfig,
    pub email: EmailConfig,
    pub sms: SmsConfig,
    pub policy: PolicyConfig,
    pub log: LogConfig,
    pub ui: UiConfig,
    pub audit: AuditConfig,
    pub webauthn: WebAuthnConfig,
    /// Set by `serve --dev`, never by a file or the environment.
    #[serde(skip)]
    pub dev: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub grpc_addr: String,
    pub http_addr: String,
    pub cors_allowed_origins: Vec<String>,
    /// Open connections the HTTP listener serves at once; beyond it, new
    /// connections wait in the listen backlog until one closes. Not in
    /// INTERFACE.md section 2: an extra key (README, "Where the contract is
    /// silent").
    pub max_connections: usize,
    /// A listener of its own for `GET /metrics`; when set, `/metrics` is
    /// served only there (not on `http_addr`), so that the scrape port can
    /// be opened to Prometheus without opening the API, and the API port
    /// without exposing the metrics.
    pub metrics_addr: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:9191".into(),
            http_addr: "127.0.0.1:8090".into(),
            cors_allowed_origins: vec![],
            max_connections: 1024,
            metrics_addr: None,
        }
    }
}

impl ServerConfig {
    pub fn grpc_socket(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("server.grpc_addr", &self.grpc_addr)
    }
    pub fn http_socket(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("server.http_addr", &self.http_addr)
    }
    pub fn metrics_socket(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.metrics_addr
            .as_deref()
            .map(|a| parse_addr("server.metrics_addr", a))
            .transpose()
    }
}

fn parse_addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse()
        .map_err(|_| ConfigError::new(key, format!("`{v}` is not an address like 127.0.0.1:8090")))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeycloakConfig {
    pub url: Option<String>,
    pub realm: Option<String>,
    pub issuer: Option<String>,
    pub jwks_url: Option<String>,
    pub audiences: Vec<String>,
    pub allowed_clients: Vec<String>,
    pub algorithms: Vec<String>,
    pub leeway: Dur,
    pub jwks_cache_ttl: Dur,
    pub jwks_min_refresh_interval: Dur,
    pub admin_client_id: Option<String>,
    pub admin_client_secret: Option<Secret>,
    pub mobile_attribute: String,
    pub mobile_verified_attribute: String,
    pub sync_verified_contacts: bool,
}

impl Default for KeycloakConfig {
    fn default() -> Self {
        Self {
            url: None,
            realm: None,
            issuer: None,
            jwks_url: None,
            audiences: vec![],
            allowed_clients: vec![],
            algorithms: vec!["RS256".into()],
            leeway: Dur::secs(30),
            jwks_cache_ttl: Dur::secs(600),
            jwks_min_refresh_interval: Dur::secs(10),
            admin_client_id: None,
            admin_client_secret: None,
            mobile_attribute: "mobile".into(),
            mobile_verified_attribute: "mobileVerified".into(),
            sync_verified_contacts: true,
        }
    }
}

impl KeycloakConfig {
    /// `keycloak.issuer`, else `{url}/realms/{realm}` (Keycloak's issuer layout).
    pub fn effective_issuer(&self) -> Option<String> {
        if let Some(i) = &self.issuer {
            return Some(i.clone());
        }
        match (&self.url, &self.realm) {
            (Some(u), Some(r)) => Some(format!("{}/realms/{}", u.trim_end_matches('/'), r)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub database_url: SecretUrl,
    /// PEM CA bundle that verifies PostgreSQL's certificate; unset: the
    /// system roots. Read as it is (a public file, not a `_file` secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_ca_path: Option<PathBuf>,
    pub redis_url: SecretUrl,
    /// Redis Cluster seed nodes; when set, used instead of `redis_url`.
    pub redis_cluster_urls: Vec<SecretUrl>,
    /// Redis Sentinel nodes; with `redis_sentinel_master`, used instead of
    /// `redis_url`.
    pub redis_sentinel_urls: Vec<SecretUrl>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_sentinel_master: Option<String>,
    /// PEM CA bundle that verifies the certificates of `rediss://` nodes;
    /// unset: the system roots. Read as it is (not a `_file` secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca_path: Option<PathBuf>,
    pub pool_size: u32,
    pub key_prefix: String,
    pub auto_migrate: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            database_url: SecretUrl::new("sqlite://twofa.db"),
            database_ca_path: None,
            redis_url: SecretUrl::new("memory://"),
            redis_cluster_urls: vec![],
            redis_sentinel_urls: vec![],
            redis_sentinel_master: None,
            redis_ca_path: None,
            pool_size: 16,
            key_prefix: "twofa:".into(),
            auto_migrate: true,
        }
    }
}

/// In-memory caches on the Check path.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Verified tokens remembered (by SHA-256, until `exp` plus the leeway,
    /// all forgotten when the issuer's key set changes), so that a repeat
    /// request skips the signature check. `0` verifies every token.
    pub token_capacity: usize,
    /// Sessions' second-factor state held in memory in front of the Redis
    /// session store, invalidated by Redis (`store::session_cache`). `0`
    /// reads the store on every Check. Unused with `memory://`, which is in
    /// memory already.
    pub session_capacity: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            token_capacity: crate::token::DEFAULT_TOKEN_CACHE_CAPACITY,
            session_capacity: crate::store::session_cache::DEFAULT_CAPACITY,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    pub encryption_keys: SecretList,
    pub second_factor_ttl: Dur,
    pub methods: Vec<String>,
    pub otp_length: u32,
    pub otp_ttl: Dur,
    pub otp_resend_interval: Dur,
    pub max_attempts: u32,
    pub lockout: Dur,
    pub max_consecutive_failures: u32,
    pub notify_changes: bool,
    pub pending_totp_ttl: Dur,
    pub recovery_code_count: u32,
    /// Adding, changing or removing a factor or a contact needs a factor
    /// passed this recently by the same session.
    pub sensitive_max_age: Dur,
    /// How long a remembered device (`POST /user/remembered-devices`) can
    /// pass for a second factor; `0` (the default) turns the feature off.
    pub remember_device_ttl: Dur,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            encryption_keys: SecretList::default(),
            second_factor_ttl: Dur::secs(12 * 3600),
            methods: ["totp", "email", "sms", "recovery"]
                .map(String::from)
                .to_vec(),
            otp_length: 6,
            otp_ttl: Dur::secs(600),
            otp_resend_interval: Dur::secs(60),
            max_attempts: 5,
            lockout: Dur::secs(900),
            max_consecutive_failures: 100,
            notify_changes: true,
            pending_totp_ttl: Dur::secs(600),
            recovery_code_count: 10,
            sensitive_max_age: Dur::secs(600),
            remember_device_ttl: Dur::secs(0),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TotpConfig {
    pub issuer: String,
    pub digits: u32,
    pub period: u64,
    pub algorithm: String,
    pub skew: u8,
}

impl Default for TotpConfig {
    fn default() -> Self {
        Self {
            issuer: "2FA-Middleware".into(),
            digits: 6,
            period: 30,
            algorithm: "SHA1".into(),
            skew: 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    pub provider: String,
    pub from: Option<String>,
    pub smtp_url: Option<SecretUrl>,
    pub resend_api_key: Option<Secret>,
    pub resend_api_url: String,
    // Beyond the contract (docs/messages.md): how messages look and read.
    /// A directory whose templates (by file name) and `locales/<tag>.toml`
    /// replace or extend the embedded ones.
    pub templates_dir: Option<String>,
    /// Language of readers whose token names none we have.
    pub default_locale: String,
    /// Product name in messages; default `totp.issuer`.
    pub product_name: Option<String>,
    pub product_url: Option<String>,
    pub support_url: Option<String>,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            provider: "log".into(),
            from: None,
            smtp_url: None,
            resend_api_key: None,
            resend_api_url: "https://api.resend.com".into(),
            templates_dir: None,
            default_locale: "en".into(),
            product_name: None,
            product_url: None,
            support_url: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmsConfig {
    pub provider: String,
    pub twilio_account_sid: Option<String>,
    pub twilio_auth_token: Option<Secret>,
    pub twilio_from: Option<String>,
    pub twilio_api_url: String,
    pub webhook_url: Option<String>,
    pub webhook_bearer_token: Option<Secret>,
}

impl Default for SmsConfig {
    fn default() -> Self {
        Self {
            provider: "log".into(),
            twilio_account_sid: None,
            twilio_auth_token: None,
            twilio_from: None,
            twilio_api_url: "https://api.twilio.com".into(),
            webhook_url: None,
            webhook_bearer_token: None,
        }
    }
}

/// What a request needs: nothing, a valid token, or a valid token whose
/// session passed a second factor. Ordered from weakest to strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Requirement {
    #[serde(rename = "none")]
    None,
    #[serde(rename = "token")]
    Token,
    #[serde(rename = "2fa")]
    TwoFa,
}

impl Requirement {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "none" => Some(Requirement::None),
            "token" => Some(Requirement::Token),
            "2fa" => Some(Requirement::TwoFa),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub require: Requirement,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Dur>,
    /// Rollout mode: a request this rule would refuse is allowed, marked for
    /// the upstream and counted (`decision="dry_run"`). Lets everything
    /// through: see docs/dry-run.md.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    pub default: Requirement,
    pub rules: Vec<RuleConfig>,
    pub identity_header_prefix: String,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            default: Requirement::TwoFa,
            // Without this first rule a user who has no factor yet could
            // never reach the enrollment routes through the proxy.
            rules: vec![RuleConfig {
                path_prefix: Some("/user".into()),
                methods: vec![],
                host: None,
                require: Requirement::Token,
                max_age: None,
                dry_run: false,
            }],
            identity_header_prefix: "x-auth-request-".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: String,
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// Audit events (docs/audit.md): always logged on the `audit` target; with
/// `webhook_url`, also posted there, best effort.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Where each event is POSTed as JSON; unset: log only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Events waiting for the webhook; beyond it, new ones are dropped and
    /// counted (`twofa_audit_dropped_total`), never waited for.
    pub queue_capacity: usize,
    /// One POST's limit, connecting included.
    pub webhook_timeout: Dur,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            queue_capacity: 1024,
            webhook_timeout: Dur::secs(5),
        }
    }
}

/// The `/ui/` page (INTERFACE.md section 9).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    /// `false`: `/ui/` and its assets are 404.
    pub enabled: bool,
    /// The Keycloak client the page signs in with: a public client with
    /// PKCE (S256), `{origin}/ui/` as a valid redirect URI and the page's
    /// origin as a web origin. Unset: the page can sign in only in dev mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            client_id: None,
        }
    }
}

/// WebAuthn (passkeys) as a second factor (`factor::webauthn`,
/// docs/webauthn.md). Off while `rp_id` is unset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebAuthnConfig {
    /// The relying party id: the site's registrable domain (or a parent of
    /// it), e.g. `example.com`; credentials are bound to it for good.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rp_id: Option<String>,
    /// The origins whose pages run the ceremonies, e.g.
    /// `https://app.example.com`; each must lie within `rp_id`. Empty:
    /// `https://<rp_id>`.
    pub rp_origins: Vec<String>,
    /// Shown by the browser and the authenticator; default `totp.issuer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rp_name: Option<String>,
    /// `preferred`, `required` or `discouraged`.
    pub user_verification: String,
}

impl Default for WebAuthnConfig {
    fn default() -> Self {
        Self {
            rp_id: None,
            rp_origins: vec![],
            rp_name: None,
            user_verification: "preferred".into(),
        }
    }
}

impl WebAuthnConfig {
    /// The configured origins, or `https://<rp_id>` when none are.
    pub fn origins(&self) -> Vec<String> {
        match (&self.rp_id, self.rp_origins.is_empty()) {
            (Some(id), true) => vec![format!("https://{id}")],
            _ => self.rp_origins.clone(),
        }
    }
}

impl Config {
    /// The effective configuration as TOML, every secret redacted, and,
    /// as comments, what the TLS settings of the database connection mean.
    pub fn redacted_toml(&self) -> String {
        let mut out =
            toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        let st = &self.storage;
        let url = st.database_url.expose();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let ca = st.database_ca_path.as_deref();
            out.push_str("\n# PostgreSQL TLS (storage.database_url, storage.database_ca_path):\n");
            if ca.is_none() {
                out.push_str("# storage.database_ca_path is unset: certificates are checked against the system roots\n");
            }
            match crate::store::pg_tls::PgTarget::new(url, ca) {
                Ok(t) => out.push_str(&format!("# {}\n", t.describe(ca))),
                Err(e) => out.push_str(&format!("# {e}\n")),
            }
        }
        if let Some(line) = describe_redis(st) {
            out.push_str(&format!("\n# Redis: {line}\n"));
        }
        out
    }
}

/// One line on where Redis is and how its certificates are checked, for
/// `check-config`.
fn describe_redis(st: &StorageConfig) -> Option<String> {
    let (what, urls): (String, Vec<&str>) = if !st.redis_cluster_urls.is_empty() {
        (
            format!(
                "Redis Cluster, {} seed node(s)",
                st.redis_cluster_urls.len()
            ),
            st.redis_cluster_urls.iter().map(|u| u.expose()).collect(),
        )
    } else if !st.redis_sentinel_urls.is_empty() {
        (
            format!(
                "the primary `{}` named by {} sentinel(s)",
                st.redis_sentinel_master.as_deref().unwrap_or("?"),
                st.redis_sentinel_urls.len()
            ),
            st.redis_sentinel_urls.iter().map(|u| u.expose()).collect(),
        )
    } else if st.redis_url.expose() == "memory://" {
        return None;
    } else {
        ("one server".into(), vec![st.redis_url.expose()])
    };
    let tls = if urls.iter().any(|u| u.starts_with("rediss://")) {
        match &st.redis_ca_path {
            Some(p) => format!("TLS, certificates verified against {}", p.display()),
            None => "TLS, certificates verified against the system roots".into(),
        }
    } else {
        "plaintext".into()
    };
    Some(format!("{what}; {tls}"))
}
