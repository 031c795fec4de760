//! Keycloak access tokens: the signing keys (JWKS discovery, cache, refresh),
//! validation with the contract's rules, a cache of recently verified tokens,
//! and the dev-mode issuer.

mod cache;
mod dev;
mod identity;
mod jwks;
mod validate;

pub use cache::{TokenCache, DEFAULT_CAPACITY as DEFAULT_TOKEN_CACHE_CAPACITY};
pub use dev::DevIssuer;
pub use identity::{HexKey, Identity, IdentityParts, SessionKey};
pub use jwks::{Jwks, KeySet};
pub use validate::{parse_algorithms, Reason, TokenError, Validator, MAX_TOKEN_LEN};

/// Hex SHA-256 of a session triple: the session store's key. Hashing keeps
/// keys bounded and free of whatever characters an issuer puts in `sub`.
pub fn session_hash(iss: &str, sub: &str, sid: &str) -> String {
    SessionKey::of(iss, sub, sid).hex().to_string()
}

/// Hex SHA-256 of (iss, sid): names a session in a logout token.
pub fn sid_hash(iss: &str, sid: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"sid\n");
    h.update(iss.as_bytes());
    h.update(b"\n");
    h.update(sid.as_bytes());
    hex::encode(h.finalize())
}

/// Hex SHA-256 of (iss, sub): the key of a subject's session index.
pub fn subject_hash(iss: &str, sub: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(iss.as_bytes());
    h.update(b"\n");
    h.update(sub.as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests;
