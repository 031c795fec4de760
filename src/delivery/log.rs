//! The `log` provider: nothing is sent. In dev mode (`serve --dev`) the
//! message, code included, goes to the log so that the whole flow can be
//! tried on one machine. Outside dev mode a code must never reach a log, so
//! only the fact that nothing was sent is logged.

use async_trait::async_trait;

use super::{mask_email, mask_mobile, DeliveryError, Email, EmailSender, SmsSender};

pub struct LogEmail {
    pub dev: bool,
}

#[async_trait]
impl EmailSender for LogEmail {
    fn name(&self) -> &'static str {
        "log"
    }

    async fn send(&self, msg: &Email) -> Result<(), DeliveryError> {
        if self.dev {
            tracing::warn!(
                to = %msg.to,
                subject = %msg.subject,
                "DEV MODE email (not sent):\n{}",
                msg.text
            );
        } else {
            tracing::warn!(
                to = %mask_email(&msg.to),
                subject = %msg.subject,
                "email.provider = \"log\": email not sent (configure smtp or resend)"
            );
        }
        Ok(())
    }
}

pub struct LogSms {
    pub dev: bool,
}

#[async_trait]
impl SmsSender for LogSms {
    fn name(&self) -> &'static str {
        "log"
    }

    async fn send(&self, to: &str, body: &str) -> Result<(), DeliveryError> {
        if self.dev {
            tracing::warn!(to = %to, "DEV MODE SMS (not sent): {body}");
        } else {
            tracing::warn!(
                to = %mask_mobile(to),
                "sms.provider = \"log\": SMS not sent (configure twilio or webhook)"
            );
        }
        Ok(())
    }
}
