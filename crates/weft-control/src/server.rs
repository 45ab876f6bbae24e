//! `weft server`: the store, the view that follows it, the HTTP API and the discovery
//! stream, served on one port (gRPC and JSON share it; HTTP/1.1 and HTTP/2, over TLS
//! with a certificate from the mesh CA unless TLS is turned off).

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use weft_api::discovery::discovery_server::DiscoveryServer as GrpcDiscovery;

use crate::{
    api::{self, Api},
    discovery::{DiscoveryServer, Sessions},
    state::State,
    store::Store,
};

/// Largest discovery message accepted from a proxy (a Hello with its known versions: a
/// slice of 256 upstreams holds a few thousand keys, well under this).
const MAX_PROXY_MESSAGE: usize = 1024 * 1024;

/// How a server serves.
#[derive(Debug)]
pub struct Options {
    /// The address other replicas reach this one at (announced in the store).
    pub advertise: String,
    /// Whether ACL tokens are required.
    pub acl: bool,
    /// TLS on the API and discovery stream: the DNS names and IP addresses of the
    /// server's certificate (from the mesh CA). None: plaintext.
    pub tls: Option<Vec<String>>,
    /// Where the trust bundle's roots are written for local clients (`DATA-DIR/ca.pem`),
    /// kept current as roots are rotated in and pruned out.
    pub ca_file: Option<std::path::PathBuf>,
    /// `/metrics` without a token (`--metrics public`); otherwise it needs `operator:read`.
    pub metrics_public: bool,
    /// Bounds on clients.
    pub limits: Limits,
    /// The sidecar's intention code, for `/v1/intentions/check` (the `weft` binary
    /// hands it in: the control plane does not depend on the proxy).
    pub judge: Option<Arc<dyn crate::judge::Judge>>,
    /// The DNS interface to the catalog (`--dns`), if on.
    pub dns: Option<crate::dns::Dns>,
    /// The range services' virtual IPs come from (`--virtual-ips`); None: no VIPs.
    pub virtual_ips: Option<crate::vip::Range>,
}

/// Bounds on what clients may hold (each a `weft server` flag; docs/operations.md).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at once; beyond, new ones are closed at once (`--max-connections`).
    pub max_connections: usize,
    /// Registered instances per service (`--max-instances-per-service`).
    pub instances_per_service: usize,
    /// Discovery streams per ACL token (`--max-streams-per-token`).
    pub streams_per_token: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16_384,
            instances_per_service: 4096,
            streams_per_token: crate::discovery::Limits::default().streams_per_token,
        }
    }
}

/// Validity of the API's certificate; it is renewed every day, and at once when the CA's
/// active root changes (a rotation), so it never outlives the root that signed it.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
const SERVER_CERT_RENEWAL: Duration = Duration::from_secs(24 * 3600);
/// How often the trust bundle is checked for a rotation.
const BUNDLE_CHECK: Duration = Duration::from_secs(5);

/// The API's TLS certificate (from the mesh CA), swapped in place when renewed.
struct ApiCert {
    cert: Arc<weft_tls::SwappableCert>,
    names: Vec<String>,
    /// The root that was active when it was issued.
    under: String,
    issued: tokio::time::Instant,
}

impl ApiCert {
    /// A certificate for `names`, and the TLS acceptor serving it.
    async fn new(
        ca: &crate::ca::Ca,
        names: Vec<String>,
    ) -> std::io::Result<(tokio_rustls::TlsAcceptor, ApiCert)> {
        let (key, under) = Self::issue(ca, &names).await?;
        let cert = weft_tls::SwappableCert::new(key);
        let config = cert
            .server_config(&[weft_tls::ALPN_H2, weft_tls::ALPN_HTTP11])
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let api_cert = ApiCert {
            cert,
            names,
            under,
            issued: tokio::time::Instant::now(),
        };
        Ok((tokio_rustls::TlsAcceptor::from(config), api_cert))
    }

