//! One-time codes sent by email or SMS.
//!
//! A code is `security.otp_length` CSPRNG digits. Only its keyed hash is
//! stored (`KeyRing::code_hash`), and the hash covers everything the code is
//! bound to: its purpose, its channel, its destination and, for `login`,
//! the Keycloak session that asked for it. A code therefore verifies nothing
//! else: not another session, not a contact change, not another address.
//!
//! Verification looks the pending code up ([`pending`]), then, once the
//! caller has taken an attempt from the budget, compares hashes in constant
//! time, under every configured key (a code sent before a key rotation
//! still verifies), and consumes the code with
//! `EphemeralStore::delete_if_eq` ([`compare`]), so that of N parallel
//! requests with the right code exactly one succeeds.
//!
//! Keys: [`keys::code`] the pending code (TTL `security.otp_ttl`),
//! [`keys::resend`] the resend timer (TTL `security.otp_resend_interval`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::crypto::{random_digits, KeyRing};
use crate::error::Error;
use crate::store::{keys, EphemeralStore, Factor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// Proves a new (pending) email address or mobile number.
    Contact,
    /// Passes the second factor for the session that asked for it.
    Login,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Contact => "contact",
            Purpose::Login => "login",
        }
    }
}

/// `otp_type` of the API: `email` or `mobile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Mobile,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Mobile => "mobile",
        }
    }
    /// The factor a login code on this channel passes (and the metrics label).
    pub fn factor(self) -> Factor {
        match self {
            Channel::Email => Factor::Email,
            Channel::Mobile => Factor::Sms,
        }
    }
}

/// What a code is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub purpose: Purpose,
    pub channel: Channel,
    /// The address or number the code was sent to.
    pub destination: &'a str,
    /// `token::session_hash` of the requesting session; `login` only.
    pub session: Option<&'a str>,
}

pub fn code_key(purpose: Purpose, channel: Channel, u: &str) -> String {
    keys::code(u, purpose.as_str(), channel.as_str())
}

pub fn resend_key(channel: Channel, u: &str) -> String {
    keys::resend(u, channel.as_str())
}

/// The stored form of `code` under `b` (hashed under the first key).
pub fn hash(keys: &KeyRing, code: &str, b: &Binding<'_>) -> String {
    with_parts(code, b, |parts| keys.code_hash(parts))
}

/// Whether `stored` is the stored form of `code` under `b`, hashed under
/// any configured key: a code sent before a key rotation still verifies.
pub fn matches(keys: &KeyRing, stored: &str, code: &str, b: &Binding<'_>) -> bool {
    with_parts(code, b, |parts| keys.code_hash_matches(stored, parts))
}

/// What a code's hash covers.
fn with_parts<R>(code: &str, b: &Binding<'_>, f: impl FnOnce(&[&[u8]]) -> R) -> R {
    let session = match b.purpose {
        Purpose::Login => b.session.unwrap_or(""),
        Purpose::Contact => "",
    };
    f(&[
        b"twofa otp v1",
        code.as_bytes(),
        b.purpose.as_str().as_bytes(),
        b.channel.as_str().as_bytes(),
        // Addresses compare case-insensitively; numbers are E.164 already.
        b.destination.to_ascii_lowercase().as_bytes(),
        session.as_bytes(),
    ])
}

/// What users type: digits, perhaps with spaces or dashes between groups.
pub fn normalize(input: &str) -> String {
    input
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect()
}

/// A code just stored, before delivery. `code` is the secret to send.
pub struct Issued {
    pub code: String,
    key: String,
    hash: String,
    resend: String,
}

