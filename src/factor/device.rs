//! Remembered devices (`security.remember_device_ttl`): after a session has
//! passed a real factor, the frontend may ask for a device token to keep on
//! that device; a later Keycloak session of the same user on that device
//! presents it (`POST /user/verify-device`) and becomes verified with the
//! factor `device`.
//!
//! Rules this module owns (docs/remembered-devices.md explains them):
//! - the token is 256 bits from the OS CSPRNG, base64url; only its SHA-256
//!   is stored, bound to the user's `sub`;
//! - it rotates on every use, in one conditional update (`DeviceStore::
//!   rotate_device`), so that of two uses of one token exactly one wins;
//! - the previous token's hash is kept one generation back: when it comes
//!   back (later than [`REUSE_GRACE`] after the rotation), a copy of the
//!   token is in other hands, and the device is revoked, the user's
//!   verified sessions are dropped and the user is told;
//! - unknown, expired and other users' tokens are refused as wrong codes,
//!   against the one attempt budget;
//! - the lifetime counts from when the device was remembered: using it does
//!   not extend it, so a real factor is asked for at least once per TTL;
//! - `device` never satisfies a step-up `max_age` or
//!   `security.sensitive_max_age` (`Factor::is_fresh_proof`).

use std::time::Duration;

use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::service::{recipients, require_session, Compared, Factors};
use crate::delivery::Notice;
use crate::error::Error;
use crate::store::{DeviceMatch, DeviceRecord, Factor};
use crate::token::Identity;

/// Random bytes of a device token: 256 bits.
const TOKEN_BYTES: usize = 32;
/// Devices one user can have remembered at once; the oldest makes room.
pub const MAX_DEVICES: usize = 20;
/// Longest device name, in characters.
pub const MAX_NAME: usize = 64;
/// Seconds after a rotation during which the token it replaced is only
/// refused, not taken for theft: two uses of one token at once (a double
/// submit) must not revoke the device. Either way the old token verifies
/// nothing.
pub const REUSE_GRACE: i64 = 3;
/// Separates these hashes from every other SHA-256 of the service.
const HASH_CONTEXT: &[u8] = b"twofa-authz remembered device v1\0";

/// A new device token from the OS CSPRNG, base64url without padding.
pub fn generate_token() -> String {
    let mut raw = [0u8; TOKEN_BYTES];
    OsRng.fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// What is stored of a token: SHA-256, hex. A plain hash is enough for 256
/// random bits (nothing to guess, nothing to precompute), and unlike an HMAC
/// under the key ring it survives a key rotation.
pub fn hash_token(token: &str) -> String {
    let mut h = Sha256::new();
    h.update(HASH_CONTEXT);
    h.update(token.as_bytes());
    hex::encode(h.finalize())
}

/// A public id for a device: 128 random bits, hex.
fn new_id() -> String {
    let mut raw = [0u8; 16];
    OsRng.fill_bytes(&mut raw);
    hex::encode(raw)
}

/// A device token handed out, to be kept by the frontend on that device.
#[derive(Debug, Clone)]
pub struct IssuedDevice {
    pub id: String,
    pub token: String,
    pub expires_at: i64,
}

/// A remembered device as its owner sees it: never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    pub id: String,
    pub name: Option<String>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub expires_at: i64,
}

impl From<DeviceRecord> for DeviceView {
    fn from(d: DeviceRecord) -> Self {
        DeviceView {
            id: d.id,
            name: d.name,
            created_at: d.created_at,
            last_used_at: d.last_used_at,
            expires_at: d.expires_at,
        }
    }
}

/// A device name as given: trimmed, at most [`MAX_NAME`] characters, no
/// control characters (it is shown in lists and may reach logs of other
/// tools). Empty means none.
pub fn normalize_name(name: Option<&str>) -> Result<Option<String>, Error> {
    let Some(n) = name.map(str::trim).filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if n.chars().count() > MAX_NAME || n.chars().any(char::is_control) {
        return Err(Error::InvalidRequest(format!(
            "`name` is at most {MAX_NAME} characters, without control characters"
        )));
    }
    Ok(Some(n.to_string()))
}

impl Factors {
    /// `security.remember_device_ttl`, or 404 `remembered_devices_disabled`.
    fn device_ttl(&self) -> Result<Duration, Error> {
        let ttl = self.s.security.remember_device_ttl.get();
        if ttl.is_zero() {
            return Err(Error::RememberedDevicesDisabled);
        }
        Ok(ttl)
    }

