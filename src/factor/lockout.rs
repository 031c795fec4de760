//! One attempt budget per user across every factor (emailed and texted
//! codes, TOTP, recovery codes), and the two locks it feeds:
//!
//! - a timed lockout in the short-lived store: after `security.max_attempts`
//!   wrong codes the user gets 429 for `security.lockout`, doubling with each
//!   further lockout in a row, at most 24 h;
//! - a hard lock in the database: after `security.max_consecutive_failures`
//!   wrong codes with no success between them, every verification answers
//!   423 until `twofa-authz reset-user`. Lockout expiry and new codes do not
//!   reset it; only a success does. It lives in the database so that a Redis
//!   flush cannot reopen a guessing campaign.
//!
//! Keys (the store adds `storage.key_prefix`), `u` = hash of (iss, sub):
//! `att:u` wrong codes since the last lockout or success, `lock:u` present
//! while locked out, `lockn:u` lockouts in the current series.

use std::time::Duration;

use crate::error::Error;
use crate::store::{EphemeralStore, ProfileStore};

/// The longest lockout, whatever the doubling says.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(24 * 3600);

/// How long the lockout series is remembered after its latest lockout: a
/// user who gets locked out again within this time waits twice as long.
pub const SERIES_MEMORY: Duration = Duration::from_secs(24 * 3600);

pub struct Budget<'a> {
    pub eph: &'a dyn EphemeralStore,
    pub profiles: &'a dyn ProfileStore,
    pub max_attempts: u32,
    pub lockout: Duration,
    pub max_consecutive_failures: u32,
}

/// What a wrong code led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Wrong, with this many tries left before a lockout.
    Remaining(u32),
    /// This failure started a lockout of this length (metrics count it).
    LockedOut(Duration),
    /// Already locked out (a parallel request got there first).
    StillLocked(Duration),
    /// The hard cap is reached: 423 until an administrator reset.
    FactorLocked { newly: bool },
}

impl Failure {
    pub fn into_error(self) -> Error {
        match self {
            Failure::Remaining(n) => Error::InvalidCode {
                attempts_remaining: n,
            },
            Failure::LockedOut(d) | Failure::StillLocked(d) => {
                Error::TooManyAttempts { retry_after: d }
            }
            Failure::FactorLocked { .. } => Error::FactorLocked,
        }
    }
}

/// `base * 2^(level-1)`, at most [`MAX_LOCKOUT`]. Level 1 is the first
/// lockout of a series.
pub fn lockout_duration(base: Duration, level: u64) -> Duration {
    let shift = level.saturating_sub(1);
    if shift >= 24 {
        // 2^24 times even one second is far beyond the cap.
        return MAX_LOCKOUT;
    }
    base.checked_mul(1u32 << shift)
        .unwrap_or(MAX_LOCKOUT)
        .min(MAX_LOCKOUT)
}

/// A wait rounded up to whole seconds, at least one: `Retry-After` is in
/// seconds, and a client that retries after a rounded-down wait would still
/// be refused.
pub fn retry_after(left: Duration) -> Duration {
    let ms = left.as_millis().max(1);
    Duration::from_secs(ms.div_ceil(1000) as u64)
}

fn att(u: &str) -> String {
    format!("att:{u}")
}
fn lock(u: &str) -> String {
    format!("lock:{u}")
}
fn series(u: &str) -> String {
    format!("lockn:{u}")
}

