//! Recovery codes: shown once, stored only as salted Argon2id hashes, spent
//! on use.
//!
//! Format: 20 symbols in five groups of four, `7KQM-2XWD-…`, drawn uniformly
//! from 31 symbols: the digits 2-9 and the capital letters without I, L and
//! O. None of 0/O, 1/I/L can be mistaken for another symbol of the set, so
//! nothing a user reads off paper is ambiguous. 20 × log2(31) ≈ 99 bits of
//! randomness (the contract asks for at least 80; 16 symbols of this set
//! would give 79.3). Case, dashes and spaces are ignored on input.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params, Version};
use rand::rngs::OsRng;
use rand::Rng;

/// The symbols of a code, in no particular order.
pub const ALPHABET: &[u8; 31] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
/// Symbols per code.
pub const LEN: usize = 20;
/// Symbols per group when shown.
pub const GROUP: usize = 4;

#[derive(Debug, thiserror::Error)]
#[error("recovery code hashing failed: {0}")]
pub struct HashError(String);

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

/// Argon2id with m = 8 MiB, t = 1, p = 1.
///
/// Lighter than OWASP's password setting (m = 19 MiB, t = 2) on purpose: the
/// memory-hard cost exists to slow down guessing of low-entropy passwords,
/// while a recovery code carries ~99 random bits, so a stolen hash cannot be
/// brute-forced at any cost setting. What matters here is that the hash is
/// salted and one-way; what the cost does affect is our own latency, since
/// one verification may try every stored code (up to
/// `security.recovery_code_count`, default 10 → roughly 10 × 10 ms).
fn hasher() -> Argon2<'static> {
    // Constant, valid parameters: Params::new cannot fail for them.
    let params = Params::new(8 * 1024, 1, 1, None).unwrap_or_default();
    Argon2::new(argon2::Algorithm::Argon2id, Version::V0x13, params)
}

/// PHC string (`$argon2id$v=19$m=8192,t=1,p=1$salt$hash`) of a code, which
/// is normalized first. Blocking: call from `spawn_blocking`.
pub fn hash_blocking(code: &str) -> Result<String, HashError> {
    let norm = normalize(code).ok_or_else(|| HashError("not a recovery code".into()))?;
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(norm.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// The id of the stored code that `input` matches, if any. Blocking: call
/// from `spawn_blocking`. The parameters are read from each PHC string, so
/// codes hashed with other settings still verify.
pub fn find_blocking(input: &str, stored: &[(i64, String)]) -> Option<i64> {
    let norm = normalize(input)?;
    let h = hasher();
    stored.iter().find_map(|(id, phc)| {
        let parsed = PasswordHash::new(phc).ok()?;
        h.verify_password(norm.as_bytes(), &parsed)
            .ok()
            .map(|()| *id)
    })
}

/// Hashes each code off the async runtime.
pub async fn hash_all(codes: Vec<String>) -> Result<Vec<String>, HashError> {
    tokio::task::spawn_blocking(move || codes.iter().map(|c| hash_blocking(c)).collect())
        .await
        .map_err(|e| HashError(e.to_string()))?
}

/// [`find_blocking`] off the async runtime.
pub async fn find(input: String, stored: Vec<(i64, String)>) -> Result<Option<i64>, HashError> {
    tokio::task::spawn_blocking(move || find_blocking(&input, &stored))
        .await
        .map_err(|e| HashError(e.to_string()))
}

/// Replaces the subject's recovery codes by `n` new ones and returns them
/// (to be shown once; only their hashes are stored).
pub async fn issue(
    profiles: &dyn crate::store::ProfileStore,
    subject: &str,
    n: usize,
) -> Result<Vec<String>, crate::error::Error> {
    let codes = generate_set(n);
    let hashes = hash_all(codes.clone())
        .await
        .map_err(|e| crate::error::Error::Internal(e.to_string()))?;
    profiles.replace_recovery_codes(subject, &hashes).await?;
    Ok(codes)
}

/// Finds and spends the stored code that `input` matches: Some(codes left)
/// on success; None when nothing matches or a parallel request spent the
/// same code first (each code verifies exactly once).
pub async fn redeem(
    profiles: &dyn crate::store::ProfileStore,
    subject: &str,
    input: &str,
) -> Result<Option<usize>, crate::error::Error> {
    let stored = profiles.recovery_codes(subject).await?;
    if stored.is_empty() || normalize(input).is_none() {
        return Ok(None);
    }
    let found = find(input.to_string(), stored)
        .await
        .map_err(|e| crate::error::Error::Internal(e.to_string()))?;
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
        let codes = generate_set(3);
        let hashes: Vec<String> = codes.iter().map(|c| hash_blocking(c).unwrap()).collect();
        for (c, h) in codes.iter().zip(&hashes) {
            assert!(h.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"));
            assert!(!h.contains(c.as_str()));
            assert!(!h.contains(&normalize(c).unwrap()));
        }
        // Salted: the same code hashes differently twice.
        assert_ne!(hash_blocking(&codes[0]).unwrap(), hashes[0]);
        let stored: Vec<(i64, String)> = hashes
            .into_iter()
            .enumerate()
            .map(|(i, h)| (i as i64 + 10, h))
            .collect();
        assert_eq!(find_blocking(&codes[1], &stored), Some(11));
        let sloppy = codes[2].to_lowercase().replace('-', " ");
        assert_eq!(find_blocking(&sloppy, &stored), Some(12));
        assert_eq!(find_blocking(&generate(), &stored), None);
        assert_eq!(find_blocking("nonsense", &stored), None);
        assert_eq!(find_blocking(&codes[0], &[(1, "garbage".into())]), None);
    }

    #[tokio::test]
    async fn async_wrappers() {
        let codes = generate_set(2);
        let hashes = hash_all(codes.clone()).await.unwrap();
        let stored = vec![(1, hashes[0].clone()), (2, hashes[1].clone())];
        assert_eq!(find(codes[1].clone(), stored).await.unwrap(), Some(2));
    }

    #[tokio::test]
    async fn issue_and_redeem_against_a_store() {
        use crate::store::sqlite::SqliteProfileStore;
        use crate::store::ProfileStore;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteProfileStore::new(&url).unwrap();
        store.migrate().await.unwrap();
        let codes = issue(&store, "alice", 4).await.unwrap();
        assert_eq!(codes.len(), 4);
        assert_eq!(store.recovery_codes("alice").await.unwrap().len(), 4);
        assert_eq!(redeem(&store, "alice", &codes[2]).await.unwrap(), Some(3));
        assert_eq!(redeem(&store, "alice", &codes[2]).await.unwrap(), None);
        assert_eq!(redeem(&store, "bob", &codes[1]).await.unwrap(), None);
        assert_eq!(redeem(&store, "alice", "junk").await.unwrap(), None);
        // Reissuing replaces the whole set.
        let fresh = issue(&store, "alice", 2).await.unwrap();
        assert_eq!(redeem(&store, "alice", &codes[0]).await.unwrap(), None);
        assert_eq!(
            redeem(&store, "alice", &fresh[0].to_lowercase())
                .await
                .unwrap(),
            Some(1)
        );
    }
}
