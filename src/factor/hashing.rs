//! Password hashing (Argon2id) on a small, fixed pool of threads, so that
//! no burst of requests can make it cost more memory or CPU than the pool
//! has (INTERFACE.md section 5, "Abuse limits").
//!
//! Each Argon2id hash needs its whole memory cost (8 MiB here) at once.
//! Hashing on `spawn_blocking` let every request hash in parallel on a
//! thread of its own, with a fresh 8 MiB allocation per hash: 20 parallel
//! `POST /user/recovery-codes` took the process to 1.4 GB, because besides
//! the live buffers glibc keeps freed ones in per-thread arenas. Here:
//!
//! - a fixed number of worker threads (half the cores the process may use,
//!   at least 1, at most 4: the other half stays free for Check decisions);
//! - each worker owns one Argon2 memory buffer, allocated on its first job
//!   and reused for every hash after that, so peak hashing memory is
//!   workers × 8 MiB whatever the allocator does;
//! - a bounded queue of waiting jobs; a job beyond it is refused at once
//!   with 503 `busy` and `Retry-After` instead of waiting without bound.
//!
//! A job is one request's whole batch (hashing a new set of codes, or trying
//! a typed code against every stored one), so a request is either admitted
//! whole or refused before any work is done.
//!
//! PHC strings are written and read here (the `password-hash` crate's
//! types), because the crate's `PasswordHasher` / `PasswordVerifier` would
//! allocate a fresh buffer per hash. Hashes stored by those (every recovery
//! code hashed before this pool existed) verify unchanged: the format and
//! the parameters are the same, and the parameters are read from each
//! string.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use parking_lot::Mutex;
use rand::rngs::OsRng;

use crate::crypto::ct_eq;
use crate::error::Error;

/// Memory cost of new hashes, in KiB (= Argon2 blocks): 8 MiB.
///
/// Lighter than OWASP's password setting (m = 19 MiB, t = 2) on purpose: the
/// memory-hard cost exists to slow down guessing of low-entropy passwords,
/// while a recovery code carries ~99 random bits, so a stolen hash cannot be
/// brute-forced at any cost setting. What matters is that the hash is salted
/// and one-way; what the cost does affect is our own latency and memory,
/// since one verification may try every stored code.
pub const M_COST: u32 = 8 * 1024;
const T_COST: u32 = 1;
const P_COST: u32 = 1;
const OUTPUT_LEN: usize = 32;

/// The most memory one stored hash may ask for when verified: what new
/// hashes use. A stored string asking for more (which this service never
/// wrote) does not verify, rather than grow a worker's buffer.
const MAX_BLOCKS: usize = M_COST as usize;
/// More passes than this in a stored string do not verify either: the time
/// a job takes stays bounded too.
const MAX_T_COST: u32 = 8;

/// Jobs that may wait per worker before new ones are refused.
const QUEUE_PER_WORKER: usize = 8;
/// What a refused caller is told to wait: a job takes well under that.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// A worker's Argon2 memory. Jobs get it by `&mut`, so one buffer serves
/// one hash at a time.
pub struct Hasher {
    blocks: Vec<Block>,
}

impl Hasher {
    fn new() -> Self {
        Self { blocks: Vec::new() }
    }

    /// A hasher outside the pool, for tests that hash synchronously.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self::new()
    }

    /// The worker's buffer, allocated once at the largest size it may need.
    fn memory(&mut self) -> &mut [Block] {
        if self.blocks.len() < MAX_BLOCKS {
            self.blocks = vec![Block::default(); MAX_BLOCKS];
        }
        &mut self.blocks
    }

    /// The PHC string of `secret` under a new random salt:
    /// `$argon2id$v=19$m=8192,t=1,p=1$<salt>$<hash>`.
    pub fn hash(&mut self, secret: &[u8]) -> Result<String, HashError> {
        let err = |e: &dyn std::fmt::Display| HashError(e.to_string());
        let params = Params::new(M_COST, T_COST, P_COST, Some(OUTPUT_LEN)).map_err(|e| err(&e))?;
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_buf = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(|e| err(&e))?;
        let mut out = [0u8; OUTPUT_LEN];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password_into_with_memory(secret, salt_bytes, &mut out, self.memory())
            .map_err(|e| err(&e))?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(|e| err(&e))?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out).map_err(|e| err(&e))?),
        };
        Ok(phc.to_string())
    }

    /// Whether `secret` is what the PHC string `phc` was made from. The
    /// algorithm (argon2id, argon2i or argon2d), version and parameters are
    /// read from the string; one that cannot be parsed, or that asks for
    /// more memory or passes than this service ever used, does not verify.
    pub fn verify(&mut self, secret: &[u8], phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
            return false;
        };
        let version = match parsed.version.map(Version::try_from) {
            None => Version::V0x13,
            Some(Ok(v)) => v,
            Some(Err(_)) => return false,
        };
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return false;
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return false;
        };
        if params.block_count() > MAX_BLOCKS || params.t_cost() > MAX_T_COST {
            tracing::warn!(
                m = params.m_cost(),
                t = params.t_cost(),
                "a stored password hash asks for more than the hashing pool allows; it does not verify"
            );
            return false;
        }
        let mut salt_buf = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
            return false;
        };
        let mut out_buf = [0u8; Output::MAX_LENGTH];
        let Some(out) = out_buf.get_mut(..expected.len()) else {
            return false;
        };
        let ok = Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(secret, salt, out, self.memory())
            .is_ok();
        ok && ct_eq(out, expected.as_bytes())
    }
}

