//! The factor service: every rule of enrolling, using and changing second
//! factors and contacts, built once from the ports (stores, key ring,
//! delivery, the Keycloak directory, settings, metrics, clock). It knows
//! nothing of HTTP; the `/user` handlers parse, call one method, render.
//!
//! Rules it owns, so that no caller can forget one:
//! - the attempt budget ([`super::lockout`]): 423 once the consecutive cap is
//!   reached, then one attempt taken atomically *before* a code is compared,
//!   then the failure or success recorded ([`Factors::attempt`]);
//! - the TOTP replay guard: a time step accepted once is never accepted
//!   again for the user (`ProfileStore::accept_totp_step`, inside the TOTP
//!   comparison);
//! - marking the Keycloak session verified after a right login code;
//! - "needs a recent second factor" (INTERFACE.md section 5): once the user
//!   has a factor, adding, changing or removing one, or a contact, and
//!   confirming a pending TOTP secret, need a factor passed by this session
//!   within `security.sensitive_max_age`. Whether the user has a factor
//!   comes from the stored profile and enrolled factors, never from token
//!   claims;
//! - the methods hint a Check's 403 lists;
//! - change notices, rate-limited per user, channel and kind of notice.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::hashing::HashPool;
use super::lockout::retry_after;
use super::otp::{self, Binding, Channel, Check, Issued, Purpose, Restore};
use super::recovery;
use super::totp::{self as t, Params, TotpSecret};
use crate::audit::{Audit, Event, Kind};
use crate::clock::SharedClock;
use crate::config::{SecurityConfig, TotpConfig};
use crate::crypto::KeyRing;
use crate::delivery::{mask_email, mask_mobile, Delivery, Notice, Recipients};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::store::{
    keys, Attempt, AttemptLimits, DeviceStore, EphemeralStore, Factor, Profile, ProfileStore,
    SessionIds, SessionStore, Verified,
};
use crate::token::{HexKey, Identity};

/// Where users live besides us (Keycloak's Admin REST API): the mobile
/// attributes read at profile creation, verified contacts written back.
#[async_trait]
pub trait Directory: Send + Sync {
    /// The user's mobile number as stored there, and whether it says the
    /// number is verified.
    async fn mobile(&self, subject: &str) -> Result<(Option<String>, bool), Error>;
    async fn set_verified_email(&self, subject: &str, email: &str) -> Result<(), Error>;
    async fn set_verified_mobile(&self, subject: &str, mobile: &str) -> Result<(), Error>;
}

/// What the service is built from.
pub struct Ports {
    pub ephemeral: Arc<dyn EphemeralStore>,
    pub profiles: Arc<dyn ProfileStore>,
    /// Remembered devices (the profile database in production).
    pub devices: Arc<dyn DeviceStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub keys: Arc<KeyRing>,
    pub delivery: Arc<Delivery>,
    /// The Keycloak admin client, when configured.
    pub directory: Option<Arc<dyn Directory>>,
    pub metrics: Arc<Metrics>,
    /// Recovery-code hashing, a few at a time.
    pub hashing: Arc<HashPool>,
    pub audit: Arc<Audit>,
    pub clock: SharedClock,
}

/// The settings the rules read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub security: SecurityConfig,
    pub totp: TotpConfig,
    /// `keycloak.sync_verified_contacts`.
    pub sync_verified_contacts: bool,
    /// `keycloak.mobile_attribute`, for logs.
    pub mobile_attribute: String,
}

pub struct Factors {
    pub(super) eph: Arc<dyn EphemeralStore>,
    profiles: Arc<dyn ProfileStore>,
    pub(super) devices: Arc<dyn DeviceStore>,
    pub(super) sessions: Arc<dyn SessionStore>,
    keys: Arc<KeyRing>,
    delivery: Arc<Delivery>,
    directory: Option<Arc<dyn Directory>>,
    metrics: Arc<Metrics>,
    hashing: Arc<HashPool>,
    pub(super) audit: Arc<Audit>,
    pub(super) clock: SharedClock,
    pub(super) s: Settings,
}

/// The factor-related rows of the profile store.
#[derive(Debug, Clone, Copy, Default)]
pub struct Enrolled {
    pub totp: bool,
    pub recovery_codes: u32,
    /// Registered WebAuthn credentials (`factor::webauthn`).
    pub webauthn: u32,
}

/// What the profile document shows besides the stored profile.
#[derive(Debug, Clone)]
pub struct Overview {
    pub enrolled: Enrolled,
    /// The methods this user can use now (also published for Checks).
    pub methods: Vec<String>,
    /// The token's session, if it passed a factor (and is still valid).
    pub session: Option<Verified>,
    /// When that session's verified state lapses.
    pub session_expires_at: Option<i64>,
}

/// A login code on its way.
#[derive(Debug, Clone)]
pub struct SentCode {
    /// The contact, masked.
    pub sent_to: String,
    pub expires_at: i64,
}

/// Contact changes waiting for their codes.
#[derive(Debug, Clone, Default)]
pub struct PendingContacts {
    pub email: Option<String>,
    pub mobile: Option<String>,
    pub expires_at: i64,
}

/// A new pending TOTP secret, to be shown once.
pub struct NewTotp {
    pub secret: TotpSecret,
    pub otpauth_uri: String,
    pub expires_at: i64,
}

