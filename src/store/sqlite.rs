//! The profile store in an embedded SQLite file (`storage.database_url =
//! "sqlite://PATH"`): one instance, `serve --dev`, small installations.
//!
//! One connection, used from the blocking thread pool: SQLite serialises
//! writers anyway, and a single connection makes every method trivially
//! atomic. WAL and a busy timeout still matter because `twofa-authz migrate`
//! or `reset-user` may open the same file while `serve` runs. The file is
//! opened lazily and reopened after an I/O error, so a database that cannot
//! be opened at start (a missing volume) makes `/user` answer 503 and
//! recovers by itself.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use super::migrations::{self, Applied, Migration, SQLITE};
use super::{
    DeviceMatch, DeviceRecord, DeviceStore, Profile, ProfileStore, ResetReport, StoreError,
    TotpRecord, WebAuthnCredential,
};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteProfileStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
    /// The schema was found to be this binary's (see `check_schema`).
    schema_ok: AtomicBool,
}

/// What a unit of work on the connection failed with.
enum Failure {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

impl SqliteProfileStore {
    /// `url` is `sqlite://PATH` (relative to the working directory, or
    /// absolute as `sqlite:///var/lib/twofa/twofa.db`). Nothing is opened yet.
    pub fn new(url: &str) -> Result<Self, String> {
        let path = url
            .strip_prefix("sqlite://")
            .ok_or("storage.database_url: a SQLite URL is sqlite://PATH")?;
        if path.is_empty() {
            return Err("storage.database_url: sqlite:// needs a file path".into());
        }
        Ok(Self {
            inner: Arc::new(Inner {
                path: PathBuf::from(path),
                conn: Mutex::new(None),
                schema_ok: AtomicBool::new(false),
            }),
        })
    }

    /// Runs `f` on the connection in the blocking pool, once the schema has
    /// been found to be this binary's.
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.run(true, move |c| f(c).map_err(Failure::Sql)).await
    }

    async fn run<T, F>(&self, gated: bool, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.run(gated, f))
            .await
            .map_err(|e| StoreError::Unavailable(format!("sqlite worker: {e}")))?
    }
}

impl Inner {
    fn open(&self) -> rusqlite::Result<Connection> {
        let c = Connection::open(&self.path)?;
        c.busy_timeout(BUSY_TIMEOUT)?;
        // WAL lets readers proceed while another process writes; NORMAL
        // sync is durable at every checkpoint and safe with WAL.
        c.pragma_update(None, "journal_mode", "WAL")?;
        c.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(c)
    }

    fn run<T>(
        &self,
        gated: bool,
        f: impl FnOnce(&mut Connection) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let mut guard = self.conn.lock();
        if guard.is_none() {
            *guard = Some(self.open().map_err(|e| map_err(&e))?);
        }
        let Some(conn) = guard.as_mut() else {
            return Err(StoreError::Unavailable("sqlite: not open".into()));
        };
        let result = if gated && !self.schema_ok.load(Ordering::Acquire) {
            read_applied(conn)
                .map_err(Failure::Sql)
                .and_then(|applied| verify(&applied).map_err(Failure::Store))
                .map(|()| self.schema_ok.store(true, Ordering::Release))
        } else {
            Ok(())
        };
        let result = result.and_then(|()| f(conn));
        result.map_err(|failure| match failure {
            Failure::Store(e) => e,
            Failure::Sql(e) => {
                if is_io(&e) {
                    // Reopen next time: the file may have been replaced or
                    // the volume remounted.
                    *guard = None;
                }
                map_err(&e)
            }
        })
    }
}

fn is_io(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::CannotOpen | ErrorCode::SystemIoFailure | ErrorCode::NotADatabase)
    )
}

fn map_err(e: &rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => {
            StoreError::Corrupt(format!("sqlite: {e}"))
        }
        _ => StoreError::Unavailable(format!("sqlite: {e}")),
    }
}