    /// `POST /user/remembered-devices`: a new device token for the device
    /// this session runs on. Needs a real factor (not `device`) passed by
    /// this session within `security.sensitive_max_age`: remembering a
    /// device adds a way in, and a device must not vouch for another one.
    pub async fn remember_device(
        &self,
        id: &Identity,
        name: Option<String>,
    ) -> Result<IssuedDevice, Error> {
        let ttl = self.device_ttl()?;
        let p = self.profile(id).await?;
        require_session(id)?;
        let max_age = self.s.security.sensitive_max_age.as_secs();
        let now = self.clock.now();
        match self.session(id).await? {
            Some(v) if v.factor.is_fresh_proof() && now.saturating_sub(v.at) <= max_age as i64 => {}
            _ => {
                let e = self.enrolled(id.sub()).await?;
                let methods = self.methods(&p, e);
                self.publish_methods(id, &methods).await;
                return Err(Error::SecondFactorRequired {
                    methods,
                    max_age: Some(max_age),
                });
            }
        }
        let existing = self.live_devices(id.sub(), now).await?;
        // Bounded per user: the oldest makes room for the new one.
        let excess = (existing.len() + 1).saturating_sub(MAX_DEVICES);
        for d in existing.iter().take(excess) {
            self.devices.delete_device(id.sub(), &d.id).await?;
        }
        let token = generate_token();
        let rec = DeviceRecord {
            id: new_id(),
            subject: id.sub().to_string(),
            name,
            token_hash: hash_token(&token),
            previous_hash: None,
            created_at: now,
            last_used_at: None,
            expires_at: now.saturating_add(ttl.as_secs() as i64),
        };
        self.devices.insert_device(&rec).await?;
        tracing::info!(device = %rec.id, "device remembered");
        self.audit
            .emit(crate::audit::Event::new(crate::audit::Kind::DeviceRemembered).identity(id));
        Ok(IssuedDevice {
            id: rec.id,
            token,
            expires_at: rec.expires_at,
        })
    }

    /// `GET /user/remembered-devices`: the user's unexpired devices, oldest
    /// first. Expired ones are removed on the way.
    pub async fn list_devices(&self, id: &Identity) -> Result<Vec<DeviceView>, Error> {
        self.device_ttl()?;
        let now = self.clock.now();
        Ok(self
            .live_devices(id.sub(), now)
            .await?
            .into_iter()
            .map(DeviceView::from)
            .collect())
    }

    /// `DELETE /user/remembered-devices/{id}`. Needs a verified session
    /// (any factor): a stolen access token alone cannot touch the list.
    pub async fn forget_device(&self, id: &Identity, device: &str) -> Result<(), Error> {
        self.device_ttl()?;
        let p = self.profile(id).await?;
        if self.session(id).await?.is_none() {
            let e = self.enrolled(id.sub()).await?;
            let methods = self.methods(&p, e);
            if !methods.is_empty() {
                return Err(Error::SecondFactorRequired {
                    methods,
                    max_age: None,
                });
            }
        }
        if !self.devices.delete_device(id.sub(), device).await? {
            return Err(Error::DeviceNotFound);
        }
        tracing::info!(device = %device, "remembered device revoked by its user");
        Ok(())
    }

    /// Every remembered device of `sub` goes (back-channel logout by `sub`;
    /// `reset-user` does the same in its own transaction). Done whether or
    /// not the feature is on, so that turning it on again revives nothing.
    pub async fn forget_all_devices(&self, sub: &str) -> Result<u32, Error> {
        Ok(self.devices.delete_devices(sub).await?)
    }