/// What comparing one code gave, inside [`Factors::attempt`].
pub(super) enum Compared<T> {
    Right(T),
    Wrong,
    /// The code matched, but what it proves is no longer there (a parallel
    /// request consumed the same code first): this error, no failure.
    Gone(Error),
}

/// Whether the profile's email address is verified, as stored. Token
/// claims never count: a token says what Keycloak knew when it was issued,
/// and only a code verified here (or the profile's creation) binds an
/// address to the profile.
pub fn email_verified(p: &Profile) -> bool {
    p.email.is_some() && p.email_verified
}

pub fn mobile_verified(p: &Profile) -> bool {
    p.mobile.is_some() && p.mobile_verified
}

/// The verified contact of `channel`: where login codes and notices go.
fn verified_contact(p: &Profile, channel: Channel) -> Option<String> {
    match channel {
        Channel::Email => p.email.clone().filter(|_| email_verified(p)),
        Channel::Mobile => p.mobile.clone().filter(|_| mobile_verified(p)),
    }
}

/// Where factor notices go: the verified contacts, in the token's language.
pub(super) fn recipients(p: &Profile, id: &Identity) -> Recipients {
    Recipients {
        email: verified_contact(p, Channel::Email),
        mobile: verified_contact(p, Channel::Mobile),
        locale: id.locale().map(String::from),
    }
}

impl Factors {
    pub fn new(p: Ports, s: Settings) -> Self {
        Self {
            eph: p.ephemeral,
            profiles: p.profiles,
            devices: p.devices,
            sessions: p.sessions,
            keys: p.keys,
            delivery: p.delivery,
            directory: p.directory,
            metrics: p.metrics,
            hashing: p.hashing,
            audit: p.audit,
            clock: p.clock,
            s,
        }
    }

    // --- profiles ----------------------------------------------------------

    /// The token's profile, 404 `profile_not_found` when there is none yet.
    pub async fn profile(&self, id: &Identity) -> Result<Profile, Error> {
        self.profiles
            .get_profile(id.sub())
            .await?
            .ok_or(Error::ProfileNotFound)
    }

    /// Creates the profile from the token's claims and, with the admin
    /// client, Keycloak's mobile attributes. Keycloak is asked before
    /// anything is written: if it fails, there is no profile, not half of
    /// one. 409 `profile_exists` when there is one.
    pub async fn create_profile(&self, id: &Identity) -> Result<Profile, Error> {
        /// Names from tokens are bounded before they are stored.
        const MAX_NAME: usize = 255;
        let bounded =
            |s: Option<&str>| -> Option<String> { s.map(|s| s.chars().take(MAX_NAME).collect()) };
        if self.profiles.get_profile(id.sub()).await?.is_some() {
            return Err(Error::ProfileExists);
        }
        let (mobile, mobile_verified) = match &self.directory {
            Some(d) => match d.mobile(id.sub()).await? {
                (Some(n), verified) => match super::contact::normalize_mobile(&n) {
                    Ok(n) => (Some(n), verified),
                    Err(_) => {
                        tracing::warn!(
                            attribute = %self.s.mobile_attribute,
                            "ignoring a Keycloak mobile number that is not a valid international number"
                        );
                        (None, false)
                    }
                },
                (None, _) => (None, false),
            },
            None => (None, false),
        };
        let email = id
            .email()
            .and_then(|e| super::contact::normalize_email(e).ok());
        let now = self.clock.now();
        let p = Profile {
            subject: id.sub().to_string(),
            username: bounded(id.username()),
            first_name: bounded(id.given_name()),
            last_name: bounded(id.family_name()),
            // The one time the token's claim counts: when the profile is
            // made from it.
            email_verified: email.is_some() && id.email_verified(),
            email,
            mobile,
            mobile_verified,
            pending_email: None,
            pending_mobile: None,
            created_at: now,
            updated_at: now,
        };
        if !self.profiles.create_profile(&p).await? {
            return Err(Error::ProfileExists);
        }
        self.audit
            .emit(Event::new(Kind::ProfileCreated).identity(id));
        Ok(p)
    }

    /// Factors, methods and the session's state for the profile document;
    /// publishes the methods hint.
    pub async fn overview(&self, id: &Identity, p: &Profile) -> Result<Overview, Error> {
        let enrolled = self.enrolled(&p.subject).await?;
        let methods = self.methods(p, enrolled);
        self.publish_methods(id, &methods).await;
        let session = self.session(id).await?;
        let ttl = self.s.security.second_factor_ttl.as_secs() as i64;
        Ok(Overview {
            enrolled,
            methods,
            session,
            session_expires_at: session.map(|v| v.at + ttl),
        })
    }

    // --- codes by email and SMS -------------------------------------------

