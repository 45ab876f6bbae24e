//! Issuing for the mesh CA: roots, certificate signing requests, SPIFFE leaf certificates.
//!
//! The control plane decides *who* may have which identity; this module only turns that
//! decision into certificates. A leaf never carries what the CSR asked for: only the key
//! (the CSR's signature proves its holder has the private half) and the identity the
//! caller was entitled to.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

/// Why a certificate could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The CSR is not a valid, correctly signed PKCS#10 request.
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    /// The CA's own material is unusable.
    #[error("CA: {0}")]
    Ca(String),
}

fn offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // ring's system random; failure here means no OS randomness at all.
    let _ = ring_fill(&mut bytes);
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn ring_fill(bytes: &mut [u8]) -> Result<(), ()> {
    use rustls::crypto::ring::default_provider;
    default_provider().secure_random.fill(bytes).map_err(|_| ())
}

/// A new self-signed root for `trust_domain`, valid for `validity`: PEM `(cert, key)`.
pub fn new_root(trust_domain: &str, validity: Duration) -> Result<(String, String), IssueError> {
    let key = KeyPair::generate().map_err(|e| IssueError::Ca(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "weft");
    dn.push(
        DnType::CommonName,
        format!("weft mesh root CA {trust_domain}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let td = format!("spiffe://{trust_domain}");
    params.subject_alt_names = vec![SanType::URI(
        td.try_into()
            .map_err(|e| IssueError::Ca(format!("trust domain: {e}")))?,
    )];
    let now = SystemTime::now();
    params.not_before = offset(now - Duration::from_secs(3600));
    params.not_after = offset(now + validity);
    params.serial_number = Some(random_serial());
    let cert = params
        .self_signed(&key)
        .map_err(|e| IssueError::Ca(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Checks operator-provided CA material: `cert_pem` is a CA certificate (basic
/// constraints say so), currently valid, and `key_pem` is its private key.
pub fn check_ca(cert_pem: &str, key_pem: &str) -> Result<(), IssueError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| IssueError::Ca(format!("CA certificate: {e}")))?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| IssueError::Ca(format!("CA certificate: {e}")))?;
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(IssueError::Ca(
            "the certificate is not a CA (basicConstraints CA:TRUE)".into(),
        ));
    }
    if !cert.validity().is_valid() {
        return Err(IssueError::Ca("the CA certificate is not valid now".into()));
    }
    let key = KeyPair::from_pem(key_pem).map_err(|e| IssueError::Ca(format!("CA key: {e}")))?;
    if key.public_key_raw() != &*cert.tbs_certificate.subject_pki.subject_public_key.data {
        return Err(IssueError::Ca(
            "the key does not belong to the CA certificate".into(),
        ));
    }
    Ok(())
}

/// Checks that the leaves an intermediate CA (`cert_pem`, `key_pem`) signs verify under
/// `roots_pem`, the way a sidecar will check them: a throwaway leaf is signed and its
/// chain verified. An intermediate that does not chain to the roots given with it would
/// make every new certificate in the mesh untrusted.
pub fn check_chain(cert_pem: &str, key_pem: &str, roots_pem: &str) -> Result<(), IssueError> {
    let signer = Signer::new(cert_pem, key_pem)?;
    let (csr, _) = new_csr("weft-chain-check")?;
    let leaf = signer.sign(
        &csr,
        "spiffe://chain.check/svc/check",
        Duration::from_secs(60),
    )?;
    let der = |pem: &str, what: &str| {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| IssueError::Ca(format!("{what}: {e}")))
    };
    let (leaf, intermediate) = (der(&leaf, "leaf")?, der(cert_pem, "CA certificate")?);
    let roots = crate::mesh::bundle_from_pem(roots_pem)
        .map_err(|e| IssueError::Ca(format!("roots: {e}")))?;
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(roots);
    if added == 0 {
        return Err(IssueError::Ca("roots: no usable certificate".into()));
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(store),
        crate::provider(),
    )
    .build()
    .map_err(|e| IssueError::Ca(format!("roots: {e}")))?;
    verifier
        .verify_client_cert(&leaf, &[intermediate], rustls::pki_types::UnixTime::now())
        .map_err(|e| {
            IssueError::Ca(format!(
                "certificates signed by the CA certificate do not verify under the given roots: {e}"
            ))
        })?;
    Ok(())
}

/// A CA able to sign: its certificate and key (PEM).
pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer") // never the key
    }
}

