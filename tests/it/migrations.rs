//! Migration checksums (PostgreSQL and SQLite): `migrate` records one per
//! migration; a database whose recorded checksum differs from the binary's, or
//! that recorded a migration newer than the binary's, makes `serve` and
//! `migrate` refuse with exit code 1 and the versions named; a database from
//! before checksums gets them recorded, and works.

use std::time::Duration;

use crate::support::app::{run_command, test_encryption_key, toml_strings, App, AppConfig};
use crate::support::postgres::Postgres;
use crate::user_common::create_database;

/// A configuration that needs nothing but its database.
fn config(database_url: &str, auto_migrate: bool) -> AppConfig {
    let mut c = AppConfig::default();
    c.set_str("keycloak", "url", "http://127.0.0.1:9")
        .set_str("keycloak", "realm", "test")
        .set_str("storage", "database_url", database_url)
        .set_str("storage", "redis_url", "memory://")
        .set("storage", "auto_migrate", auto_migrate.to_string())
        .set(
            "security",
            "encryption_keys",
            toml_strings(&[&test_encryption_key()]),
        )
        // Nothing is delivered here: no email or SMS method, so `serve`
        // accepts the default `log` providers.
        .set("security", "methods", toml_strings(&["totp", "recovery"]));
    c
}

fn expect_migrate(c: &AppConfig, code: i32, says: &[&str]) -> String {
    let (status, out) = run_command(c, &["migrate"]);
    assert_eq!(status.code(), Some(code), "migrate: {out}");
    for s in says {
        assert!(out.contains(s), "migrate should say {s:?}: {out}");
    }
    out
}

async fn expect_serve_refuses(c: &AppConfig, says: &[&str]) {
    let (status, log) = App::run_to_exit(c, Duration::from_secs(20)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "serve should refuse with exit 1; log:\n{log}"
    );
    for s in says {
        assert!(
            log.contains("refusing to start") && log.contains(s),
            "serve should say {s:?}:\n{log}"
        );
    }
}

/// The scenarios on one backend, through `exec` (SQL on the database).
async fn scenarios<F, Fut>(url: &str, exec: F)
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let auto = config(url, true);
    let manual = config(url, false);
    expect_migrate(&auto, 0, &["schema version 3"]);
    // Migration 2 (WebAuthn credentials) is recorded with its checksum too.
    let second = exec("SELECT checksum FROM schema_migrations WHERE version = 2")
        .await
        .expect("a checksum for migration 2");
    assert_eq!(second.len(), 64, "checksum {second:?}");
    let recorded = exec("SELECT checksum FROM schema_migrations WHERE version = 1")
        .await
        .expect("a checksum for migration 1");
    assert!(
        recorded.len() == 64 && recorded.chars().all(|c| c.is_ascii_hexdigit()),
        "checksum {recorded:?}"
    );

    // A tampered checksum.
    exec("UPDATE schema_migrations SET checksum = '0000000000000000000000000000000000000000000000000000000000000000' WHERE version = 1").await;
    let says = ["migration 1", "000000000000", &recorded[..12]];
    expect_migrate(&auto, 1, &says);
    expect_serve_refuses(&auto, &says).await;
    expect_serve_refuses(&manual, &says).await;

    // A database from before checksums: the column is not there yet.
    exec("ALTER TABLE schema_migrations DROP COLUMN checksum").await;
    expect_migrate(&auto, 0, &["recorded the checksum"]);
    let again = exec("SELECT checksum FROM schema_migrations WHERE version = 1").await;
    assert_eq!(again.as_deref(), Some(recorded.as_str()));

    // A migration newer than this binary.
    exec("INSERT INTO schema_migrations (version, name, applied_at, checksum) VALUES (99, 'from the future', 0, 'ab')").await;
    let says = [
        "99",
        "from the future",
        "schema version 3",
        "newer twofa-authz",
    ];
    expect_migrate(&auto, 1, &says);
    expect_serve_refuses(&auto, &says).await;
    expect_serve_refuses(&manual, &says).await;
    // Nothing was changed by the refusals.
    assert_eq!(
        exec("SELECT checksum FROM schema_migrations WHERE version = 99").await,
        Some("ab".to_string())
    );

    // Fixed: both start.
    exec("DELETE FROM schema_migrations WHERE version = 99").await;
    for c in [&auto, &manual] {
        let app = App::start_unready(c).await;
        let ready = crate::support::http::get(app.http_addr(), "/readyz")
            .send()
            .await
            .json();
        assert_eq!(ready["checks"]["database"], "ok", "{ready}\n{}", app.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_checksums_refuse_a_database_this_binary_does_not_know() {
    let pg = Postgres::start().await;
    let url = create_database(&pg).await;
    let db = url.rsplit('/').next().unwrap().to_owned();
    let (client, conn) = tokio_postgres::Config::new()
        .host_path(pg.socket_dir())
        .port(pg.port())
        .user("postgres")
        .dbname(&db)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let client = std::sync::Arc::new(client);
    scenarios(&url, |sql| {
        let client = client.clone();
        async move {
            // applied_at is a timestamp here.
            let sql = sql.replace(
                "applied_at, checksum) VALUES (99, 'from the future', 0,",
                "checksum) VALUES (99, 'from the future',",
            );
            let rows = client
                .simple_query(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_checksums_refuse_a_database_this_binary_does_not_know() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twofa.db");
    let url = format!("sqlite://{}", path.display());
    scenarios(&url, |sql| {
        let path = path.clone();
        async move {
            let c = rusqlite::Connection::open(&path).unwrap();
            if sql.starts_with("SELECT") {
                c.query_row(sql, [], |r| r.get::<_, Option<String>>(0))
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            } else {
                c.execute_batch(sql)
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                None
            }
        }
    })
    .await;
}
