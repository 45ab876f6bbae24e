//! How bytes reach an endpoint: TCP (and TLS when the service originates it, always
//! verified), or — in tests — a pipe of an in-memory network, so the whole request path
//! runs without sockets.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use weft_model::ServiceProtocol;

use crate::error::ProxyError;

/// A function giving one end of a new pipe to the server at an address (the other end is
/// the test's), or the error a refused connection would give.
pub type Dialer = dyn Fn(SocketAddr) -> std::io::Result<DuplexStream> + Send + Sync;

/// Where connections to endpoints go: the real network, or an in-memory one (tests).
#[derive(Clone, Default)]
pub enum Network {
    /// TCP.
    #[default]
    Tcp,
    /// Pipes from a [`Dialer`].
    Memory(Arc<Dialer>),
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Network::Tcp => "Tcp",
            Network::Memory(_) => "Memory",
        })
    }
}

impl PartialEq for Network {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Network::Tcp, Network::Tcp) => true,
            (Network::Memory(a), Network::Memory(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// TLS to a service's endpoints, with its files loaded.
#[derive(Clone)]
pub struct UpstreamTls {
    spec: weft_model::UpstreamTls,
    /// Hash of the files' contents: a replaced file makes a different value, so pools
    /// made with the old material are not carried into the new snapshot.
    digest: u64,
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
    /// Mesh mutual TLS: the SPIFFE ID the endpoints must prove.
    peer: Option<String>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec && self.digest == other.digest && self.peer == other.peer
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Mesh: the SPIFFE ID the endpoints must prove.
    pub fn peer(&self) -> Option<&str> {
        self.peer.as_deref()
    }

    /// Mesh mutual TLS to the sidecars of the service whose SPIFFE ID is `peer`. The
    /// configuration follows the proxy's identity and trust bundle as they rotate, so
    /// pools stay valid across rotations.
    pub fn mesh(
        mesh: &Arc<weft_tls::mesh::MeshTls>,
        peer: &str,
        protocol: ServiceProtocol,
    ) -> Result<UpstreamTls, weft_tls::TlsError> {
        let alpn = alpn_of(protocol);
        Ok(UpstreamTls {
            spec: weft_model::UpstreamTls::default(),
            digest: 0,
            connector: tokio_rustls::TlsConnector::from(mesh.client_config(peer, alpn)?),
            server_name: None,
            peer: Some(peer.to_string()),
        })
    }

    /// Loads the CA bundle and client certificate named by `spec`; ALPN follows `protocol`.
    pub fn load(
        config: &weft_model::Config,
        spec: &weft_model::UpstreamTls,
        protocol: ServiceProtocol,
    ) -> Result<UpstreamTls, weft_tls::TlsError> {
        let ca = spec.ca_file.as_deref().map(|f| config.resolve(f));
        let client = spec
            .client_certificate
            .as_ref()
            .map(|c| {
                weft_tls::load_cert(&config.resolve(&c.cert_file), &config.resolve(&c.key_file))
            })
            .transpose()?;
        let client_config =
            weft_tls::client_config(ca.as_deref(), client.as_ref(), alpn_of(protocol))?;
        let server_name = spec
            .server_name
            .as_ref()
            .map(|n| {
                ServerName::try_from(n.clone()).map_err(|e| {
                    weft_tls::TlsError::Rustls(rustls::Error::General(format!(
                        "serverName `{n}`: {e}"
                    )))
                })
            })
            .transpose()?;
        let mut h = std::hash::DefaultHasher::new();
        let own_files = spec.ca_file.iter().chain(
            spec.client_certificate
                .iter()
                .flat_map(|c| [&c.cert_file, &c.key_file]),
        );
        for f in own_files {
            std::hash::Hash::hash(
                &std::fs::read(config.resolve(f)).unwrap_or_default(),
                &mut h,
            );
        }
        Ok(UpstreamTls {
            spec: spec.clone(),
            digest: std::hash::Hasher::finish(&h),
            connector: tokio_rustls::TlsConnector::from(client_config),
            server_name,
            peer: None,
        })
    }

    /// Runs the handshake on a connected socket; the certificate must be valid for the
    /// configured name, or else for the endpoint's IP address.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        addr: std::net::SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProxyError> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        self.connector.connect(name, tcp).await.map_err(|e| {
            tracing::debug!(endpoint = %addr, error = %e, "upstream TLS handshake failed");
            ProxyError::UpstreamTls
        })
    }
}

fn alpn_of(protocol: ServiceProtocol) -> &'static [&'static [u8]] {
    match protocol {
        ServiceProtocol::Http => &[weft_tls::ALPN_HTTP11],
        ServiceProtocol::Http2 | ServiceProtocol::Grpc => &[weft_tls::ALPN_H2],
    }
}

/// A connection to an endpoint: plain TCP, TLS, or a pipe of an in-memory network.
pub enum UpstreamIo {
    /// Plain.
    Plain(TcpStream),
    /// TLS-originated.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// In memory (tests).
    Memory(DuplexStream),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Memory(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
            UpstreamIo::Memory(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
