//! SMS through a generic gateway: `POST {sms.webhook_url}` with the JSON
//! body `{"to": "+E164", "body": "..."}` and, when configured,
//! `Authorization: Bearer {sms.webhook_bearer_token}`. Any 2xx is success.

use async_trait::async_trait;
use serde_json::json;

use super::{http_send_error, http_status_error, DeliveryError, SmsSender};
use crate::config::Secret;

pub struct Webhook {
    http: reqwest::Client,
    url: String,
    bearer: Option<Secret>,
}

impl Webhook {
    pub fn new(http: reqwest::Client, url: &str, bearer: Option<Secret>) -> Result<Self, String> {
        let u = url::Url::parse(url).map_err(|e| format!("sms.webhook_url: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err("sms.webhook_url: must be http:// or https://".into());
        }
        Ok(Self {
            http,
            url: url.to_string(),
            bearer: bearer.filter(|b| !b.is_empty()),
        })
    }
}

#[async_trait]
impl SmsSender for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn send(&self, to: &str, body: &str) -> Result<(), DeliveryError> {
        let mut req = self
            .http
            .post(&self.url)
            .json(&json!({ "to": to, "body": body }));
        if let Some(b) = &self.bearer {
            req = req.bearer_auth(b.expose());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| http_send_error("webhook", &e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(http_status_error("webhook", resp.status()))
        }
    }
}
