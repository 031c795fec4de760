//! TOTP (RFC 6238) on top of `totp-rs`: secret generation, the `otpauth://`
//! URI that authenticator apps read, verification that says which time step
//! matched (so that the caller can refuse a step that was already accepted,
//! `ProfileStore::accept_totp_step`), and sealing of secrets at rest with the
//! [`KeyRing`] (AES-256-GCM, bound to the user).
//!
//! A secret is sealed together with the parameters it was enrolled with
//! (algorithm, digits, period): changing `totp.*` later affects new
//! enrollments only and never breaks the authenticator apps already set up.
//!
//! All time comes from the caller (the injected clock), never from the system.

use std::time::Duration;

use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use totp_rs::TOTP;

use crate::config::TotpConfig;
use crate::crypto::{ct_eq, random_bytes, CryptoError, KeyRing};
use crate::error::Error;
use crate::store::{EphemeralStore, ProfileStore, StoreError, TotpRecord};

/// HMAC hash of the TOTP computation (RFC 6238 section 1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    SHA1,
    SHA256,
    SHA512,
}

impl Algorithm {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "SHA1" => Some(Algorithm::SHA1),
            "SHA256" => Some(Algorithm::SHA256),
            "SHA512" => Some(Algorithm::SHA512),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::SHA1 => "SHA1",
            Algorithm::SHA256 => "SHA256",
            Algorithm::SHA512 => "SHA512",
        }
    }

    /// Secret length in bytes: the hash's output size (RFC 2104 section 3
    /// recommends keys of at least that length; RFC 4226 asks for at least
    /// 160 bits, which is the SHA-1 case).
    pub fn secret_len(self) -> usize {
        match self {
            Algorithm::SHA1 => 20,
            Algorithm::SHA256 => 32,
            Algorithm::SHA512 => 64,
        }
    }

    fn lib(self) -> totp_rs::Algorithm {
        match self {
            Algorithm::SHA1 => totp_rs::Algorithm::SHA1,
            Algorithm::SHA256 => totp_rs::Algorithm::SHA256,
            Algorithm::SHA512 => totp_rs::Algorithm::SHA512,
        }
    }
}

/// What the code generator in the authenticator app must agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    pub algorithm: Algorithm,
    pub digits: u32,
    pub period: u64,
}

impl Params {
    /// From validated `totp.*` settings (config::load checks them; anything
    /// odd falls back to the RFC defaults rather than panicking).
    pub fn from_config(c: &TotpConfig) -> Self {
        Self {
            algorithm: Algorithm::parse(&c.algorithm).unwrap_or(Algorithm::SHA1),
            digits: if c.digits == 8 { 8 } else { 6 },
            period: c.period.clamp(1, 3600),
        }
    }
}

/// A TOTP secret with the parameters it was enrolled with. The bytes are
/// sensitive: never logged (Debug is redacted), only sealed or shown once.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret {
    pub bytes: Vec<u8>,
    pub params: Params,
}

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpSecret")
            .field("bytes", &"<redacted>")
            .field("params", &self.params)
            .finish()
    }
}

/// The result of a successful verification: which time step matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepMatch {
    /// RFC 6238 counter T = floor(time / period).
    pub step: u64,
    /// The first second of that step (`step * period`). This is the value
    /// given to `ProfileStore::accept_totp_step`: unlike the bare counter it
    /// stays monotonic in time when the period changes between enrollments,
    /// so re-enrolling with another `totp.period` never locks a user out.
    pub step_start: i64,
}

impl TotpSecret {
    /// A fresh secret from the OS CSPRNG, as long as the HMAC's output
    /// (160, 256 or 512 bits).
    pub fn generate(params: Params) -> Self {
        Self {
            bytes: random_bytes(params.algorithm.secret_len()),
            params,
        }
    }

    /// Base32 (RFC 4648) without padding, as authenticator apps take it.
    pub fn base32(&self) -> String {
        base32_encode(&self.bytes)
    }

