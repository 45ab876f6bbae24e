//! Behind the choice of a backend service: its endpoints and their health, the balancer
//! that picks one, the connections to them, and the service's own limits.
//!
//! ```text
//! service.rs     Service: what a route sends to, compiled from a `Service` resource
//!  ├ balance.rs    Balancer: an Endpoint by policy (P2C peak-EWMA, round robin, least
//!  │               request, ring hash); pick_by_weight for weighted backends
//!  ├ client.rs     Upstream: send a request on a pooled or new connection (HTTP/1.1, HTTP/2);
//!  │               Received: a response body as either client reads it
//!  │  ├ h1.rs         weft's own HTTP/1.1 client, for requests without a body or upgrade
//!  │  ├ h2.rs         weft's own HTTP/2 client (on the h2 crate), for HTTP/2 and gRPC services
//!  │  │  └ goaway.rs     the server's GOAWAY noticed as its bytes are read
//!  │  ├ pool.rs       an endpoint's idle HTTP/1.1 connections and shared HTTP/2 one; Lease
//!  │  ├ transport.rs  TCP, TLS origination, or an in-memory network (tests)
//!  │  └ keep_reading.rs  an upstream that answers before reading the whole body is heard
//!  ├ retry.rs      retry policy, retry budget, circuit breaker
//!  ├ adaptive.rs   adaptive concurrency
//!  ├ ratelimit.rs  token buckets (a route's or a service's)
//!  ├ outlier.rs    passive health: consecutive failures eject an endpoint
//!  └ health.rs     active health checks
//! endpoint.rs    Endpoint: address, weight, in-flight count, latency estimate, pool, health
//! body.rs        RequestBody: the request body as it goes upstream, under the listener's limits
//! ```
//!
//! Nothing here knows routes, listeners or the configuration that built it.

pub mod adaptive;
pub mod balance;
pub mod body;
pub mod client;
pub mod endpoint;
pub mod goaway;
pub mod h1;
pub mod h2;
pub mod health;
pub mod keep_reading;
pub mod outlier;
pub mod pool;
pub mod ratelimit;
pub mod retry;
pub mod service;
pub mod transport;
