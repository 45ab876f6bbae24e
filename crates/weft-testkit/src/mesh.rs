//! Mesh test support: `weft server`, `weft sidecar`, the CLI, and a plain HTTP client.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use crate::{temp_dir, Proc};

/// ACL tokens of the servers tests started: by store (a restarted server, or a second
/// replica over the same etcd, keeps the mesh's token) and by API address (so the CLI,
/// sidecars and [`http`] present it to the server they talk to).
static TOKENS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

fn remember(key: String, token: &str) {
    TOKENS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((key, token.to_string()));
}

/// The management token of the server at `key` (an address, a URL or a store).
pub fn token_for(key: &str) -> Option<String> {
    let key = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    TOKENS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, t)| t.clone())
}

/// The CA files of servers started with TLS, by URL.
static CA_FILES: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// `WEFT_TOKEN` (and `WEFT_CA_FILE` for a TLS server) for a weft command that talks to
/// `server` (first of a comma list).
fn with_token(cmd: &mut Command, server: &str) {
    let first = server.split(',').next().unwrap_or_default();
    if let Some(t) = token_for(first) {
        cmd.env("WEFT_TOKEN", t);
    }
    let ca = CA_FILES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(url, _)| url == first)
        .map(|(_, f)| f.clone());
    if let Some(f) = ca {
        cmd.env("WEFT_CA_FILE", f);
    }
}

/// A running `weft server`.
pub struct Server {
    /// Its process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its store directory.
    pub data_dir: PathBuf,
    /// The CA file clients verify its TLS with (None: plaintext API).
    pub ca_file: Option<PathBuf>,
}

impl Server {
    /// `http://ADDR`, or `https://localhost:PORT` with TLS.
    pub fn url(&self) -> String {
        match self.ca_file {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }
}

/// Intentions deny by default: a test about something else allows every call first
/// (an `Intention` from `*` to `*`). Tests about intentions do not call this.
pub fn allow_all(weft: &Path, server: &Server) {
    apply_file(
        weft,
        server,
        "kind: Intention\nmetadata: {name: test-allow-all}\nspec: {source: '*', destination: '*', action: allow}\n",
        &[],
    );
}

/// `weft apply -f` of `yaml` to `server` with `extra` arguments; fails the test when
/// refused.
pub fn apply_file(weft: &Path, server: &Server, yaml: &str, extra: &[&str]) {
    let file = temp_dir().join("apply.yaml");
    std::fs::write(&file, yaml).expect("write");
    let (file, url) = (file.display().to_string(), server.url());
    let mut args = vec!["apply", "-f", &file, "--server", &url];
    args.extend_from_slice(extra);
    let (ok, out, err) = weft_cli(weft, &args);
    assert!(ok, "apply: {out}{err}");
}

/// Starts `weft server` on an ephemeral port with a fresh store.
pub fn server(weft: &Path) -> Server {
    server_at(weft, "127.0.0.1:0", &temp_dir().join("data"))
}

/// Test servers serve their API in plaintext unless a test asks for TLS (`--tls on`):
/// [`http`] and curl-based checks then reach it directly. The TLS tests are in
/// `tests/zero_trust.rs`; `weft demo` (and its test) runs with TLS.
const PLAINTEXT: [&str; 2] = ["--tls", "off"];

/// Starts `weft server` on an ephemeral port with a fresh store and `extra` options
/// (e.g. `--cert-ttl 15s`).
pub fn server_with(weft: &Path, extra: &[&str]) -> Server {
    let data_dir = temp_dir().join("data");
    let mut cmd = Command::new(weft);
    cmd.args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .args(extra);
    if !extra.contains(&"--tls") {
        cmd.args(PLAINTEXT);
    }
    spawn_server(cmd, &data_dir)
}

/// Starts `weft server` on `addr` with the store in `data_dir` (e.g. a restart).
pub fn server_at(weft: &Path, addr: &str, data_dir: &Path) -> Server {
    let mut cmd = Command::new(weft);
    cmd.args(["server", "--listen", addr, "--data-dir"])
        .arg(data_dir)
        .args(PLAINTEXT);
    spawn_server(cmd, data_dir)
}

/// Starts a server; with ACLs on, the mesh's management token is bootstrapped once per
/// store (`store`) and remembered for the server's address.
fn spawn_server_of(cmd: Command, data_dir: &Path, store: &str) -> Server {
    let program = cmd.get_program().to_owned();
    let proc = Proc::spawn(cmd);
    let addr: SocketAddr = proc.ready["address"]
        .as_str()
        .expect("address")
        .parse()
        .expect("addr");
    let ca_file = (proc.ready["tls"] == true)
        .then(|| proc.ready["caFile"].as_str().map(PathBuf::from))
        .flatten();
    let server = Server {
        proc,
        addr,
        data_dir: data_dir.to_path_buf(),
        ca_file,
    };
    if let Some(f) = &server.ca_file {
        CA_FILES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((server.url(), f.display().to_string()));
    }
    if server.proc.ready["acl"] == true {
        let token = token_for(store).unwrap_or_else(|| {
            let mut cmd = Command::new(&program);
            cmd.args(["acl", "bootstrap", "--server", &server.url()]);
            if let Some(f) = &server.ca_file {
                cmd.env("WEFT_CA_FILE", f);
            }
            let out = cmd.output().expect("weft acl bootstrap");
            let text = String::from_utf8_lossy(&out.stdout);
            let secret = text
                .lines()
                .find_map(|l| l.strip_prefix("secret:"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| {
                    panic!("bootstrap: {text}{}", String::from_utf8_lossy(&out.stderr))
                });
            remember(store.to_string(), &secret);
            secret
        });
        remember(addr.to_string(), &token);
        remember(format!("localhost:{}", addr.port()), &token);
    }
    server
}

fn spawn_server(cmd: Command, data_dir: &Path) -> Server {
    spawn_server_of(cmd, data_dir, &format!("embedded:{}", data_dir.display()))
}

/// A running `weft sidecar`.
pub struct Sidecar {
    /// Its process.
    pub proc: Proc,
}

impl Sidecar {
    /// The bound address of listener `name` (`inbound`, `out-SERVICE`).
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.proc.ready["listeners"][format!("sidecar/{name}")]
            .as_str()
            .unwrap_or_else(|| panic!("no listener {name} in {}", self.proc.ready))
            .parse()
            .expect("addr")
    }

    /// `http://ADDR` of the outbound listener for `service`.
    pub fn upstream_url(&self, service: &str) -> String {
        format!("http://{}", self.listener(&format!("out-{service}")))
    }

    /// Waits for the `synced` line (the first update applied).
    pub fn wait_synced(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(line) = self.proc.lines.recv_timeout(Duration::from_millis(200)) {
                if line.contains("\"synced\"") {
                    return;
                }
            }
        }
        panic!("sidecar never synced; stderr:\n{}", self.proc.stderr());
    }
}

