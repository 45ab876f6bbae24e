//! `weft server`: the control plane, on the embedded store or etcd, until a signal.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context};

/// `weft server` options.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// API and discovery address (HTTP/1.1 and gRPC on one port).
    #[arg(long, default_value = "127.0.0.1:8500")]
    listen: std::net::SocketAddr,
    /// Directory of the embedded store (default `weft-data`) and of `ca.pem`, the CA's
    /// roots for local clients. With --etcd it holds only `ca.pem`, and only if given.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Use an etcd cluster instead (comma-separated `http://HOST:PORT` endpoints):
    /// several servers over one etcd serve the same mesh.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Address other servers reach this one at (default: the bound address).
    #[arg(long)]
    advertise: Option<String>,
    /// The mesh's SPIFFE trust domain, fixed at the mesh's first start.
    #[arg(long, default_value = "weft.local")]
    trust_domain: String,
    /// Lifetime of the certificates the CA issues to proxies (at least 10s).
    #[arg(long, default_value = "24h", value_parser = crate::process::parse_duration)]
    cert_ttl: Duration,
    /// ACL tokens required on the API and discovery stream (`on`), or not (`off`: anyone
    /// who reaches the server may change the mesh and obtain any identity).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    acl: String,
    /// TLS on the API and discovery stream, with a certificate from the mesh CA (`on`),
    /// or plaintext (`off`).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    tls: String,
    /// A DNS name or IP address clients use to reach this server (repeatable); the
    /// certificate always covers localhost, 127.0.0.1, the listen IP and the advertise host.
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
    /// At the mesh's first start: use this CA certificate (a root, or an intermediate with
    /// --ca-roots) instead of generating a root. PEM.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// Its private key (PEM; must not be readable by group or others).
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// The root(s) above an intermediate --ca-cert, to put in the trust bundle. PEM.
    #[arg(long, requires = "ca_cert")]
    ca_roots: Option<PathBuf>,
    /// `/metrics` needs a token granting `operator:read` (`token`, with ACLs on), or
    /// answers anyone who reaches the port (`public`).
    #[arg(long, default_value = "token", value_parser = ["token", "public"])]
    metrics: String,
    /// Open connections at once (API and discovery); beyond, new ones are closed at once.
    #[arg(long, default_value_t = weft_control::server::Limits::default().max_connections)]
    max_connections: usize,
    /// Registered instances one service may have.
    #[arg(long, default_value_t = weft_control::server::Limits::default().instances_per_service)]
    max_instances_per_service: usize,
    /// Discovery streams open at once under one ACL token.
    #[arg(long, default_value_t = weft_control::server::Limits::default().streams_per_token)]
    max_streams_per_token: usize,
    /// Answer DNS for the catalog on this IP:PORT, UDP and TCP (`<service>.service.DOMAIN`,
    /// SRV, tags; docs/dns.md), or `off`. Answers need no token: bind it where only the
    /// mesh's machines reach it.
    #[arg(long, default_value = "off")]
    dns: String,
    /// The domain DNS answers for.
    #[arg(long, default_value = "weft")]
    dns_domain: String,
    /// TTL of DNS answers (0s: resolvers ask again each time and follow the catalog).
    #[arg(long, default_value = "0s", value_parser = crate::process::parse_duration)]
    dns_ttl: Duration,
    /// The IPv4 range services' virtual IPs come from (`<service>.virtual.DOMAIN`; a
    /// transparent sidecar sends calls to one through the mesh), or `off`.
    #[arg(long, default_value = "240.0.0.0/16")]
    virtual_ips: String,
}

/// Reads operator-provided CA material; a key others can read is refused.
pub(crate) fn provided_ca(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    roots: Option<PathBuf>,
) -> anyhow::Result<Option<weft_control::ca::Provided>> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("{}", p.display()));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key)
            .with_context(|| format!("{}", key.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "--ca-key {}: readable by group or others (mode {:o}); chmod 600 it",
                key.display(),
                mode & 0o777
            );
        }
    }
    Ok(Some(weft_control::ca::Provided {
        cert: read(&cert)?,
        key: read(&key)?,
        roots: roots.as_ref().map(read).transpose()?,
    }))
}

