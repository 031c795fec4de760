//! A deliberately raw HTTP/1.1 client.
//!
//! Ordinary clients clean up what the tests need to send unchanged: they resolve
//! `/public/../admin`, merge or re-encode slashes, and fold duplicate headers. This
//! one writes the request target and the headers byte for byte.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// A request under construction.
pub struct Request {
    addr: String,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

pub fn get(addr: &str, target: &str) -> Request {
    request("GET", addr, target)
}

pub fn request(method: &str, addr: &str, target: &str) -> Request {
    Request {
        addr: addr.to_owned(),
        method: method.to_owned(),
        target: target.to_owned(),
        headers: vec![("Host".into(), addr.to_owned())],
        body: Vec::new(),
    }
}

impl Request {
    /// Adds a header; calling it twice with one name sends the header twice.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Replaces the `Host` header.
    pub fn host(mut self, host: &str) -> Request {
        self.headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case("host"));
        self.headers.insert(0, ("Host".into(), host.to_owned()));
        self
    }

    pub fn bearer(self, token: &str) -> Request {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    pub async fn send(self) -> Response {
        tokio::time::timeout(Duration::from_secs(15), self.send_inner())
            .await
            .expect("HTTP request timed out after 15 s")
    }

    /// The address the request goes to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// The request as it goes on the wire: head and body.
    pub fn encode(&self) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.body.is_empty() || !matches!(self.method.as_str(), "GET" | "HEAD") {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        // One request per connection: the response then ends where the stream does.
        head.push_str("Connection: close\r\n\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    async fn send_inner(self) -> Response {
        let mut stream = TcpStream::connect(&self.addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.addr));
        stream
            .write_all(&self.encode())
            .await
            .expect("write request");
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .unwrap_or_else(|e| panic!("read response from {}: {e}", self.addr));
        parse(&raw, self.method == "HEAD")
            .unwrap_or_else(|| panic!("malformed response: {:?}", String::from_utf8_lossy(&raw)))
    }
}

/// A whole HTTP/1.1 response as read up to the end of the stream.
pub fn parse(raw: &[u8], head_only: bool) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let rest = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if head_only {
        Vec::new()
    } else if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}
