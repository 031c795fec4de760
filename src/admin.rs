//! Administrator commands: `migrate` and `reset-user`.

use crate::config::Config;
use crate::store;
use crate::token::subject_hash;

pub async fn migrate(_cfg: Config, _reencrypt: bool) -> i32 {
    // The profile database arrives with the /user API; until then there is
    // nothing to migrate.
    println!("no migrations to apply");
    0
}

/// Removes the user's verified sessions (and, once they exist, factors,
/// recovery codes, lockout) so that the user can enroll again.
pub async fn reset_user(cfg: Config, sub: &str) -> i32 {
    let Some(issuer) = cfg.keycloak.effective_issuer() else {
        eprintln!(
            "twofa-authz: configuration key `keycloak.url`: required to name the user's issuer"
        );
        return crate::cli::EXIT_CONFIG;
    };
    let sessions = match store::session_store(&cfg.storage, crate::clock::system()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("twofa-authz: {e}");
            return crate::cli::EXIT_RUNTIME;
        }
    };
    match sessions.remove_subject(&subject_hash(&issuer, sub)).await {
        Ok(n) => {
            println!("reset {sub}: removed {n} verified session(s)");
            0
        }
        Err(e) => {
            eprintln!("twofa-authz: reset-user failed: {e}");
            crate::cli::EXIT_RUNTIME
        }
    }
}