type Job = Box<dyn FnOnce(&mut Hasher) + Send>;

/// The pool. Dropping it lets the workers finish what is queued and exit.
pub struct HashPool {
    jobs: SyncSender<Job>,
    workers: usize,
    queue: usize,
}

impl HashPool {
    /// Sized to this host: half the cores the process may use (cgroup quotas
    /// count), at least 1, at most 4, each with [`QUEUE_PER_WORKER`] waiting
    /// jobs.
    pub fn for_host() -> Result<Self, String> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = cores.div_ceil(2).clamp(1, 4);
        Self::new(workers, workers * QUEUE_PER_WORKER)
    }

    /// `workers` threads (at least 1) and at most `queue` jobs waiting for
    /// one of them.
    pub fn new(workers: usize, queue: usize) -> Result<Self, String> {
        let workers = workers.max(1);
        let (jobs, rx) = mpsc::sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || work(&rx))
                .map_err(|e| format!("hashing pool: cannot start a worker thread: {e}"))?;
        }
        Ok(Self {
            jobs,
            workers,
            queue,
        })
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn queue(&self) -> usize {
        self.queue
    }

    /// Runs `job` on a worker and returns what it returns. 503 `busy` at once
    /// when every worker is taken and the queue is full.
    pub async fn run<T, F>(&self, job: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Hasher) -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let boxed: Job = Box::new(move |h: &mut Hasher| {
            // The caller gave up (client gone) while the job waited: skip
            // the work nobody will read.
            if !tx.is_closed() {
                let _ = tx.send(job(h));
            }
        });
        match self.jobs.try_send(boxed) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(
                    workers = self.workers,
                    queue = self.queue,
                    "password hashing pool full: request refused with 503 busy"
                );
                return Err(Error::Busy {
                    retry_after: RETRY_AFTER,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::Internal(
                    "the password hashing pool has stopped".into(),
                ));
            }
        }
        rx.await
            .map_err(|_| Error::Internal("a password hashing job failed".into()))
    }
}

