//! Versioned schema migrations of the profile database, one list per backend.
//! A migration is applied once, in a transaction, and recorded in
//! `schema_migrations` with the SHA-256 of its SQL; released migrations are
//! never edited, only appended to, so that every database converges on the
//! same schema.
//!
//! [`plan`] compares what a database recorded with what this binary knows.
//! A database that recorded a migration this binary does not know (a newer
//! release migrated it), or a checksum that differs from this binary's (an
//! edited migration, another build's database), is refused with the versions
//! named: running on a schema the code was not written for would corrupt
//! data quietly. Rows recorded before checksums existed get theirs on the
//! next `migrate`, so upgrades keep working.
//!
//! Tables (INTERFACE.md section 8: whatever must survive a Redis restart):
//! - `user_profile`: the profile, keyed by the Keycloak `sub`;
//! - `totp_secret`: the enrolled TOTP secret, AEAD ciphertext + key id;
//! - `totp_last_step`: the last accepted TOTP time step. A table of its own
//!   so that deleting or re-enrolling TOTP keeps the replay protection;
//! - `recovery_code`: one row per unused code, a salted hash only. Ids never
//!   repeat (AUTOINCREMENT / identity), so an id read before a regeneration
//!   can never spend a code issued after it;
//! - `factor_failure`: wrong codes in a row, for the hard lockout cap;
//! - `webauthn_credential` (version 2): registered passkeys, keyed by their
//!   credential id (unique across users), with the signature counter and
//!   backup flags that each authentication is checked against;
//! - `remembered_device` (version 3): a remembered device's token as its
//!   SHA-256 only, and the hash of the token it replaced (one generation
//!   back, to recognise a stolen copy). Both hashes are unique, so a lookup
//!   by either finds at most one device.
//!
//! The factor tables do not reference `user_profile`: `reset-user` and the
//! replay guard must work on a subject whatever state its profile is in.

#[derive(Debug)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const SQLITE: &[Migration] = &[
    Migration {
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
    },
    Migration {
        version: 2,
        name: "webauthn credentials",
        sql: r#"
CREATE TABLE webauthn_credential (
    id              TEXT PRIMARY KEY NOT NULL,
    sub             TEXT NOT NULL,
    name            TEXT NOT NULL,
    passkey         TEXT NOT NULL,
    sign_count      INTEGER NOT NULL,
    backup_eligible INTEGER NOT NULL,
    backup_state    INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    last_used_at    INTEGER
);
CREATE INDEX webauthn_credential_sub ON webauthn_credential (sub);
"#,
    },
    Migration {
        version: 3,
        name: "remembered devices",
        sql: r#"
CREATE TABLE remembered_device (
    id            TEXT PRIMARY KEY NOT NULL,
    sub           TEXT NOT NULL,
    name          TEXT,
    token_hash    TEXT NOT NULL UNIQUE,
    previous_hash TEXT UNIQUE,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    expires_at    INTEGER NOT NULL
);
CREATE INDEX remembered_device_sub ON remembered_device (sub);
"#,
    },
];

pub const POSTGRES: &[Migration] = &[
    Migration {
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
    },
    Migration {
        version: 2,
        name: "webauthn credentials",
        sql: r#"
CREATE TABLE webauthn_credential (
    id              TEXT PRIMARY KEY,
    sub             TEXT NOT NULL,
    name            TEXT NOT NULL,
    passkey         TEXT NOT NULL,
    sign_count      BIGINT NOT NULL,
    backup_eligible BOOLEAN NOT NULL,
    backup_state    BOOLEAN NOT NULL,
    created_at      BIGINT NOT NULL,
    last_used_at    BIGINT
);
CREATE INDEX webauthn_credential_sub ON webauthn_credential (sub);
"#,
    },
    Migration {
        version: 3,
        name: "remembered devices",
        sql: r#"
CREATE TABLE remembered_device (
    id            TEXT PRIMARY KEY,
    sub           TEXT NOT NULL,
    name          TEXT,
    token_hash    TEXT NOT NULL UNIQUE,
    previous_hash TEXT UNIQUE,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX remembered_device_sub ON remembered_device (sub);
"#,
    },
];

/// The schema version this build migrates to.
pub fn latest() -> i64 {
    SQLITE.iter().map(|m| m.version).max().unwrap_or(0)
}

impl Migration {
    /// SHA-256 of the SQL text, lowercase hex: what `schema_migrations`
    /// records beside the version.
    pub fn checksum(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(self.sql.as_bytes()))
    }
}

