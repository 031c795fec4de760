//! The messages we send: one-time codes (an email with text and HTML
//! parts, a short SMS) and change notices (never a code), each rendered from
//! its templates (`templates`) in the reader's language (`locales`), and the
//! variables each template is given (docs/messages.md).

use std::time::Duration;

use minijinja::value::Value;

use super::locales::Locale;
use super::templates::{Channel, Messages, RenderError, Vars};
use crate::factor::otp::Purpose;

#[derive(Debug, Clone)]
pub struct Email {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// A change to the account worth telling its owner about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Sent to the old address; `new` is the new address.
    EmailChanged {
        new: String,
    },
    /// Sent to the old number; `new` is the new number.
    MobileChanged {
        new: String,
    },
    TotpEnrolled,
    TotpRemoved,
    /// A passkey (WebAuthn credential) was registered, or removed.
    PasskeyAdded,
    PasskeyRemoved,
    RecoveryCodesRegenerated,
    /// A remembered device was revoked because a token it had already
    /// replaced came back: a copy of it is in someone else's hands.
    DeviceRevoked,
}

impl Notice {
    /// A stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::EmailChanged { .. } => "email_changed",
            Notice::MobileChanged { .. } => "mobile_changed",
            Notice::TotpEnrolled => "totp_enrolled",
            Notice::TotpRemoved => "totp_removed",
            Notice::PasskeyAdded => "passkey_added",
            Notice::PasskeyRemoved => "passkey_removed",
            Notice::RecoveryCodesRegenerated => "recovery_codes_regenerated",
            Notice::DeviceRevoked => "device_revoked",
        }
    }
}

/// "10 minutes", "1 Stunde", "90 seconds": in the reader's language
/// (`duration.*` strings), English if the locale lacks them.
pub fn human(d: Duration, l: &Locale) -> String {
    let s = d.as_secs();
    let (n, unit) = if s >= 3600 && s.is_multiple_of(3600) {
        (s / 3600, "hour")
    } else if s >= 60 && s.is_multiple_of(60) {
        (s / 60, "minute")
    } else {
        (s, "second")
    };
    // English and German plurals: one for 1, other for the rest.
    let form = if n == 1 { "one" } else { "other" };
    match l.get(&format!("duration.{unit}_{form}")) {
        Some(pattern) => pattern.replace("{n}", &n.to_string()),
        None => format!("{n} {unit}{}", if n == 1 { "" } else { "s" }),
    }
}

/// `a***e@example.com`: enough for the owner to recognise, little for
/// anyone else.
pub fn mask_email(addr: &str) -> String {
    match addr.rsplit_once('@') {
        Some((local, domain)) => {
            let chars: Vec<char> = local.chars().collect();
            let masked = match chars.len() {
                0 => String::new(),
                1 | 2 => format!("{}***", chars[0]),
                n => format!("{}***{}", chars[0], chars[n - 1]),
            };
            format!("{masked}@{domain}")
        }
        None => "***".into(),
    }
}

/// `+*******0123`: the last four digits.
pub fn mask_mobile(num: &str) -> String {
    let digits: Vec<char> = num.chars().filter(char::is_ascii_digit).collect();
    if digits.len() <= 4 {
        return "****".into();
    }
    let tail: String = digits[digits.len() - 4..].iter().collect();
    format!("+{}{tail}", "*".repeat(digits.len() - 4))
}

/// The code in sample messages; a subject that shows it is refused.
pub(super) const SAMPLE_CODE: &str = "246810";

/// One message of each kind and channel with sample data: what start-up
/// renders to check every template.
pub(super) struct Sample {
    pub base: &'static str,
    pub channel: Channel,
    pub vars: Vars,
}

