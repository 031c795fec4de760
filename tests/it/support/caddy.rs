//! A real Caddy running the example configuration `envoy/Caddyfile`
//! (forward_auth to `/authz/forward-auth`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::envoy::Targets;
use super::ports::free_port;
use super::process::{accepts_connections, poll_until, render, tool_path, ChildGuard};

pub struct Caddy {
    child: ChildGuard,
    _dir: TempDir,
    port: u16,
}

pub fn caddy_binary() -> PathBuf {
    tool_path("TWOFA_TEST_CADDY", &["caddy", "/usr/bin/caddy"])
}

/// The example config with its addresses replaced by the test's.
pub fn render_config(port: u16, targets: Targets) -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy/Caddyfile");
    let text = std::fs::read_to_string(&example).expect("read envoy/Caddyfile");
    let replacements = [
        ("http://:8082 {".to_owned(), format!("http://:{port} {{")),
        (
            "127.0.0.1:8090".to_owned(),
            format!("127.0.0.1:{}", targets.http_port),
        ),
        (
            "reverse_proxy 127.0.0.1:8080".to_owned(),
            format!("reverse_proxy 127.0.0.1:{}", targets.app_port),
        ),
    ];
    render(&text, &replacements, "envoy/Caddyfile")
}

impl Caddy {
    pub async fn start(targets: Targets) -> Caddy {
        let dir = tempfile::Builder::new()
            .prefix("twofa-caddy-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let config = dir.path().join("Caddyfile");
        std::fs::write(&config, render_config(port, targets)).expect("write the Caddyfile");
        let mut cmd = Command::new(caddy_binary());
        cmd.args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&config)
            // Caddy keeps its autosaved config and certificate storage under
            // these: keep them in the test's own directory.
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path());
        let mut child = ChildGuard::spawn("caddy", cmd, &dir.path().join("caddy.log"));
        let addr = format!("127.0.0.1:{port}");
        let up = poll_until(Duration::from_secs(15), || {
            let running = child.try_exit_status().is_none();
            let addr = addr.clone();
            async move { running && accepts_connections(&addr).await }
        })
        .await;
        if !up {
            child.assert_running();
            panic!("caddy not listening within 15 s; its log:\n{}", child.log());
        }
        Caddy {
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
        self.child.log()
    }
}
