//! SMS through Twilio's Messages API:
//! `POST {sms.twilio_api_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`,
//! form fields `To`, `From`, `Body`, HTTP basic auth `AccountSid:AuthToken`.

use async_trait::async_trait;

use super::{http_send_error, http_status_error, DeliveryError, SmsSender};
use crate::config::Secret;

pub struct Twilio {
    http: reqwest::Client,
    url: String,
    sid: String,
    token: Secret,
    from: String,
}

impl Twilio {
    pub fn new(
        http: reqwest::Client,
        base: &str,
        sid: &str,
        token: Secret,
        from: &str,
    ) -> Result<Self, String> {
        let base = base.trim_end_matches('/');
        url::Url::parse(base).map_err(|e| format!("sms.twilio_api_url: {e}"))?;
        if sid.is_empty() || !sid.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(
                "sms.twilio_account_sid: an account SID is letters and digits (AC…)".into(),
            );
        }
        Ok(Self {
            http,
            url: format!("{base}/2010-04-01/Accounts/{sid}/Messages.json"),
            sid: sid.to_string(),
            token,
            from: from.to_string(),
        })
    }
}

#[async_trait]
impl SmsSender for Twilio {
    fn name(&self) -> &'static str {
        "twilio"
    }

    async fn send(&self, to: &str, body: &str) -> Result<(), DeliveryError> {
        let resp = self
            .http
            .post(&self.url)
            .basic_auth(&self.sid, Some(self.token.expose()))
            .form(&[("To", to), ("From", self.from.as_str()), ("Body", body)])
            .send()
            .await
            .map_err(|e| http_send_error("twilio", &e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(http_status_error("twilio", resp.status()))
        }
    }
}