    fn totp(&self) -> TOTP {
        // new_unchecked: the length and label checks of TOTP::new concern
        // secrets we did not generate and labels we do not pass (the URI is
        // built by `otpauth_uri`).
        TOTP::new_unchecked(
            self.params.algorithm.lib(),
            self.params.digits as usize,
            0,
            self.params.period,
            self.bytes.clone(),
            None,
            String::new(),
        )
    }

    /// The code for unix time `time` (seconds).
    pub fn code_at(&self, time: i64) -> String {
        self.totp().generate(time.max(0) as u64)
    }

    /// Checks `code` at unix time `now` against the steps within `skew` of
    /// the current one. Every candidate is computed and compared in constant
    /// time; a code of the wrong length or with non-digits never matches.
    /// Spaces are ignored (apps show "123 456"). A match is not yet an
    /// accepted code: `factor::service` records its step with
    /// `ProfileStore::accept_totp_step` and refuses a step seen before.
    pub fn verify(&self, code: &str, now: i64, skew: u8) -> Option<StepMatch> {
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        let digits = self.params.digits as usize;
        let well_formed = code.len() == digits && code.bytes().all(|b| b.is_ascii_digit());
        let period = self.params.period.max(1);
        let current = (now.max(0) as u64) / period;
        let totp = self.totp();
        let mut found: Option<u64> = None;
        let first = current.saturating_sub(skew as u64);
        let last = current.saturating_add(skew as u64);
        for step in first..=last {
            let candidate = totp.generate(step * period);
            // Evaluated even for a malformed code, so that the time taken
            // says nothing about which check failed.
            let eq = ct_eq(candidate.as_bytes(), code.as_bytes());
            if eq && well_formed && found.is_none() {
                found = Some(step);
            }
        }
        found.map(|step| StepMatch {
            step,
            step_start: (step * period) as i64,
        })
    }

    /// `otpauth://totp/ISSUER:ACCOUNT?secret=…&issuer=…&algorithm=…&digits=…&period=…`
    /// (Google Authenticator Key URI Format). Every parameter is spelled out,
    /// even the defaults, so apps that guess nothing still agree.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> String {
        let issuer_enc = utf8_percent_encode(issuer, URI_COMPONENT);
        format!(
            "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm={}&digits={}&period={}",
            issuer_enc,
            utf8_percent_encode(account, URI_COMPONENT),
            self.base32(),
            issuer_enc,
            self.params.algorithm.as_str(),
            self.params.digits,
            self.params.period,
        )
    }

    /// Seals the secret for storage: AES-256-GCM under the ring's current
    /// key, bound to `subject` and to its purpose (`enrolled` or `pending`)
    /// so that a ciphertext moved to another row or user does not open.
    /// Returns (key id, ciphertext).
    pub fn seal(
        &self,
        ring: &KeyRing,
        subject: &str,
        purpose: Purpose,
    ) -> Result<(String, Vec<u8>), CryptoError> {
        let plain = Sealed {
            v: 1,
            secret: self.base32(),
            algorithm: self.params.algorithm,
            digits: self.params.digits,
            period: self.params.period,
        };
        let json = serde_json::to_vec(&plain).map_err(|_| CryptoError::Corrupt)?;
        ring.encrypt(&json, &aad(subject, purpose))
    }

    /// Opens what [`seal`](Self::seal) produced (under any configured key).
    pub fn open(
        ring: &KeyRing,
        subject: &str,
        purpose: Purpose,
        key_id: &str,
        ciphertext: &[u8],
    ) -> Result<Self, CryptoError> {
        let json = ring.decrypt(key_id, ciphertext, &aad(subject, purpose))?;
        let s: Sealed = serde_json::from_slice(&json).map_err(|_| CryptoError::Corrupt)?;
        let bytes = base32_decode(&s.secret).ok_or(CryptoError::Corrupt)?;
        if s.v != 1 || bytes.is_empty() || !(s.digits == 6 || s.digits == 8) || s.period == 0 {
            return Err(CryptoError::Corrupt);
        }
        Ok(Self {
            bytes,
            params: Params {
                algorithm: s.algorithm,
                digits: s.digits,
                period: s.period,
            },
        })
    }
}

