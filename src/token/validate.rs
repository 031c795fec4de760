//! Access-token validation. jsonwebtoken checks the signature, the algorithm
//! and `iss`/`aud`; everything time-related is checked here against the
//! injected clock with the configured leeway, because the crate's defaults
//! differ from the contract (60 s leeway, `nbf` unchecked, `iat` never
//! checked) and because tests must control time.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::cache::TokenCache;
use super::jwks::{Jwks, Lookup};
use crate::clock::SharedClock;

/// Tokens longer than this are refused before any parsing. Keycloak access
/// tokens with many roles stay well below it.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Bound on identifiers we store or echo in headers.
const MAX_CLAIM_LEN: usize = 1024;

#[derive(Debug)]
pub enum TokenError {
    /// The token is not acceptable; the reason is for logs and metrics.
    Invalid(&'static str),
    /// The keys are not available: the decision cannot be made (503).
    Unavailable(&'static str),
}

/// What a valid access token says about its bearer.
#[derive(Debug, Clone)]
pub struct Identity {
    pub iss: String,
    pub sub: String,
    /// Keycloak's session id (`sid`, or the older `session_state`).
    pub sid: Option<String>,
    pub username: Option<String>,
    pub email: Option<String>,
    pub email_verified: bool,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    /// The user's language (Keycloak's `locale` claim, e.g. `de`, `de-DE`),
    /// for the messages sent to them; None when absent or implausible.
    pub locale: Option<String>,
    /// `realm_access.roles`, comma-joined for the groups header.
    pub groups: String,
    pub exp: i64,
    pub iat: Option<i64>,
    /// `exp` plus the leeway: when a cached copy stops being usable.
    pub valid_until: i64,
    /// Precomputed session hash of (iss, sub, sid) (`token::session_hash`).
    pub session_key: Option<String>,
    /// Precomputed subject hash of (iss, sub) (`token::subject_hash`): how
    /// short-lived state names this user (`store::keys`).
    pub subject_key: String,
}

#[derive(Deserialize, Clone)]
struct Claims {
    iss: String,
    sub: Option<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
    typ: Option<String>,
    azp: Option<String>,
    sid: Option<String>,
    session_state: Option<String>,
    preferred_username: Option<String>,
    email: Option<String>,
    email_verified: Option<bool>,
    given_name: Option<String>,
    family_name: Option<String>,
    /// Not a string in some setups (a mapper gone wrong): ignored then,
    /// never a reason to refuse the token.
    #[serde(default, deserialize_with = "lenient_locale")]
    locale: Option<String>,
    realm_access: Option<RealmAccess>,
}

/// A language tag is short and made of letters, digits, `-` and `_`;
/// anything else (or a non-string) is dropped.
fn lenient_locale<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_str()
        .filter(|s| {
            (2..=35).contains(&s.len())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(str::to_owned))
}

#[derive(Deserialize, Clone)]
struct RealmAccess {
    #[serde(default)]
    roles: Vec<String>,
}

pub struct Validator {
    issuer: String,
    algorithms: Vec<Algorithm>,
    audiences: Vec<String>,
    allowed_clients: Vec<String>,
    leeway: i64,
    jwks: Arc<Jwks>,
    cache: Arc<TokenCache>,
    clock: SharedClock,
}

impl Validator {
    pub fn new(
        issuer: String,
        algorithms: Vec<Algorithm>,
        audiences: Vec<String>,
        allowed_clients: Vec<String>,
        leeway: i64,
        jwks: Arc<Jwks>,
        clock: SharedClock,
    ) -> Self {
        let cache = Arc::new(TokenCache::new());
        let c = cache.clone();
        jwks.set_on_change(Box::new(move || c.clear()));
        Self {
            issuer,
            algorithms,
            audiences,
            allowed_clients,
            leeway,
            jwks,
            cache,
            clock,
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn jwks(&self) -> &Arc<Jwks> {
        &self.jwks
    }

    pub fn leeway(&self) -> i64 {
        self.leeway
    }

    pub fn allowed_clients(&self) -> &[String] {
        &self.allowed_clients
    }

    pub async fn validate(&self, token: &str) -> Result<Arc<Identity>, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid("oversized"));
        }
        let now = self.clock.now();
        let key = TokenCache::key(token);
        if let Some(id) = self.cache.get(&key, now) {
            return Ok(id);
        }
        let claims: Claims = self.verify_signature(token, &self.audiences).await?;
        let id = Arc::new(self.check_claims(claims, now)?);
        self.cache.insert(key, id.clone(), now);
        Ok(id)
    }

    /// Verifies the signature, algorithm and issuer of any JWT from our
    /// issuer, and that `aud` holds one of `audiences` when that is not
    /// empty; returns its claims. Access tokens use `keycloak.audiences`;
    /// logout tokens are addressed to a client id instead.
    pub async fn verify_signature<T: serde::de::DeserializeOwned + Clone>(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<T, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid("oversized"));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid("malformed"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::Invalid("algorithm not allowed"));
        }
        let entry = match self.jwks.lookup(header.kid.as_deref()).await {
            Lookup::Found(e) => e,
            Lookup::Unknown => return Err(TokenError::Invalid("unknown key")),
            Lookup::Unavailable => return Err(TokenError::Unavailable("signing keys not loaded")),
        };
        if !entry.family.accepts(header.alg) || entry.alg.is_some_and(|a| a != header.alg) {
            return Err(TokenError::Invalid("algorithm does not match the key"));
        }
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = 0;
        v.validate_exp = false;
        v.validate_nbf = false;
        v.set_issuer(&[&self.issuer]);
        if audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(audiences);
        }
        // jsonwebtoken checks `aud` only when the claim is present: a token
        // without one must not pass a configured audience restriction.
        if audiences.is_empty() {
            v.set_required_spec_claims(&["exp", "iss"]);
        } else {
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
        }
        match jsonwebtoken::decode::<T>(token, &entry.key, &v) {
            Ok(data) => Ok(data.claims),
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind as K;
                Err(TokenError::Invalid(match e.kind() {
                    K::InvalidSignature => "bad signature",
                    K::InvalidIssuer => "wrong issuer",
                    K::InvalidAudience => "wrong audience",
                    K::MissingRequiredClaim(_) => "missing claim",
                    K::InvalidAlgorithm => "algorithm not allowed",
                    _ => "malformed",
                }))
            }
        }
    }

    fn check_claims(&self, c: Claims, now: i64) -> Result<Identity, TokenError> {
        let lw = self.leeway;
        let exp = c.exp.ok_or(TokenError::Invalid("missing claim"))?;
        if exp.saturating_add(lw) <= now {
            return Err(TokenError::Invalid("expired"));
        }
        if c.nbf.is_some_and(|nbf| nbf - lw > now) {
            return Err(TokenError::Invalid("not yet valid"));
        }
        if c.iat.is_some_and(|iat| iat - lw > now) {
            return Err(TokenError::Invalid("issued in the future"));
        }
        // Keycloak marks its token kinds with `typ`: Bearer (access), ID,
        // Refresh, Logout. Only access tokens authorize requests.
        if c.typ
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
        {
            return Err(TokenError::Invalid("not an access token"));
        }
        if !self.allowed_clients.is_empty()
            && !c
                .azp
                .as_deref()
                .is_some_and(|a| self.allowed_clients.iter().any(|x| x == a))
        {
            return Err(TokenError::Invalid("client not allowed"));
        }
        let sub = c
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(TokenError::Invalid("missing claim"))?;
        let sid = c.sid.or(c.session_state).filter(|s| !s.is_empty());
        let too_long = |s: &Option<String>| s.as_ref().is_some_and(|s| s.len() > MAX_CLAIM_LEN);
        if sub.len() > MAX_CLAIM_LEN
            || too_long(&sid)
            || too_long(&c.preferred_username)
            || too_long(&c.email)
        {
            return Err(TokenError::Invalid("claim too long"));
        }
        let groups = c
            .realm_access
            .map(|r| r.roles.join(","))
            .unwrap_or_default();
        let session_key = sid
            .as_deref()
            .map(|sid| super::session_hash(&c.iss, &sub, sid));
        let subject_key = super::subject_hash(&c.iss, &sub);
        Ok(Identity {
            session_key,
            subject_key,
            iss: c.iss,
            sub,
            sid,
            username: c.preferred_username,
            email: c.email,
            email_verified: c.email_verified.unwrap_or(false),
            given_name: c.given_name,
            family_name: c.family_name,
            locale: c.locale,
            groups,
            exp,
            iat: c.iat,
            valid_until: exp.saturating_add(lw),
        })
    }
}

pub fn parse_algorithms(names: &[String]) -> Vec<Algorithm> {
    names.iter().filter_map(|n| n.parse().ok()).collect()
}
