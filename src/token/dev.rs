//! The development issuer of `serve --dev`: an Ed25519 key generated at start,
//! tokens shaped like Keycloak's, trusted only in dev mode.

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::json;

use super::jwks::{Family, KeySet};
use crate::clock::SharedClock;

const KID: &str = "twofa-dev";

pub struct DevIssuer {
    issuer: String,
    encoding: EncodingKey,
    public_x: String,
    clock: SharedClock,
}

impl DevIssuer {
    pub fn generate(issuer: String, clock: SharedClock) -> Result<Arc<Self>, String> {
        let rng = SystemRandom::new();
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "cannot generate the dev key")?;
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| "cannot load the dev key")?;
        let public_x =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        Ok(Arc::new(Self {
            issuer,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            public_x,
            clock,
        }))
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn key_set(&self) -> Result<KeySet, String> {
        let key = DecodingKey::from_ed_components(&self.public_x).map_err(|e| e.to_string())?;
        Ok(KeySet::single(KID, key, Family::Ed25519, Algorithm::EdDSA))
    }

    pub fn mint(
        &self,
        sub: &str,
        username: Option<&str>,
        email: Option<&str>,
        sid: Option<&str>,
    ) -> Result<String, String> {
        let now = self.clock.now();
        let sid = sid.map(str::to_string).unwrap_or_else(random_id);
        let claims = json!({
            "iss": self.issuer,
            "sub": sub,
            "aud": "account",
            "azp": "twofa-dev",
            "typ": "Bearer",
            "iat": now,
            "exp": now + 3600,
            "jti": random_id(),
            "sid": sid,
            "preferred_username": username.unwrap_or(sub),
            "email": email,
            "email_verified": true,
            "realm_access": { "roles": ["default-roles-dev"] },
        });
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(KID.into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| e.to_string())
    }
}

pub fn random_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}
