//! Active health checks: one proxy-wide task walks the current services, probes every
//! endpoint of every service with a `healthCheck` when its interval is due (each probe in
//! its own task, so a hanging endpoint delays nobody), and marks endpoints down after
//! `unhealthyThreshold` failures in a row, up after `healthyThreshold` successes. Endpoint
//! state lives in the endpoint, which a reload carries over when it did not change.

use std::sync::Arc;
use std::time::Duration;

use http::{header, Request};
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use weft_model::HealthCheck;

use super::endpoint::Endpoint;
use super::service::Service;
use crate::telemetry::metrics::Metrics;

/// Runs until `shutdown` flips, over the services `current` returns each round (those of
/// the configuration serving then).
pub async fn run(
    current: impl Fn() -> Vec<Arc<Service>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut next = Duration::from_millis(500);
        for service in current() {
            let Some(hc) = service.health_check.clone() else {
                continue;
            };
            let interval = hc.interval.get();
            next = next.min(interval / 2).max(Duration::from_millis(5));
            for endpoint in service.balancer.endpoints() {
                if !endpoint.health.probe_due(interval) {
                    continue;
                }
                let (service, endpoint, hc, metrics) = (
                    service.clone(),
                    endpoint.clone(),
                    hc.clone(),
                    metrics.clone(),
                );
                tokio::spawn(async move {
                    let ok =
                        tokio::time::timeout(hc.timeout.get(), probe(&service, &endpoint, &hc))
                            .await
                            .unwrap_or(false);
                    metrics.health_check(&service.name, if ok { "success" } else { "failure" });
                    if let Some(up) = endpoint.health.probe_result(
                        ok,
                        hc.healthy_threshold,
                        hc.unhealthy_threshold,
                    ) {
                        let to = if up { "up" } else { "down" };
                        tracing::warn!(service = %service.name, endpoint = %endpoint.addr, to, "health check changed endpoint state");
                        metrics.health_transition(&service.name, to);
                    }
                });
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One probe: connect (and TLS, if the service originates it), then, for HTTP checks, a
/// GET whose status must be 2xx or 3xx.
async fn probe(service: &Service, endpoint: &Endpoint, hc: &HealthCheck) -> bool {
    let Ok((io, _permit)) = service.upstream.connect(endpoint).await else {
        return false;
    };
    let Some(http) = &hc.http else {
        return true;
    };
    let Ok((mut sender, conn)) = http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(io)).await
    else {
        return false;
    };
    tokio::spawn(conn);
    let host = http
        .host
        .clone()
        .unwrap_or_else(|| endpoint.authority.to_string());
    let Ok(req) = Request::get(http.path.as_str())
        .header(header::HOST, host)
        .header(header::USER_AGENT, "weft-health-check")
        .body(Empty::new())
    else {
        return false;
    };
    match sender.send_request(req).await {
        Ok(resp) => resp.status().is_success() || resp.status().is_redirection(),
        Err(_) => false,
    }
}
