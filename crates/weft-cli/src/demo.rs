//! `weft demo`: a local mesh (`demo_mesh.rs`: control plane, four services with sidecars,
//! a caller) and an edge proxy in front of three echo backends (HTTP, and HTTPS with a
//! self-signed certificate made at start), all on loopback.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use weft_proxy::{telemetry::access_log::Sink, ProxyOptions, RunningProxy};

const BACKENDS: [&str; 3] = ["echo-1", "echo-2", "echo-3"];

/// The demo configuration; `{EP1}`.. are replaced by the backends' addresses.
const CONFIG: &str = r#"
kind: Gateway
metadata: {name: demo}
spec:
  listeners:
    - {name: web, address: "{LISTEN}"}
    # HTTPS with a self-signed certificate made at start (localhost, 127.0.0.1); the
    # routes below attach to both listeners.
    - name: https
      address: "{LISTEN_TLS}"
      protocol: HTTPS
      tls: {certificates: [{certFile: demo.crt, keyFile: demo.key}]}
  # Every request traced (spans exported when --otlp-endpoint or OTEL_EXPORTER_OTLP_ENDPOINT
  # names a collector; trace context is passed on either way).
  tracing: {samplingPercent: 100}
---
kind: HTTPRoute
metadata: {name: demo}
spec:
  rules:
    # Everything: balanced over three backends (P2C peak-EWMA, the default).
    - backendRefs: [{name: echo}]
    # /rr/...: round robin, prefix stripped before forwarding.
    - matches: [{path: {type: PathPrefix, value: /rr}}]
      filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
      backendRefs: [{name: echo-rr}]
    # /split: 90% to echo-1, 10% to echo-3.
    - matches: [{path: {type: Exact, value: /split}}]
      backendRefs: [{name: only-1, weight: 90}, {name: only-3, weight: 10}]
    # Header match: x-canary: yes goes to echo-3 and is tagged in the response.
    - matches: [{headers: [{name: x-canary, value: "yes"}]}]
      filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier: {set: [{name: x-demo-route, value: canary}]}
      backendRefs: [{name: only-3}]
    # /old/...: permanent redirect to /new/...
    - matches: [{path: {type: PathPrefix, value: /old}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
---
kind: Service
metadata: {name: echo}
spec:
  endpoints: [{address: "{EP1}"}, {address: "{EP2}"}, {address: "{EP3}"}]
---
kind: Service
metadata: {name: echo-rr}
spec:
  loadBalancer: {policy: RoundRobin}
  endpoints: [{address: "{EP1}"}, {address: "{EP2}"}, {address: "{EP3}"}]
---
kind: Service
metadata: {name: only-1}
spec:
  endpoints: [{address: "{EP1}"}]
---
kind: Service
metadata: {name: only-3}
spec:
  protocol: http2
  endpoints: [{address: "{EP3}"}]
"#;

async fn bind_or_any(port: u16) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => Ok(l),
        Err(_) => Ok(TcpListener::bind("127.0.0.1:0").await?),
    }
}

