//! Layering (defaults < file < environment), `_file` secrets, and validation.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use base64::Engine;
use serde_json::{Map, Value};

use super::{Config, Requirement, Secret, SecretList, SecretUrl};

/// A configuration problem, always naming the key (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration key `{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Keys whose value may instead come from `<key>_file`.
pub const SECRET_KEYS: &[&str] = &[
    "keycloak.admin_client_secret",
    "storage.database_url",
    "storage.redis_url",
    "storage.redis_cluster_urls",
    "storage.redis_sentinel_urls",
    "security.encryption_keys",
    "email.smtp_url",
    "email.resend_api_key",
    "sms.twilio_auth_token",
    "sms.webhook_bearer_token",
];

/// "storage.database_url: x" → "x": the key is named by the ConfigError.
fn strip_key(message: &str) -> String {
    message
        .split_once(": ")
        .filter(|(k, _)| k.starts_with("storage."))
        .map(|(_, m)| m.to_string())
        .unwrap_or_else(|| message.to_string())
}

/// Secrets files and config files are small; anything bigger is a mistake.
const MAX_FILE: u64 = 1 << 20;

/// Loads the configuration from an optional TOML file and the given
/// environment (name, value) pairs.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    dev: bool,
) -> Result<Config, ConfigError> {
    let defaults = serde_json::to_value(Config::default())
        .map_err(|e| ConfigError::new("(defaults)", e.to_string()))?;
    let mut tree = Value::Object(Map::new());
    if let Some(path) = file {
        let text = read_small(path).map_err(|e| ConfigError::new("--config", e))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            ConfigError::new(
                "--config",
                format!("{} is not valid TOML: {}", path.display(), e.message()),
            )
        })?;
        tree =
            serde_json::to_value(table).map_err(|e| ConfigError::new("--config", e.to_string()))?;
    }
    apply_env(&mut tree, &defaults, env)?;
    resolve_secret_files(&mut tree)?;
    let methods_given = tree.pointer("/security/methods").is_some();
    let mut cfg: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::new(
            if path == "." { "(root)".into() } else { path },
            e.inner().to_string(),
        )
    })?;
    cfg.dev = dev;
    if dev {
        apply_dev(&mut cfg);
    }
    // Passkeys are offered by default once a relying party is configured;
    // an explicit `security.methods` is taken as written.
    if !methods_given
        && cfg.webauthn.rp_id.is_some()
        && !cfg.security.methods.iter().any(|m| m == "webauthn")
    {
        cfg.security.methods.push("webauthn".into());
    }
    validate(&cfg)?;
    Ok(cfg)
}

fn read_small(path: &Path) -> Result<String, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_FILE {
        return Err(format!("{} is larger than 1 MiB", path.display()));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// `TWOFA_KEYCLOAK__URL=...` becomes `keycloak.url`. The value's type follows
/// the key's default: numbers and booleans are parsed, lists are
/// comma-separated, and `policy.rules` takes a JSON array.
fn apply_env(
    tree: &mut Value,
    defaults: &Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("TWOFA_") else {
            continue;
        };
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let dotted = format!("{section}.{key}");
        let base_key = key.strip_suffix("_file").unwrap_or(&key);
        let default = defaults.get(&section).and_then(|s| s.get(base_key));
        let value = if key.ends_with("_file") {
            Value::String(raw)
        } else {
            typed_env_value(&dotted, &name, &raw, default)?
        };
        let obj = tree
            .as_object_mut()
            .ok_or_else(|| ConfigError::new("--config", "the file must be a TOML table"))?;
        let sec = obj
            .entry(section.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        match sec.as_object_mut() {
            Some(m) => {
                m.insert(key, value);
            }
            None => return Err(ConfigError::new(section, "must be a table")),
        }
    }
    Ok(())
}

fn typed_env_value(
    dotted: &str,
    var: &str,
    raw: &str,
    default: Option<&Value>,
) -> Result<Value, ConfigError> {
    let bad = |what: &str| ConfigError::new(dotted, format!("{var}=`{raw}` is not {what}"));
    Ok(match default {
        Some(Value::Bool(_)) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::Bool(true),
            "false" | "0" | "no" | "off" => Value::Bool(false),
            _ => return Err(bad("a boolean")),
        },
        Some(Value::Number(_)) => Value::Number(
            raw.trim()
                .parse::<u64>()
                .map_err(|_| bad("a whole number"))?
                .into(),
        ),
        Some(Value::Array(_)) if dotted == "policy.rules" => {
            serde_json::from_str(raw).map_err(|_| bad("a JSON array of rules"))?
        }
        Some(Value::Array(_)) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        _ => Value::String(raw.to_string()),
    })
}

/// Replaces every `X_file` of a secret key by the file's content.
fn resolve_secret_files(tree: &mut Value) -> Result<(), ConfigError> {
    let Some(root) = tree.as_object_mut() else {
        return Ok(());
    };
    for (section, body) in root.iter_mut() {
        let Some(map) = body.as_object_mut() else {
            continue;
        };
        let file_keys: Vec<String> = map
            .keys()
            .filter(|k| k.ends_with("_file"))
            .cloned()
            .collect();
        for fk in file_keys {
            let base = fk.trim_end_matches("_file").to_string();
            let dotted = format!("{section}.{fk}");
            if !SECRET_KEYS.contains(&format!("{section}.{base}").as_str()) {
                return Err(ConfigError::new(
                    dotted,
                    "only secret keys can be read from a file",
                ));
            }
            let Some(Value::String(path)) = map.remove(&fk) else {
                return Err(ConfigError::new(dotted, "must be a file path"));
            };
            let text = read_small(Path::new(&path)).map_err(|e| ConfigError::new(&dotted, e))?;
            let value = if base == "encryption_keys" || base.ends_with("_urls") {
                Value::Array(
                    text.split([',', '\n'])
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::String(s.to_string()))
                        .collect(),
                )
            } else {
                // Secret mounts usually end with a newline that is not part of the secret.
                Value::String(text.trim_end_matches(['\r', '\n']).to_string())
            };
            map.insert(base, value);
        }
    }
    Ok(())
}

