//! The mesh certificate authority.
//!
//! The root is generated at the first start of the first server (or whichever replica
//! wins the create-only transaction) and shared by every replica through the store:
//!
//! ```text
//! /weft/ca/bundle        public: trust domain, root certificates, the active root's id
//! /weft/ca/keys/<id>     the root's private key (never served, never in the view)
//! ```
//!
//! The store holds the key, so the store is protected like a key: the embedded store's
//! directory is created `0700` and its file `0600`; an etcd cluster must be reachable
//! only by weft servers (docs/security.md).
//!
//! Signing turns a CSR into a leaf for the SPIFFE ID of the service the caller is
//! entitled to — the CSR's own names are ignored ([`weft_tls::ca::Signer::sign`]).

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::store::{self, Compare, Op, Store, Txn};

/// The public bundle's key.
pub const BUNDLE_KEY: &str = "/weft/ca/bundle";
/// Prefix of the roots' private keys.
pub const KEY_PREFIX: &str = "/weft/ca/keys/";
/// Default leaf lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Shortest leaf lifetime accepted (rotation tests use seconds; production, hours).
pub const MIN_TTL: Duration = Duration::from_secs(10);
/// Root lifetime.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The trust bundle as stored and served (no keys).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    /// The mesh's trust domain: `spiffe://<trustDomain>/svc/<service>`.
    pub trust_domain: String,
    /// Trusted roots, oldest first.
    pub roots: Vec<Root>,
    /// The root that signs new leaves.
    pub active: String,
}

/// One root certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Root {
    /// Its id (the key's store name).
    pub id: String,
    /// PEM.
    pub certificate: String,
}

/// A signed leaf, as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Signed {
    /// The identity in the certificate.
    pub spiffe_id: String,
    /// The leaf, PEM.
    pub certificate: String,
    /// Unix seconds after which it is invalid.
    pub not_after: u64,
    /// The trust domain.
    pub trust_domain: String,
    /// Every trusted root, PEM.
    pub roots: Vec<String>,
}

/// The CA of one server.
pub struct Ca {
    store: std::sync::Arc<dyn Store>,
    ttl: Duration,
    /// The active root's signer, by id (re-read when the bundle names another).
    signer: Mutex<Option<(String, std::sync::Arc<weft_tls::ca::Signer>)>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("ttl", &self.ttl).finish()
    }
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("CA: {e}"))
}

impl Ca {
    /// Loads the CA, creating its root on first start. `trust_domain` must match the
    /// stored one (a trust domain is chosen once).
    pub async fn init(
        store: std::sync::Arc<dyn Store>,
        trust_domain: &str,
        ttl: Duration,
    ) -> Result<Ca, String> {
        if ttl < MIN_TTL {
            return Err(format!(
                "certificate TTL {ttl:?} is under the minimum {MIN_TTL:?}"
            ));
        }
        if weft_tls::spiffe::ServiceId::parse(&weft_tls::spiffe::service_id(trust_domain, "x"))
            .is_none()
        {
            return Err(format!(
                "trust domain `{trust_domain}`: use lower-case letters, digits, `-`, `.` and `_`"
            ));
        }
        loop {
            let (kv, _) = store::get(&*store, BUNDLE_KEY)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(kv) = kv {
                let bundle: Bundle = serde_json::from_slice(&kv.value)
                    .map_err(|e| format!("{BUNDLE_KEY} is unreadable: {e}"))?;
                if bundle.trust_domain != trust_domain {
                    return Err(format!(
                        "the mesh's trust domain is `{}` (chosen at its first start); \
                         --trust-domain `{trust_domain}` differs",
                        bundle.trust_domain
                    ));
                }
                return Ok(Ca {
                    store,
                    ttl,
                    signer: Mutex::new(None),
                });
            }
            let (cert, key) =
                weft_tls::ca::new_root(trust_domain, ROOT_VALIDITY).map_err(|e| e.to_string())?;
            let id = format!(
                "root-{}",
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs()
            );
            let bundle = Bundle {
                trust_domain: trust_domain.to_string(),
                roots: vec![Root {
                    id: id.clone(),
                    certificate: cert,
                }],
                active: id.clone(),
            };
            let value = serde_json::to_vec(&bundle).map_err(|e| e.to_string())?;
            let created = store
                .txn(Txn {
                    compares: vec![Compare {
                        key: BUNDLE_KEY.into(),
                        mod_revision: 0,
                    }],
                    ops: vec![
                        Op::Put {
                            key: format!("{KEY_PREFIX}{id}"),
                            value: key.into_bytes(),
                            lease: None,
                        },
                        Op::Put {
                            key: BUNDLE_KEY.into(),
                            value,
                            lease: None,
                        },
                    ],
                })
                .await
                .map_err(|e| e.to_string())?;
            if created.succeeded {
                tracing::info!(trust_domain, root = %id, "created the mesh CA's root");
            }
            // Lost the race to another replica, or won: read what is stored.
        }
    }

    /// The current bundle.
    pub async fn bundle(&self) -> Result<Bundle, ApiError> {
        let (kv, _) = store::get(&*self.store, BUNDLE_KEY).await?;
        let kv = kv.ok_or_else(|| bad("no trust bundle in the store"))?;
        serde_json::from_slice(&kv.value).map_err(bad)
    }

    /// Signs `csr_pem` for `service`. The caller has already been checked to be
    /// entitled to that service.
    pub async fn sign(&self, service: &str, csr_pem: &str) -> Result<Signed, ApiError> {
        let bundle = self.bundle().await?;
        let signer = self.signer(&bundle).await?;
        let spiffe_id = weft_tls::spiffe::service_id(&bundle.trust_domain, service);
        let certificate = signer
            .sign(csr_pem, &spiffe_id, self.ttl)
            .map_err(|e| match e {
                weft_tls::ca::IssueError::Csr(m) => ApiError::bad_request("invalid-csr", m),
                other => bad(other),
            })?;
        let not_after = SystemTime::now() + self.ttl;
        Ok(Signed {
            spiffe_id,
            certificate,
            not_after: not_after
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            trust_domain: bundle.trust_domain,
            roots: bundle.roots.into_iter().map(|r| r.certificate).collect(),
        })
    }

    async fn signer(
        &self,
        bundle: &Bundle,
    ) -> Result<std::sync::Arc<weft_tls::ca::Signer>, ApiError> {
        if let Some((id, s)) = &*self.signer.lock().unwrap_or_else(|p| p.into_inner()) {
            if *id == bundle.active {
                return Ok(s.clone());
            }
        }
        let root = bundle
            .roots
            .iter()
            .find(|r| r.id == bundle.active)
            .ok_or_else(|| bad("the active root is not in the bundle"))?;
        let (kv, _) = store::get(&*self.store, &format!("{KEY_PREFIX}{}", root.id)).await?;
        let key = kv.ok_or_else(|| bad(format!("no key for root {}", root.id)))?;
        let key = String::from_utf8(key.value).map_err(bad)?;
        let signer =
            std::sync::Arc::new(weft_tls::ca::Signer::new(&root.certificate, &key).map_err(bad)?);
        *self.signer.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((bundle.active.clone(), signer.clone()));
        Ok(signer)
    }
}
