//! WebAuthn (passkeys) as a second factor, on webauthn-rs's `Passkey` API:
//! registering credentials, asserting one to verify the session, listing and
//! removing them. docs/webauthn.md describes the flows and their risks.
//!
//! Rules it owns besides those it borrows from [`Factors`] (the attempt
//! budget, "needs a recent second factor", marking the session verified):
//! - a ceremony's state lives in the ephemeral store for [`CEREMONY_TTL`],
//!   under a key that names the session that started it
//!   ([`keys::webauthn_ceremony`]), and is taken exactly once (read, then
//!   deleted only if unchanged): a response is checked against the challenge
//!   its own session was given, once;
//! - attestation `none`: the credential's make is not checked, its key is;
//! - the signature counter and the backup flags are checked on every
//!   assertion (by webauthn-rs against the stored credential) and stored
//!   after it, with a compare-and-set so that two assertions racing from one
//!   stored state cannot both pass;
//! - a refused assertion counts against the same budget as a wrong code, and
//!   every refusal is counted by reason (`twofa_webauthn_failures_total`).

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder, WebauthnError,
};

use super::service::{recipients, require_session, Compared};
use super::Factors;
use crate::audit::{Event, Kind};
use crate::clock::SharedClock;
use crate::config::WebAuthnConfig;
use crate::delivery::Notice;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::store::{keys, EphemeralStore, Factor, ProfileStore, WebAuthnCredential};
use crate::token::Identity;

/// How long a started ceremony waits for its response.
pub const CEREMONY_TTL: Duration = Duration::from_secs(300);
/// Longest credential name kept (characters).
pub const MAX_NAME: usize = 64;
/// Credentials one user may register: bounds the work of every assertion
/// (the allow list) and what a stolen session could add.
pub const MAX_CREDENTIALS: usize = 20;

/// The two ceremonies, as they name ceremony keys and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ceremony {
    Register,
    Authenticate,
}

impl Ceremony {
    fn key(self) -> &'static str {
        match self {
            Ceremony::Register => "reg",
            Ceremony::Authenticate => "auth",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Ceremony::Register => "register",
            Ceremony::Authenticate => "authenticate",
        }
    }
}

/// What the service is built from.
pub struct PasskeyPorts {
    pub factors: Arc<Factors>,
    pub ephemeral: Arc<dyn EphemeralStore>,
    pub profiles: Arc<dyn ProfileStore>,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
}

pub struct Passkeys {
    factors: Arc<Factors>,
    eph: Arc<dyn EphemeralStore>,
    profiles: Arc<dyn ProfileStore>,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    /// None while `webauthn.rp_id` is unset: every route answers that the
    /// method is not enabled.
    rp: Option<Webauthn>,
    /// `webauthn.user_verification` as webauthn-rs spells it.
    uv: &'static str,
}

/// A ceremony's stored value: webauthn-rs's state and when it lapses (the
/// store's TTL ends it too; the clock check makes the limit exact and
/// testable with the injected clock).
#[derive(Serialize, Deserialize)]
struct Stored {
    s: Value,
    exp: i64,
}

/// A credential as the list shows it.
#[derive(Debug, Clone)]
pub struct CredentialInfo {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub backup_eligible: bool,
    pub backup_state: bool,
}

impl From<&WebAuthnCredential> for CredentialInfo {
    fn from(c: &WebAuthnCredential) -> Self {
        Self {
            id: c.id.clone(),
            name: c.name.clone(),
            created_at: c.created_at,
            last_used_at: c.last_used_at,
            backup_eligible: c.backup_eligible,
            backup_state: c.backup_state,
        }
    }
}

/// Builds the relying party from the configuration; None when `rp_id` is
/// unset. `rp_name` defaults to `totp.issuer`.
pub fn relying_party(cfg: &WebAuthnConfig, issuer: &str) -> Result<Option<Webauthn>, String> {
    let Some(rp_id) = cfg.rp_id.as_deref() else {
        return Ok(None);
    };
    let origins = cfg.origins();
    let mut urls = Vec::with_capacity(origins.len());
    for o in &origins {
        urls.push(Url::parse(o).map_err(|e| format!("webauthn.rp_origins: `{o}`: {e}"))?);
    }
    let Some((first, rest)) = urls.split_first() else {
        return Err("webauthn.rp_origins: no origin".into());
    };
    let name = cfg.rp_name.as_deref().unwrap_or(issuer);
    let mut b = WebauthnBuilder::new(rp_id, first)
        .map_err(|e| format!("webauthn.rp_id / rp_origins: {e}"))?
        .rp_name(name)
        .timeout(CEREMONY_TTL);
    for u in rest {
        b = b.append_allowed_origin(u);
    }
    b.build().map(Some).map_err(|e| format!("webauthn: {e}"))
}