/// Runs the demo until Ctrl-C.
pub async fn run(
    port: u16,
    tls_port: u16,
    server_port: u16,
    otlp: Option<weft_proxy::telemetry::otlp::Options>,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut config = CONFIG.to_string();
    let mut backends = Vec::new();
    for (i, name) in BACKENDS.iter().enumerate() {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        config = config.replace(&format!("{{EP{}}}", i + 1), &addr.to_string());
        let mut stop = stop_rx.clone();
        backends.push(tokio::spawn(async move {
            weft_echo::serve(
                listener,
                weft_echo::EchoOptions {
                    name: name.to_string(),
                    ..Default::default()
                },
                async move {
                    let _ = stop.changed().await;
                },
            )
            .await;
        }));
    }
    // Find a free proxy port, then hand it to the config (the proxy binds it itself).
    let probe = bind_or_any(port).await?;
    let listen: SocketAddr = probe.local_addr()?;
    drop(probe);
    let admin_probe = bind_or_any(9901).await?;
    let admin = admin_probe.local_addr()?;
    drop(admin_probe);
    let tls_probe = bind_or_any(tls_port).await?;
    let listen_tls: SocketAddr = tls_probe.local_addr()?;
    drop(tls_probe);
    config = config
        .replace("{LISTEN}", &listen.to_string())
        .replace("{LISTEN_TLS}", &listen_tls.to_string());

    // A fresh self-signed certificate, in a directory removed on exit.
    let dir = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("creating the demo's certificate directory")?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let (cert, key) = weft_tls::self_signed(&["localhost", "127.0.0.1"])?;
    let cert_file = dir.join("demo.crt");
    std::fs::write(&cert_file, cert)?;
    write_private(&dir.join("demo.key"), &key)?;

    let traces = match &otlp {
        Some(o) => format!(
            "spans of every hop go to {} (OTLP {}): look the trace id up in your collector",
            o.endpoint,
            o.protocol.as_str()
        ),
        None => "no collector named: start the demo with --otlp-endpoint http://127.0.0.1:4317 \
                 (an OpenTelemetry Collector, Jaeger or Tempo) to see the spans"
            .to_string(),
    };
    let mesh = crate::demo_mesh::start(&dir, server_port, otlp.as_ref())
        .await
        .context("starting the demo mesh")?;
    let mut parsed =
        weft_model::parse("demo.yaml", &config).map_err(|e| anyhow::anyhow!("demo config: {e}"))?;
    parsed.base_dir = Some(dir.clone());
    let opts = ProxyOptions {
        admin: Some(admin),
        access_log: Some(Sink::Stdout),
        source: "weft demo (built in)".into(),
        mesh: None,
        tracing: otlp,
    };
    let proxy = RunningProxy::start(parsed, opts)
        .await
        .context("starting the demo proxy")?;
    let url = format!("http://{listen}");
    let tls_url = format!("https://localhost:{}", listen_tls.port());
    let ca = cert_file.display();
    let admin_url = format!("http://{admin}");
    // One JSON line first on stdout (what scripts and tests wait for), then access logs.
    println!(
        "{}",
        serde_json::json!({
            "event": "ready",
            "listeners": {"demo/web": listen.to_string(), "demo/https": listen_tls.to_string()},
            "admin": admin.to_string(),
            "ca": cert_file.display().to_string(),
            "mesh": {
                "server": mesh.server,
                "token": mesh.token,
                "caFile": mesh.ca_file.display().to_string(),
                "upstreams": mesh.upstreams.iter().map(|(n, a)| (n.clone(), a.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
            },
        })
    );
    let server = &mesh.server;
    let (dns_ip, dns_port) = (mesh.dns.ip(), mesh.dns.port());
    let token = &mesh.token;
    let ca_file = mesh.ca_file.display();
    let (pay, inv) = (mesh.upstreams[0].1, mesh.upstreams[1].1);
    let split = mesh.split_file.display();
    let canary = mesh.split_file.with_file_name("payments-canary.yaml");
    let canary = canary.display();
    let logs = dir.display();
    eprintln!(
        r#"
weft demo: a local mesh is running.
  control plane  {server}   (embedded store; logs and data in {logs})
  services       frontend, payments (v1 and v2), inventory (x2), each an echo app with a sidecar
  frontend calls payments and inventory through its sidecar every second (lines below).

The web UI (docs/ui.md): open {server}/ui/ and paste the token {token}
  (the server's certificate comes from the mesh's own CA, {ca_file}: import it into the
  browser, or accept the warning for this local demo)

Watch it work (TLS and ACLs are on; this is the management token, each sidecar has its own):
  export WEFT_SERVER={server} WEFT_TOKEN={token} WEFT_CA_FILE={ca_file}
  weft status                        # every sidecar, and whether it has the latest config
  weft catalog; weft catalog inventory
  curl -s http://{pay}/order         # call payments as frontend does, through its sidecar
  curl -s http://{inv}/order         # inventory: balanced over two instances
  weft apply -f {split} --dry-run    # a split by version: 80% payments v1, 20% v2
  weft apply -f {split} --wait       # returns when every sidecar has applied it
  weft apply -f {canary}             # or a canary rollout of v2, judged every 10 s:
  weft canary status payments        #   its steps, measurements and verdicts (also in the UI)
  weft kv put features/checkout on && weft kv watch features/checkout
  weft get httproute -o yaml
  weft intention check frontend inventory --method POST   # denied: frontend may only GET
  weft acl list                      # the demo's tokens (secrets are never shown again)

The catalog over DNS (docs/dns.md), for programs that know nothing of weft:
  dig @{dns_ip} -p {dns_port} +short inventory.service.weft      # healthy instances' addresses
  dig @{dns_ip} -p {dns_port} +short _payments._tcp.service.weft SRV
  dig @{dns_ip} -p {dns_port} +short payments.virtual.weft       # payments' virtual IP
The sidecars here are explicit (frontend calls its 127.0.0.1 listeners; no root needed).
Transparent mode, where unmodified apps call payments.virtual.weft and iptables sends the
connection through the sidecar, needs root and a network namespace: docs/transparent.md
  (`weft sidecar --service S --app ADDR --transparent --print-rules` shows the rules).

Live traffic, answered by the sidecars themselves (docs/observability.md):
  weft stat --all                    # per service: success rate, rps, p50/p95/p99
  weft edges frontend                # who calls whom, with identities and mTLS
  weft tap payments                  # payments' requests as they happen (Ctrl-C stops)
  weft top payments                  # its busiest paths, redrawn every second (q quits)

Tracing (every request sampled; each sidecar continues the trace it is given, W3C or B3):
  curl -s -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' http://{pay}/order
  {traces}
"#
    );
    eprintln!(
        r#"
weft demo is running: a proxy at {url} in front of three echo backends.

Try:
  curl -si {url}/hello                       # balanced (P2C peak-EWMA); see x-echo-name
  for i in 1 2 3 4 5 6; do curl -s {url}/rr/x | grep -o '"name":"[^"]*"'; done   # round robin
  curl -si {url}/split                       # 90% echo-1, 10% echo-3
  curl -si -H 'x-canary: yes' {url}/         # header match -> echo-3 (HTTP/2 upstream)
  curl -si {url}/old/page                    # 301 to /new/page
  curl -si --http2-prior-knowledge {url}/h2  # HTTP/2 to the proxy
  curl -si --cacert {ca} {tls_url}/hello     # HTTPS edge: TLS 1.3, HTTP/2 by ALPN
  curl -s  {admin_url}/metrics | grep weft_requests_total
  curl -s  '{admin_url}/stats?window=1m'     # live: requests, success rate, p50/p95/p99 per route
  curl -s  {admin_url}/config

Access log lines (JSON) follow on stdout. Ctrl-C stops everything.
"#
    );
    // Ctrl-C, or a plain `kill` (SIGTERM): either stops the whole mesh, not the demo alone.
    tokio::select! {
        r = crate::process::wait_for_signal() => r?,
        _ = mesh.call_forever() => {}
    }
    eprintln!("stopping...");
    mesh.stop().await;
    proxy.shutdown(std::time::Duration::from_secs(5)).await;
    let _ = stop_tx.send(true);
    for b in backends {
        let _ = b.await;
    }
    Ok(())
}

/// Removes the demo's temporary directory when the demo ends.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a private key readable by the owner only.
fn write_private(path: &std::path::Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(pem.as_bytes())
}
