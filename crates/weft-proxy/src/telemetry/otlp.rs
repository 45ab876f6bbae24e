//! Spans out over OTLP (gRPC, or HTTP/protobuf), batched from a bounded queue off the
//! request path.
//!
//! A request hands its finished span to [`Exporter::export`], which never waits: when the
//! queue is full (the collector is slow, or gone) the span is dropped and counted in
//! `weft_trace_spans_dropped_total`. One thread drains the queue in batches of up to
//! [`BATCH`] spans, at least every [`FLUSH_EVERY`], each export bounded by
//! [`EXPORT_TIMEOUT`]; a failed batch is dropped and counted, and failures are logged at
//! most once per [`LOG_EVERY`]. Nothing here can slow or fail a request.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// Spans waiting for export at most; beyond, new spans are dropped.
pub const QUEUE: usize = 4096;
/// Spans per export at most.
pub const BATCH: usize = 512;
/// A partial batch waits at most this long.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// One export (connect included) may take this long; then its batch is dropped.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a batch being gathered looks at the queue (the queue holds QUEUE spans:
/// enough for 80,000 spans a second at this pace).
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// Export failures are logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

/// How spans reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`TraceService/Export`), port 4317 by convention.
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`POST /v1/traces`), port 4318 by convention.
    HttpProtobuf,
}

impl Protocol {
    /// The name `OTEL_EXPORTER_OTLP_PROTOCOL` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct Options {
    /// `http://HOST:PORT` (gRPC), or the full URL spans are posted to (HTTP/protobuf).
    pub endpoint: String,
    /// The protocol.
    pub protocol: Protocol,
    /// `service.name` of the spans' resource: the sidecar's service, or the proxy's name.
    pub service_name: String,
}

impl Options {
    /// Options from the standard OpenTelemetry environment, when an endpoint is set:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (HTTP/protobuf appends `/v1/traces`), `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, the default, or `http/protobuf`), and
    /// `OTEL_SERVICE_NAME` (else `service_name`).
    pub fn from_env(
        flag: Option<&str>,
        service_name: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Options>, String> {
        let protocol = match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            None => Protocol::Grpc,
            Some(name) => [Protocol::Grpc, Protocol::HttpProtobuf]
                .into_iter()
                .find(|p| p.as_str() == name)
                .ok_or_else(|| {
                    format!("OTLP protocol `{name}`: weft exports `grpc` or `http/protobuf`")
                })?,
        };
        let endpoint = match (flag, env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
            (Some(f), _) => Some(signal_url(f, protocol)),
            (None, Some(e)) => Some(e),
            (None, None) => env("OTEL_EXPORTER_OTLP_ENDPOINT").map(|e| signal_url(&e, protocol)),
        };
        let Some(endpoint) = endpoint.filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| format!("OTLP endpoint `{endpoint}`: {e}"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(format!(
                "OTLP endpoint `{endpoint}`: expected http://HOST:PORT (a local collector; \
                 TLS to the collector is not supported yet)"
            ));
        }
        let service_name = env("OTEL_SERVICE_NAME").unwrap_or_else(|| service_name.to_string());
        Ok(Some(Options {
            endpoint,
            protocol,
            service_name,
        }))
    }
}

/// The base endpoint for the signal: HTTP/protobuf posts to `/v1/traces` below it.
fn signal_url(base: &str, protocol: Protocol) -> String {
    match protocol {
        Protocol::Grpc => base.to_string(),
        Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
    }
}

/// A finished span, as the request path hands it over.
#[derive(Debug, Clone)]
pub struct Span {
    /// The trace.
    pub trace_id: u128,
    /// This span.
    pub span_id: u64,
    /// The caller's span.
    pub parent_id: Option<u64>,
    /// W3C `tracestate`, as it arrived.
    pub tracestate: String,
    /// `{method} {route}`.
    pub name: String,
    /// A server span (a request received) or a client span (a call made, on a sidecar's
    /// outbound listener).
    pub kind: Kind,
    /// When the request arrived.
    pub start: SystemTime,
    /// When its response ended.
    pub end: SystemTime,
    /// OpenTelemetry HTTP attributes, and weft's own.
    pub attributes: Vec<(&'static str, Value)>,
    /// The span's error status, with its message.
    pub error: Option<String>,
}

/// A span's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// A request received.
    #[default]
    Server,
    /// A call made on the application's behalf.
    Client,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Str(String),
    /// Text known at compile time.
    Static(&'static str),
    /// An address, formatted on the exporter's thread rather than the request's.
    Ip(std::net::IpAddr),
    /// An address and port, likewise.
    Addr(std::net::SocketAddr),
    /// A number.
    Int(i64),
}

/// The sending half, cheap to clone into every listener.
#[derive(Debug, Clone)]
pub struct Exporter {
    tx: mpsc::Sender<Span>,
    dropped: Counter,
}

impl Exporter {
    /// Starts the exporter on a thread of its own, so that encoding a batch never holds
    /// up a worker serving requests. `dropped` and `exported` count spans. The thread ends
    /// when the last `Exporter` is dropped.
    pub fn start(opts: Options, dropped: Counter, exported: Counter) -> std::io::Result<Exporter> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let counted = dropped.clone();
        std::thread::Builder::new()
            .name("weft-otlp".into())
            .spawn(move || runtime.block_on(run(rx, opts, counted, exported)))?;
        Ok(Exporter { tx, dropped })
    }

