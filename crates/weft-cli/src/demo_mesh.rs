//! The mesh half of `weft demo`: a control plane (embedded store), four services each
//! with a sidecar, and a caller — all child processes of this binary, on loopback.
//!
//! ```text
//! caller (this process) ─► frontend's sidecar ─┬─► payments sidecar ─► payments app
//!                          (out-payments,      ├─► payments-v2 sidecar (v2 of payments)
//!                           out-inventory)     └─► inventory sidecars ×2 ─► apps
//! ```

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use anyhow::{bail, Context};
use bytes::Bytes;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};
use weft_proxy::telemetry::otlp::Options;

/// The running mesh; dropping it kills every child.
pub struct Mesh {
    children: Vec<Child>,
    /// The control plane's URL.
    pub server: String,
    /// Frontend's outbound listeners: service → address.
    pub upstreams: Vec<(String, SocketAddr)>,
    /// The split example written for the user.
    pub split_file: std::path::PathBuf,
    /// The management token (ACLs are on, as in production).
    pub token: String,
    /// The CA bundle that verifies the control plane's TLS.
    pub ca_file: std::path::PathBuf,
    /// Where the control plane answers DNS for the catalog.
    pub dns: SocketAddr,
}

/// A split the user can apply: 80% of payments' calls to its v1 instances, 20% to v2.
const SPLIT: &str = "\
kind: HTTPRoute
metadata: {name: payments-by-version}
spec:
  parentRefs: [{kind: Service, name: payments}]
  rules:
    - backendRefs:
        - {name: payments, subset: v1, weight: 80}
        - {name: payments, subset: v2, weight: 20}
";

/// A canary rollout of payments v2 the user can apply: the control plane moves the
/// weights of payments-by-version itself, checking v2 every 10 s (the demo calls
/// payments once a second, hence minRequests 1).
const CANARY: &str = "\
kind: Canary
metadata: {name: payments}
spec:
  service: payments
  stable: v1
  canary: v2
  route: payments-by-version
  stepWeight: 25
  maxWeight: 75
  analysis:
    interval: 10s
    threshold: 2
    successRate: 0.99
    p99: 500ms
    minRequests: 1
";

/// Who may call whom: calls between sidecars are denied unless an intention allows them.
/// The mesh's settings: every request traced, as a demo should show them all. And
/// payments' two versions as subsets, all its calls on v1 until a split or a canary.
const INTENTIONS: &str = "\
kind: Mesh
metadata: {name: mesh}
spec:
  tracing: {samplingPercent: 100}
---
kind: Intention
metadata: {name: frontend-to-payments}
spec: {source: frontend, destination: payments, action: allow}
---
kind: Intention
metadata: {name: frontend-to-inventory}
spec:
  source: frontend
  destination: inventory
  permissions:
    - action: allow
      http: {methods: [GET]}
---
kind: Service
metadata: {name: payments}
spec:
  retry: {attempts: 3, on: [connect-failure, reset, unavailable]}
  subsets:
    v1: {version: v1}
    v2: {version: v2}
---
kind: HTTPRoute
metadata: {name: payments-by-version}
spec:
  parentRefs: [{kind: Service, name: payments}]
  rules:
    - backendRefs: [{name: payments, subset: v1, weight: 100}, {name: payments, subset: v2, weight: 0}]
";

/// `POST /v1/acl/bootstrap`: the management token's secret.
async fn bootstrap(server: &str) -> anyhow::Result<String> {
    let (status, v) =
        weft_proxy::mesh::control_api::call(server, "POST", "/v1/acl/bootstrap", None)
            .await
            .map_err(|e| anyhow::anyhow!("ACL bootstrap: {e}"))?;
    match v["secretId"].as_str() {
        Some(s) if status == 200 => Ok(s.to_string()),
        _ => bail!("ACL bootstrap: {status} {v}"),
    }
}

