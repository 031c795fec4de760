//! A real nginx running the example configuration `envoy/nginx.conf`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::envoy::Targets;
use super::ports::free_port;
use super::process::{accepts_connections, poll_until, render, tool_path, ChildGuard};

pub struct Nginx {
    child: ChildGuard,
    _dir: TempDir,
    port: u16,
}

pub fn nginx_binary() -> PathBuf {
    tool_path("TWOFA_TEST_NGINX", &["nginx", "/usr/sbin/nginx"])
}

/// The example config with its addresses replaced by the test's.
pub fn render_config(port: u16, targets: Targets) -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy/nginx.conf");
    let text = std::fs::read_to_string(&example).expect("read envoy/nginx.conf");
    let replacements = [
        (
            "listen 127.0.0.1:8081;".to_owned(),
            format!("listen 127.0.0.1:{port};"),
        ),
        (
            "server 127.0.0.1:8090;".to_owned(),
            format!("server 127.0.0.1:{};", targets.http_port),
        ),
        (
            "server 127.0.0.1:8080;".to_owned(),
            format!("server 127.0.0.1:{};", targets.app_port),
        ),
    ];
    render(&text, &replacements, "envoy/nginx.conf")
}

/// `nginx -p DIR -c FILE -e DIR/error.log -g GLOBALS`: everything nginx writes
/// stays in `dir`.
pub fn nginx_command(dir: &Path, config: &Path, globals: &str) -> Command {
    let mut cmd = Command::new(nginx_binary());
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(config)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-g")
        .arg(format!("{globals} pid {}/nginx.pid;", dir.display()));
    cmd
}

impl Nginx {
    pub async fn start(targets: Targets) -> Nginx {
        let dir = tempfile::Builder::new()
            .prefix("twofa-nginx-")
            .tempdir()
            .expect("temp dir");
        // nginx opens <prefix>/logs/ for its default access log before reading the
        // config that turns it off.
        std::fs::create_dir_all(dir.path().join("logs")).expect("create logs dir");
        let port = free_port();
        let config = dir.path().join("nginx.conf");
        std::fs::write(&config, render_config(port, targets)).expect("write nginx config");
        let cmd = nginx_command(dir.path(), &config, "daemon off;");
        let mut child = ChildGuard::spawn("nginx", cmd, &dir.path().join("nginx.log"));
        let addr = format!("127.0.0.1:{port}");
        let up = poll_until(Duration::from_secs(15), || {
            let running = child.try_exit_status().is_none();
            let addr = addr.clone();
            async move { running && accepts_connections(&addr).await }
        })
        .await;
        if !up {
            child.assert_running();
            panic!("nginx not listening within 15 s; its log:\n{}", child.log());
        }
        Nginx {
            child,
            _dir: dir,
            port,
        }
    }

    /// `127.0.0.1:PORT` of the listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        let error_log =
            std::fs::read_to_string(self._dir.path().join("error.log")).unwrap_or_default();
        format!("{}{}", self.child.log(), error_log)
    }
}