/// One row of `schema_migrations`. `checksum` is None for rows recorded by a
/// release that did not record checksums yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: i64,
    pub name: String,
    pub checksum: Option<String>,
}

/// What a database needs to match this binary.
#[derive(Debug)]
pub struct Plan<'a> {
    /// Known migrations the database has not recorded yet, in order.
    pub pending: Vec<&'a Migration>,
    /// Recorded migrations without a checksum: record this binary's.
    pub backfill: Vec<&'a Migration>,
}

impl Plan<'_> {
    /// The database's schema version (its highest recorded migration).
    pub fn current(&self, applied: &[Applied]) -> i64 {
        applied.iter().map(|a| a.version).max().unwrap_or(0)
    }

    /// Why a database with pending migrations cannot be used yet, when
    /// `storage.auto_migrate = false` left them to `twofa-authz migrate`.
    pub fn pending_message(&self, applied: &[Applied], known: &[Migration]) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let versions: Vec<String> = self.pending.iter().map(|m| m.version.to_string()).collect();
        Some(format!(
            "the database is at schema version {}, this binary needs version {} (pending: {}); run `twofa-authz migrate`",
            self.current(applied),
            known.iter().map(|m| m.version).max().unwrap_or(0),
            versions.join(", ")
        ))
    }
}

/// Compares the recorded migrations with the known ones. Err names the
/// versions at fault and is a reason to refuse the database.
pub fn plan<'a>(known: &'a [Migration], applied: &[Applied]) -> Result<Plan<'a>, String> {
    let latest = known.iter().map(|m| m.version).max().unwrap_or(0);
    let mut unknown: Vec<&Applied> = applied
        .iter()
        .filter(|a| !known.iter().any(|m| m.version == a.version))
        .collect();
    unknown.sort_by_key(|a| a.version);
    if !unknown.is_empty() {
        let names: Vec<String> = unknown
            .iter()
            .map(|a| format!("{} ({:?})", a.version, a.name))
            .collect();
        let newer = unknown.iter().all(|a| a.version > latest);
        return Err(format!(
            "the database recorded migration(s) {} that this binary (schema version {latest}) does not know{}",
            names.join(", "),
            if newer {
                ": a newer twofa-authz migrated it; run that release or a newer one"
            } else {
                ""
            }
        ));
    }
    let mut backfill = Vec::new();
    for a in applied {
        let Some(m) = known.iter().find(|m| m.version == a.version) else {
            continue;
        };
        match &a.checksum {
            None => backfill.push(m),
            Some(c) if *c == m.checksum() => {}
            Some(c) => {
                return Err(format!(
                    "migration {} ({:?}) recorded checksum {} but this binary's is {}: the migration was changed after it was applied, or the database belongs to another build",
                    m.version,
                    m.name,
                    short(c),
                    short(&m.checksum())
                ))
            }
        }
    }
    let current = applied.iter().map(|a| a.version).max().unwrap_or(0);
    let pending: Vec<&Migration> = known
        .iter()
        .filter(|m| !applied.iter().any(|a| a.version == m.version))
        .collect();
    if let Some(gap) = pending.iter().find(|m| m.version < current) {
        return Err(format!(
            "the database recorded migration {current} but not migration {} ({:?}): its history does not match this binary's",
            gap.version, gap.name
        ));
    }
    Ok(Plan { pending, backfill })
}

