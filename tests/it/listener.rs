//! The HTTP listener's own limits (INTERFACE.md section 5, abuse limits): a
//! connection whose request head has not arrived within 10 s is dropped, open
//! connections are capped (`server.max_connections`), and HTTP/1 and h2c are
//! both served.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Barrier, Notify};

use crate::support::Stack;

/// Reads until the server closes the connection (EOF or reset) and returns
/// how long that took and what arrived, or `None` if it stayed open for
/// `limit`.
async fn time_until_closed(mut stream: TcpStream, limit: Duration) -> Option<(Duration, Vec<u8>)> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((start.elapsed(), got)),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response to a GET /healthz (head and Content-Length body).
async fn read_one_response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.expect("read a response");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

const KEEP_ALIVE_GET: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: twofa\r\n\r\n";

/// Slowloris: a half-sent head, nothing at all, and a kept-alive connection
/// that never sends its next request are each closed about 10 s in, while a
/// complete request is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_not_sent_within_10_s_is_dropped() {
    let stack = Stack::start(None).await;
    let addr = stack.app.http_addr().to_owned();
    let limit = Duration::from_secs(20);

    let mut half = TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: twofa\r\nX-Slow: ")
        .await
        .unwrap();
    let silent = TcpStream::connect(&addr).await.unwrap();
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(KEEP_ALIVE_GET).await.unwrap();
    let answer = read_one_response(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let (half, silent, idle) = tokio::join!(
        time_until_closed(half, limit),
        time_until_closed(silent, limit),
        time_until_closed(idle, limit),
    );
    for (what, outcome) in [
        ("half-sent head", half),
        ("no bytes", silent),
        ("idle keep-alive", idle),
    ] {
        let (took, got) = outcome.unwrap_or_else(|| {
            panic!(
                "{what}: still open after {limit:?}; log:\n{}",
                stack.app.log()
            )
        });
        assert!(
            took >= Duration::from_secs(9) && took <= Duration::from_secs(15),
            "{what}: closed after {took:?}, not about 10 s"
        );
        let text = String::from_utf8_lossy(&got);
        assert!(!text.contains("200 OK"), "{what}: was served: {text}");
    }

    // The listener is still fine.
    let response = crate::support::http::get(&addr, "/healthz").send().await;
    assert_eq!(response.status, 200);
}

/// `server.max_connections = 4`: ten clients connect and ask at the same
/// moment; four are served, the others wait (not refused) until a served one
/// closes its connection, and every one of them is served in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    const CAP: usize = 4;
    const CLIENTS: usize = 10;
    let stack = Stack::start_with(None, |config| {
        config.set("server", "max_connections", CAP.to_string());
    })
    .await;
    let addr = stack.app.http_addr().to_owned();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let (answered_tx, mut answered) = mpsc::unbounded_channel::<usize>();
    let release: Arc<Vec<Notify>> = Arc::new((0..CLIENTS).map(|_| Notify::new()).collect());
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (addr, barrier, answered_tx, release) = (
            addr.clone(),
            barrier.clone(),
            answered_tx.clone(),
            release.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut stream = TcpStream::connect(&addr).await.expect("connect");
            stream.write_all(KEEP_ALIVE_GET).await.expect("write");
            let answer = read_one_response(&mut stream).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            let _ = answered_tx.send(i);
            // Keep the connection (and its slot) until told to close it.
            release[i].notified().await;
            drop(stream);
        }));
    }
    drop(answered_tx);

    let mut served: Vec<usize> = Vec::new();
    let mut released = 0;
    for round in 1..=CLIENTS.div_ceil(CAP) {
        let want = (round * CAP).min(CLIENTS);
        collect(&mut answered, &mut served, want).await;
        let now_served = served.clone();
        assert_eq!(
            now_served.len(),
            want,
            "round {round}: {} served with {released} connections closed and a cap of {CAP}",
            now_served.len()
        );
        for &i in &now_served[released..] {
            release[i].notify_one();
        }
        released = now_served.len();
    }
    for task in tasks {
        task.await.expect("client task");
    }
}

/// SIGTERM with a request in flight (its body half sent): the listener stops
/// accepting at once, the request is still answered, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_drains_in_flight_requests() {
    let mut stack = Stack::start(None).await;
    let addr = stack.app.http_addr().to_owned();
    let token = stack.keycloak.token().build();
    let body = br#"{"otp_type":"email"}"#;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /user/send-otp HTTP/1.1\r\nHost: twofa\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        token.jwt,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..11]).await.unwrap();
    // The handler is now waiting for the rest of the body.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.app.signal(libc::SIGTERM);

    let refused = crate::support::process::poll_until(Duration::from_secs(5), || {
        let addr = addr.clone();
        async move { TcpStream::connect(&addr).await.is_err() }
    })
    .await;
    assert!(refused, "still accepting 5 s after SIGTERM");

    stream.write_all(&body[11..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the in-flight request was answered within 10 s")
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 "), "no answer: {answer:?}");
    assert!(!answer.starts_with("HTTP/1.1 5"), "{answer}");

    let status = stack.app.wait_exit(Duration::from_secs(12)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit after SIGTERM; log:\n{}",
        stack.app.log()
    );
}

/// Collects answers until `want` have come in all told (or 8 s passed), then
/// waits 2 s more: beyond the cap, nobody else is answered while the slots
/// are held.
async fn collect(
    answered: &mut mpsc::UnboundedReceiver<usize>,
    served: &mut Vec<usize>,
    want: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(8);
    while served.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, answered.recv()).await {
            Ok(Some(i)) => served.push(i),
            _ => return,
        }
    }
    if let Ok(Some(i)) = tokio::time::timeout(Duration::from_secs(2), answered.recv()).await {
        served.push(i);
    }
}

/// HTTP/2 without TLS (prior knowledge) is served on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_is_served() {
    use tower::ServiceExt;
    let stack = Stack::start(None).await;
    let addr = stack.app.http_addr();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("an HTTP/2 connection");
    let request = http::Request::get(format!("http://{addr}/healthz"))
        .body(tonic::body::Body::empty())
        .unwrap();
    let response = channel
        .oneshot(request)
        .await
        .expect("GET /healthz over h2c");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
}