/// What a sealed secret is for; part of the AEAD's associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The enrolled secret (`ProfileStore::insert_totp`).
    Enrolled,
    /// An unconfirmed secret waiting in the session store.
    Pending,
}

fn aad(subject: &str, purpose: Purpose) -> Vec<u8> {
    let tag: &[u8] = match purpose {
        Purpose::Enrolled => b"twofa-authz totp enrolled v1\0",
        Purpose::Pending => b"twofa-authz totp pending v1\0",
    };
    let mut v = tag.to_vec();
    v.extend_from_slice(subject.as_bytes());
    v
}

/// The plaintext inside a sealed secret.
#[derive(Serialize, Deserialize)]
struct Sealed {
    v: u8,
    secret: String,
    algorithm: Algorithm,
    digits: u32,
    period: u64,
}

/// Characters left as they are in a URI label or parameter: RFC 3986
/// unreserved. Everything else (":" included, which separates issuer and
/// account in the label) is percent-encoded as UTF-8.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32, no padding.
pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut buf: u32 = 0;
    let mut bits = 0u32;
    for &b in data {
        buf = (buf << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(B32[((buf >> bits) & 31) as usize] as char);
        }
        buf &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(B32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// RFC 4648 base32; case, padding and spaces ignored. None on other input.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let mut buf: u32 = 0;
    let mut bits = 0u32;
    for c in s.bytes() {
        if c == b'=' || c == b' ' {
            continue;
        }
        let v = B32.iter().position(|&x| x == c.to_ascii_uppercase())? as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
        buf &= (1 << bits) - 1;
    }
    Some(out)
}

// ---------------------------------------------------------------------
// Secrets in the stores: the pending one (session store, with a TTL) and
// the enrolled one (profile store). Both sealed; see `TotpSecret::seal`.

/// The short-lived store's key of a user's pending secret; `u` is the
/// user's subject hash (`Identity::subject_key`).
pub fn pending_key(u: &str) -> String {
    crate::store::keys::pending_totp(u)
}

/// What the session store holds for a pending secret: the key id, the
/// sealed secret (base64) and when it lapses (unix seconds, checked against
/// the injected clock as well as by the store's TTL).
#[derive(Serialize, Deserialize)]
struct PendingValue {
    k: String,
    c: String,
    exp: i64,
}

fn crypto_err(what: &str, e: CryptoError) -> Error {
    // Never the secret; only which record and why (e.g. a key id missing
    // from `security.encryption_keys`).
    Error::Internal(format!("{what}: {e}"))
}

/// Holds `secret` as the user's pending enrollment for `ttl`, replacing any
/// earlier one; returns when it lapses (unix seconds). `u` names the user in
/// the store, `subject` (the token's `sub`) is what the secret is sealed to.
pub async fn put_pending(
    eph: &dyn EphemeralStore,
    ring: &KeyRing,
    u: &str,
    subject: &str,
    secret: &TotpSecret,
    ttl: Duration,
    now: i64,
) -> Result<i64, Error> {
    let (k, ct) = secret
        .seal(ring, subject, Purpose::Pending)
        .map_err(|e| crypto_err("sealing a pending TOTP secret", e))?;
    let exp = now + ttl.as_secs() as i64;
    let v = PendingValue {
        k,
        c: base64::engine::general_purpose::STANDARD.encode(ct),
        exp,
    };
    let json = serde_json::to_string(&v).map_err(|e| Error::Internal(e.to_string()))?;
    eph.set(&pending_key(u), &json, ttl)
        .await
        .map_err(Error::from)?;
    Ok(exp)
}

/// The subject's pending secret, if one is waiting and has not lapsed.
/// Unreadable leftovers (e.g. sealed under a key since removed) count as
/// none: the user just generates a new one.
pub async fn get_pending(
    eph: &dyn EphemeralStore,
    ring: &KeyRing,
    u: &str,
    subject: &str,
    now: i64,
) -> Result<Option<TotpSecret>, Error> {
    let Some(raw) = eph.get(&pending_key(u)).await.map_err(Error::from)? else {
        return Ok(None);
    };
    let Ok(v) = serde_json::from_str::<PendingValue>(&raw) else {
        return Ok(None);
    };
    if v.exp <= now {
        return Ok(None);
    }
    let Ok(ct) = base64::engine::general_purpose::STANDARD.decode(&v.c) else {
        return Ok(None);
    };
    match TotpSecret::open(ring, subject, Purpose::Pending, &v.k, &ct) {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a pending TOTP secret that does not open");
            Ok(None)
        }
    }
}

