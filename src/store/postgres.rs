//! The profile store in PostgreSQL (`storage.database_url = "postgres://…"`),
//! for production and several instances sharing one database.
//!
//! The pool does not connect at start, so the service starts (and reports
//! the database not ready) while PostgreSQL is down, and recovers by itself.
//! Every call is bounded: a dead database turns into a prompt 503.
//! Connections are plain TCP (`NoTls`); use a Unix socket, a loopback
//! sidecar or a network policy to protect the link (see docs/).

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::{NoTls, Row};

use super::migrations::POSTGRES;
use super::{Profile, ProfileStore, ResetReport, StoreError, TotpRecord};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Migrations take a transaction-scoped advisory lock on this key so that
/// instances starting together apply each migration once.
const MIGRATION_LOCK: i64 = 0x7477_6f66_615f_6d67; // "twofa_mg"

type Pool = bb8::Pool<PostgresConnectionManager<NoTls>>;

pub struct PostgresProfileStore {
    pool: Pool,
}

impl PostgresProfileStore {
    pub fn new(url: &str, pool_size: u32) -> Result<Self, String> {
        let mut cfg = tokio_postgres::Config::from_str(url)
            .map_err(|e| format!("storage.database_url: {e}"))?;
        cfg.connect_timeout(CONNECT_TIMEOUT);
        if cfg.get_application_name().is_none() {
            cfg.application_name("twofa-authz");
        }
        let mgr = PostgresConnectionManager::new(cfg, NoTls);
        let pool = bb8::Pool::builder()
            .max_size(pool_size)
            .connection_timeout(CONNECT_TIMEOUT)
            .retry_connection(false)
            .build_unchecked(mgr);
        Ok(Self { pool })
    }

    /// Runs `f` on a pooled connection, bounded by the operation timeout.
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(&'c mut tokio_postgres::Client) -> BoxFut<'c, T>,
    {
        let fut = async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| StoreError::Unavailable(format!("postgres: {e}")))?;
            f(&mut conn).await.map_err(map_err)
        };
        match tokio::time::timeout(OP_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable("postgres: timed out".into())),
        }
    }
}

type BoxFut<'c, T> =
    std::pin::Pin<Box<dyn Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>>;

fn map_err(e: tokio_postgres::Error) -> StoreError {
    // A type mismatch reading a row is our data, not the server being away.
    if e.to_string().contains("error deserializing column") {
        StoreError::Corrupt(format!("postgres: {e}"))
    } else {
        StoreError::Unavailable(format!("postgres: {e}"))
    }
}

/// A profile's values in `PROFILE_COLUMNS` order ($1 … $12), for both the
/// INSERT and the UPDATE.
fn profile_params(p: &Profile) -> [&(dyn tokio_postgres::types::ToSql + Sync); 12] {
    [
        &p.subject,
        &p.username,
        &p.first_name,
        &p.last_name,
        &p.email,
        &p.email_verified,
        &p.mobile,
        &p.mobile_verified,
        &p.pending_email,
        &p.pending_mobile,
        &p.created_at,
        &p.updated_at,
    ]
}

const PROFILE_COLUMNS: &str = "sub, username, first_name, last_name, email, email_verified, \
     mobile, mobile_verified, pending_email, pending_mobile, created_at, updated_at";

fn profile_row(r: &Row) -> Result<Profile, tokio_postgres::Error> {
    Ok(Profile {
        subject: r.try_get(0)?,
        username: r.try_get(1)?,
        first_name: r.try_get(2)?,
        last_name: r.try_get(3)?,
        email: r.try_get(4)?,
        email_verified: r.try_get(5)?,
        mobile: r.try_get(6)?,
        mobile_verified: r.try_get(7)?,
        pending_email: r.try_get(8)?,
        pending_mobile: r.try_get(9)?,
        created_at: r.try_get(10)?,
        updated_at: r.try_get(11)?,
    })
}

fn totp_row(r: &Row, from: usize) -> Result<TotpRecord, tokio_postgres::Error> {
    Ok(TotpRecord {
        ciphertext: r.try_get(from)?,
        key_id: r.try_get(from + 1)?,
        enabled_at: r.try_get(from + 2)?,
    })
}

