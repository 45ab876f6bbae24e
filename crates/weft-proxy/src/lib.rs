//! weft's data plane: the HTTP proxy.
//!
//! How a request flows through the modules:
//!
//! ```text
//! listener  accept, HTTP/1.1 or h2c per connection, byte counting, graceful drain
//!    │
//! forward   host + path ─► router (Gateway API HTTPRoute precedence)
//!    │      filters (redirect, rewrite, header edits), hop-by-hop, x-forwarded-*, x-request-id
//!    │      backend by weight ─► balance (P2C peak-EWMA, round robin, least request, ring hash)
//!    │      upstream: per-endpoint pools (HTTP/1.1 keep-alive, HTTP/2 multiplexed), upgrades
//!    ▼      error ─► status + x-weft-error; metrics and access log when the body ends
//! upstream
//! ```
//!
//! Configuration reaches the request path only as an immutable [`snapshot::Snapshot`]
//! behind an `ArcSwap`: a config source (the file today, the control plane's stream later)
//! calls [`RunningProxy::apply`], and requests already in flight finish on the version they
//! started with. The `admin` endpoints run on their own thread.

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod error;
pub mod forward;
pub mod listener;
pub mod metrics;
pub mod router;
pub mod snapshot;
pub mod source;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use weft_model::Config;

use crate::admin::AdminState;
use crate::forward::ListenerContext;
use crate::metrics::Metrics;
use crate::snapshot::{BuildError, Snapshot};

/// The live configuration, swapped atomically.
pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

