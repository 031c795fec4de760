//! The issuer's signing keys. Fetched from the `jwks_uri` of the OIDC
//! discovery document (or `keycloak.jwks_url`), refreshed in the background,
//! refetched on an unknown `kid` at most once per `jwks_min_refresh_interval`.
//! A keys endpoint that fails after the first load leaves the cached keys in
//! use: an outage of Keycloak must not log everybody out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use crate::metrics::Metrics;

/// JWKS documents are small; a huge one is an attack or a misconfiguration.
const MAX_JWKS_BYTES: usize = 512 * 1024;
const MAX_KEYS: usize = 64;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl Family {
    pub fn accepts(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (Family::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (Family::EcP256, ES256)
                | (Family::EcP384, ES384)
                | (Family::Ed25519, EdDSA)
        )
    }
}

pub struct KeyEntry {
    pub key: DecodingKey,
    pub family: Family,
    /// The key's own `alg`, when the JWK states one: tokens must then use it.
    pub alg: Option<Algorithm>,
}

#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<KeyEntry>>,
    /// A stable description of the set, to notice when it changed.
    fingerprint: String,
}

impl KeySet {
    /// Builds a key set from a JWKS document, keeping only public signature
    /// keys of an allowed algorithm. Keycloak publishes its encryption key
    /// (`use: enc`, RSA-OAEP) in the same document; a token "signed" with it
    /// must never verify, so such keys are dropped here. Symmetric (`oct`)
    /// keys are never accepted: an HMAC key made from public material is the
    /// classic algorithm-confusion forgery.
    pub fn from_jwks(doc: &Value, allowed: &[Algorithm]) -> Result<KeySet, String> {
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the JWKS has no `keys` array")?;
        let mut set = KeySet::default();
        let mut prints = Vec::new();
        for raw in keys.iter().take(MAX_KEYS) {
            if raw
                .get("use")
                .and_then(Value::as_str)
                .is_some_and(|u| u != "sig")
            {
                continue;
            }
            if let Some(ops) = raw.get("key_ops").and_then(Value::as_array) {
                if !ops.iter().any(|o| o.as_str() == Some("verify")) {
                    continue;
                }
            }
            let Some(kid) = raw.get("kid").and_then(Value::as_str) else {
                continue;
            };
            if kid.is_empty() || kid.len() > 256 {
                continue;
            }
            let stated_alg = match raw.get("alg").and_then(Value::as_str) {
                Some(a) => match a.parse::<Algorithm>() {
                    Ok(a) if allowed.contains(&a) => Some(a),
                    _ => continue,
                },
                None => None,
            };
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
                continue;
            };
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => Family::EcP256,
                    EllipticCurve::P384 => Family::EcP384,
                    _ => continue,
                },
                AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
                    EllipticCurve::Ed25519 => Family::Ed25519,
                    _ => continue,
                },
                AlgorithmParameters::OctetKey(_) => continue,
            };
            if !allowed.iter().any(|a| family.accepts(*a)) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            prints.push(format!(
                "{kid}:{}",
                raw.get("n")
                    .or(raw.get("x"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
            ));
            set.by_kid.insert(
                kid.to_string(),
                Arc::new(KeyEntry {
                    key,
                    family,
                    alg: stated_alg,
                }),
            );
        }
        prints.sort();
        set.fingerprint = prints.join(",");
        Ok(set)
    }

    pub fn single(kid: &str, key: DecodingKey, family: Family, alg: Algorithm) -> KeySet {
        let mut by_kid = HashMap::new();
        by_kid.insert(
            kid.to_string(),
            Arc::new(KeyEntry {
                key,
                family,
                alg: Some(alg),
            }),
        );
        KeySet {
            by_kid,
            fingerprint: kid.to_string(),
        }
    }

    /// Keycloak always sets `kid`; a token without one is accepted only when
    /// the set holds exactly one key, so there is nothing to choose.
    pub fn find(&self, kid: Option<&str>) -> Option<Arc<KeyEntry>> {
        match kid {
            Some(k) => self.by_kid.get(k).cloned(),
            None if self.by_kid.len() == 1 => self.by_kid.values().next().cloned(),
            None => None,
        }
    }

    pub fn len(&self) -> usize {
        self.by_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }
}

enum Source {
    Fixed,
    Remote {
        http: reqwest::Client,
        issuer: String,
        jwks_url: parking_lot::Mutex<Option<String>>,
    },
}

pub enum Lookup {
    Found(Arc<KeyEntry>),
    /// The key set is loaded and has no such key, even after a refetch.
    Unknown,
    /// No key set could be loaded yet: the decision cannot be made.
    Unavailable,
}