    /// A login code to the verified contact of `channel`, bound to the
    /// token's session.
    pub async fn send_login_code(
        &self,
        id: &Identity,
        channel: Channel,
    ) -> Result<SentCode, Error> {
        self.method_enabled(channel.factor())?;
        let session = require_session(id)?;
        let p = self.profile(id).await?;
        let dest = verified_contact(&p, channel).ok_or(Error::ContactNotVerified)?;
        // Sending a code that could not be checked helps no one.
        self.refuse_while_locked(id).await?;
        let b = Binding {
            purpose: Purpose::Login,
            channel,
            destination: &dest,
            session: Some(&session),
        };
        let issued = self.issue(id, &b).await?;
        if let Err(e) = self
            .deliver(id, channel, &dest, &issued, Purpose::Login)
            .await
        {
            otp::revoke(self.eph.as_ref(), &issued).await;
            return Err(e);
        }
        let ttl = self.s.security.otp_ttl.get();
        Ok(SentCode {
            sent_to: match channel {
                Channel::Email => mask_email(&dest),
                Channel::Mobile => mask_mobile(&dest),
            },
            expires_at: self.clock.now() + ttl.as_secs() as i64,
        })
    }

    /// Checks a code by email or SMS. `purpose` defaults to `contact` when a
    /// change is pending on that channel, else `login`. `login` marks the
    /// session verified; `contact` makes the pending contact the verified
    /// one (and needs a recent second factor, since it changes a contact).
    pub async fn verify_code(
        &self,
        id: &Identity,
        channel: Channel,
        purpose: Option<Purpose>,
        input: &str,
    ) -> Result<Purpose, Error> {
        let p = self.profile(id).await?;
        let pending = match channel {
            Channel::Email => p.pending_email.clone(),
            Channel::Mobile => p.pending_mobile.clone(),
        };
        let purpose = purpose.unwrap_or(if pending.is_some() {
            Purpose::Contact
        } else {
            Purpose::Login
        });
        let method = channel.factor();
        let (dest, session) = match purpose {
            Purpose::Login => {
                self.method_enabled(method)?;
                let session = require_session(id)?;
                (verified_contact(&p, channel), Some(session))
            }
            Purpose::Contact => (pending, None),
        };
        let Some(dest) = dest else {
            self.record(method, "no_pending");
            return Err(Error::NoPendingCode);
        };
        let b = Binding {
            purpose,
            channel,
            destination: &dest,
            session: session.as_deref(),
        };
        let u = &id.subject_key();
        let Some(code) = otp::pending(self.eph.as_ref(), u, purpose, channel).await? else {
            self.record(method, "no_pending");
            return Err(Error::NoPendingCode);
        };
        if purpose == Purpose::Contact {
            // Confirming changes a contact. Checked once there is something
            // to confirm (404 first), and before any code is compared.
            self.require_recent_factor(id, &p).await?;
        }
        let restore: Restore = self
            .attempt(id, method, async {
                Ok(
                    match otp::compare(self.eph.as_ref(), &self.keys, code, &b, input).await? {
                        Check::Consumed(r) => Compared::Right(r),
                        Check::Wrong => Compared::Wrong,
                        Check::NoPending => Compared::Gone(Error::NoPendingCode),
                    },
                )
            })
            .await?;
        // The code is consumed. If what it should achieve fails, it is put
        // back, so that the user can retry without a new code.
        let done = match purpose {
            Purpose::Login => self.mark_verified(id, method).await.map(|_| ()),
            Purpose::Contact => self.apply_contact(id, channel, &dest).await,
        };
        if let Err(e) = done {
            restore.put_back(self.eph.as_ref()).await;
            return Err(e);
        }
        if purpose == Purpose::Contact {
            self.audit.emit(
                Event::new(Kind::ContactChangeConfirmed)
                    .identity(id)
                    .field("channel", channel.as_str()),
            );
        }
        Ok(purpose)
    }

    /// `PATCH /user`: `email` / `mobile` are the normalized new contacts
    /// (None: not asked). A code goes to each new contact, which replaces
    /// the old one only once verified; asking for the contact already
    /// verified cancels a pending change. Needs a recent second factor.
    pub async fn change_contacts(
        &self,
        id: &Identity,
        email: Option<String>,
        mobile: Option<String>,
    ) -> Result<PendingContacts, Error> {
        let (email_given, mobile_given) = (email.is_some(), mobile.is_some());
        let mut p = self.profile(id).await?;
        self.require_recent_factor(id, &p).await?;
        let email = email.filter(|e| {
            !verified_contact(&p, Channel::Email).is_some_and(|cur| cur.eq_ignore_ascii_case(e))
        });
        let mobile =
            mobile.filter(|m| verified_contact(&p, Channel::Mobile).as_deref() != Some(m.as_str()));
        let before = p.clone();
        if email_given {
            p.pending_email = email.clone();
        }
        if mobile_given {
            p.pending_mobile = mobile.clone();
        }

        let mut issued: Vec<(Channel, String, Issued)> = Vec::new();
        for (channel, dest) in [(Channel::Email, &email), (Channel::Mobile, &mobile)] {
            let Some(dest) = dest else { continue };
            let b = Binding {
                purpose: Purpose::Contact,
                channel,
                destination: dest,
                session: None,
            };
            match self.issue(id, &b).await {
                Ok(i) => issued.push((channel, dest.clone(), i)),
                Err(e) => {
                    self.revoke_all(&issued).await;
                    return Err(e);
                }
            }
        }
        if p != before {
            p.updated_at = self.clock.now();
            if let Err(e) = self.profiles.update_profile(&p).await {
                self.revoke_all(&issued).await;
                return Err(e.into());
            }
        }
        let mut failed = false;
        for (channel, dest, i) in &issued {
            if self
                .deliver(id, *channel, dest, i, Purpose::Contact)
                .await
                .is_err()
            {
                otp::revoke(self.eph.as_ref(), i).await;
                // The contact that could not be reached is not left pending.
                match channel {
                    Channel::Email => p.pending_email = before.pending_email.clone(),
                    Channel::Mobile => p.pending_mobile = before.pending_mobile.clone(),
                }
                failed = true;
            }
        }
        if failed {
            if let Err(e) = self.profiles.update_profile(&p).await {
                tracing::warn!(error = %e, "could not withdraw an undeliverable pending contact");
            }
            return Err(Error::DeliveryFailed);
        }
        let mut out = PendingContacts {
            expires_at: self.clock.now() + self.s.security.otp_ttl.as_secs() as i64,
            ..Default::default()
        };
        for (channel, dest, _) in issued {
            self.audit.emit(
                Event::new(Kind::ContactChangeRequested)
                    .identity(id)
                    .field("channel", channel.as_str()),
            );
            match channel {
                Channel::Email => out.email = Some(dest),
                Channel::Mobile => out.mobile = Some(dest),
            }
        }
        tracing::info!(
            email = out.email.as_deref().map(mask_email).unwrap_or_default(),
            mobile = out.mobile.is_some(),
            "contact change pending verification"
        );
        Ok(out)
    }

