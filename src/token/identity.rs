//! What a valid access token says about its bearer, in the compact form the
//! verified-token cache holds up to `cache.token_capacity` (65,536 by default)
//! of. With eight `String`s, a hex session key and the issuer copied into
//! every token, an entry cost about 900 bytes of resident memory; now the
//! issuer is shared, the claims' strings live in one allocation and the
//! session-store key is 32 bytes computed once: about 440 bytes an entry,
//! the cache's own table included (`examples/token_cache_memory.rs`), so a
//! full cache at the default adds under 30 MiB to a sidecar given 64 MiB.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// The session-store key of an (`iss`, `sub`, `sid`) triple: SHA-256 over the
/// three, newline-separated. Stored as bytes; the store names it in hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    pub fn of(iss: &str, sub: &str, sid: &str) -> Self {
        let mut h = Sha256::new();
        h.update(iss.as_bytes());
        h.update(b"\n");
        h.update(sub.as_bytes());
        h.update(b"\n");
        h.update(sid.as_bytes());
        Self(h.finalize().into())
    }

    /// SHA-256 over (iss, sub), newline-separated: the key of a subject's
    /// short-lived state (the same as `token::subject_hash`).
    pub fn subject(iss: &str, sub: &str) -> Self {
        let mut h = Sha256::new();
        h.update(iss.as_bytes());
        h.update(b"\n");
        h.update(sub.as_bytes());
        Self(h.finalize().into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The hex form the session store uses, on the stack (no allocation on
    /// the Check path).
    pub fn hex(&self) -> HexKey {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[(b >> 4) as usize];
            out[2 * i + 1] = DIGITS[(b & 0xf) as usize];
        }
        HexKey(out)
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({})", self.hex().as_str())
    }
}

/// A [`SessionKey`] in lower-case hex, as the session store names it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexKey([u8; 64]);

impl HexKey {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for HexKey {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for HexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for HexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The claims an [`Identity`] is built from, borrowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityParts<'a> {
    pub sub: &'a str,
    /// Keycloak's session id (`sid`, or the older `session_state`).
    pub sid: Option<&'a str>,
    pub username: Option<&'a str>,
    pub email: Option<&'a str>,
    pub email_verified: bool,
    pub given_name: Option<&'a str>,
    pub family_name: Option<&'a str>,
    /// Keycloak's `locale` claim (e.g. `de`, `de-DE`), for messages.
    pub locale: Option<&'a str>,
    /// `realm_access.roles`; comma-joined for the groups header.
    pub roles: &'a [&'a str],
    pub exp: i64,
    /// `exp` plus the leeway: when a cached copy stops being usable.
    pub valid_until: i64,
}

// Positions of the strings in `Identity::text`.
const SUB: usize = 0;
const SID: usize = 1;
const USERNAME: usize = 2;
const EMAIL: usize = 3;
const GIVEN: usize = 4;
const FAMILY: usize = 5;
const LOCALE: usize = 6;
const GROUPS: usize = 7;
const FIELDS: usize = 8;

/// What a valid access token says about its bearer.
#[derive(Clone)]
pub struct Identity {
    iss: Arc<str>,
    /// sub, sid, username, email, given_name, family_name, locale and the
    /// comma-joined roles, back to back.
    text: Box<str>,
    /// End offset of each field in `text`. Tokens are at most 16 KiB, so
    /// every offset fits; u32 leaves no edge to reason about.
    ends: [u32; FIELDS],
    /// Bit `i` set: optional field `i` is present (an absent claim and an
    /// empty one stay distinct).
    present: u8,
    email_verified: bool,
    exp: i64,
    valid_until: i64,
    session_key: Option<SessionKey>,
    /// SHA-256 of (iss, sub): how short-lived state names this user
    /// (`store::keys`), computed once like the session key.
    subject_key: SessionKey,
}

impl Identity {
    /// `iss` is shared by every identity of one issuer (the validator holds
    /// it), so a cached entry does not copy it.
    pub fn new(iss: Arc<str>, p: IdentityParts<'_>) -> Self {
        let fields = [
            Some(p.sub),
            p.sid,
            p.username,
            p.email,
            p.given_name,
            p.family_name,
            p.locale,
        ];
        let roles_len: usize =
            p.roles.iter().map(|r| r.len()).sum::<usize>() + p.roles.len().saturating_sub(1);
        let len = fields.iter().flatten().map(|s| s.len()).sum::<usize>() + roles_len;
        let mut text = String::with_capacity(len);
        let mut ends = [0u32; FIELDS];
        let mut present = 0u8;
        for (i, f) in fields.iter().enumerate() {
            if let Some(s) = f {
                text.push_str(s);
                present |= 1 << i;
            }
            ends[i] = offset(text.len());
        }
        for (i, r) in p.roles.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(r);
        }
        ends[GROUPS] = offset(text.len());
        let session_key = p.sid.map(|sid| SessionKey::of(&iss, p.sub, sid));
        let subject_key = SessionKey::subject(&iss, p.sub);
        Self {
            iss,
            text: text.into_boxed_str(),
            ends,
            present,
            email_verified: p.email_verified,
            exp: p.exp,
            valid_until: p.valid_until,
            session_key,
            subject_key,
        }
    }

    fn field(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] } as usize;
        self.text
            .get(start..self.ends[i] as usize)
            .unwrap_or_default()
    }

    fn optional(&self, i: usize) -> Option<&str> {
        (self.present & (1 << i) != 0).then(|| self.field(i))
    }

    pub fn iss(&self) -> &str {
        &self.iss
    }
    pub fn sub(&self) -> &str {
        self.field(SUB)
    }
    /// Keycloak's session id (`sid`, or the older `session_state`).
    pub fn sid(&self) -> Option<&str> {
        self.optional(SID)
    }
    /// `preferred_username`.
    pub fn username(&self) -> Option<&str> {
        self.optional(USERNAME)
    }
    pub fn email(&self) -> Option<&str> {
        self.optional(EMAIL)
    }
    pub fn email_verified(&self) -> bool {
        self.email_verified
    }
    pub fn given_name(&self) -> Option<&str> {
        self.optional(GIVEN)
    }
    pub fn family_name(&self) -> Option<&str> {
        self.optional(FAMILY)
    }
    /// The user's language (Keycloak's `locale` claim), None when absent or
    /// implausible.
    pub fn locale(&self) -> Option<&str> {
        self.optional(LOCALE)
    }
    /// `realm_access.roles`, comma-joined for the groups header.
    pub fn groups(&self) -> &str {
        self.field(GROUPS)
    }
    pub fn exp(&self) -> i64 {
        self.exp
    }
    /// `exp` plus the leeway: when a cached copy stops being usable.
    pub fn valid_until(&self) -> i64 {
        self.valid_until
    }
    /// The session-store key of (iss, sub, sid); `None` without `sid`.
    pub fn session_key(&self) -> Option<&SessionKey> {
        self.session_key.as_ref()
    }
    /// The subject hash in hex (`token::subject_hash(iss, sub)`), which names
    /// this user in short-lived state.
    pub fn subject_key(&self) -> HexKey {
        self.subject_key.hex()
    }

    /// The same identity with another `preferred_username` (tests build
    /// hostile variants with it).
    pub fn with_username(&self, username: Option<&str>) -> Self {
        let roles: Vec<&str> = if self.groups().is_empty() {
            vec![]
        } else {
            self.groups().split(',').collect()
        };
        Identity::new(
            self.iss.clone(),
            IdentityParts {
                sub: self.sub(),
                sid: self.sid(),
                username,
                email: self.email(),
                email_verified: self.email_verified,
                given_name: self.given_name(),
                family_name: self.family_name(),
                locale: self.locale(),
                roles: &roles,
                exp: self.exp,
                valid_until: self.valid_until,
            },
        )
    }
}

