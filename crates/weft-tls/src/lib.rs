//! weft's TLS: rustls configurations built from PEM files, certificate selection by SNI,
//! upstream (client) configurations that always verify, and self-signed certificates for
//! demos and tests.
//!
//! Policy, the same everywhere: TLS 1.3 and 1.2 only; the `ring` provider's suites
//! (AES-GCM and ChaCha20-Poly1305 with ECDHE; no CBC, no RSA key exchange); session
//! resumption by tickets and by a server-side cache, both kept across reloads so a
//! certificate change does not cost every client a full handshake.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub mod ca;
pub mod mesh;
pub mod spiffe;

pub use rustls;

/// Where the system's trusted roots live on Debian.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// ALPN protocol ids of HTTP/2 and HTTP/1.1.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why TLS material could not be used. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the material.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The crypto provider every weft TLS configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain with its key, and the DNS names the leaf is valid for.
#[derive(Clone)]
pub struct LoadedCert {
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// DNS names from the leaf's subjectAltName (may include `*.` wildcards).
    pub names: Vec<String>,
    /// The certificate file it came from.
    pub cert_file: PathBuf,
}

impl fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("LoadedCert")
            .field("names", &self.names)
            .field("cert_file", &self.cert_file)
            .finish()
    }
}

/// Reads a PEM certificate chain (leaf first) and its private key, checking that they
/// belong together.
pub fn load_cert(cert_file: &Path, key_file: &Path) -> Result<LoadedCert, TlsError> {
    let chain = read_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        file_err(
            key_file,
            format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        )
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_err(key_file, format!("unsupported private key: {e}")))?;
    let names = {
        let leaf = webpki::EndEntityCert::try_from(&chain[0])
            .map_err(|e| file_err(cert_file, format!("invalid leaf certificate: {e}")))?;
        leaf.valid_dns_names()
            .map(str::to_ascii_lowercase)
            .collect()
    };
    let key = CertifiedKey::new(chain, signing);
    key.keys_match().map_err(|e| {
        file_err(
            key_file,
            format!(
                "does not match the certificate in {}: {e}",
                cert_file.display()
            ),
        )
    })?;
    Ok(LoadedCert {
        key: Arc::new(key),
        names,
        cert_file: cert_file.to_path_buf(),
    })
}

/// Every certificate in a PEM file; at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// Resumption state shared by every server configuration of a proxy, so that rebuilding a
/// configuration (new certificates, a reload) keeps clients' tickets and sessions valid.
#[derive(Clone)]
pub struct Resumption {
    cache: Arc<ServerSessionMemoryCache>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
}

impl fmt::Debug for Resumption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resumption")
    }
}

impl Resumption {
    /// Sets ALPN and the shared resumption state on a server configuration.
    fn finish(&self, mut config: ServerConfig, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.session_storage = self.cache.clone();
        config.ticketer = self.ticketer.clone();
        // TLS 1.3 hands out tickets after the handshake; two is what browsers use.
        config.send_tls13_tickets = 2;
        Arc::new(config)
    }

    /// A session cache of 4096 entries and a rotating ticket key.
    pub fn new() -> Result<Resumption, TlsError> {
        Ok(Resumption {
            cache: ServerSessionMemoryCache::new(4096),
            ticketer: rustls::crypto::ring::Ticketer::new()?,
        })
    }
}

/// Picks a certificate by SNI: exact name, then the wildcard covering the name's parent,
/// then (unless strict) the default.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// `certs[0]` is the default unless `strict`. Earlier certificates win when two
    /// claim the same name.
    pub fn new(certs: &[LoadedCert], strict: bool) -> SniResolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in certs {
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()),
                    None => exact.entry(n.clone()),
                }
                .or_insert_with(|| c.key.clone());
            }
        }
        SniResolver {
            exact,
            wildcard,
            default: if strict {
                None
            } else {
                certs.first().map(|c| c.key.clone())
            },
        }
    }

    /// The certificate for `sni` (already lower-cased by rustls).
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.');
        if let Some(k) = self.exact.get(name) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return Some(k.clone());
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// One certificate that can be replaced while serving (a renewal): new handshakes get
/// the new one.
#[derive(Debug)]
pub struct SwappableCert(std::sync::RwLock<Arc<CertifiedKey>>);

impl SwappableCert {
    /// Starts with `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Arc<SwappableCert> {
        Arc::new(SwappableCert(std::sync::RwLock::new(key)))
    }

    /// Replaces the certificate.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = key;
    }

    /// A server configuration presenting it: TLS 1.3/1.2, the given ALPN protocols.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A server configuration: certificates by SNI, TLS 1.3/1.2, the given ALPN protocols in
/// order of preference, shared resumption state.
pub fn server_config(
    certs: &[LoadedCert],
    strict_sni: bool,
    alpn: &[&[u8]],
    resumption: &Resumption,
) -> Result<Arc<ServerConfig>, TlsError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(certs, strict_sni)));
    Ok(resumption.finish(config, alpn))
}

/// A client configuration that verifies servers against `ca_file` (default: the system
/// bundle), optionally presenting a client certificate.
pub fn client_config(
    ca_file: Option<&Path>,
    client_cert: Option<&LoadedCert>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let ca_file = ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    verifying_client(read_certs(ca_file)?, ca_file, client_cert, alpn)
}

/// A client configuration that verifies servers against the roots in `pem` (the mesh
/// CA's trust bundle, say); `what` names them in errors.
pub fn client_config_pem(
    pem: &str,
    what: &str,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(Path::new(what), format!("malformed PEM: {e}")))?;
    verifying_client(certs, Path::new(what), None, alpn)
}

fn verifying_client(
    certs: Vec<CertificateDer<'static>>,
    ca_file: &Path,
    client_cert: Option<&LoadedCert>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(file_err(ca_file, "no usable CA certificate"));
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| file_err(ca_file, format!("cannot build a verifier: {e}")))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_webpki_verifier(verifier);
    let mut config = match client_cert {
        Some(c) => builder.with_client_cert_resolver(Arc::new(
            rustls::sign::SingleCertAndKey::from(c.key.clone()),
        )),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A self-signed certificate for `names` (DNS names or IP addresses), as PEM
/// `(certificate, private key)`.
pub fn self_signed(names: &[&str]) -> Result<(String, String), TlsError> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| rustls::Error::General(format!("generating a certificate: {e}")))?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

/// Reads the SNI of a ClientHello without completing a handshake (TLS passthrough).
///
/// Feed the bytes read so far; the ClientHello is parsed by rustls (which bounds what
/// it buffers), so weft has no TLS parser of its own.
pub fn peek_sni(bytes: &[u8]) -> PeekedHello {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = bytes;
    while !rd.is_empty() {
        match acceptor.read_tls(&mut rd) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return PeekedHello::Invalid(e.to_string()),
        }
    }
    match acceptor.accept() {
        Ok(None) => PeekedHello::NeedMore,
        Ok(Some(accepted)) => {
            PeekedHello::Hello(accepted.client_hello().server_name().map(str::to_string))
        }
        Err((e, _alert)) => PeekedHello::Invalid(e.to_string()),
    }
}

/// What [`peek_sni`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum PeekedHello {
    /// A complete ClientHello, with its SNI if it sent one.
    Hello(Option<String>),
    /// Not enough bytes yet.
    NeedMore,
    /// Not a TLS ClientHello.
    Invalid(String),
}

#[cfg(test)]
mod tests;