/// A worker: takes jobs until the pool is dropped. A job that panics loses
/// its answer (the caller gets 500) but not the worker.
fn work(rx: &Mutex<Receiver<Job>>) {
    let mut hasher = Hasher::new();
    loop {
        // The lock is held only while waiting for the next job.
        let next = rx.lock().recv();
        let Ok(job) = next else {
            return;
        };
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut hasher)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};
    use futures::FutureExt;

    /// Made by the `argon2` crate's own `PasswordHasher`, which hashed every
    /// recovery code before this pool: such stored codes must still verify.
    const OLD: &str =
        "$argon2id$v=19$m=8192,t=1,p=1$gzCavu4aBA+kcDErbgaooA$W6PnbLJWI+jXrf5E2RNutJejQporZhFKgZ/gmMgwIuE";
    const OLD_SECRET: &[u8] = b"7KQM2XWDHJ9PRT3NZZ4A";

    #[test]
    fn hashes_are_standard_phc_strings_both_ways() {
        let mut h = Hasher::new();
        assert!(h.verify(OLD_SECRET, OLD));
        assert!(!h.verify(b"7KQM2XWDHJ9PRT3NZZ4B", OLD));

        let phc = h.hash(b"secret").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"), "{phc}");
        assert!(h.verify(b"secret", &phc));
        assert!(!h.verify(b"secreT", &phc));
        // Salted: the same secret hashes differently twice.
        assert_ne!(h.hash(b"secret").unwrap(), phc);
        // The argon2 crate's verifier reads what the pool writes...
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(Argon2::default()
            .verify_password(b"secret", &parsed)
            .is_ok());
        // ...and the pool reads what the crate writes, with other parameters.
        let salt = SaltString::generate(&mut OsRng);
        let other = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(64, 2, 2, None).unwrap(),
        )
        .hash_password(b"pw", &salt)
        .unwrap()
        .to_string();
        assert!(h.verify(b"pw", &other), "{other}");
        assert!(!h.verify(b"pW", &other));
    }

    #[test]
    fn malformed_or_oversized_hashes_never_verify() {
        let mut h = Hasher::new();
        let salt = SaltString::generate(&mut OsRng);
        let big = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(M_COST * 2, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &salt)
        .unwrap()
        .to_string();
        assert!(!h.verify(b"pw", &big), "more memory than the pool has");
        let slow = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(64, MAX_T_COST + 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &salt)
        .unwrap()
        .to_string();
        assert!(!h.verify(b"pw", &slow), "more passes than allowed");
        for bad in [
            "",
            "garbage",
            "$argon2id$v=19$m=8192,t=1,p=1$gzCavu4aBA+kcDErbgaooA",
            "$argon2id$v=19$m=8192,t=1,p=1",
            "$scrypt$ln=4,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=42$m=8192,t=1,p=1$gzCavu4aBA+kcDErbgaooA$W6PnbLJWI+jXrf5E2RNutJejQporZhFKgZ/gmMgwIuE",
        ] {
            assert!(!h.verify(OLD_SECRET, bad), "{bad:?}");
        }
        // Refused before any memory was taken; the first real hash takes
        // the buffer at its bound, and later ones reuse it.
        assert!(h.blocks.is_empty());
        assert!(h.verify(OLD_SECRET, OLD));
        let at = h.blocks.as_ptr();
        assert_eq!(h.blocks.len(), MAX_BLOCKS);
        h.hash(b"again").unwrap();
        assert_eq!((h.blocks.as_ptr(), h.blocks.len()), (at, MAX_BLOCKS));
    }

    #[tokio::test]
    async fn runs_jobs_on_the_workers() {
        let pool = HashPool::new(2, 4).unwrap();
        let phc = pool.run(|h| h.hash(b"abc")).await.unwrap().unwrap();
        let ok = pool.run(move |h| h.verify(b"abc", &phc)).await.unwrap();
        assert!(ok);
        let name = pool
            .run(|_| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.unwrap_or_default().starts_with("argon2-"));
    }

    /// One worker, one queue slot: with the worker held and the slot taken,
    /// every further job is refused at once with 503 `busy`, whatever its
    /// number; once the worker is free, the pool takes jobs again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_beyond_its_queue() {
        let pool = Arc::new(HashPool::new(1, 1).unwrap());
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let running = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(move |_| {
                    let _ = started_tx.send(());
                    let _ = release_rx.recv();
                    "first"
                })
                .await
            })
        };
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        // Polled once, a job is in the queue (or refused): admission never
        // waits. This one takes the one queue slot.
        let mut queued = Box::pin(pool.run(|_| "second"));
        assert!(futures::poll!(&mut queued).is_pending());
        let mut refused = Vec::new();
        for _ in 0..50 {
            match pool.run(|_| "burst").now_or_never() {
                Some(Err(e)) => refused.push(e),
                Some(Ok(_)) => panic!("a job beyond the queue ran"),
                None => panic!("a job beyond the queue was admitted to wait"),
            }
        }
        for e in &refused {
            assert!(matches!(e, Error::Busy { .. }), "{e:?}");
            assert_eq!(e.code(), "busy");
            assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(e.retry_after(), Some(RETRY_AFTER));
        }
        release_tx.send(()).unwrap();
        assert_eq!(running.await.unwrap().unwrap(), "first");
        assert_eq!(queued.await.unwrap(), "second");
        assert_eq!(pool.run(|_| "after").await.unwrap(), "after");
    }

    #[tokio::test]
    async fn a_panicking_job_does_not_take_its_worker_down() {
        let pool = HashPool::new(1, 2).unwrap();
        let r = pool.run(|_| -> u8 { panic!("boom") }).await;
        assert!(matches!(r, Err(Error::Internal(_))), "{r:?}");
        assert_eq!(pool.run(|_| 7u8).await.unwrap(), 7);
    }

    #[test]
    fn sized_to_the_host() {
        let pool = HashPool::for_host().unwrap();
        assert!((1..=4).contains(&pool.workers()));
        assert_eq!(pool.queue(), pool.workers() * QUEUE_PER_WORKER);
    }
}