/// Why a response was refused: the `reason` label.
fn reason(e: &WebauthnError) -> &'static str {
    match e {
        WebauthnError::MismatchedChallenge | WebauthnError::ChallengeNotFound => "challenge",
        WebauthnError::InvalidRPOrigin => "origin",
        WebauthnError::InvalidRPIDHash => "rp_id",
        WebauthnError::CredentialPossibleCompromise => "counter",
        WebauthnError::UserNotVerified | WebauthnError::UserNotPresent => "user_verification",
        WebauthnError::CredentialBackupEligibilityInconsistent => "backup_flags",
        WebauthnError::CredentialNotFound => "unknown_credential",
        WebauthnError::CredentialExcludedFromRequest | WebauthnError::CredentialAlreadyExists => {
            "excluded"
        }
        WebauthnError::InvalidClientDataType => "client_data",
        _ => "invalid",
    }
}

/// The user handle the authenticator keeps: stable per subject (so that a
/// second registration on one authenticator replaces, not duplicates, a
/// discoverable credential), and no PII.
fn user_handle(sub: &str) -> Uuid {
    let d = Sha256::digest(format!("twofa-authz webauthn user\n{sub}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    Uuid::from_bytes(b)
}

/// The stored copy of a passkey's counter and backup flags, read from its
/// serialised form (webauthn-rs keeps them private).
fn passkey_fields(json: &Value) -> (i64, bool, bool) {
    let c = json.get("cred");
    let get = |k: &str| c.and_then(|c| c.get(k));
    (
        get("counter").and_then(Value::as_i64).unwrap_or(0),
        get("backup_eligible")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        get("backup_state")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    )
}

/// Sets the user-verification policy in an options document and in the
/// matching state. webauthn-rs's `Passkey` API always asks for `required`;
/// the policy is part of the state it later checks against, so both are
/// changed together or not at all.
fn set_policy(
    options: &mut Value,
    options_at: &str,
    state: &mut Value,
    state_at: &str,
    uv: &str,
) -> Result<(), Error> {
    if uv == "required" {
        return Ok(());
    }
    let missing = |what: &str| Error::Internal(format!("webauthn: no {what} in the {uv} ceremony"));
    let o = options
        .pointer_mut(options_at)
        .ok_or_else(|| missing(options_at))?;
    let s = state
        .pointer_mut(state_at)
        .ok_or_else(|| missing(state_at))?;
    *o = Value::String(uv.to_string());
    *s = Value::String(uv.to_string());
    Ok(())
}

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("webauthn {what}: {e}"))
}

impl Passkeys {
    pub fn new(p: PasskeyPorts, cfg: &WebAuthnConfig, issuer: &str) -> Result<Self, String> {
        let uv = match cfg.user_verification.as_str() {
            "required" => "required",
            "discouraged" => "discouraged",
            _ => "preferred",
        };
        Ok(Self {
            rp: relying_party(cfg, issuer)?,
            factors: p.factors,
            eph: p.ephemeral,
            profiles: p.profiles,
            metrics: p.metrics,
            clock: p.clock,
            uv,
        })
    }

    fn rp(&self) -> Result<&Webauthn, Error> {
        self.factors.method_enabled(Factor::WebAuthn)?;
        self.rp.as_ref().ok_or_else(|| {
            Error::InvalidRequest("`webauthn` is not an enabled second factor here".into())
        })
    }

    fn refused(&self, c: Ceremony, reason: &str) {
        self.metrics
            .webauthn_failures
            .with_label_values(&[c.label(), reason])
            .inc();
    }

