//! Every key of the short-lived stores (Redis, or the in-process stand-ins),
//! named in one place: this table is the keyspace's documentation
//! (docs/deploy.md, "Managed Redis", links here). The stores add
//! `storage.key_prefix` in front of each key; nothing here carries it, and the
//! prefix holds no `{`/`}` so that only the tag below chooses the slot.
//!
//! `S` is the user's subject hash, hex SHA-256 of (iss, sub)
//! (`token::subject_hash`): keys stay short and free of whatever characters an
//! issuer puts in `sub`. It is written as a Redis Cluster hash tag, `{S}`, so
//! that every key of one user lands in one slot and a script or MULTI over
//! several of them (the attempt budget, a session and its subject index) runs
//! on one node. Keys of different users never appear in one script.
//!
//! | family | key | owner | value | TTL |
//! |---|---|---|---|---|
//! | verified session | `sv:{S}:<session>` | `SessionStore` | 10 bytes, `store::encode_verified` (earlier versions: JSON `{"f": factor, "at": unix s}`, still read) | `security.second_factor_ttl` |
//! | subject's sessions | `su:{S}` | `SessionStore` | set of `<session>` | that of its newest session |
//! | session by sid | `sd:{D}` | `SessionStore` | `<S>:<session>`, enough to find the two keys above | `security.second_factor_ttl` |
//! | wrong codes | `att:{S}` | `EphemeralStore::take_attempt` | counter since the last lockout or success | `security.lockout`, from the first wrong code |
//! | lockout | `lock:{S}` | `EphemeralStore::take_attempt` | the lockout's level in its series | the lockout: `security.lockout` × 2^(level-1), at most 24 h |
//! | lockout series | `lockn:{S}` | `EphemeralStore::take_attempt` | lockouts in a row | the latest lockout + 24 h |
//! | one-time code | `otp:{S}:<purpose>:<channel>` | `factor::otp` | keyed hash of the code and what it is bound to | `security.otp_ttl` |
//! | resend timer | `rs:{S}:<channel>` | `factor::otp` | `1` | `security.otp_resend_interval` |
//! | notice timer | `ntc:{S}:<channel>:<kind>` | `factor::service` | `1` | `security.otp_resend_interval` |
//! | pending TOTP secret | `totp_pending:{S}` | `factor::totp` | JSON `{k: key id, c: sealed secret, exp}` | `security.pending_totp_ttl` |
//! | WebAuthn ceremony | `wa:{S}:<kind>:<session>` | `factor::webauthn` | JSON: webauthn-rs's serialised ceremony state, the credential name | 5 minutes (`factor::webauthn::CEREMONY_TTL`) |
//! | methods hint | `methods:{S}` | `factor::service` (written), `authz` (read by a Check's 403) | JSON list of method names | 30 days |
//! | seen logout token | `jti:<J>` | `http::logout` | `1` | the logout token's lifetime, 60 s to 24 h |
//!
//! `<session>` is hex SHA-256 of (iss, sub, sid) (`token::session_hash`), `D`
//! of (iss, sid) (`token::sid_hash`), `J` of (iss, jti). A `sd` key names
//! another user's slot than the session it points to, so it is written and
//! removed in a step of its own, never inside the session's MULTI or script.

/// A Redis Cluster hash tag around `s`: only the part between the braces
/// chooses the slot.
fn tag(s: &str) -> String {
    format!("{{{s}}}")
}

/// What every [`session`] key starts with: the prefix a session cache
/// tracks (`CLIENT TRACKING ... BCAST PREFIX`, see `store::tracking`).
pub const SESSION_PREFIX: &str = "sv:";

/// A user's verified Keycloak session.
pub fn session(subject: &str, session: &str) -> String {
    format!("{SESSION_PREFIX}{}:{session}", tag(subject))
}

/// The `<session>` part of a [`session`] key (given without the store's
/// prefix); None for anything else.
pub fn parse_session(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(SESSION_PREFIX)?.strip_prefix('{')?;
    let (_subject, session) = rest.split_once("}:")?;
    (!session.is_empty()).then_some(session)
}

/// The set of a user's sessions (`reset-user`, logout by `sub`).
pub fn subject_sessions(subject: &str) -> String {
    format!("su:{}", tag(subject))
}

/// The session a `sid` names (logout tokens that carry only `sid`).
pub fn session_by_sid(sid: &str) -> String {
    format!("sd:{}", tag(sid))
}

