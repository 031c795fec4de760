//! Messages as templates (docs/messages.md), end to end through the real
//! SMTP server: the reader's language from the token's `locale` claim (email
//! with text and HTML parts, SMS, notices), an operator's
//! `email.templates_dir`, and a broken template refused at start (exit 2,
//! naming the file).

use std::process::Command;

use serde_json::json;

use crate::support::app::toml_string;
use crate::support::keycloak::{uuid, Token};
use crate::support::smtp::code_after;
use crate::user_common::{UserStack, ALICE_MOBILE, RESEND_INTERVAL};

const DE_MARKER: &str = "Ihr Bestätigungscode lautet:";

/// Alice in a new session whose token carries Keycloak's `locale` claim.
fn alice_speaking(us: &UserStack, locale: &str) -> Token {
    us.stack
        .keycloak
        .token()
        .sid(&uuid())
        .claim("locale", json!(locale))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_german_token_gets_german_codes_and_notices_with_text_and_html_parts() {
    let us = UserStack::start(|_| {}).await;
    us.alice();
    let de = alice_speaking(&us, "de-DE");
    us.create_profile(&de).await;

    let r = us.send_otp(&de, "email").await;
    us.expect(&r, 202, "send-otp email");
    let mail = us.smtp.wait_for("alice@example.com", 1).await;
    assert_eq!(
        mail.subject, "Ihr Bestätigungscode für 2FA-Middleware",
        "{mail:#?}"
    );
    assert!(
        mail.raw
            .to_ascii_lowercase()
            .contains("multipart/alternative"),
        "{}",
        mail.raw
    );
    assert!(
        mail.text.contains("Der Code läuft in 10 Minuten ab."),
        "{}",
        mail.text
    );
    assert!(mail
        .text
        .contains("Geben Sie diesen Code an niemanden weiter"));
    assert!(
        !mail.text.contains('<'),
        "the text part is plain: {}",
        mail.text
    );
    assert!(mail.html.contains("<html lang=\"de\">"), "{}", mail.html);
    assert!(
        mail.html.contains("Ihr Bestätigungscode lautet:"),
        "{}",
        mail.html
    );
    let code = code_after(&mail.text, DE_MARKER).expect("a code in the German text");
    assert!(mail.html.contains(&code));
    let r = us.verify(&de, "email", &code, Some("login")).await;
    us.expect(&r, 200, "verify the German login code");
    tokio::time::sleep(RESEND_INTERVAL).await;

    // SMS in German too, code first.
    let other = alice_speaking(&us, "de");
    let r = us.send_otp(&other, "mobile").await;
    us.expect(&r, 202, "send-otp mobile");
    let sms = us.sms_to(ALICE_MOBILE, 1).await;
    assert!(
        sms.body
            .contains("ist Ihr Bestätigungscode für 2FA-Middleware"),
        "{}",
        sms.body
    );
    assert!(sms.body.chars().count() <= 160);
    let r = us
        .verify(&other, "mobile", &sms.code(), Some("login"))
        .await;
    us.expect(&r, 200, "verify the German SMS code");

    // A contact change: the code to the new address and the notice to the
    // old one, both in German (the notice goes out after the request).
    let r = us
        .call("PATCH", "/user", &de, json!({"email": "alice@neu.example"}))
        .await;
    us.expect(&r, 202, "PATCH email");
    let mail = us.smtp.wait_for("alice@neu.example", 1).await;
    assert!(
        mail.subject.contains("Bestätigen Sie Ihre E-Mail-Adresse"),
        "{}",
        mail.subject
    );
    assert!(
        mail.text
            .contains("bestätigen Sie alice@neu.example als Ihre E-Mail-Adresse"),
        "{}",
        mail.text
    );
    let code = code_after(&mail.text, DE_MARKER).expect("a code");
    let r = us.verify(&de, "email", &code, None).await;
    us.expect(&r, 200, "verify the new address");
    let notice = us.smtp.wait_for("alice@example.com", 2).await;
    assert_eq!(
        notice.subject,
        "2FA-Middleware: Ihre E-Mail-Adresse wurde geändert"
    );
    assert!(
        notice.text.contains("wurde in a***e@neu.example geändert"),
        "{}",
        notice.text
    );
    assert!(
        notice.html.contains("<html lang=\"de\">"),
        "{}",
        notice.html
    );
    assert!(!notice.text.contains(&code) && !notice.html.contains(&code));

    // A token without the claim (and one with a language we lack) reads
    // English.
    tokio::time::sleep(RESEND_INTERVAL).await;
    for (n, t) in [
        (2, us.stack.keycloak.token().sid(&uuid()).build()),
        (3, alice_speaking(&us, "fr-FR")),
    ] {
        let r = us.send_otp(&t, "email").await;
        us.expect(&r, 202, "send-otp in English");
        let mail = us.smtp.wait_for("alice@neu.example", n).await;
        assert!(
            mail.text.contains("Your verification code is:"),
            "{}",
            mail.text
        );
        assert!(mail.html.contains("<html lang=\"en\">"));
        tokio::time::sleep(RESEND_INTERVAL).await;
    }
    us.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_directory_changes_subject_and_body() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("login_code.subject.txt"),
        "{{ t(\"brand.subject\") }}",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("login_code.txt"),
        "{% extends \"base.txt\" %}\n{% block body %}\n{{ t(\"brand.hello\") }}\n\nYour code is: {{ code }} ({{ expires_in }})\n{% endblock %}\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("locales")).unwrap();
    std::fs::write(
        dir.path().join("locales/en.toml"),
        "[brand]\nsubject = \"{product_name} sign-in\"\nhello = \"Hello from {product_name}!\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("locales/de.toml"),
        "[brand]\nsubject = \"Anmeldung bei {product_name}\"\nhello = \"Hallo von {product_name}!\"\n",
    )
    .unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let us = UserStack::start(move |c| {
        c.set("email", "templates_dir", toml_string(&path))
            .set_str("email", "product_name", "ACME <Cloud>")
            .set_str("email", "product_url", "https://acme.example/")
            .set_str("email", "support_url", "https://acme.example/help");
    })
    .await;
    let alice = us.alice();
    us.create_profile(&alice).await;
    let mail = us.login_code_by_email(&alice, "alice@example.com", 1).await;
    assert_eq!(mail.subject, "ACME <Cloud> sign-in");
    assert!(
        mail.text.starts_with("Hello from ACME <Cloud>!"),
        "{:?}",
        mail.text
    );
    assert!(mail.text.contains("(10 minutes)"), "{}", mail.text);
    assert!(
        mail.text.contains("https://acme.example/help"),
        "{}",
        mail.text
    );
    // The HTML part keeps the default template, with the product escaped.
    assert!(mail.html.contains("ACME &lt;Cloud&gt;"), "{}", mail.html);
    assert!(!mail.html.contains("ACME <Cloud>"));
    assert!(
        mail.html
            .contains("href=\"https:&#x2f;&#x2f;acme.example&#x2f;\""),
        "{}",
        mail.html
    );
    let r = us.verify(&alice, "email", &mail.code(), None).await;
    us.expect(&r, 200, "the overridden message's code works");
    tokio::time::sleep(RESEND_INTERVAL).await;

    let de = alice_speaking(&us, "de");
    let r = us.send_otp(&de, "email").await;
    us.expect(&r, 202, "send-otp de");
    let mail = us.smtp.wait_for("alice@example.com", 2).await;
    assert_eq!(mail.subject, "Anmeldung bei ACME <Cloud>");
    assert!(
        mail.text.starts_with("Hallo von ACME <Cloud>!"),
        "{}",
        mail.text
    );
    assert!(mail.text.contains("(10 Minuten)"), "{}", mail.text);
    assert!(
        mail.html.contains(DE_MARKER),
        "the default German HTML: {}",
        mail.html
    );
}

fn twofa(args: &[&str], config: &std::path::Path) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twofa-authz"));
    cmd.args(args).arg("--config").arg(config);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TWOFA_")) {
        cmd.env_remove(k);
    }
    let out = cmd.output().expect("run twofa-authz");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_broken_template_stops_check_config_and_serve_with_exit_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    let config = dir.path().join("twofa.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n\
             [keycloak]\nurl = \"https://sso.example.com\"\nrealm = \"demo\"\n\
             [security]\nencryption_keys = [\"k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"]\n\
             methods = [\"totp\", \"recovery\"]\n\
             [email]\ntemplates_dir = {}\n",
            toml_string(templates.to_str().unwrap())
        ),
    )
    .unwrap();
    let (code, out) = twofa(&["check-config"], &config);
    assert_eq!(code, Some(0), "an empty directory is fine: {out}");
    assert!(out.contains("templates_dir"), "{out}");

    let cases = [
        (
            "contact_code.html",
            "<p>{% if code %}{{ code }}</p>",
            "syntax error",
        ),
        ("email_changed.txt", "{{ new_emial }}", "undefined"),
        (
            "code.sms.txt",
            "{{ t(\"code_sms.txt\") }}",
            "no such string",
        ),
    ];
    for (name, text, why) in cases {
        let file = templates.join(name);
        std::fs::write(&file, text).unwrap();
        for cmd in ["check-config", "serve"] {
            let (code, out) = twofa(&[cmd], &config);
            assert_eq!(code, Some(2), "{cmd} with a broken {name}: {out}");
            assert!(out.contains("email.templates_dir"), "{cmd}: {out}");
            assert!(
                out.contains(file.to_str().unwrap()),
                "{cmd} names the file {}: {out}",
                file.display()
            );
            assert!(out.contains(why), "{cmd}: {out}");
        }
        std::fs::remove_file(&file).unwrap();
    }
    // A locale file with a bad placeholder names that file.
    std::fs::create_dir(templates.join("locales")).unwrap();
    let file = templates.join("locales/de.toml");
    std::fs::write(&file, "[common]\nexpires = \"{expires_in\"\n").unwrap();
    let (code, out) = twofa(&["check-config"], &config);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains(file.to_str().unwrap()) && out.contains("placeholder"),
        "{out}"
    );
}
