//! What the proxy tells about itself: Prometheus metrics, the JSON access log, and
//! distributed tracing (trace context in and out, spans exported over OTLP).

pub mod access_log;
pub mod metrics;
pub mod trace;
