//! Starting, reloading and stopping a proxy: [`RunningProxy`] owns the live snapshot, the
//! listeners, the admin endpoints and the background tasks (health checks, idle-connection
//! reaping), and [`RunningProxy::apply`] swaps configurations all or nothing.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use weft_model::Config;

use crate::admin::{self, AdminState};
use crate::config::{BuildError, Runtime, Snapshot, SnapshotHandle};
use crate::listen::{self, Shared};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::tap::Taps;
use crate::telemetry::{access_log, otlp};
use crate::{http, upstream};

/// Runtime options that are not part of the resource model.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Admin listener address; `None` disables it.
    pub admin: Option<SocketAddr>,
    /// Access log destination; `None` disables it.
    pub access_log: Option<access_log::Sink>,
    /// Where the configuration came from, shown by `/config`.
    pub source: String,
    /// A sidecar's mesh identity and trust bundle; configurations with mesh listeners or
    /// mesh services are refused without one.
    pub mesh: Option<Arc<weft_tls::mesh::MeshTls>>,
    /// Where sampled spans are exported (OTLP); `None`: trace context is still read and
    /// passed on, but no span leaves the proxy.
    pub tracing: Option<otlp::Options>,
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

/// What a proxy serves now (its configuration and bound listeners), cheap to clone.
#[derive(Debug, Clone)]
pub struct ProxyWatch {
    admin_state: Arc<AdminState>,
}

impl ProxyWatch {
    /// The configuration being served now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.admin_state.snapshot.load_full()
    }

    /// Bound listeners now: `gateway/listener` → address.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        lock(&self.admin_state.listeners).clone()
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.admin_state.metrics.clone()
    }
}

/// A proxy that is serving.
#[derive(Debug)]
pub struct RunningProxy {
    /// Bound admin address.
    pub admin: Option<SocketAddr>,
    snapshot: SnapshotHandle,
    metrics: Arc<Metrics>,
    taps: Arc<Taps>,
    admin_state: Arc<AdminState>,
    access_log: Option<access_log::AccessLog>,
    exporter: Option<otlp::Exporter>,
    runtime: Runtime,
    /// Running listeners; also serializes `apply`.
    listeners: std::sync::Mutex<Vec<listen::Running>>,
    /// Given to every task; dropped at shutdown so `alive` can report "all done".
    alive_tx: std::sync::Mutex<Option<mpsc::Sender<()>>>,
    shutdown: watch::Sender<bool>,
    alive: mpsc::Receiver<()>,
}

/// A listener of a configuration: `gateway/listener` and its configured address.
type ListenerKey = (String, String);

fn listener_keys(config: &Config) -> Vec<ListenerKey> {
    config
        .gateways
        .iter()
        .flat_map(|g| {
            g.spec
                .listeners
                .iter()
                .map(move |l| (format!("{}/{}", g.metadata.name, l.name), l.address.clone()))
        })
        .collect()
}

/// Binds `(name, address)`; the error names both.
fn bind(name: &str, address: &str) -> Result<std::net::TcpListener, StartError> {
    let bind_err = |source| StartError::Bind {
        name: name.to_string(),
        addr: address.to_string(),
        source,
    };
    let addr: SocketAddr = address.parse().map_err(|_| {
        bind_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not IP:PORT",
        ))
    })?;
    let l = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    l.set_nonblocking(true).map_err(bind_err)?;
    Ok(l)
}