/// The rows of `schema_migrations`, empty when the table does not exist;
/// `checksum` None for a table from before checksums.
fn read_applied(c: &Connection) -> rusqlite::Result<Vec<Applied>> {
    let exists: bool = c.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(vec![]);
    }
    let sql = if has_checksum_column(c)? {
        "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
    } else {
        "SELECT version, name, NULL FROM schema_migrations ORDER BY version"
    };
    let mut stmt = c.prepare(sql)?;
    let rows = stmt.query_map([], |r| {
        Ok(Applied {
            version: r.get(0)?,
            name: r.get(1)?,
            checksum: r.get(2)?,
        })
    })?;
    rows.collect()
}

fn has_checksum_column(c: &Connection) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('schema_migrations') WHERE name = 'checksum')",
        [],
        |r| r.get(0),
    )
}

/// `check_schema`'s verdict on the recorded migrations.
fn verify(applied: &[Applied]) -> Result<(), StoreError> {
    let plan = migrations::plan(SQLITE, applied)
        .map_err(|e| StoreError::Incompatible(format!("sqlite schema: {e}")))?;
    match plan.pending_message(applied, SQLITE) {
        Some(m) => Err(StoreError::Unavailable(format!("sqlite schema: {m}"))),
        None => Ok(()),
    }
}

/// Applies pending migrations in one immediate (write-locking) transaction,
/// so two processes starting together cannot both apply one. A database
/// this binary does not know is refused before anything changes.
fn migrate_sqlite(c: &mut Connection, list: &[Migration]) -> Result<(), Failure> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY NOT NULL,
            name       TEXT NOT NULL,
            applied_at INTEGER NOT NULL,
            checksum   TEXT
        )",
    )?;
    if !has_checksum_column(&tx)? {
        tx.execute_batch("ALTER TABLE schema_migrations ADD COLUMN checksum TEXT")?;
    }
    let applied = read_applied(&tx)?;
    let plan = migrations::plan(list, &applied)
        .map_err(|e| Failure::Store(StoreError::Incompatible(format!("sqlite schema: {e}"))))?;
    for m in &plan.backfill {
        tx.execute(
            "UPDATE schema_migrations SET checksum = ?2 WHERE version = ?1 AND checksum IS NULL",
            params![m.version, m.checksum()],
        )?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "recorded the checksum of an earlier database migration"
        );
    }
    for m in &plan.pending {
        tx.execute_batch(m.sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at, checksum) \
             VALUES (?1, ?2, strftime('%s','now'), ?3)",
            params![m.version, m.name, m.checksum()],
        )?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied database migration"
        );
    }
    tx.commit()?;
    Ok(())
}

