//! Child processes that never outlive the test, and waiting with a deadline.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process with its stdout and stderr going to one log file.
///
/// Dropping the guard stops the process (SIGTERM, then SIGKILL), so a failing or
/// panicking test leaves nothing running behind it.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd`, appending its output to `log_path` (appending keeps the output
    /// of earlier runs when a service is restarted into the same file).
    pub fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> ChildGuard {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file handle"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({:?}): {e}", cmd.get_program()));
        ChildGuard {
            name: name.to_owned(),
            child: Some(child),
            log_path: log_path.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process already reaped").id()
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on a pid we own and have not reaped yet (a reaped pid
            // is taken out of `self.child`), so it cannot hit a recycled pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// The exit status if the process has ended.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().expect("waitpid")
    }

    /// Waits for the process to end by itself, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Panics with the process's log if it has already exited: a service that died
    /// during start-up is better reported with its own words than as a time-out.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_exit_status() {
            panic!(
                "{} exited during the test ({status}); its output:\n{}",
                self.name,
                self.log()
            );
        }
    }

    /// Stops the process: SIGTERM, up to five seconds to finish, then SIGKILL.
    /// SIGTERM first matters for nginx, whose workers outlive a SIGKILLed master.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            // SAFETY: as in `signal`: the child has not been reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `probe` until it returns true; panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if !poll_until(timeout, &mut probe).await {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// Polls `probe` until it returns true; false if `timeout` passes first.
pub async fn poll_until<F, Fut>(timeout: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if probe().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True once something accepts TCP connections on `addr`.
pub async fn accepts_connections(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The path of a test tool: the environment variable `var` set by scripts/test.sh,
/// else the first of `fallbacks` that exists.
pub fn tool_path(var: &str, fallbacks: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    for candidate in fallbacks {
        let path = PathBuf::from(candidate);
        if path.is_absolute() {
            if path.exists() {
                return path;
            }
        } else if let Some(found) = find_in_path(candidate) {
            return found;
        }
    }
    panic!(
        "{var} is not set and none of {fallbacks:?} was found; \
         run the tests through scripts/test.sh, which installs and points to them"
    );
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Replaces each `from` of `text` with its `to`, insisting that every `from`
/// occurs: the example configs are rendered this way, and a pattern that no longer
/// matches would otherwise leave a test talking to the wrong port.
pub fn render(text: &str, replacements: &[(String, String)], what: &str) -> String {
    let mut out = text.to_owned();
    for (from, to) in replacements {
        assert!(
            out.contains(from.as_str()),
            "{what} no longer contains {from:?}; update the test harness with it"
        );
        out = out.replace(from.as_str(), to);
    }
    out
}
