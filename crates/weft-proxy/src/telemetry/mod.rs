//! What the proxy tells about itself: Prometheus metrics, the JSON access log, and
//! distributed tracing (trace context in and out of every request, spans exported over
//! OTLP), rolling windows per route and edge, and live taps, for live views.

pub mod access_log;
pub mod metrics;
pub mod otlp;
pub mod tap;
pub mod trace;
pub mod window;
