//! Mutual TLS between proxies, with SPIFFE identities.
//!
//! A [`MeshTls`] holds a proxy's current identity (certificate chain and key) and the
//! trust bundle (the mesh CA's roots). Both change while the proxy runs — the identity at
//! each renewal, the bundle at a root rotation — so the rustls configurations built from
//! it do not copy them: their certificate resolvers and verifiers read the current value
//! at each handshake. A configuration is built once per peer service and keeps its
//! session cache; rotation costs nothing but the next handshake's use of the new
//! certificate, and open connections are not touched.
//!
//! * Server side: the client must present a certificate chaining to the bundle (TLS 1.3
//!   and 1.2, client auth mandatory) whose SPIFFE ID is in the mesh's trust domain; the
//!   caller's ID is read from the connection afterwards ([`peer_identity`]).
//! * Client side: the server's certificate must chain to the bundle *and* carry exactly
//!   the SPIFFE ID of the service the caller meant to reach; DNS names and IP addresses
//!   play no part.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::spiffe::{self, ServiceId};
use crate::{provider, Resumption, TlsError};

/// A proxy's certificate for its SPIFFE ID, with its key.
#[derive(Clone)]
pub struct Identity {
    /// Chain (leaf first) and signing key.
    pub key: Arc<CertifiedKey>,
    /// The SPIFFE ID the leaf carries.
    pub spiffe_id: String,
    /// When the leaf expires.
    pub not_after: SystemTime,
    /// When the leaf became valid.
    pub not_before: SystemTime,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity") // never the key
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl Identity {
    /// From a PEM chain (leaf first) and its PEM private key.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Identity, TlsError> {
        let general = |m: String| TlsError::Rustls(Error::General(m));
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| general(format!("certificate chain: {e}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| general("certificate chain: empty".into()))?;
        let info = spiffe::cert_info(leaf).map_err(general)?;
        let spiffe_id = info
            .spiffe_id()
            .ok_or_else(|| general("the certificate carries no single SPIFFE ID".into()))?
            .to_string();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| general(format!("private key: {e}")))?;
        let signing = provider().key_provider.load_private_key(key)?;
        let key = CertifiedKey::new(chain, signing);
        key.keys_match()?;
        Ok(Identity {
            key: Arc::new(key),
            spiffe_id,
            not_after: info.not_after,
            not_before: info.not_before,
        })
    }
}

/// Parses a PEM trust bundle (one or more CA certificates).
pub fn bundle_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Rustls(Error::General(format!("trust bundle: {e}"))))?;
    if certs.is_empty() {
        return Err(TlsError::Rustls(Error::General(
            "trust bundle: no certificate".into(),
        )));
    }
    Ok(certs)
}

struct Current {
    identity: Identity,
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

/// A proxy's mesh identity and trust bundle, shared by every mesh TLS configuration it
/// builds.
pub struct MeshTls {
    trust_domain: String,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Current>>,
    /// Client configurations by peer and ALPN, kept so that their session caches
    /// survive configuration changes (one per upstream service).
    clients: Mutex<HashMap<ClientKey, Arc<ClientConfig>>>,
    /// The id of the root now signing (as the control plane names it), and of the root
    /// that signed the current identity: when they differ, a root rotation is under way
    /// and the identity should be reissued.
    roots: Mutex<(String, String)>,
}

/// A client configuration's peer SPIFFE ID and ALPN protocols.
type ClientKey = (String, Vec<Vec<u8>>);

impl fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshTls")
            .field("trust_domain", &self.trust_domain)
            .field("identity", &self.current().identity)
            .finish()
    }
}

