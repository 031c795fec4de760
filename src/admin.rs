//! Administrator commands: `migrate` and `reset-user`.

use crate::audit::{Audit, Event, Kind};
use crate::config::Config;
use crate::store;
use crate::token::subject_hash;

/// `twofa-authz migrate [--reencrypt]`: applies pending database migrations;
/// with `--reencrypt`, then rewrites stored secrets under the first key.
pub async fn migrate(cfg: Config, reencrypt: bool) -> i32 {
    let profiles = match store::profile_store(&cfg.storage) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("twofa-authz: configuration key `storage.database_url`: {e}");
            return crate::cli::EXIT_CONFIG;
        }
    };
    match profiles.migrate().await {
        Ok(()) => {}
        Err(store::StoreError::Incompatible(why)) => {
            eprintln!("twofa-authz: refusing to migrate: {why}");
            return crate::cli::EXIT_RUNTIME;
        }
        Err(e) => {
            eprintln!("twofa-authz: migration failed: {e}");
            return crate::cli::EXIT_RUNTIME;
        }
    }
    println!(
        "database {} is at schema version {}",
        cfg.storage.database_url.redacted(),
        store::migrations::latest()
    );
    if reencrypt {
        return reencrypt_secrets(&cfg).await;
    }
    0
}

/// `migrate --reencrypt`: rewrites every stored secret (the enrolled TOTP
/// secrets) that is not sealed under the first key of
/// `security.encryption_keys`, and says how many. Run it after putting a
/// new key first; once it reports no failures, the older keys can be
/// removed from the configuration.
pub async fn reencrypt_secrets(cfg: &Config) -> i32 {
    let ring = match crate::crypto::KeyRing::from_config(&cfg.security.encryption_keys) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("twofa-authz: configuration key `security.encryption_keys`: {e}");
            return crate::cli::EXIT_CONFIG;
        }
    };
    let profiles = match store::profile_store(&cfg.storage) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("twofa-authz: {e}");
            return crate::cli::EXIT_CONFIG;
        }
    };
    match crate::factor::totp::reencrypt_all(profiles.as_ref(), &ring).await {
        Ok(r) => {
            println!(
                "re-encrypted {} TOTP secret(s) under key `{}`; {} already under it; {} changed meanwhile (left as they are); {} could not be decrypted",
                r.rewritten,
                ring.current_key_id(),
                r.current,
                r.skipped,
                r.failed
            );
            if r.failed > 0 {
                eprintln!(
                    "twofa-authz: {} TOTP secret(s) are sealed under a key that is not configured; keep that key in security.encryption_keys or reset those users",
                    r.failed
                );
                crate::cli::EXIT_RUNTIME
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("twofa-authz: re-encryption failed: {e}");
            crate::cli::EXIT_RUNTIME
        }
    }
}

/// `twofa-authz reset-user SUB`: removes the user's TOTP, recovery codes,
/// remembered devices, consecutive-failure count, lockout and verified
/// sessions, so that the
/// user can enroll again; prints what it removed. The profile and its
/// contacts stay, and so does the last accepted TOTP step (replay guard).
pub async fn reset_user(cfg: Config, sub: &str) -> i32 {
    let Some(issuer) = cfg.keycloak.effective_issuer() else {
        eprintln!(
            "twofa-authz: configuration key `keycloak.url`: required to name the user's issuer"
        );
        return crate::cli::EXIT_CONFIG;
    };
    let clock = crate::clock::system();
    let stores = store::session_store(&cfg.storage, clock.clone()).and_then(|s| {
        Ok((
            s,
            store::ephemeral_store(&cfg.storage, clock.clone())?,
            store::profile_store(&cfg.storage)?,
        ))
    });
    let (sessions, eph, profiles) = match stores {
        Ok(s) => s,
        Err(e) => {
            eprintln!("twofa-authz: {e}");
            return crate::cli::EXIT_CONFIG;
        }
    };
    let subject = subject_hash(&issuer, sub);
    let audit = match admin_audit(&cfg, clock.clone()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("twofa-authz: {e}");
            return crate::cli::EXIT_RUNTIME;
        }
    };
    audit.start();
    let within = cfg.audit.webhook_timeout.get();
    let event = Event::new(Kind::UserReset).hashes(Some(subject.clone()), None);
    // The event is written whatever happens, and the webhook given its time
    // before the command exits.
    let failed = |why: &'static str| {
        let audit = &audit;
        let event = event.clone();
        async move {
            audit.emit(event.failure().field("reason", why));
            audit.close(within).await;
            crate::cli::EXIT_RUNTIME
        }
    };
    let report = match profiles.reset_user(sub).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("twofa-authz: reset-user failed on the database: {e}");
            return failed("database_unavailable").await;
        }
    };
    let lockout = match eph.clear_attempts(&subject).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("twofa-authz: reset-user failed on the session store: {e}");
            return failed("session_store_unavailable").await;
        }
    };
    let n = match sessions.remove_subject(&subject).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("twofa-authz: reset-user failed on the session store: {e}");
            return failed("session_store_unavailable").await;
        }
    };
    // Derived, short-lived state of the old enrollment: an unconfirmed TOTP
    // secret and the methods hint a Check's 403 lists.
    let pending = eph
        .delete(&crate::store::keys::pending_totp(&subject))
        .await
        .unwrap_or(false);
    let _ = eph
        .delete(&crate::store::keys::methods_hint(&subject))
        .await;
    if pending {
        println!("reset {sub}: removed a pending (unconfirmed) TOTP secret");
    }
    println!(
        "reset {sub}: TOTP {}, {} recovery code(s) removed, {} remembered device(s) revoked, failure count {}, lockout {}, removed {n} verified session(s)",
        if report.totp { "removed" } else { "not enrolled" },
        report.recovery_codes,
        report.remembered_devices,
        if report.failures_cleared { "cleared" } else { "was zero" },
        if lockout { "cleared" } else { "none" },
    );
    if report.webauthn_credentials > 0 {
        println!(
            "reset {sub}: {} WebAuthn credential(s) removed",
            report.webauthn_credentials
        );
    }
    if cfg.storage.redis_url.expose() == "memory://" {
        println!(
            "note: storage.redis_url is memory://, so lockouts and sessions live inside the running \
             server and are not visible here; restart it to clear them"
        );
    }
    audit.emit(
        event
            .field("totp_removed", report.totp)
            .field("recovery_codes_removed", report.recovery_codes)
            .field("webauthn_credentials_removed", report.webauthn_credentials)
            .field("remembered_devices_removed", report.remembered_devices)
            .field("sessions_removed", n),
    );
    audit.close(within).await;
    0
}

/// The audit port of an administrator command: the same log line and
/// webhook as the server's, without request metadata.
fn admin_audit(cfg: &Config, clock: crate::clock::SharedClock) -> Result<Audit, String> {
    let metrics = crate::metrics::Metrics::new().map_err(|e| format!("metrics: {e}"))?;
    let http = reqwest::Client::builder()
        .user_agent(concat!("twofa-authz/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    Ok(Audit::from_config(&cfg.audit, http, clock, &metrics))
}
