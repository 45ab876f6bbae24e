//! What the proxy tells about itself: Prometheus metrics and the JSON access log.

pub mod access_log;
pub mod metrics;