    // --- TOTP --------------------------------------------------------------

    /// A new pending secret. Needs a recent second factor once the user has
    /// any factor.
    pub async fn generate_totp(&self, id: &Identity) -> Result<NewTotp, Error> {
        self.method_enabled(Factor::Totp)?;
        let p = self.profile(id).await?;
        self.require_recent_factor(id, &p).await?;
        if self.profiles.get_totp(id.sub()).await?.is_some() {
            return Err(Error::TotpAlreadyEnabled);
        }
        let secret = TotpSecret::generate(Params::from_config(&self.s.totp));
        let otpauth_uri = secret.otpauth_uri(&self.s.totp.issuer, &account_name(&p, id));
        let expires_at = t::put_pending(
            self.eph.as_ref(),
            &self.keys,
            &id.subject_key(),
            id.sub(),
            &secret,
            self.s.security.pending_totp_ttl.get(),
            self.clock.now(),
        )
        .await?;
        tracing::info!("TOTP secret generated, waiting for confirmation");
        Ok(NewTotp {
            secret,
            otpauth_uri,
            expires_at,
        })
    }

    /// `is_new_seed` confirms the pending secret (needs a recent second
    /// factor, like generating it did; enables TOTP and returns the new
    /// recovery codes); otherwise checks the enrolled secret. Either way the
    /// session becomes verified with `totp`. Wrong codes and replayed time
    /// steps count against the budget.
    pub async fn verify_totp(
        &self,
        id: &Identity,
        input: &str,
        is_new_seed: bool,
    ) -> Result<Option<Vec<String>>, Error> {
        self.method_enabled(Factor::Totp)?;
        let p = self.profile(id).await?;
        require_session(id)?;
        let secret = if is_new_seed {
            if self.profiles.get_totp(id.sub()).await?.is_some() {
                return Err(Error::TotpAlreadyEnabled);
            }
            let now = self.clock.now();
            let pending = t::get_pending(
                self.eph.as_ref(),
                &self.keys,
                &id.subject_key(),
                id.sub(),
                now,
            )
            .await?;
            let Some(s) = pending else {
                self.record(Factor::Totp, "no_pending");
                return Err(Error::NoPendingTotp);
            };
            // The enrollment rule again: the session that generated the
            // secret may be another one, or no longer recent. Checked once
            // there is something to confirm (404 first), and before the
            // code is compared.
            self.require_recent_factor(id, &p).await?;
            s
        } else {
            match t::get_enrolled(self.profiles.as_ref(), &self.keys, id.sub()).await? {
                Some(s) => s,
                None => {
                    self.record(Factor::Totp, "no_pending");
                    return Err(Error::TotpNotEnabled);
                }
            }
        };
        self.attempt(id, Factor::Totp, async {
            let now = self.clock.now();
            let Some(m) = secret.verify(input, now, self.s.totp.skew) else {
                return Ok(Compared::Wrong);
            };
            // The replay guard: a step accepted once (also by a parallel
            // request) is never accepted again.
            if !self
                .profiles
                .accept_totp_step(id.sub(), m.step_start)
                .await?
            {
                tracing::info!("TOTP code refused: its time step was already used");
                return Ok(Compared::Wrong);
            }
            Ok(Compared::Right(()))
        })
        .await?;
        let codes = if is_new_seed {
            let codes = self.confirm_totp(id, &secret).await?;
            // Enrolled now, whether or not the session is marked below.
            self.audit.emit(
                Event::new(Kind::TotpEnrolled)
                    .identity(id)
                    .field("method", "totp"),
            );
            Some(codes)
        } else {
            None
        };
        self.mark_verified(id, Factor::Totp).await?;
        if codes.is_some() {
            tracing::info!("TOTP enrolled");
            self.notify(id, recipients(&p, id), Notice::TotpEnrolled)
                .await;
        }
        Ok(codes)
    }