    fn ceremony_key(id: &Identity, c: Ceremony) -> Result<String, Error> {
        let session = require_session(id)?;
        Ok(keys::webauthn_ceremony(
            id.subject_key().as_str(),
            c.key(),
            session.as_str(),
        ))
    }

    async fn put_ceremony(&self, id: &Identity, c: Ceremony, state: Value) -> Result<(), Error> {
        let key = Self::ceremony_key(id, c)?;
        let v = Stored {
            s: state,
            exp: self.clock.now() + CEREMONY_TTL.as_secs() as i64,
        };
        let json = serde_json::to_string(&v).map_err(|e| internal("state", e))?;
        // A new start replaces the session's earlier one: only the latest
        // challenge can be answered.
        self.eph.set(&key, &json, CEREMONY_TTL).await?;
        Ok(())
    }

    /// Takes the session's ceremony: read, then deleted only if unchanged,
    /// so that of two responses racing for one challenge one gets it.
    /// 404 `no_pending_ceremony` when there is none (never started, used,
    /// from another session, or expired), counted.
    async fn take_ceremony(&self, id: &Identity, c: Ceremony) -> Result<Value, Error> {
        let key = Self::ceremony_key(id, c)?;
        let gone = |why: &'static str| {
            self.refused(c, why);
            if c == Ceremony::Authenticate {
                self.factors.record(Factor::WebAuthn, "no_pending");
            }
            Error::NoPendingCeremony
        };
        let Some(raw) = self.eph.get(&key).await? else {
            return Err(gone("no_ceremony"));
        };
        if !self.eph.delete_if_eq(&key, &raw).await? {
            return Err(gone("no_ceremony"));
        }
        let stored: Stored = serde_json::from_str(&raw).map_err(|e| internal("state", e))?;
        if self.clock.now() >= stored.exp {
            return Err(gone("expired"));
        }
        Ok(stored.s)
    }

    async fn passkeys(&self, sub: &str) -> Result<Vec<(WebAuthnCredential, Passkey)>, Error> {
        let mut out = Vec::new();
        for c in self.profiles.webauthn_credentials(sub).await? {
            let pk: Passkey = serde_json::from_str(&c.passkey)
                .map_err(|e| Error::Internal(format!("stored WebAuthn credential: {e}")))?;
            out.push((c, pk));
        }
        Ok(out)
    }

    // --- registration --------------------------------------------------------

    /// The creation options for a new credential (webauthn-rs's
    /// `CreationChallengeResponse`), the session's registration ceremony
    /// started. Needs a recent second factor once the user has one, like
    /// every factor change.
    pub async fn register_start(&self, id: &Identity) -> Result<Value, Error> {
        let rp = self.rp()?;
        require_session(id)?;
        let p = self.factors.profile(id).await?;
        self.factors.require_recent_factor(id, &p).await?;
        let existing = self.passkeys(id.sub()).await?;
        if existing.len() >= MAX_CREDENTIALS {
            return Err(Error::InvalidRequest(format!(
                "at most {MAX_CREDENTIALS} WebAuthn credentials per user: remove one first"
            )));
        }
        let exclude: Vec<_> = existing.iter().map(|(_, k)| k.cred_id().clone()).collect();
        let name = id
            .username()
            .map(String::from)
            .or_else(|| p.username.clone())
            .or_else(|| id.email().map(String::from))
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| id.sub().to_string());
        let display = match (&p.first_name, &p.last_name) {
            (Some(f), Some(l)) => format!("{f} {l}"),
            (Some(n), None) | (None, Some(n)) => n.clone(),
            (None, None) => name.clone(),
        };
        let (ccr, state): (_, PasskeyRegistration) = rp
            .start_passkey_registration(
                user_handle(id.sub()),
                &name,
                &display,
                (!exclude.is_empty()).then_some(exclude),
            )
            .map_err(|e| internal("registration", e))?;
        let mut options = serde_json::to_value(&ccr).map_err(|e| internal("options", e))?;
        let mut state = serde_json::to_value(&state).map_err(|e| internal("state", e))?;
        set_policy(
            &mut options,
            "/publicKey/authenticatorSelection/userVerification",
            &mut state,
            "/rs/policy",
            self.uv,
        )?;
        if self.uv != "required" {
            // webauthn-rs asks for credProtect "userVerificationRequired",
            // which contradicts a request that does not require
            // verification (Chromium refuses the pair): asked for only with
            // `required`, and never expected then.
            for ext in [
                options.pointer_mut("/publicKey/extensions"),
                state.pointer_mut("/rs/extensions"),
            ] {
                if let Some(Value::Object(m)) = ext {
                    m.remove("credentialProtectionPolicy");
                    m.remove("enforceCredentialProtectionPolicy");
                }
            }
        }
        self.put_ceremony(id, Ceremony::Register, state).await?;
        Ok(options)
    }

    /// Checks the authenticator's response against the session's ceremony
    /// and stores the credential. The recent-factor rule is checked again
    /// (the ceremony may have outlived it). 404 `no_pending_ceremony`, 400
    /// `invalid_credential`, 409 `webauthn_credential_exists`.
    pub async fn register_finish(
        &self,
        id: &Identity,
        credential: &RegisterPublicKeyCredential,
        name: Option<&str>,
    ) -> Result<CredentialInfo, Error> {
        let rp = self.rp()?;
        require_session(id)?;
        let p = self.factors.profile(id).await?;
        let state = self.take_ceremony(id, Ceremony::Register).await?;
        self.factors.require_recent_factor(id, &p).await?;
        let state: PasskeyRegistration =
            serde_json::from_value(state).map_err(|e| internal("state", e))?;
        let pk = match rp.finish_passkey_registration(credential, &state) {
            Ok(pk) => pk,
            Err(e) => {
                let why = reason(&e);
                self.refused(Ceremony::Register, why);
                tracing::info!(reason = why, error = %e, "WebAuthn registration refused");
                return Err(Error::InvalidCredential(format!("{why}: {e}")));
            }
        };
        let json = serde_json::to_value(&pk).map_err(|e| internal("credential", e))?;
        let (sign_count, backup_eligible, backup_state) = passkey_fields(&json);
        let count = self.profiles.webauthn_credentials(id.sub()).await?.len();
        let name = name
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| n.chars().take(MAX_NAME).collect())
            .unwrap_or_else(|| format!("Passkey {}", count + 1));
        let c = WebAuthnCredential {
            id: URL_SAFE_NO_PAD.encode(pk.cred_id().as_ref()),
            subject: id.sub().to_string(),
            name,
            passkey: json.to_string(),
            sign_count,
            backup_eligible,
            backup_state,
            created_at: self.clock.now(),
            last_used_at: None,
        };
        if !self.profiles.insert_webauthn_credential(&c).await? {
            self.refused(Ceremony::Register, "excluded");
            return Err(Error::WebAuthnCredentialExists);
        }
        tracing::info!(backup_eligible, "WebAuthn credential registered");
        self.factors.audit.emit(
            Event::new(Kind::WebAuthnRegistered)
                .identity(id)
                .field("method", "webauthn")
                .field("backup_eligible", backup_eligible),
        );
        self.factors
            .notify(id, recipients(&p, id), Notice::PasskeyAdded)
            .await;
        // The methods hint now includes `webauthn`.
        self.factors.refresh_methods(id, &p).await;
        Ok(CredentialInfo::from(&c))
    }

    // --- authentication ------------------------------------------------------

    /// The request options for an assertion by one of the user's
    /// credentials (webauthn-rs's `RequestChallengeResponse`), the
    /// session's authentication ceremony started. 404 `webauthn_not_enabled`
    /// without a credential; 423/429 while the factor is locked, since an
    /// assertion could not be checked.
    pub async fn authenticate_start(&self, id: &Identity) -> Result<Value, Error> {
        let rp = self.rp()?;
        require_session(id)?;
        self.factors.profile(id).await?;
        let creds = self.passkeys(id.sub()).await?;
        if creds.is_empty() {
            return Err(Error::WebAuthnNotEnabled);
        }
        self.factors.refuse_while_locked(id).await?;
        let keys: Vec<Passkey> = creds.into_iter().map(|(_, k)| k).collect();
        let (rcr, state): (_, PasskeyAuthentication) = rp
            .start_passkey_authentication(&keys)
            .map_err(|e| internal("authentication", e))?;
        let mut options = serde_json::to_value(&rcr).map_err(|e| internal("options", e))?;
        let mut state = serde_json::to_value(&state).map_err(|e| internal("state", e))?;
        set_policy(
            &mut options,
            "/publicKey/userVerification",
            &mut state,
            "/ast/policy",
            self.uv,
        )?;
        self.put_ceremony(id, Ceremony::Authenticate, state).await?;
        Ok(options)
    }

    /// Checks an assertion against the session's ceremony and the stored
    /// credential (signature, challenge, origin, rp id, counter, backup
    /// flags), stores the credential's new counter and flags, and marks the
    /// session verified with `webauthn`. A refused assertion counts against
    /// the attempt budget (400 `invalid_code` with `attempts_remaining`, 429,
    /// 423), like a wrong code.
    pub async fn authenticate_finish(
        &self,
        id: &Identity,
        credential: &PublicKeyCredential,
    ) -> Result<(), Error> {
        let rp = self.rp()?;
        require_session(id)?;
        self.factors.profile(id).await?;
        let state = self.take_ceremony(id, Ceremony::Authenticate).await?;
        let state: PasskeyAuthentication =
            serde_json::from_value(state).map_err(|e| internal("state", e))?;
        let refuse = |why: &'static str| {
            self.refused(Ceremony::Authenticate, why);
            tracing::info!(reason = why, "WebAuthn assertion refused");
            Compared::Wrong
        };
        self.factors
            .attempt(id, Factor::WebAuthn, async {
                let res = match rp.finish_passkey_authentication(credential, &state) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "WebAuthn assertion did not verify");
                        return Ok(refuse(reason(&e)));
                    }
                };
                // Read again: the state holds the credentials as they were
                // at the start; the stored counter may have moved since.
                let now = self.clock.now();
                let Some((stored, mut pk)) = self
                    .passkeys(id.sub())
                    .await?
                    .into_iter()
                    .find(|(_, k)| k.cred_id() == res.cred_id())
                else {
                    // Removed while the ceremony ran.
                    return Ok(refuse("unknown_credential"));
                };
                let counter = i64::from(res.counter());
                if (counter > 0 || stored.sign_count > 0) && counter <= stored.sign_count {
                    return Ok(refuse("counter"));
                }
                pk.update_credential(&res);
                let json = serde_json::to_value(&pk).map_err(|e| internal("credential", e))?;
                let (sign_count, backup_eligible, backup_state) = passkey_fields(&json);
                let updated = WebAuthnCredential {
                    passkey: json.to_string(),
                    sign_count,
                    backup_eligible,
                    backup_state,
                    last_used_at: Some(now),
                    ..stored.clone()
                };
                if !self
                    .profiles
                    .update_webauthn_credential(&updated, &stored.passkey)
                    .await?
                {
                    // Another assertion from the same stored state won.
                    return Ok(refuse("counter"));
                }
                Ok(Compared::Right(()))
            })
            .await?;
        self.factors.mark_verified(id, Factor::WebAuthn).await?;
        tracing::info!("WebAuthn assertion accepted");
        Ok(())
    }

    // --- managing credentials ----------------------------------------------

    pub async fn list(&self, id: &Identity) -> Result<Vec<CredentialInfo>, Error> {
        self.rp()?;
        self.factors.profile(id).await?;
        Ok(self
            .profiles
            .webauthn_credentials(id.sub())
            .await?
            .iter()
            .map(CredentialInfo::from)
            .collect())
    }

    /// Removes one credential. Needs a recent second factor.
    pub async fn remove(&self, id: &Identity, credential_id: &str) -> Result<(), Error> {
        let p = self.factors.profile(id).await?;
        self.factors.require_recent_factor(id, &p).await?;
        if !self
            .profiles
            .delete_webauthn_credential(id.sub(), credential_id)
            .await?
        {
            return Err(Error::WebAuthnCredentialNotFound);
        }
        tracing::info!("WebAuthn credential removed");
        self.factors.audit.emit(
            Event::new(Kind::WebAuthnRemoved)
                .identity(id)
                .field("method", "webauthn"),
        );
        self.factors
            .notify(id, recipients(&p, id), Notice::PasskeyRemoved)
            .await;
        self.factors.refresh_methods(id, &p).await;
        Ok(())
    }
}
