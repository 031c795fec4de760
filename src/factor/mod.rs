//! Second factors: one-time codes by email and SMS (`otp`), TOTP (`totp`),
//! recovery codes (`recovery`), the attempt budget shared by all of them
//! (`lockout`), and the steps every verification route shares (below).

pub mod hashing;
pub mod lockout;
pub mod otp;
pub mod qr;
pub mod recovery;
pub mod totp;

use crate::app::AppState;
use crate::error::Error;
use crate::store::{Factor, Profile, SessionIds, Verified};
use crate::token::Identity;

/// The part of short-lived keys that names a user: a hash of (iss, sub), so
/// keys stay short and free of whatever characters an issuer puts in `sub`.
pub fn user_key(id: &Identity) -> String {
    crate::token::subject_hash(id.iss(), id.sub())
}

/// The attempt budget of this deployment.
pub fn budget(state: &AppState) -> lockout::Budget<'_> {
    let s = &state.cfg.security;
    lockout::Budget {
        eph: state.ephemeral.as_ref(),
        profiles: state.profiles.as_ref(),
        max_attempts: s.max_attempts,
        lockout: s.lockout.get(),
        max_consecutive_failures: s.max_consecutive_failures,
    }
}

/// First step of every verification route, before any code is looked at:
/// 423 `factor_locked` once the consecutive-failure cap is reached, 429
/// `too_many_attempts` (with the time left) while locked out.
pub async fn guard(state: &AppState, id: &Identity) -> Result<(), Error> {
    let r = budget(state).check(&user_key(id), id.sub()).await;
    if let Err(e @ (Error::FactorLocked | Error::TooManyAttempts { .. })) = &r {
        let label = if matches!(e, Error::FactorLocked) {
            "factor_locked"
        } else {
            "locked_out"
        };
        tracing::info!(
            outcome = label,
            "verification refused before checking the code"
        );
    }
    r
}

/// A wrong code of any factor (`method` for metrics): counts it against the
/// user's one budget and returns what to answer: 400 `invalid_code` with
/// `attempts_remaining`, 429 when this failure starts a lockout, 423 when
/// it reaches the consecutive-failure cap.
pub async fn wrong_code(state: &AppState, id: &Identity, method: Factor) -> Error {
    let failure = match budget(state).fail(&user_key(id), id.sub()).await {
        Ok(f) => f,
        Err(e) => return e,
    };
    let result = match failure {
        lockout::Failure::Remaining(_) => "invalid",
        lockout::Failure::LockedOut(d) => {
            state.metrics.lockouts.inc();
            tracing::warn!(
                lockout_seconds = d.as_secs(),
                "too many wrong codes: user locked out"
            );
            "locked_out"
        }
        lockout::Failure::StillLocked(_) => "locked_out",
        lockout::Failure::FactorLocked { newly } => {
            if newly {
                state.metrics.lockouts.inc();
                tracing::warn!(
                    "consecutive-failure cap reached: second factor locked until `twofa-authz reset-user`"
                );
            }
            "factor_locked"
        }
    };
    record_verification(state, method, result);
    failure.into_error()
}

/// A right code of any factor: the budget and the consecutive-failure
/// count start over.
pub async fn right_code(state: &AppState, id: &Identity, method: Factor) -> Result<(), Error> {
    record_verification(state, method, "success");
    budget(state).succeed(&user_key(id), id.sub()).await
}

/// `twofa_verifications_total{method, result}`. Results used: `success`,
/// `invalid`, `locked_out`, `factor_locked`, `no_pending`, `replay`.
pub fn record_verification(state: &AppState, method: Factor, result: &str) {
    state
        .metrics
        .verifications
        .with_label_values(&[method.as_str(), result])
        .inc();
}

