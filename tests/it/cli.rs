//! The command line of INTERFACE.md section 1: exit codes, check-config,
//! environment overrides and `_file` secrets, dev-mode guard rails.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_twofa-authz");
const KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn twofa(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    // Only what the test gives: no TWOFA_* from the developer's shell.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TWOFA_")) {
        cmd.env_remove(k);
    }
    // No delivery provider is configured here: without email and SMS among
    // the methods, `serve` and `check-config` accept the `log` default
    // (tests/it/ops.rs tests that refusal). A test's own value wins.
    cmd.env("TWOFA_SECURITY__METHODS", "totp,recovery");
    cmd.envs(env.iter().copied());
    cmd.output().expect("run twofa-authz")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_config_prints_the_effective_configuration_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("admin-secret");
    std::fs::write(&secret, "s3cr3t-admin\n").unwrap();
    let file = dir.path().join("twofa.toml");
    std::fs::write(
        &file,
        format!(
            "[keycloak]\nurl = \"https://sso.example.com\"\nrealm = \"demo\"\nadmin_client_id = \"twofa\"\nadmin_client_secret_file = \"{}\"\n\
             [storage]\ndatabase_url = \"postgres://twofa:pgpass@db/twofa\"\n[security]\nencryption_keys = [\"{KEY}\"]\n",
            secret.display()
        ),
    )
    .unwrap();
    let out = twofa(
        &["check-config", "--config", file.to_str().unwrap()],
        &[
            ("TWOFA_SECURITY__MAX_ATTEMPTS", "7"),
            ("TWOFA_KEYCLOAK__AUDIENCES", "account,api"),
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("max_attempts = 7"),
        "env overrides the file: {stdout}"
    );
    assert!(
        stdout.contains("\"account\"") && stdout.contains("\"api\""),
        "{stdout}"
    );
    for leaked in ["s3cr3t-admin", "pgpass", "AAECAwQF"] {
        assert!(!stdout.contains(leaked), "{leaked} printed: {stdout}");
    }
    assert!(stdout.contains("k1:<redacted>"), "{stdout}");
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let base = [
        ("TWOFA_KEYCLOAK__URL", "https://sso.example.com"),
        ("TWOFA_KEYCLOAK__REALM", "demo"),
    ];
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "security.encryption_keys"),
        (
            &[
                ("TWOFA_SECURITY__ENCRYPTION_KEYS", KEY),
                ("TWOFA_SECURITY__OTP_TTL", "soon"),
            ],
            "security.otp_ttl",
        ),
        (
            &[
                ("TWOFA_SECURITY__ENCRYPTION_KEYS", KEY),
                ("TWOFA_KEYCLOAK__ALGORITHMS", "HS256"),
            ],
            "keycloak.algorithms",
        ),
        (
            &[
                ("TWOFA_SECURITY__ENCRYPTION_KEYS", KEY),
                ("TWOFA_TOTP__DIGITS", "7"),
            ],
            "totp.digits",
        ),
        (
            &[("TWOFA_SECURITY__ENCRYPTION_KEYS", "k1:short")],
            "security.encryption_keys",
        ),
    ];
    for (extra, key) in cases {
        let env: Vec<(&str, &str)> = base.iter().chain(extra.iter()).copied().collect();
        for args in [&["check-config"][..], &["serve"][..]] {
            let out = twofa(args, &env);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{args:?} {extra:?}: {}",
                text(&out.stderr)
            );
            assert!(
                text(&out.stderr).contains(&format!("`{key}`")),
                "{}",
                text(&out.stderr)
            );
        }
    }
    let out = twofa(
        &["check-config", "--config", "/nonexistent/twofa.toml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
}

/// `storage.database_ca_path` and `sslmode`: check-config (and serve) name a
/// CA file that is not a CA bundle and an sslmode libpq would not take, with
/// exit 2 and without printing the URL's password; a good bundle is shown
/// with what the TLS settings mean.
#[test]
fn check_config_validates_the_database_tls_settings() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::support::tls::TestCa::new("cli test CA").write_cert(dir.path(), "ca.pem");
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let base = [
        ("TWOFA_KEYCLOAK__URL", "https://sso.example.com"),
        ("TWOFA_KEYCLOAK__REALM", "demo"),
        ("TWOFA_SECURITY__ENCRYPTION_KEYS", KEY),
    ];
    let pg = "postgres://twofa:pgpass@db.internal/twofa?sslmode=verify-full";
    let (ca, not_pem, broken, missing) = (
        ca.display().to_string(),
        not_pem.display().to_string(),
        broken.display().to_string(),
        dir.path().join("missing.pem").display().to_string(),
    );
    // (environment, the key named, what the message says)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("TWOFA_STORAGE__DATABASE_URL", pg),
                ("TWOFA_STORAGE__DATABASE_CA_PATH", &not_pem),
            ],
            "storage.database_ca_path",
            "no PEM certificate",
        ),
        (
            vec![
                ("TWOFA_STORAGE__DATABASE_URL", pg),
                ("TWOFA_STORAGE__DATABASE_CA_PATH", &broken),
            ],
            "storage.database_ca_path",
            "not a valid CA certificate",
        ),
        (
            vec![
                ("TWOFA_STORAGE__DATABASE_URL", pg),
                ("TWOFA_STORAGE__DATABASE_CA_PATH", &missing),
            ],
            "storage.database_ca_path",
            "missing.pem",
        ),
        (
            vec![(
                "TWOFA_STORAGE__DATABASE_URL",
                "postgres://twofa:pgpass@db/twofa?sslmode=verify-everything",
            )],
            "storage.database_url",
            "verify-everything",
        ),
        (
            vec![
                ("TWOFA_STORAGE__DATABASE_URL", "sqlite://twofa.db"),
                ("TWOFA_STORAGE__DATABASE_CA_PATH", &ca),
            ],
            "storage.database_ca_path",
            "postgres://",
        ),
    ];
    for (extra, key, says) in &cases {
        let env: Vec<(&str, &str)> = base.iter().chain(extra.iter()).copied().collect();
        for args in [&["check-config"][..], &["serve"][..]] {
            let out = twofa(args, &env);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} {extra:?}: {err}");
            assert!(
                err.contains(&format!("`{key}`")) && err.contains(says),
                "{args:?} should name {key} ({says}): {err}"
            );
            assert!(!err.contains("pgpass"), "{err}");
        }
    }

    let env: Vec<(&str, &str)> = base
        .iter()
        .copied()
        .chain([
            ("TWOFA_STORAGE__DATABASE_URL", pg),
            ("TWOFA_STORAGE__DATABASE_CA_PATH", ca.as_str()),
        ])
        .collect();
    let out = twofa(&["check-config"], &env);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!("database_ca_path = \"{ca}\"")),
        "{stdout}"
    );
    assert!(
        stdout.contains("sslmode=verify-full") && stdout.contains("name the host"),
        "{stdout}"
    );
    assert!(!stdout.contains("pgpass"), "{stdout}");
    let out = twofa(
        &["check-config"],
        &[
            base[0],
            base[1],
            base[2],
            ("TWOFA_STORAGE__DATABASE_URL", "postgres://twofa@db/twofa"),
        ],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("database_ca_path is unset") && stdout.contains("sslmode=prefer"),
        "{stdout}"
    );
}