/// A profile's values in `PROFILE_COLUMNS` order (?1 … ?12), for both the
/// INSERT and the UPDATE.
fn profile_params(p: &Profile) -> [&dyn rusqlite::ToSql; 12] {
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

fn profile_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Profile> {
    Ok(Profile {
        subject: r.get(0)?,
        username: r.get(1)?,
        first_name: r.get(2)?,
        last_name: r.get(3)?,
        email: r.get(4)?,
        email_verified: r.get(5)?,
        mobile: r.get(6)?,
        mobile_verified: r.get(7)?,
        pending_email: r.get(8)?,
        pending_mobile: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

const WEBAUTHN_COLUMNS: &str = "id, sub, name, passkey, sign_count, backup_eligible, \
     backup_state, created_at, last_used_at";

fn webauthn_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WebAuthnCredential> {
    Ok(WebAuthnCredential {
        id: r.get(0)?,
        subject: r.get(1)?,
        name: r.get(2)?,
        passkey: r.get(3)?,
        sign_count: r.get(4)?,
        backup_eligible: r.get(5)?,
        backup_state: r.get(6)?,
        created_at: r.get(7)?,
        last_used_at: r.get(8)?,
    })
}

#[async_trait]
impl ProfileStore for SqliteProfileStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        self.run(false, move |c| {
            migrate_sqlite(c, SQLITE)?;
            inner.schema_ok.store(true, Ordering::Release);
            Ok(())
        })
        .await
    }

    async fn check_schema(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        self.run(false, move |c| {
            let applied = read_applied(c)?;
            verify(&applied).map_err(Failure::Store)?;
            inner.schema_ok.store(true, Ordering::Release);
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
        })
        .await
    }

    async fn create_profile(&self, p: &Profile) -> Result<bool, StoreError> {
        let p = p.clone();
        self.with(move |c| {
            let n = c.execute(
                &format!(
                    "INSERT INTO user_profile ({PROFILE_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                     ON CONFLICT (sub) DO NOTHING"
                ),
                profile_params(&p).as_slice(),
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn get_profile(&self, subject: &str) -> Result<Option<Profile>, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {PROFILE_COLUMNS} FROM user_profile WHERE sub = ?1"),
                params![s],
                profile_row,
            )
            .optional()
        })
        .await
    }

    async fn update_profile(&self, p: &Profile) -> Result<bool, StoreError> {
        let p = p.clone();
        self.with(move |c| {
            let n = c.execute(
                "UPDATE user_profile SET username = ?2, first_name = ?3, last_name = ?4, \
                 email = ?5, email_verified = ?6, mobile = ?7, mobile_verified = ?8, \
                 pending_email = ?9, pending_mobile = ?10, created_at = ?11, updated_at = ?12 \
                 WHERE sub = ?1",
                profile_params(&p).as_slice(),
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn get_totp(&self, subject: &str) -> Result<Option<TotpRecord>, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT ciphertext, key_id, enabled_at FROM totp_secret WHERE sub = ?1",
                params![s],
                |r| {
                    Ok(TotpRecord {
                        ciphertext: r.get(0)?,
                        key_id: r.get(1)?,
                        enabled_at: r.get(2)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn insert_totp(&self, subject: &str, rec: &TotpRecord) -> Result<bool, StoreError> {
        let (s, rec) = (subject.to_string(), rec.clone());
        self.with(move |c| {
            let n = c.execute(
                "INSERT INTO totp_secret (sub, ciphertext, key_id, enabled_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (sub) DO NOTHING",
                params![s, rec.ciphertext, rec.key_id, rec.enabled_at],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_totp(&self, subject: &str) -> Result<bool, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            Ok(c.execute("DELETE FROM totp_secret WHERE sub = ?1", params![s])? == 1)
        })
        .await
    }

    async fn all_totp(&self) -> Result<Vec<(String, TotpRecord)>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT sub, ciphertext, key_id, enabled_at FROM totp_secret ORDER BY sub",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    TotpRecord {
                        ciphertext: r.get(1)?,
                        key_id: r.get(2)?,
                        enabled_at: r.get(3)?,
                    },
                ))
            })?;
            rows.collect()
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
            let n = c.execute(
                "UPDATE totp_secret SET ciphertext = ?4, key_id = ?5 \
                 WHERE sub = ?1 AND ciphertext = ?2 AND key_id = ?3",
                params![s, old.ciphertext, old.key_id, new.ciphertext, new.key_id],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn accept_totp_step(&self, subject: &str, step: i64) -> Result<bool, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            // One statement: insert, or raise only if strictly greater.
            let n = c.execute(
                "INSERT INTO totp_last_step (sub, step) VALUES (?1, ?2) \
                 ON CONFLICT (sub) DO UPDATE SET step = excluded.step \
                 WHERE totp_last_step.step < excluded.step",
                params![s, step],
            )?;
            Ok(n == 1)
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
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("DELETE FROM recovery_code WHERE sub = ?1", params![s])?;
            {
                let mut st = tx.prepare("INSERT INTO recovery_code (sub, hash) VALUES (?1, ?2)")?;
                for h in &hashes {
                    st.execute(params![s, h])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn recovery_codes(&self, subject: &str) -> Result<Vec<(i64, String)>, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            let mut st =
                c.prepare("SELECT id, hash FROM recovery_code WHERE sub = ?1 ORDER BY id")?;
            let rows = st.query_map(params![s], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    async fn spend_recovery_code(&self, subject: &str, id: i64) -> Result<bool, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            Ok(c.execute(
                "DELETE FROM recovery_code WHERE sub = ?1 AND id = ?2",
                params![s, id],
            )? == 1)
        })
        .await
    }

    async fn record_failure(&self, subject: &str, cap: u32) -> Result<Option<u32>, StoreError> {
        let s = subject.to_string();
        let cap = if cap == 0 { i64::MAX } else { i64::from(cap) };
        self.with(move |c| {
            // One statement: the cap check and the increment cannot be split
            // by a parallel failure. An update skipped by its WHERE returns
            // no row.
            let n: Option<i64> = c
                .query_row(
                    "INSERT INTO factor_failure (sub, count) VALUES (?1, 1) \
                     ON CONFLICT (sub) DO UPDATE SET count = factor_failure.count + 1 \
                     WHERE factor_failure.count < ?2 \
                     RETURNING count",
                    params![s, cap],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(n.map(|n| u32::try_from(n).unwrap_or(u32::MAX)))
        })
        .await
    }

    async fn failures(&self, subject: &str) -> Result<u32, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            let n: Option<i64> = c
                .query_row(
                    "SELECT count FROM factor_failure WHERE sub = ?1",
                    params![s],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(n.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)))
        })
        .await
    }

    async fn clear_failures(&self, subject: &str) -> Result<(), StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            c.execute("DELETE FROM factor_failure WHERE sub = ?1", params![s])
                .map(|_| ())
        })
        .await
    }

    async fn reset_user(&self, subject: &str) -> Result<ResetReport, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let totp = tx.execute("DELETE FROM totp_secret WHERE sub = ?1", params![s])? > 0;
            let codes = tx.execute("DELETE FROM recovery_code WHERE sub = ?1", params![s])?;
            let failures = tx.execute(
                "DELETE FROM factor_failure WHERE sub = ?1 AND count > 0",
                params![s],
            )? > 0;
            tx.execute("DELETE FROM factor_failure WHERE sub = ?1", params![s])?;
            let devices = tx.execute("DELETE FROM remembered_device WHERE sub = ?1", params![s])?;
            let passkeys =
                tx.execute("DELETE FROM webauthn_credential WHERE sub = ?1", params![s])?;
            tx.commit()?;
            Ok(ResetReport {
                totp,
                recovery_codes: u32::try_from(codes).unwrap_or(u32::MAX),
                failures_cleared: failures,
                remembered_devices: u32::try_from(devices).unwrap_or(u32::MAX),
                webauthn_credentials: u32::try_from(passkeys).unwrap_or(u32::MAX),
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
            let mut st = c.prepare(&format!(
                "SELECT {WEBAUTHN_COLUMNS} FROM webauthn_credential WHERE sub = ?1 \
                 ORDER BY created_at, id"
            ))?;
            let rows = st.query_map(params![s], webauthn_row)?;
            rows.collect()
        })
        .await
    }

    async fn insert_webauthn_credential(&self, w: &WebAuthnCredential) -> Result<bool, StoreError> {
        let w = w.clone();
        self.with(move |c| {
            let n = c.execute(
                &format!(
                    "INSERT INTO webauthn_credential ({WEBAUTHN_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (id) DO NOTHING"
                ),
                params![
                    w.id,
                    w.subject,
                    w.name,
                    w.passkey,
                    w.sign_count,
                    w.backup_eligible,
                    w.backup_state,
                    w.created_at,
                    w.last_used_at
                ],
            )?;
            Ok(n == 1)
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
            let n = c.execute(
                "UPDATE webauthn_credential SET passkey = ?3, sign_count = ?4, \
                 backup_eligible = ?5, backup_state = ?6, last_used_at = ?7 \
                 WHERE id = ?1 AND sub = ?2 AND passkey = ?8",
                params![
                    w.id,
                    w.subject,
                    w.passkey,
                    w.sign_count,
                    w.backup_eligible,
                    w.backup_state,
                    w.last_used_at,
                    old
                ],
            )?;
            Ok(n == 1)
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
            Ok(c.execute(
                "DELETE FROM webauthn_credential WHERE sub = ?1 AND id = ?2",
                params![s, id],
            )? == 1)
        })
        .await
    }
}