    /// Enables the confirmed pending secret and issues the recovery codes.
    async fn confirm_totp(&self, id: &Identity, secret: &TotpSecret) -> Result<Vec<String>, Error> {
        let rec = t::seal_record(&self.keys, id.sub(), secret, self.clock.now())?;
        // Hashed first: a busy hashing pool (503) leaves nothing enrolled.
        let n = self.s.security.recovery_code_count as usize;
        let prepared = recovery::prepare(&self.hashing, n).await?;
        if !self.profiles.insert_totp(id.sub(), &rec).await? {
            // A parallel confirmation (of another pending secret) won.
            return Err(Error::TotpAlreadyEnabled);
        }
        if let Err(e) = t::clear_pending(self.eph.as_ref(), &id.subject_key()).await {
            // It lapses by itself; confirming it again fails with 409.
            tracing::warn!(error = %e, "could not remove the confirmed pending TOTP secret");
        }
        match prepared.store(self.profiles.as_ref(), id.sub()).await {
            Ok(codes) => {
                self.audit.emit(
                    Event::new(Kind::RecoveryCodesGenerated)
                        .identity(id)
                        .field("count", codes.len()),
                );
                Ok(codes)
            }
            Err(e) => {
                // Without its recovery codes the enrollment is not complete:
                // undo it, so the user can simply try again.
                let _ = self.profiles.delete_totp(id.sub()).await;
                Err(e)
            }
        }
    }

    /// Removes TOTP (recovery codes stay: they are a factor of their own).
    /// Needs a recent second factor.
    pub async fn remove_totp(&self, id: &Identity) -> Result<(), Error> {
        let p = self.profile(id).await?;
        self.require_recent_factor(id, &p).await?;
        if !self.profiles.delete_totp(id.sub()).await? {
            return Err(Error::TotpNotEnabled);
        }
        let _ = t::clear_pending(self.eph.as_ref(), &id.subject_key()).await;
        tracing::info!("TOTP removed");
        self.audit.emit(
            Event::new(Kind::TotpRemoved)
                .identity(id)
                .field("method", "totp"),
        );
        self.notify(id, recipients(&p, id), Notice::TotpRemoved)
            .await;
        Ok(())
    }

    // --- recovery codes ------------------------------------------------------

    /// Spends a recovery code and marks the session verified with
    /// `recovery`; returns how many codes are left.
    pub async fn verify_recovery_code(&self, id: &Identity, input: &str) -> Result<usize, Error> {
        self.method_enabled(Factor::Recovery)?;
        self.profile(id).await?;
        require_session(id)?;
        let remaining = self
            .attempt(id, Factor::Recovery, async {
                // A wrong code and one a parallel request spent first look
                // the same: both count as wrong.
                Ok(
                    match recovery::redeem(self.profiles.as_ref(), &self.hashing, id.sub(), input)
                        .await?
                    {
                        Some(n) => Compared::Right(n),
                        None => Compared::Wrong,
                    },
                )
            })
            .await?;
        self.mark_verified(id, Factor::Recovery).await?;
        tracing::info!(remaining, "recovery code used");
        self.audit.emit(
            Event::new(Kind::RecoveryCodeUsed)
                .identity(id)
                .field("remaining", remaining),
        );
        Ok(remaining)
    }

    /// A new set of recovery codes replacing the old one, shown once. Needs
    /// a recent second factor.
    pub async fn regenerate_recovery_codes(&self, id: &Identity) -> Result<Vec<String>, Error> {
        self.method_enabled(Factor::Recovery)?;
        let p = self.profile(id).await?;
        self.require_recent_factor(id, &p).await?;
        let n = self.s.security.recovery_code_count as usize;
        let codes = recovery::issue(self.profiles.as_ref(), &self.hashing, id.sub(), n).await?;
        tracing::info!("recovery codes regenerated");
        self.audit.emit(
            Event::new(Kind::RecoveryCodesGenerated)
                .identity(id)
                .field("count", codes.len()),
        );
        self.notify(id, recipients(&p, id), Notice::RecoveryCodesRegenerated)
            .await;
        Ok(codes)
    }

    // --- the rules -----------------------------------------------------------

    pub(super) fn method_enabled(&self, m: Factor) -> Result<(), Error> {
        if self.s.security.methods.iter().any(|x| x == m.as_str()) {
            Ok(())
        } else {
            Err(Error::InvalidRequest(format!(
                "`{}` is not an enabled second factor here",
                m.as_str()
            )))
        }
    }

    pub(super) async fn enrolled(&self, subject: &str) -> Result<Enrolled, Error> {
        let totp = self.profiles.get_totp(subject).await?.is_some();
        let recovery_codes = self.profiles.recovery_codes(subject).await?.len() as u32;
        let webauthn = self.profiles.webauthn_credentials(subject).await?.len() as u32;
        Ok(Enrolled {
            totp,
            recovery_codes,
            webauthn,
        })
    }

