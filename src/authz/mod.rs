//! The authorization decision, shared by the gRPC `Check` and the HTTP
//! forward-auth endpoint: policy lookup, token validation, session state, and
//! one pure function, [`decide`], that turns them into allow or deny.

pub mod path;
pub mod policy;

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::{Config, Requirement};
use crate::error::Error;
use crate::store::{EphemeralStore, SessionStore, Verified};
use crate::token::{Identity, Reason, TokenError, Validator};

pub use policy::{Need, Policy, EXT_MAX_AGE, EXT_MODE, EXT_REQUIRE};

/// The parts of a request the decision reads, borrowed from the transport.
pub struct CheckInput<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// As sent by the client, query included.
    pub path: &'a str,
    pub authorization: AuthHeader<'a>,
    pub ext_require: Option<&'a str>,
    pub ext_max_age: Option<&'a str>,
    pub ext_mode: Option<&'a str>,
}

/// What the token looked like.
pub enum TokenState {
    NotNeeded,
    Missing,
    Invalid(Reason),
    Unavailable(Reason),
    Valid(Arc<Identity>),
}

/// What the session store said about the token's session.
#[derive(Debug, Clone, Copy)]
pub enum SessionState {
    NotLooked,
    NoSession,
    Unavailable,
    NotVerified,
    Verified(Verified),
}

#[derive(Debug)]
pub enum Decision {
    /// `identity` is None for requirement `none`: every identity header is
    /// then removed and none is set.
    Allow {
        identity: Option<Arc<Identity>>,
        second_factor: Option<Verified>,
    },
    /// The reason is for metrics and logs only; the client sees `Error`.
    Deny(Error, Reason),
    /// Dry run (a rule's `dry_run`, or `twofa.mode = "dry-run"`): the request
    /// would have been refused with `would_deny` and is allowed instead.
    /// Identity headers come only from a valid token, never from a refusal's
    /// guesswork; the upstream learns the refusal from `…would-deny`.
    DryRun {
        would_deny: Error,
        reason: Reason,
        identity: Option<Arc<Identity>>,
        second_factor: Option<Verified>,
    },
}

/// The decision label of `twofa_checks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    MissingToken,
    InvalidToken,
    SecondFactorRequired,
    Unavailable,
    DryRun,
}

impl Verdict {
    pub const ALL: [Verdict; 6] = [
        Verdict::Allow,
        Verdict::MissingToken,
        Verdict::InvalidToken,
        Verdict::SecondFactorRequired,
        Verdict::Unavailable,
        Verdict::DryRun,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::MissingToken => "missing_token",
            Verdict::InvalidToken => "invalid_token",
            Verdict::SecondFactorRequired => "second_factor_required",
            Verdict::Unavailable => "unavailable",
            Verdict::DryRun => "dry_run",
        }
    }

    /// The reasons each decision can carry: the series of
    /// `twofa_checks_total` resolved at start.
    pub fn reasons(self) -> &'static [Reason] {
        use Reason as R;
        match self {
            Verdict::Allow => &[R::None],
            Verdict::MissingToken => &[R::MissingToken],
            Verdict::InvalidToken => &[
                R::Malformed,
                R::MultipleCredentials,
                R::BadAlgorithm,
                R::UnknownKid,
                R::BadSignature,
                R::Expired,
                R::NotYetValid,
                R::IssuedInFuture,
                R::WrongIssuer,
                R::WrongAudience,
                R::WrongClient,
                R::WrongType,
            ],
            Verdict::SecondFactorRequired => &[R::NotVerified, R::NoSid, R::TooOld],
            // `malformed` here is an invalid per-route context extension:
            // the operator's configuration, not the client, is at fault.
            Verdict::Unavailable => &[R::StoreUnavailable, R::KeysUnavailable, R::Malformed],
            // Whatever enforcement would have refused for.
            Verdict::DryRun => &[
                R::MissingToken,
                R::Malformed,
                R::MultipleCredentials,
                R::BadAlgorithm,
                R::UnknownKid,
                R::BadSignature,
                R::Expired,
                R::NotYetValid,
                R::IssuedInFuture,
                R::WrongIssuer,
                R::WrongAudience,
                R::WrongClient,
                R::WrongType,
                R::NotVerified,
                R::NoSid,
                R::TooOld,
                R::StoreUnavailable,
                R::KeysUnavailable,
            ],
        }
    }
}