pub struct Jwks {
    keys: ArcSwap<KeySet>,
    loaded: AtomicBool,
    source: Source,
    allowed: Vec<Algorithm>,
    ttl: Duration,
    min_refresh: Duration,
    last_attempt: parking_lot::Mutex<Option<Instant>>,
    refetch: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    /// Called when the set changes, so verified-token caches drop entries
    /// signed by keys that may have been withdrawn.
    on_change: parking_lot::Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl Jwks {
    pub fn fixed(set: KeySet, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            keys: ArcSwap::from_pointee(set),
            loaded: AtomicBool::new(true),
            source: Source::Fixed,
            allowed: vec![],
            ttl: Duration::from_secs(3600),
            min_refresh: Duration::from_secs(3600),
            last_attempt: parking_lot::Mutex::new(None),
            refetch: tokio::sync::Mutex::new(()),
            metrics,
            on_change: parking_lot::Mutex::new(None),
        })
    }

    pub fn remote(
        http: reqwest::Client,
        issuer: String,
        jwks_url: Option<String>,
        allowed: Vec<Algorithm>,
        ttl: Duration,
        min_refresh: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            keys: ArcSwap::from_pointee(KeySet::default()),
            loaded: AtomicBool::new(false),
            source: Source::Remote {
                http,
                issuer,
                jwks_url: parking_lot::Mutex::new(jwks_url),
            },
            allowed,
            ttl,
            min_refresh,
            last_attempt: parking_lot::Mutex::new(None),
            refetch: tokio::sync::Mutex::new(()),
            metrics,
            on_change: parking_lot::Mutex::new(None),
        })
    }

    pub fn set_on_change(&self, f: Box<dyn Fn() + Send + Sync>) {
        *self.on_change.lock() = Some(f);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Fetches the key set once. On failure the previous keys stay in use.
    pub async fn refresh(&self) -> Result<(), String> {
        let Source::Remote {
            http,
            issuer,
            jwks_url,
        } = &self.source
        else {
            return Ok(());
        };
        *self.last_attempt.lock() = Some(Instant::now());
        let result = async {
            let known = jwks_url.lock().clone();
            let url = match known {
                Some(u) => u,
                None => {
                    let u = discover(http, issuer).await?;
                    *jwks_url.lock() = Some(u.clone());
                    u
                }
            };
            let doc = get_json(http, &url).await?;
            KeySet::from_jwks(&doc, &self.allowed)
        }
        .await;
        match result {
            Ok(set) => {
                self.metrics
                    .jwks_refresh
                    .with_label_values(&["success"])
                    .inc();
                let changed = set.fingerprint != self.keys.load().fingerprint;
                if set.is_empty() {
                    tracing::warn!("the issuer's JWKS holds no usable signature key");
                }
                self.keys.store(Arc::new(set));
                self.loaded.store(true, Ordering::Release);
                if changed {
                    tracing::info!(keys = self.keys.load().len(), "signing keys loaded");
                    if let Some(f) = self.on_change.lock().as_ref() {
                        f();
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .jwks_refresh
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(error = %e, "refreshing the signing keys failed; keeping the cached ones");
                Err(e)
            }
        }
    }

    /// The key for `kid`; an unknown kid triggers one refetch, rate-limited
    /// so that tokens with random kids cannot make us hammer Keycloak.
    pub async fn lookup(&self, kid: Option<&str>) -> Lookup {
        if let Some(k) = self.keys.load().find(kid) {
            return Lookup::Found(k);
        }
        if matches!(self.source, Source::Fixed) {
            return Lookup::Unknown;
        }
        let due = self
            .last_attempt
            .lock()
            .is_none_or(|t| t.elapsed() >= self.min_refresh);
        if due {
            let _guard = self.refetch.lock().await;
            // Another request may have refetched while we waited.
            let still_due = self
                .last_attempt
                .lock()
                .is_none_or(|t| t.elapsed() >= self.min_refresh);
            if still_due {
                let _ = self.refresh().await;
            }
            if let Some(k) = self.keys.load().find(kid) {
                return Lookup::Found(k);
            }
        }
        if self.is_loaded() {
            Lookup::Unknown
        } else {
            Lookup::Unavailable
        }
    }

    /// Keeps the keys fresh until `shutdown` fires: every `jwks_cache_ttl`
    /// once loaded; with a short backoff while nothing could be loaded.
    pub fn spawn_refresher(self: &Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        if matches!(self.source, Source::Fixed) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                let ok = me.refresh().await.is_ok();
                let wait = if ok {
                    backoff = Duration::from_millis(500);
                    me.ttl
                } else if me.is_loaded() {
                    Duration::from_secs(5).min(me.ttl)
                } else {
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    backoff
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
            }
        });
    }
}

async fn discover(http: &reqwest::Client, issuer: &str) -> Result<String, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let doc = get_json(http, &url).await?;
    // OIDC Discovery 1.0 section 4.3: the document's issuer must be the one
    // we expect, or tokens and keys could come from somewhere else.
    let stated = doc.get("issuer").and_then(Value::as_str).unwrap_or("");
    if stated != issuer {
        return Err(format!(
            "discovery document names issuer `{stated}`, expected `{issuer}`"
        ));
    }
    doc.get("jwks_uri")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| "discovery document has no jwks_uri".to_string())
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let resp = http
        .get(url)
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("GET {url}: status {}", resp.status()));
    }
    if resp
        .content_length()
        .is_some_and(|l| l as usize > MAX_JWKS_BYTES)
    {
        return Err(format!("GET {url}: response too large"));
    }
    let body = resp.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("GET {url}: response too large"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))
}