    /// The second factors this user can use now, among `security.methods`,
    /// in the contract's names: enabled TOTP, verified email, verified
    /// mobile (`sms`), remaining recovery codes, and registered WebAuthn
    /// credentials (`webauthn`, listed first). From the stored profile
    /// and factors only.
    pub(super) fn methods(&self, p: &Profile, e: Enrolled) -> Vec<String> {
        let enabled = |m: &str| self.s.security.methods.iter().any(|x| x == m);
        let mut out = Vec::new();
        // First: the phishing-resistant one, what a frontend should offer
        // before the others.
        if e.webauthn > 0 && enabled("webauthn") {
            out.push("webauthn".to_string());
        }
        if e.totp && enabled("totp") {
            out.push("totp".to_string());
        }
        if email_verified(p) && enabled("email") {
            out.push("email".to_string());
        }
        if mobile_verified(p) && enabled("sms") {
            out.push("sms".to_string());
        }
        if e.recovery_codes > 0 && enabled("recovery") {
            out.push("recovery".to_string());
        }
        out
    }

    /// Publishes the methods hint again after a factor was added or
    /// removed elsewhere (`factor::webauthn`). Best effort, like the hint.
    pub(super) async fn refresh_methods(&self, id: &Identity, p: &Profile) {
        match self.enrolled(id.sub()).await {
            Ok(e) => {
                let methods = self.methods(p, e);
                self.publish_methods(id, &methods).await;
            }
            Err(e) => tracing::debug!(error = %e, "could not refresh the methods hint"),
        }
    }

    /// Leaves the user's available methods where a Check's 403 can list
    /// them without reading the database. Best effort: a stale or missing
    /// hint only changes which methods a denial suggests, never a decision.
    pub(super) async fn publish_methods(&self, id: &Identity, methods: &[String]) {
        const TTL: Duration = Duration::from_secs(30 * 86_400);
        let key = keys::methods_hint(&id.subject_key());
        if let Ok(json) = serde_json::to_string(methods) {
            if let Err(e) = self.eph.set(&key, &json, TTL).await {
                tracing::debug!(error = %e, "could not publish the methods hint");
            }
        }
    }

    /// What the token's session passed, if anything (and still valid).
    pub(super) async fn session(&self, id: &Identity) -> Result<Option<Verified>, Error> {
        match id.session_key() {
            None => Ok(None),
            Some(k) => Ok(self.sessions.get(&id.subject_key(), &k.hex()).await?),
        }
    }

    /// "Needs a recent second factor": once the user has any factor, 403
    /// `second_factor_required` (with `max_age`) unless this session passed
    /// one within `security.sensitive_max_age`. A session verified long ago,
    /// or a stolen access token, cannot bind a new factor or redirect a
    /// contact. A remembered device never counts as recent: it proves the
    /// device, not that the user just passed a factor.
    pub(super) async fn require_recent_factor(
        &self,
        id: &Identity,
        p: &Profile,
    ) -> Result<(), Error> {
        let e = self.enrolled(id.sub()).await?;
        let methods = self.methods(p, e);
        self.publish_methods(id, &methods).await;
        if methods.is_empty() {
            return Ok(());
        }
        let max_age = self.s.security.sensitive_max_age.as_secs();
        let now = self.clock.now();
        match self.session(id).await? {
            Some(v) if v.factor.is_fresh_proof() && now.saturating_sub(v.at) <= max_age as i64 => {
                Ok(())
            }
            _ => Err(Error::SecondFactorRequired {
                methods,
                max_age: Some(max_age),
            }),
        }
    }

    /// Marks the token's Keycloak session (iss, sub, sid) as having passed
    /// `factor` now, for `security.second_factor_ttl`.
    pub(super) async fn mark_verified(
        &self,
        id: &Identity,
        factor: Factor,
    ) -> Result<Verified, Error> {
        let sid = require_sid(id)?;
        let v = Verified {
            factor,
            at: self.clock.now(),
        };
        self.sessions
            .put(
                &SessionIds::new(id.iss(), id.sub(), sid),
                v,
                self.s.security.second_factor_ttl.get(),
            )
            .await?;
        self.audit.emit(
            Event::new(Kind::FactorPassed)
                .identity(id)
                .field("method", factor.as_str()),
        );
        Ok(v)
    }

    fn limits(&self) -> AttemptLimits {
        AttemptLimits {
            max_attempts: self.s.security.max_attempts,
            lockout: self.s.security.lockout.get().max(Duration::from_secs(1)),
        }
    }

    /// 423 once the consecutive-failure cap is reached.
    async fn refuse_if_factor_locked(&self, id: &Identity) -> Result<(), Error> {
        let cap = self.s.security.max_consecutive_failures;
        if self.profiles.failures(id.sub()).await? >= cap {
            return Err(Error::FactorLocked);
        }
        Ok(())
    }

    /// 423 as above, or 429 while locked out, without taking an attempt
    /// (sending a code).
    pub(super) async fn refuse_while_locked(&self, id: &Identity) -> Result<(), Error> {
        self.refuse_if_factor_locked(id).await?;
        if let Some(left) = self.eph.ttl(&keys::lockout(&id.subject_key())).await? {
            return Err(Error::TooManyAttempts {
                retry_after: retry_after(left),
            });
        }
        Ok(())
    }

