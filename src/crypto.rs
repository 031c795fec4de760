//! Secrets at rest and one-time-code hygiene: AES-256-GCM with a key ring
//! (`security.encryption_keys`: the first key encrypts, all decrypt, so keys
//! can rotate), a keyed hash for one-time codes (issued under the first key,
//! checked under every key, so rotation never breaks a code already sent),
//! constant-time comparison, and CSPRNG codes.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::SecretList;

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("no encryption key with id `{0}` is configured")]
    UnknownKey(String),
    #[error("ciphertext does not authenticate")]
    Corrupt,
    #[error("invalid key material")]
    BadKey,
}

pub struct KeyRing {
    /// (id, cipher); the first encrypts.
    keys: Vec<(String, Aes256Gcm)>,
    /// One code-hash key per encryption key, in the same order: the first
    /// hashes new codes, every one is tried when a code is checked.
    code_mac_keys: Vec<[u8; 32]>,
}

impl KeyRing {
    /// From validated `security.encryption_keys` entries `ID:BASE64_32_BYTES`.
    pub fn from_config(list: &SecretList) -> Result<Self, CryptoError> {
        let mut keys = Vec::new();
        let mut code_mac_keys = Vec::new();
        for entry in &list.0 {
            let (id, b64) = entry.expose().split_once(':').ok_or(CryptoError::BadKey)?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| CryptoError::BadKey)?;
            let arr: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| CryptoError::BadKey)?;
            let cipher = Aes256Gcm::new_from_slice(&arr).map_err(|_| CryptoError::BadKey)?;
            keys.push((id.to_string(), cipher));
            code_mac_keys.push(code_mac_key(&arr)?);
        }
        if keys.is_empty() {
            return Err(CryptoError::BadKey);
        }
        Ok(Self {
            keys,
            code_mac_keys,
        })
    }

    pub fn current_key_id(&self) -> &str {
        self.keys.first().map(|(id, _)| id.as_str()).unwrap_or("")
    }

    /// Encrypts under the first key. `aad` binds the ciphertext to its owner
    /// (e.g. the subject) so a row copied to another user does not decrypt.
    /// Output: nonce (12 bytes) followed by ciphertext and tag.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<(String, Vec<u8>), CryptoError> {
        let (id, cipher) = self.keys.first().ok_or(CryptoError::BadKey)?;
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::BadKey)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok((id.clone(), out))
    }

    pub fn decrypt(&self, key_id: &str, data: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_string()))?;
        if data.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Corrupt);
        }
        let (nonce, ct) = data.split_at(NONCE_LEN);
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| CryptoError::Corrupt)
    }

    /// Keyed hash of a one-time code and everything it is bound to; stored
    /// instead of the code. Hex. Under the first key's code-hash key.
    pub fn code_hash(&self, parts: &[&[u8]]) -> String {
        self.code_mac_keys
            .first()
            .map(|k| code_hash_under(k, parts))
            .unwrap_or_default()
    }

    /// Whether `stored` is the code hash of `parts` under any configured key,
    /// compared in constant time. A code sent before a new key was put first
    /// is hashed under a key that is now further down the list: it must still
    /// verify until it expires (rotation must not invalidate codes already
    /// sent). Every key is tried, with no early exit.
    pub fn code_hash_matches(&self, stored: &str, parts: &[&[u8]]) -> bool {
        self.code_mac_keys.iter().fold(false, |found, k| {
            found | ct_eq(code_hash_under(k, parts).as_bytes(), stored.as_bytes())
        })
    }
}

/// The code-hash key of one encryption key: separate, and derived so that a
/// leaked code hash says nothing about the encryption key (HMAC as a PRF,
/// RFC 5869 style).
fn code_mac_key(encryption_key: &[u8; 32]) -> Result<[u8; 32], CryptoError> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(encryption_key).map_err(|_| CryptoError::BadKey)?;
    mac.update(b"twofa-authz one-time-code hash v1");
    Ok(mac.finalize().into_bytes().into())
}