/// A sidecar's token for `service` (write its own service, read the others).
async fn service_token(server: &str, service: &str) -> anyhow::Result<String> {
    let body = serde_json::json!({"service": service, "description": format!("demo sidecar of {service}")});
    let (status, v) =
        weft_proxy::mesh::control_api::call(server, "POST", "/v1/acl/tokens", Some(&body))
            .await
            .map_err(|e| anyhow::anyhow!("token for {service}: {e}"))?;
    match v["secretId"].as_str() {
        Some(s) if status == 200 => Ok(s.to_string()),
        _ => bail!("token for {service}: {status} {v}"),
    }
}

/// Reads a child's remaining stdout (a closed pipe would kill it at its next line).
fn drain(mut lines: Lines<BufReader<ChildStdout>>) {
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}

#[derive(Default)]
/// What a sidecar child is started with besides its arguments.
struct ChildEnv<'a> {
    /// Its own ACL token (sidecars only).
    token: Option<&'a str>,
    /// The OTLP collector its spans go to (sidecars only).
    otlp: Option<&'a Options>,
}

async fn spawn(
    dir: &Path,
    name: &str,
    args: &[String],
    with: ChildEnv<'_>,
) -> anyhow::Result<(Child, Value, Lines<BufReader<ChildStdout>>)> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    if let Some(t) = with.token {
        cmd.env("WEFT_TOKEN", t);
        cmd.env("WEFT_CA_FILE", dir.join("data").join("ca.pem"));
    }
    if let Some(o) = with.otlp {
        // The collector the demo was given, whichever way; each sidecar names its spans
        // after its own service (a user's OTEL_SERVICE_NAME would name them all alike).
        cmd.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &o.endpoint)
            .env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", o.protocol.as_str())
            .env_remove("OTEL_SERVICE_NAME");
    }
    let mut child = cmd
        .args(args)
        .env("WEFT_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .with_context(|| {
            format!(
                "{name} did not start (see {})",
                dir.join(format!("{name}.log")).display()
            )
        })??
        .with_context(|| {
            format!(
                "{name} exited (see {})",
                dir.join(format!("{name}.log")).display()
            )
        })?;
    let ready: Value = serde_json::from_str(&first).with_context(|| format!("{name}: {first}"))?;
    Ok((child, ready, lines))
}

fn s(v: &str) -> String {
    v.to_string()
}