fn offset(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl fmt::Debug for Identity {
    /// Names the subject and session only: the rest is personal data that
    /// has no business in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("iss", &self.iss())
            .field("sub", &self.sub())
            .field("sid", &self.sid())
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(roles: &'a [&'a str]) -> IdentityParts<'a> {
        IdentityParts {
            sub: "f:1:alice",
            sid: Some("s-1"),
            username: Some("alice"),
            email: Some("alice@example.com"),
            email_verified: true,
            given_name: None,
            family_name: Some(""),
            locale: Some("de-DE"),
            roles,
            exp: 10,
            valid_until: 40,
        }
    }

    #[test]
    fn fields_round_trip() {
        let id = Identity::new("https://kc/realms/r".into(), parts(&["user", "admin"]));
        assert_eq!(id.iss(), "https://kc/realms/r");
        assert_eq!(id.sub(), "f:1:alice");
        assert_eq!(id.sid(), Some("s-1"));
        assert_eq!(id.username(), Some("alice"));
        assert_eq!(id.email(), Some("alice@example.com"));
        assert!(id.email_verified());
        assert_eq!(id.given_name(), None);
        assert_eq!(
            id.family_name(),
            Some(""),
            "empty stays distinct from absent"
        );
        assert_eq!(id.groups(), "user,admin");
        assert_eq!((id.exp(), id.valid_until()), (10, 40));
        let other = id.with_username(None);
        assert_eq!(other.username(), None);
        assert_eq!(other.groups(), "user,admin");
        assert_eq!(other.session_key(), id.session_key());
        let none = Identity::new(
            "i".into(),
            IdentityParts {
                sid: None,
                ..parts(&[])
            },
        );
        assert_eq!(none.groups(), "");
        assert!(none.session_key().is_none());
    }

    #[test]
    fn the_session_key_is_the_stores_hex_sha256() {
        let k = SessionKey::of("iss", "sub", "sid");
        let mut h = Sha256::new();
        h.update(b"iss\nsub\nsid");
        assert_eq!(k.hex().as_str(), hex::encode(h.finalize()));
        assert_eq!(k.hex().len(), 64);
    }

    #[test]
    fn debug_leaves_personal_data_out() {
        let id = Identity::new("i".into(), parts(&["user"]));
        let text = format!("{id:?}");
        assert!(
            text.contains("f:1:alice") && !text.contains("example.com"),
            "{text}"
        );
    }
}