pub async fn clear_pending(eph: &dyn EphemeralStore, u: &str) -> Result<(), Error> {
    eph.delete(&pending_key(u))
        .await
        .map(|_| ())
        .map_err(Error::from)
}

/// The record `ProfileStore::insert_totp` takes for `secret`.
pub fn seal_record(
    ring: &KeyRing,
    subject: &str,
    secret: &TotpSecret,
    now: i64,
) -> Result<TotpRecord, Error> {
    let (key_id, ciphertext) = secret
        .seal(ring, subject, Purpose::Enrolled)
        .map_err(|e| crypto_err("sealing a TOTP secret", e))?;
    Ok(TotpRecord {
        ciphertext,
        key_id,
        enabled_at: now,
    })
}

/// The subject's enrolled secret, None when TOTP is not enabled.
pub async fn get_enrolled(
    profiles: &dyn ProfileStore,
    ring: &KeyRing,
    subject: &str,
) -> Result<Option<TotpSecret>, Error> {
    let Some(rec) = profiles.get_totp(subject).await.map_err(Error::from)? else {
        return Ok(None);
    };
    TotpSecret::open(
        ring,
        subject,
        Purpose::Enrolled,
        &rec.key_id,
        &rec.ciphertext,
    )
    .map(Some)
    .map_err(|e| crypto_err("opening an enrolled TOTP secret", e))
}

/// What [`reencrypt_all`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReencryptReport {
    /// Rewritten under the first key.
    pub rewritten: u64,
    /// Already under the first key.
    pub current: u64,
    /// Changed concurrently (re-enrolled or removed meanwhile); left alone.
    pub skipped: u64,
    /// Do not open with any configured key (their key id was removed from
    /// `security.encryption_keys`, or the row is damaged).
    pub failed: u64,
}

