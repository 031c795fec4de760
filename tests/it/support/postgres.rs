//! A throwaway PostgreSQL cluster: `initdb` into a temp dir, `pg_ctl start` on a
//! free port, its unix socket inside the temp dir. `start_tls` turns TLS on with
//! a certificate from support/tls.rs and SCRAM passwords for TCP clients.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tempfile::TempDir;

use super::ports::free_port;
use super::process::{accepts_connections, wait_until};
use super::tls::ServerCert;

/// The password of `postgres` over TCP in a `start_tls` cluster.
pub const TLS_PASSWORD: &str = "twofa-test-pw";

pub struct Postgres {
    port: u16,
    dir: TempDir,
    bindir: PathBuf,
    running: bool,
    listen: &'static str,
}

impl Postgres {
    pub async fn start() -> Postgres {
        let mut pg = Postgres::init();
        pg.start_server().await;
        pg
    }

    /// `ssl = on` with `cert`; TCP clients log in with SCRAM (password
    /// `TLS_PASSWORD`), over TLS or plaintext as the client chooses, so that
    /// `pg_stat_ssl` shows the client's choice. Listens on 127.0.0.1 and
    /// 127.0.0.2 (a second name for host-name checks); the unix socket
    /// trusts the harness.
    pub async fn start_tls(cert: &ServerCert) -> Postgres {
        let mut pg = Postgres::init();
        pg.listen = "127.0.0.1,127.0.0.2";
        let data = pg.data_dir();
        let (crt, key) = cert.write(&data, "server");
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             password_encryption = 'scram-sha-256'\nlog_connections = on\n",
        );
        std::fs::write(&conf, text).expect("write postgresql.conf");
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             host all all 127.0.0.0/8 scram-sha-256\n\
             host all all ::1/128 scram-sha-256\n",
        )
        .expect("write pg_hba.conf");
        if is_root() {
            run(Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&crt)
                .arg(&key));
        }
        pg.start_server().await;
        pg.admin()
            .await
            .batch_execute(&format!("ALTER USER postgres PASSWORD '{TLS_PASSWORD}'"))
            .await
            .expect("set the password");
        pg
    }

    /// A superuser connection over the unix socket (trusted in every cluster).
    pub async fn admin(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(self.dir.path())
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect to the test postgres over its unix socket");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// A fresh database; returns its name.
    pub async fn create_database(&self) -> String {
        let name = format!("t_{}", super::keycloak::uuid().replace('-', ""));
        self.admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        name
    }

    fn init() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("twofa-pg-")
            .tempdir()
            .expect("temp dir");
        let pg = Postgres {
            port: free_port(),
            bindir: pg_bindir(),
            dir,
            running: false,
            listen: "127.0.0.1",
        };
        if is_root() {
            // initdb refuses to run as root; the cluster belongs to `postgres`.
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path()));
        }
        run(pg
            .as_owner(&pg.bindir.join("initdb"))
            .arg("-D")
            .arg(pg.data_dir())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]));
        pg
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser `postgres` (trust authentication) on the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    pub async fn stop(&mut self) {
        if self.running {
            run(self
                .as_owner(&self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["stop", "-m", "fast", "-w"]));
            self.running = false;
        }
    }

    pub async fn start_server(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses={} -F",
            self.port,
            self.dir.path().display(),
            self.listen,
        );
        run(self
            .as_owner(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-o", &options])
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(["-w", "-t", "30", "start"]));
        self.running = true;
        let addr = format!("127.0.0.1:{}", self.port);
        wait_until("postgres to listen", Duration::from_secs(30), || {
            accepts_connections(&addr)
        })
        .await;
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn as_owner(&self, program: &Path) -> Command {
        if is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            // pg_ctl daemonizes the server, so nothing else would ever stop it.
            let _ = self
                .as_owner(&self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["stop", "-m", "immediate", "-w"])
                .output();
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `TWOFA_TEST_PG_BINDIR`, else the newest /usr/lib/postgresql/N/bin.
fn pg_bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TWOFA_TEST_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).expect(
        "TWOFA_TEST_PG_BINDIR is not set and no /usr/lib/postgresql/*/bin/initdb exists; \
         run the tests through scripts/test.sh",
    )
}

fn run(cmd: &mut Command) -> Output {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {:?}: {e}", cmd.get_program()));
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