const DEVICE_COLUMNS: &str =
    "id, sub, name, token_hash, previous_hash, created_at, last_used_at, expires_at";

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        id: r.get(0)?,
        subject: r.get(1)?,
        name: r.get(2)?,
        token_hash: r.get(3)?,
        previous_hash: r.get(4)?,
        created_at: r.get(5)?,
        last_used_at: r.get(6)?,
        expires_at: r.get(7)?,
    })
}

#[async_trait]
impl DeviceStore for SqliteProfileStore {
    async fn insert_device(&self, d: &DeviceRecord) -> Result<(), StoreError> {
        let d = d.clone();
        self.with(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO remembered_device ({DEVICE_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ),
                params![
                    d.id,
                    d.subject,
                    d.name,
                    d.token_hash,
                    d.previous_hash,
                    d.created_at,
                    d.last_used_at,
                    d.expires_at
                ],
            )
            .map(|_| ())
        })
        .await
    }

    async fn devices(&self, subject: &str) -> Result<Vec<DeviceRecord>, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {DEVICE_COLUMNS} FROM remembered_device WHERE sub = ?1 \
                 ORDER BY created_at, id"
            ))?;
            let rows = st.query_map(params![s], device_row)?;
            rows.collect()
        })
        .await
    }

    async fn find_device(&self, token_hash: &str) -> Result<Option<DeviceMatch>, StoreError> {
        let h = token_hash.to_string();
        self.with(move |c| {
            let d = c
                .query_row(
                    &format!(
                        "SELECT {DEVICE_COLUMNS} FROM remembered_device \
                         WHERE token_hash = ?1 OR previous_hash = ?1"
                    ),
                    params![h],
                    device_row,
                )
                .optional()?;
            Ok(d.map(|d| {
                if d.token_hash == h {
                    DeviceMatch::Current(d)
                } else {
                    DeviceMatch::Previous(d)
                }
            }))
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
            let n = c.execute(
                "UPDATE remembered_device SET previous_hash = token_hash, token_hash = ?3, \
                 last_used_at = ?4 WHERE id = ?1 AND token_hash = ?2",
                params![id, old, new, used_at],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_device(&self, subject: &str, id: &str) -> Result<bool, StoreError> {
        let (s, id) = (subject.to_string(), id.to_string());
        self.with(move |c| {
            Ok(c.execute(
                "DELETE FROM remembered_device WHERE sub = ?1 AND id = ?2",
                params![s, id],
            )? == 1)
        })
        .await
    }

    async fn delete_devices(&self, subject: &str) -> Result<u32, StoreError> {
        let s = subject.to_string();
        self.with(move |c| {
            let n = c.execute("DELETE FROM remembered_device WHERE sub = ?1", params![s])?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unopenable_file_is_unavailable_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("missing-dir");
        let url = format!("sqlite://{}", sub.join("t.db").display());
        let store = SqliteProfileStore::new(&url).unwrap();
        assert!(matches!(
            store.ping().await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            store.migrate().await,
            Err(StoreError::Unavailable(_))
        ));
        std::fs::create_dir(&sub).unwrap();
        store.migrate().await.unwrap();
        store.ping().await.unwrap();
    }

    #[test]
    fn url_forms() {
        assert!(SqliteProfileStore::new("sqlite://").is_err());
        assert!(SqliteProfileStore::new("postgres://x").is_err());
        let s = SqliteProfileStore::new("sqlite:///var/lib/x.db").unwrap();
        assert_eq!(s.inner.path, PathBuf::from("/var/lib/x.db"));
        let s = SqliteProfileStore::new("sqlite://./twofa-dev.db").unwrap();
        assert_eq!(s.inner.path, PathBuf::from("./twofa-dev.db"));
    }
}
