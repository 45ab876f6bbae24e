//! Server replicas find each other through the store: each announces its API address
//! under `/weft/servers/` with a lease, so `GET /v1/proxies` on any replica can show the
//! proxies connected to every replica (each server knows only its own streams).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use serde_json::Value;

use crate::store::{self, Store};

/// Prefix of the replicas' announcements.
pub const PREFIX: &str = "/weft/servers/";
const TTL: Duration = Duration::from_secs(10);
const RENEW: Duration = Duration::from_secs(3);
/// How long a peer has to answer (`GET /v1/proxies`; `/v1/stats`, which waits up to
/// [`crate::live::STATS_DEADLINE`] for its own proxies, gets that much more).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(4);

/// Keeps this replica's announcement in the store for ever (re-announcing after a lapse).
pub async fn announce(store: Arc<dyn Store>, advertise: String) {
    let key = format!("{PREFIX}{advertise}");
    loop {
        let attempt = async {
            let lease = store.grant(TTL).await?;
            let value =
                serde_json::json!({"address": advertise, "store": store.kind()}).to_string();
            store::put(&*store, &key, value.into_bytes(), Some(lease)).await?;
            loop {
                tokio::time::sleep(RENEW).await;
                store.keep_alive(lease).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), store::StoreError>(())
        };
        if let Err(e) = attempt.await {
            tracing::warn!(error = %e, "could not announce this server; retrying");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A connection to a peer, plain or TLS.
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// API addresses of every announced replica.
pub async fn list(store: &dyn Store) -> Result<Vec<String>, store::StoreError> {
    Ok(store::list_all(store, PREFIX)
        .await?
        .kvs
        .into_iter()
        .filter_map(|kv| kv.key.strip_prefix(PREFIX).map(str::to_string))
        .collect())
}

/// How replicas reach each other: like clients do, over TLS verified by the mesh CA's
/// roots (a replica's certificate names its advertised host), or in plaintext when the
/// API is.
pub type PeerTls = Option<Arc<tokio_rustls::rustls::ClientConfig>>;

/// `GET PEER/v1/proxies?local=true&revision=R`: that replica's own proxies.
/// `token`: the caller's own ACL token, passed on (a peer grants what the caller may).
pub async fn proxies_of(
    peer: String,
    revision: u64,
    token: Option<String>,
    tls: PeerTls,
) -> Result<Vec<Value>, String> {
    let path = format!("/v1/proxies?local=true&revision={revision}");
    let v = get_json(peer, path, token, tls).await?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

/// `GET PEER/PATH` with the caller's token: the JSON answer, or the error it carries.
pub async fn get_json(
    peer: String,
    path: String,
    token: Option<String>,
    tls: PeerTls,
) -> Result<Value, String> {
    let attempt = async {
        let resp = open(&peer, &path, token.as_deref(), tls).await?;
        let body = Limited::new(resp.into_body(), 64 << 20)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if let Some(e) = v.pointer("/error/message").and_then(Value::as_str) {
            return Err(e.to_string());
        }
        Ok(v)
    };
    tokio::time::timeout(PEER_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("no answer within {PEER_TIMEOUT:?}"))?
}

/// `GET PEER/PATH` with the caller's token: the answer's head, its body unread (a tap's
/// event stream is read as it comes).
pub async fn open(
    peer: &str,
    path: &str,
    token: Option<&str>,
    tls: PeerTls,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let stream = tokio::net::TcpStream::connect(peer)
        .await
        .map_err(|e| e.to_string())?;
    let stream: Box<dyn Io> = match tls {
        None => Box::new(stream),
        Some(config) => {
            let host = peer.rsplit_once(':').map_or(peer, |(h, _)| h);
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(
                host.trim_matches(['[', ']']).to_string(),
            )
            .map_err(|e| format!("{host}: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            Box::new(tls)
        }
    };
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header(hyper::header::HOST, peer);
    if let Some(t) = token {
        req = req.header("x-weft-token", t);
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    send.send_request(req).await.map_err(|e| e.to_string())
}