/// The `decision` and `reason` labels of one Check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub reason: Reason,
}

impl Decision {
    pub fn outcome(&self) -> Outcome {
        let (verdict, reason) = match self {
            Decision::Allow { .. } => (Verdict::Allow, Reason::None),
            Decision::DryRun { reason, .. } => (Verdict::DryRun, *reason),
            Decision::Deny(Error::MissingToken, r) => (Verdict::MissingToken, *r),
            Decision::Deny(Error::InvalidToken(_), r) => (Verdict::InvalidToken, *r),
            Decision::Deny(Error::SecondFactorRequired { .. }, r) => {
                (Verdict::SecondFactorRequired, *r)
            }
            Decision::Deny(_, r) => (Verdict::Unavailable, *r),
        };
        Outcome { verdict, reason }
    }
}

/// The pure decision. Every path that cannot establish an allow ends in a
/// deny; every "cannot tell" (keys or session store unavailable) is a 503,
/// never an allow.
pub fn decide(
    need: Need,
    token: TokenState,
    session: SessionState,
    now: i64,
    methods: &[String],
) -> Decision {
    if need.require == Requirement::None {
        return Decision::Allow {
            identity: None,
            second_factor: None,
        };
    }
    let identity = match token {
        TokenState::NotNeeded | TokenState::Missing => {
            return Decision::Deny(Error::MissingToken, Reason::MissingToken)
        }
        TokenState::Invalid(why) => return Decision::Deny(Error::InvalidToken(why.label()), why),
        TokenState::Unavailable(why) => {
            return Decision::Deny(Error::AuthzUnavailable("signing keys not loaded"), why)
        }
        TokenState::Valid(id) => id,
    };
    let verified = match session {
        SessionState::Verified(v) => Some(v),
        _ => None,
    };
    if need.require == Requirement::Token {
        return Decision::Allow {
            identity: Some(identity),
            second_factor: verified,
        };
    }
    let required = |why| {
        Decision::Deny(
            Error::SecondFactorRequired {
                methods: methods.to_vec(),
                max_age: None,
            },
            why,
        )
    };
    match session {
        SessionState::Unavailable => Decision::Deny(
            Error::AuthzUnavailable("session store"),
            Reason::StoreUnavailable,
        ),
        // A token without `sid` (client credentials, or a mapper that drops
        // it) can never carry a passed factor.
        SessionState::NoSession => required(Reason::NoSid),
        SessionState::NotLooked | SessionState::NotVerified => required(Reason::NotVerified),
        SessionState::Verified(v) => {
            // A step-up asks for a factor passed recently; a remembered
            // device passes none, whenever it was used.
            let fresh = match need.max_age {
                Some(max) => {
                    v.factor.is_fresh_proof() && now.saturating_sub(v.at) <= max.as_secs() as i64
                }
                None => true,
            };
            if fresh {
                Decision::Allow {
                    identity: Some(identity),
                    second_factor: Some(v),
                }
            } else {
                required(Reason::TooOld)
            }
        }
    }
}

/// The `Authorization` header of a request, as its transport found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthHeader<'a> {
    Absent,
    /// One header, or (gRPC) all of them joined with `,` by Envoy.
    Value(&'a str),
    /// Sent more than once, or not text: never one credential.
    Invalid(Reason),
}

impl<'a> AuthHeader<'a> {
    pub fn from_option(v: Option<&'a str>) -> Self {
        v.map_or(AuthHeader::Absent, AuthHeader::Value)
    }
}

/// The `Bearer` credentials of an Authorization header (RFC 6750 section
/// 2.1; the scheme is case-insensitive). `Err` for something that claims to
/// be a bearer token but cannot be one, and for more than one credential:
/// two headers, or one value naming two (`Bearer a, Bearer b`, `Basic x,
/// Bearer y`). Envoy joins repeated headers with `,` before a gRPC Check, so
/// any comma is treated as a second credential, whatever the scheme; no
/// credential this service accepts contains one.
pub fn bearer(header: AuthHeader<'_>) -> Result<Option<&str>, Reason> {
    let h = match header {
        AuthHeader::Absent => return Ok(None),
        AuthHeader::Invalid(why) => return Err(why),
        AuthHeader::Value(h) => h,
    };
    // The header holds a whole JWT (about a kilobyte) on every Check: the
    // scans below are memchr's SIMD ones.
    if memchr::memchr(b',', h.as_bytes()).is_some() {
        return Err(Reason::MultipleCredentials);
    }
    let h = h.trim();
    let Some((scheme, rest)) = h.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim();
    if token.is_empty() {
        return Ok(None);
    }
    // Stray whitespace inside. Other bad characters need no scan on this hot
    // path: such a token is never in the verified-token cache and fails JWT
    // parsing, which answers invalid_token the same way.
    // `contains([' ', '\t'])` matched char by char, some ten instructions a
    // byte: 7% of a Check's instructions (callgrind, BENCHMARKS.md).
    if memchr::memchr2(b' ', b'\t', token.as_bytes()).is_some() {
        return Err(Reason::Malformed);
    }
    Ok(Some(token))
}

