//! SPIFFE identities: `spiffe://<trust-domain>/svc/<service>`, carried as the one URI
//! subjectAltName of a mesh certificate.

use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The SPIFFE ID of `service` in `trust_domain`.
pub fn service_id(trust_domain: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/svc/{service}")
}

/// A parsed SPIFFE ID of a mesh service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceId {
    /// The trust domain.
    pub trust_domain: String,
    /// The service.
    pub service: String,
}

impl ServiceId {
    /// Parses `spiffe://<td>/svc/<service>`; anything else is None.
    pub fn parse(uri: &str) -> Option<ServiceId> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (td, path) = rest.split_once('/')?;
        let service = path.strip_prefix("svc/")?;
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        };
        (valid(td) && valid(service)).then(|| ServiceId {
            trust_domain: td.to_string(),
            service: service.to_string(),
        })
    }
}

/// What a certificate says about itself, as far as the mesh cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Its URI subjectAltNames.
    pub uris: Vec<String>,
    /// The end of its validity.
    pub not_after: SystemTime,
    /// The start of its validity.
    pub not_before: SystemTime,
}

impl CertInfo {
    /// The one SPIFFE ID the certificate carries, or None (none, or several).
    pub fn spiffe_id(&self) -> Option<&str> {
        let mut ids = self.uris.iter().filter(|u| u.starts_with("spiffe://"));
        match (ids.next(), ids.next()) {
            (Some(id), None) => Some(id),
            _ => None,
        }
    }
}

/// Parses the parts of a DER certificate the mesh reads.
pub fn cert_info(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let time = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(u) = name {
                uris.push(u.to_string());
            }
        }
    }
    Ok(CertInfo {
        uris,
        not_after: time(cert.validity().not_after),
        not_before: time(cert.validity().not_before),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ids_round_trip_and_reject_other_shapes() {
        let id = service_id("weft.local", "payments");
        assert_eq!(id, "spiffe://weft.local/svc/payments");
        assert_eq!(
            ServiceId::parse(&id),
            Some(ServiceId {
                trust_domain: "weft.local".into(),
                service: "payments".into()
            })
        );
        for bad in [
            "spiffe://weft.local/ns/x/sa/y",
            "https://weft.local/svc/a",
            "spiffe:///svc/a",
            "spiffe://weft.local/svc/",
            "spiffe://Weft/svc/a",
            "spiffe://weft.local/svc/a/b",
        ] {
            assert_eq!(ServiceId::parse(bad), None, "{bad}");
        }
    }
}