/// Runtime options that are not part of the resource model.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Admin listener address; `None` disables it.
    pub admin: Option<SocketAddr>,
    /// Access log destination; `None` disables it.
    pub access_log: Option<access_log::Sink>,
    /// Where the configuration came from, shown by `/config`.
    pub source: String,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration did not compile.
    #[error("configuration: {0}")]
    Build(#[from] BuildError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({name}): {source}")]
    Bind {
        /// `gateway/listener`.
        name: String,
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The admin listener or access log could not be set up.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A proxy that is serving.
#[derive(Debug)]
pub struct RunningProxy {
    /// Bound listeners: `gateway/listener` → address (port 0 resolved).
    pub listeners: Vec<(String, SocketAddr)>,
    /// Bound admin address.
    pub admin: Option<SocketAddr>,
    snapshot: SnapshotHandle,
    metrics: Arc<Metrics>,
    admin_state: Arc<AdminState>,
    shutdown: watch::Sender<bool>,
    alive: mpsc::Receiver<()>,
}

impl RunningProxy {
    /// Binds every listener of `config` and starts serving. Must run inside a tokio runtime.
    pub async fn start(config: Config, opts: ProxyOptions) -> Result<RunningProxy, StartError> {
        let metrics = Arc::new(Metrics::new());
        let config = Arc::new(config);
        let snapshot: SnapshotHandle = Arc::new(ArcSwap::from_pointee(Snapshot::build(
            config.clone(),
            &metrics,
            None,
        )?));
        metrics.config_loaded(Ok(&config.version));
        let access_log = match opts.access_log {
            Some(sink) => Some(access_log::AccessLog::start(
                sink,
                metrics.access_log_dropped.clone(),
            )?),
            None => None,
        };

        let mut bound = Vec::new();
        for g in &config.gateways {
            for l in &g.spec.listeners {
                let name = format!("{}/{}", g.metadata.name, l.name);
                let bind_err = |source| StartError::Bind {
                    name: name.clone(),
                    addr: l.address.clone(),
                    source,
                };
                let addr: SocketAddr = l.address.parse().map_err(|_| {
                    bind_err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "not IP:PORT",
                    ))
                })?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(bind_err)?;
                let local = listener.local_addr()?;
                bound.push((name, local, listener));
            }
        }

        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(reap_idle_connections(snapshot.clone(), shutdown_rx.clone()));
        let (alive_tx, alive) = mpsc::channel(1);
        let mut listeners = Vec::new();
        for (name, local, listener) in bound {
            let ctx = Arc::new(ListenerContext {
                name: name.clone(),
                snapshot: snapshot.clone(),
                metrics: metrics.clone(),
                access_log: access_log.clone(),
                local,
            });
            let stats = metrics.listener_stats(&name);
            tokio::spawn(listener::serve(
                listener,
                ctx,
                stats,
                shutdown_rx.clone(),
                alive_tx.clone(),
            ));
            tracing::info!(listener = %name, address = %local, "listening");
            listeners.push((name, local));
        }

        let admin_state = Arc::new(AdminState {
            snapshot: snapshot.clone(),
            metrics: metrics.clone(),
            ready: false.into(),
            source: opts.source,
            listeners: listeners.clone(),
            rejected: std::sync::Mutex::new(None),
        });
        let admin = match opts.admin {
            Some(addr) => Some(admin::start(addr, admin_state.clone())?),
            None => None,
        };
        admin_state.ready.store(true, Ordering::Relaxed);
        Ok(RunningProxy {
            listeners,
            admin,
            snapshot,
            metrics,
            admin_state,
            shutdown,
            alive,
        })
    }

    /// The configuration being served now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in a new configuration, all or nothing. Routes and services change; listeners
    /// are those bound at start, so a version whose listeners differ is refused whole (with
    /// the reason) rather than half applied.
    pub fn apply(&self, config: Config) -> Result<(), BuildError> {
        let version = config.version.clone();
        let previous = self.snapshot.load();
        let result = if listener_specs(&config) != listener_specs(&previous.config) {
            Err(BuildError::Invalid(
                "listeners differ from the running ones; changing listeners needs a restart for now".into(),
            ))
        } else {
            Snapshot::build(Arc::new(config), &self.metrics, Some(&previous))
        };
        match result {
            Ok(s) => {
                self.snapshot.store(Arc::new(s));
                self.metrics.config_loaded(Ok(&version));
                *self
                    .admin_state
                    .rejected
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                Ok(())
            }
            Err(e) => {
                self.reject(&e.to_string());
                Err(e)
            }
        }
    }

    /// Records a refused version (invalid file, or `apply` refused it): counted in
    /// `weft_config_loads_total{result="failure"}` and shown by `/config`. The running
    /// version is untouched.
    pub fn reject(&self, reason: &str) {
        self.metrics.config_loaded(Err(()));
        let rejection = admin::Rejection {
            at: access_log::rfc3339(std::time::SystemTime::now()),
            reason: reason.to_string(),
        };
        *self
            .admin_state
            .rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(rejection);
    }

    /// Stops accepting, lets in-flight requests finish for up to `drain`, then returns
    /// whether every connection closed in time.
    pub async fn shutdown(mut self, drain: Duration) -> bool {
        self.admin_state.ready.store(false, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        // `recv` returns None once every connection task (each holds a sender) has ended.
        let drained = tokio::time::timeout(drain, self.alive.recv()).await.is_ok();
        if !drained {
            tracing::warn!(deadline = ?drain, "drain deadline passed with connections still open");
        }
        drained
    }
}

/// One task for the whole proxy: closes idle upstream connections of whatever snapshot is
/// current, so a configuration swap needs no per-service bookkeeping.
async fn reap_idle_connections(snapshot: SnapshotHandle, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next = upstream::reap(snapshot.load().services.values().map(|s| &**s));
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// What identifies the listeners of a configuration: gateway/listener, address, protocol.
fn listener_specs(config: &Config) -> Vec<(String, String, weft_model::ListenerProtocol)> {
    let mut specs: Vec<_> = config
        .gateways
        .iter()
        .flat_map(|g| {
            g.spec.listeners.iter().map(move |l| {
                (
                    format!("{}/{}", g.metadata.name, l.name),
                    l.address.clone(),
                    l.protocol,
                )
            })
        })
        .collect();
    specs.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    specs
}