/// `serve --dev`: everything embedded, nothing leaves the machine.
fn apply_dev(cfg: &mut Config) {
    cfg.storage.database_url = SecretUrl::new("sqlite://./twofa-dev.db");
    cfg.storage.redis_url = SecretUrl::new("memory://");
    cfg.storage.redis_cluster_urls.clear();
    cfg.storage.redis_sentinel_urls.clear();
    cfg.storage.redis_sentinel_master = None;
    cfg.storage.redis_ca_path = None;
    // A local mail catcher (an SMTP server on a loopback address, e.g.
    // Mailpit) still gets the mail: it does not leave the machine either,
    // and it lets a developer try the email flows end to end.
    if !(cfg.email.provider == "smtp"
        && cfg
            .email
            .smtp_url
            .as_ref()
            .is_some_and(|u| is_loopback_url(u.expose())))
    {
        cfg.email.provider = "log".into();
    }
    cfg.sms.provider = "log".into();
    // Audit events too: a local collector gets them, nothing else does.
    if cfg
        .audit
        .webhook_url
        .as_deref()
        .is_some_and(|u| !is_loopback_url(u))
    {
        cfg.audit.webhook_url = None;
    }
    // The dev issuer signs with Ed25519 (a key generated at start).
    cfg.keycloak.algorithms = vec!["EdDSA".into()];
    cfg.keycloak.audiences.clear();
    cfg.keycloak.allowed_clients.clear();
    cfg.keycloak.admin_client_id = None;
    cfg.keycloak.admin_client_secret = None;
    if cfg.security.encryption_keys.0.is_empty() {
        // A fixed, publicly known key: dev data is not protected, but it
        // survives restarts so a dev enrollment keeps working.
        cfg.security.encryption_keys = SecretList(vec![Secret::new(
            "dev:ZGV2LW1vZGUta2V5LW5vdC1zZWNyZXQtMDAwMDAwMDA=",
        )]);
    }
}

/// `smtp://127.0.0.1:1025?tls=none`, `smtp://localhost:25`, `smtp://[::1]:1025`.
fn is_loopback_url(u: &str) -> bool {
    match url::Url::parse(u)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        // `smtp:` is not a special scheme: its IPv4 hosts stay "domains".
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost")
                || d.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        None => false,
    }
}

/// The Redis keys: one topology, URLs redis-rs can use without ever
/// skipping certificate checks, a CA bundle only where TLS is used.
fn validate_redis(st: &super::StorageConfig) -> Result<(), ConfigError> {
    let r = st.redis_url.expose();
    if !(r.starts_with("redis://") || r.starts_with("rediss://") || r == "memory://") {
        return Err(ConfigError::new(
            "storage.redis_url",
            "must be redis://…, rediss://… or memory://",
        ));
    }
    if !st.redis_cluster_urls.is_empty() && !st.redis_sentinel_urls.is_empty() {
        return Err(ConfigError::new(
            "storage.redis_cluster_urls",
            "and storage.redis_sentinel_urls are both set: a deployment is either a Redis Cluster or Sentinel-managed, set one of them",
        ));
    }
    if st.redis_sentinel_urls.is_empty() != st.redis_sentinel_master.is_none() {
        return Err(ConfigError::new(
            "storage.redis_sentinel_master",
            "storage.redis_sentinel_urls and storage.redis_sentinel_master go together",
        ));
    }
    if let Some(m) = &st.redis_sentinel_master {
        if m.is_empty() || m.len() > 128 || m.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::new(
                "storage.redis_sentinel_master",
                "must be the master's name as the sentinels know it (1-128 characters, no spaces)",
            ));
        }
    }
    let (key, urls): (&str, Vec<&str>) = if !st.redis_cluster_urls.is_empty() {
        (
            "storage.redis_cluster_urls",
            st.redis_cluster_urls.iter().map(|u| u.expose()).collect(),
        )
    } else if !st.redis_sentinel_urls.is_empty() {
        (
            "storage.redis_sentinel_urls",
            st.redis_sentinel_urls.iter().map(|u| u.expose()).collect(),
        )
    } else {
        ("storage.redis_url", vec![r])
    };
    if urls.len() > 64 {
        return Err(ConfigError::new(key, "at most 64 nodes"));
    }
    let mut schemes = BTreeSet::new();
    for u in &urls {
        if *u == "memory://" {
            continue;
        }
        let scheme = if u.starts_with("redis://") {
            "redis"
        } else if u.starts_with("rediss://") {
            "rediss"
        } else {
            return Err(ConfigError::new(
                key,
                "every URL must be redis://… or rediss://…",
            ));
        };
        schemes.insert(scheme);
        if u.contains('#') {
            // redis-rs reads `#insecure` as "skip certificate checks".
            return Err(ConfigError::new(
                key,
                "a URL must not carry a #fragment (#insecure would skip certificate checks; set storage.redis_ca_path instead)",
            ));
        }
        redis::IntoConnectionInfo::into_connection_info(*u)
            .map_err(|e| ConfigError::new(key, format!("not a Redis URL: {}", e.category())))?;
    }
    if schemes.len() > 1 {
        return Err(ConfigError::new(
            key,
            "mixes redis:// and rediss://: every node is reached the same way",
        ));
    }
    if let Some(ca) = &st.redis_ca_path {
        if !schemes.contains("rediss") {
            return Err(ConfigError::new(
                "storage.redis_ca_path",
                format!("is set, but {key} uses no rediss:// URL: the CA bundle verifies TLS certificates only"),
            ));
        }
        crate::tls::read_ca_bundle(ca).map_err(|e| ConfigError::new("storage.redis_ca_path", e))?;
    }
    Ok(())
}

pub const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
pub const METHODS: &[&str] = &["totp", "email", "sms", "recovery", "webauthn"];
/// 16 Mi entries is some 10 GiB of verified tokens: beyond that a value is a
/// typo, not a deployment.
const MAX_CACHE_CAPACITY: usize = 1 << 24;
/// Ten million sessions in memory is about a gigabyte: beyond that a value
/// is a typo, not a deployment.
const MAX_SESSION_CACHE_CAPACITY: usize = 10_000_000;