fn count_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[async_trait]
impl ProfileStore for PostgresProfileStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.with(|c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                    .await?;
                tx.batch_execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (
                        version    BIGINT PRIMARY KEY,
                        name       TEXT NOT NULL,
                        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                    )",
                )
                .await?;
                let current: i64 = tx
                    .query_one(
                        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                        &[],
                    )
                    .await?
                    .try_get(0)?;
                for m in POSTGRES.iter().filter(|m| m.version > current) {
                    tx.batch_execute(m.sql).await?;
                    tx.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        &[&m.version, &m.name],
                    )
                    .await?;
                    tracing::info!(
                        version = m.version,
                        name = m.name,
                        "applied database migration"
                    );
                }
                tx.commit().await
            })
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| Box::pin(async move { c.simple_query("SELECT 1").await.map(|_| ()) }))
            .await
    }

    async fn create_profile(&self, p: &Profile) -> Result<bool, StoreError> {
        let p = p.clone();
        self.with(move |c| {
            Box::pin(async move {
                let n = c
                    .execute(
                        &format!(
                            "INSERT INTO user_profile ({PROFILE_COLUMNS}) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                             ON CONFLICT (sub) DO NOTHING"
                        ),
                        &profile_params(&p),
                    )
                    .await?;
                Ok(n == 1)
            })
        })
        .await
    }

    async fn get_profile(&self, subject: &str) -> Result<Option<Profile>, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        &format!("SELECT {PROFILE_COLUMNS} FROM user_profile WHERE sub = $1"),
                        &[&s],
                    )
                    .await?;
                row.as_ref().map(profile_row).transpose()
            })
        })
        .await
    }

    async fn update_profile(&self, p: &Profile) -> Result<bool, StoreError> {
        let p = p.clone();
        self.with(move |c| {
            Box::pin(async move {
                let n = c
                    .execute(
                        "UPDATE user_profile SET username = $2, first_name = $3, last_name = $4, \
                         email = $5, email_verified = $6, mobile = $7, mobile_verified = $8, \
                         pending_email = $9, pending_mobile = $10, created_at = $11, \
                         updated_at = $12 WHERE sub = $1",
                        &profile_params(&p),
                    )
                    .await?;
                Ok(n == 1)
            })
        })
        .await
    }

    async fn get_totp(&self, subject: &str) -> Result<Option<TotpRecord>, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "SELECT ciphertext, key_id, enabled_at FROM totp_secret WHERE sub = $1",
                        &[&s],
                    )
                    .await?;
                row.as_ref().map(|r| totp_row(r, 0)).transpose()
            })
        })
        .await
    }

    async fn insert_totp(&self, subject: &str, rec: &TotpRecord) -> Result<bool, StoreError> {
        let (s, rec) = (subject.to_string(), rec.clone());
        self.with(move |c| {
            Box::pin(async move {
                let n = c
                    .execute(
                        "INSERT INTO totp_secret (sub, ciphertext, key_id, enabled_at) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (sub) DO NOTHING",
                        &[&s, &rec.ciphertext, &rec.key_id, &rec.enabled_at],
                    )
                    .await?;
                Ok(n == 1)
            })
        })
        .await
    }

    async fn delete_totp(&self, subject: &str) -> Result<bool, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            Box::pin(async move {
                Ok(c.execute("DELETE FROM totp_secret WHERE sub = $1", &[&s])
                    .await?
                    == 1)
            })
        })
        .await
    }

    async fn all_totp(&self) -> Result<Vec<(String, TotpRecord)>, StoreError> {
        self.with(|c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT sub, ciphertext, key_id, enabled_at FROM totp_secret ORDER BY sub",
                        &[],
                    )
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, totp_row(r, 1)?)))
                    .collect()
            })
        })
        .await
    }

    async fn reencrypt_totp(
        &self,
        subject: &str,
        old: &TotpRecord,
        new: &TotpRecord,
    ) -> Result<bool, StoreError> {
        let (s, old, new) = (subject.to_string(), old.clone(), new.clone());
        self.with(move |c| {
            Box::pin(async move {
                let n = c
                    .execute(
                        "UPDATE totp_secret SET ciphertext = $4, key_id = $5 \
                         WHERE sub = $1 AND ciphertext = $2 AND key_id = $3",
                        &[
                            &s,
                            &old.ciphertext,
                            &old.key_id,
                            &new.ciphertext,
                            &new.key_id,
                        ],
                    )
                    .await?;
                Ok(n == 1)
            })
        })
        .await
    }

    async fn accept_totp_step(&self, subject: &str, step: i64) -> Result<bool, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            Box::pin(async move {
                // One statement: the row lock taken by ON CONFLICT serialises
                // parallel attempts, and only a strictly greater step updates.
                let n = c
                    .execute(
                        "INSERT INTO totp_last_step (sub, step) VALUES ($1, $2) \
                         ON CONFLICT (sub) DO UPDATE SET step = EXCLUDED.step \
                         WHERE totp_last_step.step < EXCLUDED.step",
                        &[&s, &step],
                    )
                    .await?;
                Ok(n == 1)
            })
        })
        .await
    }

    async fn replace_recovery_codes(
        &self,
        subject: &str,
        hashes: &[String],
    ) -> Result<(), StoreError> {
        let (s, hashes) = (subject.to_string(), hashes.to_vec());
        self.with(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                tx.execute("DELETE FROM recovery_code WHERE sub = $1", &[&s])
                    .await?;
                tx.execute(
                    "INSERT INTO recovery_code (sub, hash) SELECT $1, h FROM unnest($2::text[]) AS h",
                    &[&s, &hashes],
                )
                .await?;
                tx.commit().await
            })
        })
        .await
    }

    async fn recovery_codes(&self, subject: &str) -> Result<Vec<(i64, String)>, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT id, hash FROM recovery_code WHERE sub = $1 ORDER BY id",
                        &[&s],
                    )
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect()
            })
        })
        .await
    }

    async fn spend_recovery_code(&self, subject: &str, id: i64) -> Result<bool, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            Box::pin(async move {
                Ok(c.execute(
                    "DELETE FROM recovery_code WHERE sub = $1 AND id = $2",
                    &[&s, &id],
                )
                .await?
                    == 1)
            })
        })
        .await
    }

    async fn record_failure(&self, subject: &str, cap: u32) -> Result<Option<u32>, StoreError> {
        let s = subject.to_string();
        let cap = if cap == 0 {
            i32::MAX
        } else {
            i32::try_from(cap).unwrap_or(i32::MAX)
        };
        self.with(move |c| {
            Box::pin(async move {
                // One statement: the cap check and the increment cannot be
                // split by a parallel failure (the upsert locks the row). An
                // update skipped by its WHERE returns no row.
                let row = c
                    .query_opt(
                        "INSERT INTO factor_failure (sub, count) VALUES ($1, 1) \
                         ON CONFLICT (sub) DO UPDATE SET count = factor_failure.count + 1 \
                         WHERE factor_failure.count < $2 \
                         RETURNING count",
                        &[&s, &cap],
                    )
                    .await?;
                let n: Option<i32> = match row {
                    Some(r) => Some(r.try_get(0)?),
                    None => None,
                };
                Ok(n.map(|n| u32::try_from(n).unwrap_or(0)))
            })
        })
        .await
    }

    async fn failures(&self, subject: &str) -> Result<u32, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt("SELECT count FROM factor_failure WHERE sub = $1", &[&s])
                    .await?;
                let n: i32 = match row {
                    Some(r) => r.try_get(0)?,
                    None => 0,
                };
                Ok(u32::try_from(n).unwrap_or(0))
            })
        })
        .await
    }

    async fn clear_failures(&self, subject: &str) -> Result<(), StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            Box::pin(async move {
                c.execute("DELETE FROM factor_failure WHERE sub = $1", &[&s])
                    .await
                    .map(|_| ())
            })
        })
        .await
    }

    async fn reset_user(&self, subject: &str) -> Result<ResetReport, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let totp = tx
                    .execute("DELETE FROM totp_secret WHERE sub = $1", &[&s])
                    .await?
                    > 0;
                let codes = tx
                    .execute("DELETE FROM recovery_code WHERE sub = $1", &[&s])
                    .await?;
                let failures = tx
                    .query_opt(
                        "DELETE FROM factor_failure WHERE sub = $1 RETURNING count",
                        &[&s],
                    )
                    .await?
                    .map(|r| r.try_get::<_, i32>(0))
                    .transpose()?
                    .is_some_and(|n| n > 0);
                tx.commit().await?;
                Ok(ResetReport {
                    totp,
                    recovery_codes: count_u32(codes),
                    failures_cleared: failures,
                })
            })
        })
        .await
    }
}