pub struct Authorizer {
    policy: Policy,
    validator: Arc<Validator>,
    sessions: Arc<dyn SessionStore>,
    hints: Arc<dyn EphemeralStore>,
    clock: SharedClock,
    methods: Vec<String>,
    pub headers: IdentityHeaders,
    www_missing: String,
    www_invalid: String,
}

impl Authorizer {
    pub fn new(
        cfg: &Config,
        validator: Arc<Validator>,
        sessions: Arc<dyn SessionStore>,
        hints: Arc<dyn EphemeralStore>,
        clock: SharedClock,
    ) -> Self {
        let realm = validator.issuer().replace('"', "");
        Self {
            policy: Policy::new(&cfg.policy),
            www_missing: format!("Bearer realm=\"{realm}\""),
            www_invalid: format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
            validator,
            sessions,
            hints,
            clock,
            methods: cfg.security.methods.clone(),
            headers: IdentityHeaders::new(&cfg.policy.identity_header_prefix),
        }
    }

    pub fn validator(&self) -> &Arc<Validator> {
        &self.validator
    }

    pub async fn check(&self, req: &CheckInput<'_>) -> Decision {
        self.check_identified(req).await.0
    }

    /// [`Self::check`], and the identity of a valid token whatever the
    /// decision: a refusal of a known user names them in its trace span.
    pub async fn check_identified(
        &self,
        req: &CheckInput<'_>,
    ) -> (Decision, Option<Arc<Identity>>) {
        let need = match self.policy.evaluate(
            req.method,
            req.host,
            req.path,
            req.ext_require,
            req.ext_max_age,
            req.ext_mode,
        ) {
            Ok(n) => n,
            Err(bad) => {
                tracing::error!(
                    extension = bad.0,
                    "invalid per-route context extension; failing closed"
                );
                return (
                    Decision::Deny(
                        Error::AuthzUnavailable("invalid route configuration"),
                        Reason::Malformed,
                    ),
                    None,
                );
            }
        };
        let now = self.clock.now();
        if need.require == Requirement::None {
            let d = decide(
                need,
                TokenState::NotNeeded,
                SessionState::NotLooked,
                now,
                &self.methods,
            );
            return (d, None);
        }
        let token = match bearer(req.authorization) {
            Ok(None) => TokenState::Missing,
            Err(why) => TokenState::Invalid(why),
            Ok(Some(t)) => match self.validator.validate(t).await {
                Ok(id) => TokenState::Valid(id),
                Err(TokenError::Invalid(why)) => TokenState::Invalid(why),
                Err(TokenError::Unavailable(why)) => TokenState::Unavailable(why),
            },
        };
        let session = match &token {
            TokenState::Valid(id) => self.session_state(id).await,
            _ => SessionState::NotLooked,
        };
        let session = match (need.require, session) {
            // A `token` route does not depend on the session store: report
            // "none" rather than fail when it cannot answer.
            (Requirement::Token, SessionState::Unavailable) => SessionState::NotVerified,
            (_, s) => s,
        };
        let identity = match &token {
            TokenState::Valid(id) => Some(id.clone()),
            _ => None,
        };
        let decision = match (
            decide(need, token, session, now, &self.methods),
            identity.as_ref(),
        ) {
            (Decision::Deny(Error::SecondFactorRequired { .. }, why), Some(id)) => Decision::Deny(
                Error::SecondFactorRequired {
                    methods: self.methods_of(id).await,
                    max_age: None,
                },
                why,
            ),
            (d, _) => d,
        };
        let decision = match decision {
            Decision::Deny(would_deny, reason) if need.dry_run => {
                // Logged at info: dry run exists so that operators can see
                // what enforcement would refuse before it refuses anything.
                tracing::info!(
                    target: "twofa::dry_run",
                    status = would_deny.status().as_u16(),
                    code = would_deny.code(),
                    reason = reason.label(),
                    method = req.method,
                    host = req.host,
                    "dry run: this request would be refused; allowed"
                );
                Decision::DryRun {
                    would_deny,
                    reason,
                    second_factor: match session {
                        SessionState::Verified(v) => Some(v),
                        _ => None,
                    },
                    identity: identity.clone(),
                }
            }
            d => d,
        };
        // `debug!` tests the level before it evaluates its fields: with the
        // default filter this line costs a relaxed atomic load, and the
        // subject hash below is never formatted. The hash is the store's
        // subject key (SHA-256 of iss and sub), cut to 16 hex digits: enough
        // to follow one user through the logs, never the `sub` itself.
        tracing::debug!(
            decision = decision.outcome().verdict.label(),
            reason = decision.outcome().reason.label(),
            subject = identity
                .as_ref()
                .map_or(String::new(), |id| id.subject_key()[..16].to_owned())
                .as_str(),
            "authorization decision"
        );
        (decision, identity)
    }

