//! An OpenTelemetry collector stand-in: OTLP/gRPC `TraceService/Export` on a
//! loopback port, spoken over h2c as the exporter speaks it (gRPC framing,
//! `grpc-status` trailer). It keeps the raw bytes of every request, so that a
//! test can look for secrets in what actually crossed the wire, and decodes
//! them with the real OTLP protobuf messages (`opentelemetry-proto`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::{TcpListener, TcpStream};

pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Default)]
struct Received {
    raw: Vec<u8>,
    requests: Vec<ExportTraceServiceRequest>,
    /// Requests that were not a well-formed OTLP/gRPC export.
    bad: Vec<String>,
}

pub struct Collector {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One exported span with the resource it came with.
#[derive(Debug, Clone)]
pub struct Exported {
    pub resource: Vec<KeyValue>,
    pub span: Span,
}

impl Exported {
    pub fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }

    pub fn resource_attr(&self, key: &str) -> Option<String> {
        attr(&self.resource, key)
    }
}

/// A string, integer or boolean attribute as text.
pub fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector stand-in");
        Collector::on(listener)
    }

    /// On OTLP/gRPC's default port (4317), where an exporter with no
    /// endpoint configured would send; None if the port is taken.
    pub async fn start_on_default_port() -> Option<Collector> {
        TcpListener::bind("127.0.0.1:4317")
            .await
            .ok()
            .map(Collector::on)
    }

    fn on(listener: TcpListener) -> Collector {
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let r = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, r.clone()));
            }
        });
        Collector {
            addr,
            received,
            task,
        }
    }

    /// For `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every byte of every request body received so far.
    pub fn raw(&self) -> Vec<u8> {
        self.received.lock().unwrap().raw.clone()
    }

    pub fn bad_requests(&self) -> Vec<String> {
        self.received.lock().unwrap().bad.clone()
    }

    pub fn request_count(&self) -> usize {
        self.received.lock().unwrap().requests.len()
    }

    pub fn spans(&self) -> Vec<Exported> {
        let rec = self.received.lock().unwrap();
        let mut out = Vec::new();
        for req in &rec.requests {
            for rs in &req.resource_spans {
                let resource = rs
                    .resource
                    .as_ref()
                    .map(|r| r.attributes.clone())
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push(Exported {
                            resource: resource.clone(),
                            span: span.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Waits until `done` holds for the spans received, at most `timeout`.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&[Exported]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.spans()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn serve(sock: TcpStream, received: Arc<Mutex<Received>>) {
    let Ok(mut conn) = h2::server::handshake(sock).await else {
        return;
    };
    while let Some(Ok((req, respond))) = conn.accept().await {
        tokio::spawn(export(req, respond, received.clone()));
    }
}

async fn export(
    req: ::http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    received: Arc<Mutex<Received>>,
) {
    let (parts, mut body) = req.into_parts();
    let mut raw = Vec::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        raw.extend_from_slice(&chunk);
    }
    let decoded = decode(&parts, &raw);
    let status = {
        let mut rec = received.lock().unwrap();
        rec.raw.extend_from_slice(&raw);
        match decoded {
            Ok(r) => {
                rec.requests.push(r);
                "0"
            }
            Err(e) => {
                rec.bad.push(e);
                // INVALID_ARGUMENT
                "3"
            }
        }
    };
    let response = ::http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let Ok(mut send) = respond.send_response(response, false) else {
        return;
    };
    if status == "0" {
        // An ExportTraceServiceResponse with nothing in it: no partial
        // success to report. Uncompressed, zero length.
        let _ = send.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false);
    }
    let mut trailers = ::http::HeaderMap::new();
    trailers.insert("grpc-status", status.parse().unwrap());
    let _ = send.send_trailers(trailers);
}

/// One length-prefixed, uncompressed message on the export method.
fn decode(parts: &::http::request::Parts, raw: &[u8]) -> Result<ExportTraceServiceRequest, String> {
    if parts.method != ::http::Method::POST || parts.uri.path() != EXPORT_PATH {
        return Err(format!("{} {}", parts.method, parts.uri));
    }
    let ct = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !ct.starts_with("application/grpc") {
        return Err(format!("content-type {ct:?}"));
    }
    if raw.len() < 5 || raw[0] != 0 {
        return Err(format!("not one uncompressed gRPC message: {raw:?}"));
    }
    let len = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]) as usize;
    if raw.len() != 5 + len {
        return Err(format!("frame of {len} bytes in a body of {}", raw.len()));
    }
    ExportTraceServiceRequest::decode(&raw[5..]).map_err(|e| e.to_string())
}