impl RunningProxy {
    /// Binds every listener of `config` and starts serving. Must run inside a tokio runtime.
    pub async fn start(config: Config, opts: ProxyOptions) -> Result<RunningProxy, StartError> {
        let metrics = Arc::new(Metrics::new());
        let runtime = Runtime::new(opts.mesh)?;
        let config = Arc::new(config);
        let snapshot: SnapshotHandle = Arc::new(ArcSwap::from_pointee(Snapshot::build(
            config.clone(),
            &metrics,
            None,
            &runtime,
        )?));
        metrics.config_loaded(Ok(&config.version));
        let access_log = match opts.access_log {
            Some(sink) => Some(access_log::AccessLog::start(
                sink,
                metrics.access_log_dropped.clone(),
            )?),
            None => None,
        };
        let exporter = match opts.tracing {
            Some(o) => {
                tracing::info!(endpoint = %o.endpoint, service = %o.service_name, "exporting spans over OTLP");
                Some(otlp::Exporter::start(
                    o,
                    metrics.trace_spans_dropped.clone(),
                    metrics.trace_spans_exported.clone(),
                )?)
            }
            None => None,
        };
        let bound = listener_keys(&config)
            .into_iter()
            .map(|(name, address)| bind(&name, &address).map(|l| (name, address, l)))
            .collect::<Result<Vec<_>, _>>()?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(reap_idle_connections(snapshot.clone(), shutdown_rx.clone()));
        let serving = snapshot.clone();
        let current = move || serving.load().services.values().cloned().collect();
        tokio::spawn(upstream::health::run(current, metrics.clone(), shutdown_rx));
        let (alive_tx, alive) = mpsc::channel(1);
        let admin_state = Arc::new(AdminState {
            snapshot: snapshot.clone(),
            metrics: metrics.clone(),
            ready: false.into(),
            source: opts.source,
            listeners: std::sync::Mutex::new(Vec::new()),
            rejected: std::sync::Mutex::new(None),
        });
        let taps = Arc::new(Taps::new(metrics.tap_events_dropped.clone()));
        let proxy = RunningProxy {
            admin: None,
            snapshot,
            metrics,
            taps,
            admin_state,
            access_log,
            exporter,
            runtime,
            listeners: std::sync::Mutex::new(Vec::new()),
            alive_tx: std::sync::Mutex::new(Some(alive_tx)),
            shutdown,
            alive,
        };
        {
            let mut running = lock(&proxy.listeners);
            for (name, address, l) in bound {
                running.push(proxy.spawn_listener(name, address, l)?);
            }
            proxy.publish_listeners(&running);
        }
        let admin = match opts.admin {
            Some(addr) => Some(admin::start(addr, proxy.admin_state.clone())?),
            None => None,
        };
        proxy.admin_state.ready.store(true, Ordering::Relaxed);
        Ok(RunningProxy { admin, ..proxy })
    }

    fn spawn_listener(
        &self,
        name: String,
        configured: String,
        l: std::net::TcpListener,
    ) -> Result<listen::Running, StartError> {
        let listener = tokio::net::TcpListener::from_std(l)?;
        let local = listener.local_addr()?;
        let ctx = Arc::new(Shared {
            http: Arc::new(http::Context {
                name: name.clone(),
                metrics: self.metrics.clone(),
                access_log: self.access_log.clone(),
                local,
                exporter: self.exporter.clone(),
                taps: self.taps.clone(),
            }),
            snapshot: self.snapshot.clone(),
        });
        let alive = lock(&self.alive_tx)
            .clone()
            .ok_or_else(|| std::io::Error::other("shutting down"))?;
        let stats = self.metrics.listener_stats(&name);
        tracing::info!(listener = %name, address = %local, "listening");
        Ok(listen::spawn(listener, configured, ctx, stats, alive))
    }

