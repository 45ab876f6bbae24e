//! A small client of the control plane's HTTP API (HTTP/1.1, one connection per call):
//! used by the sidecar's registration, and by the CLI and the demo.

use std::time::Duration;
use tokio_rustls::rustls::pki_types::ServerName;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;
use tokio::net::TcpStream;

/// Largest API answer read.
const MAX_ANSWER: usize = 1024 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a refused connection (or a CA file not written yet) is retried, for a
/// command run an instant after the server was started; zero unless set (a sidecar with
/// several servers must move on to the next one at once).
static STARTUP_GRACE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Waits up to `grace` for a server that refuses connections (one starting up).
pub fn set_startup_grace(grace: Duration) {
    let _ = STARTUP_GRACE.set(grace);
}

/// One JSON request to the API; `(status, body)` (body `null` when not JSON).
pub async fn call(
    server: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let payload = body.map(Value::to_string).unwrap_or_default();
    let (status, _, bytes) = request(
        server,
        method,
        path,
        Bytes::from(payload),
        "application/json",
        REQUEST_TIMEOUT,
    )
    .await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// The mesh CA's roots, for `https://` control-plane URLs (`--ca-file` / `WEFT_CA_FILE`).
static CA_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Sets the CA bundle this process verifies the control plane with.
pub fn set_ca_file(path: std::path::PathBuf) {
    let _ = CA_FILE.set(path);
}

/// The roots of the trust bundle the discovery stream delivered (PEM). The control
/// plane's own certificate comes from the mesh CA, so after a root rotation it moves to
/// the new root: a long-running sidecar must trust it without a new `--ca-file`.
static BUNDLE_ROOTS: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// Trusts the roots of the latest trust bundle (PEM) for the control plane too.
pub fn trust_bundle_roots(pem: String) {
    *BUNDLE_ROOTS.lock().unwrap_or_else(|p| p.into_inner()) = pem;
}

/// The roots `https://` servers are verified with: the CA file, read anew each time
/// (it may be rewritten), and the trust bundle's roots once one arrived. The error says
/// how to provide the file.
pub fn ca_pem(server: &str) -> Result<String, String> {
    let path = CA_FILE.get().ok_or_else(|| {
        format!("{server} uses TLS: give the mesh CA with --ca-file or WEFT_CA_FILE (`weft server` writes it to DATA-DIR/ca.pem; `weft ca roots --pem` prints it)")
    })?;
    let file =
        std::fs::read_to_string(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
    let bundle = BUNDLE_ROOTS.lock().unwrap_or_else(|p| p.into_inner());
    Ok(file + "\n" + &bundle)
}

/// A connector trusting [`ca_pem`], rebuilt only when those roots change.
fn tls_connector(server: &str) -> Result<tokio_rustls::TlsConnector, String> {
    type Cached = Option<(String, tokio_rustls::TlsConnector)>;
    static CONNECTOR: std::sync::Mutex<Cached> = std::sync::Mutex::new(None);
    let pem = ca_pem(server)?;
    let mut cached = CONNECTOR.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((p, c)) = cached.as_ref() {
        if *p == pem {
            return Ok(c.clone());
        }
    }
    let config = weft_tls::client_config_pem(
        &pem,
        "--ca-file and the trust bundle",
        &[weft_tls::ALPN_HTTP11],
    )
    .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    *cached = Some((pem, connector.clone()));
    Ok(connector)
}

/// An HTTP/1.1 client connection over `io` (its driver spawned).
async fn http1<I>(
    server: &str,
    io: I,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
}

/// The ACL token sent with every request (`--token` / `WEFT_TOKEN`), once set.
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the ACL token this process sends to the control plane (API and discovery).
pub fn set_token(token: String) {
    let _ = TOKEN.set(token);
}

/// The ACL token, if one was set.
pub fn token() -> Option<&'static str> {
    TOKEN.get().map(String::as_str)
}

/// One HTTP/1.1 request to the control plane at `server` (`http://HOST:PORT`), with the
/// ACL token if set: `(status, X-Weft-Index, body)`, the body read up to 1 MiB, the whole
/// exchange bounded by `timeout`.
pub async fn request(
    server: &str,
    method: &str,
    path: &str,
    body: Bytes,
    content_type: &str,
    timeout: Duration,
) -> Result<(u16, Option<u64>, Bytes), String> {
    send(server, method, path, body, content_type, timeout, token()).await
}

/// As [`request`], to any HTTP server, with `token` only if given (never send the
/// control plane's token elsewhere).
pub async fn send(
    server: &str,
    method: &str,
    path: &str,
    body: Bytes,
    content_type: &str,
    timeout: Duration,
    token: Option<&str>,
) -> Result<(u16, Option<u64>, Bytes), String> {
    let attempt = async {
        let resp = open(server, method, path, body, content_type, token).await?;
        let status = resp.status().as_u16();
        let index = resp
            .headers()
            .get("x-weft-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("{server}: reading the answer: {e}"))?
            .to_bytes();
        Ok((status, index, bytes))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("{server}: no answer within {timeout:?}"))?
}

/// A GET whose answer is read as it comes (`weft tap`): the status and the body, with
/// the ACL token if set. Only connecting and the answer's head are bounded by `timeout`.
pub async fn stream(
    server: &str,
    path: &str,
    timeout: Duration,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    tokio::time::timeout(
        timeout,
        open(
            server,
            "GET",
            path,
            Bytes::new(),
            "application/json",
            token(),
        ),
    )
    .await
    .map_err(|_| format!("{server}: no answer within {timeout:?}"))?
}

/// Connects to `server` and sends one request: the answer's head, its body unread.
async fn open(
    server: &str,
    method: &str,
    path: &str,
    body: Bytes,
    content_type: &str,
    token: Option<&str>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let (secure, authority) = match (
        server.strip_prefix("https://"),
        server.strip_prefix("http://"),
    ) {
        (Some(a), _) => (true, a),
        (None, Some(a)) => (false, a),
        _ => {
            return Err(format!(
                "server `{server}`: expected https://HOST:PORT or http://HOST:PORT"
            ))
        }
    };
    let authority = authority.trim_end_matches('/');
    // A server started an instant ago (`weft server … &` then a command) may not
    // listen yet, nor have written its CA file: both are waited for, briefly.
    let started = tokio::time::Instant::now();
    let grace = STARTUP_GRACE.get().copied().unwrap_or_default();
    let (tls, stream) = loop {
        let tls = if secure {
            match tls_connector(server) {
                Ok(c) => Some(c),
                Err(e) if started.elapsed() < grace && e.contains("No such file") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        match TcpStream::connect(authority).await {
            Ok(s) => break (tls, s),
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && started.elapsed() < grace =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("{server}: {e}")),
        }
    };
    let mut send = match tls {
        None => http1(server, stream).await?,
        Some(connector) => {
            let host = authority
                .rsplit_once(':')
                .map_or(authority, |(h, _)| h)
                .trim_matches(['[', ']']);
            let name =
                ServerName::try_from(host.to_string()).map_err(|e| format!("{server}: {e}"))?;
            let stream = connector
                .connect(name, stream)
                .await
                .map_err(|e| format!("{server}: TLS: {e}"))?;
            http1(server, stream).await?
        }
    };
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, content_type);
    if let Some(t) = token {
        req = req.header("x-weft-token", t);
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    Ok(resp)
}