fn validate(c: &Config) -> Result<(), ConfigError> {
    let grpc = c.server.grpc_socket()?;
    let http = c.server.http_socket()?;
    let metrics = c.server.metrics_socket()?;
    if let Some(m) = metrics {
        // Port 0 (any free port) never collides.
        if m.port() != 0 && (m == grpc || m == http) {
            return Err(ConfigError::new(
                "server.metrics_addr",
                "must differ from server.grpc_addr and server.http_addr (leave it unset to serve /metrics on server.http_addr)",
            ));
        }
    }
    if c.dev {
        let listeners = [("server.grpc_addr", grpc), ("server.http_addr", http)]
            .into_iter()
            .chain(metrics.map(|m| ("server.metrics_addr", m)));
        for (k, a) in listeners {
            if !a.ip().is_loopback() {
                return Err(ConfigError::new(
                    k,
                    "serve --dev refuses to bind a non-loopback address",
                ));
            }
        }
    }
    if !(1..=65536).contains(&c.server.max_connections) {
        return Err(ConfigError::new(
            "server.max_connections",
            "must be between 1 and 65536",
        ));
    }
    for o in &c.server.cors_allowed_origins {
        if o != "*" && url::Url::parse(o).is_err() {
            return Err(ConfigError::new(
                "server.cors_allowed_origins",
                format!("`{o}` is not an origin like https://app.example.com"),
            ));
        }
    }

    let kc = &c.keycloak;
    if !c.dev {
        match kc.effective_issuer() {
            None => {
                return Err(ConfigError::new(
                    "keycloak.url",
                    "set keycloak.url and keycloak.realm (or keycloak.issuer)",
                ))
            }
            Some(i) => check_http_url("keycloak.issuer", &i)?,
        }
        if let Some(u) = &kc.url {
            check_http_url("keycloak.url", u)?;
        }
        if let Some(u) = &kc.jwks_url {
            check_http_url("keycloak.jwks_url", u)?;
        }
    }
    if kc.algorithms.is_empty() {
        return Err(ConfigError::new(
            "keycloak.algorithms",
            "must list at least one algorithm",
        ));
    }
    for a in &kc.algorithms {
        if !ALGORITHMS.contains(&a.as_str()) {
            return Err(ConfigError::new(
                "keycloak.algorithms",
                format!(
                    "`{a}` is not allowed (use {}); HMAC and `none` never are",
                    ALGORITHMS.join(", ")
                ),
            ));
        }
    }
    if kc.leeway.as_secs() > 300 {
        return Err(ConfigError::new("keycloak.leeway", "at most 5m"));
    }
    if kc.jwks_cache_ttl.as_secs() == 0 {
        return Err(ConfigError::new(
            "keycloak.jwks_cache_ttl",
            "must be positive",
        ));
    }
    if kc.admin_client_id.is_some() != kc.admin_client_secret.is_some() {
        return Err(ConfigError::new(
            "keycloak.admin_client_secret",
            "keycloak.admin_client_id and keycloak.admin_client_secret go together",
        ));
    }

    let st = &c.storage;
    let db = st.database_url.expose();
    if !(db.starts_with("postgres://")
        || db.starts_with("postgresql://")
        || db.starts_with("sqlite://"))
    {
        return Err(ConfigError::new(
            "storage.database_url",
            "must be postgres://… or sqlite://PATH",
        ));
    }
    let is_pg = db.starts_with("postgres://") || db.starts_with("postgresql://");
    if let Some(ca) = &st.database_ca_path {
        if !is_pg {
            return Err(ConfigError::new(
                "storage.database_ca_path",
                "applies to a postgres:// database_url only",
            ));
        }
        crate::tls::read_ca_bundle(ca)
            .map_err(|e| ConfigError::new("storage.database_ca_path", e))?;
    }
    if is_pg {
        let (_, mode) = crate::store::pg_tls::split_sslmode(db)
            .map_err(|e| ConfigError::new("storage.database_url", strip_key(&e)))?;
        if mode == Some(crate::store::pg_tls::SslMode::Disable) && st.database_ca_path.is_some() {
            return Err(ConfigError::new(
                "storage.database_ca_path",
                "is set, but sslmode=disable in storage.database_url turns TLS off; choose verify-full or remove the CA path",
            ));
        }
    }
    validate_redis(st)?;
    if !(1..=1024).contains(&st.pool_size) {
        return Err(ConfigError::new(
            "storage.pool_size",
            "must be between 1 and 1024",
        ));
    }
    if st.key_prefix.len() > 64
        || st
            .key_prefix
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
    {
        return Err(ConfigError::new(
            "storage.key_prefix",
            "at most 64 characters, no spaces",
        ));
    }
    if st.key_prefix.contains(['{', '}']) {
        // A brace in the prefix would become (part of) every key's Redis
        // Cluster hash tag: the keys of one user would no longer share a
        // slot, or every key would share one.
        return Err(ConfigError::new(
            "storage.key_prefix",
            "must not contain { or }: the user's {hash tag} chooses the Redis Cluster slot",
        ));
    }

    if c.cache.token_capacity > MAX_CACHE_CAPACITY {
        return Err(ConfigError::new(
            "cache.token_capacity",
            format!("at most {MAX_CACHE_CAPACITY} (about 600 bytes each); 0 turns the cache off"),
        ));
    }
    if c.cache.session_capacity > MAX_SESSION_CACHE_CAPACITY {
        return Err(ConfigError::new(
            "cache.session_capacity",
            format!(
                "at most {MAX_SESSION_CACHE_CAPACITY} (about 100 bytes each); 0 reads the session store on every Check"
            ),
        ));
    }

    let s = &c.security;
    if s.encryption_keys.0.is_empty() {
        return Err(ConfigError::new(
            "security.encryption_keys",
            "required outside dev mode: a list of KEYID:BASE64_32_BYTES (generate one with `openssl rand -base64 32`)",
        ));
    }
    let mut ids = BTreeSet::new();
    for k in &s.encryption_keys.0 {
        let (id, b64) = k.expose().split_once(':').ok_or_else(|| {
            ConfigError::new(
                "security.encryption_keys",
                "each key must be KEYID:BASE64_32_BYTES",
            )
        })?;
        if id.is_empty()
            || id.len() > 32
            || !id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            return Err(ConfigError::new(
                "security.encryption_keys",
                "a key id is 1-32 letters, digits, - or _",
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| {
                ConfigError::new(
                    "security.encryption_keys",
                    format!("key `{id}` is not base64"),
                )
            })?;
        if bytes.len() != 32 {
            return Err(ConfigError::new(
                "security.encryption_keys",
                format!("key `{id}` must decode to 32 bytes"),
            ));
        }
        if !ids.insert(id.to_string()) {
            return Err(ConfigError::new(
                "security.encryption_keys",
                format!("key id `{id}` appears twice"),
            ));
        }
    }
    if s.methods.is_empty() {
        return Err(ConfigError::new(
            "security.methods",
            "must list at least one method",
        ));
    }
    for m in &s.methods {
        if !METHODS.contains(&m.as_str()) {
            return Err(ConfigError::new(
                "security.methods",
                format!("`{m}` is not one of {}", METHODS.join(", ")),
            ));
        }
    }
    validate_webauthn(c)?;
    range("security.otp_length", s.otp_length, 4, 10)?;
    range("security.max_attempts", s.max_attempts, 1, 100)?;
    range(
        "security.max_consecutive_failures",
        s.max_consecutive_failures,
        1,
        100_000,
    )?;
    range("security.recovery_code_count", s.recovery_code_count, 1, 50)?;
    for (k, d) in [
        ("security.second_factor_ttl", s.second_factor_ttl),
        ("security.otp_ttl", s.otp_ttl),
        ("security.lockout", s.lockout),
        ("security.pending_totp_ttl", s.pending_totp_ttl),
        ("security.sensitive_max_age", s.sensitive_max_age),
    ] {
        if d.as_secs() == 0 {
            return Err(ConfigError::new(k, "must be at least 1s"));
        }
    }
    if s.remember_device_ttl.as_secs() > 400 * 86_400 {
        return Err(ConfigError::new(
            "security.remember_device_ttl",
            "must be at most 400d (0 turns remembered devices off)",
        ));
    }

    let t = &c.totp;
    if t.digits != 6 && t.digits != 8 {
        return Err(ConfigError::new("totp.digits", "must be 6 or 8"));
    }
    if !(10..=300).contains(&t.period) {
        return Err(ConfigError::new(
            "totp.period",
            "must be between 10 and 300 seconds",
        ));
    }
    if !["SHA1", "SHA256", "SHA512"].contains(&t.algorithm.as_str()) {
        return Err(ConfigError::new(
            "totp.algorithm",
            "must be SHA1, SHA256 or SHA512",
        ));
    }
    if t.skew > 10 {
        return Err(ConfigError::new("totp.skew", "at most 10 steps"));
    }
    if t.issuer.is_empty() || t.issuer.contains(':') || t.issuer.len() > 64 {
        return Err(ConfigError::new(
            "totp.issuer",
            "1-64 characters, without `:`",
        ));
    }

    let e = &c.email;
    match e.provider.as_str() {
        "log" => {}
        "smtp" => {
            need(e.from.is_some(), "email.from")?;
            let u = e.smtp_url.as_ref().ok_or_else(|| {
                ConfigError::new("email.smtp_url", "required with email.provider = \"smtp\"")
            })?;
            let parsed = url::Url::parse(u.expose())
                .map_err(|_| ConfigError::new("email.smtp_url", "not a URL"))?;
            if !["smtp", "smtps"].contains(&parsed.scheme()) {
                return Err(ConfigError::new(
                    "email.smtp_url",
                    "must be smtp://… or smtps://…",
                ));
            }
        }
        "resend" => {
            need(e.from.is_some(), "email.from")?;
            need(e.resend_api_key.is_some(), "email.resend_api_key")?;
            check_http_url("email.resend_api_url", &e.resend_api_url)?;
        }
        other => {
            return Err(ConfigError::new(
                "email.provider",
                format!("`{other}` is not smtp, resend or log"),
            ))
        }
    }
    if let Some(n) = &e.product_name {
        if n.chars().count() > 100 || n.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "email.product_name",
                "at most 100 characters, on one line",
            ));
        }
    }
    for (key, u) in [
        ("email.product_url", &e.product_url),
        ("email.support_url", &e.support_url),
    ] {
        if let Some(u) = u.as_deref().filter(|u| !u.is_empty()) {
            check_http_url(key, u)?;
        }
    }
    // Compiles every template and renders it with sample data in every
    // locale, so that `check-config` and `serve` refuse a broken one (exit
    // 2) naming its file.
    crate::delivery::Messages::from_config(c)?;
    let sms = &c.sms;
    match sms.provider.as_str() {
        "log" => {}
        "twilio" => {
            need(sms.twilio_account_sid.is_some(), "sms.twilio_account_sid")?;
            need(sms.twilio_auth_token.is_some(), "sms.twilio_auth_token")?;
            need(sms.twilio_from.is_some(), "sms.twilio_from")?;
            check_http_url("sms.twilio_api_url", &sms.twilio_api_url)?;
        }
        "webhook" => {
            let u = sms.webhook_url.as_deref().ok_or_else(|| {
                ConfigError::new(
                    "sms.webhook_url",
                    "required with sms.provider = \"webhook\"",
                )
            })?;
            check_http_url("sms.webhook_url", u)?;
        }
        other => {
            return Err(ConfigError::new(
                "sms.provider",
                format!("`{other}` is not twilio, webhook or log"),
            ))
        }
    }

    let p = &c.policy;
    let prefix = &p.identity_header_prefix;
    if prefix.is_empty()
        || prefix.len() > 64
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(ConfigError::new(
            "policy.identity_header_prefix",
            "lower-case letters, digits and `-`, at most 64",
        ));
    }
    for (i, r) in p.rules.iter().enumerate() {
        let key = format!("policy.rules[{i}]");
        if let Some(pp) = &r.path_prefix {
            if !pp.starts_with('/') || pp.contains(['?', '#', '%']) {
                return Err(ConfigError::new(
                    format!("{key}.path_prefix"),
                    "must start with `/` and hold no `?`, `#` or `%`",
                ));
            }
        }
        for m in &r.methods {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(ConfigError::new(
                    format!("{key}.methods"),
                    format!("`{m}` is not an HTTP method"),
                ));
            }
        }
        if r.max_age.is_some() && r.require != Requirement::TwoFa {
            return Err(ConfigError::new(
                format!("{key}.max_age"),
                "only makes sense with require = \"2fa\"",
            ));
        }
    }

    if let Some(id) = &c.ui.client_id {
        // It goes into the authorization request's query and the token
        // request's form: printable, bounded (Keycloak's client ids are).
        if id.is_empty() || id.len() > 255 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                "ui.client_id",
                "1-255 printable characters without spaces (the Keycloak client id)",
            ));
        }
    }

    if let Some(u) = &c.audit.webhook_url {
        check_http_url("audit.webhook_url", u)?;
    }
    if !(1..=1_000_000).contains(&c.audit.queue_capacity) {
        return Err(ConfigError::new(
            "audit.queue_capacity",
            "must be between 1 and 1000000",
        ));
    }
    let t = c.audit.webhook_timeout.get();
    if t.is_zero() || t > std::time::Duration::from_secs(60) {
        return Err(ConfigError::new(
            "audit.webhook_timeout",
            "must be more than 0 and at most 60s",
        ));
    }

    if !["text", "json"].contains(&c.log.format.as_str()) {
        return Err(ConfigError::new(
            "log.format",
            "must be \"text\" or \"json\"",
        ));
    }
    if tracing_subscriber::EnvFilter::try_new(&c.log.level).is_err() {
        return Err(ConfigError::new(
            "log.level",
            "not a level or tracing filter (e.g. info, debug, twofa_authz=debug)",
        ));
    }
    Ok(())
}

