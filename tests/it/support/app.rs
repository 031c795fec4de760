//! The real `twofa-authz` binary, run with a generated configuration file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tempfile::TempDir;

use super::http;
use super::ports::free_port;
use super::process::{poll_until, ChildGuard};

/// A configuration file in the shape of INTERFACE.md section 2. Values are TOML
/// literals, so a test can set any key, including ones the harness never heard of.
#[derive(Clone, Debug, Default)]
pub struct AppConfig {
    sections: BTreeMap<String, BTreeMap<String, String>>,
    /// Environment variables of the process that are not configuration
    /// keys (`OTEL_*`).
    env: BTreeMap<String, String>,
}

impl AppConfig {
    /// Sets an environment variable of `serve`'s process.
    pub fn set_env(&mut self, name: &str, value: &str) -> &mut Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Sets `section.key` to a TOML literal, e.g. `"\"1s\""` or `"[\"a\", \"b\"]"`.
    pub fn set(&mut self, section: &str, key: &str, toml_literal: impl Into<String>) -> &mut Self {
        self.sections
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), toml_literal.into());
        self
    }

    /// Sets `section.key` to a string.
    pub fn set_str(&mut self, section: &str, key: &str, value: &str) -> &mut Self {
        self.set(section, key, toml_string(value))
    }

    pub fn remove(&mut self, section: &str, key: &str) -> &mut Self {
        if let Some(keys) = self.sections.get_mut(section) {
            keys.remove(key);
        }
        self
    }

    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections.get(section)?.get(key).map(String::as_str)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (section, keys) in &self.sections {
            out.push_str(&format!("[{section}]\n"));
            for (key, value) in keys {
                out.push_str(&format!("{key} = {value}\n"));
            }
            out.push('\n');
        }
        out
    }
}

/// Runs `twofa-authz ARGS --config FILE` (e.g. `migrate`) with this
/// configuration in a temp dir of its own; returns its exit status and
/// everything it printed.
pub fn run_command(config: &AppConfig, args: &[&str]) -> (ExitStatus, String) {
    let dir = tempfile::Builder::new()
        .prefix("twofa-cmd-")
        .tempdir()
        .expect("temp dir");
    let path = dir.path().join("twofa.toml");
    std::fs::write(&path, config.render()).expect("write the config file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twofa-authz"));
    cmd.args(args)
        .arg("--config")
        .arg(&path)
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TWOFA_") {
            cmd.env_remove(name);
        }
    }
    let out = cmd.output().expect("run twofa-authz");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// A TOML basic string. JSON's string escapes are valid TOML escapes.
pub fn toml_string(value: &str) -> String {
    serde_json::to_string(value).unwrap()
}

/// A TOML array of strings.
pub fn toml_strings(values: &[&str]) -> String {
    let items: Vec<String> = values.iter().map(|v| toml_string(v)).collect();
    format!("[{}]", items.join(", "))
}

/// A fixed, test-only data-encryption key in `security.encryption_keys` form.
pub fn test_encryption_key() -> String {
    format!("test1:{}", STANDARD.encode([7u8; 32]))
}

pub struct App {
    child: ChildGuard,
    dir: TempDir,
    grpc_addr: String,
    http_addr: String,
}

impl App {
    /// Starts the binary and waits until `/readyz` answers 200.
    pub async fn start(config: &AppConfig) -> App {
        let mut app = App::spawn(config);
        let ready = app
            .wait_status("/readyz", 200, Duration::from_secs(30))
            .await;
        if !ready {
            app.child.assert_running();
            panic!(
                "twofa-authz did not become ready within 30 s; its log:\n{}",
                app.log()
            );
        }
        app
    }

    /// Starts the binary and waits only until `/healthz` answers: for tests of a
    /// service that cannot be ready yet.
    pub async fn start_unready(config: &AppConfig) -> App {
        let mut app = App::spawn(config);
        let alive = app
            .wait_status("/healthz", 200, Duration::from_secs(30))
            .await;
        if !alive {
            app.child.assert_running();
            panic!(
                "twofa-authz did not answer /healthz within 30 s; its log:\n{}",
                app.log()
            );
        }
        app
    }

