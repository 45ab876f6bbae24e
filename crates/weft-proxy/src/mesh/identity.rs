//! The sidecar's mesh identity: a key made here (it never leaves the process), a CSR
//! sent to the control plane's CA, a short-lived certificate back; renewed at about two
//! thirds of its lifetime (with jitter, so a fleet started together does not renew
//! together), with a fresh key each time. New handshakes use the new certificate; open
//! connections are not touched.
//!
//! If renewal keeps failing, the sidecar goes on with the certificate it has and retries
//! with backoff; from a third of the lifetime left, each failure is logged as a warning
//! (and `weft_mesh_certificate_expiry_seconds` shows the time left all along).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use weft_tls::mesh::{bundle_from_pem, Identity, MeshTls};

use super::control_api::call;
use crate::telemetry::metrics::Metrics;

/// A certificate from the CA, with the trust domain and roots it came with.
#[derive(Debug)]
pub struct Issued {
    /// Certificate and key.
    pub identity: Identity,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// The roots, DER.
    pub bundle: Vec<weft_tls::rustls::pki_types::CertificateDer<'static>>,
    /// The root that signed it (the CA's id).
    pub root_id: String,
}

/// Asks the servers in turn for a certificate for `service`.
pub async fn obtain(servers: &[String], service: &str) -> Result<Issued, String> {
    let (csr, key) = weft_tls::ca::new_csr(service).map_err(|e| e.to_string())?;
    let body = json!({"service": service, "csr": csr});
    let mut last = String::from("no control-plane server given");
    for server in servers {
        match call(server, "POST", "/v1/ca/sign", Some(&body)).await {
            Ok((200, v)) => return issued(&v, &key, service),
            Ok((status, v)) => {
                last = format!(
                    "{server}: {status} {}",
                    v.pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                )
            }
            Err(e) => last = format!("{server}: {e}"),
        }
    }
    Err(last)
}

fn issued(v: &Value, key: &str, service: &str) -> Result<Issued, String> {
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the CA's answer has no `{k}`"))
    };
    let identity = Identity::from_pem(text("certificate")?, key).map_err(|e| e.to_string())?;
    let trust_domain = text("trustDomain")?.to_string();
    let expected = weft_tls::spiffe::service_id(&trust_domain, service);
    if identity.spiffe_id != expected {
        return Err(format!(
            "the CA issued {} instead of {expected}",
            identity.spiffe_id
        ));
    }
    let bundle = bundle_from_pem(&pem_roots(v)).map_err(|e| e.to_string())?;
    Ok(Issued {
        identity,
        trust_domain,
        bundle,
        root_id: v
            .get("rootId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

/// Obtains the first certificate, retrying with backoff until the control plane
/// answers (a sidecar cannot serve mesh traffic without one).
pub async fn bootstrap(servers: &[String], service: &str) -> Arc<MeshTls> {
    let mut delay = Duration::from_millis(100);
    loop {
        match obtain(servers, service).await {
            Ok(i) => match MeshTls::new(&i.trust_domain, i.identity, &i.bundle) {
                Ok(mesh) => {
                    mesh.set_issuing_root(&i.root_id);
                    mesh.set_active_root(&i.root_id);
                    tracing::info!(identity = %mesh.identity().spiffe_id, "mesh certificate obtained");
                    return mesh;
                }
                Err(e) => tracing::warn!(error = %e, "unusable mesh certificate; retrying"),
            },
            Err(e) => tracing::warn!(error = %e, "no mesh certificate yet; retrying"),
        }
        tokio::time::sleep(delay.mul_f64(0.5 + fastrand::f64() * 0.5)).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`: at two thirds of
/// its lifetime, ±5 % of the lifetime, measured from now.
pub fn renew_in(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> Duration {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or_default()
        // The CA back-dates certificates by a minute for clock skew.
        .saturating_sub(Duration::from_secs(60));
    let jitter = lifetime.mul_f64(fastrand::f64() * 0.1);
    let at = not_after - lifetime / 3 - lifetime / 20 + jitter;
    at.duration_since(now).unwrap_or_default()
}

/// Keeps the identity renewed, for ever: at about two thirds of its lifetime, and within
/// a few seconds of learning that a root rotation made a new root the signing one.
pub async fn keep_renewed(
    servers: Vec<String>,
    service: String,
    mesh: Arc<MeshTls>,
    metrics: Arc<Metrics>,
) {
    loop {
        let current = mesh.identity();
        metrics.certificate(&current.not_after);
        let wait = renew_in(current.not_before, current.not_after, SystemTime::now());
        // Wake every second: the expiry gauge stays current, and a rotation is noticed
        // quickly.
        tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
        let rotated = mesh.issued_by_old_root();
        if wait > Duration::from_secs(1) && !rotated {
            continue;
        }
        if rotated {
            // Give every sidecar time to install the new bundle before presenting a
            // certificate only it validates.
            tokio::time::sleep(Duration::from_millis(1000 + fastrand::u64(..2000))).await;
            tracing::info!("root rotation: reissuing the mesh certificate under the new root");
        }
        let mut delay = Duration::from_millis(200);
        loop {
            let result = match obtain(&servers, &service).await {
                Ok(i) => mesh
                    .update(Some(i.identity), Some(&i.bundle))
                    .map(|()| mesh.set_issuing_root(&i.root_id))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    metrics.certificate_renewal(true);
                    tracing::debug!(identity = %current.spiffe_id, "mesh certificate renewed");
                    break;
                }
                Err(e) => {
                    metrics.certificate_renewal(false);
                    let left = current
                        .not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    let lifetime = current
                        .not_after
                        .duration_since(current.not_before)
                        .unwrap_or_default();
                    if left < lifetime / 3 {
                        tracing::warn!(error = %e, left = ?left, "mesh certificate renewal failed; it expires soon");
                    } else {
                        tracing::info!(error = %e, "mesh certificate renewal failed; retrying");
                    }
                    metrics.certificate(&current.not_after);
                    tokio::time::sleep(delay.mul_f64(0.5 + fastrand::f64() * 0.5)).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// The key of the trust bundle in the discovery stream.
pub const TRUST_BUNDLE: &str = "TrustBundle/mesh";

/// A `TrustBundle/mesh` resource from the discovery stream.
pub struct TrustBundle {
    /// The trusted roots.
    pub roots: Roots,
    /// The same roots, PEM.
    pub pem: String,
    /// The id of the root now signing.
    pub active: String,
}

/// Parses a `TrustBundle/mesh` resource.
pub fn bundle_of(json: &str) -> Result<TrustBundle, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("{TRUST_BUNDLE}: {e}"))?;
    let pem = pem_roots(&v);
    let roots = bundle_from_pem(&pem).map_err(|e| format!("{TRUST_BUNDLE}: {e}"))?;
    let active = v
        .get("active")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok(TrustBundle { roots, pem, active })
}

/// Trusted root certificates, DER.
pub type Roots = Vec<weft_tls::rustls::pki_types::CertificateDer<'static>>;

/// The `roots` array of PEM strings, concatenated.
fn pem_roots(v: &Value) -> String {
    v.get("roots")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_about_two_thirds_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(60 + 3000);
        for _ in 0..100 {
            let at = renew_in(start, end, start).as_secs();
            // 3000 s of lifetime: 2/3 = 2060 s after start (with the minute of skew), ±150.
            assert!((1900..=2220).contains(&at), "{at}");
        }
        assert_eq!(renew_in(start, end, end), Duration::ZERO);
    }
}
