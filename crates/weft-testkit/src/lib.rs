//! Test support for weft's end-to-end tests (a dev-dependency only).
//!
//! Spawns real processes — `weft proxy`, `weft echo`, Python gRPC/WebSocket peers — on
//! ephemeral loopback ports, learns their addresses from the one JSON "ready" line each
//! prints, and kills them when dropped. External tools are looked up with [`require`],
//! which fails the test with the install step when a tool is missing: a test never
//! passes because its peer was absent.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod mesh;
pub mod netns;
pub mod pki;

/// How long a process may take to print its ready line. Generous: CI machines are shared.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds an external tool or fails the test saying how to install it.
pub fn require(tool: &str) -> PathBuf {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    for dir in
        std::env::split_paths(&paths).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
    {
        let p = dir.join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{tool}` is not installed: run scripts/install-test-deps (or see README.md, 'Running the tests')");
}

/// A tool from the test virtual environment that `scripts/install-test-deps` fills from
/// PyPI (`$WEFT_VENV`, default `~/.cache/weft/venv`), or a failure saying how to get it.
pub fn venv_tool(tool: &str) -> PathBuf {
    let venv = std::env::var_os("WEFT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/weft/venv")
        });
    let p = venv.join("bin").join(tool);
    assert!(
        p.is_file(),
        "`{tool}` is not in {}: run scripts/install-test-deps (it makes the virtual environment with pip)",
        venv.display()
    );
    p
}

/// The Python interpreter with grpcio and websockets (Debian's python3 by default).
pub fn python() -> PathBuf {
    let py = std::env::var_os("WEFT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import grpc, websockets"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{} lacks grpcio/websockets: run scripts/install-test-deps (apt: python3-grpcio python3-websockets)", py.display());
    py
}

/// A fresh directory under the system temp dir. Kept after the test (its logs explain a
/// failure); the first call of a test process removes those of earlier runs that are over
/// an hour old and whose process is gone, so they do not pile up (an etcd test's is
/// ~370 MB; thousands once filled a developer's disk).
pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    static PRUNED: std::sync::Once = std::sync::Once::new();
    PRUNED.call_once(prune_old_temp_dirs);
    let p = std::env::temp_dir().join(format!(
        "weft-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    // PIDs come round again (pid_max is often 32768) while an old run's directory may
    // still be there: a test got a store another run had bootstrapped. Start empty (no
    // live process shares this PID, so nothing in use is removed).
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("create temp dir");
    p
}

/// Removes `weft-test-<pid>-<n>` directories over an hour old whose process has exited.
fn prune_old_temp_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let hour = std::time::Duration::from_secs(3600);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("weft-test-"))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > hour));
        if old && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A child process that printed a JSON ready line; killed on drop.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// The parsed ready line.
    pub ready: Value,
    /// Remaining stdout lines, read by a background thread.
    pub lines: mpsc::Receiver<String>,
    stderr_path: PathBuf,
}

impl Proc {
    /// Spawns `cmd` and waits for its first stdout line, which must be JSON.
    pub fn spawn(mut cmd: Command) -> Proc {
        let stderr_path = temp_dir().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout: ChildStdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("{cmd:?} printed no ready line; stderr:\n{err}");
            }
        };
        let ready: Value =
            serde_json::from_str(&first).unwrap_or_else(|e| panic!("ready line {first:?}: {e}"));
        Proc {
            child,
            ready,
            lines: rx,
            stderr_path,
        }
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends a signal (e.g. "TERM") with `kill`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `weft echo`.
pub struct Echo {
    /// Its process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Starts `weft echo --name NAME` on an ephemeral port; `extra` adds arguments.
pub fn echo(weft: &Path, name: &str, extra: &[&str]) -> Echo {
    echo_at(weft, name, "127.0.0.1:0", extra)
}

/// Starts `weft echo` on `addr` (e.g. to bring a killed backend back on its old port).
pub fn echo_at(weft: &Path, name: &str, addr: &str, extra: &[&str]) -> Echo {
    let mut cmd = Command::new(weft);
    cmd.args(["echo", "--listen", addr, "--name", name])
        .args(extra);
    let proc = Proc::spawn(cmd);
    let addr = proc.ready["address"]
        .as_str()
        .expect("address")
        .parse()
        .expect("addr");
    Echo { proc, addr }
}

/// A running `weft proxy`.
pub struct Proxy {
    /// Its process.
    pub proc: Proc,
    /// Its config file.
    pub config: PathBuf,
    /// Its admin address.
    pub admin: SocketAddr,
}

impl Proxy {
    /// Address of listener `gateway/listener`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.proc.ready["listeners"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no listener {name} in {}", self.proc.ready))
            .parse()
            .expect("addr")
    }

    /// `http://ADDR` of listener `gateway/listener`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}", self.listener(name))
    }

    /// The admin endpoint's body.
    pub fn admin_get(&self, path: &str) -> String {
        curl(&["-s", &format!("http://{}{path}", self.admin)]).body
    }
}

/// Writes `config` to a file and starts `weft proxy` on it with an ephemeral admin port.
pub fn proxy(weft: &Path, config: &str, extra: &[&str]) -> Proxy {
    let dir = temp_dir();
    let path = dir.join("weft.yaml");
    std::fs::write(&path, config).expect("write config");
    let mut cmd = Command::new(weft);
    cmd.args(["proxy", "--config"])
        .arg(&path)
        .args(["--admin", "127.0.0.1:0", "--workers", "2"])
        .args(extra);
    let proc = Proc::spawn(cmd);
    let admin = proc.ready["admin"]
        .as_str()
        .expect("admin")
        .parse()
        .expect("admin addr");
    Proxy {
        proc,
        config: path,
        admin,
    }
}