impl Signer {
    /// From the CA certificate and its private key, both PEM.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Signer, IssueError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| IssueError::Ca(format!("unusable CA key: {e}")))?;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| IssueError::Ca(format!("unusable CA certificate: {e}")))?;
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| IssueError::Ca(format!("unusable CA certificate: {e}")))?;
        Ok(Signer { issuer, cert })
    }

    /// The CA certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A leaf for `spiffe_id`, valid from a minute ago (clock skew) for `ttl`, for the key
    /// that signed `csr_pem`; the request's own names and extensions are ignored. PEM.
    pub fn sign(
        &self,
        csr_pem: &str,
        spiffe_id: &str,
        ttl: Duration,
    ) -> Result<String, IssueError> {
        let now = SystemTime::now();
        self.sign_valid(csr_pem, spiffe_id, now - Duration::from_secs(60), now + ttl)
    }

    /// As [`Signer::sign`], with the validity given (tests make expired certificates).
    pub fn sign_valid(
        &self,
        csr_pem: &str,
        spiffe_id: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<String, IssueError> {
        self.sign_names(csr_pem, spiffe_id, &[], not_before, not_after)
    }

    /// A certificate for the control plane's own API: `spiffe_id` plus DNS names and IP
    /// addresses (`names`), so that ordinary TLS clients can check the server they reach.
    pub fn sign_server(
        &self,
        csr_pem: &str,
        spiffe_id: &str,
        names: &[String],
        ttl: Duration,
    ) -> Result<String, IssueError> {
        let now = SystemTime::now();
        self.sign_names(
            csr_pem,
            spiffe_id,
            names,
            now - Duration::from_secs(60),
            now + ttl,
        )
    }

    fn sign_names(
        &self,
        csr_pem: &str,
        spiffe_id: &str,
        names: &[String],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<String, IssueError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| IssueError::Csr(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id
                .to_string()
                .try_into()
                .map_err(|e| IssueError::Ca(format!("identity: {e}")))?,
        )];
        for n in names {
            params
                .subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(
                        n.clone()
                            .try_into()
                            .map_err(|e| IssueError::Ca(format!("name `{n}`: {e}")))?,
                    ),
                });
        }
        params.not_before = offset(not_before);
        params.not_after = offset(not_after);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = request
            .signed_by(&self.issuer)
            .map_err(|e| IssueError::Ca(e.to_string()))?;
        Ok(cert.pem())
    }
}

/// A fresh key and a CSR for it, PEM `(csr, key)`. The CSR's subject is `name` (the
/// CA decides the identity anyway).
pub fn new_csr(name: &str) -> Result<(String, String), IssueError> {
    let key = KeyPair::generate().map_err(|e| IssueError::Ca(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| IssueError::Csr(e.to_string()))?;
    let pem = csr.pem().map_err(|e| IssueError::Csr(e.to_string()))?;
    Ok((pem, key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spiffe;

    #[test]
    fn a_leaf_carries_the_entitled_identity_not_the_requested_one() {
        let (root, key) = new_root("weft.local", Duration::from_secs(3600)).unwrap();
        let signer = Signer::new(&root, &key).unwrap();
        let (csr, _key) = new_csr("spiffe://weft.local/svc/admin").unwrap();
        let leaf = signer
            .sign(
                &csr,
                "spiffe://weft.local/svc/web",
                Duration::from_secs(600),
            )
            .unwrap();
        let der = CertificateDer::from_pem_slice(leaf.as_bytes()).unwrap();
        let info = spiffe::cert_info(&der).unwrap();
        assert_eq!(info.spiffe_id(), Some("spiffe://weft.local/svc/web"));
        let left = info
            .not_after
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs();
        assert!((590..=600).contains(&left), "{left}");
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let (root, key) = new_root("weft.local", Duration::from_secs(3600)).unwrap();
        let signer = Signer::new(&root, &key).unwrap();
        assert!(matches!(
            signer.sign(
                "not a csr",
                "spiffe://weft.local/svc/web",
                Duration::from_secs(60)
            ),
            Err(IssueError::Csr(_))
        ));
        let (csr, _) = new_csr("spiffe://weft.local/svc/web").unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(csr.as_bytes());
        let mut der: Vec<u8> = der
            .map(|d: rustls::pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
            .unwrap();
        let n = der.len();
        der[n - 5] ^= 0x55; // inside the signature
        let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        assert!(matches!(
            signer.sign(&pem, "spiffe://weft.local/svc/web", Duration::from_secs(60)),
            Err(IssueError::Csr(_))
        ));
    }
}
