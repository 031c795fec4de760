//! The protected application: answers every request with what reached it.

use std::net::SocketAddr;

use axum::extract::Request;
use axum::Json;
use serde_json::{json, Map, Value};

use super::http::Response;

pub struct Upstream {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the echo upstream");
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(echo);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("echo upstream");
        });
        Upstream { addr, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `{"upstream": "echo", "method", "path", "headers": {name: [values...]}}`; the
/// `upstream` member tells a test that the request really got through the proxy.
async fn echo(request: Request) -> Json<Value> {
    let mut headers = Map::new();
    for (name, value) in request.headers() {
        let values = headers
            .entry(name.as_str().to_owned())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = values {
            list.push(Value::String(
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        }
    }
    Json(json!({
        "upstream": "echo",
        "method": request.method().as_str(),
        "path": request.uri().to_string(),
        "headers": headers,
    }))
}

/// What the echo upstream received, read from a response that came from it.
pub struct Echoed(Value);

impl Echoed {
    /// `None` if `response` did not come from the echo upstream.
    pub fn from_response(response: &Response) -> Option<Echoed> {
        let value: Value = serde_json::from_slice(&response.body).ok()?;
        (value["upstream"] == "echo").then_some(Echoed(value))
    }

    pub fn path(&self) -> &str {
        self.0["path"].as_str().unwrap_or_default()
    }

    pub fn method(&self) -> &str {
        self.0["method"].as_str().unwrap_or_default()
    }

    /// Every value the upstream got for header `name` (lower case).
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.0["headers"][name]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The single value of header `name`; panics if it came more than once.
    pub fn header(&self, name: &str) -> Option<String> {
        let mut values = self.header_values(name);
        assert!(
            values.len() <= 1,
            "the upstream got {name} {} times: {values:?}",
            values.len()
        );
        values.pop()
    }

    /// Names of all headers the upstream got that start with `prefix`.
    pub fn header_names_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.0["headers"]
            .as_object()
            .map(|headers| {
                headers
                    .keys()
                    .filter(|name| name.starts_with(prefix))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for Echoed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