/// Starts `weft sidecar` for `service`/`id` in front of `app`, with `extra` arguments
/// (e.g. `--upstream b=127.0.0.1:0`), an ephemeral inbound port and a short lease.
pub fn sidecar(
    weft: &Path,
    server: &str,
    service: &str,
    id: &str,
    app: SocketAddr,
    extra: &[&str],
) -> Sidecar {
    let mut cmd = Command::new(weft);
    cmd.args([
        "sidecar",
        "--server",
        server,
        "--service",
        service,
        "--id",
        id,
    ])
    .args(["--app", &app.to_string(), "--inbound", "127.0.0.1:0"])
    .args(["--health-interval", "300ms", "--deregister-delay", "200ms"])
    .args(extra);
    with_token(&mut cmd, server);
    if !extra.contains(&"--ttl") {
        cmd.args(["--ttl", "2s"]);
    }
    Sidecar {
        proc: Proc::spawn(cmd),
    }
}

/// Starts an edge gateway in the mesh (`weft sidecar --service edge --gateway CONFIG`,
/// with `extra` arguments) and waits for its first update; returns it and the address of
/// its `edge/web` listener.
pub fn edge_gateway(
    weft: &Path,
    server: &str,
    config: &Path,
    extra: &[&str],
) -> (Sidecar, SocketAddr) {
    let mut cmd = Command::new(weft);
    cmd.args([
        "sidecar",
        "--server",
        server,
        "--service",
        "edge",
        "--gateway",
    ])
    .arg(config)
    .args(extra);
    with_token(&mut cmd, server);
    let edge = Sidecar {
        proc: Proc::spawn(cmd),
    };
    edge.wait_synced();
    let web = edge.proc.ready["listeners"]["edge/web"]
        .as_str()
        .unwrap_or_else(|| panic!("no listener edge/web in {}", edge.proc.ready))
        .parse()
        .expect("addr");
    (edge, web)
}