    /// An exporter whose spans land in the returned queue instead of a collector (tests,
    /// and embedders with their own export).
    pub fn channel(capacity: usize, dropped: Counter) -> (Exporter, mpsc::Receiver<Span>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Exporter { tx, dropped }, rx)
    }

    /// Queues a span; drops (and counts) it when the queue is full.
    pub fn export(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

async fn run(mut rx: mpsc::Receiver<Span>, opts: Options, dropped: Counter, exported: Counter) {
    let mut client = Client::new(&opts);
    let mut last_log: Option<Instant> = None;
    let mut failed_since_log = 0u64;
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // Gather the batch by looking at the queue every DRAIN_EVERY rather than waiting on
        // it: a waiting receiver would be woken (a cross-thread wake-up, a syscall) by
        // every request's span.
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        loop {
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
            let now = tokio::time::Instant::now();
            if batch.len() >= BATCH || now >= deadline || rx.is_closed() {
                break;
            }
            tokio::time::sleep_until(deadline.min(now + DRAIN_EVERY)).await;
        }
        let n = batch.len() as u64;
        let request = encode(&opts.service_name, std::mem::take(&mut batch));
        match tokio::time::timeout(EXPORT_TIMEOUT, client.send(request)).await {
            Ok(Ok(())) => {
                exported.inc_by(n);
                if failed_since_log > 0 {
                    tracing::info!(endpoint = %opts.endpoint, "trace export resumed");
                    failed_since_log = 0;
                    last_log = None;
                }
            }
            failure => {
                dropped.inc_by(n);
                failed_since_log += n;
                let why = match failure {
                    Ok(Err(e)) => e,
                    _ => format!("no answer within {EXPORT_TIMEOUT:?}"),
                };
                if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    tracing::warn!(endpoint = %opts.endpoint, error = %why,
                        dropped = failed_since_log, "trace export failed; spans dropped");
                    last_log = Some(Instant::now());
                }
                // A broken gRPC channel is rebuilt for the next batch.
                client = Client::new(&opts);
            }
        }
    }
}

/// One export connection.
enum Client {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http(String),
    /// The endpoint did not parse as a gRPC endpoint (checked at start; kept for safety).
    Broken(String),
}

impl Client {
    fn new(opts: &Options) -> Client {
        match opts.protocol {
            Protocol::Grpc => {
                match tonic::transport::Endpoint::from_shared(opts.endpoint.clone()) {
                    Ok(e) => Client::Grpc(TraceServiceClient::new(
                        e.connect_timeout(Duration::from_secs(1))
                            .timeout(EXPORT_TIMEOUT)
                            .connect_lazy(),
                    )),
                    Err(e) => Client::Broken(e.to_string()),
                }
            }
            Protocol::HttpProtobuf => Client::Http(opts.endpoint.clone()),
        }
    }

    async fn send(&mut self, request: ExportTraceServiceRequest) -> Result<(), String> {
        match self {
            Client::Grpc(c) => c
                .export(request)
                .await
                .map(drop)
                .map_err(|s| format!("{}: {}", s.code(), s.message())),
            Client::Http(url) => post(url, request).await,
            Client::Broken(e) => Err(e.clone()),
        }
    }
}

/// OTLP/HTTP: one POST per batch on a fresh connection.
async fn post(url: &str, request: ExportTraceServiceRequest) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let body = prost::Message::encode_to_vec(&request);
    let req = http::Request::post(uri.clone())
        .header(
            http::header::HOST,
            uri.authority().map_or(host, |a| a.as_str()),
        )
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// The OTLP request for a batch of spans of one resource.
pub fn encode(service_name: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    let kv = |key: &str, value: any_value::Value| KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    };
    let nanos = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    };
    let spans = spans
        .into_iter()
        .map(|s| otlp::Span {
            trace_id: s.trace_id.to_be_bytes().to_vec(),
            span_id: s.span_id.to_be_bytes().to_vec(),
            trace_state: s.tracestate,
            parent_span_id: s
                .parent_id
                .map(|p| p.to_be_bytes().to_vec())
                .unwrap_or_default(),
            name: s.name,
            kind: match s.kind {
                Kind::Server => otlp::span::SpanKind::Server,
                Kind::Client => otlp::span::SpanKind::Client,
            } as i32,
            start_time_unix_nano: nanos(s.start),
            end_time_unix_nano: nanos(s.end),
            attributes: s
                .attributes
                .into_iter()
                .map(|(k, v)| {
                    kv(
                        k,
                        match v {
                            Value::Str(s) => any_value::Value::StringValue(s),
                            Value::Static(s) => any_value::Value::StringValue(s.into()),
                            Value::Ip(a) => any_value::Value::StringValue(a.to_string()),
                            Value::Addr(a) => any_value::Value::StringValue(a.to_string()),
                            Value::Int(i) => any_value::Value::IntValue(i),
                        },
                    )
                })
                .collect(),
            status: Some(match s.error {
                Some(message) => otlp::Status {
                    message,
                    code: otlp::status::StatusCode::Error as i32,
                },
                None => otlp::Status::default(),
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    any_value::Value::StringValue(service_name.to_string()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![otlp::ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "weft".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
