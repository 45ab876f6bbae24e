//! A small client of the control plane's HTTP API (HTTP/1.1, one connection per call):
//! used by the sidecar's registration, and by the CLI and the demo.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;
use tokio::net::TcpStream;

/// Largest API answer read.
const MAX_ANSWER: usize = 1024 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

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
    let authority = server
        .strip_prefix("http://")
        .ok_or_else(|| format!("server `{server}`: expected http://HOST:PORT"))?
        .trim_end_matches('/');
    let attempt = async {
        let stream = TcpStream::connect(authority)
            .await
            .map_err(|e| format!("{server}: {e}"))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("{server}: {e}"))?;
        tokio::spawn(conn);
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
