//! Requests truly in flight at once, for the limits that must hold under
//! concurrency (a loop of sequential requests proves nothing there):
//!
//! - [`h2`]: N requests on ONE HTTP/2 connection (h2c with prior knowledge,
//!   as the HTTP listener serves it). Every request, body included, is queued
//!   before the connection is driven at all, so they leave in one burst of
//!   writes and none of them can have been answered before the last is sent.
//! - [`barrier`]: N HTTP/1.1 connections, each with its whole request written
//!   but the last byte; the last bytes are then sent together.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http::{parse, Response};

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
        let mut b = http::Request::builder()
            .method(r.method.as_str())
            .uri(format!("http://{addr}{}", r.path))
            .version(http::Version::HTTP_2);
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

/// Sends each request on its own HTTP/1.1 connection; every connection has
/// all but the last byte written before any last byte is sent.
pub async fn barrier(addr: &str, reqs: &[Req]) -> Vec<Response> {
    tokio::time::timeout(Duration::from_secs(60), barrier_inner(addr, reqs))
        .await
        .expect("burst timed out after 60 s")
}

async fn barrier_inner(addr: &str, reqs: &[Req]) -> Vec<Response> {
    let gate = Arc::new(tokio::sync::Barrier::new(reqs.len()));
    let tasks: Vec<_> = reqs
        .iter()
        .map(|r| {
            let mut raw = format!("{} {} HTTP/1.1\r\nHost: {addr}\r\n", r.method, r.path);
            for (n, v) in &r.headers {
                raw.push_str(&format!("{n}: {v}\r\n"));
            }
            raw.push_str(&format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                r.body.len()
            ));
            let mut raw = raw.into_bytes();
            raw.extend_from_slice(&r.body);
            let (addr, gate, head_only) = (addr.to_owned(), gate.clone(), r.method == "HEAD");
            tokio::spawn(async move {
                let mut s = TcpStream::connect(&addr).await.expect("connect");
                s.set_nodelay(true).expect("nodelay");
                let (last, rest) = raw.split_last().expect("a request has bytes");
                s.write_all(rest).await.expect("write");
                s.flush().await.expect("flush");
                gate.wait().await;
                s.write_all(&[*last]).await.expect("write the last byte");
                let mut answer = Vec::new();
                s.read_to_end(&mut answer).await.expect("read");
                parse(&answer, head_only).unwrap_or_else(|| {
                    panic!("malformed response: {:?}", String::from_utf8_lossy(&answer))
                })
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("burst task"));
    }
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