impl MeshTls {
    /// A proxy in `trust_domain` with `identity`, trusting `bundle`.
    pub fn new(
        trust_domain: &str,
        identity: Identity,
        bundle: &[CertificateDer<'static>],
    ) -> Result<Arc<MeshTls>, TlsError> {
        let provider = provider();
        let current = Self::current_of(&provider, identity, bundle)?;
        Ok(Arc::new(MeshTls {
            trust_domain: trust_domain.to_string(),
            provider,
            current: RwLock::new(Arc::new(current)),
            clients: Mutex::default(),
            roots: Mutex::default(),
        }))
    }

    fn current_of(
        provider: &Arc<CryptoProvider>,
        identity: Identity,
        bundle: &[CertificateDer<'static>],
    ) -> Result<Current, TlsError> {
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(bundle.iter().cloned());
        if added == 0 {
            return Err(TlsError::Rustls(Error::General(
                "trust bundle: no usable CA certificate".into(),
            )));
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Rustls(Error::General(format!("trust bundle: {e}"))))?;
        Ok(Current {
            identity,
            roots,
            client_verifier,
        })
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the root now signing (from the trust bundle).
    pub fn set_active_root(&self, id: &str) {
        self.roots.lock().unwrap_or_else(|p| p.into_inner()).0 = id.to_string();
    }

    /// Records the root that signed the current identity.
    pub fn set_issuing_root(&self, id: &str) {
        self.roots.lock().unwrap_or_else(|p| p.into_inner()).1 = id.to_string();
    }

    /// Whether the identity was signed by a root that no longer signs (a rotation).
    pub fn issued_by_old_root(&self) -> bool {
        let r = self.roots.lock().unwrap_or_else(|p| p.into_inner());
        !r.0.is_empty() && !r.1.is_empty() && r.0 != r.1
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The identity new handshakes present.
    pub fn identity(&self) -> Identity {
        self.current().identity.clone()
    }

    /// Replaces the identity (a renewal), the bundle (a root rotation), or both. New
    /// handshakes use them; open connections are not touched.
    pub fn update(
        &self,
        identity: Option<Identity>,
        bundle: Option<&[CertificateDer<'static>]>,
    ) -> Result<(), TlsError> {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let identity = identity.unwrap_or_else(|| current.identity.clone());
        let next = match bundle {
            Some(bundle) => Self::current_of(&self.provider, identity, bundle)?,
            None => Current {
                identity,
                roots: current.roots.clone(),
                client_verifier: current.client_verifier.clone(),
            },
        };
        *current = Arc::new(next);
        Ok(())
    }

    /// A server configuration for a proxy's inbound listener: client certificates
    /// required and checked against the bundle and the trust domain.
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
        resumption: &Resumption,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(Arc::new(ClientVerifier(self.clone())))
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        Ok(resumption.finish(config, alpn))
    }

    /// A client configuration for calling `peer` (a SPIFFE ID): the server must prove
    /// exactly that identity. Mesh calls are TLS 1.3 only. The same configuration (and
    /// session cache) is returned for the same peer and ALPN.
    pub fn client_config(
        self: &Arc<Self>,
        peer: &str,
        alpn: &[&[u8]],
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let key = (
            peer.to_string(),
            alpn.iter().map(|p| p.to_vec()).collect::<Vec<_>>(),
        );
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                mesh: self.clone(),
                peer: peer.to_string(),
            }))
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = key.1.clone();
        let config = Arc::new(config);
        clients.insert(key, config.clone());
        Ok(config)
    }

    fn supported_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The SPIFFE ID of the peer of an established connection, if it presented a certificate
/// that carries one.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<String> {
    let leaf = conn.peer_certificates()?.first()?;
    spiffe::cert_info(leaf)
        .ok()?
        .spiffe_id()
        .map(str::to_string)
}

/// Presents the current identity, as a server and as a client.
struct Resolver(Arc<MeshTls>);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mesh::Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().identity.key.clone())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().identity.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn refuse(what: String) -> Error {
    tracing::debug!(reason = %what, "mesh certificate refused");
    Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

/// Checks a caller's certificate: the bundle, then the trust domain of its SPIFFE ID.
struct ClientVerifier(Arc<MeshTls>);

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mesh::ClientVerifier")
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; the bundle changes under us, so none are sent.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let current = self.0.current();
        current
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        let info = spiffe::cert_info(end_entity).map_err(refuse)?;
        let id = info
            .spiffe_id()
            .and_then(ServiceId::parse)
            .ok_or_else(|| refuse("no SPIFFE service ID".into()))?;
        if id.trust_domain != self.0.trust_domain {
            return Err(refuse(format!(
                "trust domain {} is not {}",
                id.trust_domain, self.0.trust_domain
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Checks a server's certificate: the bundle, then the exact SPIFFE ID expected.
struct ServerVerifier {
    mesh: Arc<MeshTls>,
    peer: String,
}

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("mesh::ServerVerifier")
            .field("peer", &self.peer)
            .finish()
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let current = self.mesh.current();
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &current.roots,
            intermediates,
            now,
            self.mesh.provider.signature_verification_algorithms.all,
        )?;
        let info = spiffe::cert_info(end_entity).map_err(refuse)?;
        match info.spiffe_id() {
            Some(id) if id == self.peer => Ok(ServerCertVerified::assertion()),
            other => Err(refuse(format!(
                "expected {}, the server is {}",
                self.peer,
                other.unwrap_or("no SPIFFE ID")
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.mesh.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.mesh.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.mesh.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