/// Marks the token's Keycloak session (iss, sub, sid) as having passed
/// `factor` now, for `security.second_factor_ttl`. A token without `sid`
/// names no session: 422, since nothing could ever be verified for it.
pub async fn mark_session_verified(
    state: &AppState,
    id: &Identity,
    factor: Factor,
) -> Result<Verified, Error> {
    let sid = require_sid(id)?;
    let v = Verified {
        factor,
        at: state.clock.now(),
    };
    state
        .sessions
        .put(
            &SessionIds::new(id.iss(), id.sub(), sid),
            v,
            state.cfg.security.second_factor_ttl.get(),
        )
        .await?;
    Ok(v)
}

/// The token's `sid`, which every session-bound step needs.
pub fn require_sid(id: &Identity) -> Result<&str, Error> {
    id.sid().ok_or_else(|| {
        Error::InvalidRequest(
            "the token carries no session (`sid`): a second factor is passed per Keycloak session"
                .into(),
        )
    })
}

/// What the token's session passed, if anything (and still valid).
pub async fn session_verified(state: &AppState, id: &Identity) -> Result<Option<Verified>, Error> {
    match id.session_key() {
        None => Ok(None),
        Some(k) => Ok(state.sessions.get(&k.hex()).await?),
    }
}

/// Whether the profile's email is verified, counting a Keycloak-verified
/// address: the token says `email_verified` for the same address.
pub fn email_verified(p: &Profile, id: &Identity) -> bool {
    let Some(email) = p.email.as_deref() else {
        return false;
    };
    p.email_verified
        || (id.email_verified() && id.email().is_some_and(|e| e.eq_ignore_ascii_case(email)))
}

/// The factor-related rows of the profile store.
#[derive(Debug, Clone, Copy, Default)]
pub struct Enrolled {
    pub totp: bool,
    pub recovery_codes: u32,
}

pub async fn enrolled(state: &AppState, subject: &str) -> Result<Enrolled, Error> {
    let totp = state.profiles.get_totp(subject).await?.is_some();
    let recovery_codes = state.profiles.recovery_codes(subject).await?.len() as u32;
    Ok(Enrolled {
        totp,
        recovery_codes,
    })
}

/// The second factors this user can use now, among `security.methods`, in
/// the contract's names: enabled TOTP, verified email, verified mobile
/// (`sms`), remaining recovery codes.
pub fn available_methods(state: &AppState, id: &Identity, p: &Profile, e: Enrolled) -> Vec<String> {
    let enabled = |m: &str| state.cfg.security.methods.iter().any(|x| x == m);
    let mut out = Vec::new();
    if e.totp && enabled("totp") {
        out.push("totp".to_string());
    }
    if email_verified(p, id) && enabled("email") {
        out.push("email".to_string());
    }
    if p.mobile_verified && p.mobile.is_some() && enabled("sms") {
        out.push("sms".to_string());
    }
    if e.recovery_codes > 0 && enabled("recovery") {
        out.push("recovery".to_string());
    }
    out
}

/// Leaves the user's available methods where a Check's 403 can list them
/// without reading the database. Best effort: a stale or missing hint only
/// changes which methods a denial suggests, never a decision.
pub async fn publish_methods(state: &AppState, id: &Identity, methods: &[String]) {
    let key = crate::authz::methods_hint_key(&user_key(id));
    let ttl = std::time::Duration::from_secs(30 * 86_400);
    if let Ok(json) = serde_json::to_string(methods) {
        if let Err(e) = state.ephemeral.set(&key, &json, ttl).await {
            tracing::debug!(error = %e, "could not publish the methods hint");
        }
    }
}

/// "Needs a verified session" (INTERFACE.md section 5): once the user has
/// any second factor available, the call is refused with 403
/// `second_factor_required` unless the token's session passed one. Every
/// call that adds, changes or removes a factor or a contact goes through
/// here, so that binding a new factor is never a way around an existing one.
pub async fn require_verified_session(
    state: &AppState,
    id: &Identity,
    p: &Profile,
) -> Result<(), Error> {
    let e = enrolled(state, id.sub()).await?;
    let methods = available_methods(state, id, p, e);
    publish_methods(state, id, &methods).await;
    if methods.is_empty() {
        return Ok(());
    }
    if session_verified(state, id).await?.is_some() {
        return Ok(());
    }
    Err(Error::SecondFactorRequired { methods })
}