fn short(checksum: &str) -> String {
    checksum.chars().take(12).collect()
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

    /// Released migrations are never edited: databases recorded these
    /// checksums and refuse a binary whose SQL differs.
    #[test]
    fn released_migrations_keep_their_checksums() {
        assert_eq!(
            SQLITE[0].checksum(),
            "056409dbf550ab2c2ee9bff8ac2393811453664537f052cb51f947e137d501c7",
            "SQLite migration 1 was edited"
        );
        assert_eq!(
            POSTGRES[0].checksum(),
            "973fb96e47146b0a4f97051ffb5dfa3d10face930daba988992d2180bc304637",
            "PostgreSQL migration 1 was edited"
        );
        let of = |l: &'static [Migration], v: i64| {
            l.iter()
                .find(|m| m.version == v)
                .map(Migration::checksum)
                .unwrap_or_default()
        };
        assert_eq!(
            of(SQLITE, 2),
            "0764046dac2542863bf2083a5aceb6d9a56528314c55322c8c4e5be616ae9f34",
            "SQLite migration 2 was edited"
        );
        assert_eq!(
            of(POSTGRES, 2),
            "fe3e2901a34f6c60f8f21f9f918d9786349b727d2b8a778df93ab2886241caf4",
            "PostgreSQL migration 2 was edited"
        );
        assert_eq!(
            of(SQLITE, 3),
            "f4d73f83cddd36f63292d25b54e781bb6aca64c8a7d7c95173eaad3ac50e201d",
            "SQLite migration 3 was edited"
        );
        assert_eq!(
            of(POSTGRES, 3),
            "72f9f657829e1a12bdd96eca76482cbc67d27ba5c3f186d5c3433d975c8d15e9",
            "PostgreSQL migration 3 was edited"
        );
    }

    const KNOWN: &[Migration] = &[
        Migration {
            version: 1,
            name: "one",
            sql: "CREATE TABLE a (x INT);",
        },
        Migration {
            version: 2,
            name: "two",
            sql: "CREATE TABLE b (x INT);",
        },
    ];

    fn row(version: i64, checksum: Option<String>) -> Applied {
        Applied {
            version,
            name: format!("m{version}"),
            checksum,
        }
    }

    #[test]
    fn a_fresh_or_older_database_gets_what_is_pending() {
        let p = plan(KNOWN, &[]).unwrap();
        assert_eq!(p.pending.len(), 2);
        let applied = [row(1, Some(KNOWN[0].checksum()))];
        let p = plan(KNOWN, &applied).unwrap();
        assert_eq!(p.pending.iter().map(|m| m.version).collect::<Vec<_>>(), [2]);
        assert!(p.backfill.is_empty());
        let msg = p.pending_message(&applied, KNOWN).unwrap();
        assert!(
            msg.contains("schema version 1") && msg.contains("needs version 2"),
            "{msg}"
        );
        let all = [
            row(1, Some(KNOWN[0].checksum())),
            row(2, Some(KNOWN[1].checksum())),
        ];
        let p = plan(KNOWN, &all).unwrap();
        assert!(p.pending.is_empty() && p.pending_message(&all, KNOWN).is_none());
    }

    #[test]
    fn rows_without_a_checksum_are_backfilled() {
        let p = plan(KNOWN, &[row(1, None)]).unwrap();
        assert_eq!(
            p.backfill.iter().map(|m| m.version).collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(p.pending.iter().map(|m| m.version).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_newer_database_is_refused_naming_the_versions() {
        let e = plan(
            KNOWN,
            &[
                row(1, Some(KNOWN[0].checksum())),
                row(2, Some(KNOWN[1].checksum())),
                row(3, Some("ab".into())),
            ],
        )
        .unwrap_err();
        assert!(
            e.contains("migration(s) 3") && e.contains("schema version 2"),
            "{e}"
        );
        assert!(e.contains("newer twofa-authz"), "{e}");
    }

    #[test]
    fn a_changed_checksum_is_refused_naming_the_version() {
        let e = plan(KNOWN, &[row(1, Some("0".repeat(64)))]).unwrap_err();
        assert!(
            e.contains("migration 1") && e.contains("000000000000"),
            "{e}"
        );
        assert!(e.contains(&KNOWN[0].checksum()[..12]), "{e}");
    }

    #[test]
    fn a_history_with_a_hole_is_refused() {
        let known = [
            Migration {
                version: 1,
                name: "one",
                sql: "1",
            },
            Migration {
                version: 2,
                name: "two",
                sql: "2",
            },
            Migration {
                version: 3,
                name: "three",
                sql: "3",
            },
        ];
        let e = plan(
            &known,
            &[
                row(1, Some(known[0].checksum())),
                row(3, Some(known[2].checksum())),
            ],
        )
        .unwrap_err();
        assert!(e.contains("migration 3 but not migration 2"), "{e}");
    }
}