/// Takes the resend timer, then stores a new code (replacing any pending
/// one for this purpose and channel). 429 `resend_too_soon` while the timer
/// of the user and channel runs.
pub async fn issue(
    eph: &dyn EphemeralStore,
    keys: &KeyRing,
    u: &str,
    b: &Binding<'_>,
    length: usize,
    ttl: Duration,
    resend_interval: Duration,
) -> Result<Issued, Error> {
    let resend = resend_key(b.channel, u);
    if !resend_interval.is_zero() && !eph.set_nx(&resend, "1", resend_interval).await? {
        let left = eph.ttl(&resend).await?.unwrap_or(resend_interval);
        return Err(Error::ResendTooSoon {
            retry_after: super::lockout::retry_after(left),
        });
    }
    let code = random_digits(length);
    let h = hash(keys, &code, b);
    let key = code_key(b.purpose, b.channel, u);
    if let Err(e) = eph.set(&key, &h, ttl).await {
        let _ = eph.delete(&resend).await;
        return Err(e.into());
    }
    Ok(Issued {
        code,
        key,
        hash: h,
        resend,
    })
}

/// Undoes [`issue`] after a failed delivery: the code is no longer usable
/// (unless a newer one replaced it meanwhile, which stays) and the resend
/// timer is released, so the user can simply try again.
pub async fn revoke(eph: &dyn EphemeralStore, issued: &Issued) {
    if let Err(e) = eph.delete_if_eq(&issued.key, &issued.hash).await {
        tracing::warn!(error = %e, "could not withdraw an undelivered code");
    }
    if let Err(e) = eph.delete(&issued.resend).await {
        tracing::warn!(error = %e, "could not release the resend timer");
    }
}

/// The result of checking a typed code.
#[derive(Debug)]
pub enum Check {
    /// Right, and consumed by this request. `restore` puts it back if what
    /// the verification should achieve then fails (e.g. Keycloak is down),
    /// so the user need not ask for a new code.
    Consumed(Restore),
    /// Wrong: counts against the attempt budget.
    Wrong,
    /// No code is pending (never sent, expired, or already used).
    NoPending,
}

#[derive(Debug)]
pub struct Restore {
    key: String,
    hash: String,
    ttl: Option<Duration>,
}

impl Restore {
    pub async fn put_back(self, eph: &dyn EphemeralStore) {
        let Some(ttl) = self.ttl.filter(|t| !t.is_zero()) else {
            return;
        };
        // set_nx: never overwrite a newer code sent in the meantime.
        if let Err(e) = eph.set_nx(&self.key, &self.hash, ttl).await {
            tracing::warn!(error = %e, "could not restore a code after a failed verification");
        }
    }
}

/// A code waiting for `purpose` on `channel`, as the store holds it.
#[derive(Debug)]
pub struct Pending {
    key: String,
    stored: String,
}

/// The pending code of this purpose and channel, if any. Nothing is
/// compared yet: the caller takes an attempt from the budget first.
pub async fn pending(
    eph: &dyn EphemeralStore,
    u: &str,
    purpose: Purpose,
    channel: Channel,
) -> Result<Option<Pending>, Error> {
    let key = code_key(purpose, channel, u);
    Ok(eph.get(&key).await?.map(|stored| Pending { key, stored }))
}

/// Compares `input` with the pending code in constant time and, when it
/// matches, consumes it. A match whose code a parallel request consumed
/// first (or a newer code replaced meanwhile) is [`Check::NoPending`].
pub async fn compare(
    eph: &dyn EphemeralStore,
    keys: &KeyRing,
    pending: Pending,
    b: &Binding<'_>,
    input: &str,
) -> Result<Check, Error> {
    if !matches(keys, &pending.stored, &normalize(input), b) {
        return Ok(Check::Wrong);
    }
    let ttl = eph.ttl(&pending.key).await?;
    // The stored hash, not a recomputed one: it may be under an older key.
    if eph.delete_if_eq(&pending.key, &pending.stored).await? {
        Ok(Check::Consumed(Restore {
            key: pending.key,
            hash: pending.stored,
            ttl,
        }))
    } else {
        Ok(Check::NoPending)
    }
}

