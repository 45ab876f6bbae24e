//! `weft sidecar`: a proxy beside one service instance, fed by the control plane.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context};
use weft_proxy::{
    mesh::{
        discovery::{self, Identity},
        identity, live,
        registration::{HealthCheck, Registration},
        sidecar_config, transparent, SidecarSpec,
    },
    source::FileSource,
    ProxyOptions, RunningProxy,
};

/// `weft sidecar` options.
#[derive(clap::Args)]
pub struct SidecarArgs {
    /// Control-plane URL(s), tried in turn (comma-separated or repeated).
    #[arg(long, env = "WEFT_SERVER", value_delimiter = ',', default_value = crate::control::DEFAULT_SERVER)]
    server: Vec<String>,
    #[command(flatten)]
    pub(crate) auth: crate::control::ControlAuth,
    /// The service this instance belongs to.
    #[arg(long)]
    service: String,
    #[command(flatten)]
    tracing: crate::proxy::TracingArgs,
    /// Instance id (default: SERVICE-<random>).
    #[arg(long)]
    id: Option<String>,
    /// The local application, IP:PORT (not with --gateway).
    #[arg(long, required_unless_present = "gateway", conflicts_with = "gateway")]
    app: Option<SocketAddr>,
    /// Edge gateway mode: serve this file's Gateway listeners and HTTPRoutes, calling the
    /// mesh services its routes name over mutual TLS as SERVICE (no inbound listener, no
    /// registration). The file and the certificates it names are followed like a
    /// standalone proxy's (`--watch-interval`, SIGHUP).
    #[arg(long)]
    gateway: Option<std::path::PathBuf>,
    /// With --gateway: how often its file is checked for changes (`off`: SIGHUP only).
    #[arg(long, default_value = "1s")]
    watch_interval: String,
    /// The application's protocol: http, http2, grpc, or tcp (opaque bytes: callers get
    /// a TCP listener, intentions judge connections and close denied ones).
    #[arg(long, default_value = "http")]
    app_protocol: String,
    /// Inbound listener (mesh traffic for this instance), IP:PORT; port 0 picks one.
    #[arg(long, default_value = "0.0.0.0:15001")]
    inbound: SocketAddr,
    /// Address registered for other sidecars to reach the inbound listener (default:
    /// the inbound IP, or 127.0.0.1 when that is unspecified).
    #[arg(long)]
    advertise: Option<std::net::IpAddr>,
    /// An upstream: NAME=IP:PORT opens a local listener that sends to service NAME.
    #[arg(long = "upstream")]
    upstreams: Vec<String>,
    /// Health check of the app: `http:/PATH`, `tcp`, `grpc` (the gRPC health protocol;
    /// `grpc:SERVICE` for one service's status) or `none`.
    #[arg(long, default_value = "tcp")]
    health: String,
    /// How often the app is checked.
    #[arg(long, default_value = "2s", value_parser = crate::process::parse_duration)]
    health_interval: Duration,
    /// Registration lease TTL: how long a dead sidecar's instance stays in the catalog.
    #[arg(long, default_value = "10s", value_parser = crate::process::parse_duration)]
    ttl: Duration,
    /// Metadata KEY=VALUE (repeatable), e.g. version=v2, zone=a.
    #[arg(long = "metadata")]
    metadata: Vec<String>,
    /// Admin listener (metrics, /config), or `off`.
    #[arg(long, default_value = "off")]
    admin: String,
    /// After deregistering on SIGTERM, how long peers get to stop sending new requests.
    #[arg(long, default_value = "2s", value_parser = crate::process::parse_duration)]
    deregister_delay: Duration,
    /// Then how long in-flight requests get to finish.
    #[arg(long, default_value = "10s", value_parser = crate::process::parse_duration)]
    drain_timeout: Duration,
    /// Transparent mode: iptables rules in this network namespace send the application's
    /// outbound TCP through the sidecar (mesh services through the mesh, the rest as it
    /// is) and connections for the application's port to the inbound listener
    /// (docs/transparent.md). Needs CAP_NET_ADMIN; the rules go when the sidecar does.
    #[arg(long, conflicts_with = "gateway")]
    transparent: bool,
    /// With --transparent: the port intercepted connections are redirected to (on
    /// 127.0.0.1, and [::1] when IPv6 is there); 0 picks one.
    #[arg(long, default_value_t = 15006)]
    transparent_port: u16,
    /// With --transparent: connections to destinations outside the mesh go through
    /// untouched (`allow-any`) or are closed (`registry-only`).
    #[arg(long, default_value = "allow-any")]
    outbound_policy: String,
    /// With --transparent: destination ports never intercepted (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// With --transparent: destination CIDRs never intercepted (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<String>,
    /// With --transparent: print the iptables commands that would be run, and exit.
    #[arg(long, requires = "transparent")]
    print_rules: bool,
    /// Worker threads. One instance's traffic rarely needs more than one core, and one
    /// thread spends no CPU on cross-thread wake-ups (bench/mesh.py).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

fn pair(s: &str, what: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("{what} `{s}`: expected KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

/// The Gateway, HTTPRoute and Service documents of an edge gateway's file, as JSON.
fn gateway_docs(path: &std::path::Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--gateway {}", path.display()))?;
    let docs = weft_model::yaml::parse_documents(&text).map_err(|e| {
        anyhow::anyhow!("{}:{}: YAML syntax: {}", path.display(), e.line, e.message)
    })?;
    let mut out = Vec::new();
    for d in docs {
        match d.value.get("kind").and_then(serde_json::Value::as_str) {
            Some("Gateway" | "HTTPRoute" | "Service") => out.push(d.value),
            None if d.value.is_null() => {}
            other => bail!(
                "{}:{}: an edge gateway file holds Gateway, HTTPRoute and Service documents, not {}",
                path.display(),
                d.start_line,
                other.unwrap_or("a document without kind")
            ),
        }
    }
    if !out
        .iter()
        .any(|d| d.get("kind").and_then(serde_json::Value::as_str) == Some("Gateway"))
    {
        bail!("{}: no Gateway (listeners) in the file", path.display());
    }
    Ok(out)
}

/// An edge gateway follows its file: each version that reads is handed to the discovery
/// loop, which builds and applies it (or refuses it whole). Never returns for a sidecar.
async fn follow_gateway_file(
    source: Option<FileSource>,
    proxy: &RunningProxy,
    specs: &tokio::sync::watch::Sender<SidecarSpec>,
    declared: &[(String, String)],
) {
    let Some(source) = source else {
        return std::future::pending().await;
    };
    let path = source.path().to_path_buf();
    let (_keep, never) = tokio::sync::watch::channel(false);
    let followed = source.follow(proxy, never, |force| match gateway_docs(&path) {
        Err(e) => {
            tracing::error!("gateway file refused, the previous version keeps serving: {e:#}");
            proxy.reject(&format!("{e:#}"));
        }
        Ok(docs) if !force && docs == specs.borrow().gateway => {
            tracing::debug!("gateway file unchanged");
        }
        Ok(docs) => {
            tracing::info!(file = %path.display(), "gateway file changed");
            let next = specs.borrow().clone().with_gateway(docs, declared);
            specs.send_replace(next);
        }
    });
    if let Err(e) = followed.await {
        tracing::error!(error = %e, "cannot follow the gateway file any more");
    }
    std::future::pending().await
}

/// Removes the transparent mode's iptables rules when dropped.
struct RulesGuard;

impl Drop for RulesGuard {
    fn drop(&mut self) {
        transparent::Redirect::remove();
        tracing::info!("transparent mode: iptables rules removed");
    }
}

/// The transparent mode's rules and policy from the flags (None: not transparent); every
/// flag is checked before anything starts.
fn transparent_plan(
    args: &SidecarArgs,
) -> anyhow::Result<Option<(transparent::Redirect, transparent::OutboundPolicy)>> {
    if !args.transparent {
        return Ok(None);
    }
    let policy = transparent::OutboundPolicy::parse(&args.outbound_policy).with_context(|| {
        format!(
            "--outbound-policy {}: expected allow-any or registry-only",
            args.outbound_policy
        )
    })?;
    let exclude_cidrs = args
        .exclude_outbound_cidrs
        .iter()
        .map(|c| transparent::Redirect::parse_cidr(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--exclude-outbound-cidrs {e}"))?;
    let uid = transparent::own_uid().map_err(|e| anyhow::anyhow!("--transparent: {e}"))?;
    let redirect = transparent::Redirect {
        port: args.transparent_port,
        uid,
        exclude_ports: args.exclude_outbound_ports.clone(),
        exclude_cidrs,
        inbound: args.app.map(|a| (a.port(), args.inbound.port())),
    };
    Ok(Some((redirect, policy)))
}

/// Runs the sidecar until SIGTERM/SIGINT.
pub async fn run(args: SidecarArgs) -> anyhow::Result<()> {
    let Some(app_protocol) = weft_model::AppProtocol::parse(&args.app_protocol) else {
        bail!(
            "--app-protocol {}: expected http, http2, grpc or tcp",
            args.app_protocol
        );
    };
    let check = match args.health.as_str() {
        "tcp" => HealthCheck::Tcp,
        "none" => HealthCheck::None,
        "grpc" => HealthCheck::Grpc(String::new()),
        h => match (h.strip_prefix("http:"), h.strip_prefix("grpc:")) {
            (Some(path), _) if path.starts_with('/') => HealthCheck::Http(path.to_string()),
            (_, Some(service)) => HealthCheck::Grpc(service.to_string()),
            _ => bail!("--health {h}: expected http:/PATH, tcp, grpc, grpc:SERVICE or none"),
        },
    };
    let transparent = transparent_plan(&args)?;
    if args.print_rules {
        if let Some((redirect, _)) = &transparent {
            println!("{}\n{}", redirect.script(false), redirect.script(true));
        }
        return Ok(());
    }
    let poll = crate::process::watch_interval(&args.watch_interval)?;
    let (source, gateway) = match &args.gateway {
        Some(path) => {
            let mut source = FileSource::new(path.clone(), poll)?;
            source.reading();
            (Some(source), gateway_docs(path)?)
        }
        None => (None, Vec::new()),
    };
    let mut declared = Vec::new();
    for u in &args.upstreams {
        let (name, addr) = pair(u, "--upstream")?;
        addr.parse::<SocketAddr>()
            .with_context(|| format!("--upstream {u}: `{addr}` is not IP:PORT"))?;
        declared.push((name, addr));
    }
    let metadata = args
        .metadata
        .iter()
        .map(|m| pair(m, "--metadata"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let admin = match args.admin.as_str() {
        "off" => None,
        a => Some(
            a.parse::<SocketAddr>()
                .with_context(|| format!("--admin {a}: expected IP:PORT or off"))?,
        ),
    };
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("{}-{:08x}", args.service, fastrand::u32(..)));
    // The mesh identity comes first: without it nothing can be served or called.
    let mesh = identity::bootstrap(&args.server, &args.service).await;
    let spec = SidecarSpec {
        service: args.service.clone(),
        inbound: args.inbound.to_string(),
        app: args.app.map(|a| a.to_string()).unwrap_or_default(),
        app_protocol,
        upstreams: Vec::new(),
        trust_domain: mesh.trust_domain().to_string(),
        gateway: Vec::new(),
        gateway_dir: args
            .gateway
            .as_deref()
            .and_then(std::path::Path::parent)
            .map(|p| {
                if p.as_os_str().is_empty() {
                    std::path::PathBuf::from(".")
                } else {
                    p.to_path_buf()
                }
            }),
    }
    .with_gateway(gateway, &declared);
    // Start serving at once (upstreams answer 503 until the control plane's first
    // update names their endpoints).
    let initial = sidecar_config(&spec, &Default::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let proxy = RunningProxy::start(
        initial,
        ProxyOptions {
            admin,
            access_log: None,
            source: format!("control plane {}", args.server.join(",")),
            mesh: Some(mesh.clone()),
            tracing: args.tracing.options(&args.service)?,
        },
    )
    .await?;
    let listeners = proxy.listeners();
    // A sidecar registers its instance; an edge gateway is not called through the mesh.
    let registration = match args.app {
        None => None,
        Some(app) => {
            let inbound = listeners
                .iter()
                .find(|(n, _)| n == "sidecar/inbound")
                .map(|(_, a)| *a)
                .context("no inbound listener")?;
            let advertise = args.advertise.unwrap_or(if inbound.ip().is_unspecified() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                inbound.ip()
            });
            Some(Registration {
                servers: args.server.clone(),
                service: args.service.clone(),
                id: id.clone(),
                address: SocketAddr::new(advertise, inbound.port()),
                metadata,
                protocol: app_protocol,
                ttl: args.ttl,
                app,
                check,
                interval: args.health_interval,
            })
        }
    };
    // Transparent mode: listen first, then redirect (no instant where redirected
    // connections meet a closed port); the guard removes the rules however this ends.
    let mut transparent_listeners = Vec::new();
    let mut redirecting = None;
    if let Some((mut redirect, policy)) = transparent {
        let v4 = tokio::net::TcpListener::bind(("127.0.0.1", redirect.port))
            .await
            .with_context(|| format!("--transparent-port {}", redirect.port))?;
        redirect.port = v4.local_addr()?.port();
        transparent_listeners.push(v4);
        let v6 = tokio::net::TcpListener::bind(("::1", redirect.port))
            .await
            .ok();
        let has_v6 = v6.is_some();
        transparent_listeners.extend(v6);
        if let Some((app_port, _)) = redirect.inbound {
            let inbound = listeners
                .iter()
                .find(|(n, _)| n == "sidecar/inbound")
                .map(|(_, a)| a.port())
                .context("no inbound listener")?;
            redirect.inbound = Some((app_port, inbound));
        }
        let has_v6 = redirect.install(has_v6).map_err(|e| {
            anyhow::anyhow!("--transparent: cannot install the iptables rules: {e}")
        })?;
        tracing::info!(
            port = redirect.port,
            ipv6 = has_v6,
            ?policy,
            "transparent mode: outbound TCP redirected"
        );
        redirecting = Some((RulesGuard, redirect.port, policy));
    }
    let keep_registered = async {
        match &registration {
            Some(r) => r.keep().await,
            None => std::future::pending().await,
        }
    };
    let listeners_json: serde_json::Map<String, serde_json::Value> = listeners
        .iter()
        .map(|(n, a)| (n.clone(), a.to_string().into()))
        .collect();
    note!(
        "{}",
        serde_json::json!({"event": "ready", "id": id, "listeners": listeners_json, "admin": proxy.admin.map(|a| a.to_string()),
            "transparent": redirecting.as_ref().map(|(_, port, _)| *port)})
    );
    let who = Identity {
        proxy_id: id.clone(),
        build: format!("weft {}", env!("CARGO_PKG_VERSION")),
    };
    let live = live::LiveWho {
        proxy_id: id.clone(),
        service: args.service.clone(),
        identity: weft_tls::spiffe::service_id(mesh.trust_domain(), &args.service),
        inbound: "sidecar/inbound".to_string(),
    };
    let (synced, mut synced_rx) = tokio::sync::watch::channel(None);
    let specs = tokio::sync::watch::Sender::new(spec);
    let announce = async {
        // One line when the first update is applied (scripts and tests wait for it).
        if synced_rx.wait_for(Option::is_some).await.is_ok() {
            let v = *synced_rx.borrow();
            note!("{}", serde_json::json!({"event": "synced", "version": v}));
        }
        std::future::pending::<()>().await
    };
    let intercept = async {
        match &redirecting {
            Some((_, _, policy)) => {
                let on_demand = std::sync::Arc::new(transparent::OnDemand::new(
                    args.server.clone(),
                    specs.clone(),
                ));
                let listeners = std::mem::take(&mut transparent_listeners);
                transparent::serve(listeners, proxy.watch(), on_demand, *policy).await
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = crate::process::wait_for_signal() => r?,
        _ = intercept => {}
        _ = keep_registered => {}
        _ = identity::keep_renewed(args.server.clone(), args.service.clone(), mesh.clone(), proxy.metrics()) => {}
        _ = follow_gateway_file(source, &proxy, &specs, &declared) => {}
        _ = discovery::follow(&args.server, &who, specs.subscribe(), &proxy, &synced) => {}
        _ = live::follow(&args.server, &live, &proxy) => {}
        _ = announce => {}
    }
    // New connections of the application go direct again from here.
    drop(redirecting);
    tracing::info!("stopping: deregistering, then draining");
    if let Some(r) = &registration {
        r.deregister().await;
        tokio::time::sleep(args.deregister_delay).await;
    }
    let drained = proxy.shutdown(args.drain_timeout).await;
    tracing::info!(drained, "stopped");
    Ok(())
}
