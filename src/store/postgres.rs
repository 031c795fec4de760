//! The profile store in PostgreSQL (`storage.database_url = "postgres://…"`),
//! for production and several instances sharing one database.
//!
//! The pool does not connect at start, so the service starts (and reports
//! the database down) while PostgreSQL is away, and recovers by itself.
//! Every call is bounded: a dead database turns into a prompt 503. Each
//! connection is tested on checkout, so the first call after PostgreSQL
//! restarts (or a proxy cuts the connections) gets a fresh connection
//! instead of a dead one; TCP keepalives and a user timeout close
//! connections whose peer vanished without a reset.
//!
//! TLS follows `sslmode` in the URL and `storage.database_ca_path`
//! (store/pg_tls.rs). A connection whose TLS handshake fails is
//! `StoreError::Incompatible`: a configuration problem, not an outage.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bb8_postgres::PostgresConnectionManager;
use parking_lot::Mutex;
use tokio_postgres::{GenericClient, Row};

use super::migrations::{self, Applied, POSTGRES};
use super::pg_tls::{error_chain, is_tls_failure, MakeRustlsConnect, PgTarget};
use super::{
    DeviceMatch, DeviceRecord, DeviceStore, Profile, ProfileStore, ResetReport, StoreError,
    TotpRecord, WebAuthnCredential,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Unacknowledged data older than this closes the connection (Linux
/// TCP_USER_TIMEOUT), and idle connections are probed this often: a peer
/// that vanished without a reset is noticed within seconds, not hours.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Migrations take a transaction-scoped advisory lock on this key so that
/// instances starting together apply each migration once.
const MIGRATION_LOCK: i64 = 0x7477_6f66_615f_6d67; // "twofa_mg"

type Pool = bb8::Pool<PostgresConnectionManager<MakeRustlsConnect>>;

pub struct PostgresProfileStore {
    pool: Pool,
    target: PgTarget,
    /// What the pool's background connects last failed with: `get()` itself
    /// only reports a timeout.
    last_connect_error: LastError,
    /// The schema was found to be this binary's (see `check_schema`).
    schema_ok: AtomicBool,
}

/// Collects the connection errors of the pool (bb8 hands them to a sink and
/// lets `get()` time out): (a TLS failure?, the message).
#[derive(Debug, Clone, Default)]
struct LastError(Arc<Mutex<Option<(bool, String)>>>);

impl bb8::ErrorSink<tokio_postgres::Error> for LastError {
    fn sink(&self, e: tokio_postgres::Error) {
        *self.0.lock() = Some((is_tls_failure(&e), error_chain(&e)));
    }
    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<tokio_postgres::Error>> {
        Box::new(self.clone())
    }
}

impl PostgresProfileStore {
    pub fn new(url: &str, ca_path: Option<&Path>, pool_size: u32) -> Result<Self, String> {
        let mut target = PgTarget::new(url, ca_path)?;
        let cfg = &mut target.config;
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(CONNECT_TIMEOUT);
        }
        if cfg.get_tcp_user_timeout().is_none() {
            cfg.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if cfg.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            // tokio-postgres' default (2 h) is the kernel's; far too long.
            cfg.keepalives_idle(KEEPALIVE_IDLE);
            cfg.keepalives_interval(Duration::from_secs(10));
            cfg.keepalives_retries(3);
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("twofa-authz");
        }
        tracing::info!(tls = %target.describe(ca_path), "PostgreSQL profile store");
        let last_connect_error = LastError::default();
        let mgr = PostgresConnectionManager::new(target.config.clone(), target.tls.clone());
        let pool = bb8::Pool::builder()
            .max_size(pool_size)
            .connection_timeout(CONNECT_TIMEOUT)
            .retry_connection(false)
            // A connection PostgreSQL closed (restart, failover, an idle
            // timeout of a proxy) is found and replaced at checkout, so the
            // next call after a restart works instead of failing once per
            // pooled connection.
            .test_on_check_out(true)
            .error_sink(Box::new(last_connect_error.clone()))
            .build_unchecked(mgr);
        Ok(Self {
            pool,
            target,
            last_connect_error,
            schema_ok: AtomicBool::new(false),
        })
    }

    /// Runs `f` on a pooled connection, bounded by the operation timeout,
    /// once the schema has been found to be this binary's.
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(&'c mut tokio_postgres::Client) -> BoxFut<'c, T>,
    {
        self.ensure_schema().await?;
        self.with_unchecked(f).await
    }

    async fn with_unchecked<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(&'c mut tokio_postgres::Client) -> BoxFut<'c, T>,
    {
        let fut = async {
            let mut conn = self.pool.get().await.map_err(|e| self.pool_error(e))?;
            self.last_connect_error.0.lock().take();
            f(&mut conn).await.map_err(map_err)
        };
        match tokio::time::timeout(OP_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable("postgres: timed out".into())),
        }
    }

    fn pool_error(&self, e: bb8::RunError<tokio_postgres::Error>) -> StoreError {
        match e {
            bb8::RunError::User(e) => self.connect_error(&e),
            bb8::RunError::TimedOut => match self.last_connect_error.0.lock().clone() {
                Some((true, why)) => self.tls_error(&why),
                Some((false, why)) => StoreError::Unavailable(format!(
                    "postgres: no connection within {}s: {why}",
                    CONNECT_TIMEOUT.as_secs()
                )),
                None => StoreError::Unavailable(format!(
                    "postgres: no connection within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )),
            },
        }
    }

    fn connect_error(&self, e: &tokio_postgres::Error) -> StoreError {
        if is_tls_failure(e) {
            self.tls_error(&error_chain(e))
        } else {
            store_error(e)
        }
    }

    fn tls_error(&self, why: &str) -> StoreError {
        StoreError::Incompatible(format!(
            "postgres: {why} (sslmode={}; see storage.database_ca_path)",
            self.target.mode.as_str()
        ))
    }

    /// A connection of its own, outside the pool, for migrations and the
    /// start-up check: its errors reach the caller as they are.
    async fn connect_direct(&self) -> Result<tokio_postgres::Client, StoreError> {
        let fut = self.target.config.connect(self.target.tls.clone());
        match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), fut).await {
            Ok(Ok((client, conn))) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(client)
            }
            Ok(Err(e)) => Err(self.connect_error(&e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "postgres: no connection within {}s",
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The schema gate of every method: passes once `check_schema` (or a
    /// migration) did. Until then each call checks for itself, unlocked: a
    /// queue behind one check would make every caller wait for the ones
    /// before it while the database is away.
    async fn ensure_schema(&self) -> Result<(), StoreError> {
        if self.schema_ok.load(Ordering::Acquire) {
            return Ok(());
        }
        let applied = self
            .with_unchecked(|c| Box::pin(async move { read_applied(&*c).await }))
            .await?;
        verify(&applied)?;
        self.schema_ok.store(true, Ordering::Release);
        Ok(())
    }
}

/// The rows of `schema_migrations`, empty when the table does not exist;
/// `checksum` None for a table from before checksums.
async fn read_applied(c: &impl GenericClient) -> Result<Vec<Applied>, tokio_postgres::Error> {
    let row = c
        .query_one(
            "SELECT to_regclass('schema_migrations') IS NOT NULL, EXISTS (
                 SELECT 1 FROM information_schema.columns
                 WHERE table_schema = current_schema()
                   AND table_name = 'schema_migrations' AND column_name = 'checksum')",
            &[],
        )
        .await?;
    let (exists, has_checksum): (bool, bool) = (row.try_get(0)?, row.try_get(1)?);
    if !exists {
        return Ok(vec![]);
    }
    let sql = if has_checksum {
        "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
    } else {
        "SELECT version, name, NULL::text FROM schema_migrations ORDER BY version"
    };
    c.query(sql, &[])
        .await?
        .iter()
        .map(|r| {
            Ok(Applied {
                version: r.try_get(0)?,
                name: r.try_get(1)?,
                checksum: r.try_get(2)?,
            })
        })
        .collect()
}

/// Under the advisory lock: records the table (and its checksum column, for
/// databases from before checksums), refuses a schema this binary does not
/// know, fills in missing checksums and applies what is pending.
async fn migrate_in(tx: &tokio_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(map_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    BIGINT PRIMARY KEY,
            name       TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum TEXT",
    )
    .await
    .map_err(map_err)?;
    let applied = read_applied(tx).await.map_err(map_err)?;
    let plan = migrations::plan(POSTGRES, &applied)
        .map_err(|e| StoreError::Incompatible(format!("postgres schema: {e}")))?;
    for m in &plan.backfill {
        tx.execute(
            "UPDATE schema_migrations SET checksum = $2 WHERE version = $1 AND checksum IS NULL",
            &[&m.version, &m.checksum()],
        )
        .await
        .map_err(map_err)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "recorded the checksum of an earlier database migration"
        );
    }
    for m in &plan.pending {
        tx.batch_execute(m.sql).await.map_err(map_err)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &m.checksum()],
        )
        .await
        .map_err(map_err)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied database migration"
        );
    }
    Ok(())
}

/// `check_schema`'s verdict on the recorded migrations.
fn verify(applied: &[Applied]) -> Result<(), StoreError> {
    let plan = migrations::plan(POSTGRES, applied)
        .map_err(|e| StoreError::Incompatible(format!("postgres schema: {e}")))?;
    match plan.pending_message(applied, POSTGRES) {
        Some(m) => Err(StoreError::Unavailable(format!("postgres schema: {m}"))),
        None => Ok(()),
    }
}

type BoxFut<'c, T> =
    std::pin::Pin<Box<dyn Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>>;

fn map_err(e: tokio_postgres::Error) -> StoreError {
    store_error(&e)
}

fn store_error(e: &tokio_postgres::Error) -> StoreError {
    // A type mismatch reading a row is our data, not the server being away.
    if e.to_string().contains("error deserializing column") {
        StoreError::Corrupt(format!("postgres: {}", error_chain(e)))
    } else {
        StoreError::Unavailable(format!("postgres: {}", error_chain(e)))
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

const WEBAUTHN_COLUMNS: &str = "id, sub, name, passkey, sign_count, backup_eligible, \
     backup_state, created_at, last_used_at";

fn webauthn_row(r: &Row) -> Result<WebAuthnCredential, tokio_postgres::Error> {
    Ok(WebAuthnCredential {
        id: r.try_get(0)?,
        subject: r.try_get(1)?,
        name: r.try_get(2)?,
        passkey: r.try_get(3)?,
        sign_count: r.try_get(4)?,
        backup_eligible: r.try_get(5)?,
        backup_state: r.try_get(6)?,
        created_at: r.try_get(7)?,
        last_used_at: r.try_get(8)?,
    })
}

fn count_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[async_trait]
impl ProfileStore for PostgresProfileStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.connect_direct().await?;
        let fut = async {
            let tx = client.transaction().await.map_err(map_err)?;
            let result = migrate_in(&tx).await;
            match result {
                Ok(()) => tx.commit().await.map_err(map_err),
                // Dropping the transaction rolls back, the DDL included.
                Err(e) => Err(e),
            }
        };
        match tokio::time::timeout(Duration::from_secs(120), fut).await {
            Ok(Ok(())) => {
                self.schema_ok.store(true, Ordering::Release);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Unavailable(
                "postgres: migrations did not finish within 120s".into(),
            )),
        }
    }

    async fn check_schema(&self) -> Result<(), StoreError> {
        let client = self.connect_direct().await?;
        let applied = tokio::time::timeout(OP_TIMEOUT, read_applied(&client))
            .await
            .map_err(|_| StoreError::Unavailable("postgres: timed out".into()))?
            .map_err(map_err)?;
        verify(&applied)?;
        self.schema_ok.store(true, Ordering::Release);
        Ok(())
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
                let devices = tx
                    .execute("DELETE FROM remembered_device WHERE sub = $1", &[&s])
                    .await?;
                let passkeys = tx
                    .execute("DELETE FROM webauthn_credential WHERE sub = $1", &[&s])
                    .await?;
                tx.commit().await?;
                Ok(ResetReport {
                    totp,
                    recovery_codes: count_u32(codes),
                    failures_cleared: failures,
                    remembered_devices: count_u32(devices),
                    webauthn_credentials: count_u32(passkeys),
                })
            })
        })
        .await
    }

    async fn webauthn_credentials(
        &self,
        subject: &str,
    ) -> Result<Vec<WebAuthnCredential>, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        &format!(
                            "SELECT {WEBAUTHN_COLUMNS} FROM webauthn_credential WHERE sub = $1 \
                             ORDER BY created_at, id"
                        ),
                        &[&s],
                    )
                    .await?;
                rows.iter().map(webauthn_row).collect()
            })
        })
        .await
    }

    async fn insert_webauthn_credential(&self, w: &WebAuthnCredential) -> Result<bool, StoreError> {
        let w = w.clone();
        self.with(move |c| {
            Box::pin(async move {
                let n = c
                    .execute(
                        &format!(
                            "INSERT INTO webauthn_credential ({WEBAUTHN_COLUMNS}) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                             ON CONFLICT (id) DO NOTHING"
                        ),
                        &[
                            &w.id,
                            &w.subject,
                            &w.name,
                            &w.passkey,
                            &w.sign_count,
                            &w.backup_eligible,
                            &w.backup_state,
                            &w.created_at,
                            &w.last_used_at,
                        ],
                    )
                    .await?;
                Ok(n == 1)
            })
        })
        .await
    }

    async fn update_webauthn_credential(
        &self,
        w: &WebAuthnCredential,
        old_passkey: &str,
    ) -> Result<bool, StoreError> {
        let (w, old) = (w.clone(), old_passkey.to_string());
        self.with(move |c| {
            Box::pin(async move {
                let n = c
                    .execute(
                        "UPDATE webauthn_credential SET passkey = $3, sign_count = $4, \
                         backup_eligible = $5, backup_state = $6, last_used_at = $7 \
                         WHERE id = $1 AND sub = $2 AND passkey = $8",
                        &[
                            &w.id,
                            &w.subject,
                            &w.passkey,
                            &w.sign_count,
                            &w.backup_eligible,
                            &w.backup_state,
                            &w.last_used_at,
                            &old,
                        ],
                    )
                    .await?;
                Ok(n == 1)
            })
        })
        .await
    }

    async fn delete_webauthn_credential(
        &self,
        subject: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        let (s, id) = (subject.to_string(), id.to_string());
        self.with(move |c| {
            Box::pin(async move {
                let n = c
                    .execute(
                        "DELETE FROM webauthn_credential WHERE sub = $1 AND id = $2",
                        &[&s, &id],
                    )
                    .await?;
                Ok(n == 1)
            })
        })
        .await
    }
}