/// [`pending`] then [`compare`], for callers that hold no budget.
pub async fn check(
    eph: &dyn EphemeralStore,
    keys: &KeyRing,
    u: &str,
    b: &Binding<'_>,
    input: &str,
) -> Result<Check, Error> {
    match pending(eph, u, b.purpose, b.channel).await? {
        None => Ok(Check::NoPending),
        Some(p) => compare(eph, keys, p, b, input).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::clock::{Clock, ManualClock};
    use crate::config::{Secret, SecretList};
    use crate::store::memory::MemoryEphemeralStore;

    fn ring() -> KeyRing {
        KeyRing::from_config(&SecretList(vec![Secret::new(
            "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )]))
        .unwrap()
    }

    const MIN: Duration = Duration::from_secs(60);

    fn login<'a>(dest: &'a str, session: &'a str) -> Binding<'a> {
        Binding {
            purpose: Purpose::Login,
            channel: Channel::Email,
            destination: dest,
            session: Some(session),
        }
    }

    #[tokio::test]
    async fn a_code_sent_before_a_key_rotation_still_verifies() {
        let clock = ManualClock::new(1_700_000_000);
        let eph = MemoryEphemeralStore::new(clock.clone() as Arc<dyn Clock>);
        let ring_of = |keys: &[&str]| {
            KeyRing::from_config(&SecretList(keys.iter().map(|k| Secret::new(*k)).collect()))
                .unwrap()
        };
        const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        const K2: &str = "k2:HxwdHh8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRo=";
        let b = login("a@example.com", "s1");
        let issued = issue(&eph, &ring_of(&[K1]), "u", &b, 6, MIN * 10, MIN)
            .await
            .unwrap();
        // The operator puts a new key first and keeps the old one.
        let rotated = ring_of(&[K2, K1]);
        let wrong = if issued.code == "000000" {
            "111111"
        } else {
            "000000"
        };
        assert!(matches!(
            check(&eph, &rotated, "u", &b, wrong).await.unwrap(),
            Check::Wrong
        ));
        let Check::Consumed(restore) = check(&eph, &rotated, "u", &b, &issued.code).await.unwrap()
        else {
            panic!("a code sent before the rotation no longer verifies");
        };
        // Put back as it was stored, it verifies again.
        restore.put_back(&eph).await;
        assert!(matches!(
            check(&eph, &rotated, "u", &b, &issued.code).await.unwrap(),
            Check::Consumed(_)
        ));
        // Without the old key it would not (dropping a key ends its codes).
        let issued = issue(&eph, &ring_of(&[K1]), "w", &b, 6, MIN * 10, Duration::ZERO)
            .await
            .unwrap();
        assert!(matches!(
            check(&eph, &ring_of(&[K2]), "w", &b, &issued.code)
                .await
                .unwrap(),
            Check::Wrong
        ));
    }

    #[tokio::test]
    async fn code_is_bound_to_everything() {
        let clock = ManualClock::new(1_700_000_000);
        let eph = MemoryEphemeralStore::new(clock.clone() as Arc<dyn Clock>);
        let keys = ring();
        let b = login("a@example.com", "s1");
        let issued = issue(&eph, &keys, "u", &b, 6, MIN * 10, MIN).await.unwrap();
        assert_eq!(issued.code.len(), 6);
        // The store holds a hash, never the code.
        let stored = eph
            .get(&code_key(Purpose::Login, Channel::Email, "u"))
            .await
            .unwrap()
            .unwrap();
        assert!(!stored.contains(&issued.code));
        // Another session, another destination, another purpose or user: no.
        let other_session = login("a@example.com", "s2");
        assert!(matches!(
            check(&eph, &keys, "u", &other_session, &issued.code)
                .await
                .unwrap(),
            Check::Wrong
        ));
        let other_dest = login("b@example.com", "s1");
        assert!(matches!(
            check(&eph, &keys, "u", &other_dest, &issued.code)
                .await
                .unwrap(),
            Check::Wrong
        ));
        let contact = Binding {
            purpose: Purpose::Contact,
            session: None,
            ..b
        };
        assert!(matches!(
            check(&eph, &keys, "u", &contact, &issued.code)
                .await
                .unwrap(),
            Check::NoPending
        ));
        assert!(matches!(
            check(&eph, &keys, "v", &b, &issued.code).await.unwrap(),
            Check::NoPending
        ));
        // The right one, typed with a space, works once.
        let typed = format!("{} {}", &issued.code[..3], &issued.code[3..]);
        assert!(matches!(
            check(&eph, &keys, "u", &b, &typed).await.unwrap(),
            Check::Consumed(_)
        ));
        assert!(matches!(
            check(&eph, &keys, "u", &b, &issued.code).await.unwrap(),
            Check::NoPending
        ));
    }

    #[tokio::test]
    async fn codes_expire_and_resend_waits() {
        let clock = ManualClock::new(1_700_000_000);
        let eph = MemoryEphemeralStore::new(clock.clone() as Arc<dyn Clock>);
        let keys = ring();
        let b = login("a@example.com", "s1");
        let first = issue(&eph, &keys, "u", &b, 6, MIN * 10, MIN).await.unwrap();
        clock.advance(20);
        match issue(&eph, &keys, "u", &b, 6, MIN * 10, MIN).await {
            Err(Error::ResendTooSoon { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(40))
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        // Another channel has its own timer.
        let sms = Binding {
            channel: Channel::Mobile,
            destination: "+14155550123",
            ..b
        };
        issue(&eph, &keys, "u", &sms, 6, MIN * 10, MIN)
            .await
            .unwrap();
        clock.advance(40);
        let second = issue(&eph, &keys, "u", &b, 6, MIN * 10, MIN).await.unwrap();
        // A new code replaces the old one.
        if first.code != second.code {
            assert!(matches!(
                check(&eph, &keys, "u", &b, &first.code).await.unwrap(),
                Check::Wrong
            ));
        }
        clock.advance(600);
        assert!(matches!(
            check(&eph, &keys, "u", &b, &second.code).await.unwrap(),
            Check::NoPending
        ));
    }

    #[tokio::test]
    async fn a_failed_delivery_leaves_nothing_behind() {
        let clock = ManualClock::new(1_700_000_000);
        let eph = MemoryEphemeralStore::new(clock.clone() as Arc<dyn Clock>);
        let keys = ring();
        let b = login("a@example.com", "s1");
        let issued = issue(&eph, &keys, "u", &b, 8, MIN * 10, MIN).await.unwrap();
        assert_eq!(issued.code.len(), 8);
        revoke(&eph, &issued).await;
        assert!(matches!(
            check(&eph, &keys, "u", &b, &issued.code).await.unwrap(),
            Check::NoPending
        ));
        // The resend timer was released.
        issue(&eph, &keys, "u", &b, 6, MIN * 10, MIN).await.unwrap();
    }

    #[tokio::test]
    async fn parallel_right_answers_succeed_once_and_restore_works() {
        let clock = ManualClock::new(1_700_000_000);
        let eph = Arc::new(MemoryEphemeralStore::new(clock.clone() as Arc<dyn Clock>));
        let keys = Arc::new(ring());
        let b = login("a@example.com", "s1");
        let issued = issue(eph.as_ref(), &keys, "u", &b, 6, MIN * 10, MIN)
            .await
            .unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (eph, keys, code) = (eph.clone(), keys.clone(), issued.code.clone());
                tokio::spawn(async move {
                    let b = login("a@example.com", "s1");
                    matches!(
                        check(eph.as_ref(), &keys, "u", &b, &code).await.unwrap(),
                        Check::Consumed(_)
                    )
                })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            wins += usize::from(t.await.unwrap());
        }
        assert_eq!(wins, 1);
        // Put back after a downstream failure: usable again, once.
        let again = issue(eph.as_ref(), &keys, "u2", &b, 6, MIN * 10, Duration::ZERO)
            .await
            .unwrap();
        let Check::Consumed(r) = check(eph.as_ref(), &keys, "u2", &b, &again.code)
            .await
            .unwrap()
        else {
            panic!("right code refused");
        };
        r.put_back(eph.as_ref()).await;
        assert!(matches!(
            check(eph.as_ref(), &keys, "u2", &b, &again.code)
                .await
                .unwrap(),
            Check::Consumed(_)
        ));
    }
}
