//! Requests truly in flight at once: each on a connection of its own, opened
//! and written up to its last byte first; then a barrier releases all the last
//! bytes together, so the server sees every request complete within the same
//! instant rather than one after another as a loop would send them.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
