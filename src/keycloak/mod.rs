//! Keycloak Admin REST API client, for profiles that read and write user
//! attributes (`keycloak.admin_client_id` / `admin_client_secret`: a
//! confidential client with a service account holding the realm-management
//! roles `view-users` and `manage-users`).
//!
//! - The service-account token comes from the client-credentials grant at
//!   `{url}/realms/{realm}/protocol/openid-connect/token` and is cached until
//!   shortly before it expires (and dropped at once if the API says 401).
//! - Users are read and written as `UserRepresentation` at
//!   `{url}/admin/realms/{realm}/users/{id}`. A PUT of a partial
//!   representation replaces `attributes` wholesale in recent Keycloak
//!   versions, so updates read the full representation, change it, and put
//!   it back whole, keeping members this client does not know.
//!
//! Every failure is a 502 `keycloak_admin_failed`; callers make the change
//! on our side only after Keycloak took it, so a failure never leaves a
//! half-written profile.

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use crate::clock::SharedClock;
use crate::config::{KeycloakConfig, Secret};
use crate::error::Error;

/// A cached token is used until this long before its expiry.
const TOKEN_MARGIN: i64 = 30;

pub struct AdminClient {
    http: reqwest::Client,
    token_url: String,
    users_url: String,
    client_id: String,
    secret: Secret,
    mobile_attribute: String,
    mobile_verified_attribute: String,
    clock: SharedClock,
    token: Mutex<Option<(String, i64)>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
}

/// The mobile number Keycloak holds for a user, as its attributes say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KcMobile {
    pub number: Option<String>,
    pub verified: bool,
}

fn fail(what: &str) -> Error {
    Error::KeycloakAdminFailed(what.to_string())
}

impl AdminClient {
    /// None unless the admin client is configured.
    pub fn from_config(
        kc: &KeycloakConfig,
        http: reqwest::Client,
        clock: SharedClock,
    ) -> Result<Option<Self>, String> {
        let (Some(id), Some(secret)) = (&kc.admin_client_id, &kc.admin_client_secret) else {
            return Ok(None);
        };
        let (Some(url), Some(realm)) = (&kc.url, &kc.realm) else {
            return Err(
                "keycloak.url and keycloak.realm: required for the admin client (keycloak.admin_client_id)"
                    .into(),
            );
        };
        let base = url.trim_end_matches('/');
        let realm_enc = seg(realm);
        Ok(Some(Self {
            http,
            token_url: format!("{base}/realms/{realm_enc}/protocol/openid-connect/token"),
            users_url: format!("{base}/admin/realms/{realm_enc}/users"),
            client_id: id.clone(),
            secret: secret.clone(),
            mobile_attribute: kc.mobile_attribute.clone(),
            mobile_verified_attribute: kc.mobile_verified_attribute.clone(),
            clock,
            token: Mutex::new(None),
        }))
    }

    async fn token(&self) -> Result<String, Error> {
        let mut cached = self.token.lock().await;
        let now = self.clock.now();
        if let Some((t, exp)) = cached.as_ref() {
            if *exp - TOKEN_MARGIN > now {
                return Ok(t.clone());
            }
        }
        let resp = self
            .http
            .post(&self.token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.secret.expose()),
            ])
            .send()
            .await
            .map_err(|e| fail(&format!("token endpoint: {}", kind(&e))))?;
        if !resp.status().is_success() {
            return Err(fail(&format!(
                "token endpoint answered HTTP {}",
                resp.status().as_u16()
            )));
        }
        let t: TokenResponse = resp
            .json()
            .await
            .map_err(|_| fail("token endpoint: not a token response"))?;
        // Keycloak's default is 300 s; without expires_in assume a minute.
        let exp = now + t.expires_in.unwrap_or(60).max(0);
        *cached = Some((t.access_token.clone(), exp));
        Ok(t.access_token)
    }

    async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    /// Sends an admin request, retrying once with a fresh token after a 401
    /// (the token may have been revoked or the realm keys rotated).
    async fn call(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, Error> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let resp = build(&token)
                .send()
                .await
                .map_err(|e| fail(&format!("{what}: {}", kind(&e))))?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                self.forget_token().await;
                continue;
            }
            if !resp.status().is_success() {
                return Err(fail(&format!(
                    "{what} answered HTTP {}",
                    resp.status().as_u16()
                )));
            }
            return Ok(resp);
        }
        Err(fail(&format!("{what}: unauthorized")))
    }

    fn user_url(&self, id: &str) -> String {
        format!("{}/{}", self.users_url, seg(id))
    }

    /// `GET /admin/realms/{realm}/users/{id}`: the full UserRepresentation.
    pub async fn get_user(&self, id: &str) -> Result<Map<String, Value>, Error> {
        let url = self.user_url(id);
        let resp = self
            .call(|t| self.http.get(&url).bearer_auth(t), "GET user")
            .await?;
        match resp.json::<Value>().await {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(fail("GET user: not a UserRepresentation")),
        }
    }

    /// `PUT /admin/realms/{realm}/users/{id}` with a full representation.
    pub async fn put_user(&self, id: &str, rep: &Map<String, Value>) -> Result<(), Error> {
        let url = self.user_url(id);
        self.call(|t| self.http.put(&url).bearer_auth(t).json(rep), "PUT user")
            .await
            .map(|_| ())
    }

    /// The user's mobile number and whether Keycloak says it is verified.
    pub async fn mobile(&self, id: &str) -> Result<KcMobile, Error> {
        let rep = self.get_user(id).await?;
        let attr = |name: &str| -> Option<String> {
            rep.get("attributes")?
                .get(name)?
                .as_array()?
                .first()?
                .as_str()
                .map(str::to_string)
        };
        Ok(KcMobile {
            number: attr(&self.mobile_attribute).filter(|s| !s.trim().is_empty()),
            verified: attr(&self.mobile_verified_attribute)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        })
    }

    /// Writes a newly verified email: `email` and `emailVerified: true`.
    pub async fn set_verified_email(&self, id: &str, email: &str) -> Result<(), Error> {
        let mut rep = self.get_user(id).await?;
        rep.insert("email".into(), Value::String(email.to_string()));
        rep.insert("emailVerified".into(), Value::Bool(true));
        self.put_user(id, &rep).await
    }

    /// Writes a newly verified mobile number into the two attributes,
    /// keeping every other attribute.
    pub async fn set_verified_mobile(&self, id: &str, mobile: &str) -> Result<(), Error> {
        let mut rep = self.get_user(id).await?;
        let attrs = rep
            .entry("attributes")
            .or_insert_with(|| Value::Object(Map::new()));
        if !attrs.is_object() {
            *attrs = Value::Object(Map::new());
        }
        if let Value::Object(a) = attrs {
            a.insert(
                self.mobile_attribute.clone(),
                Value::Array(vec![Value::String(mobile.to_string())]),
            );
            a.insert(
                self.mobile_verified_attribute.clone(),
                Value::Array(vec![Value::String("true".into())]),
            );
        }
        self.put_user(id, &rep).await
    }
}

/// One URL path segment: user ids and realm names are percent-encoded so
/// that no `sub` can walk to another admin endpoint.
fn seg(s: &str) -> String {
    const SEG: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SEG).to_string()
}

fn kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(seg("abc-123_x"), "abc-123_x");
        assert_eq!(seg("../../x"), "%2E%2E%2F%2E%2E%2Fx");
    }
}
