//! A real headless Chromium, driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, found at `TWOFA_TEST_CHROMIUM` / `TWOFA_TEST_CHROMEDRIVER`
//! or in /usr/bin), with a throwaway profile and download directory, and
//! screenshots kept under `target/ui-screenshots/<test>/`.
//!
//! chromedriver runs in a process group of its own; dropping the browser
//! kills that group and any process still running with this browser's profile
//! directory, so that a failing test leaves no Chromium behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tempfile::TempDir;

use super::ports::free_port;
use super::process::{accepts_connections, tool_path, wait_until, ChildGuard};

/// How long a step may take to show its result in the page.
pub const STEP: Duration = Duration::from_secs(20);

/// A WebDriver command by path under the session (`Browser::driver_command`).
#[derive(Debug)]
struct RawCommand {
    method: http::Method,
    path: String,
    body: Option<String>,
}

impl fantoccini::wd::WebDriverCompatibleCommand for RawCommand {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (self.method.clone(), self.body.clone())
    }
}

pub struct Browser {
    pub client: Client,
    driver: Option<ChildGuard>,
    profile: TempDir,
    downloads: PathBuf,
    shots: PathBuf,
    step: AtomicUsize,
}

/// Where screenshots go: `target/ui-screenshots/<test>` next to the binary
/// under test (`target/debug/twofa-authz`).
pub fn screenshot_dir(test: &str) -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_twofa-authz"));
    let target = bin
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")));
    target.join("ui-screenshots").join(test)
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session.
    /// `lang` is Chromium's UI and Accept-Language.
    pub async fn start(test: &str, lang: &str) -> Browser {
        let chromium = tool_path("TWOFA_TEST_CHROMIUM", &["/usr/bin/chromium"]);
        let chromedriver = tool_path("TWOFA_TEST_CHROMEDRIVER", &["/usr/bin/chromedriver"]);
        let profile = tempfile::Builder::new()
            .prefix("twofa-chromium-")
            .tempdir()
            .expect("profile dir");
        let downloads = profile.path().join("downloads");
        std::fs::create_dir(&downloads).expect("downloads dir");
        let shots = screenshot_dir(test);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).expect("screenshot dir");

        let port = free_port();
        let mut cmd = Command::new(&chromedriver);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!(
                "--log-path={}",
                profile.path().join("chromedriver.log").display()
            ));
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let mut driver = ChildGuard::spawn(
            "chromedriver",
            cmd,
            &profile.path().join("chromedriver.out"),
        );
        let addr = format!("127.0.0.1:{port}");
        wait_until("chromedriver to listen", Duration::from_secs(20), || {
            driver.assert_running();
            accepts_connections(&addr)
        })
        .await;

        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--no-default-browser-check",
                    // Without these Chromium calls home, and this machine's
                    // closed network refuses it.
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-extensions",
                    "--disable-features=Translate,OptimizationHints,MediaRouter",
                    "--window-size=1100,1500",
                    format!("--lang={lang}"),
                    format!("--user-data-dir={}", profile.path().join("profile").display()),
                ],
                "prefs": {
                    "download.default_directory": downloads,
                    "download.prompt_for_download": false,
                    "intl.accept_languages": lang,
                },
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://{addr}"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "start a Chromium session: {e}\n{}",
                    std::fs::read_to_string(profile.path().join("chromedriver.log"))
                        .unwrap_or_default()
                )
            });
        Browser {
            client,
            driver: Some(driver),
            profile,
            downloads,
            shots,
            step: AtomicUsize::new(0),
        }
    }

    /// A WebDriver command on this session that fantoccini has no call for
    /// (W3C WebDriver extensions); the answer's `value`.
    pub async fn driver_command(&self, method: &str, path: &str, body: Value) -> Value {
        let cmd = RawCommand {
            method: http::Method::from_bytes(method.as_bytes()).expect("an HTTP method"),
            path: path.trim_start_matches('/').to_string(),
            body: (!body.is_null()).then(|| body.to_string()),
        };
        self.client
            .issue_cmd(cmd)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// Adds a virtual authenticator to the session (WebAuthn Level 2,
    /// "Automation"): CTAP2, built in, discoverable credentials, user
    /// verification that always succeeds. Returns its id.
    pub async fn add_virtual_authenticator(&self) -> String {
        let v = self
            .driver_command(
                "POST",
                "/webauthn/authenticator",
                json!({
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": true,
                    "hasUserVerification": true,
                    "isUserConsenting": true,
                    "isUserVerified": true,
                }),
            )
            .await;
        v.as_str().expect("authenticator id").to_string()
    }

    /// The credentials a virtual authenticator holds (id, rpId, signCount).
    pub async fn virtual_credentials(&self, authenticator: &str) -> Vec<Value> {
        let v = self
            .driver_command(
                "GET",
                &format!("/webauthn/authenticator/{authenticator}/credentials"),
                Value::Null,
            )
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    pub fn downloads(&self) -> &Path {
        &self.downloads
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    pub async fn url(&self) -> url::Url {
        self.client.current_url().await.expect("current URL")
    }

    /// A full-page screenshot as `NN-step.png`; prints and returns its path.
    pub async fn shot(&self, step: &str) -> PathBuf {
        let n = self.step.fetch_add(1, Ordering::SeqCst) + 1;
        let path = self.shots.join(format!("{n:02}-{step}.png"));
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(&path, png).expect("write the screenshot");
        println!("screenshot {step}: {}", path.display());
        path
    }

    /// The element once it is displayed.
    pub async fn visible(&self, css: &str) -> Element {
        let deadline = Instant::now() + STEP;
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await {
                if e.is_displayed().await.unwrap_or(false) {
                    return e;
                }
            }
            if Instant::now() > deadline {
                self.fail(&format!("{css} is not displayed")).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the element is hidden (or gone).
    pub async fn hidden(&self, css: &str) {
        let deadline = Instant::now() + STEP;
        loop {
            match self.client.find(Locator::Css(css)).await {
                Err(_) => return,
                Ok(e) if !e.is_displayed().await.unwrap_or(false) => return,
                Ok(_) => {}
            }
            if Instant::now() > deadline {
                self.fail(&format!("{css} is still displayed")).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn is_enabled(&self, css: &str) -> bool {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.is_enabled().await.unwrap_or(false),
            Err(_) => false,
        }
    }

    pub async fn is_displayed(&self, css: &str) -> bool {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Waits until the displayed element's text contains `needle`; returns it.
    pub async fn text_contains(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let e = self.visible(css).await;
            let text = e.text().await.unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            if Instant::now() > deadline {
                self.fail(&format!("{css} shows {text:?}, not {needle:?}"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn text(&self, css: &str) -> String {
        self.visible(css).await.text().await.expect("text")
    }

    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .attr(name)
            .await
            .expect("attribute")
    }

    pub async fn click(&self, css: &str) {
        let e = self.visible(css).await;
        let deadline = Instant::now() + STEP;
        while !e.is_enabled().await.unwrap_or(false) {
            if Instant::now() > deadline {
                self.fail(&format!("{css} stays disabled")).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        e.click()
            .await
            .unwrap_or_else(|err| panic!("click {css}: {err}"));
    }

    /// Replaces the field's value by `text`.
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.visible(css).await;
        e.clear().await.expect("clear");
        e.send_keys(text)
            .await
            .unwrap_or_else(|err| panic!("type into {css}: {err}"));
    }

    /// Types at whatever has the focus, as a keyboard would.
    pub async fn keys(&self, text: &str) {
        let mut seq = KeyActions::new("keyboard".into());
        for c in text.chars() {
            seq = seq
                .then(KeyAction::Down { value: c })
                .then(KeyAction::Up { value: c });
        }
        self.client
            .perform_actions(seq)
            .await
            .expect("keyboard actions");
    }

    pub async fn press(&self, key: Key) {
        self.keys(&char::from(key).to_string()).await;
    }

    /// The `id` of the element that has the focus.
    pub async fn focused_id(&self) -> String {
        let v = self
            .client
            .execute(
                "return document.activeElement && document.activeElement.id",
                vec![],
            )
            .await
            .expect("activeElement");
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Presses Tab until the element with `id` has the focus (at most 40
    /// times): it can be reached with the keyboard alone.
    pub async fn tab_to(&self, id: &str) {
        for _ in 0..40 {
            if self.focused_id().await == id {
                return;
            }
            self.press(Key::Tab).await;
        }
        self.fail(&format!("#{id} cannot be reached with Tab"))
            .await;
    }

    /// Waits for the browser to be at a URL for which `ok` holds.
    pub async fn wait_url(&self, what: &str, ok: impl Fn(&url::Url) -> bool) -> url::Url {
        let deadline = Instant::now() + STEP;
        loop {
            if let Ok(u) = self.client.current_url().await {
                if ok(&u) {
                    return u;
                }
            }
            if Instant::now() > deadline {
                let u = self.url().await;
                self.fail(&format!("never at {what}; at {u}")).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn exec(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("execute {script}: {e}"))
    }

    /// Panics with a screenshot and the page's visible text.
    pub async fn fail(&self, what: &str) -> ! {
        let shot = self.shot("failure").await;
        let body = self.client.find(Locator::Css("body")).await.ok();
        let text = match body {
            Some(b) => b.text().await.unwrap_or_default(),
            None => String::new(),
        };
        let url = self
            .client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default();
        panic!(
            "{what}\nat {url}\nscreenshot: {}\npage text:\n{text}",
            shot.display()
        );
    }

    /// Ends the session (Chromium exits) and chromedriver.
    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
        self.kill_all();
    }

    fn kill_all(&mut self) {
        if let Some(mut d) = self.driver.take() {
            let pgid = d.pid() as libc::pid_t;
            d.stop();
            // SAFETY: kill(2) on the process group chromedriver led (it was
            // started with process_group(0), so the group id is its pid).
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        // Chromium processes that left the group: those started with this
        // browser's own profile directory, by pid.
        let marker = self.profile.path().to_string_lossy().into_owned();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&marker) {
                    // SAFETY: a process whose command line names our own
                    // temporary profile directory: one we started.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill_all();
    }
}