fn code_hash_under(key: &[u8; 32], parts: &[&[u8]]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac());
    for p in parts {
        // Length-prefix each part so ("ab","c") and ("a","bc") differ.
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

#[cold]
fn unreachable_hmac() -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so new_from_slice cannot fail; this
    // keeps the signature infallible without a panic path.
    <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]).unwrap_or_else(|_| unreachable_hmac())
}

/// Constant-time equality of two byte strings (length may leak, content not).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// `n` uniformly random decimal digits from the OS CSPRNG.
pub fn random_digits(n: usize) -> String {
    let mut rng = OsRng;
    (0..n)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

/// `n` random bytes from the OS CSPRNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    OsRng.fill_bytes(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn ring(keys: &[&str]) -> KeyRing {
        KeyRing::from_config(&SecretList(keys.iter().map(|k| Secret::new(*k)).collect())).unwrap()
    }
    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "k2:HxwdHh8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRo=";

    #[test]
    fn encrypts_and_rotates() {
        let old = ring(&[K1]);
        let (id, ct) = old.encrypt(b"JBSWY3DPEHPK3PXP", b"alice").unwrap();
        assert_eq!(id, "k1");
        assert!(!ct.windows(16).any(|w| w == b"JBSWY3DPEHPK3PXP"));
        // After rotation the new key encrypts and the old still decrypts.
        let rotated = ring(&[K2, K1]);
        assert_eq!(
            rotated.decrypt(&id, &ct, b"alice").unwrap(),
            b"JBSWY3DPEHPK3PXP"
        );
        assert_eq!(rotated.encrypt(b"x", b"a").unwrap().0, "k2");
        // Bound to its owner and tamper-evident.
        assert!(matches!(
            rotated.decrypt(&id, &ct, b"mallory"),
            Err(CryptoError::Corrupt)
        ));
        let mut bad = ct.clone();
        bad[20] ^= 1;
        assert!(matches!(
            rotated.decrypt(&id, &bad, b"alice"),
            Err(CryptoError::Corrupt)
        ));
        assert!(matches!(
            ring(&[K2]).decrypt(&id, &ct, b"alice"),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn codes_and_hashes() {
        let r = ring(&[K1]);
        assert_ne!(r.code_hash(&[b"ab", b"c"]), r.code_hash(&[b"a", b"bc"]));
        assert_eq!(r.code_hash(&[b"123456"]), r.code_hash(&[b"123456"]));
        assert_ne!(
            r.code_hash(&[b"123456"]),
            ring(&[K2]).code_hash(&[b"123456"])
        );
        let d = random_digits(8);
        assert_eq!(d.len(), 8);
        assert!(d.bytes().all(|b| b.is_ascii_digit()));
        assert!(r.code_hash_matches(&r.code_hash(&[b"123456"]), &[b"123456"]));
        assert!(!r.code_hash_matches(&r.code_hash(&[b"123456"]), &[b"123457"]));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    /// Rotation: a code hashed while K1 came first still verifies once K2 is
    /// put first (and K1 kept), and with K1 alone; new codes are hashed under
    /// K2, which K1 alone does not accept. Dropping K1 ends the old codes,
    /// as dropping a key is meant to.
    #[test]
    fn code_hashes_survive_key_rotation() {
        let parts: &[&[u8]] = &[b"twofa otp v1", b"123456", b"login"];
        let before = ring(&[K1]).code_hash(parts);
        let rotated = ring(&[K2, K1]);
        assert!(rotated.code_hash_matches(&before, parts));
        assert!(!rotated.code_hash_matches(&before, &[b"twofa otp v1", b"123457", b"login"]));
        // The order of the old keys does not matter either.
        assert!(ring(&[K2, K1]).code_hash_matches(&ring(&[K1, K2]).code_hash(parts), parts));
        let after = rotated.code_hash(parts);
        assert_ne!(after, before, "new codes are hashed under the first key");
        assert_eq!(after, ring(&[K2]).code_hash(parts));
        assert!(rotated.code_hash_matches(&after, parts));
        assert!(!ring(&[K1]).code_hash_matches(&after, parts));
        assert!(!ring(&[K2]).code_hash_matches(&before, parts));
        assert!(!rotated.code_hash_matches("", parts));
        assert!(!rotated.code_hash_matches(&before[..10], parts));
    }
}