    async fn issue(
        ca: &crate::ca::Ca,
        names: &[String],
    ) -> std::io::Result<(Arc<tokio_rustls::rustls::sign::CertifiedKey>, String)> {
        let active = ca.bundle().await.map(|b| b.active).unwrap_or_default();
        let (chain, key) = ca
            .server_certificate(names, SERVER_CERT_VALIDITY)
            .await
            .map_err(|e| std::io::Error::other(e.message))?;
        weft_tls::mesh::Identity::from_pem(&chain, &key)
            .map(|i| (i.key, active))
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Renews at once when `bundle` names another signing root (a rotation), else daily.
    async fn renew_if_due(&mut self, ca: &crate::ca::Ca, bundle: &crate::ca::Bundle) {
        let rotated = bundle.active != self.under;
        if !rotated && self.issued.elapsed() < SERVER_CERT_RENEWAL {
            return;
        }
        match Self::issue(ca, &self.names).await {
            Ok((key, active)) => {
                self.cert.set(key);
                tracing::info!(root = %active, rotated, "renewed the API's certificate");
                self.under = active;
                self.issued = tokio::time::Instant::now();
            }
            Err(e) => tracing::warn!(error = %e, "renewing the API's certificate failed"),
        }
    }
}

/// Follows the trust bundle every [`BUNDLE_CHECK`]: keeps `ca_file` holding its roots
/// (replaced atomically when they change, so local clients using `--ca-file
/// DATA-DIR/ca.pem` follow rotations), and renews the API's certificate.
async fn follow_bundle(
    ca: Arc<crate::ca::Ca>,
    mut api_cert: Option<ApiCert>,
    ca_file: Option<std::path::PathBuf>,
) {
    let mut written = ca_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    loop {
        match ca.bundle().await {
            Ok(bundle) => {
                if let Some(path) = &ca_file {
                    let pem = bundle.roots_pem();
                    if pem != written {
                        let tmp = path.with_extension("pem.tmp");
                        match std::fs::write(&tmp, &pem).and_then(|()| std::fs::rename(&tmp, path))
                        {
                            Ok(()) => {
                                tracing::info!(file = %path.display(), roots = bundle.roots.len(), "wrote the CA roots");
                                written = pem;
                            }
                            Err(e) => {
                                tracing::warn!(file = %path.display(), error = %e, "cannot write the CA roots")
                            }
                        }
                    }
                }
                if let Some(c) = &mut api_cert {
                    c.renew_if_due(&ca, &bundle).await;
                }
            }
            Err(e) => tracing::warn!(error = %e.message, "cannot read the trust bundle"),
        }
        tokio::time::sleep(BUNDLE_CHECK).await;
    }
}

/// Serves the control plane on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    ca: Arc<crate::ca::Ca>,
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Options {
        advertise,
        acl,
        tls,
        ca_file,
        metrics_public,
        limits,
        judge,
        dns,
        virtual_ips,
    } = opts;
    let (acceptor, api_cert) = match tls {
        Some(names) => {
            let (a, c) = ApiCert::new(&ca, names).await?;
            (Some(a), Some(c))
        }
        None => (None, None),
    };
    let bundle_follower = tokio::spawn(follow_bundle(ca.clone(), api_cert, ca_file));
    let state = State::new();
    let follower = tokio::spawn(state.clone().follow(store.clone()));
    let announcer = tokio::spawn(crate::peers::announce(store.clone(), advertise.clone()));
    let (leadership, campaign) = crate::leader::campaign(store.clone(), advertise.clone());
    // Run-once work, on the leader.
    let pruner = {
        let (ca, leadership) = (ca.clone(), leadership.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if !leadership.is_leader() {
                    continue;
                }
                if let Err(e) = ca.prune().await {
                    tracing::warn!(error = %e.message, "pruning retired CA roots failed");
                }
            }
        })
    };
    // Virtual IPs for new services, given by the leader as the view moves.
    let vip_giver = virtual_ips.map(|range| {
        let (state, store, leadership) = (state.clone(), store.clone(), leadership.clone());
        tokio::spawn(async move {
            let mut tick = state.subscribe();
            loop {
                if leadership.is_leader() {
                    let (missing, taken) = {
                        let view = state.read();
                        (view.services_without_vip(), view.vips_taken())
                    };
                    let assigned = crate::vip::assign_missing(&*store, missing, taken, range);
                    if let Err(e) = assigned.await {
                        tracing::warn!(error = %e, "assigning virtual IPs failed; retrying");
                    }
                }
                // The next change, or a second (leadership may have moved here).
                let _ = tokio::time::timeout(Duration::from_secs(1), tick.changed()).await;
            }
        })
    });
    let sessions = Arc::new(Sessions::default());
    let auth = Arc::new(crate::authn::Authenticator::new(
        acl,
        state.clone(),
        store.clone(),
    ));
    let live = Arc::new(crate::live::Live::default());
    let dns = dns.map(|dns| {
        let sessions = sessions.clone();
        let count: crate::dns::Count = Arc::new(move |transport, answered| {
            sessions
                .metrics
                .dns_answered(transport, answered.rcode_label(), answered.truncated);
        });
        tokio::spawn(crate::dns::serve(dns, state.clone(), count))
    });
    let discovery = DiscoveryServer::new(
        state.clone(),
        sessions.clone(),
        auth.clone(),
        crate::discovery::Limits {
            streams_per_token: limits.streams_per_token,
        },
        live.clone(),
    );
    let discovery = Arc::new(discovery);
    let update_stream =
        crate::update_stream::StreamService::new(discovery.clone(), MAX_PROXY_MESSAGE);
    let grpc = GrpcDiscovery::from_arc(discovery)
        .max_decoding_message_size(MAX_PROXY_MESSAGE)
        .max_encoding_message_size(usize::MAX);
    // gRPC requests are HTTP/2 POSTs to /weft.discovery.v1.Discovery/METHOD; everything
    // else is the JSON API.
    let api = Api {
        store: store.clone(),
        state,
        sessions,
        live,
        advertise,
        ca,
        auth,
        metrics_public,
        instances_per_service: limits.instances_per_service,
        tls: acceptor.is_some(),
        leadership: leadership.clone(),
        topology: Default::default(),
        judge,
    };
    // Canary rollouts, run by whichever replica leads.
    let canaries = tokio::spawn(api::run_canaries(api.clone()));
    // The update stream is framed by weft itself (update_stream.rs: no per-stream encode
    // buffer); the other discovery methods are tonic's.
    let app = api::router(api)
        .route_service(crate::update_stream::PATH, update_stream)
        .route_service("/weft.discovery.v1.Discovery/{*method}", grpc);
    let local: SocketAddr = listener.local_addr()?;
    tracing::info!(%local, tls = acceptor.is_some(), "control plane listening (HTTP API and gRPC discovery)");
    accept_loop(listener, app, acceptor, limits.max_connections, shutdown).await;
    follower.abort();
    announcer.abort();
    for task in [dns, vip_giver].into_iter().flatten() {
        task.abort();
    }
    pruner.abort();
    canaries.abort();
    campaign.abort();
    leadership.resign(&*store).await;
    bundle_follower.abort();
    Ok(())
}

/// Time a client has to send a request's headers (slowloris defence on the API).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head on the API.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Streams per HTTP/2 connection: a sidecar needs a few (its discovery stream and API
/// calls); a relay or load generator multiplexing many proxies gets a thousand.
const MAX_STREAMS_PER_CONNECTION: u32 = 1000;

/// Accepts connections and serves each with hyper (HTTP/1.1 or h2c), with the API's limits:
/// a header read timeout, bounded heads, and HTTP/2 pings so a proxy that vanished
/// without closing its connection (a partition, a dead host) frees its stream.
async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::conn::auto,
        service::TowerToHyperService,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut refused_logged: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Over the limit a connection is closed at once (logged at most every 10 s).
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(max_connections, "connection limit reached: closing new connections (weft server --max-connections)");
                refused_logged = Some(tokio::time::Instant::now());
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let result = match tls {
                None => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await
                }
                Some(acceptor) => {
                    // The handshake gets the same deadline as a request's headers.
                    let tls =
                        match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "API TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "API connection ended");
            }
        });
    }
}
