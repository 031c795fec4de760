//! Email through the Resend HTTP API: `POST {email.resend_api_url}/emails`
//! with `Authorization: Bearer <key>` and a JSON body `from`, `to` (a list),
//! `subject`, `html`, `text`.

use async_trait::async_trait;
use serde_json::json;

use super::{http_send_error, http_status_error, DeliveryError, Email, EmailSender};
use crate::config::Secret;

pub struct Resend {
    http: reqwest::Client,
    url: String,
    key: Secret,
    from: String,
}

impl Resend {
    pub fn new(
        http: reqwest::Client,
        base: &str,
        key: Secret,
        from: String,
    ) -> Result<Self, String> {
        let base = base.trim_end_matches('/');
        url::Url::parse(base).map_err(|e| format!("email.resend_api_url: {e}"))?;
        Ok(Self {
            http,
            url: format!("{base}/emails"),
            key,
            from,
        })
    }
}

#[async_trait]
impl EmailSender for Resend {
    fn name(&self) -> &'static str {
        "resend"
    }

    async fn send(&self, msg: &Email) -> Result<(), DeliveryError> {
        let body = json!({
            "from": self.from,
            "to": [msg.to],
            "subject": msg.subject,
            "html": msg.html,
            "text": msg.text,
        });
        let resp = self
            .http
            .post(&self.url)
            .bearer_auth(self.key.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| http_send_error("resend", &e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(http_status_error("resend", resp.status()))
        }
    }
}