/// What `serve` and `check-config` demand beyond [`load`]: outside dev mode,
/// no channel users may pick (`security.methods`) is served by the `log`
/// provider. `send-otp` would answer 202 and send nothing: users wait for a
/// code that only the server's log ever sees. (`migrate` and `reset-user`
/// send nothing and do not ask.)
pub fn check_delivery(c: &Config) -> Result<(), ConfigError> {
    if c.dev {
        return Ok(());
    }
    for (method, key, provider, choices) in [
        (
            "email",
            "email.provider",
            &c.email.provider,
            "smtp or resend",
        ),
        ("sms", "sms.provider", &c.sms.provider, "twilio or webhook"),
    ] {
        if provider == "log" && c.security.methods.iter().any(|m| m == method) {
            return Err(ConfigError::new(
                key,
                format!(
                    "is \"log\" (the default) while `{method}` is in security.methods: outside dev mode codes would be written to the log and never sent; choose {choices}, or remove `{method}` from security.methods"
                ),
            ));
        }
    }
    Ok(())
}

/// The relying party must be one browsers accept for the origins: each
/// origin's host is `rp_id` or lies under it (webauthn-rs checks the same
/// when it is built, with a less helpful message).
fn validate_webauthn(c: &Config) -> Result<(), ConfigError> {
    let w = &c.webauthn;
    if !["preferred", "required", "discouraged"].contains(&w.user_verification.as_str()) {
        return Err(ConfigError::new(
            "webauthn.user_verification",
            "must be preferred, required or discouraged",
        ));
    }
    let Some(id) = w.rp_id.as_deref() else {
        if c.security.methods.iter().any(|m| m == "webauthn") {
            return Err(ConfigError::new(
                "security.methods",
                "`webauthn` needs webauthn.rp_id",
            ));
        }
        if !w.rp_origins.is_empty() {
            return Err(ConfigError::new(
                "webauthn.rp_origins",
                "needs webauthn.rp_id",
            ));
        }
        return Ok(());
    };
    if id.is_empty() || id.contains(['/', ':', ' ']) || id.starts_with('.') || id.ends_with('.') {
        return Err(ConfigError::new(
            "webauthn.rp_id",
            "a domain name such as example.com (no scheme, port or path)",
        ));
    }
    for o in w.origins() {
        let u = url::Url::parse(&o)
            .map_err(|_| ConfigError::new("webauthn.rp_origins", format!("`{o}` is not a URL")))?;
        let host = u.host_str().unwrap_or_default();
        let within = host == id || host.ends_with(&format!(".{id}"));
        if !within {
            return Err(ConfigError::new(
                "webauthn.rp_origins",
                format!("`{o}` is not on webauthn.rp_id `{id}` or a subdomain of it"),
            ));
        }
        // Browsers treat `localhost` and its subdomains as secure contexts.
        let local = host == "localhost" || host.ends_with(".localhost");
        let secure = u.scheme() == "https" || (u.scheme() == "http" && local);
        if !secure || u.path() != "/" || u.query().is_some() {
            return Err(ConfigError::new(
                "webauthn.rp_origins",
                format!("`{o}` must be an origin: https://host[:port] (http only for localhost)"),
            ));
        }
    }
    Ok(())
}