/// Rewrites every enrolled TOTP secret that is not under the ring's first
/// key (`twofa-authz migrate --reencrypt`). Each row is replaced with a
/// compare-and-set, so a concurrent re-enrollment is never overwritten.
/// After it, older keys can be dropped from the configuration.
pub async fn reencrypt_all(
    profiles: &dyn ProfileStore,
    ring: &KeyRing,
) -> Result<ReencryptReport, StoreError> {
    let mut r = ReencryptReport::default();
    for (subject, old) in profiles.all_totp().await? {
        if old.key_id == ring.current_key_id() {
            r.current += 1;
            continue;
        }
        let secret = match TotpSecret::open(
            ring,
            &subject,
            Purpose::Enrolled,
            &old.key_id,
            &old.ciphertext,
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(key_id = %old.key_id, error = %e, "a TOTP secret does not open; left as it is");
                r.failed += 1;
                continue;
            }
        };
        let (key_id, ciphertext) = match secret.seal(ring, &subject, Purpose::Enrolled) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "re-sealing a TOTP secret failed");
                r.failed += 1;
                continue;
            }
        };
        let new = TotpRecord {
            ciphertext,
            key_id,
            enabled_at: old.enabled_at,
        };
        if profiles.reencrypt_totp(&subject, &old, &new).await? {
            r.rewritten += 1;
        } else {
            r.skipped += 1;
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, SecretList};

    fn secret(alg: Algorithm, digits: u32, period: u64, bytes: &[u8]) -> TotpSecret {
        TotpSecret {
            bytes: bytes.to_vec(),
            params: Params {
                algorithm: alg,
                digits,
                period,
            },
        }
    }

    // RFC 6238 appendix B: the seeds are the ASCII strings below, repeated
    // to the hash's length; 8 digits, 30 s steps.
    const SEED20: &[u8] = b"12345678901234567890";
    const SEED32: &[u8] = b"12345678901234567890123456789012";
    const SEED64: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

    #[test]
    fn rfc6238_appendix_b() {
        let table: &[(i64, &str, &str, &str)] = &[
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        let s1 = secret(Algorithm::SHA1, 8, 30, SEED20);
        let s256 = secret(Algorithm::SHA256, 8, 30, SEED32);
        let s512 = secret(Algorithm::SHA512, 8, 30, SEED64);
        for (t, c1, c256, c512) in table {
            assert_eq!(s1.code_at(*t), *c1, "SHA1 at {t}");
            assert_eq!(s256.code_at(*t), *c256, "SHA256 at {t}");
            assert_eq!(s512.code_at(*t), *c512, "SHA512 at {t}");
            // And each verifies at that time, naming its step.
            for (s, c) in [(&s1, c1), (&s256, c256), (&s512, c512)] {
                let m = s.verify(c, *t, 0).expect("vector verifies");
                assert_eq!(m.step, (*t as u64) / 30);
                assert_eq!(m.step_start, (*t / 30) * 30);
            }
        }
    }

    #[test]
    fn rfc4226_appendix_d() {
        // HOTP(K, C) is TOTP with a one-second step at time C.
        let expected = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        let h = secret(Algorithm::SHA1, 6, 1, SEED20);
        for (c, want) in expected.iter().enumerate() {
            assert_eq!(h.code_at(c as i64), *want, "counter {c}");
        }
    }

    #[test]
    fn verify_window_and_format() {
        let s = secret(Algorithm::SHA1, 6, 30, SEED20);
        let now = 1_700_000_000;
        let cur = s.code_at(now);
        let prev = s.code_at(now - 30);
        let next = s.code_at(now + 30);
        let far = s.code_at(now - 60);
        assert_eq!(s.verify(&cur, now, 1).unwrap().step, now as u64 / 30);
        assert_eq!(s.verify(&prev, now, 1).unwrap().step, now as u64 / 30 - 1);
        assert_eq!(s.verify(&next, now, 1).unwrap().step, now as u64 / 30 + 1);
        assert!(s.verify(&far, now, 1).is_none());
        assert!(s.verify(&prev, now, 0).is_none());
        // Spaces ignored; wrong length, non-digits and empty never match.
        let spaced = format!("{} {}", &cur[..3], &cur[3..]);
        assert!(s.verify(&spaced, now, 0).is_some());
        assert!(s.verify(&format!("{cur}0"), now, 1).is_none());
        assert!(s.verify(&cur[..5], now, 1).is_none());
        assert!(s.verify("", now, 1).is_none());
        assert!(s.verify("abcdef", now, 1).is_none());
        // Near the epoch the window does not underflow.
        let early = s.code_at(0);
        assert_eq!(s.verify(&early, 10, 3).unwrap().step, 0);
    }

    #[test]
    fn generated_secrets() {
        for (alg, len) in [
            (Algorithm::SHA1, 20),
            (Algorithm::SHA256, 32),
            (Algorithm::SHA512, 64),
        ] {
            let p = Params {
                algorithm: alg,
                digits: 6,
                period: 30,
            };
            let a = TotpSecret::generate(p);
            let b = TotpSecret::generate(p);
            assert_eq!(a.bytes.len(), len);
            assert!(a.bytes.len() * 8 >= 160);
            assert_ne!(a.bytes, b.bytes);
            let b32 = a.base32();
            assert!(!b32.contains('='));
            assert_eq!(base32_decode(&b32).unwrap(), a.bytes);
        }
    }

    #[test]
    fn base32_rfc4648_vectors() {
        // RFC 4648 section 10, without padding.
        for (plain, enc) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32_encode(plain.as_bytes()), enc);
            assert_eq!(base32_decode(enc).unwrap(), plain.as_bytes());
        }
        assert_eq!(base32_decode("mzxw6ytboi======").unwrap(), b"foobar");
        assert!(base32_decode("MZ1W").is_none());
        // Matches the library's own encoding.
        let t = TOTP::new_unchecked(
            totp_rs::Algorithm::SHA1,
            6,
            1,
            30,
            SEED20.to_vec(),
            None,
            String::new(),
        );
        assert_eq!(base32_encode(SEED20), t.get_secret_base32());
    }

    #[test]
    fn otpauth_uri_spells_everything_out() {
        let s = secret(Algorithm::SHA256, 8, 60, SEED32);
        let uri = s.otpauth_uri("ACME Corp", "alice:x@example.com");
        assert_eq!(
            uri,
            format!(
                "otpauth://totp/ACME%20Corp:alice%3Ax%40example.com?secret={}&issuer=ACME%20Corp&algorithm=SHA256&digits=8&period=60",
                s.base32()
            )
        );
        // totp-rs parses it back to the same generator.
        let parsed = TOTP::from_url_unchecked(&uri).unwrap();
        assert_eq!(parsed.secret, SEED32);
        assert_eq!(parsed.digits, 8);
        assert_eq!(parsed.step, 60);
        assert_eq!(parsed.algorithm, totp_rs::Algorithm::SHA256);
        assert_eq!(parsed.issuer.as_deref(), Some("ACME Corp"));
        let uri = s.otpauth_uri("2FA-Middleware", "bob");
        assert!(uri.starts_with("otpauth://totp/2FA-Middleware:bob?secret="));
        let uni = s.otpauth_uri("Zürich", "émile");
        assert!(uni.starts_with("otpauth://totp/Z%C3%BCrich:%C3%A9mile?"));
    }

    fn ring(keys: &[&str]) -> KeyRing {
        KeyRing::from_config(&SecretList(keys.iter().map(|k| Secret::new(*k)).collect())).unwrap()
    }
    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "k2:HxwdHh8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRo=";

    #[test]
    fn sealed_at_rest() {
        let s = TotpSecret::generate(Params {
            algorithm: Algorithm::SHA512,
            digits: 8,
            period: 30,
        });
        let r1 = ring(&[K1]);
        let (kid, ct) = s.seal(&r1, "alice", Purpose::Enrolled).unwrap();
        assert_eq!(kid, "k1");
        // Neither the raw bytes nor the base32 form appear in the ciphertext.
        let b32 = s.base32();
        assert!(!ct.windows(8).any(|w| w == &b32.as_bytes()[..8]));
        assert!(!ct.windows(8).any(|w| w == &s.bytes[..8]));
        let back = TotpSecret::open(&r1, "alice", Purpose::Enrolled, &kid, &ct).unwrap();
        assert_eq!(back, s);
        // Bound to the user and to the purpose.
        assert!(TotpSecret::open(&r1, "bob", Purpose::Enrolled, &kid, &ct).is_err());
        assert!(TotpSecret::open(&r1, "alice", Purpose::Pending, &kid, &ct).is_err());
        // Rotation: the new first key seals, the old one still opens.
        let r21 = ring(&[K2, K1]);
        assert_eq!(
            TotpSecret::open(&r21, "alice", Purpose::Enrolled, &kid, &ct).unwrap(),
            s
        );
        let (kid2, ct2) = s.seal(&r21, "alice", Purpose::Enrolled).unwrap();
        assert_eq!(kid2, "k2");
        assert!(TotpSecret::open(&ring(&[K1]), "alice", Purpose::Enrolled, &kid2, &ct2).is_err());
        // Debug never shows the secret.
        assert!(!format!("{s:?}").contains(&b32));
    }

    #[tokio::test]
    async fn pending_secret_in_the_session_store() {
        use crate::clock::{Clock, ManualClock};
        use crate::store::memory::MemoryEphemeralStore;
        let clock = ManualClock::new(1_700_000_000);
        let eph = MemoryEphemeralStore::new(clock.clone());
        use crate::store::EphemeralStore as _;
        let r = ring(&[K1]);
        let s = TotpSecret::generate(Params {
            algorithm: Algorithm::SHA1,
            digits: 6,
            period: 30,
        });
        assert!(get_pending(&eph, &r, "ua", "alice", clock.now())
            .await
            .unwrap()
            .is_none());
        let exp = put_pending(
            &eph,
            &r,
            "ua",
            "alice",
            &s,
            Duration::from_secs(600),
            clock.now(),
        )
        .await
        .unwrap();
        assert_eq!(exp, 1_700_000_600);
        // Stored sealed: the value holds neither form of the secret.
        let raw = eph.get(&pending_key("ua")).await.unwrap().unwrap();
        assert!(!raw.contains(&s.base32()));
        assert_eq!(
            get_pending(&eph, &r, "ua", "alice", clock.now())
                .await
                .unwrap(),
            Some(s.clone())
        );
        assert!(get_pending(&eph, &r, "ub", "bob", clock.now())
            .await
            .unwrap()
            .is_none());
        // Sealed to its subject: copied to another user's key, it does not open.
        eph.set(&pending_key("ub"), &raw, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(get_pending(&eph, &r, "ub", "bob", clock.now())
            .await
            .unwrap()
            .is_none());
        // Under a ring without its key, it is simply gone.
        assert!(get_pending(&eph, &ring(&[K2]), "ua", "alice", clock.now())
            .await
            .unwrap()
            .is_none());
        clock.advance(600);
        assert!(get_pending(&eph, &r, "ua", "alice", clock.now())
            .await
            .unwrap()
            .is_none());
        put_pending(
            &eph,
            &r,
            "ua",
            "alice",
            &s,
            Duration::from_secs(600),
            clock.now(),
        )
        .await
        .unwrap();
        clear_pending(&eph, "ua").await.unwrap();
        assert!(get_pending(&eph, &r, "ua", "alice", clock.now())
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn reencrypt_all_moves_every_secret_to_the_first_key() {
        use crate::store::sqlite::SqliteProfileStore;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteProfileStore::new(&url).unwrap();
        store.migrate().await.unwrap();
        let p = Params {
            algorithm: Algorithm::SHA1,
            digits: 6,
            period: 30,
        };
        let old = ring(&[K1]);
        let (a, b, c) = (
            TotpSecret::generate(p),
            TotpSecret::generate(p),
            TotpSecret::generate(p),
        );
        for (sub, s) in [("a", &a), ("b", &b)] {
            let rec = seal_record(&old, sub, s, 100).unwrap();
            assert!(store.insert_totp(sub, &rec).await.unwrap());
        }
        let rotated = ring(&[K2, K1]);
        let rec = seal_record(&rotated, "c", &c, 100).unwrap();
        assert!(store.insert_totp("c", &rec).await.unwrap());

        let r = reencrypt_all(&store, &rotated).await.unwrap();
        assert_eq!(
            r,
            ReencryptReport {
                rewritten: 2,
                current: 1,
                skipped: 0,
                failed: 0
            }
        );
        // Everything opens with the new key alone, enabled_at kept.
        let only_new = ring(&[K2]);
        for (sub, s) in [("a", &a), ("b", &b), ("c", &c)] {
            assert_eq!(
                get_enrolled(&store, &only_new, sub).await.unwrap().as_ref(),
                Some(s)
            );
            let rec = store.get_totp(sub).await.unwrap().unwrap();
            assert_eq!(rec.key_id, "k2");
            assert_eq!(rec.enabled_at, 100);
        }
        assert_eq!(
            reencrypt_all(&store, &rotated).await.unwrap(),
            ReencryptReport {
                current: 3,
                ..Default::default()
            }
        );
        // A secret under a key the ring lacks is reported, not lost.
        let k3 = ring(&["k3:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="]);
        let rec = seal_record(&k3, "d", &a, 5).unwrap();
        assert!(store.insert_totp("d", &rec).await.unwrap());
        let r = reencrypt_all(&store, &only_new).await.unwrap();
        assert_eq!(r.failed, 1);
        assert_eq!(store.get_totp("d").await.unwrap().unwrap().key_id, "k3");
        assert!(get_enrolled(&store, &only_new, "d").await.is_err());
        assert_eq!(
            get_enrolled(&store, &only_new, "nobody").await.unwrap(),
            None
        );
    }
}