    fn publish_listeners(&self, running: &[listen::Running]) {
        *lock(&self.admin_state.listeners) =
            running.iter().map(|r| (r.name.clone(), r.local)).collect();
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The taps open on this proxy (the control plane's live stream opens them).
    pub fn taps(&self) -> Arc<Taps> {
        self.taps.clone()
    }

    /// The mesh identity and trust bundle, for a sidecar.
    pub fn mesh(&self) -> Option<&Arc<weft_tls::mesh::MeshTls>> {
        self.runtime.mesh.as_ref()
    }

    /// Bound listeners now: `gateway/listener` → address (port 0 resolved).
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        lock(&self.admin_state.listeners).clone()
    }

    /// A handle following what this proxy serves, for tasks that outlive a borrow of it.
    pub fn watch(&self) -> ProxyWatch {
        ProxyWatch {
            admin_state: self.admin_state.clone(),
        }
    }

    /// The configuration being served now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in a new configuration, all or nothing: the snapshot is built (certificates
    /// read) and new listeners are bound before anything changes; if any step fails the
    /// running version stays whole. Then the snapshot is swapped, new listeners start
    /// accepting, and removed ones (or ones whose address changed) close and drain.
    /// Listeners present in both versions keep their socket and connections.
    pub fn apply(&self, config: Config) -> Result<(), BuildError> {
        let mut running = lock(&self.listeners);
        let version = config.version.clone();
        let wanted = listener_keys(&config);
        let result = self.prepare(config, &running, &wanted);
        let (snapshot, fresh) = match result {
            Ok(r) => r,
            Err(e) => {
                self.reject(&e.to_string());
                return Err(e);
            }
        };
        self.snapshot.store(Arc::new(snapshot));
        self.metrics.config_loaded(Ok(&version));
        *lock(&self.admin_state.rejected) = None;

        running.retain(|r| {
            let keep = wanted.contains(&(r.name.clone(), r.configured.clone()));
            if !keep {
                tracing::info!(listener = %r.name, address = %r.local, "listener removed; draining");
                r.stop();
            }
            keep
        });
        for (name, address, l) in fresh {
            match self.spawn_listener(name.clone(), address, l) {
                Ok(r) => running.push(r),
                Err(e) => tracing::error!(listener = %name, error = %e, "cannot start listener"),
            }
        }
        self.publish_listeners(&running);
        Ok(())
    }

    /// Builds the snapshot and binds the listeners `running` lacks, without changing
    /// anything visible.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        config: Config,
        running: &[listen::Running],
        wanted: &[ListenerKey],
    ) -> Result<(Snapshot, Vec<(String, String, std::net::TcpListener)>), BuildError> {
        let previous = self.snapshot.load();
        let snapshot = Snapshot::build(
            Arc::new(config),
            &self.metrics,
            Some(&previous),
            &self.runtime,
        )?;
        let mut fresh = Vec::new();
        for (name, address) in wanted {
            if running
                .iter()
                .any(|r| &r.name == name && &r.configured == address)
            {
                continue;
            }
            // Dropping `fresh` on error closes what was bound so far.
            let l = bind(name, address).map_err(|e| BuildError::Invalid(e.to_string()))?;
            fresh.push((name.clone(), address.clone(), l));
        }
        Ok((snapshot, fresh))
    }

    /// Mesh mode: records whether the discovery stream is open, and the version of the
    /// last update applied (`weft_discovery_connected`, `weft_discovery_version`).
    pub fn discovery_state(&self, connected: bool, applied: Option<u64>) {
        self.metrics.discovery_connected.set(i64::from(connected));
        if let Some(v) = applied {
            self.metrics
                .discovery_version
                .set(v.min(i64::MAX as u64) as i64);
        }
    }

    /// Forgets the last refusal: the newest version offered is the one serving.
    pub fn clear_rejection(&self) {
        *lock(&self.admin_state.rejected) = None;
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
        *lock(&self.admin_state.rejected) = Some(rejection);
    }

    /// Stops accepting, lets in-flight requests finish for up to `drain`, then returns
    /// whether every connection closed in time.
    pub async fn shutdown(mut self, drain: Duration) -> bool {
        self.admin_state.ready.store(false, Ordering::Relaxed);
        for r in lock(&self.listeners).iter() {
            r.stop();
        }
        let _ = self.shutdown.send(true);
        lock(&self.alive_tx).take();
        // `recv` returns None once every task holding a sender has ended.
        let drained = tokio::time::timeout(drain, self.alive.recv()).await.is_ok();
        if !drained {
            tracing::warn!(deadline = ?drain, "drain deadline passed with connections still open");
        }
        drained
    }
}

/// Compiles `config` as `apply` would (routes, certificates, keys, CA bundles) without
/// serving it: what `weft validate` runs.
pub fn check(config: Config) -> Result<(), BuildError> {
    let runtime = Runtime::new(None)?;
    Snapshot::build(Arc::new(config), &Metrics::new(), None, &runtime).map(drop)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One task for the whole proxy: closes idle upstream connections of whatever snapshot is
/// current, so a configuration swap needs no per-service bookkeeping.
async fn reap_idle_connections(snapshot: SnapshotHandle, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next = upstream::service::reap(snapshot.load().services.values().map(|s| &**s));
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = shutdown.changed() => return,
        }
    }
}