/// Starts the mesh, with its store and logs in `dir`.
pub async fn start(dir: &Path, server_port: u16, otlp: Option<&Options>) -> anyhow::Result<Mesh> {
    let mut children = Vec::new();
    let listen = match std::net::TcpListener::bind(("127.0.0.1", server_port)) {
        Ok(l) => l.local_addr()?,
        Err(_) => "127.0.0.1:0".parse()?,
    };
    let data = dir.join("data");
    let (child, ready, lines) = spawn(
        dir,
        "server",
        &[
            s("server"),
            s("--listen"),
            listen.to_string(),
            s("--data-dir"),
            data.display().to_string(),
            s("--dns"),
            s("127.0.0.1:0"),
        ],
        ChildEnv::default(),
    )
    .await?;
    children.push(child);
    drain(lines);
    // The API is TLS with a certificate from the mesh CA; its roots are beside the store.
    let address: SocketAddr = ready["address"]
        .as_str()
        .context("server address")?
        .parse()?;
    let server = format!("https://localhost:{}", address.port());
    let dns: SocketAddr = ready["dns"].as_str().context("server DNS")?.parse()?;
    let ca_file = std::path::PathBuf::from(ready["caFile"].as_str().context("server CA file")?);
    weft_proxy::mesh::control_api::set_ca_file(ca_file.clone());

    // ACLs: the first management token (the demo's own), then intentions.
    let token = bootstrap(&server).await?;
    weft_proxy::mesh::control_api::set_token(token.clone());

    // Intentions first: the mesh denies what they do not allow.
    let intentions_file = dir.join("intentions.yaml");
    std::fs::write(&intentions_file, INTENTIONS)?;
    let (status, _, body) = weft_proxy::mesh::control_api::request(
        &server,
        "POST",
        "/v1/config?file=intentions.yaml",
        Bytes::from_static(INTENTIONS.as_bytes()),
        "application/yaml",
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| anyhow::anyhow!("applying the demo's intentions: {e}"))?;
    if status != 200 {
        bail!(
            "applying the demo's intentions: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }

    // Apps (echo backends), each with its sidecar.
    let apps = [
        ("payments", "payments-1", "v1"),
        ("payments", "payments-v2-1", "v2"),
        ("inventory", "inventory-1", "v1"),
        ("inventory", "inventory-2", "v1"),
        ("frontend", "frontend-1", "v1"),
    ];
    let mut frontend = None;
    for (service, id, version) in apps {
        let (child, ready, lines) = spawn(
            dir,
            id,
            &[
                s("echo"),
                s("--listen"),
                s("127.0.0.1:0"),
                s("--name"),
                s(id),
            ],
            ChildEnv::default(),
        )
        .await?;
        children.push(child);
        drain(lines);
        let app = ready["address"]
            .as_str()
            .context("app address")?
            .to_string();
        let mut args = vec![
            s("sidecar"),
            s("--server"),
            server.clone(),
            s("--service"),
            s(service),
            s("--id"),
            s(id),
            s("--app"),
            app,
            s("--inbound"),
            s("127.0.0.1:0"),
            s("--health"),
            s("http:/"),
            s("--metadata"),
            format!("version={version}"),
        ];
        if service == "frontend" {
            args.extend([
                s("--upstream"),
                s("payments=127.0.0.1:0"),
                s("--upstream"),
                s("inventory=127.0.0.1:0"),
            ]);
        }
        // Each sidecar holds a token for its own service only.
        let token = service_token(&server, service).await?;
        let (child, ready, lines) = spawn(
            dir,
            &format!("{id}.sidecar"),
            &args,
            ChildEnv {
                token: Some(&token),
                otlp,
            },
        )
        .await?;
        children.push(child);
        if service == "frontend" {
            frontend = Some((ready, lines));
        } else {
            drain(lines);
        }
    }
    let (ready, mut lines) = frontend.context("frontend sidecar")?;
    // Wait for frontend's first update from the control plane.
    let synced = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("\"synced\"") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    drain(lines);
    if !synced {
        bail!(
            "the frontend sidecar did not receive its configuration (see {})",
            dir.display()
        );
    }
    let mut upstreams = Vec::new();
    for service in ["payments", "inventory"] {
        let addr = ready["listeners"][format!("sidecar/out-{service}")]
            .as_str()
            .context("outbound listener")?
            .parse()?;
        upstreams.push((service.to_string(), addr));
    }
    // Wait (a little) for every instance to be in the catalog, so the first calls land.
    for _ in 0..100 {
        let listed =
            weft_proxy::mesh::control_api::call(&server, "GET", "/v1/catalog/services", None)
                .await
                .ok()
                .and_then(|(_, v)| {
                    v["items"].as_array().map(|a| {
                        a.iter()
                            .filter_map(|s| s["instances"].as_u64())
                            .sum::<u64>()
                    })
                });
        if listed == Some(apps.len() as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let split_file = dir.join("payments-split.yaml");
    std::fs::write(&split_file, SPLIT)?;
    std::fs::write(dir.join("payments-canary.yaml"), CANARY)?;
    Ok(Mesh {
        children,
        server,
        upstreams,
        split_file,
        token,
        ca_file,
        dns,
    })
}

impl Mesh {
    /// Plays frontend: calls each upstream once a second through frontend's sidecar and
    /// prints who answered.
    pub async fn call_forever(&self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let mut parts = Vec::new();
            for (service, addr) in &self.upstreams {
                let answer = weft_proxy::mesh::control_api::send(
                    &format!("http://{addr}"),
                    "GET",
                    "/order",
                    Bytes::new(),
                    "text/plain",
                    Duration::from_secs(2),
                    None, // an app's call: the control plane's token stays home
                )
                .await;
                parts.push(match answer {
                    Ok((200, _, body)) => {
                        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        format!("{service} → {}", v["name"].as_str().unwrap_or("?"))
                    }
                    Ok((status, _, _)) => format!("{service} → {status}"),
                    Err(e) => format!("{service} → error: {e}"),
                });
            }
            eprintln!("frontend calls: {}", parts.join(", "));
        }
    }

    /// Stops every child (sidecars first would deregister; the store goes with the demo).
    pub async fn stop(mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill().await;
        }
    }
}