fn need(ok: bool, key: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(key, "required by the chosen provider"))
    }
}

fn range(key: &str, v: u32, lo: u32, hi: u32) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("must be between {lo} and {hi}"),
        ))
    }
}

fn check_http_url(key: &str, u: &str) -> Result<(), ConfigError> {
    match url::Url::parse(u) {
        Ok(p) if (p.scheme() == "http" || p.scheme() == "https") && p.host().is_some() => Ok(()),
        _ => Err(ConfigError::new(
            key,
            format!("`{u}` is not an http(s) URL"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn base_env() -> Vec<(String, String)> {
        vec![
            (
                "TWOFA_KEYCLOAK__URL".into(),
                "https://sso.example.com".into(),
            ),
            ("TWOFA_KEYCLOAK__REALM".into(), "demo".into()),
            ("TWOFA_SECURITY__ENCRYPTION_KEYS".into(), KEY.into()),
        ]
    }

    #[test]
    fn ui_keys() {
        let c = load(None, base_env(), false).unwrap();
        assert!(c.ui.enabled);
        assert_eq!(c.ui.client_id, None);
        let mut env = base_env();
        env.push(("TWOFA_UI__ENABLED".into(), "false".into()));
        env.push(("TWOFA_UI__CLIENT_ID".into(), "twofa-ui".into()));
        let c = load(None, env, false).unwrap();
        assert!(!c.ui.enabled);
        assert_eq!(c.ui.client_id.as_deref(), Some("twofa-ui"));
        for bad in ["", "a b", "x\u{7}"] {
            let mut env = base_env();
            env.push(("TWOFA_UI__CLIENT_ID".into(), bad.into()));
            assert_eq!(
                load(None, env, false).unwrap_err().key,
                "ui.client_id",
                "{bad:?}"
            );
        }
        let mut env = base_env();
        env.push(("TWOFA_UI__COLOUR".into(), "red".into()));
        assert_eq!(load(None, env, false).unwrap_err().key, "ui.colour");
    }

    #[test]
    fn audit_keys() {
        let c = load(None, base_env(), false).unwrap();
        assert_eq!(c.audit.webhook_url, None);
        assert_eq!(c.audit.queue_capacity, 1024);
        assert_eq!(c.audit.webhook_timeout.as_secs(), 5);
        let mut env = base_env();
        env.push((
            "TWOFA_AUDIT__WEBHOOK_URL".into(),
            "https://siem.example.com/twofa".into(),
        ));
        env.push(("TWOFA_AUDIT__QUEUE_CAPACITY".into(), "16".into()));
        env.push(("TWOFA_AUDIT__WEBHOOK_TIMEOUT".into(), "2s".into()));
        let c = load(None, env.clone(), false).unwrap();
        assert_eq!(
            c.audit.webhook_url.as_deref(),
            Some("https://siem.example.com/twofa")
        );
        assert_eq!(c.audit.queue_capacity, 16);
        assert_eq!(c.audit.webhook_timeout.as_secs(), 2);
        // Dev mode keeps a loopback collector only.
        assert_eq!(load(None, env, true).unwrap().audit.webhook_url, None);
        let local = vec![(
            "TWOFA_AUDIT__WEBHOOK_URL".to_string(),
            "http://127.0.0.1:9000/audit".to_string(),
        )];
        assert!(load(None, local, true).unwrap().audit.webhook_url.is_some());
        for (var, bad, key) in [
            (
                "TWOFA_AUDIT__WEBHOOK_URL",
                "ftp://x.example.com/",
                "audit.webhook_url",
            ),
            ("TWOFA_AUDIT__WEBHOOK_URL", "not a url", "audit.webhook_url"),
            ("TWOFA_AUDIT__QUEUE_CAPACITY", "0", "audit.queue_capacity"),
            (
                "TWOFA_AUDIT__WEBHOOK_TIMEOUT",
                "0s",
                "audit.webhook_timeout",
            ),
            (
                "TWOFA_AUDIT__WEBHOOK_TIMEOUT",
                "2m",
                "audit.webhook_timeout",
            ),
        ] {
            let mut env = base_env();
            env.push((var.into(), bad.into()));
            assert_eq!(load(None, env, false).unwrap_err().key, key, "{bad:?}");
        }
    }

    #[test]
    fn dev_mode_mails_only_to_a_loopback_relay() {
        let with = |url: &str| {
            let env = vec![
                ("TWOFA_EMAIL__PROVIDER".to_string(), "smtp".to_string()),
                ("TWOFA_EMAIL__FROM".into(), "dev <dev@localhost>".into()),
                ("TWOFA_EMAIL__SMTP_URL".into(), url.into()),
                ("TWOFA_SMS__PROVIDER".into(), "webhook".into()),
                (
                    "TWOFA_SMS__WEBHOOK_URL".into(),
                    "http://127.0.0.1:9/x".into(),
                ),
            ];
            load(None, env, true).unwrap()
        };
        for local in [
            "smtp://127.0.0.1:1025?tls=none",
            "smtp://localhost:25?tls=none",
            "smtp://[::1]:1025?tls=none",
        ] {
            let c = with(local);
            assert_eq!(c.email.provider, "smtp", "{local}");
            assert_eq!(c.sms.provider, "log");
        }
        for remote in ["smtp://mail.example.com:587", "smtp://10.0.0.1:25?tls=none"] {
            assert_eq!(with(remote).email.provider, "log", "{remote}");
        }
        assert_eq!(load(None, vec![], true).unwrap().email.provider, "log");
    }

    #[test]
    fn database_tls_settings_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            rcgen::generate_simple_self_signed(vec!["ca.test".into()])
                .unwrap()
                .cert
                .pem(),
        )
        .unwrap();
        let with = |url: &str, ca_path: Option<&std::path::Path>| {
            let mut env = base_env();
            env.push(("TWOFA_STORAGE__DATABASE_URL".into(), url.into()));
            if let Some(p) = ca_path {
                env.push((
                    "TWOFA_STORAGE__DATABASE_CA_PATH".into(),
                    p.display().to_string(),
                ));
            }
            load(None, env, false)
        };
        let c = with("postgres://u:pw@db/x?sslmode=verify-full", Some(&ca)).unwrap();
        assert_eq!(c.storage.database_ca_path.as_deref(), Some(ca.as_path()));
        assert!(c.redacted_toml().contains("database_ca_path"));
        assert!(with("postgres://u:pw@db/x", None).is_ok());

        let e = with("postgres://u:pw@db/x?sslmode=disable", Some(&ca)).unwrap_err();
        assert_eq!(e.key, "storage.database_ca_path");
        assert!(e.message.contains("sslmode=disable"), "{e}");
        let e = with("postgres://u:pw@db/x?sslmode=allow", None).unwrap_err();
        assert_eq!(e.key, "storage.database_url");
        assert!(e.message.starts_with("sslmode `allow`"), "{e}");
        assert!(!e.message.contains("pw"), "{e}");
        let e = with("sqlite://x.db", Some(&ca)).unwrap_err();
        assert_eq!(e.key, "storage.database_ca_path");
        let e = with("postgres://db/x", Some(&dir.path().join("absent.pem"))).unwrap_err();
        assert_eq!(e.key, "storage.database_ca_path");
    }

    #[test]
    fn redis_topology_keys_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("redis-ca.pem");
        std::fs::write(
            &ca,
            rcgen::generate_simple_self_signed(vec!["ca.test".into()])
                .unwrap()
                .cert
                .pem(),
        )
        .unwrap();
        let with = |pairs: &[(&str, &str)]| {
            let mut env = base_env();
            for (k, v) in pairs {
                env.push((
                    format!("TWOFA_STORAGE__{}", k.to_uppercase()),
                    v.to_string(),
                ));
            }
            load(None, env, false)
        };
        let c = with(&[(
            "redis_cluster_urls",
            "redis://:pw@10.0.0.1:7000, redis://:pw@10.0.0.2:7000",
        )])
        .unwrap();
        assert_eq!(c.storage.redis_cluster_urls.len(), 2);
        let shown = c.redacted_toml();
        assert!(!shown.contains(":pw@"), "{shown}");
        assert!(
            shown.contains("# Redis: Redis Cluster, 2 seed node(s); plaintext"),
            "{shown}"
        );
        let c = with(&[
            ("redis_sentinel_urls", "rediss://s1:26379,rediss://s2:26379"),
            ("redis_sentinel_master", "mymaster"),
            ("redis_ca_path", ca.to_str().unwrap()),
        ])
        .unwrap();
        assert_eq!(c.storage.redis_sentinel_master.as_deref(), Some("mymaster"));
        assert!(c.redacted_toml().contains("redis-ca.pem"));

        let e = with(&[
            ("redis_cluster_urls", "redis://a:7000"),
            ("redis_sentinel_urls", "redis://s:26379"),
            ("redis_sentinel_master", "m"),
        ])
        .unwrap_err();
        assert_eq!(e.key, "storage.redis_cluster_urls");
        assert!(e.message.contains("storage.redis_sentinel_urls"), "{e}");
        let e = with(&[("redis_sentinel_urls", "redis://s:26379")]).unwrap_err();
        assert_eq!(e.key, "storage.redis_sentinel_master");
        let e = with(&[("redis_sentinel_master", "m")]).unwrap_err();
        assert_eq!(e.key, "storage.redis_sentinel_master");
        let e = with(&[
            ("redis_url", "redis://r:6379"),
            ("redis_ca_path", ca.to_str().unwrap()),
        ])
        .unwrap_err();
        assert_eq!(e.key, "storage.redis_ca_path");
        let e = with(&[("redis_url", "rediss://r:6379#insecure")]).unwrap_err();
        assert_eq!(e.key, "storage.redis_url");
        assert!(e.message.contains("#insecure"), "{e}");
        let e = with(&[("redis_cluster_urls", "redis://a:1,rediss://b:2")]).unwrap_err();
        assert_eq!(e.key, "storage.redis_cluster_urls");
        let e = with(&[("redis_cluster_urls", "http://a:1")]).unwrap_err();
        assert_eq!(e.key, "storage.redis_cluster_urls");
        let e = with(&[
            ("redis_url", "rediss://r:6379"),
            (
                "redis_ca_path",
                dir.path().join("absent.pem").to_str().unwrap(),
            ),
        ])
        .unwrap_err();
        assert_eq!(e.key, "storage.redis_ca_path");
        let e = with(&[("key_prefix", "app{x}:")]).unwrap_err();
        assert_eq!(e.key, "storage.key_prefix");
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = load(None, base_env(), false).unwrap();
        assert_eq!(c.server.grpc_addr, "127.0.0.1:9191");
        assert_eq!(c.server.http_addr, "127.0.0.1:8090");
        assert_eq!(
            c.keycloak.effective_issuer().unwrap(),
            "https://sso.example.com/realms/demo"
        );
        assert_eq!(c.keycloak.algorithms, vec!["RS256"]);
        assert_eq!(c.keycloak.leeway.as_secs(), 30);
        assert_eq!(c.storage.database_url.expose(), "sqlite://twofa.db");
        assert_eq!(c.storage.redis_url.expose(), "memory://");
        assert_eq!(c.storage.key_prefix, "twofa:");
        assert_eq!(c.security.second_factor_ttl.as_secs(), 12 * 3600);
        assert_eq!(c.security.max_consecutive_failures, 100);
        assert_eq!(c.security.sensitive_max_age.as_secs(), 600);
        assert_eq!(c.totp.issuer, "2FA-Middleware");
        assert_eq!(c.policy.default, Requirement::TwoFa);
        assert_eq!(c.policy.identity_header_prefix, "x-auth-request-");
        assert_eq!(c.cache.token_capacity, 65_536);
    }

    #[test]
    fn the_token_cache_is_sized_by_cache_token_capacity() {
        let mut env = base_env();
        env.push(("TWOFA_CACHE__TOKEN_CAPACITY".into(), "0".into()));
        assert_eq!(load(None, env, false).unwrap().cache.token_capacity, 0);
        let mut env = base_env();
        env.push(("TWOFA_CACHE__TOKEN_CAPACITY".into(), "1000000000".into()));
        assert_eq!(
            load(None, env, false).unwrap_err().key,
            "cache.token_capacity"
        );
        let mut env = base_env();
        env.push(("TWOFA_CACHE__TOKEN_CAPACITY".into(), "-1".into()));
        assert_eq!(
            load(None, env, false).unwrap_err().key,
            "cache.token_capacity"
        );
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[cache]\ntoken_capacity = 1000\n").unwrap();
        let c = load(Some(f.path()), base_env(), false).unwrap();
        assert_eq!(c.cache.token_capacity, 1000);
        assert!(c.redacted_toml().contains("[cache]\ntoken_capacity = 1000"));
    }

    #[test]
    fn the_session_cache_is_sized_by_cache_session_capacity() {
        assert_eq!(
            load(None, base_env(), false)
                .unwrap()
                .cache
                .session_capacity,
            65_536
        );
        let mut env = base_env();
        env.push(("TWOFA_CACHE__SESSION_CAPACITY".into(), "0".into()));
        assert_eq!(load(None, env, false).unwrap().cache.session_capacity, 0);
        for bad in ["10000001", "-1", "many"] {
            let mut env = base_env();
            env.push(("TWOFA_CACHE__SESSION_CAPACITY".into(), bad.into()));
            assert_eq!(
                load(None, env, false).unwrap_err().key,
                "cache.session_capacity",
                "{bad}"
            );
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[cache]\nsession_capacity = 10000000\n").unwrap();
        let c = load(Some(f.path()), base_env(), false).unwrap();
        assert_eq!(c.cache.session_capacity, 10_000_000);
        assert!(c.redacted_toml().contains("session_capacity = 10000000"));
    }

    #[test]
    fn env_beats_file_and_lists_split_on_commas() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[keycloak]\nurl = \"https://file.example.com\"\nrealm = \"r\"\naudiences = [\"a\"]\n[security]\nencryption_keys = [\"{KEY}\"]\nmax_attempts = 3\n").unwrap();
        let env = vec![
            (
                "TWOFA_KEYCLOAK__URL".to_string(),
                "https://env.example.com".to_string(),
            ),
            ("TWOFA_KEYCLOAK__AUDIENCES".into(), "x, y".into()),
            ("TWOFA_SECURITY__OTP_TTL".into(), "5m".into()),
            ("TWOFA_STORAGE__AUTO_MIGRATE".into(), "false".into()),
            ("TWOFA_STORAGE__POOL_SIZE".into(), "4".into()),
            ("TWOFA_CONFIG".into(), "ignored".into()),
            ("UNRELATED".into(), "x".into()),
        ];
        let c = load(Some(f.path()), env, false).unwrap();
        assert_eq!(c.keycloak.url.as_deref(), Some("https://env.example.com"));
        assert_eq!(c.keycloak.audiences, vec!["x", "y"]);
        assert_eq!(c.security.max_attempts, 3);
        assert_eq!(c.security.otp_ttl.as_secs(), 300);
        assert!(!c.storage.auto_migrate);
        assert_eq!(c.storage.pool_size, 4);
    }

    #[test]
    fn secrets_come_from_files() {
        let mut kf = tempfile::NamedTempFile::new().unwrap();
        writeln!(kf, "{KEY}\nk0:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        let mut sf = tempfile::NamedTempFile::new().unwrap();
        writeln!(sf, "s3cret").unwrap();
        let env = vec![
            (
                "TWOFA_KEYCLOAK__URL".to_string(),
                "https://sso.example.com".to_string(),
            ),
            ("TWOFA_KEYCLOAK__REALM".into(), "demo".into()),
            ("TWOFA_KEYCLOAK__ADMIN_CLIENT_ID".into(), "twofa".into()),
            (
                "TWOFA_KEYCLOAK__ADMIN_CLIENT_SECRET_FILE".into(),
                sf.path().display().to_string(),
            ),
            (
                "TWOFA_SECURITY__ENCRYPTION_KEYS_FILE".into(),
                kf.path().display().to_string(),
            ),
        ];
        let c = load(None, env, false).unwrap();
        assert_eq!(c.keycloak.admin_client_secret.unwrap().expose(), "s3cret");
        assert_eq!(c.security.encryption_keys.0.len(), 2);
        let text = load(None, base_env(), false).unwrap().redacted_toml();
        assert!(!text.contains("AAECAwQF"), "{text}");
    }

    #[test]
    fn errors_name_the_key() {
        let mut env = base_env();
        env.push(("TWOFA_SECURITY__MAX_ATTEMPTS".into(), "many".into()));
        assert_eq!(
            load(None, env, false).unwrap_err().key,
            "security.max_attempts"
        );

        let mut env = base_env();
        env.push(("TWOFA_KEYCLOAK__ALGORITHMS".into(), "HS256".into()));
        assert_eq!(
            load(None, env, false).unwrap_err().key,
            "keycloak.algorithms"
        );

        let mut env = base_env();
        env.push(("TWOFA_KEYCLOAK__BOGUS".into(), "1".into()));
        assert_eq!(load(None, env, false).unwrap_err().key, "keycloak.bogus");

        let mut env = base_env();
        env.push(("TWOFA_SECURITY__OTP_TTL".into(), "soon".into()));
        assert_eq!(load(None, env, false).unwrap_err().key, "security.otp_ttl");

        let mut env = base_env();
        env.push(("TWOFA_SECURITY__SENSITIVE_MAX_AGE".into(), "0s".into()));
        assert_eq!(
            load(None, env, false).unwrap_err().key,
            "security.sensitive_max_age"
        );

        let env = vec![
            (
                "TWOFA_KEYCLOAK__URL".to_string(),
                "https://sso.example.com".to_string(),
            ),
            ("TWOFA_KEYCLOAK__REALM".into(), "demo".into()),
        ];
        assert_eq!(
            load(None, env, false).unwrap_err().key,
            "security.encryption_keys"
        );

        let mut env = base_env();
        env.push((
            "TWOFA_POLICY__RULES".into(),
            r#"[{"path_prefix":"admin","require":"2fa"}]"#.into(),
        ));
        assert_eq!(
            load(None, env, false).unwrap_err().key,
            "policy.rules[0].path_prefix"
        );

        let mut env = base_env();
        env.push(("TWOFA_KEYCLOAK__URL_FILE".into(), "/etc/hosts".into()));
        assert_eq!(load(None, env, false).unwrap_err().key, "keycloak.url_file");
    }

    #[test]
    fn message_keys_are_checked() {
        let c = load(None, base_env(), false).unwrap();
        assert_eq!(c.email.default_locale, "en");
        assert!(c.email.templates_dir.is_none() && c.email.product_name.is_none());
        for (var, value, key) in [
            (
                "TWOFA_EMAIL__PRODUCT_URL",
                "javascript:alert(1)",
                "email.product_url",
            ),
            (
                "TWOFA_EMAIL__SUPPORT_URL",
                "mailto:help@example.com",
                "email.support_url",
            ),
            (
                "TWOFA_EMAIL__PRODUCT_NAME",
                "two\nlines",
                "email.product_name",
            ),
            ("TWOFA_EMAIL__DEFAULT_LOCALE", "fr", "email.default_locale"),
            (
                "TWOFA_EMAIL__TEMPLATES_DIR",
                "/nonexistent/templates",
                "email.templates_dir",
            ),
        ] {
            let mut env = base_env();
            env.push((var.into(), value.into()));
            assert_eq!(
                load(None, env, false).unwrap_err().key,
                key,
                "{var}={value}"
            );
        }
        let mut env = base_env();
        env.push(("TWOFA_EMAIL__DEFAULT_LOCALE".into(), "de_DE".into()));
        env.push((
            "TWOFA_EMAIL__PRODUCT_URL".into(),
            "https://example.com/".into(),
        ));
        let c = load(None, env, false).unwrap();
        assert_eq!(c.email.default_locale, "de_DE");
    }

    #[test]
    fn webauthn_joins_the_default_methods_once_a_relying_party_is_set() {
        let with = |extra: &[(&str, &str)]| {
            let mut env = base_env();
            env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            load(None, env, false)
        };
        let c = with(&[]).unwrap();
        assert!(!c.security.methods.iter().any(|m| m == "webauthn"));
        let rp = ("TWOFA_WEBAUTHN__RP_ID", "example.com");
        let c = with(&[rp]).unwrap();
        assert_eq!(
            c.security.methods,
            ["totp", "email", "sms", "recovery", "webauthn"]
        );
        assert_eq!(c.webauthn.origins(), ["https://example.com"]);
        assert_eq!(c.webauthn.user_verification, "preferred");
        // An explicit list is taken as written.
        let c = with(&[rp, ("TWOFA_SECURITY__METHODS", "totp,recovery")]).unwrap();
        assert_eq!(c.security.methods, ["totp", "recovery"]);
        let c = with(&[
            rp,
            (
                "TWOFA_WEBAUTHN__RP_ORIGINS",
                "https://app.example.com,https://example.com:8443",
            ),
            ("TWOFA_WEBAUTHN__USER_VERIFICATION", "required"),
        ])
        .unwrap();
        assert_eq!(c.webauthn.origins().len(), 2);
        let c = with(&[
            ("TWOFA_WEBAUTHN__RP_ID", "localhost"),
            (
                "TWOFA_WEBAUTHN__RP_ORIGINS",
                "http://localhost:8090,http://app.localhost:8090",
            ),
        ])
        .unwrap();
        assert!(c.security.methods.iter().any(|m| m == "webauthn"));
        for (extra, key) in [
            (
                vec![("TWOFA_SECURITY__METHODS", "totp,webauthn")],
                "security.methods",
            ),
            (
                vec![("TWOFA_WEBAUTHN__RP_ORIGINS", "https://example.com")],
                "webauthn.rp_origins",
            ),
            (
                vec![rp, ("TWOFA_WEBAUTHN__RP_ORIGINS", "https://example.org")],
                "webauthn.rp_origins",
            ),
            (
                vec![rp, ("TWOFA_WEBAUTHN__RP_ORIGINS", "http://app.example.com")],
                "webauthn.rp_origins",
            ),
            (
                vec![
                    rp,
                    ("TWOFA_WEBAUTHN__RP_ORIGINS", "https://example.com/login"),
                ],
                "webauthn.rp_origins",
            ),
            (
                vec![("TWOFA_WEBAUTHN__RP_ID", "https://example.com")],
                "webauthn.rp_id",
            ),
            (
                vec![rp, ("TWOFA_WEBAUTHN__USER_VERIFICATION", "always")],
                "webauthn.user_verification",
            ),
        ] {
            assert_eq!(with(&extra).unwrap_err().key, key, "{extra:?}");
        }
    }

    #[test]
    fn log_providers_are_refused_outside_dev_mode_while_their_channel_is_a_method() {
        let c = load(None, base_env(), false).unwrap();
        let e = check_delivery(&c).unwrap_err();
        assert_eq!(e.key, "email.provider");
        assert!(e.message.contains("security.methods"), "{e}");
        let with = |extra: &[(&str, &str)]| {
            let mut env = base_env();
            env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            check_delivery(&load(None, env, false).unwrap())
        };
        let smtp = [
            ("TWOFA_EMAIL__PROVIDER", "smtp"),
            ("TWOFA_EMAIL__FROM", "2FA <no-reply@example.com>"),
            ("TWOFA_EMAIL__SMTP_URL", "smtp://mail.example.com:587"),
        ];
        assert_eq!(with(&smtp).unwrap_err().key, "sms.provider");
        let mut both = smtp.to_vec();
        both.extend([
            ("TWOFA_SMS__PROVIDER", "webhook"),
            ("TWOFA_SMS__WEBHOOK_URL", "https://sms.example.com/send"),
        ]);
        assert!(with(&both).is_ok());
        // A channel users cannot pick needs no provider.
        assert!(with(&[("TWOFA_SECURITY__METHODS", "totp,recovery")]).is_ok());
        assert_eq!(
            with(&[("TWOFA_SECURITY__METHODS", "totp,sms")])
                .unwrap_err()
                .key,
            "sms.provider"
        );
        let mut email_only = smtp.to_vec();
        email_only.push(("TWOFA_SECURITY__METHODS", "totp,email,recovery"));
        assert!(with(&email_only).is_ok());
        // Dev mode writes codes to the log on purpose.
        assert!(check_delivery(&load(None, vec![], true).unwrap()).is_ok());
    }

    #[test]
    fn dev_mode_is_loopback_only() {
        let c = load(None, vec![], true).unwrap();
        assert_eq!(c.storage.database_url.expose(), "sqlite://./twofa-dev.db");
        assert_eq!(c.storage.redis_url.expose(), "memory://");
        let env = vec![(
            "TWOFA_SERVER__HTTP_ADDR".to_string(),
            "0.0.0.0:8090".to_string(),
        )];
        assert_eq!(load(None, env, true).unwrap_err().key, "server.http_addr");
        let env = vec![(
            "TWOFA_SERVER__METRICS_ADDR".to_string(),
            "0.0.0.0:9090".to_string(),
        )];
        assert_eq!(
            load(None, env, true).unwrap_err().key,
            "server.metrics_addr"
        );
    }

    #[test]
    fn metrics_addr_is_an_address_of_its_own() {
        let with = |v: &str| {
            let mut env = base_env();
            env.push(("TWOFA_SERVER__METRICS_ADDR".into(), v.into()));
            load(None, env, false)
        };
        let c = with("0.0.0.0:9090").unwrap();
        assert_eq!(
            c.server.metrics_socket().unwrap(),
            Some("0.0.0.0:9090".parse().unwrap())
        );
        assert_eq!(
            load(None, base_env(), false).unwrap().server.metrics_addr,
            None
        );
        for bad in ["9090", "localhost:9090", "127.0.0.1:8090", "127.0.0.1:9191"] {
            assert_eq!(with(bad).unwrap_err().key, "server.metrics_addr", "{bad}");
        }
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn the_shipped_example_configuration_loads() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(&keys, "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/twofa-authz.example.toml"
        ))
        .unwrap()
        .replace(
            "/run/secrets/twofa-encryption-keys",
            &keys.display().to_string(),
        );
        let file = dir.path().join("c.toml");
        std::fs::write(&file, text).unwrap();
        let c = super::load(Some(&file), vec![], false).unwrap();
        super::check_delivery(&c).unwrap();
        assert_eq!(c.policy.rules[0].path_prefix.as_deref(), Some("/user"));
        assert_eq!(c.policy.rules.len(), 3);
    }
}