    /// The methods this user can use, as the `/user` API last published
    /// them; the operator's enabled methods when unknown (first visit, or
    /// the hint store cannot answer: a denial never waits on it).
    async fn methods_of(&self, id: &Identity) -> Vec<String> {
        // Where the `/user` API leaves the methods a user can use: a Check
        // must not read the database.
        let key = crate::store::keys::methods_hint(&id.subject_key());
        match self.hints.get(&key).await {
            Ok(Some(json)) => match serde_json::from_str::<Vec<String>>(&json) {
                Ok(list) => list
                    .into_iter()
                    .filter(|m| self.methods.contains(m))
                    .collect(),
                Err(_) => self.methods.clone(),
            },
            _ => self.methods.clone(),
        }
    }

    async fn session_state(&self, id: &Identity) -> SessionState {
        let Some(key) = id.session_key() else {
            return SessionState::NoSession;
        };
        match self.sessions.get(&id.subject_key(), &key.hex()).await {
            Ok(Some(v)) => SessionState::Verified(v),
            Ok(None) => SessionState::NotVerified,
            Err(e) => {
                tracing::warn!(error = %e, "session store unavailable; failing closed");
                SessionState::Unavailable
            }
        }
    }

    /// `www-authenticate` for a 401 (RFC 6750 section 3).
    pub fn www_authenticate(&self, err: &Error) -> Option<&str> {
        match err {
            Error::MissingToken => Some(&self.www_missing),
            Error::InvalidToken(_) => Some(&self.www_invalid),
            _ => None,
        }
    }
}

/// The identity header names for the configured prefix, built once.
pub struct IdentityHeaders {
    pub prefix: String,
    pub user: String,
    pub subject: String,
    pub email: String,
    pub second_factor: String,
    pub second_factor_at: String,
    pub groups: String,
    /// Set in dry run only: the status the request would have been refused
    /// with (`401`, `403`, `503`).
    pub would_deny: String,
}

impl IdentityHeaders {
    pub fn new(prefix: &str) -> Self {
        let p = prefix.to_ascii_lowercase();
        Self {
            user: format!("{p}user"),
            subject: format!("{p}subject"),
            email: format!("{p}email"),
            second_factor: format!("{p}second-factor"),
            second_factor_at: format!("{p}second-factor-at"),
            groups: format!("{p}groups"),
            would_deny: format!("{p}would-deny"),
            prefix: p,
        }
    }

    pub fn has_prefix(&self, name: &str) -> bool {
        // On bytes: slicing the str could cut a multi-byte character of a
        // client-chosen name and panic.
        name.as_bytes()
            .get(..self.prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(self.prefix.as_bytes()))
    }