#[test]
fn dev_mode_refuses_non_loopback_addresses() {
    let out = twofa(
        &["serve", "--dev"],
        &[("TWOFA_SERVER__HTTP_ADDR", "0.0.0.0:0")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("server.http_addr"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn help_and_version() {
    let out = twofa(&["--version"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = twofa(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    for cmd in ["serve", "migrate", "reset-user", "check-config"] {
        assert!(text(&out.stdout).contains(cmd), "{cmd} missing from --help");
    }
}

/// `--help` of the binary and of each subcommand documents every flag, the
/// exit codes, the environment layering (with the `__` form and `_file`
/// secrets) and an example.
#[test]
fn help_documents_flags_exit_codes_environment_and_an_example() {
    let layering = [
        "Exit codes:",
        "0  success",
        "1  runtime failure",
        "2  configuration error",
        "TWOFA_<SECTION>__<KEY>",
        "TWOFA_KEYCLOAK__URL",
        "TWOFA_CONFIG",
        "X_file",
        "built-in defaults",
        "Example:",
        "twofa-authz serve --config /etc/twofa-authz/config.toml",
        "docs/configuration.md",
    ];
    let top = text(&twofa(&["--help"], &[]).stdout);
    for want in layering.iter().chain(["--version", "--help", "qr"].iter()) {
        assert!(top.contains(want), "`{want}` missing from --help:\n{top}");
    }
    for (cmd, flags) in [
        ("serve", &["--config <FILE>", "--dev", "non-loopback"][..]),
        ("migrate", &["--config <FILE>", "--reencrypt"][..]),
        ("reset-user", &["--config <FILE>", "<SUB>", "sub"][..]),
        ("check-config", &["--config <FILE>", "redacted"][..]),
    ] {
        let out = twofa(&[cmd, "--help"], &[]);
        assert_eq!(out.status.code(), Some(0), "{cmd} --help");
        let help = text(&out.stdout);
        for want in flags.iter().chain(layering.iter()) {
            assert!(
                help.contains(want),
                "`{want}` missing from {cmd} --help:\n{help}"
            );
        }
        assert!(help.contains("[env: TWOFA_CONFIG="), "{cmd}: {help}");
    }
    let qr = text(&twofa(&["qr", "--help"], &[]).stdout);
    assert!(qr.contains("[URI]") && qr.contains("otpauth://"), "{qr}");
}