impl Budget<'_> {
    /// Refuses before any code is checked: 423 when the hard cap is reached,
    /// 429 with the time left while locked out.
    pub async fn check(&self, u: &str, subject: &str) -> Result<(), Error> {
        if self.max_consecutive_failures > 0
            && self.profiles.failures(subject).await? >= self.max_consecutive_failures
        {
            return Err(Error::FactorLocked);
        }
        if let Some(left) = self.eph.ttl(&lock(u)).await? {
            return Err(Error::TooManyAttempts {
                retry_after: retry_after(left),
            });
        }
        Ok(())
    }

    /// Counts one wrong code against both limits.
    pub async fn fail(&self, u: &str, subject: &str) -> Result<Failure, Error> {
        let consecutive = self.profiles.record_failure(subject).await?;
        if self.max_consecutive_failures > 0 && consecutive >= self.max_consecutive_failures {
            return Ok(Failure::FactorLocked {
                newly: consecutive == self.max_consecutive_failures,
            });
        }
        // The counter lives as long as one lockout: wrong codes spread out
        // more thinly than that never lock anyone out.
        let n = self
            .eph
            .incr(&att(u), self.lockout.max(Duration::from_secs(1)))
            .await?;
        let max = u64::from(self.max_attempts.max(1));
        if n < max {
            return Ok(Failure::Remaining((max - n) as u32));
        }
        if n > max {
            // Another request crossed the limit first and is locking.
            let left = self.eph.ttl(&lock(u)).await?.unwrap_or(self.lockout);
            return Ok(Failure::StillLocked(retry_after(left)));
        }
        let level = self.eph.incr(&series(u), SERIES_MEMORY).await?;
        let d = lockout_duration(self.lockout, level);
        // Keep the series for a day after this lockout ends, so doubling
        // continues across long lockouts.
        self.eph
            .set(&series(u), &level.to_string(), d + SERIES_MEMORY)
            .await?;
        self.eph.set(&lock(u), &level.to_string(), d).await?;
        self.eph.delete(&att(u)).await?;
        Ok(Failure::LockedOut(d))
    }

    /// A right code: the budget and the failure count start over.
    pub async fn succeed(&self, u: &str, subject: &str) -> Result<(), Error> {
        self.eph.delete(&att(u)).await?;
        self.eph.delete(&series(u)).await?;
        self.profiles.clear_failures(subject).await?;
        Ok(())
    }

    /// Administrator reset: lifts the lockout and forgets the series.
    pub async fn clear(&self, u: &str) -> Result<bool, Error> {
        let a = self.eph.delete(&att(u)).await?;
        let l = self.eph.delete(&lock(u)).await?;
        let s = self.eph.delete(&series(u)).await?;
        Ok(a || l || s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::clock::{Clock, ManualClock};
    use crate::store::memory::MemoryEphemeralStore;
    use crate::store::sqlite::SqliteProfileStore;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(
            retry_after(Duration::from_millis(1999)),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_after(Duration::from_millis(2000)),
            Duration::from_secs(2)
        );
        assert_eq!(retry_after(Duration::ZERO), Duration::from_secs(1));
    }

    #[test]
    fn doubling_is_capped() {
        let base = Duration::from_secs(900);
        assert_eq!(lockout_duration(base, 1), base);
        assert_eq!(lockout_duration(base, 2), base * 2);
        assert_eq!(lockout_duration(base, 3), base * 4);
        assert_eq!(lockout_duration(base, 7), base * 64);
        assert_eq!(lockout_duration(base, 8), MAX_LOCKOUT);
        assert_eq!(lockout_duration(base, 1000), MAX_LOCKOUT);
        assert_eq!(lockout_duration(base, 0), base);
    }

    struct Fixture {
        clock: Arc<ManualClock>,
        eph: MemoryEphemeralStore,
        db: SqliteProfileStore,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db =
            SqliteProfileStore::new(&format!("sqlite://{}", dir.path().join("t.db").display()))
                .unwrap();
        db.migrate().await.unwrap();
        let clock = ManualClock::new(1_700_000_000);
        Fixture {
            eph: MemoryEphemeralStore::new(clock.clone() as Arc<dyn Clock>),
            clock,
            db,
            _dir: dir,
        }
    }

    fn budget<'a>(f: &'a Fixture, cap: u32) -> Budget<'a> {
        Budget {
            eph: &f.eph,
            profiles: &f.db,
            max_attempts: 3,
            lockout: Duration::from_secs(60),
            max_consecutive_failures: cap,
        }
    }

    #[tokio::test]
    async fn lockout_doubles_and_expires_with_the_clock() {
        let f = fixture().await;
        let b = budget(&f, 100);
        b.check("u", "s").await.unwrap();
        assert_eq!(b.fail("u", "s").await.unwrap(), Failure::Remaining(2));
        assert_eq!(b.fail("u", "s").await.unwrap(), Failure::Remaining(1));
        assert_eq!(
            b.fail("u", "s").await.unwrap(),
            Failure::LockedOut(Duration::from_secs(60))
        );
        match b.check("u", "s").await {
            Err(Error::TooManyAttempts { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(60))
            }
            other => panic!("{other:?}"),
        }
        f.clock.advance(30);
        match b.check("u", "s").await {
            Err(Error::TooManyAttempts { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(30))
            }
            other => panic!("{other:?}"),
        }
        f.clock.advance(30);
        b.check("u", "s").await.unwrap();
        // The next lockout of the series lasts twice as long, then four times.
        for _ in 0..2 {
            b.fail("u", "s").await.unwrap();
        }
        assert_eq!(
            b.fail("u", "s").await.unwrap(),
            Failure::LockedOut(Duration::from_secs(120))
        );
        f.clock.advance(120);
        for _ in 0..2 {
            b.fail("u", "s").await.unwrap();
        }
        assert_eq!(
            b.fail("u", "s").await.unwrap(),
            Failure::LockedOut(Duration::from_secs(240))
        );
        // Other users are not affected.
        b.check("v", "t").await.unwrap();
        // A success starts the series over.
        f.clock.advance(240);
        b.succeed("u", "s").await.unwrap();
        for _ in 0..2 {
            b.fail("u", "s").await.unwrap();
        }
        assert_eq!(
            b.fail("u", "s").await.unwrap(),
            Failure::LockedOut(Duration::from_secs(60))
        );
        // An administrator reset lifts it at once.
        assert!(b.clear("u").await.unwrap());
        b.check("u", "s").await.unwrap();
    }

    #[tokio::test]
    async fn wrong_codes_spread_thinly_never_lock() {
        let f = fixture().await;
        let b = budget(&f, 100);
        for _ in 0..10 {
            assert_eq!(b.fail("u", "s").await.unwrap(), Failure::Remaining(2));
            f.clock.advance(61);
        }
    }

    #[tokio::test]
    async fn consecutive_failure_cap_survives_lockout_expiry() {
        let f = fixture().await;
        let b = budget(&f, 5);
        let mut last = None;
        for _ in 0..5 {
            last = Some(b.fail("u", "s").await.unwrap());
            f.clock.advance(10_000);
        }
        assert_eq!(last, Some(Failure::FactorLocked { newly: true }));
        f.clock.advance(100_000);
        assert!(matches!(b.check("u", "s").await, Err(Error::FactorLocked)));
        assert_eq!(
            b.fail("u", "s").await.unwrap(),
            Failure::FactorLocked { newly: false }
        );
        // Only the database reset lifts it (reset-user).
        f.db.reset_user("s").await.unwrap();
        b.check("u", "s").await.unwrap();
    }
}
