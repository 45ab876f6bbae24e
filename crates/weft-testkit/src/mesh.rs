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

/// A running `weft server`.
pub struct Server {
    /// Its process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its store directory.
    pub data_dir: PathBuf,
}

impl Server {
    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts `weft server` on an ephemeral port with a fresh store.
pub fn server(weft: &Path) -> Server {
    server_at(weft, "127.0.0.1:0", &temp_dir().join("data"))
}

/// Starts `weft server` on `addr` with the store in `data_dir` (e.g. a restart).
pub fn server_at(weft: &Path, addr: &str, data_dir: &Path) -> Server {
    let mut cmd = Command::new(weft);
    cmd.args(["server", "--listen", addr, "--data-dir"])
        .arg(data_dir);
    let proc = Proc::spawn(cmd);
    let addr = proc.ready["address"]
        .as_str()
        .expect("address")
        .parse()
        .expect("addr");
    Server {
        proc,
        addr,
        data_dir: data_dir.to_path_buf(),
    }
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
    .args([
        "--ttl",
        "2s",
        "--health-interval",
        "300ms",
        "--deregister-delay",
        "200ms",
    ])
    .args(extra);
    Sidecar {
        proc: Proc::spawn(cmd),
    }
}

/// Runs `weft ARGS` to completion: (success, stdout, stderr).
pub fn weft_cli(weft: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(weft)
        .args(args)
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
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
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
