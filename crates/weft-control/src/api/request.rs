//! What every API request goes through around its handler: the caller is authenticated
//! from its headers **before any byte of its body is read** (a request without a valid
//! token is answered 401 at once and costs no buffer), bodies are read under a limit per
//! endpoint and a deadline, and every answer leaves in the documented shape — errors as
//! JSON with a stable code (those axum makes itself too: 405, a bad path parameter), and
//! `X-Weft-Index` on all of them.

use std::time::Duration;

use axum::{
    body::{Body, Bytes},
    extract::{FromRequestParts, Request, State},
    http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body::Body as _;
use http_body_util::BodyExt;

use super::context::Api;
use crate::{acl::Caller, error::ApiError, store::Revision};

/// Largest body of the small JSON endpoints (registration, health, signing, tokens).
pub const SMALL_BODY: usize = 64 * 1024;
/// A whole request body must arrive within this.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// An authenticated client's body over its endpoint's limit is read and discarded up to
/// this many bytes past the limit, so the client reads the 413 instead of losing its
/// connection mid-upload; a larger one is answered at once and the connection closed.
pub const DRAIN_BYTES: u64 = 8 * 1024 * 1024;

/// Longest message kept from an error axum wrote as text.
const MAX_TEXT_ERROR: usize = 512;

/// Middleware, outermost: errors that are not JSON yet (axum's own 405 and extractor
/// rejections) become the API's JSON errors, keeping their headers (`Allow`); every
/// answer gets `X-Weft-Index` (the revision of this server's view) unless its handler set
/// the revision it reflects.
pub(crate) async fn finish(State(api): State<Api>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let mut resp = if (status.is_client_error() || status.is_server_error()) && !is_json {
        as_json_error(resp).await
    } else {
        resp
    };
    if !resp.headers().contains_key(INDEX) {
        let revision = api.state.read().revision;
        if let Ok(v) = HeaderValue::from_str(&revision.to_string()) {
            resp.headers_mut().insert(INDEX, v);
        }
    }
    resp
}

/// An error response axum wrote as text, as the API's JSON error (headers kept).
async fn as_json_error(resp: Response) -> Response {
    let status = resp.status();
    let (parts, body) = resp.into_parts();
    let text: String = axum::body::to_bytes(body, MAX_TEXT_ERROR * 4)
        .await
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim()
                .chars()
                .take(MAX_TEXT_ERROR)
                .collect()
        })
        .unwrap_or_default();
    let code = match status {
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "invalid-body",
        s if s.is_server_error() => "internal",
        _ => "invalid-request",
    };
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        let allow = parts
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        format!("this endpoint does not take that method (it takes: {allow})")
    } else if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut json = ApiError::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

/// The store revision an answer reflects.
const INDEX: &str = "x-weft-index";

/// Endpoints that answer without a token: the API's description, the CA's public roots,
/// the one-time bootstrap, the UI's files, and `/metrics` when the server makes it public.
fn open(method: &Method, path: &str, metrics_public: bool) -> bool {
    match (method, path) {
        (&Method::GET, "/v1/openapi.json" | "/v1/ca/roots") => true,
        (&Method::POST, "/v1/acl/bootstrap") => true,
        (&Method::GET, "/metrics") => metrics_public,
        (&Method::GET, p) => super::ui::is_ui(p),
        _ => false,
    }
}