/// An instance of a mesh service: an echo app and its sidecar.
pub struct Instance {
    /// The app (`weft echo` named after the instance id).
    pub app: crate::Echo,
    /// Its sidecar, synced.
    pub sidecar: Sidecar,
}

/// Starts instance `id` of `service` (an echo app and a sidecar with `extra` arguments)
/// and waits for the sidecar's first update.
pub fn instance(weft: &Path, server: &Server, service: &str, id: &str, extra: &[&str]) -> Instance {
    let app = crate::echo(weft, id, &[]);
    let sidecar = sidecar(weft, &server.url(), service, id, app.addr, extra);
    sidecar.wait_synced();
    Instance { app, sidecar }
}

/// Runs `weft ARGS` to completion: (success, stdout, stderr).
pub fn weft_cli(weft: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(weft);
    cmd.args(args);
    if let Some(i) = args.iter().position(|a| *a == "--server") {
        if let Some(server) = args.get(i + 1) {
            with_token(&mut cmd, server);
        }
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run weft {args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One HTTP/1.1 request over a fresh connection: (status, body), or the I/O error.
/// For load loops and crash tests where spawning curl per request is too slow.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    // A server started by these helpers gets its management token.
    let token = token_for(&addr.to_string())
        .map(|t| format!("x-weft-token: {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\ncontent-type: application/json\r\n{token}connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of head"))?;
    let head = String::from_utf8_lossy(&raw[..text_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let mut body = raw[text_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || raw.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[(eol + 4 + size).min(raw.len())..];
    }
    out
}

/// GET `path` from the server's API as JSON, or `None` on any failure (for polling while
/// a cluster recovers).
pub fn api_try(server: SocketAddr, path: &str) -> Option<Value> {
    match http(server, "GET", path, b"") {
        Ok((200, body)) => serde_json::from_slice(&body).ok(),
        _ => None,
    }
}

/// GET `path` from the server's API as JSON.
pub fn api_get(server: SocketAddr, path: &str) -> Value {
    let (status, body) = http(server, "GET", path, b"").expect("API reachable");
    assert_eq!(
        status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).expect("JSON")
}

/// A local etcd cluster (Debian's `etcd-server`), one process per member, on loopback.
pub struct EtcdCluster {
    /// Member processes (killed on drop).
    pub members: Vec<std::process::Child>,
    /// Client URLs, one per member.
    pub client_urls: Vec<String>,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

impl EtcdCluster {
    /// Index of the current Raft leader (from each member's `/v3/maintenance/status`).
    pub fn leader(&self) -> usize {
        crate::eventually("an etcd leader", Duration::from_secs(10), || {
            self.client_urls.iter().position(|url| {
                let addr: SocketAddr = url.trim_start_matches("http://").parse().expect("addr");
                let Ok((200, body)) = http(addr, "POST", "/v3/maintenance/status", b"{}") else {
                    return false;
                };
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                v["leader"].is_string() && v["leader"] == v["header"]["member_id"]
            })
        })
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Starts an `n`-member etcd cluster and waits until every member answers. Ports are
/// picked free and then bound by etcd, so another test can take one in between (seen:
/// `bind: address already in use`): a cluster whose member exits before it is healthy is
/// started again on new ports, up to three times.
pub fn etcd_cluster(n: usize) -> EtcdCluster {
    for attempt in 1..=3 {
        if let Some(cluster) = try_etcd_cluster(n) {
            return cluster;
        }
        eprintln!("etcd cluster: a member exited while starting (attempt {attempt}); new ports");
    }
    panic!("an etcd cluster of {n} did not start in three attempts (see etcd-m*.log)");
}

fn try_etcd_cluster(n: usize) -> Option<EtcdCluster> {
    let etcd = crate::require("etcd");
    let dir = temp_dir();
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect();
    let mut members = Vec::new();
    let mut client_urls = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let log = std::fs::File::create(dir.join(format!("etcd-m{i}.log"))).expect("log file");
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(&etcd)
            .args(["--name", &format!("m{i}"), "--data-dir"])
            .arg(dir.join(format!("m{i}")))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args([
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
            ])
            .args([
                "--initial-cluster-token",
                &format!("weft-test-{}", std::process::id()),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        members.push(child);
        client_urls.push(client_url);
    }
    let mut cluster = EtcdCluster {
        members,
        client_urls,
    };
    // Ready when every member answers /health with "true" (a leader is elected); not
    // when one has exited (it could not bind its port). Dropped, the cluster is killed.
    let urls = cluster.client_urls.clone();
    for url in &urls {
        let addr: SocketAddr = url.trim_start_matches("http://").parse().expect("addr");
        let healthy = crate::eventually("etcd member healthy", Duration::from_secs(30), || {
            if cluster
                .members
                .iter_mut()
                .any(|m| m.try_wait().ok().flatten().is_some())
            {
                return Some(false);
            }
            let (status, body) = http(addr, "GET", "/health", b"").ok()?;
            (status == 200 && String::from_utf8_lossy(&body).contains("true")).then_some(true)
        });
        if !healthy {
            return None;
        }
    }
    Some(cluster)
}

/// Starts `weft server` over etcd (the binary must be built with `--features etcd`).
pub fn server_etcd(weft: &Path, endpoints: &[String]) -> Server {
    server_etcd_with(weft, endpoints, &[])
}

/// [`server_etcd`] with `extra` options; with `--tls on`, its `ca.pem` goes to a fresh
/// data directory.
pub fn server_etcd_with(weft: &Path, endpoints: &[String], extra: &[&str]) -> Server {
    let data_dir = temp_dir().join("data");
    let mut cmd = Command::new(weft);
    cmd.args([
        "server",
        "--listen",
        "127.0.0.1:0",
        "--etcd",
        &endpoints.join(","),
    ])
    .args(extra);
    if extra.contains(&"--tls") {
        cmd.arg("--data-dir").arg(&data_dir);
    } else {
        cmd.args(PLAINTEXT);
    }
    spawn_server_of(cmd, &data_dir, &format!("etcd:{}", endpoints.join(",")))
}

/// Which `weft echo` answered `GET /hello` at `addr` (its name), or why none did.
pub fn echo_name(addr: SocketAddr) -> Result<String, String> {
    match http(addr, "GET", "/hello", b"") {
        Ok((200, body)) => {
            let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            Ok(v["name"].as_str().unwrap_or("?").to_string())
        }
        Ok((status, body)) => Err(format!("{status} {}", String::from_utf8_lossy(&body))),
        Err(e) => Err(e.to_string()),
    }
}

/// Requests sent one after another to an echo behind `addr` until stopped.
pub struct LoadLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl LoadLoop {
    /// Starts the loop.
    pub fn start(addr: SocketAddr) -> LoadLoop {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let ok = std::sync::Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, ok) = (stop.clone(), ok.clone());
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match echo_name(addr) {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.push(e),
                    }
                }
                errors
            })
        };
        LoadLoop { stop, ok, thread }
    }

    /// Requests answered so far.
    pub fn served(&self) -> usize {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the loop: (answered, the errors of the failed ones).
    pub fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let errors = self.thread.join().expect("load thread");
        (self.ok.load(std::sync::atomic::Ordering::Relaxed), errors)
    }
}

/// Asserts that every `(key, value)` acknowledged earlier reads back from the server.
pub fn assert_kv_kept(server: SocketAddr, acked: &[(String, String)]) {
    let mut lost = Vec::new();
    for (key, value) in acked {
        match http(server, "GET", &format!("/v1/kv/{key}?raw=true"), b"") {
            Ok((200, body)) if body == value.as_bytes() => {}
            other => lost.push(format!("{key}: {other:?}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

/// `weft apply -f` of `yaml` to `server`, waiting until every connected proxy applied it;
/// fails the test when refused.
pub fn apply_wait(weft: &Path, server: &Server, yaml: &str) {
    apply_file(weft, server, yaml, &["--wait"]);
}

/// A certificate for `service` from the mesh CA, obtained as a sidecar would (its own
/// key, a CSR to `POST /v1/ca/sign`): PEM files (certificate chain, key).
pub fn mesh_cert(server: &Server, service: &str) -> (PathBuf, PathBuf) {
    let (csr, key) = weft_tls::ca::new_csr(service).expect("csr");
    let body = serde_json::json!({"service": service, "csr": csr}).to_string();
    let (status, answer) = http(server.addr, "POST", "/v1/ca/sign", body.as_bytes()).expect("sign");
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert_eq!(status, 200, "{text}");
    assert!(
        !text.contains("PRIVATE KEY"),
        "the CA never returns a private key"
    );
    let v: Value = serde_json::from_str(&text).expect("json");
    let dir = temp_dir();
    let (c, k) = (
        dir.join(format!("{service}.crt")),
        dir.join(format!("{service}.key")),
    );
    std::fs::write(&c, v["certificate"].as_str().expect("certificate")).expect("write");
    std::fs::write(&k, key).expect("write");
    (c, k)
}
