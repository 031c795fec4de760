//! Versioned schema migrations of the profile database, one list per backend.
//! A migration is applied once, in a transaction, and recorded in
//! `schema_migrations`; released migrations are never edited, only appended
//! to, so that every database converges on the same schema.
//!
//! Tables (INTERFACE.md section 8: whatever must survive a Redis restart):
//! - `user_profile`: the profile, keyed by the Keycloak `sub`;
//! - `totp_secret`: the enrolled TOTP secret, AEAD ciphertext + key id;
//! - `totp_last_step`: the last accepted TOTP time step. A table of its own
//!   so that deleting or re-enrolling TOTP keeps the replay protection;
//! - `recovery_code`: one row per unused code, a salted hash only. Ids never
//!   repeat (AUTOINCREMENT / identity), so an id read before a regeneration
//!   can never spend a code issued after it;
//! - `factor_failure`: wrong codes in a row, for the hard lockout cap.
//!
//! The factor tables do not reference `user_profile`: `reset-user` and the
//! replay guard must work on a subject whatever state its profile is in.

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const SQLITE: &[Migration] = &[Migration {
    version: 1,
    name: "profiles and factors",
    sql: r#"
CREATE TABLE user_profile (
    sub             TEXT PRIMARY KEY NOT NULL,
    username        TEXT,
    first_name      TEXT,
    last_name       TEXT,
    email           TEXT,
    email_verified  INTEGER NOT NULL DEFAULT 0,
    mobile          TEXT,
    mobile_verified INTEGER NOT NULL DEFAULT 0,
    pending_email   TEXT,
    pending_mobile  TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE TABLE totp_secret (
    sub        TEXT PRIMARY KEY NOT NULL,
    ciphertext BLOB NOT NULL,
    key_id     TEXT NOT NULL,
    enabled_at INTEGER NOT NULL
);
CREATE TABLE totp_last_step (
    sub  TEXT PRIMARY KEY NOT NULL,
    step INTEGER NOT NULL
);
CREATE TABLE recovery_code (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    sub  TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX recovery_code_sub ON recovery_code (sub);
CREATE TABLE factor_failure (
    sub   TEXT PRIMARY KEY NOT NULL,
    count INTEGER NOT NULL
);
"#,
}];

pub const POSTGRES: &[Migration] = &[Migration {
    version: 1,
    name: "profiles and factors",
    sql: r#"
CREATE TABLE user_profile (
    sub             TEXT PRIMARY KEY,
    username        TEXT,
    first_name      TEXT,
    last_name       TEXT,
    email           TEXT,
    email_verified  BOOLEAN NOT NULL DEFAULT FALSE,
    mobile          TEXT,
    mobile_verified BOOLEAN NOT NULL DEFAULT FALSE,
    pending_email   TEXT,
    pending_mobile  TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE TABLE totp_secret (
    sub        TEXT PRIMARY KEY,
    ciphertext BYTEA NOT NULL,
    key_id     TEXT NOT NULL,
    enabled_at BIGINT NOT NULL
);
CREATE TABLE totp_last_step (
    sub  TEXT PRIMARY KEY,
    step BIGINT NOT NULL
);
CREATE TABLE recovery_code (
    id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sub  TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX recovery_code_sub ON recovery_code (sub);
CREATE TABLE factor_failure (
    sub   TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
"#,
}];

/// The schema version this build migrates to.
pub fn latest() -> i64 {
    SQLITE.iter().map(|m| m.version).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_backends_agree() {
        for list in [SQLITE, POSTGRES] {
            for w in list.windows(2) {
                assert!(w[0].version < w[1].version);
            }
        }
        let v = |l: &[Migration]| l.iter().map(|m| m.version).collect::<Vec<_>>();
        assert_eq!(v(SQLITE), v(POSTGRES));
    }
}