    /// `POST /user/verify-device`: the token's session becomes verified
    /// with `device`, and the device gets its next token (the presented one
    /// stops working). Returns the new token and the device's expiry.
    pub async fn verify_device(&self, id: &Identity, token: &str) -> Result<IssuedDevice, Error> {
        self.device_ttl()?;
        let p = self.profile(id).await?;
        require_session(id)?;
        let presented = hash_token(token.trim());
        let next = generate_token();
        let next_hash = hash_token(&next);
        let device = self
            .attempt(id, Factor::Device, async {
                let now = self.clock.now();
                let found = self.devices.find_device(&presented).await?;
                let (d, current) = match found {
                    None => return Ok(Compared::Wrong),
                    Some(DeviceMatch::Current(d)) => (d, true),
                    Some(DeviceMatch::Previous(d)) => (d, false),
                };
                if d.subject != id.sub() {
                    // Someone else's token: refused like a wrong code. Its
                    // owner's device is left alone; this user cannot prove
                    // whose copy is the stolen one.
                    tracing::warn!("device token of another user refused");
                    return Ok(Compared::Wrong);
                }
                if d.expires_at <= now {
                    let _ = self.devices.delete_device(id.sub(), &d.id).await;
                    tracing::info!(device = %d.id, "expired device token refused");
                    return Ok(Compared::Wrong);
                }
                if !current {
                    if d.last_used_at.is_some_and(|t| now.saturating_sub(t) < REUSE_GRACE) {
                        // Replaced a moment ago: the loser of two uses at
                        // once (a double submit, two tabs), not yet a thief.
                        tracing::info!(device = %d.id, "device token replaced a moment ago refused");
                        return Ok(Compared::Wrong);
                    }
                    self.revoke_stolen(id, &p, &d).await;
                    return Ok(Compared::Wrong);
                }
                if !self
                    .devices
                    .rotate_device(&d.id, &presented, &next_hash, now)
                    .await?
                {
                    // A parallel use of the same token rotated it first.
                    tracing::info!(device = %d.id, "device token used twice at once; one use won");
                    return Ok(Compared::Wrong);
                }
                Ok(Compared::Right(d))
            })
            .await?;
        if let Err(e) = self.mark_verified(id, Factor::Device).await {
            // The new token never reaches the device: put the presented one
            // back, or the device's next use would look like theft.
            let now = self.clock.now();
            if let Err(undo) = self
                .devices
                .rotate_device(&device.id, &next_hash, &presented, now)
                .await
            {
                tracing::warn!(error = %undo, "could not restore a device token after a failed verification");
            }
            return Err(e);
        }
        tracing::info!(device = %device.id, "session verified by a remembered device");
        Ok(IssuedDevice {
            id: device.id,
            token: next,
            expires_at: device.expires_at,
        })
    }

    /// A token the device had already replaced came back: whoever holds the
    /// device's tokens, one of the two copies is stolen. The device goes
    /// (so the newer token stops working too), every verified session of
    /// the user goes (a thief's session may have been verified by it), and
    /// the user is told. Best effort: the refusal stands whatever fails.
    async fn revoke_stolen(&self, id: &Identity, p: &crate::store::Profile, d: &DeviceRecord) {
        tracing::warn!(device = %d.id, "a replaced device token came back: device revoked as stolen");
        self.audit.emit(
            crate::audit::Event::new(crate::audit::Kind::DeviceRevoked)
                .identity(id)
                .failure()
                .field("reason", "replaced_token_reused"),
        );
        if let Err(e) = self.devices.delete_device(id.sub(), &d.id).await {
            tracing::warn!(error = %e, "could not revoke a stolen device");
        }
        if let Err(e) = self.sessions.remove_subject(&id.subject_key()).await {
            tracing::warn!(error = %e, "could not end the sessions of a user whose device token was stolen");
        }
        self.notify(id, recipients(p, id), Notice::DeviceRevoked)
            .await;
    }

    /// The subject's devices that have not expired; expired ones are
    /// removed (best effort: they are refused either way).
    async fn live_devices(&self, sub: &str, now: i64) -> Result<Vec<DeviceRecord>, Error> {
        let (live, dead): (Vec<_>, Vec<_>) = self
            .devices
            .devices(sub)
            .await?
            .into_iter()
            .partition(|d| d.expires_at > now);
        for d in dead {
            let _ = self.devices.delete_device(sub, &d.id).await;
        }
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_random_bits_in_base64url() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&a)
            .unwrap();
        assert_eq!(raw.len(), 32);
    }

    #[test]
    fn the_hash_is_not_the_token_and_is_stable() {
        let t = generate_token();
        assert_eq!(hash_token(&t), hash_token(&t));
        assert_ne!(hash_token(&t), hash_token(&generate_token()));
        assert!(!hash_token(&t).contains(&t));
        assert_eq!(hash_token(&t).len(), 64);
    }

    #[test]
    fn names_are_bounded() {
        assert_eq!(normalize_name(None).unwrap(), None);
        assert_eq!(normalize_name(Some("  ")).unwrap(), None);
        assert_eq!(
            normalize_name(Some(" Laptop ")).unwrap().as_deref(),
            Some("Laptop")
        );
        assert!(normalize_name(Some(&"x".repeat(65))).is_err());
        assert!(normalize_name(Some("a\nb")).is_err());
    }
}