    /// Starts the binary with a configuration it must refuse and waits for it
    /// to exit: its exit status (None if it still ran after `timeout`, then it
    /// is stopped) and its log.
    pub async fn run_to_exit(
        config: &AppConfig,
        timeout: Duration,
    ) -> (Option<ExitStatus>, String) {
        let mut app = App::spawn(config);
        let status = app.child.wait_exit(timeout).await;
        if status.is_none() {
            app.child.stop();
        }
        (status, app.log())
    }

    /// Writes the configuration (with `server.*_addr` on free ports unless set)
    /// and spawns `twofa-authz serve --config FILE`.
    fn spawn(config: &AppConfig) -> App {
        let dir = tempfile::Builder::new()
            .prefix("twofa-app-")
            .tempdir()
            .expect("temp dir");
        let mut config = config.clone();
        if config.get("server", "grpc_addr").is_none() {
            config.set_str("server", "grpc_addr", &format!("127.0.0.1:{}", free_port()));
        }
        if config.get("server", "http_addr").is_none() {
            config.set_str("server", "http_addr", &format!("127.0.0.1:{}", free_port()));
        }
        let unquote = |v: &str| v.trim_matches('"').to_owned();
        let grpc_addr = unquote(config.get("server", "grpc_addr").unwrap());
        let http_addr = unquote(config.get("server", "http_addr").unwrap());
        let config_path = dir.path().join("twofa.toml");
        std::fs::write(&config_path, config.render()).expect("write the config file");

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_twofa-authz"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        // The harness's own TWOFA_TEST_* variables (and anything a developer has
        // exported) would otherwise override the file: the environment wins.
        // Nor may a developer's OpenTelemetry settings export test spans.
        for (name, _) in std::env::vars_os() {
            let n = name.to_string_lossy();
            if n.starts_with("TWOFA_") || n.starts_with("OTEL_") {
                cmd.env_remove(name);
            }
        }
        cmd.envs(&config.env);
        let child = ChildGuard::spawn("twofa-authz", cmd, &dir.path().join("twofa-authz.log"));
        App {
            child,
            dir,
            grpc_addr,
            http_addr,
        }
    }

    async fn wait_status(&mut self, path: &str, status: u16, timeout: Duration) -> bool {
        let addr = self.http_addr.clone();
        let child = &mut self.child;
        poll_until(timeout, || {
            let running = child.try_exit_status().is_none();
            let addr = addr.clone();
            async move {
                running
                    && super::process::accepts_connections(&addr).await
                    && http::get(&addr, path).send().await.status == status
            }
        })
        .await
    }

    /// The process id of the running binary.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `127.0.0.1:PORT` of the HTTP listener.
    pub fn http_addr(&self) -> &str {
        &self.http_addr
    }

    /// `127.0.0.1:PORT` of the gRPC listener.
    pub fn grpc_addr(&self) -> &str {
        &self.grpc_addr
    }

    pub fn http_port(&self) -> u16 {
        self.http_addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Everything the process has logged (stdout and stderr).
    pub fn log(&self) -> String {
        self.child.log()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Stops the process (SIGTERM, then SIGKILL): twofa-authz unreachable.
    pub fn stop(&mut self) {
        self.child.stop();
    }

    pub fn assert_running(&mut self) {
        self.child.assert_running();
    }

    /// Sends `signal` and returns at once.
    pub fn signal(&self, signal: i32) {
        self.child.signal(signal);
    }

    /// Waits for the process to exit by itself, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.wait_exit(timeout).await
    }

    /// Sends `signal` and waits for the process to exit.
    pub async fn signal_and_wait(&mut self, signal: i32, timeout: Duration) -> Option<ExitStatus> {
        self.child.signal(signal);
        self.child.wait_exit(timeout).await
    }
}
