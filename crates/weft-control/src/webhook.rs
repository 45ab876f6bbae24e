//! The canary controller's HTTP client: its webhooks (one POST of a JSON body, answered
//! 2xx in time or not) and Prometheus queries (one GET). `https://` URLs are verified
//! against the system's roots (`/etc/ssl/certs/ca-certificates.crt`); there is no switch
//! to skip verification.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;

/// The system's trusted roots.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// POSTs `body` to `url`; Ok with the status when it is 2xx within `timeout`, else why
/// not, for a person.
pub async fn post(url: &str, body: String, timeout: Duration) -> Result<u16, String> {
    match tokio::time::timeout(timeout, send("POST", url, Some(body))).await {
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs_f64())),
        Ok(Err(e)) => Err(e),
        Ok(Ok((status, _))) if (200..300).contains(&status) => Ok(status),
        Ok(Ok((status, _))) => Err(format!("answered {status}")),
    }
}

/// Largest answer read from a GET (a Prometheus query's JSON).
const MAX_ANSWER: usize = 1024 * 1024;

/// GETs `url`: the body of a 2xx answer within `timeout`, else why not.
pub async fn get(url: &str, timeout: Duration) -> Result<Bytes, String> {
    match tokio::time::timeout(timeout, send("GET", url, None)).await {
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs_f64())),
        Ok(Err(e)) => Err(e),
        Ok(Ok((status, body))) if (200..300).contains(&status) => Ok(body),
        Ok(Ok((status, body))) => Err(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

async fn send(method: &str, url: &str, body: Option<String>) -> Result<(u16, Bytes), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
    let stream: Box<dyn crate::peers::Io> = if https {
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        let certs = weft_tls::read_certs(std::path::Path::new(SYSTEM_ROOTS))
            .map_err(|e| format!("the system's roots: {e}"))?;
        roots.add_parsable_certificates(certs);
        let config = tokio_rustls::rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(
            host.trim_matches(['[', ']']).to_string(),
        )
        .map_err(|e| format!("{host}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        Box::new(tls)
    } else {
        Box::new(stream)
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "weft-canary");
    if body.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}