/// The value of [`session_by_sid`]: the subject and session hashes.
pub fn sid_target(subject: &str, session: &str) -> String {
    format!("{subject}:{session}")
}

/// Parses a [`sid_target`] value back into (subject, session).
pub fn parse_sid_target(value: &str) -> Option<(&str, &str)> {
    let (subject, session) = value.split_once(':')?;
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(subject) && hex(session)).then_some((subject, session))
}

/// Wrong codes since the last lockout or success.
pub fn attempts(user: &str) -> String {
    format!("att:{}", tag(user))
}

/// Present while the user is locked out.
pub fn lockout(user: &str) -> String {
    format!("lock:{}", tag(user))
}

/// Lockouts in the current series (each doubles the next).
pub fn lockout_series(user: &str) -> String {
    format!("lockn:{}", tag(user))
}

/// A pending one-time code of `purpose` on `channel`.
pub fn code(user: &str, purpose: &str, channel: &str) -> String {
    format!("otp:{}:{purpose}:{channel}", tag(user))
}

/// The resend timer of a channel.
pub fn resend(user: &str, channel: &str) -> String {
    format!("rs:{}:{channel}", tag(user))
}

/// The rate limit of one kind of change notice on one channel.
pub fn notice(user: &str, channel: &str, kind: &str) -> String {
    format!("ntc:{}:{channel}:{kind}", tag(user))
}

/// A TOTP secret waiting for its first code.
pub fn pending_totp(user: &str) -> String {
    format!("totp_pending:{}", tag(user))
}

/// A WebAuthn ceremony in progress (`kind`: `reg` or `auth`), bound to the
/// session that started it: a challenge is answered in that session only.
pub fn webauthn_ceremony(user: &str, kind: &str, session: &str) -> String {
    format!("wa:{}:{kind}:{session}", tag(user))
}

/// The methods a Check's 403 lists for this user.
pub fn methods_hint(user: &str) -> String {
    format!("methods:{}", tag(user))
}

/// A logout token seen before (`J` = hash of iss and jti).
pub fn logout_jti(jti_hash: &str) -> String {
    format!("jti:{jti_hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slot-choosing part of a key, as Redis Cluster computes it: the
    /// text between the first `{` and the next `}`, when not empty.
    fn hash_tag(key: &str) -> &str {
        if let Some(open) = key.find('{') {
            if let Some(len) = key[open + 1..].find('}') {
                if len > 0 {
                    return &key[open + 1..open + 1 + len];
                }
            }
        }
        key
    }

    #[test]
    fn keys_touched_together_share_a_slot() {
        let s = "ab12";
        for k in [attempts(s), lockout(s), lockout_series(s)] {
            assert_eq!(hash_tag(&k), s, "{k}");
        }
        assert_eq!(hash_tag(&session(s, "ff00")), s);
        assert_eq!(hash_tag(&subject_sessions(s)), s);
        assert_eq!(hash_tag(&code(s, "login", "email")), s);
        assert_eq!(hash_tag(&webauthn_ceremony(s, "auth", "ff00")), s);
        assert_eq!(hash_tag(&notice(s, "sms", "totp_removed")), s);
        // Families stay apart.
        let all = [
            attempts(s),
            lockout(s),
            lockout_series(s),
            session(s, "x"),
            subject_sessions(s),
            code(s, "login", "email"),
            resend(s, "email"),
            notice(s, "email", "k"),
            pending_totp(s),
            methods_hint(s),
        ];
        let mut uniq = all.to_vec();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), all.len());
    }

    #[test]
    fn a_session_key_names_its_session() {
        let k = session("ab12", "cd34");
        assert!(k.starts_with(SESSION_PREFIX));
        assert_eq!(parse_session(&k), Some("cd34"));
        assert_eq!(parse_session(&subject_sessions("ab12")), None);
        assert_eq!(parse_session("sv:{ab12}:"), None);
        assert_eq!(parse_session("sv:ab12:cd34"), None);
    }

    #[test]
    fn sid_target_round_trip() {
        let v = sid_target("ab12", "cd34");
        assert_eq!(parse_sid_target(&v), Some(("ab12", "cd34")));
        assert_eq!(parse_sid_target("ab12"), None);
        assert_eq!(parse_sid_target("ab:"), None);
        assert_eq!(parse_sid_target("x*:12"), None);
    }
}
