//! weft's data plane: the proxy.
//!
//! The house, one room per concern; arrows only run down (a room imports the rooms
//! below it, never one above):
//!
//! ```text
//! proxy.rs     RunningProxy: start, apply (all or nothing), shutdown; background tasks
//!  ├ admin.rs    /metrics, /ready, /config, /listeners on their own thread
//!  ├ listen/     accept, TLS, HTTP/1.1 or HTTP/2 per connection, limits, graceful drain
//!  │  ├ http/      one HTTP exchange: path normal form, intentions, routing, filters,
//!  │  │            attempts with retries, the response and its record
//!  │  └ stream/    TCP and TLS listeners: TCPRoute, TLSRoute by SNI, passthrough
//!  ├ config/     compiles a weft_model::Config into an immutable Snapshot of the stages'
//!  │             own types (route tables, services, acceptors); the stages never import it
//!  ├ upstream/   services: endpoints, balancers, pools, retries, breakers, health
//!  ├ telemetry/  Prometheus metrics and the JSON access log
//!  └ mesh/       a sidecar's registration, discovery stream and identity
//! source.rs    where a configuration comes from (a file, watched)
//! error.rs     ProxyError: every failure a client can see, as a status + x-weft-error
//! fuzz.rs      entry points for `cargo fuzz` (the parsing weft does itself)
//! ```
//!
//! `http/tests.rs` drives whole exchanges through `http::handle` against upstreams on an
//! in-memory network, with paused time; `crates/weft-cli/tests` keep what only real
//! sockets prove.
//!
//! Configuration reaches the request path only as an immutable [`config::Snapshot`]
//! behind an `ArcSwap`: a config source calls [`RunningProxy::apply`], and requests
//! already in flight finish on the version they started with. Listeners follow the
//! configuration too: a reload opens added listeners and drains removed ones without
//! touching the others.

pub mod admin;
pub mod config;
pub mod error;
pub mod fuzz;
pub mod http;
pub mod listen;
pub mod mesh;
pub mod proxy;
pub mod source;
pub mod stream;
pub mod telemetry;
pub mod upstream;

pub use config::SnapshotHandle;
pub use proxy::{check, ProxyOptions, RunningProxy, StartError};