const DEVICE_COLUMNS: &str =
    "id, sub, name, token_hash, previous_hash, created_at, last_used_at, expires_at";

fn device_row(r: &Row) -> Result<DeviceRecord, tokio_postgres::Error> {
    Ok(DeviceRecord {
        id: r.try_get(0)?,
        subject: r.try_get(1)?,
        name: r.try_get(2)?,
        token_hash: r.try_get(3)?,
        previous_hash: r.try_get(4)?,
        created_at: r.try_get(5)?,
        last_used_at: r.try_get(6)?,
        expires_at: r.try_get(7)?,
    })
}

#[async_trait]
impl DeviceStore for PostgresProfileStore {
    async fn insert_device(&self, d: &DeviceRecord) -> Result<(), StoreError> {
        let d = d.clone();
        self.with(move |c| {
            Box::pin(async move {
                c.execute(
                    &format!(
                        "INSERT INTO remembered_device ({DEVICE_COLUMNS}) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                    ),
                    &[
                        &d.id,
                        &d.subject,
                        &d.name,
                        &d.token_hash,
                        &d.previous_hash,
                        &d.created_at,
                        &d.last_used_at,
                        &d.expires_at,
                    ],
                )
                .await
                .map(|_| ())
            })
        })
        .await
    }

    async fn devices(&self, subject: &str) -> Result<Vec<DeviceRecord>, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        &format!(
                            "SELECT {DEVICE_COLUMNS} FROM remembered_device WHERE sub = $1 \
                             ORDER BY created_at, id"
                        ),
                        &[&s],
                    )
                    .await?;
                rows.iter().map(device_row).collect()
            })
        })
        .await
    }

    async fn find_device(&self, token_hash: &str) -> Result<Option<DeviceMatch>, StoreError> {
        let h = token_hash.to_string();
        self.with(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        &format!(
                            "SELECT {DEVICE_COLUMNS} FROM remembered_device \
                             WHERE token_hash = $1 OR previous_hash = $1"
                        ),
                        &[&h],
                    )
                    .await?;
                let d = row.as_ref().map(device_row).transpose()?;
                Ok(d.map(|d| {
                    if d.token_hash == h {
                        DeviceMatch::Current(d)
                    } else {
                        DeviceMatch::Previous(d)
                    }
                }))
            })
        })
        .await
    }

    async fn rotate_device(
        &self,
        id: &str,
        old_hash: &str,
        new_hash: &str,
        used_at: i64,
    ) -> Result<bool, StoreError> {
        let (id, old, new) = (id.to_string(), old_hash.to_string(), new_hash.to_string());
        self.with(move |c| {
            Box::pin(async move {
                // One conditional statement: of two uses of the same token,
                // the second finds the hash already replaced.
                let n = c
                    .execute(
                        "UPDATE remembered_device SET previous_hash = token_hash, \
                         token_hash = $3, last_used_at = $4 WHERE id = $1 AND token_hash = $2",
                        &[&id, &old, &new, &used_at],
                    )
                    .await?;
                Ok(n == 1)
            })
        })
        .await
    }

    async fn delete_device(&self, subject: &str, id: &str) -> Result<bool, StoreError> {
        let (s, id) = (subject.to_string(), id.to_string());
        self.with(move |c| {
            Box::pin(async move {
                let n = c
                    .execute(
                        "DELETE FROM remembered_device WHERE sub = $1 AND id = $2",
                        &[&s, &id],
                    )
                    .await?;
                Ok(n == 1)
            })
        })
        .await
    }

    async fn delete_devices(&self, subject: &str) -> Result<u32, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            Box::pin(async move {
                let n = c
                    .execute("DELETE FROM remembered_device WHERE sub = $1", &[&s])
                    .await?;
                Ok(count_u32(n))
            })
        })
        .await
    }
}