    /// One code of `method` against the user's budget: 423 at the
    /// consecutive cap; an attempt taken atomically (429 without running
    /// `compare` while locked out); then `compare`, and its outcome
    /// recorded. A wrong code answers 400 `invalid_code` with
    /// `attempts_remaining`, or 429 when it spent the budget (the lockout
    /// starts with it), or 423 when it reached the cap. A right code clears
    /// the counter, the lockout and the series, and the consecutive count.
    pub(super) async fn attempt<T>(
        &self,
        id: &Identity,
        method: Factor,
        compare: impl Future<Output = Result<Compared<T>, Error>>,
    ) -> Result<T, Error> {
        if let Err(e) = self.refuse_if_factor_locked(id).await {
            if matches!(e, Error::FactorLocked) {
                self.record(method, "refused");
                tracing::info!(
                    outcome = "factor_locked",
                    "verification refused before checking the code"
                );
            }
            return Err(e);
        }
        let (n, locked_now) = match self
            .eph
            .take_attempt(&id.subject_key(), self.limits())
            .await?
        {
            Attempt::Locked { left } => {
                self.record(method, "refused");
                tracing::info!(
                    outcome = "locked_out",
                    "verification refused before checking the code"
                );
                return Err(Error::TooManyAttempts {
                    retry_after: retry_after(left),
                });
            }
            Attempt::Granted { n, locked_now } => (n, locked_now),
        };
        match compare.await? {
            Compared::Right(v) => {
                self.record(method, "success");
                if let Err(e) = self.eph.clear_attempts(&id.subject_key()).await {
                    tracing::warn!(error = %e, "could not reset the attempt budget after a success");
                }
                if let Err(e) = self.profiles.clear_failures(id.sub()).await {
                    tracing::warn!(error = %e, "could not reset the failure count after a success");
                }
                Ok(v)
            }
            Compared::Gone(e) => {
                // The code matched: whoever sent it knows it, so the budget
                // protects nothing more; the request that consumed it
                // clears the rest.
                self.record(method, "no_pending");
                if let Err(e) = self.eph.clear_attempts(&id.subject_key()).await {
                    tracing::warn!(error = %e, "could not reset the attempt budget");
                }
                Err(e)
            }
            Compared::Wrong => Err(self.wrong(id, method, n, locked_now).await),
        }
    }

    /// Records a compared wrong code; what to answer.
    async fn wrong(
        &self,
        id: &Identity,
        method: Factor,
        n: u32,
        locked_now: Option<Duration>,
    ) -> Error {
        let cap = self.s.security.max_consecutive_failures;
        let counted = match self.profiles.record_failure(id.sub(), cap).await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        match counted {
            Some(c) if c < cap => {}
            newly => {
                if newly.is_some() {
                    self.metrics.lockouts.inc();
                    tracing::warn!(
                        "consecutive-failure cap reached: second factor locked until `twofa-authz reset-user`"
                    );
                    self.audit.emit(
                        Event::new(Kind::FactorLocked)
                            .identity(id)
                            .failure()
                            .field("method", method.as_str()),
                    );
                }
                self.record(method, "factor_locked");
                return Error::FactorLocked;
            }
        }
        match locked_now {
            Some(d) => {
                self.metrics.lockouts.inc();
                tracing::warn!(
                    lockout_seconds = d.as_secs(),
                    "too many wrong codes: user locked out"
                );
                self.audit.emit(
                    Event::new(Kind::Lockout)
                        .identity(id)
                        .failure()
                        .field("method", method.as_str())
                        .field("lockout_seconds", d.as_secs()),
                );
                self.record(method, "locked_out");
                Error::TooManyAttempts {
                    retry_after: retry_after(d),
                }
            }
            None => {
                self.record(method, "invalid");
                Error::InvalidCode {
                    attempts_remaining: self.s.security.max_attempts.max(1).saturating_sub(n),
                }
            }
        }
    }

    /// `twofa_verifications_total{method, result}`. Results: `success`,
    /// `invalid` (wrong, budget left), `locked_out` (wrong, and it spent the
    /// budget), `factor_locked` (wrong at the consecutive cap), `refused`
    /// (not compared: locked out or at the cap), `no_pending`.
    pub(super) fn record(&self, method: Factor, result: &str) {
        self.metrics
            .verifications
            .with_label_values(&[method.as_str(), result])
            .inc();
    }

    // --- codes and notices ---------------------------------------------------

    async fn issue(&self, id: &Identity, b: &Binding<'_>) -> Result<Issued, Error> {
        let sec = &self.s.security;
        otp::issue(
            self.eph.as_ref(),
            &self.keys,
            &id.subject_key(),
            b,
            sec.otp_length as usize,
            sec.otp_ttl.get(),
            sec.otp_resend_interval.get(),
        )
        .await
    }

    async fn revoke_all(&self, issued: &[(Channel, String, Issued)]) {
        for (_, _, i) in issued {
            otp::revoke(self.eph.as_ref(), i).await;
        }
    }

    async fn deliver(
        &self,
        id: &Identity,
        channel: Channel,
        dest: &str,
        issued: &Issued,
        purpose: Purpose,
    ) -> Result<(), Error> {
        let ttl = self.s.security.otp_ttl.get();
        // In the reader's language: the token's `locale` claim.
        let locale = id.locale();
        match channel {
            Channel::Email => {
                self.delivery
                    .send_email_code(dest, &issued.code, ttl, purpose, locale)
                    .await
            }
            Channel::Mobile => {
                self.delivery
                    .send_sms_code(dest, &issued.code, ttl, locale)
                    .await
            }
        }
    }