pub(super) fn samples(l: &Locale) -> Vec<Sample> {
    let ttl = Duration::from_secs(600);
    let mut out = vec![
        Sample {
            base: Purpose::Login.template(),
            channel: Channel::Email,
            vars: code_email_vars(SAMPLE_CODE, ttl, Purpose::Login, l),
        },
        Sample {
            base: Purpose::Contact.template(),
            channel: Channel::Email,
            vars: code_email_vars(SAMPLE_CODE, ttl, Purpose::Contact, l),
        },
        Sample {
            base: CODE_SMS,
            channel: Channel::Sms,
            vars: code_vars(SAMPLE_CODE, ttl, l),
        },
    ];
    for n in [
        Notice::EmailChanged {
            new: "new.address@example.com".into(),
        },
        Notice::MobileChanged {
            new: "+4915123456789".into(),
        },
        Notice::TotpEnrolled,
        Notice::TotpRemoved,
        Notice::PasskeyAdded,
        Notice::PasskeyRemoved,
        Notice::RecoveryCodesRegenerated,
        Notice::DeviceRevoked,
    ] {
        for channel in [Channel::Email, Channel::Sms] {
            out.push(Sample {
                base: n.kind(),
                channel,
                vars: n.vars(),
            });
        }
    }
    out
}

/// The one SMS template for codes (`send_sms_code` is not told the purpose).
const CODE_SMS: &str = "code";

trait PurposeTemplate {
    fn template(self) -> &'static str;
}

impl PurposeTemplate for Purpose {
    fn template(self) -> &'static str {
        match self {
            Purpose::Login => "login_code",
            Purpose::Contact => "contact_code",
        }
    }
}

fn code_vars(code: &str, ttl: Duration, l: &Locale) -> Vars {
    vec![
        ("code", Value::from(code)),
        ("expires_in", Value::from(human(ttl, l))),
        ("ttl_seconds", Value::from(ttl.as_secs())),
    ]
}

fn code_email_vars(code: &str, ttl: Duration, purpose: Purpose, l: &Locale) -> Vars {
    let mut v = code_vars(code, ttl, l);
    v.push(("purpose", Value::from(purpose.as_str())));
    v
}

impl Notice {
    /// Contacts are masked: the notice may go to an address that is no
    /// longer the user's.
    fn vars(&self) -> Vars {
        match self {
            Notice::EmailChanged { new } => vec![("new_email", Value::from(mask_email(new)))],
            Notice::MobileChanged { new } => vec![("new_mobile", Value::from(mask_mobile(new)))],
            Notice::TotpEnrolled
            | Notice::TotpRemoved
            | Notice::PasskeyAdded
            | Notice::PasskeyRemoved
            | Notice::RecoveryCodesRegenerated
            | Notice::DeviceRevoked => vec![],
        }
    }
}

impl Messages {
    /// A one-time code by email (`login_code.*` or `contact_code.*`).
    pub fn code_email(
        &self,
        locale: Option<&str>,
        to: &str,
        code: &str,
        ttl: Duration,
        purpose: Purpose,
    ) -> Result<Email, RenderError> {
        self.email(purpose.template(), locale, to, |l| {
            code_email_vars(code, ttl, purpose, l)
        })
    }

    /// A one-time code by SMS (`code.sms.txt`): the code first.
    pub fn code_sms(
        &self,
        locale: Option<&str>,
        to: &str,
        code: &str,
        ttl: Duration,
    ) -> Result<String, RenderError> {
        self.sms(CODE_SMS, locale, to, |l| code_vars(code, ttl, l))
    }

    /// A change notice by email (`<kind>.*`); never a code.
    pub fn notice_email(
        &self,
        locale: Option<&str>,
        to: &str,
        n: &Notice,
    ) -> Result<Email, RenderError> {
        self.email(n.kind(), locale, to, |_| n.vars())
    }

