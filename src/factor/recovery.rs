//! Recovery codes: shown once, stored only as salted Argon2id hashes, spent
//! on use.
//!
//! Format: 20 symbols in five groups of four, `7KQM-2XWD-…`, drawn uniformly
//! from 31 symbols: the digits 2-9 and the capital letters without I, L and
//! O. None of 0/O, 1/I/L can be mistaken for another symbol of the set, so
//! nothing a user reads off paper is ambiguous. 20 × log2(31) ≈ 99 bits of
//! randomness (the contract asks for at least 80; 16 symbols of this set
//! would give 79.3). Case, dashes and spaces are ignored on input.
//!
//! Hashing and verifying run as jobs of the bounded hashing pool
//! (`factor::hashing`), one job per request.

use rand::rngs::OsRng;
use rand::Rng;

use super::hashing::{HashPool, Hasher};
use crate::error::Error;
use crate::store::ProfileStore;

/// The symbols of a code, in no particular order.
pub const ALPHABET: &[u8; 31] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
/// Symbols per code.
pub const LEN: usize = 20;
/// Symbols per group when shown.
pub const GROUP: usize = 4;

/// A new code from the OS CSPRNG, grouped for display.
pub fn generate() -> String {
    let mut rng = OsRng;
    let raw: Vec<u8> = (0..LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
        .collect();
    raw.chunks(GROUP)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// `n` distinct new codes.
pub fn generate_set(n: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(n);
    while out.len() < n {
        let c = generate();
        // A collision among 2^99 values does not happen; the check costs
        // nothing and keeps the promise that every code is distinct.
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// The canonical form hashed and compared: upper case, without dashes or
/// whitespace. None when what remains is not a possible code (wrong length
/// or a symbol outside the alphabet): such input never matches.
pub fn normalize(input: &str) -> Option<String> {
    let s: String = input
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (s.len() == LEN && s.bytes().all(|b| ALPHABET.contains(&b))).then_some(s)
}

/// PHC strings of `codes`, each normalized first (a string that is not a
/// possible code is an error: only [`generate`]'s output is hashed).
/// Argon2id with m = 8 MiB, t = 1, p = 1 (see [`super::hashing::M_COST`]
/// for why that is enough for ~99 random bits).
pub fn hash_with(h: &mut Hasher, codes: &[String]) -> Result<Vec<String>, Error> {
    codes
        .iter()
        .map(|c| {
            let norm = normalize(c)
                .ok_or_else(|| Error::Internal("not a recovery code was to be hashed".into()))?;
            h.hash(norm.as_bytes())
                .map_err(|e| Error::Internal(e.to_string()))
        })
        .collect()
}

/// The id of the stored code that `input` matches, if any. The parameters
/// are read from each PHC string, so codes hashed with other settings (and
/// before the hashing pool) still verify.
pub fn find_with(h: &mut Hasher, input: &str, stored: &[(i64, String)]) -> Option<i64> {
    let norm = normalize(input)?;
    stored
        .iter()
        .find(|(_, phc)| h.verify(norm.as_bytes(), phc))
        .map(|(id, _)| *id)
}

/// A new set of codes, hashed but not stored yet.
pub struct Prepared {
    codes: Vec<String>,
    hashes: Vec<String>,
}

impl Prepared {
    /// Replaces the subject's codes by these and returns them, to be shown
    /// once (only their hashes are stored).
    pub async fn store(
        self,
        profiles: &dyn ProfileStore,
        subject: &str,
    ) -> Result<Vec<String>, Error> {
        profiles
            .replace_recovery_codes(subject, &self.hashes)
            .await?;
        Ok(self.codes)
    }
}

/// `n` new codes and their hashes, as one job of `hashing`: 503 `busy` when
/// the pool is full. Nothing is stored, so a flow that must not be left half
/// done (confirming a TOTP enrollment) can hash first and commit after.
pub async fn prepare(hashing: &HashPool, n: usize) -> Result<Prepared, Error> {
    let codes = generate_set(n);
    let to_hash = codes.clone();
    let hashes = hashing.run(move |h| hash_with(h, &to_hash)).await??;
    Ok(Prepared { codes, hashes })
}

/// Replaces the subject's recovery codes by `n` new ones and returns them
/// (to be shown once; only their hashes are stored): [`prepare`], then
/// [`Prepared::store`].
pub async fn issue(
    profiles: &dyn ProfileStore,
    hashing: &HashPool,
    subject: &str,
    n: usize,
) -> Result<Vec<String>, Error> {
    prepare(hashing, n).await?.store(profiles, subject).await
}

/// Finds and spends the stored code that `input` matches: Some(codes left)
/// on success; None when nothing matches or a parallel request spent the
/// same code first (each code verifies exactly once). Trying the stored
/// codes is one job of `hashing`: 503 `busy` when the pool is full.
pub async fn redeem(
    profiles: &dyn ProfileStore,
    hashing: &HashPool,
    subject: &str,
    input: &str,
) -> Result<Option<usize>, Error> {
    let stored = profiles.recovery_codes(subject).await?;
    if stored.is_empty() || normalize(input).is_none() {
        return Ok(None);
    }
    let input = input.to_string();
    let found = hashing.run(move |h| find_with(h, &input, &stored)).await?;
    let Some(id) = found else {
        return Ok(None);
    };
    if !profiles.spend_recovery_code(subject, id).await? {
        return Ok(None);
    }
    Ok(Some(profiles.recovery_codes(subject).await?.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_and_alphabet() {
        for c in ["0", "O", "1", "I", "L", "o", "i", "l"] {
            assert!(!ALPHABET.contains(&c.as_bytes()[0]), "{c} is a look-alike");
        }
        let mut uniq = ALPHABET.to_vec();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), ALPHABET.len());
        // At least 80 bits.
        assert!(LEN as f64 * (ALPHABET.len() as f64).log2() >= 80.0);
        let c = generate();
        assert_eq!(c.len(), LEN + LEN / GROUP - 1);
        let groups: Vec<&str> = c.split('-').collect();
        assert_eq!(groups.len(), LEN / GROUP);
        assert!(groups.iter().all(|g| g.len() == GROUP));
        assert!(c.bytes().all(|b| b == b'-' || ALPHABET.contains(&b)));
        let set = generate_set(10);
        assert_eq!(set.len(), 10);
        let mut d = set.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 10);
    }

    #[test]
    fn symbols_are_uniform_enough() {
        // 31 symbols × ~650 draws each: every symbol shows up, none wildly
        // more often than the others (a broken modulo or a stuck RNG would).
        let mut counts = [0u32; 256];
        for _ in 0..1000 {
            for b in generate().bytes().filter(|b| *b != b'-') {
                counts[b as usize] += 1;
            }
        }
        let seen: Vec<u32> = ALPHABET.iter().map(|&b| counts[b as usize]).collect();
        let (min, max) = (*seen.iter().min().unwrap(), *seen.iter().max().unwrap());
        assert!(min > 450 && max < 850, "min {min} max {max}");
    }

    #[test]
    fn normalization() {
        let c = "7KQM-2XWD-HJ9P-RT3N-ZZ4A";
        assert_eq!(normalize(c).unwrap(), "7KQM2XWDHJ9PRT3NZZ4A");
        assert_eq!(
            normalize(" 7kqm 2xwd-hj9p\trt3n zz4a ").unwrap(),
            "7KQM2XWDHJ9PRT3NZZ4A"
        );
        assert_eq!(
            normalize("7KQM2XWDHJ9PRT3NZZ4A").unwrap(),
            "7KQM2XWDHJ9PRT3NZZ4A"
        );
        assert!(normalize("7KQM-2XWD-HJ9P-RT3N").is_none());
        assert!(normalize("7KQM-2XWD-HJ9P-RT3N-ZZ4A-B").is_none());
        assert!(normalize("0KQM-2XWD-HJ9P-RT3N-ZZ4A").is_none());
        assert!(normalize("ÄKQM-2XWD-HJ9P-RT3N-ZZ4A").is_none());
        assert!(normalize("").is_none());
    }

    #[test]
    fn hash_and_find() {
        let mut h = Hasher::for_tests();
        let codes = generate_set(3);
        let hashes = hash_with(&mut h, &codes).unwrap();
        for (c, hash) in codes.iter().zip(&hashes) {
            assert!(hash.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"));
            assert!(!hash.contains(c.as_str()));
            assert!(!hash.contains(&normalize(c).unwrap()));
        }
        // Salted: the same code hashes differently twice.
        assert_ne!(hash_with(&mut h, &codes[..1]).unwrap()[0], hashes[0]);
        let stored: Vec<(i64, String)> = hashes
            .into_iter()
            .enumerate()
            .map(|(i, h)| (i as i64 + 10, h))
            .collect();
        assert_eq!(find_with(&mut h, &codes[1], &stored), Some(11));
        let sloppy = codes[2].to_lowercase().replace('-', " ");
        assert_eq!(find_with(&mut h, &sloppy, &stored), Some(12));
        assert_eq!(find_with(&mut h, &generate(), &stored), None);
        assert_eq!(find_with(&mut h, "nonsense", &stored), None);
        assert_eq!(find_with(&mut h, &codes[0], &[(1, "garbage".into())]), None);
        assert!(hash_with(&mut h, &["not a code".into()]).is_err());
    }

    /// A code stored before the hashing pool existed (hashed by the argon2
    /// crate's `PasswordHasher`) is found and spent.
    #[tokio::test]
    async fn codes_hashed_before_the_pool_still_redeem() {
        use crate::store::sqlite::SqliteProfileStore;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteProfileStore::new(&url).unwrap();
        store.migrate().await.unwrap();
        let old = "$argon2id$v=19$m=8192,t=1,p=1$gzCavu4aBA+kcDErbgaooA$W6PnbLJWI+jXrf5E2RNutJejQporZhFKgZ/gmMgwIuE";
        store
            .replace_recovery_codes("alice", &[old.to_string()])
            .await
            .unwrap();
        let pool = HashPool::new(1, 4).unwrap();
        assert_eq!(
            redeem(&store, &pool, "alice", "7KQM-2XWD-HJ9P-RT3N-ZZ4B")
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            redeem(&store, &pool, "alice", "7kqm 2xwd hj9p rt3n zz4a")
                .await
                .unwrap(),
            Some(0)
        );
    }

    #[tokio::test]
    async fn issue_and_redeem_against_a_store() {
        use crate::store::sqlite::SqliteProfileStore;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteProfileStore::new(&url).unwrap();
        store.migrate().await.unwrap();
        let pool = HashPool::new(1, 4).unwrap();
        let codes = issue(&store, &pool, "alice", 4).await.unwrap();
        assert_eq!(codes.len(), 4);
        assert_eq!(store.recovery_codes("alice").await.unwrap().len(), 4);
        assert_eq!(
            redeem(&store, &pool, "alice", &codes[2]).await.unwrap(),
            Some(3)
        );
        assert_eq!(
            redeem(&store, &pool, "alice", &codes[2]).await.unwrap(),
            None
        );
        assert_eq!(redeem(&store, &pool, "bob", &codes[1]).await.unwrap(), None);
        assert_eq!(redeem(&store, &pool, "alice", "junk").await.unwrap(), None);
        // Reissuing replaces the whole set.
        let fresh = issue(&store, &pool, "alice", 2).await.unwrap();
        assert_eq!(
            redeem(&store, &pool, "alice", &codes[0]).await.unwrap(),
            None
        );
        assert_eq!(
            redeem(&store, &pool, "alice", &fresh[0].to_lowercase())
                .await
                .unwrap(),
            Some(1)
        );
    }
}
