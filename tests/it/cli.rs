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
