//! A real SMTP server (aiosmtpd from the test virtualenv) that files every
//! message it receives, decoded, as JSON in a directory the test reads.
//! `stop`/`restart` take it down and bring it back on the same port.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::ports::free_port;
use super::process::{accepts_connections, poll_until, tool_path, wait_until, ChildGuard};

pub struct SmtpServer {
    port: u16,
    dir: TempDir,
    child: Option<ChildGuard>,
}

/// One received message.
#[derive(Clone, Debug)]
pub struct Mail {
    pub rcpt_tos: Vec<String>,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub raw: String,
}

impl Mail {
    /// The one-time code in the message: the digits after "code is:".
    pub fn code(&self) -> String {
        code_after(&self.text, "code is:")
            .unwrap_or_else(|| panic!("no code in the message text: {:?}", self.text))
    }
}

/// The first run of digits after `marker`.
pub fn code_after(text: &str, marker: &str) -> Option<String> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!digits.is_empty()).then_some(digits)
}

pub fn python() -> PathBuf {
    tool_path(
        "TWOFA_TEST_PYTHON",
        &[concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/.venv-test/bin/python"
        )],
    )
}

impl SmtpServer {
    pub async fn start() -> SmtpServer {
        let mut s = SmtpServer {
            port: free_port(),
            dir: tempfile::Builder::new()
                .prefix("twofa-smtp-")
                .tempdir()
                .expect("temp dir"),
            child: None,
        };
        std::fs::create_dir(s.mail_dir()).expect("mail dir");
        s.spawn().await;
        s
    }

    fn mail_dir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(python());
        cmd.args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "smtp_sink.Sink"])
            .arg(self.mail_dir())
            .env(
                "PYTHONPATH",
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/support"),
            );
        let mut child = ChildGuard::spawn("aiosmtpd", cmd, &self.dir.path().join("smtp.log"));
        let addr = format!("127.0.0.1:{}", self.port);
        wait_until("aiosmtpd to listen", Duration::from_secs(20), || {
            child.assert_running();
            accepts_connections(&addr)
        })
        .await;
        self.child = Some(child);
    }

    /// `smtp://127.0.0.1:PORT?tls=none`: what `email.smtp_url` is set to.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Takes the server down: connections are refused until `restart`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Every message received so far, oldest first.
    pub fn messages(&self) -> Vec<Mail> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.mail_dir())
            .expect("read the mail dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.') && n.ends_with(".json"))
            })
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| {
                let v: Value = serde_json::from_slice(&std::fs::read(p).expect("read a mail"))
                    .expect("a mail record is JSON");
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                Mail {
                    rcpt_tos: v["rcpt_tos"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                    from: s("from"),
                    to: s("to"),
                    subject: s("subject"),
                    text: s("text"),
                    html: s("html"),
                    raw: s("raw"),
                }
            })
            .collect()
    }

    /// Messages to `addr`.
    pub fn messages_to(&self, addr: &str) -> Vec<Mail> {
        self.messages()
            .into_iter()
            .filter(|m| m.rcpt_tos.iter().any(|r| r.eq_ignore_ascii_case(addr)))
            .collect()
    }

    /// Waits until `addr` has received `n` messages; returns the newest.
    pub async fn wait_for(&self, addr: &str, n: usize) -> Mail {
        let ok = poll_until(Duration::from_secs(15), || {
            let got = self.messages_to(addr).len();
            async move { got >= n }
        })
        .await;
        assert!(
            ok,
            "{addr} did not receive message #{n} within 15 s; messages: {:#?}\nserver log:\n{}",
            self.messages(),
            std::fs::read_to_string(self.dir.path().join("smtp.log")).unwrap_or_default()
        );
        self.messages_to(addr).pop().expect("a message")
    }
}