    /// The pending contact becomes the verified one: first in Keycloak
    /// (when `keycloak.sync_verified_contacts` and the admin client are on),
    /// then in the profile, so a Keycloak failure leaves our side unchanged.
    /// The old verified contact is told.
    async fn apply_contact(&self, id: &Identity, channel: Channel, new: &str) -> Result<(), Error> {
        if self.s.sync_verified_contacts {
            if let Some(d) = &self.directory {
                match channel {
                    Channel::Email => d.set_verified_email(id.sub(), new).await?,
                    Channel::Mobile => d.set_verified_mobile(id.sub(), new).await?,
                }
            }
        }
        // Read again: the profile may have changed (another channel's PATCH)
        // while the code was checked and Keycloak was written.
        let mut p = self.profile(id).await?;
        let mut notice_to = Recipients {
            locale: id.locale().map(String::from),
            ..Recipients::default()
        };
        let notice = match channel {
            Channel::Email => {
                notice_to.email =
                    verified_contact(&p, channel).filter(|o| !o.eq_ignore_ascii_case(new));
                p.email = Some(new.to_string());
                p.email_verified = true;
                if p.pending_email.as_deref() == Some(new) {
                    p.pending_email = None;
                }
                Notice::EmailChanged {
                    new: new.to_string(),
                }
            }
            Channel::Mobile => {
                notice_to.mobile = verified_contact(&p, channel).filter(|o| o != new);
                p.mobile = Some(new.to_string());
                p.mobile_verified = true;
                if p.pending_mobile.as_deref() == Some(new) {
                    p.pending_mobile = None;
                }
                Notice::MobileChanged {
                    new: new.to_string(),
                }
            }
        };
        p.updated_at = self.clock.now();
        if !self.profiles.update_profile(&p).await? {
            return Err(Error::ProfileNotFound);
        }
        self.notify(id, notice_to, notice).await;
        Ok(())
    }

    /// Sends a change notice, at most one per user, channel and kind of
    /// notice per `security.otp_resend_interval`, so that no route can pump
    /// SMS or email. Per kind, so that one notice never suppresses another
    /// kind (a "recovery codes regenerated" cannot hide an "email changed").
    /// A suppressed notice is logged (without the contact); the change it
    /// reports stands either way.
    pub(super) async fn notify(&self, id: &Identity, to: Recipients, notice: Notice) {
        if !self.s.security.notify_changes {
            return;
        }
        let interval = self.s.security.otp_resend_interval.get();
        let kind = notice.kind();
        let mut allowed = Recipients {
            locale: to.locale.clone(),
            ..Recipients::default()
        };
        for (channel, contact, slot) in [
            ("email", to.email, &mut allowed.email),
            ("mobile", to.mobile, &mut allowed.mobile),
        ] {
            let Some(contact) = contact else { continue };
            if interval.is_zero() {
                *slot = Some(contact);
                continue;
            }
            let key = keys::notice(&id.subject_key(), channel, kind);
            match self.eph.set_nx(&key, "1", interval).await {
                Ok(true) => *slot = Some(contact),
                Ok(false) => tracing::info!(
                    notice = kind,
                    channel,
                    "change notice suppressed: one of this kind went to this channel within security.otp_resend_interval"
                ),
                // The change has happened; telling the user matters more
                // than the limit, which an unavailable store cannot keep.
                Err(e) => {
                    tracing::warn!(notice = kind, channel, error = %e, "notice rate limit unavailable; sending");
                    *slot = Some(contact);
                }
            }
        }
        self.delivery.notify(allowed, notice);
    }
}

/// The token's `sid`, which every session-bound step needs. A token without
/// `sid` names no session: 422, since nothing could ever be verified for it.
fn require_sid(id: &Identity) -> Result<&str, Error> {
    id.sid().ok_or_else(|| {
        Error::InvalidRequest(
            "the token carries no session (`sid`): a second factor is passed per Keycloak session"
                .into(),
        )
    })
}

/// The token's session hash (present whenever `sid` is).
pub(super) fn require_session(id: &Identity) -> Result<HexKey, Error> {
    require_sid(id)?;
    id.session_key()
        .map(|k| k.hex())
        .ok_or_else(|| Error::Internal("a token with `sid` has no session key".into()))
}

/// The account name in the authenticator app: the username, else the
/// email, else the subject.
fn account_name(p: &Profile, id: &Identity) -> String {
    id.username()
        .map(String::from)
        .or_else(|| p.username.clone())
        .or_else(|| id.email().map(String::from))
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| id.sub().to_string())
        .chars()
        .take(128)
        .collect()
}

#[async_trait]
impl Directory for crate::keycloak::AdminClient {
    async fn mobile(&self, subject: &str) -> Result<(Option<String>, bool), Error> {
        let m = crate::keycloak::AdminClient::mobile(self, subject).await?;
        Ok((m.number, m.verified))
    }

    async fn set_verified_email(&self, subject: &str, email: &str) -> Result<(), Error> {
        crate::keycloak::AdminClient::set_verified_email(self, subject, email).await
    }

    async fn set_verified_mobile(&self, subject: &str, mobile: &str) -> Result<(), Error> {
        crate::keycloak::AdminClient::set_verified_mobile(self, subject, mobile).await
    }
}
