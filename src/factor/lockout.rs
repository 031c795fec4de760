//! One attempt budget per user across every factor (emailed and texted
//! codes, TOTP, recovery codes), and the two locks it feeds:
//!
//! - a timed lockout in the short-lived store: at most
//!   `security.max_attempts` codes are compared per lockout period, however
//!   many arrive at once, because each attempt is taken from the budget
//!   *before* its code is looked at, in one atomic step
//!   (`EphemeralStore::take_attempt`). The attempt that spends the budget
//!   starts the lockout (429 for `security.lockout`, doubling with each
//!   further lockout in a row, at most 24 h); a code that arrives while
//!   locked is refused without being compared. A right code clears the
//!   counter, the lockout and the series;
//! - a hard lock in the database: after `security.max_consecutive_failures`
//!   wrong codes with no success between them, every verification answers
//!   423 until `twofa-authz reset-user`. Lockout expiry and new codes do not
//!   reset it; only a success does. It lives in the database so that a Redis
//!   flush cannot reopen a guessing campaign. Only compared wrong codes
//!   count, and the count never passes the cap (`ProfileStore::record_failure`
//!   is one conditional statement). It is read before an attempt is taken,
//!   so requests already in flight when the cap is reached may still be
//!   compared; the timed budget bounds those to `max_attempts`.
//!
//! The rules that use these steps live in `factor::service`.

use std::time::Duration;

pub use crate::store::{lockout_duration, MAX_LOCKOUT, SERIES_MEMORY};

/// A wait rounded up to whole seconds, at least one: `Retry-After` is in
/// seconds, and a client that retries after a rounded-down wait would still
/// be refused.
pub fn retry_after(left: Duration) -> Duration {
    let ms = left.as_millis().max(1);
    Duration::from_secs(ms.div_ceil(1000) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::clock::{Clock, ManualClock};
    use crate::store::memory::MemoryEphemeralStore;
    use crate::store::{Attempt, AttemptLimits, EphemeralStore};

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

    const LIMITS: AttemptLimits = AttemptLimits {
        max_attempts: 3,
        lockout: Duration::from_secs(60),
    };

    fn granted(n: u32) -> Attempt {
        Attempt::Granted {
            n,
            locked_now: None,
        }
    }

    fn locks(n: u32, secs: u64) -> Attempt {
        Attempt::Granted {
            n,
            locked_now: Some(Duration::from_secs(secs)),
        }
    }

    #[tokio::test]
    async fn lockout_doubles_and_expires_with_the_clock() {
        let clock = ManualClock::new(1_700_000_000);
        let eph = MemoryEphemeralStore::new(clock.clone() as Arc<dyn Clock>);
        assert_eq!(eph.take_attempt("u", LIMITS).await.unwrap(), granted(1));
        assert_eq!(eph.take_attempt("u", LIMITS).await.unwrap(), granted(2));
        assert_eq!(eph.take_attempt("u", LIMITS).await.unwrap(), locks(3, 60));
        assert_eq!(
            eph.take_attempt("u", LIMITS).await.unwrap(),
            Attempt::Locked {
                left: Duration::from_secs(60)
            }
        );
        clock.advance(30);
        assert_eq!(
            eph.take_attempt("u", LIMITS).await.unwrap(),
            Attempt::Locked {
                left: Duration::from_secs(30)
            }
        );
        clock.advance(30);
        // The next lockout of the series lasts twice as long, then four times.
        for n in 1..=2 {
            assert_eq!(eph.take_attempt("u", LIMITS).await.unwrap(), granted(n));
        }
        assert_eq!(eph.take_attempt("u", LIMITS).await.unwrap(), locks(3, 120));
        clock.advance(120);
        for _ in 0..2 {
            eph.take_attempt("u", LIMITS).await.unwrap();
        }
        assert_eq!(eph.take_attempt("u", LIMITS).await.unwrap(), locks(3, 240));
        // Other users are not affected.
        assert_eq!(eph.take_attempt("v", LIMITS).await.unwrap(), granted(1));
        // Clearing (a right code) lifts the lockout and starts the series over.
        assert!(eph.clear_attempts("u").await.unwrap());
        assert!(!eph.clear_attempts("u").await.unwrap());
        for n in 1..=2 {
            assert_eq!(eph.take_attempt("u", LIMITS).await.unwrap(), granted(n));
        }
        assert_eq!(eph.take_attempt("u", LIMITS).await.unwrap(), locks(3, 60));
    }

    #[tokio::test]
    async fn attempts_spread_thinly_never_lock() {
        let clock = ManualClock::new(1_700_000_000);
        let eph = MemoryEphemeralStore::new(clock.clone() as Arc<dyn Clock>);
        for _ in 0..10 {
            assert_eq!(eph.take_attempt("u", LIMITS).await.unwrap(), granted(1));
            clock.advance(61);
        }
    }
}
