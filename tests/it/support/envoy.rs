//! A real Envoy running the example configuration `envoy/envoy.yaml`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::http;
use super::ports::free_port;
use super::process::{poll_until, render, tool_path, ChildGuard};

/// Where the proxy sends what: twofa-authz's listeners and the application.
#[derive(Clone, Copy, Debug)]
pub struct Targets {
    pub grpc_port: u16,
    pub http_port: u16,
    pub app_port: u16,
}

pub struct Envoy {
    child: ChildGuard,
    _dir: TempDir,
    port: u16,
    admin_port: u16,
}

pub fn envoy_binary() -> std::path::PathBuf {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv-test/bin/envoy");
    tool_path("TWOFA_TEST_ENVOY", &[venv, "envoy"])
}

/// The example config with its ports replaced. Every port of the example is
/// replaced, so a test Envoy never collides with a real one on the machine.
pub fn render_config(port: u16, admin_port: u16, targets: Targets) -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy/envoy.yaml");
    let text = std::fs::read_to_string(&example).expect("read envoy/envoy.yaml");
    let ports = [
        (9901, admin_port),
        (10000, port),
        (9191, targets.grpc_port),
        (8090, targets.http_port),
        (8080, targets.app_port),
    ];
    let replacements: Vec<(String, String)> = ports
        .iter()
        .map(|(from, to)| (format!("port_value: {from} "), format!("port_value: {to} ")))
        .collect();
    render(&text, &replacements, "envoy/envoy.yaml")
}

impl Envoy {
    pub async fn start(targets: Targets) -> Envoy {
        let port = free_port();
        let admin_port = free_port();
        Envoy::run(render_config(port, admin_port, targets), port, admin_port).await
    }

    /// Runs an already rendered configuration whose listener is `port` and
    /// whose admin interface is `admin_port`.
    pub async fn run(config_text: String, port: u16, admin_port: u16) -> Envoy {
        let dir = tempfile::Builder::new()
            .prefix("twofa-envoy-")
            .tempdir()
            .expect("temp dir");
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, config_text).expect("write envoy config");
        let mut cmd = Command::new(envoy_binary());
        cmd.arg("-c")
            .arg(&config)
            // Parallel tests each run an Envoy: each needs its own shared-memory id.
            .arg("--use-dynamic-base-id")
            .args(["--log-level", "warn"])
            // One worker thread is plenty here and spares the two cores.
            .args(["--concurrency", "1"]);
        let mut child = ChildGuard::spawn("envoy", cmd, &dir.path().join("envoy.log"));
        let admin = format!("127.0.0.1:{admin_port}");
        let ready = poll_until(Duration::from_secs(30), || {
            let running = child.try_exit_status().is_none();
            let admin = admin.clone();
            async move {
                running
                    && super::process::accepts_connections(&admin).await
                    && http::get(&admin, "/ready").send().await.status == 200
            }
        })
        .await;
        if !ready {
            child.assert_running();
            panic!("envoy not ready within 30 s; its log:\n{}", child.log());
        }
        Envoy {
            child,
            _dir: dir,
            port,
            admin_port,
        }
    }

    /// `127.0.0.1:PORT` of the ingress listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn admin_addr(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }

    pub fn log(&self) -> String {
        self.child.log()
    }
}
