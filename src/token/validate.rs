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
use super::{Identity, IdentityParts};
use crate::clock::SharedClock;

/// Tokens longer than this are refused before any parsing. Keycloak access
/// tokens with many roles stay well below it.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Bound on identifiers we store or echo in headers.
const MAX_CLAIM_LEN: usize = 1024;

#[derive(Debug)]
pub enum TokenError {
    /// The token is not acceptable; the reason is for logs and metrics.
    Invalid(Reason),
    /// The keys are not available: the decision cannot be made (503).
    Unavailable(Reason),
}

/// Why a decision came out as it did: the bounded `reason` label of
/// `twofa_checks_total` and of the debug decision line. The set is closed
/// (docs/troubleshooting.md lists it) so that the metric's cardinality is
/// fixed; finer distinctions (an oversized token, a missing `exp`) fold into
/// the nearest label rather than grow it. Never shown to the client, which
/// learns only `invalid_token` (RFC 6750 section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    None,
    MissingToken,
    Malformed,
    MultipleCredentials,
    BadAlgorithm,
    UnknownKid,
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongIssuer,
    WrongAudience,
    WrongClient,
    WrongType,
    NotVerified,
    NoSid,
    TooOld,
    StoreUnavailable,
    KeysUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 19] = [
        Reason::None,
        Reason::MissingToken,
        Reason::Malformed,
        Reason::MultipleCredentials,
        Reason::BadAlgorithm,
        Reason::UnknownKid,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::IssuedInFuture,
        Reason::WrongIssuer,
        Reason::WrongAudience,
        Reason::WrongClient,
        Reason::WrongType,
        Reason::NotVerified,
        Reason::NoSid,
        Reason::TooOld,
        Reason::StoreUnavailable,
        Reason::KeysUnavailable,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Reason::None => "none",
            Reason::MissingToken => "missing_token",
            Reason::Malformed => "malformed",
            Reason::MultipleCredentials => "multiple_credentials",
            Reason::BadAlgorithm => "bad_algorithm",
            Reason::UnknownKid => "unknown_kid",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::WrongClient => "wrong_client",
            Reason::WrongType => "wrong_type",
            Reason::NotVerified => "not_verified",
            Reason::NoSid => "no_sid",
            Reason::TooOld => "too_old",
            Reason::StoreUnavailable => "store_unavailable",
            Reason::KeysUnavailable => "keys_unavailable",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

#[derive(Deserialize, Clone)]
struct Claims {
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
    /// Shared with every cached identity, which therefore does not copy it.
    issuer: Arc<str>,
    algorithms: Vec<Algorithm>,
    audiences: Vec<String>,
    allowed_clients: Vec<String>,
    leeway: i64,
    jwks: Arc<Jwks>,
    cache: Arc<TokenCache>,
    clock: SharedClock,
}

impl Validator {
    // One argument per configuration key the validator applies.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        issuer: String,
        algorithms: Vec<Algorithm>,
        audiences: Vec<String>,
        allowed_clients: Vec<String>,
        leeway: i64,
        jwks: Arc<Jwks>,
        clock: SharedClock,
        token_cache_capacity: usize,
    ) -> Self {
        let cache = Arc::new(TokenCache::new(token_cache_capacity));
        let c = cache.clone();
        // A key that left the set may have signed cached tokens.
        jwks.set_on_change(Box::new(move || c.clear()));
        Self {
            issuer: issuer.into(),
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

    /// The verified-token cache (tests and the memory check look at it).
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    pub async fn validate(&self, token: &str) -> Result<Arc<Identity>, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid(Reason::Malformed));
        }
        let now = self.clock.now();
        let key = TokenCache::key(token);
        if let Some(id) = self.cache.get(&key, now) {
            return Ok(id);
        }
        // Before the key lookup, so that a key change during the
        // verification keeps its result out of the cache.
        let generation = self.cache.generation();
        let claims: Claims = self.verify_signature(token, &self.audiences).await?;
        let id = Arc::new(self.check_claims(claims, now)?);
        self.cache.insert(key, id.clone(), generation);
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
            return Err(TokenError::Invalid(Reason::Malformed));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| TokenError::Invalid(Reason::Malformed))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::Invalid(Reason::BadAlgorithm));
        }
        let entry = match self.jwks.lookup(header.kid.as_deref()).await {
            Lookup::Found(e) => e,
            Lookup::Unknown => return Err(TokenError::Invalid(Reason::UnknownKid)),
            Lookup::Unavailable => return Err(TokenError::Unavailable(Reason::KeysUnavailable)),
        };
        if !entry.family.accepts(header.alg) || entry.alg.is_some_and(|a| a != header.alg) {
            return Err(TokenError::Invalid(Reason::BadAlgorithm));
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
                    K::InvalidSignature => Reason::BadSignature,
                    K::InvalidIssuer => Reason::WrongIssuer,
                    K::InvalidAudience => Reason::WrongAudience,
                    // A token without `aud` where one is required is
                    // addressed to nobody: the audience is what is wrong.
                    K::MissingRequiredClaim(c) if c == "aud" => Reason::WrongAudience,
                    K::MissingRequiredClaim(_) => Reason::Malformed,
                    K::InvalidAlgorithm => Reason::BadAlgorithm,
                    _ => Reason::Malformed,
                }))
            }
        }
    }

    fn check_claims(&self, c: Claims, now: i64) -> Result<Identity, TokenError> {
        let lw = self.leeway;
        let exp = c.exp.ok_or(TokenError::Invalid(Reason::Malformed))?;
        if exp.saturating_add(lw) <= now {
            return Err(TokenError::Invalid(Reason::Expired));
        }
        if c.nbf.is_some_and(|nbf| nbf - lw > now) {
            return Err(TokenError::Invalid(Reason::NotYetValid));
        }
        if c.iat.is_some_and(|iat| iat - lw > now) {
            return Err(TokenError::Invalid(Reason::IssuedInFuture));
        }
        // Keycloak marks its token kinds with `typ`: Bearer (access), ID,
        // Refresh, Logout. Only access tokens authorize requests.
        if c.typ
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
        {
            return Err(TokenError::Invalid(Reason::WrongType));
        }
        if !self.allowed_clients.is_empty()
            && !c
                .azp
                .as_deref()
                .is_some_and(|a| self.allowed_clients.iter().any(|x| x == a))
        {
            return Err(TokenError::Invalid(Reason::WrongClient));
        }
        let sub = c
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(TokenError::Invalid(Reason::Malformed))?;
        let sid = c.sid.or(c.session_state).filter(|s| !s.is_empty());
        let too_long = |s: &Option<String>| s.as_ref().is_some_and(|s| s.len() > MAX_CLAIM_LEN);
        if sub.len() > MAX_CLAIM_LEN
            || too_long(&sid)
            || too_long(&c.preferred_username)
            || too_long(&c.email)
        {
            return Err(TokenError::Invalid(Reason::Malformed));
        }
        let roles: Vec<&str> = c
            .realm_access
            .as_ref()
            .map(|r| r.roles.iter().map(String::as_str).collect())
            .unwrap_or_default();
        // jsonwebtoken has checked that `iss` is ours: share our copy.
        Ok(Identity::new(
            self.issuer.clone(),
            IdentityParts {
                sub: &sub,
                sid: sid.as_deref(),
                username: c.preferred_username.as_deref(),
                email: c.email.as_deref(),
                email_verified: c.email_verified.unwrap_or(false),
                given_name: c.given_name.as_deref(),
                family_name: c.family_name.as_deref(),
                locale: c.locale.as_deref(),
                roles: &roles,
                exp,
                valid_until: exp.saturating_add(lw),
            },
        ))
    }
}

pub fn parse_algorithms(names: &[String]) -> Vec<Algorithm> {
    names.iter().filter_map(|n| n.parse().ok()).collect()
}