/// Middleware: resolves the caller once, refuses an unauthenticated one before its body
/// is read (closing an HTTP/1.1 connection whose body was not read), and hands the
/// caller to the handler ([`Caller`] extractor).
pub(crate) async fn authenticate(State(api): State<Api>, mut req: Request, next: Next) -> Response {
    let caller = api
        .auth
        .caller(crate::authn::secret_of(req.headers()))
        .await;
    if !open(req.method(), req.uri().path(), api.metrics_public) {
        if let Err(e) = caller.authenticated() {
            let pending_body = declared_length(req.headers()).is_some_and(|n| n > 0)
                || req.headers().contains_key(header::TRANSFER_ENCODING);
            let mut resp = e.into_response();
            if pending_body {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return resp;
        }
    }
    req.extensions_mut().insert(caller);
    let pending_body = declared_length(req.headers()).is_some_and(|n| n > 0)
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if !pending_body {
        return next.run(req).await;
    }
    // An authenticated request with a body: whatever its handler answers, the rest of the
    // body is read and discarded (bounded) before the answer goes out, so a client still
    // uploading reads the answer on a connection that stays open.
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = req.into_parts();
    let shared = SharedBody::new(body, expects_continue);
    let mut resp = next
        .run(Request::from_parts(parts, Body::new(shared.clone())))
        .await;
    if !shared.drain().await {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A request body the handler reads and the middleware can finish reading afterwards.
#[derive(Clone)]
struct SharedBody {
    inner: std::sync::Arc<std::sync::Mutex<SharedState>>,
}

struct SharedState {
    body: Body,
    /// The handler polled it (so the client was told to send it: `100 Continue`).
    polled: bool,
    /// The client waits for `100 Continue` before sending it.
    expects_continue: bool,
    done: bool,
}

impl SharedBody {
    fn new(body: Body, expects_continue: bool) -> SharedBody {
        SharedBody {
            inner: std::sync::Arc::new(std::sync::Mutex::new(SharedState {
                body,
                polled: false,
                expects_continue,
                done: false,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        // Only this request's tasks touch it; a poisoned lock holds a usable body.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads what the handler left of the body, discarding it: at most [`DRAIN_BYTES`]
    /// within 5 s. False when the body could not be finished (the answer then closes the
    /// connection). A body never polled under `Expect: 100-continue` was never sent: no
    /// need to read it, but the connection's framing is unknown, so false too.
    async fn drain(&self) -> bool {
        {
            let s = self.lock();
            if s.done || http_body::Body::is_end_stream(&s.body) {
                return true;
            }
            if s.expects_continue && !s.polled {
                return false;
            }
        }
        let this = self.clone();
        let read = async move {
            let mut seen: u64 = 0;
            loop {
                let frame = std::future::poll_fn(|cx| {
                    let mut s = this.lock();
                    std::pin::Pin::new(&mut s.body).poll_frame(cx)
                })
                .await;
                match frame {
                    None => return true,
                    Some(Err(_)) => return false,
                    Some(Ok(f)) => {
                        seen += f.data_ref().map_or(0, |d| d.len() as u64);
                        if seen > DRAIN_BYTES {
                            return false;
                        }
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .unwrap_or(false)
    }
}

impl http_body::Body for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let mut s = self.lock();
        s.polled = true;
        let r = std::pin::Pin::new(&mut s.body).poll_frame(cx);
        if let std::task::Poll::Ready(None) = r {
            s.done = true;
        }
        r
    }
}

impl FromRequestParts<Api> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Caller, Self::Rejection> {
        match parts.extensions.get::<Caller>() {
            Some(c) => Ok(c.clone()),
            None => Ok(api
                .auth
                .caller(crate::authn::secret_of(&parts.headers))
                .await),
        }
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// 413 `too-large`.
fn too_large(what: String, limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        format!("{what} is over this endpoint's limit of {limit} bytes"),
    )
}

/// Reads a request body of at most `limit` bytes within [`BODY_READ_TIMEOUT`]. Over the
/// limit: 413 `too-large` — after reading and discarding up to [`DRAIN_BYTES`] more, so
/// the connection stays usable and the client sees the answer; beyond that the answer
/// closes the connection.
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = declared_length(headers);
    let read = async {
        let mut body = body;
        let mut buf: Vec<u8> = Vec::new();
        let mut seen: u64 = 0;
        let drain_to = limit as u64 + DRAIN_BYTES;
        if declared.is_some_and(|n| n > drain_to) {
            return Err(close(too_large(
                format!("a body of {} bytes", declared.unwrap_or_default()),
                limit,
            )));
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::bad_request("invalid-body", format!("reading the body failed: {e}"))
            })?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            seen += data.len() as u64;
            if seen <= limit as u64 {
                buf.extend_from_slice(&data);
            } else if seen > drain_to {
                return Err(close(too_large(
                    format!("a body of over {seen} bytes"),
                    limit,
                )));
            }
        }
        if seen > limit as u64 {
            return Err(too_large(format!("a body of {seen} bytes"), limit));
        }
        Ok(Bytes::from(buf))
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(r) => r,
        Err(_) => Err(close(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            format!("the request body did not arrive within {BODY_READ_TIMEOUT:?}"),
        ))),
    }
}

/// [`read_body`], then the body as JSON (see [`crate::api::json_body`]).
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_body(body, headers, limit).await?;
    json_body(headers, &bytes)
}

/// The error, answered with `Connection: close` (its body was not read to the end).
fn close(mut e: ApiError) -> ApiError {
    e.close = true;
    e
}

/// Marks an answer with the store revision it reflects.
pub(crate) fn with_index(revision: Revision, body: impl IntoResponse) -> Response {
    let mut r = body.into_response();
    if let Ok(v) = HeaderValue::from_str(&revision.to_string()) {
        r.headers_mut().insert("x-weft-index", v);
    }
    r
}

/// Parses a JSON body (Content-Type must be JSON when given).
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(ApiError::bad_request(
            "invalid-body",
            "expected Content-Type: application/json",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid-body", format!("invalid JSON body: {e}")))
}