    /// A change notice by SMS (`<kind>.sms.txt`).
    pub fn notice_sms(
        &self,
        locale: Option<&str>,
        to: &str,
        n: &Notice,
    ) -> Result<String, RenderError> {
        self.sms(n.kind(), locale, to, |_| n.vars())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::templates::Product;

    const TTL: Duration = Duration::from_secs(600);

    fn product() -> Product {
        Product {
            name: "ACME Login".into(),
            url: Some("https://acme.example/".into()),
            support_url: Some("https://acme.example/help?a=1&b=2".into()),
        }
    }

    fn messages() -> Messages {
        Messages::embedded(product()).unwrap()
    }

    /// GSM 03.38 basic alphabet: what fits 160 characters to one SMS.
    fn gsm7(s: &str) -> bool {
        const GSM: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                           ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
        s.chars().all(|c| GSM.contains(c))
    }

    #[test]
    fn every_locale_renders_every_message() {
        let m = messages();
        let tags: Vec<String> = m.locales().tags().map(str::to_owned).collect();
        assert_eq!(tags, ["de", "en"]);
        for tag in &tags {
            let l = Some(tag.as_str());
            for p in [Purpose::Login, Purpose::Contact] {
                let e = m
                    .code_email(l, "alice@example.com", "123456", TTL, p)
                    .unwrap();
                assert!(
                    e.text.contains("123456") && e.html.contains("123456"),
                    "{tag}"
                );
                assert!(!e.subject.contains("123456") && !e.subject.contains('\n'));
                assert!(e.html.starts_with("<!DOCTYPE html>"), "{tag}: {}", e.html);
                assert!(e.html.contains(&format!("<html lang=\"{tag}\">")));
                assert!(e.text.contains("ACME Login") && e.html.contains("ACME Login"));
                assert!(
                    e.text.ends_with('\n') && !e.text.contains("\n\n\n"),
                    "{:?}",
                    e.text
                );
            }
            let sms = m.code_sms(l, "+14155550123", "123456", TTL).unwrap();
            assert!(sms.starts_with("123456 "), "the code first: {sms}");
            assert!(
                sms.chars().count() <= 160 && gsm7(&sms),
                "{tag}: one segment: {sms}"
            );
            for n in [
                Notice::EmailChanged {
                    new: "mallory@evil.example".into(),
                },
                Notice::MobileChanged {
                    new: "+14155550123".into(),
                },
                Notice::TotpEnrolled,
                Notice::TotpRemoved,
                Notice::RecoveryCodesRegenerated,
                Notice::DeviceRevoked,
            ] {
                let e = m.notice_email(l, "alice@example.com", &n).unwrap();
                assert!(!e.subject.is_empty() && !e.text.is_empty() && !e.html.is_empty());
                let s = m.notice_sms(l, "+14155550123", &n).unwrap();
                assert!(
                    s.chars().count() <= 160 && gsm7(&s),
                    "{tag} {}: {s}",
                    n.kind()
                );
                assert!(!s.contains("mallory@") && !e.text.contains("mallory@"));
                assert!(!s.contains("5550123") && !e.text.contains("5550123"));
            }
        }
    }

    #[test]
    fn german_is_picked_for_de_de_and_unknown_locales_fall_back() {
        let m = messages();
        for tag in ["de", "de-DE", "de_DE", "de-AT"] {
            let e = m
                .code_email(Some(tag), "a@example.com", "123456", TTL, Purpose::Login)
                .unwrap();
            assert!(
                e.text.contains("Ihr Bestätigungscode lautet: 123456"),
                "{tag}: {}",
                e.text
            );
            assert!(e.text.contains("in 10 Minuten ab"), "{}", e.text);
            assert!(
                e.subject.contains("Bestätigungscode für ACME Login"),
                "{}",
                e.subject
            );
            assert!(e.html.contains("<html lang=\"de\">"));
            let s = m
                .code_sms(Some(tag), "+14155550123", "123456", TTL)
                .unwrap();
            assert!(s.contains("läuft in 10 Minuten ab"), "{s}");
        }
        for tag in [None, Some("fr"), Some("zz-ZZ"), Some("not a tag"), Some("")] {
            let e = m
                .code_email(tag, "a@example.com", "123456", TTL, Purpose::Login)
                .unwrap();
            assert!(
                e.text.contains("Your verification code is: 123456"),
                "{tag:?}"
            );
            assert!(e.text.contains("It expires in 10 minutes."), "{}", e.text);
        }
        let e = m
            .code_email(
                Some("de"),
                "a@example.com",
                "1",
                Duration::from_secs(60),
                Purpose::Login,
            )
            .unwrap();
        assert!(e.text.contains("in 1 Minute ab"), "{}", e.text);
        let (m, _) = Messages::load(None, "de", product()).unwrap();
        let e = m
            .code_email(Some("fr"), "a@example.com", "1", TTL, Purpose::Login)
            .unwrap();
        assert!(
            e.text.contains("Bestätigungscode"),
            "the default locale: {}",
            e.text
        );
    }

    #[test]
    fn html_parts_escape_what_came_from_users_and_text_parts_do_not() {
        let m = messages();
        let to = "\"<script>alert(1)</script>\"@example.com";
        let e = m
            .code_email(None, to, "123456", TTL, Purpose::Contact)
            .unwrap();
        assert!(e.text.contains(to), "plain in the text part: {}", e.text);
        assert!(!e.html.contains("<script>"), "{}", e.html);
        assert!(e.html.contains("&lt;script&gt;"), "{}", e.html);
        assert!(e.html.contains("&quot;&lt;script&gt;"), "{}", e.html);
        // Links and the product are escaped too (they are operator input).
        assert!(
            e.html
                .contains("https:&#x2f;&#x2f;acme.example&#x2f;help?a=1&amp;b=2"),
            "{}",
            e.html
        );
        let m = Messages::embedded(Product {
            name: "<b>Evil</b> & Co".into(),
            url: None,
            support_url: None,
        })
        .unwrap();
        let e = m
            .notice_email(Some("de"), "a@example.com", &Notice::TotpRemoved)
            .unwrap();
        assert!(
            e.html.contains("&lt;b&gt;Evil&lt;&#x2f;b&gt; &amp; Co"),
            "{}",
            e.html
        );
        assert!(!e.html.contains("<b>"));
        assert!(e.text.contains("<b>Evil</b> & Co"));
        assert!(
            !e.html.contains("href"),
            "no links without URLs: {}",
            e.html
        );
    }

    #[test]
    fn notices_carry_no_code_and_mask_contacts() {
        let m = messages();
        let n = Notice::EmailChanged {
            new: "mallory@evil.example".into(),
        };
        let e = m.notice_email(None, "alice@example.com", &n).unwrap();
        assert!(
            e.subject.contains("email address was changed"),
            "{}",
            e.subject
        );
        assert!(e.text.contains("m***y@evil.example"), "{}", e.text);
        assert!(!e.text.contains("mallory@"));
        let s = m
            .notice_sms(
                None,
                "+14155550000",
                &Notice::MobileChanged {
                    new: "+14155550123".into(),
                },
            )
            .unwrap();
        assert!(s.contains("+*******0123"), "{s}");
        assert!(s.starts_with("ACME Login: "), "{s}");
    }

    #[test]
    fn an_override_directory_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("login_code.subject.txt"),
            "[{{ product_name }}] {{ t(\"login_code.subject\") }}",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("base.html"),
            "<html><body class=\"brand\">{% block body %}{% endblock %}{% include \"_footer.html\" %}</body></html>",
        )
        .unwrap();
        std::fs::write(dir.path().join("_footer.html"), "<footer>{{ to }}</footer>").unwrap();
        std::fs::write(
            dir.path().join("code.sms.txt"),
            "{{ code }} {{ t(\"sms_hint\", minutes=ttl_seconds // 60) }}",
        )
        .unwrap();
        std::fs::write(dir.path().join("README.md"), "ignored").unwrap();
        let ldir = dir.path().join("locales");
        std::fs::create_dir(&ldir).unwrap();
        std::fs::write(
            ldir.join("en.toml"),
            "sms_hint = \"valid {minutes} min\"\n[common]\ncode_intro = \"Here is your code:\"\n",
        )
        .unwrap();
        std::fs::write(
            ldir.join("de.toml"),
            "sms_hint = \"gültig {minutes} min\"\n",
        )
        .unwrap();
        let (m, _) = Messages::load(Some(dir.path()), "en", product()).unwrap();
        let e = m
            .code_email(None, "<x>@example.com", "123456", TTL, Purpose::Login)
            .unwrap();
        assert_eq!(e.subject, "[ACME Login] Your ACME Login verification code");
        assert!(e.text.contains("Here is your code: 123456"), "{}", e.text);
        assert!(
            e.html.starts_with("<html><body class=\"brand\">"),
            "{}",
            e.html
        );
        assert!(
            e.html.contains("<footer>&lt;x&gt;@example.com</footer>"),
            "{}",
            e.html
        );
        let s = m
            .code_sms(Some("de"), "+14155550123", "123456", TTL)
            .unwrap();
        assert_eq!(s, "123456 gültig 10 min");
        // What was not overridden stays as it was.
        let e = m
            .code_email(Some("de"), "a@example.com", "123456", TTL, Purpose::Login)
            .unwrap();
        assert!(
            e.text.contains("Ihr Bestätigungscode lautet: 123456"),
            "{}",
            e.text
        );
    }

    fn broken(files: &[(&str, &str)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let e = Messages::load(Some(dir.path()), "en", product())
            .err()
            .expect("refused");
        assert_eq!(e.key, "email.templates_dir");
        e.to_string()
    }

    #[test]
    fn a_broken_override_is_a_clear_error_naming_the_file() {
        let e = broken(&[("login_code.html", "<p>{{ code </p>")]);
        assert!(
            e.contains("login_code.html") && e.contains("syntax error"),
            "{e}"
        );
        let e = broken(&[("login_code.txt", "{{ cod }}")]);
        assert!(
            e.contains("login_code.txt") && e.contains("undefined"),
            "{e}"
        );
        let e = broken(&[(
            "base.html",
            "{% block body %}{% endblock %}{{ product.name }}",
        )]);
        assert!(e.contains("base.html") && e.contains("undefined"), "{e}");
        let e = broken(&[("totp_removed.sms.txt", "{{ t(\"no.such.key\") }}")]);
        assert!(
            e.contains("totp_removed.sms.txt") && e.contains("no.such.key"),
            "{e}"
        );
        let e = broken(&[("login-code.html", "x")]);
        assert!(
            e.contains("login-code.html") && e.contains("not a template name"),
            "{e}"
        );
        let e = broken(&[("login_code.subject.txt", "{{ code }} is your code")]);
        assert!(
            e.contains("login_code.subject.txt") && e.contains("must not show the code"),
            "{e}"
        );
        let e = broken(&[("code.sms.txt", "{% if false %}{{ code }}{% endif %}")]);
        assert!(e.contains("code.sms.txt") && e.contains("empty SMS"), "{e}");
        let e = broken(&[("locales/de.toml", "[common]\nexpires = \"in {ttl}\"\n")]);
        assert!(
            e.contains("de.toml") && e.contains("{ttl}") && e.contains("common.expires"),
            "{e}"
        );
        assert!(e.contains("locale de"), "{e}");
    }

    #[test]
    fn masks_and_durations() {
        let en = crate::delivery::locales::Locales::embedded().pick(None);
        let de = crate::delivery::locales::Locales::embedded().pick(Some("de"));
        assert_eq!(mask_email("alice@example.com"), "a***e@example.com");
        assert_eq!(mask_email("al@example.com"), "a***@example.com");
        assert_eq!(mask_email("nonsense"), "***");
        assert_eq!(mask_mobile("+14155550123"), "+*******0123");
        assert_eq!(human(Duration::from_secs(600), en), "10 minutes");
        assert_eq!(human(Duration::from_secs(3600), en), "1 hour");
        assert_eq!(human(Duration::from_secs(90), en), "90 seconds");
        assert_eq!(human(Duration::from_secs(7200), de), "2 Stunden");
        assert_eq!(human(Duration::from_secs(1), de), "1 Sekunde");
    }
}
