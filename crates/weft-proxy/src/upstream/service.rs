//! A service as the request path sees it: its endpoints behind a balancer, how to connect
//! to them, and its limits — timeouts, retry policy and budget, circuit breaker, outlier
//! detection, rate limit, adaptive concurrency, active health checks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use weft_model::ServiceSpec;

use super::adaptive::Adaptive;
use super::balance::Balancer;
use super::client::{Settings, Upstream};
use super::endpoint::Endpoint;
use super::outlier::{Outcome, Outlier};
use super::ratelimit::RateLimiter;
use super::retry::{Breaker, Budget, Retry};
use super::transport::{Network, UpstreamTls};
use crate::telemetry::metrics::Metrics;

/// A service: endpoints, balancer, connection pool and resilience settings.
#[derive(Debug)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Endpoint selection.
    pub balancer: Balancer,
    /// Connections to the endpoints.
    pub upstream: Upstream,
    /// Until the response headers arrive, retries included.
    pub request_timeout: Duration,
    /// Each attempt.
    pub per_try_timeout: Option<Duration>,
    /// Retry policy.
    pub retry: Retry,
    /// Retry budget (kept across reloads while its settings stay).
    pub budget: Arc<Budget>,
    /// Fail-fast limits (in-flight counts kept across reloads).
    pub breaker: Arc<Breaker>,
    /// Outlier detection.
    pub outlier: Outlier,
    /// The service-wide rate limit.
    pub rate_limit: Option<RateLimiter>,
    /// The adaptive concurrency limit (kept across reloads while its settings stay).
    pub adaptive: Option<Arc<Adaptive>>,
    adaptive_settings: Option<weft_model::AdaptiveConcurrency>,
    /// Active health checks of the endpoints.
    pub health_check: Option<weft_model::HealthCheck>,
}

impl Service {
    /// Records how an attempt on `endpoint` ended (outlier detection), counting ejections.
    pub fn record(&self, endpoint: &Endpoint, outcome: Outcome, metrics: &Metrics) {
        let all = self.balancer.endpoints().iter().map(|e| &e.health);
        match self.outlier.record(&endpoint.health, all, outcome) {
            Some(Ok(reason)) => {
                tracing::warn!(service = %self.name, endpoint = %endpoint.addr, reason, "endpoint ejected");
                metrics.ejection(&self.name, reason, "ejected");
            }
            Some(Err(reason)) => metrics.ejection(&self.name, reason, "capped"),
            None => {}
        }
    }
}

/// Compiles a `Service`; endpoints, pools, budget, breaker counts and the adaptive limit of
/// `previous` (the same service in the running version) are carried over while their
/// settings stay.
pub fn build(
    tls: Option<UpstreamTls>,
    network: &Network,
    name: &str,
    spec: &ServiceSpec,
    previous: Option<&Service>,
) -> Result<Service, String> {
    let settings = Settings {
        protocol: spec.protocol,
        connect_timeout: spec.connect_timeout.get(),
        max_idle: spec.connection_pool.max_idle_per_endpoint,
        idle_timeout: spec.connection_pool.idle_timeout.get(),
        tls,
        network: network.clone(),
    };
    // Pools are only valid for the settings they were made with.
    let reusable = previous
        .filter(|p| p.upstream.settings == settings)
        .map(|p| p.balancer.endpoints())
        .unwrap_or(&[]);
    let endpoints = spec
        .endpoints
        .iter()
        .map(|e| {
            let addr: SocketAddr = e
                .address
                .parse()
                .map_err(|_| format!("bad address {}", e.address))?;
            Ok(reusable
                .iter()
                .find(|old| old.addr == addr && old.weight == e.weight)
                .cloned()
                .unwrap_or_else(|| Arc::new(Endpoint::new(addr, e.weight))))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let balancer = Balancer::new(
        endpoints,
        spec.load_balancer.policy,
        spec.load_balancer.hash_on.as_ref(),
    );

    let breaker = Arc::new(match previous {
        Some(p) => p.breaker.with_limits(&spec.circuit_breaker),
        None => Breaker::new(&spec.circuit_breaker),
    });
    let budget = match previous {
        Some(p) if p.budget.same_settings(&spec.retry.budget) => p.budget.clone(),
        _ => Arc::new(Budget::new(&spec.retry.budget)),
    };
    let upstream = Upstream::new(settings, breaker.clone());
    Ok(Service {
        name: name.to_string(),
        balancer,
        upstream,
        request_timeout: spec.timeouts.request.get(),
        per_try_timeout: spec.timeouts.per_try.map(|d| d.get()),
        retry: Retry::new(&spec.retry),
        budget,
        breaker,
        outlier: Outlier::new(&spec.outlier_detection),
        rate_limit: spec.rate_limit.as_ref().map(RateLimiter::new),
        adaptive: spec.adaptive_concurrency.as_ref().map(|c| {
            let same = previous
                .filter(|p| p.adaptive_settings.as_ref() == Some(c))
                .and_then(|p| p.adaptive.clone());
            same.unwrap_or_else(|| Arc::new(Adaptive::new(c)))
        }),
        adaptive_settings: spec.adaptive_concurrency.clone(),
        health_check: spec.health_check.clone(),
    })
}

/// Closes the idle connections of every endpoint in `services` that have outlived their
/// service's `idleTimeout`, and returns how long to wait before the next pass (a quarter of
/// the shortest idle timeout, between 50 ms and 5 s).
pub fn reap<'a>(services: impl Iterator<Item = &'a Service>) -> Duration {
    let mut next = Duration::from_secs(5);
    for service in services {
        let idle_timeout = service.upstream.settings.idle_timeout;
        next = next.min(idle_timeout / 4);
        for e in service.balancer.endpoints() {
            e.pool.evict(idle_timeout);
        }
    }
    next.max(Duration::from_millis(50))
}
