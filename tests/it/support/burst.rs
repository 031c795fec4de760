//! Requests truly in flight at once, for the limits that must hold under
//! concurrency (a loop of sequential requests proves nothing there):
//!
//! - [`release`]: each request on a connection of its own, opened and
//!   written up to its last byte first; then a barrier releases all the last
//!   bytes together, so the server sees every request complete within the
//!   same instant rather than one after another as a loop would send them.
//! - [`h2`]: N requests on ONE HTTP/2 connection (h2c with prior knowledge,
//!   as the HTTP listener serves it). Every request, body included, is
//!   queued before the connection is driven at all, so they leave in one
//!   burst of writes and none of them can have been answered before the last
//!   is sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

use super::http::{self, Request, Response};

/// What one request of a burst got, and when.
#[derive(Debug, Clone)]
pub struct Answer {
    pub response: Response,
    /// From the release to the end of the response.
    pub took: Duration,
}

/// A burst whose requests have been released; `answers` waits for them.
pub struct Burst {
    released: Instant,
    tasks: Vec<tokio::task::JoinHandle<Answer>>,
}

impl Burst {
    pub fn released_at(&self) -> Instant {
        self.released
    }

    /// Whether every request has its answer.
    pub fn is_done(&self) -> bool {
        self.tasks.iter().all(|t| t.is_finished())
    }

    /// The answers, in the order of the requests.
    pub async fn answers(self) -> Vec<Answer> {
        let mut out = Vec::with_capacity(self.tasks.len());
        for t in self.tasks {
            out.push(t.await.expect("a burst request panicked"));
        }
        out
    }
}

/// Opens a connection per request, writes all but the last byte of each, and
/// releases the last bytes together. Returns once they are released. Every
/// response must end within `limit` after the release (a hang fails the test).
pub async fn release(requests: Vec<Request>, limit: Duration) -> Burst {
    let n = requests.len();
    // The n request tasks and this one.
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut tasks = Vec::with_capacity(n);
    for req in requests {
        let barrier = barrier.clone();
        let addr = req.addr().to_owned();
        let head_only = req.is_head();
        let bytes = req.encode();
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(&addr)
                .await
                .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
            let _ = stream.set_nodelay(true);
            let (last, prefix) = bytes.split_last().expect("an empty request");
            stream.write_all(prefix).await.expect("write request");
            stream.flush().await.expect("flush request");
            barrier.wait().await;
            let released = Instant::now();
            stream.write_all(&[*last]).await.expect("write last byte");
            let mut raw = Vec::new();
            tokio::time::timeout(limit, stream.read_to_end(&mut raw))
                .await
                .unwrap_or_else(|_| panic!("no answer within {limit:?} of the release"))
                .unwrap_or_else(|e| panic!("read response from {addr}: {e}"));
            let response = http::parse(&raw, head_only).unwrap_or_else(|| {
                panic!("malformed response: {:?}", String::from_utf8_lossy(&raw))
            });
            Answer {
                response,
                took: released.elapsed(),
            }
        }));
    }
    barrier.wait().await;
    Burst {
        released: Instant::now(),
        tasks,
    }
}

/// One request of a burst.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn new(method: &str, path: &str) -> Req {
        Req {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn bearer(mut self, token: &str) -> Req {
        self.headers
            .push(("authorization".into(), format!("Bearer {token}")));
        self
    }

    pub fn json(mut self, body: &Value) -> Req {
        self.headers
            .push(("content-type".into(), "application/json".into()));
        self.body = body.to_string().into_bytes();
        self
    }
}

/// Sends `reqs` on one HTTP/2 connection to `addr` and returns the answers
/// in the order of `reqs`.
pub async fn h2(addr: &str, reqs: &[Req]) -> Vec<Response> {
    tokio::time::timeout(Duration::from_secs(60), h2_inner(addr, reqs))
        .await
        .expect("HTTP/2 burst timed out after 60 s")
}

async fn h2_inner(addr: &str, reqs: &[Req]) -> Vec<Response> {
    let tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    tcp.set_nodelay(true).expect("nodelay");
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("HTTP/2 handshake (is the listener serving h2c?)");
    let mut client = client;
    // Queued while the connection is not yet polled: nothing is written (and
    // nothing can be answered) until every request is in the queue.
    let mut pending = Vec::with_capacity(reqs.len());
    for r in reqs {
        let mut b = ::http::Request::builder()
            .method(r.method.as_str())
            .uri(format!("http://{addr}{}", r.path))
            .version(::http::Version::HTTP_2);
        for (n, v) in &r.headers {
            b = b.header(n.as_str(), v.as_str());
        }
        let req = b.body(()).expect("request");
        let (resp, mut stream) = client
            .send_request(req, r.body.is_empty())
            .expect("queue an HTTP/2 request");
        if !r.body.is_empty() {
            stream
                .send_data(Bytes::from(r.body.clone()), true)
                .expect("queue a request body");
        }
        pending.push(resp);
    }
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut out = Vec::with_capacity(pending.len());
    for resp in pending {
        let resp = resp.await.expect("an HTTP/2 response");
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("response body");
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        out.push(Response {
            status,
            headers,
            body: bytes,
        });
    }
    drop(client);
    driver.abort();
    out
}

/// The value of one sample in Prometheus text (`name{labels}` exactly as
/// written by the exporter), 0 when absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// How many answers have each status, as (status, count) sorted by status.
pub fn statuses(answers: &[Response]) -> Vec<(u16, usize)> {
    let mut m = std::collections::BTreeMap::new();
    for a in answers {
        *m.entry(a.status).or_insert(0) += 1;
    }
    m.into_iter().collect()
}