/// `weft server`.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let ServerArgs {
        listen,
        data_dir,
        etcd,
        advertise,
        trust_domain,
        cert_ttl,
        acl,
        tls,
        tls_names,
        ca_cert,
        ca_key,
        ca_roots,
        metrics,
        max_connections,
        max_instances_per_service,
        max_streams_per_token,
        dns,
        dns_domain,
        dns_ttl,
        virtual_ips,
    } = args;
    let virtual_ips = match virtual_ips.as_str() {
        "off" => None,
        cidr => Some(
            weft_control::vip::Range::parse(cidr)
                .map_err(|e| anyhow::anyhow!("--virtual-ips {e}"))?,
        ),
    };
    // Checked before anything starts: a bad flag changes nothing.
    let dns_zone = match dns.as_str() {
        "off" => None,
        addr => {
            let addr: std::net::SocketAddr = addr
                .parse()
                .with_context(|| format!("--dns {addr}: expected IP:PORT or off"))?;
            let zone = weft_control::dns::Zone::new(&dns_domain, dns_ttl)
                .map_err(|e| anyhow::anyhow!("--dns-domain: {e}"))?;
            Some((addr, zone))
        }
    };
    let provided = provided_ca(ca_cert, ca_key, ca_roots)?;
    let acl = acl == "on";
    if !acl {
        tracing::warn!("ACLs are OFF (--acl off): anyone who can reach this server may change the mesh, read the KV store and obtain any service's certificate");
    }
    let data_dir = match (data_dir, etcd.is_empty()) {
        (Some(d), _) => Some(d),
        (None, true) => Some(PathBuf::from("weft-data")),
        (None, false) => None,
    };
    let (store, store_desc): (Arc<dyn weft_control::store::Store>, String) =
        if let (true, Some(data_dir)) = (etcd.is_empty(), &data_dir) {
            let store = weft_control::embedded::Embedded::open(data_dir)
                .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
            (
                Arc::new(store),
                format!("embedded ({})", data_dir.display()),
            )
        } else {
            (
                etcd_store(&etcd).await?,
                format!("etcd ({})", etcd.join(",")),
            )
        };
    let ca = weft_control::ca::Ca::init(store.clone(), &trust_domain, cert_ttl, provided)
        .await
        .map_err(|e| anyhow::anyhow!("certificate authority: {e}"))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    // Clients on this machine verify the API with the CA's roots, written beside the store
    // (and rewritten as roots rotate).
    let ca_file = if let Some(data_dir) = &data_dir {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let bundle = ca
            .bundle()
            .await
            .map_err(|e| anyhow::anyhow!("certificate authority: {}", e.message))?;
        let path = data_dir.join("ca.pem");
        std::fs::write(&path, bundle.roots_pem())
            .with_context(|| format!("writing {}", path.display()))?;
        Some(path)
    } else {
        None
    };
    let dns = match dns_zone {
        Some((addr, zone)) => Some(
            weft_control::dns::Dns::bind(addr, zone)
                .await
                .with_context(|| format!("--dns: cannot listen on {addr} (UDP and TCP)"))?,
        ),
        None => None,
    };
    let dns_addr = dns.as_ref().map(|d| d.local_addr()).transpose()?;
    let addr = listener.local_addr()?;
    let advertise = advertise.unwrap_or_else(|| {
        if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port())
        } else {
            addr.to_string()
        }
    });
    note!(
        "{}",
        serde_json::json!({"event": "ready", "address": addr.to_string(), "advertise": advertise,
            "store": store_desc, "acl": acl, "tls": tls == "on", "caFile": ca_file,
            "dns": dns_addr.map(|a| a.to_string())})
    );
    let tls = (tls == "on").then(|| {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        if !addr.ip().is_unspecified() {
            names.push(addr.ip().to_string());
        }
        let advertised_host = advertise
            .rsplit_once(':')
            .map_or(advertise.as_str(), |(h, _)| h);
        names.push(advertised_host.trim_matches(['[', ']']).to_string());
        names.extend(tls_names);
        names.sort();
        names.dedup();
        names
    });
    if tls.is_none() {
        tracing::warn!(
            "TLS is OFF (--tls off): ACL tokens and certificates cross the network in the clear"
        );
    }
    let opts = weft_control::server::Options {
        advertise,
        acl,
        tls,
        ca_file: ca_file.clone(),
        metrics_public: metrics == "public",
        limits: weft_control::server::Limits {
            max_connections: max_connections.max(1),
            instances_per_service: max_instances_per_service,
            streams_per_token: max_streams_per_token,
        },
        judge: Some(Arc::new(crate::intention::SidecarJudge)),
        dns,
        virtual_ips,
    };
    weft_control::server::serve(listener, store, Arc::new(ca), opts, async {
        let _ = crate::process::wait_for_signal().await;
    })
    .await?;
    Ok(())
}

#[cfg(feature = "etcd")]
async fn etcd_store(endpoints: &[String]) -> anyhow::Result<Arc<dyn weft_control::store::Store>> {
    let store = weft_control::etcd::Etcd::connect(endpoints)
        .await
        .with_context(|| format!("cannot reach etcd at {}", endpoints.join(",")))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "etcd"))]
async fn etcd_store(_: &[String]) -> anyhow::Result<Arc<dyn weft_control::store::Store>> {
    bail!("this weft was built without etcd support: build with `cargo build --release --features etcd` (needs protoc: apt install protobuf-compiler)")
}