    /// The headers an allowed request carries upstream. Values a proxy would
    /// refuse (control characters) are left out rather than sent mangled;
    /// empty values are left out because Envoy drops them, which would let a
    /// client-sent value of the same name through.
    pub fn values<'a>(
        &'a self,
        id: &'a Identity,
        second: Option<Verified>,
    ) -> impl Iterator<Item = (&'a str, std::borrow::Cow<'a, str>)> + 'a {
        use std::borrow::Cow;
        let factor: Cow<'a, str> = Cow::Borrowed(second.map_or("none", |v| v.factor.as_str()));
        let at = second.map(|v| Cow::Owned(v.at.to_string()));
        [
            (self.user.as_str(), id.username().map(Cow::Borrowed)),
            (self.subject.as_str(), Some(Cow::Borrowed(id.sub()))),
            (self.email.as_str(), id.email().map(Cow::Borrowed)),
            (self.second_factor.as_str(), Some(factor)),
            (self.second_factor_at.as_str(), at),
            (self.groups.as_str(), Some(Cow::Borrowed(id.groups()))),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.filter(|v| header_safe(v)).map(|v| (k, v)))
    }
}

fn header_safe(v: &str) -> bool {
    !v.is_empty() && v.len() <= 4096 && !v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Factor;
    use std::time::Duration;

    fn id(sid: Option<&str>) -> Arc<Identity> {
        Arc::new(Identity::new(
            "https://kc/realms/r".into(),
            crate::token::IdentityParts {
                sub: "u1",
                sid,
                username: Some("alice"),
                email: Some("a@example.com"),
                email_verified: true,
                given_name: None,
                family_name: None,
                locale: None,
                roles: &["admin", "user"],
                exp: 2_000_000_000,
                valid_until: 2_000_000_030,
            },
        ))
    }

    fn need(r: Requirement, max_age: Option<u64>) -> Need {
        Need {
            require: r,
            max_age: max_age.map(Duration::from_secs),
            dry_run: false,
        }
    }

    const NOW: i64 = 1_800_000_000;
    fn verified(ago: i64) -> SessionState {
        SessionState::Verified(Verified {
            factor: Factor::Totp,
            at: NOW - ago,
        })
    }
    fn m() -> Vec<String> {
        vec!["totp".into()]
    }

    /// A session verified by a remembered device passes `2fa`, never a
    /// step-up `max_age`, however recently the device was used.
    #[test]
    fn a_remembered_device_never_satisfies_max_age() {
        let device = |ago| {
            SessionState::Verified(Verified {
                factor: Factor::Device,
                at: NOW - ago,
            })
        };
        let d = decide(
            need(Requirement::TwoFa, None),
            TokenState::Valid(id(Some("s"))),
            device(5),
            NOW,
            &m(),
        );
        assert!(matches!(d, Decision::Allow { .. }));
        for ago in [0, 5] {
            let d = decide(
                need(Requirement::TwoFa, Some(900)),
                TokenState::Valid(id(Some("s"))),
                device(ago),
                NOW,
                &m(),
            );
            assert_eq!(d.outcome().verdict, Verdict::SecondFactorRequired);
        }
        let d = decide(
            need(Requirement::TwoFa, Some(900)),
            TokenState::Valid(id(Some("s"))),
            verified(5),
            NOW,
            &m(),
        );
        assert!(matches!(d, Decision::Allow { .. }));
    }

    #[test]
    fn table_of_section_3() {
        let d = decide(
            need(Requirement::None, None),
            TokenState::NotNeeded,
            SessionState::NotLooked,
            NOW,
            &m(),
        );
        assert!(matches!(d, Decision::Allow { identity: None, .. }));

        let d = decide(
            need(Requirement::Token, None),
            TokenState::Missing,
            SessionState::NotLooked,
            NOW,
            &m(),
        );
        assert_eq!(d.outcome().verdict, Verdict::MissingToken);

        let d = decide(
            need(Requirement::TwoFa, None),
            TokenState::Invalid(Reason::Expired),
            SessionState::NotLooked,
            NOW,
            &m(),
        );
        assert_eq!(d.outcome().verdict, Verdict::InvalidToken);

        let d = decide(
            need(Requirement::Token, None),
            TokenState::Valid(id(Some("s"))),
            SessionState::NotVerified,
            NOW,
            &m(),
        );
        assert!(matches!(
            d,
            Decision::Allow {
                identity: Some(_),
                second_factor: None
            }
        ));

        let d = decide(
            need(Requirement::TwoFa, None),
            TokenState::Valid(id(Some("s"))),
            SessionState::NotVerified,
            NOW,
            &m(),
        );
        assert_eq!(d.outcome().verdict, Verdict::SecondFactorRequired);

        let d = decide(
            need(Requirement::TwoFa, None),
            TokenState::Valid(id(None)),
            SessionState::NoSession,
            NOW,
            &m(),
        );
        assert_eq!(d.outcome().verdict, Verdict::SecondFactorRequired);

        let d = decide(
            need(Requirement::TwoFa, Some(900)),
            TokenState::Valid(id(Some("s"))),
            verified(901),
            NOW,
            &m(),
        );
        assert_eq!(d.outcome().verdict, Verdict::SecondFactorRequired);

        let d = decide(
            need(Requirement::TwoFa, Some(900)),
            TokenState::Valid(id(Some("s"))),
            verified(900),
            NOW,
            &m(),
        );
        assert_eq!(d.outcome().verdict, Verdict::Allow);

        let d = decide(
            need(Requirement::TwoFa, None),
            TokenState::Valid(id(Some("s"))),
            verified(40_000),
            NOW,
            &m(),
        );
        assert_eq!(d.outcome().verdict, Verdict::Allow);
    }

    #[test]
    fn cannot_decide_means_503_never_allow() {
        let d = decide(
            need(Requirement::TwoFa, None),
            TokenState::Valid(id(Some("s"))),
            SessionState::Unavailable,
            NOW,
            &m(),
        );
        assert!(matches!(d, Decision::Deny(Error::AuthzUnavailable(_), _)));
        let d = decide(
            need(Requirement::Token, None),
            TokenState::Unavailable(Reason::KeysUnavailable),
            SessionState::NotLooked,
            NOW,
            &m(),
        );
        assert!(matches!(d, Decision::Deny(Error::AuthzUnavailable(_), _)));
        assert_eq!(d.outcome().verdict, Verdict::Unavailable);
    }

    #[test]
    fn bearer_parsing() {
        let b = |v| bearer(AuthHeader::Value(v));
        assert_eq!(bearer(AuthHeader::Absent), Ok(None));
        assert_eq!(b("Basic abc"), Ok(None));
        assert_eq!(b("Bearer"), Ok(None));
        assert_eq!(b("Bearer   "), Ok(None));
        assert_eq!(b("bearer a.b.c"), Ok(Some("a.b.c")));
        assert_eq!(b("BEARER a.b.c"), Ok(Some("a.b.c")));
        assert_eq!(b("Bearer a.b\tc"), Err(Reason::Malformed));
        assert_eq!(b("Bearer a.b c"), Err(Reason::Malformed));
    }

    #[test]
    fn more_than_one_credential_is_invalid() {
        let b = |v| bearer(AuthHeader::Value(v));
        let two = Err(Reason::MultipleCredentials);
        assert_eq!(b("Bearer a.b.c, Bearer d.e.f"), two);
        assert_eq!(b("Bearer a.b.c,Bearer d.e.f"), two);
        assert_eq!(b("Basic eD15, Bearer a.b.c"), two);
        assert_eq!(b("Bearer a.b.c, Basic eD15"), two);
        assert_eq!(b("Bearer a.b.c,"), two);
        assert_eq!(b(", Bearer a.b.c"), two);
        assert_eq!(
            bearer(AuthHeader::Invalid(Reason::MultipleCredentials)),
            Err(Reason::MultipleCredentials)
        );
    }

    #[test]
    fn identity_headers() {
        let h = IdentityHeaders::new("x-auth-request-");
        let who = id(Some("s"));
        let v: Vec<(String, String)> = h
            .values(
                &who,
                Some(Verified {
                    factor: Factor::Sms,
                    at: 42,
                }),
            )
            .map(|(k, v)| (k.to_string(), v.into_owned()))
            .collect();
        assert!(v.contains(&("x-auth-request-user".into(), "alice".into())));
        assert!(v.contains(&("x-auth-request-subject".into(), "u1".into())));
        assert!(v.contains(&("x-auth-request-second-factor".into(), "sms".into())));
        assert!(v.contains(&("x-auth-request-second-factor-at".into(), "42".into())));
        assert!(v.contains(&("x-auth-request-groups".into(), "admin,user".into())));
        let evil = who.with_username(Some("bob\r\nx-evil: 1"));
        assert!(!h
            .values(&evil, None)
            .any(|(k, _)| k == "x-auth-request-user"));
        assert!(h.has_prefix("X-Auth-Request-Foo"));
        assert!(!h.has_prefix("x-auth"));
    }
}
