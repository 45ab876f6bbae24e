//! Prometheus metrics.
//!
//! Handles for the hot path (per listener × route × service) are resolved once when a
//! snapshot is built, so serving a request touches only atomics and the histogram of its
//! own route, never a registry-wide lock. Label values come from configuration names and a
//! five-value status class, so cardinality is bounded by the configuration.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;

use super::window::{Rolling, Summary, Totals};

/// Latency buckets, in seconds: 0.5 ms to 30 s.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: String,
    route: String,
    service: String,
    status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    listener: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceReasonLabels {
    service: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    listener: String,
    route: String,
    service: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceResultLabels {
    service: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EjectionLabels {
    service: String,
    reason: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    route: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    route: String,
    service: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EdgeLabels {
    direction: String,
    source: String,
    destination: String,
    status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EdgeResultLabels {
    direction: String,
    source: String,
    destination: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EdgeKeyLabels {
    direction: String,
    source: String,
    destination: String,
}

/// Distinct (direction, source, destination) edges a proxy keeps series for; beyond, new
/// edges are counted as `source="overflow", destination="overflow"`.
pub const MAX_EDGES: usize = 1000;

/// A caller without a mesh identity (plaintext, in permissive mode).
pub const UNKNOWN_SOURCE: &str = "unknown";

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Every metric a proxy exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram, fn() -> Histogram>,
    local_replies: Family<ReasonLabels, Counter>,
    connect_errors: Family<ServiceReasonLabels, Counter>,
    conns_open: Family<ListenerLabels, Gauge>,
    conns_total: Family<ListenerLabels, Counter>,
    conns_refused: Family<ReasonLabels, Counter>,
    transparent: Family<OutcomeLabels, Counter>,
    transparent_protocols: Family<ProtocolLabels, Counter>,
    retries: Family<ServiceResultLabels, Counter>,
    ejections: Family<EjectionLabels, Counter>,
    faults: Family<FaultLabels, Counter>,
    mirrors: Family<MirrorLabels, Counter>,
    adaptive_limits: Family<ServiceLabels, Gauge>,
    health_checks: Family<ServiceResultLabels, Counter>,
    health_transitions: Family<ServiceResultLabels, Counter>,
    streams: Family<StreamLabels, Counter>,
    bytes_in: Family<ListenerLabels, Counter>,
    bytes_out: Family<ListenerLabels, Counter>,
    config_info: Family<VersionLabels, Gauge>,
    config_loads: Family<ResultLabels, Counter>,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter,
    /// Mesh mode: 1 while the discovery stream to the control plane is open.
    pub discovery_connected: Gauge,
    /// Mesh mode: the version (store revision) of the last update applied.
    pub discovery_version: Gauge,
    cert_expiry: Gauge,
    cert_renewals: Family<ResultLabels, Counter>,
    /// Spans dropped: the export queue was full, or their batch failed.
    pub trace_spans_dropped: Counter,
    /// Spans the collector accepted.
    pub trace_spans_exported: Counter,
    /// Tap events dropped (over a tap's rate or a full queue).
    pub tap_events_dropped: Counter,
    edge_requests: Family<EdgeLabels, Counter>,
    edge_durations: Family<EdgeLabels, Histogram, fn() -> Histogram>,
    edge_tcp: Family<EdgeResultLabels, Counter>,
    edge_tcp_received: Family<EdgeKeyLabels, Counter>,
    edge_tcp_sent: Family<EdgeKeyLabels, Counter>,
    edge_tcp_durations: Family<EdgeKeyLabels, Histogram, fn() -> Histogram>,
    edge_overflow: Counter,
    edges: std::sync::Mutex<std::collections::HashMap<EdgeKey, Arc<EdgeStats>>>,
    /// Rolling windows per (listener, route, service), kept across reloads.
    route_windows: std::sync::Mutex<std::collections::HashMap<RouteKey, Arc<Rolling>>>,
}

/// (direction, source, destination).
type EdgeKey = (Direction, String, String);
type RouteKey = (String, String, String);

/// Routes with a rolling window at most (routes renamed by many reloads stop getting one).
pub const MAX_ROUTE_WINDOWS: usize = 4096;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("weft");
        let m = Metrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(histogram as fn() -> Histogram),
            local_replies: Family::default(),
            connect_errors: Family::default(),
            conns_open: Family::default(),
            conns_total: Family::default(),
            conns_refused: Family::default(),
            transparent: Family::default(),
            transparent_protocols: Family::default(),
            retries: Family::default(),
            ejections: Family::default(),
            faults: Family::default(),
            mirrors: Family::default(),
            adaptive_limits: Family::default(),
            health_checks: Family::default(),
            health_transitions: Family::default(),
            streams: Family::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            config_info: Family::default(),
            config_loads: Family::default(),
            access_log_dropped: Counter::default(),
            discovery_connected: Gauge::default(),
            discovery_version: Gauge::default(),
            cert_expiry: Gauge::default(),
            cert_renewals: Family::default(),
            trace_spans_dropped: Counter::default(),
            tap_events_dropped: Counter::default(),
            trace_spans_exported: Counter::default(),
            edge_requests: Family::default(),
            edge_durations: Family::new_with_constructor(histogram),
            edge_tcp: Family::default(),
            edge_tcp_received: Family::default(),
            edge_tcp_sent: Family::default(),
            edge_tcp_durations: Family::new_with_constructor(histogram),
            edge_overflow: Counter::default(),
            edges: Default::default(),
            route_windows: Default::default(),
            registry: Registry::default(),
        };
        r.register("requests", "HTTP requests completed", m.requests.clone());
        r.register_with_unit(
            "request_duration",
            "Time from request received to response body finished",
            Unit::Seconds,
            m.durations.clone(),
        );
        r.register(
            "local_replies",
            "Replies generated by the proxy itself, by reason",
            m.local_replies.clone(),
        );
        r.register(
            "upstream_connect_errors",
            "Failed upstream connection attempts",
            m.connect_errors.clone(),
        );
        r.register(
            "downstream_connections_open",
            "Client connections currently open",
            m.conns_open.clone(),
        );
        r.register(
            "downstream_connections",
            "Client connections accepted",
            m.conns_total.clone(),
        );
        r.register(
            "transparent_connections",
            "Connections intercepted in transparent mode, by outcome (mesh, passthrough, \
             refused by registry-only, failed, not-redirected)",
            m.transparent.clone(),
        );
        r.register(
            "transparent_protocols",
            "What intercepted connections to HTTP services spoke first (http1, http2, tls, \
             other, silent)",
            m.transparent_protocols.clone(),
        );
        r.register(
            "downstream_connections_refused",
            "Client connections closed before serving them, by reason (max-connections, \
             tls-handshake, tls-handshake-timeout, not-tls, no-route), or closed because \
             an intention denies them (denied-by-intention, mesh TCP)",
            m.conns_refused.clone(),
        );
        r.register(
            "retries",
            "Retries by result: attempted, budget-exhausted (the retry budget refused), \
             overloaded (maxRetries in flight)",
            m.retries.clone(),
        );
        r.register(
            "outlier_ejections",
            "Outlier detection decisions: result=ejected, or capped (maxEjectionPercent kept \
             the endpoint in)",
            m.ejections.clone(),
        );
        r.register(
            "faults_injected",
            "Faults injected by routes, by kind (delay, abort)",
            m.faults.clone(),
        );
        r.register(
            "health_checks",
            "Active health-check probes, by result (success, failure)",
            m.health_checks.clone(),
        );
        r.register(
            "health_transitions",
            "Endpoints marked down or up by active health checks (result=down|up)",
            m.health_transitions.clone(),
        );
        r.register(
            "mirrored_requests",
            "Request copies sent by RequestMirror filters, by result (sent, failed, overloaded, \
             no-healthy-endpoints, skipped-large-body)",
            m.mirrors.clone(),
        );
        r.register(
            "adaptive_concurrency_limit",
            "The adaptive concurrency limit of a service, as last computed",
            m.adaptive_limits.clone(),
        );
        r.register(
            "stream_connections",
            "TCP and TLS (passthrough or terminated) connections forwarded, by result",
            m.streams.clone(),
        );
        r.register_with_unit(
            "downstream_received",
            "Bytes received from clients",
            Unit::Bytes,
            m.bytes_in.clone(),
        );
        r.register_with_unit(
            "downstream_sent",
            "Bytes sent to clients",
            Unit::Bytes,
            m.bytes_out.clone(),
        );
        r.register(
            "config_info",
            "The active configuration version (value 1)",
            m.config_info.clone(),
        );
        r.register(
            "config_loads",
            "Configuration loads, by result",
            m.config_loads.clone(),
        );
        r.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            m.access_log_dropped.clone(),
        );
        r.register(
            "discovery_connected",
            "Mesh mode: 1 while the discovery stream to the control plane is open",
            m.discovery_connected.clone(),
        );
        r.register(
            "discovery_version",
            "Mesh mode: version (store revision) of the last update applied",
            m.discovery_version.clone(),
        );
        r.register_with_unit(
            "mesh_certificate_expiry",
            "Mesh mode: time left before the proxy's certificate expires",
            Unit::Seconds,
            m.cert_expiry.clone(),
        );
        r.register(
            "mesh_certificate_renewals",
            "Mesh mode: certificate renewals, by result",
            m.cert_renewals.clone(),
        );
        r.register(
            "trace_spans_dropped",
            "Spans not exported: the export queue was full (a slow or absent collector), or \
             their batch failed",
            m.trace_spans_dropped.clone(),
        );
        r.register(
            "tap_events_dropped",
            "Tap events not sent: over the tap's events per second, or its queue was full (a \
             slow tap client)",
            m.tap_events_dropped.clone(),
        );
        r.register(
            "trace_spans_exported",
            "Spans the OTLP collector accepted",
            m.trace_spans_exported.clone(),
        );
        r.register(
            "edge_requests",
            "Mesh: HTTP requests per edge (source service -> destination service), seen \
             from the caller's side (direction=outbound) or the callee's (inbound)",
            m.edge_requests.clone(),
        );
        r.register_with_unit(
            "edge_request_duration",
            "Mesh: time from request received to response body finished, per edge",
            Unit::Seconds,
            m.edge_durations.clone(),
        );
        r.register(
            "edge_tcp_connections",
            "Mesh: TCP connections per edge, by result (forwarded, denied, failed)",
            m.edge_tcp.clone(),
        );
        r.register(
            "edge_tcp_received_bytes",
            "Mesh: bytes received from the connecting side of TCP connections, per edge",
            m.edge_tcp_received.clone(),
        );
        r.register(
            "edge_tcp_sent_bytes",
            "Mesh: bytes sent to the connecting side of TCP connections, per edge",
            m.edge_tcp_sent.clone(),
        );
        r.register_with_unit(
            "edge_tcp_connection_duration",
            "Mesh: how long forwarded TCP connections lasted, per edge",
            Unit::Seconds,
            m.edge_tcp_durations.clone(),
        );
        r.register(
            "edge_overflow",
            "Mesh: edges beyond the cap of distinct edges (counted as overflow -> overflow)",
            m.edge_overflow.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Mesh mode: the current certificate expires at `not_after`.
    pub fn certificate(&self, not_after: &std::time::SystemTime) {
        let left = not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        self.cert_expiry.set(left.as_secs() as i64);
    }

    /// Mesh mode: counts one renewal attempt.
    pub fn certificate_renewal(&self, ok: bool) {
        self.cert_renewals
            .get_or_create(&ResultLabels {
                result: if ok { "success" } else { "failure" }.into(),
            })
            .inc();
    }

    /// OpenMetrics text exposition (`application/openmetrics-text`).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Prometheus text format 0.0.4, for scrapers and tools that do not negotiate
    /// OpenMetrics (`promtool check metrics` among them).
    pub fn encode(&self) -> String {
        openmetrics_to_prometheus(&self.encode_openmetrics())
    }

    /// Hot-path handles for one (listener, route, service).
    pub fn route_stats(&self, listener: &str, route: &str, service: &str) -> RouteStats {
        let labels = |class: &str| RequestLabels {
            listener: listener.to_string(),
            route: route.to_string(),
            service: service.to_string(),
            status_class: class.to_string(),
        };
        let window = {
            let mut windows = self.route_windows.lock().unwrap_or_else(|p| p.into_inner());
            let key = (listener.to_string(), route.to_string(), service.to_string());
            match windows.get(&key) {
                Some(w) => Some(w.clone()),
                None if windows.len() < MAX_ROUTE_WINDOWS => {
                    Some(windows.entry(key).or_default().clone())
                }
                None => None,
            }
        };
        RouteStats {
            classes: CLASSES.map(|c| {
                (
                    self.requests.get_or_create(&labels(c)).clone(),
                    self.durations.get_or_create(&labels(c)).clone(),
                )
            }),
            window,
        }
    }

    /// Every route's and edge's rolling window over the last `seconds` as of `now`.
    pub fn windows(&self, now: Instant, seconds: u64) -> Windows {
        let (routes, edges) = self.totals(now, seconds);
        Windows {
            seconds,
            routes: routes
                .into_iter()
                .map(|((listener, route, service), t)| RouteWindow {
                    listener,
                    route,
                    service,
                    stats: t.summary(),
                })
                .collect(),
            edges: edges
                .into_iter()
                .map(|((direction, source, destination), t)| EdgeWindow {
                    direction: direction.as_str(),
                    source,
                    destination,
                    stats: t.summary(),
                })
                .collect(),
        }
    }

    /// The raw sums of every route and edge that saw traffic in the last `seconds`, in
    /// key order (what the control plane is sent, to merge instances).
    #[allow(clippy::type_complexity)]
    pub fn totals(
        &self,
        now: Instant,
        seconds: u64,
    ) -> (
        Vec<((String, String, String), Totals)>,
        Vec<((Direction, String, String), Totals)>,
    ) {
        let mut routes: Vec<_> = self
            .route_windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(key, w)| (key.clone(), w.totals(now, seconds)))
            .filter(|(_, t)| t.requests > 0)
            .collect();
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut edges: Vec<_> = self
            .edges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(key, e)| (key.clone(), e.window.totals(now, seconds)))
            .filter(|(_, t)| t.requests > 0 || t.tcp_connections > 0)
            .collect();
        edges.sort_by(|a, b| {
            (a.0 .0.as_str(), &a.0 .1, &a.0 .2).cmp(&(b.0 .0.as_str(), &b.0 .1, &b.0 .2))
        });
        (routes, edges)
    }

    /// Connections open now on `listener` (`gateway/listener`).
    pub fn open_connections(&self, listener: &str) -> i64 {
        self.conns_open
            .get(&ListenerLabels {
                listener: listener.to_string(),
            })
            .map_or(0, |g| g.get())
    }

    /// Handles for one edge, created at its first use. Past [`MAX_EDGES`] distinct edges,
    /// new ones share the `overflow -> overflow` series (and count in
    /// `weft_edge_overflow_total`), so the series stay bounded whatever callers appear.
    pub fn edge(&self, direction: Direction, source: &str, destination: &str) -> Arc<EdgeStats> {
        let mut edges = self.edges.lock().unwrap_or_else(|p| p.into_inner());
        let key = (direction, source.to_string(), destination.to_string());
        if let Some(e) = edges.get(&key) {
            return e.clone();
        }
        let key = if edges.len() >= MAX_EDGES {
            self.edge_overflow.inc();
            let overflow = (direction, "overflow".to_string(), "overflow".to_string());
            if let Some(e) = edges.get(&overflow) {
                return e.clone();
            }
            overflow
        } else {
            key
        };
        let (d, src, dst) = (direction.as_str().to_string(), key.1.clone(), key.2.clone());
        let labels = |class: &str| EdgeLabels {
            direction: d.clone(),
            source: src.clone(),
            destination: dst.clone(),
            status_class: class.to_string(),
        };
        let plain = EdgeKeyLabels {
            direction: d.clone(),
            source: src.clone(),
            destination: dst.clone(),
        };
        let window = Arc::new(Rolling::default());
        let stats = Arc::new(EdgeStats {
            requests: RouteStats {
                classes: CLASSES.map(|c| {
                    (
                        self.edge_requests.get_or_create(&labels(c)).clone(),
                        self.edge_durations.get_or_create(&labels(c)).clone(),
                    )
                }),
                window: Some(window.clone()),
            },
            window,
            tcp: ["forwarded", "denied", "failed"].map(|result| {
                self.edge_tcp
                    .get_or_create(&EdgeResultLabels {
                        direction: d.clone(),
                        source: src.clone(),
                        destination: dst.clone(),
                        result: result.to_string(),
                    })
                    .clone()
            }),
            tcp_received: self.edge_tcp_received.get_or_create(&plain).clone(),
            tcp_sent: self.edge_tcp_sent.get_or_create(&plain).clone(),
            tcp_duration: self.edge_tcp_durations.get_or_create(&plain).clone(),
        });
        edges.insert(key, stats.clone());
        stats
    }

    /// Hot-path handles for one listener's connections.
    pub fn listener_stats(&self, listener: &str) -> ListenerStats {
        let l = ListenerLabels {
            listener: listener.to_string(),
        };
        ListenerStats {
            open: self.conns_open.get_or_create(&l).clone(),
            accepted: self.conns_total.get_or_create(&l).clone(),
            bytes_in: self.bytes_in.get_or_create(&l).clone(),
            bytes_out: self.bytes_out.get_or_create(&l).clone(),
        }
    }

    /// Counts a reply the proxy generated itself.
    pub fn local_reply(&self, listener: &str, reason: &str) {
        self.local_replies
            .get_or_create(&ReasonLabels {
                listener: listener.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts an intercepted connection by what became of it (transparent mode).
    pub fn transparent(&self, outcome: &'static str) {
        self.transparent
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts what an intercepted connection to an HTTP service spoke first.
    pub fn transparent_protocol(&self, protocol: &'static str) {
        self.transparent_protocols
            .get_or_create(&ProtocolLabels { protocol })
            .inc();
    }

    /// Counts a client connection closed before it was served.
    pub fn connection_refused(&self, listener: &str, reason: &str) {
        self.conns_refused
            .get_or_create(&ReasonLabels {
                listener: listener.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a forwarded TCP/TLS connection by how it ended (`ok`, `connect-failed`,
    /// `no-healthy-endpoints`, `no-route`).
    pub fn stream_connection(&self, listener: &str, route: &str, service: &str, result: &str) {
        self.streams
            .get_or_create(&StreamLabels {
                listener: listener.into(),
                route: route.into(),
                service: service.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Counts a retry decision for `service`.
    pub fn retry(&self, service: &str, result: &str) {
        self.retries
            .get_or_create(&ServiceResultLabels {
                service: service.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Counts an outlier-detection decision.
    pub fn ejection(&self, service: &str, reason: &str, result: &str) {
        self.ejections
            .get_or_create(&EjectionLabels {
                service: service.into(),
                reason: reason.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Counts a health-check probe.
    pub fn health_check(&self, service: &str, result: &str) {
        self.health_checks
            .get_or_create(&ServiceResultLabels {
                service: service.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Counts an endpoint marked down or up by health checks.
    pub fn health_transition(&self, service: &str, to: &str) {
        self.health_transitions
            .get_or_create(&ServiceResultLabels {
                service: service.into(),
                result: to.into(),
            })
            .inc();
    }

    /// Publishes a service's adaptive concurrency limit.
    pub fn adaptive_limit(&self, service: &str, limit: u32) {
        self.adaptive_limits
            .get_or_create(&ServiceLabels {
                service: service.into(),
            })
            .set(i64::from(limit));
    }

    /// Counts a mirrored request copy.
    pub fn mirror(&self, route: &str, service: &str, result: &str) {
        self.mirrors
            .get_or_create(&MirrorLabels {
                route: route.into(),
                service: service.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Counts an injected fault.
    pub fn fault(&self, route: &str, kind: &str) {
        self.faults
            .get_or_create(&FaultLabels {
                route: route.into(),
                kind: kind.into(),
            })
            .inc();
    }

    /// Counts a failed upstream connect.
    pub fn connect_error(&self, service: &str, reason: &str) {
        self.connect_errors
            .get_or_create(&ServiceReasonLabels {
                service: service.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Records a configuration load; on success, `version` becomes the active one.
    pub fn config_loaded(&self, result: Result<&str, ()>) {
        match result {
            Ok(version) => {
                self.config_info.clear();
                self.config_info
                    .get_or_create(&VersionLabels {
                        version: version.into(),
                    })
                    .set(1);
                self.config_loads
                    .get_or_create(&ResultLabels {
                        result: "success".into(),
                    })
                    .inc();
            }
            Err(()) => {
                self.config_loads
                    .get_or_create(&ResultLabels {
                        result: "failure".into(),
                    })
                    .inc();
            }
        }
    }
}

/// Rewrites OpenMetrics text as Prometheus 0.0.4 text: counter families take the `_total`
/// name their samples carry, and `# UNIT` / `# EOF` lines (unknown to 0.0.4) are dropped.
fn openmetrics_to_prometheus(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<&str> = None;
    for line in om.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let family = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {family} {text}\n"));
            }
            out.push_str(&format!("# TYPE {family} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Request counters and latency histograms of one (listener, route, service), by status
/// class, and its rolling window.
#[derive(Debug, Clone)]
pub struct RouteStats {
    classes: [(Counter, Histogram); 5],
    window: Option<Arc<Rolling>>,
}

impl RouteStats {
    /// Records one exchange that took `elapsed` and ended at `at`.
    pub fn record(&self, status: u16, elapsed: Duration, at: Instant) {
        let i = usize::from((status / 100).clamp(1, 5) - 1);
        let (count, hist) = &self.classes[i];
        count.inc();
        hist.observe(elapsed.as_secs_f64());
        if let Some(w) = &self.window {
            w.record(at, status, elapsed);
        }
    }
}

/// What `GET /stats` shows: every route and edge with traffic in the window.
#[derive(Debug, Serialize)]
pub struct Windows {
    /// The window asked for, in seconds.
    pub seconds: u64,
    /// By listener, route and service.
    pub routes: Vec<RouteWindow>,
    /// By direction, source and destination service.
    pub edges: Vec<EdgeWindow>,
}

/// One route's window.
#[derive(Debug, Serialize)]
pub struct RouteWindow {
    /// `gateway/listener`.
    pub listener: String,
    /// The route's name (empty: requests no route matched).
    pub route: String,
    /// The service chosen (empty: answered by the proxy).
    pub service: String,
    /// What happened.
    #[serde(flatten)]
    pub stats: Summary,
}

/// One edge's window.
#[derive(Debug, Serialize)]
pub struct EdgeWindow {
    /// `outbound` (counted by the caller's proxy) or `inbound` (by the callee's).
    pub direction: &'static str,
    /// The calling service.
    pub source: String,
    /// The called service.
    pub destination: String,
    /// What happened.
    #[serde(flatten)]
    pub stats: Summary,
}

/// Which side of an edge a proxy sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The callee's sidecar (its inbound listener).
    Inbound,
    /// The caller's sidecar (an outbound listener) or an edge gateway.
    Outbound,
}

impl Direction {
    /// As a label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// The metrics of one edge (source service -> destination service).
#[derive(Debug)]
pub struct EdgeStats {
    requests: RouteStats,
    tcp: [Counter; 3],
    tcp_received: Counter,
    tcp_sent: Counter,
    tcp_duration: Histogram,
    /// The requests' window (shared with `requests`), where TCP connections count too.
    window: Arc<Rolling>,
}

impl EdgeStats {
    /// Records one HTTP exchange that took `elapsed` and ended at `at`.
    pub fn record(&self, status: u16, elapsed: Duration, at: Instant) {
        self.requests.record(status, elapsed, at);
    }

    /// Records one TCP connection: forwarded (with its bytes and duration), denied by an
    /// intention, or failed (no upstream).
    pub fn tcp(&self, outcome: TcpOutcome) {
        let now = Instant::now();
        match outcome {
            TcpOutcome::Forwarded {
                received,
                sent,
                duration,
            } => {
                self.tcp[0].inc();
                self.tcp_received.inc_by(received);
                self.tcp_sent.inc_by(sent);
                self.tcp_duration.observe(duration.as_secs_f64());
                self.window.record_tcp(now, false, received + sent);
            }
            TcpOutcome::Denied => {
                self.tcp[1].inc();
                self.window.record_tcp(now, true, 0);
            }
            TcpOutcome::Failed => {
                self.tcp[2].inc();
                self.window.record_tcp(now, true, 0);
            }
        }
    }
}

/// How a TCP connection on an edge ended.
#[derive(Debug, Clone, Copy)]
pub enum TcpOutcome {
    /// Forwarded until one side closed.
    Forwarded {
        /// Bytes from the connecting side.
        received: u64,
        /// Bytes to the connecting side.
        sent: u64,
        /// How long it lasted.
        duration: Duration,
    },
    /// An intention refused it.
    Denied,
    /// No upstream could be reached.
    Failed,
}

/// Connection metrics of one listener.
#[derive(Debug, Clone)]
pub struct ListenerStats {
    /// Open connections.
    pub open: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Accepted connections.
    pub accepted: Counter,
    /// Bytes from clients.
    pub bytes_in: Counter<u64, AtomicU64>,
    /// Bytes to clients.
    pub bytes_out: Counter<u64, AtomicU64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counter_families_with_total() {
        let om = "# HELP weft_x Things.\n# TYPE weft_x counter\nweft_x_total 3\n# HELP weft_d Durations.\n# TYPE weft_d histogram\n# UNIT weft_d seconds\nweft_d_count 1\n# EOF\n";
        let text = openmetrics_to_prometheus(om);
        assert_eq!(
            text,
            "# HELP weft_x_total Things.\n# TYPE weft_x_total counter\nweft_x_total 3\n# HELP weft_d Durations.\n# TYPE weft_d histogram\nweft_d_count 1\n"
        );
    }
}