/// The smallest useful configuration: listener `gw/web` on an ephemeral loopback port, a
/// catch-all route `r`, and one service `service` whose `spec:` body is `spec` (lines indented
/// by two spaces, e.g. `"  endpoints: [{address: \"127.0.0.1:9\"}]\n"`).
pub fn one_service_config(service: &str, spec: &str) -> String {
    format!(
        "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners: [{{name: web, address: \"127.0.0.1:0\"}}]\n---\n\
         kind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules: [{{backendRefs: [{{name: {service}}}]}}]\n---\n\
         kind: Service\nmetadata: {{name: {service}}}\nspec:\n{spec}"
    )
}

/// A curl result.
#[derive(Debug)]
pub struct CurlOut {
    /// Final status code (0 when curl failed).
    pub status: u16,
    /// Response headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
    /// curl's exit code.
    pub exit: i32,
}

impl CurlOut {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// Runs curl with `-si` prepended semantics: headers are parsed from the output.
pub fn curl(args: &[&str]) -> CurlOut {
    let out = Command::new(require("curl"))
        .args(["-s", "-i", "--max-time", "30"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_http_response(&text, out.status.code().unwrap_or(-1))
}

fn parse_http_response(text: &str, exit: i32) -> CurlOut {
    // With -i and redirects/100-continue there may be several header blocks: take the last.
    let mut rest = text;
    let mut head = "";
    while rest.starts_with("HTTP/") {
        match rest.split_once("\r\n\r\n") {
            Some((h, b)) => {
                head = h;
                rest = b;
            }
            None => {
                head = rest;
                rest = "";
            }
        }
    }
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    CurlOut {
        status,
        headers,
        body: rest.to_string(),
        exit,
    }
}

/// Sends `n` GETs over curl's connection reuse; returns (status, value of `header`) per request.
pub fn curl_many(url: &str, n: usize, header: &str, extra: &[&str]) -> Vec<(u16, String)> {
    let dir = temp_dir();
    let cfg = dir.join("urls.curl");
    let mut text = String::new();
    for _ in 0..n {
        text.push_str(&format!("url = \"{url}\"\noutput = \"/dev/null\"\n"));
    }
    std::fs::write(&cfg, text).expect("write curl config");
    let out = Command::new(require("curl"))
        .args([
            "-s",
            "--max-time",
            "120",
            "-w",
            &format!("%{{http_code}} %header{{{header}}}\\n"),
        ])
        .args(extra)
        .arg("-K")
        .arg(&cfg)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (code, v) = l.split_once(' ').unwrap_or((l, ""));
            (code.parse().unwrap_or(0), v.to_string())
        })
        .collect()
}

/// h2load over HTTP/1.1: (succeeded 2xx, 5xx) for `n` requests on `c` connections.
pub fn h1_load(url: &str, n: usize, c: usize) -> (u64, u64) {
    let out = Command::new(require("h2load"))
        .args(["--h1", "-n", &n.to_string(), "-c", &c.to_string(), url])
        .output()
        .expect("h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    let codes = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_default()
        .to_string();
    let count = |what: &str| {
        codes
            .split(',')
            .find(|p| p.trim_end().ends_with(what))
            .and_then(|p| p.split_whitespace().rev().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (count("2xx"), count("5xx"))
}

/// Polls `f` until it returns Some, at most `limit`; panics with `what` on timeout.
pub fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The value of the first metric line starting with `prefix` (name plus labels).
pub fn metric_value(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Reads everything from a reader into a string (for raw socket tests).
pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// Replaces a file atomically (write a sibling, then rename), as deployment tools do, so a
/// watcher never reads it half-written.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the new file");
    std::fs::rename(&tmp, path).expect("move it into place");
}

/// A plain TCP server on an ephemeral loopback port: each accepted connection is handed
/// to `serve` on a thread of its own.
pub fn tcp_server(
    serve: impl Fn(std::net::TcpStream) + Send + Sync + 'static,
) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serve = std::sync::Arc::new(serve);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let serve = serve.clone();
            std::thread::spawn(move || serve(conn));
        }
    });
    addr
}

/// nginx in the foreground with `server` (a `server { … }` block's body, `{port}` in it
/// replaced by a free loopback port) inside a minimal `http` block whose files all live in
/// `dir`; returns it and the port, once the port accepts. Killing the process kills nginx.
pub fn nginx(dir: &Path, server: &str) -> (Proc, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    let server = server.replace("{port}", &port.to_string());
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
             events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/b; proxy_temp_path {d}/p;\n\
             fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
             server {{\n{server}\n  }}\n}}\n"
        ),
    )
    .expect("write nginx config");
    require("nginx");
    // nginx prints nothing when ready: a background subshell announces it once the port
    // accepts, while the shell itself becomes nginx (exec), so killing the process this
    // returns kills nginx (a wrapper shell left it running after every test).
    let script = format!(
        "(for i in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 0.05; done; echo '{{\"event\":\"ready\"}}') & exec nginx -c {}",
        conf.display()
    );
    let mut sh = Command::new("bash");
    sh.args(["-c", &script])
        .env("PATH", "/usr/sbin:/usr/bin:/bin");
    (Proc::spawn(sh), port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_last_header_block() {
        let r = parse_http_response(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nbody",
            0,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-a"), Some("1"));
        assert_eq!(r.body, "body");
    }
}
