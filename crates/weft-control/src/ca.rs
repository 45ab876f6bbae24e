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

impl Bundle {
    /// The trusted roots, PEM, one after the other (what clients verify with).
    pub fn roots_pem(&self) -> String {
        self.roots.iter().map(|r| r.certificate.as_str()).collect()
    }
}

/// One root certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Root {
    /// Its id (the key's store name).
    pub id: String,
    /// PEM.
    pub certificate: String,
    /// Unix seconds when a rotation replaced it: it stays trusted until every leaf it
    /// signed has expired, then leaves the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<u64>,
    /// With an operator-provided intermediate: the certificate that signs (PEM), sent
    /// after each leaf in its chain; `certificate` is then the operator's root(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// Operator-provided CA material: for the mesh's first start, or to rotate to.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Provided {
    /// The signing CA certificate (a root, or an intermediate), PEM.
    #[serde(rename = "certificate")]
    pub cert: String,
    /// Its private key, PEM.
    pub key: String,
    /// The root(s) to trust when `cert` is an intermediate, PEM.
    #[serde(default)]
    pub roots: Option<String>,
}

impl Provided {
    /// Checks the material: a CA certificate matching its key and, with roots, whose
    /// certificates verify under them.
    pub fn check(&self) -> Result<(), String> {
        weft_tls::ca::check_ca(&self.cert, &self.key).map_err(|e| e.to_string())?;
        match &self.roots {
            Some(roots) => {
                weft_tls::ca::check_chain(&self.cert, &self.key, roots).map_err(|e| e.to_string())
            }
            None => Ok(()),
        }
    }
}

/// A new root entry's material: (trusted certificate(s), signing key, the signing
/// intermediate if it is not the trusted certificate itself). Generated unless the
/// operator provided it.
fn root_material(
    trust_domain: &str,
    provided: Option<&Provided>,
) -> Result<(String, String, Option<String>), String> {
    Ok(match provided {
        None => {
            let (cert, key) =
                weft_tls::ca::new_root(trust_domain, ROOT_VALIDITY).map_err(|e| e.to_string())?;
            (cert, key, None)
        }
        Some(p) => match &p.roots {
            None => (p.cert.clone(), p.key.clone(), None),
            Some(roots) => (roots.clone(), p.key.clone(), Some(p.cert.clone())),
        },
    })
}

impl std::fmt::Debug for Provided {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Provided") // never the key
    }
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
    /// The id of the root that signed it.
    pub root_id: String,
}

/// The active root's signer, and the intermediate certificate(s) sent after each leaf
/// (empty when the root signs itself).
#[derive(Clone)]
struct ActiveSigner {
    signer: std::sync::Arc<weft_tls::ca::Signer>,
    chain: String,
}

/// The CA of one server.
pub struct Ca {
    store: std::sync::Arc<dyn Store>,
    ttl: Duration,
    /// The active root's signer, by id (re-read when the bundle names another).
    signer: Mutex<Option<(String, ActiveSigner)>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("ttl", &self.ttl).finish()
    }
}

/// Stores root `id`'s key and the new bundle, if the bundle is still at `revision` (0:
/// absent).
fn add_root(revision: u64, id: &str, key: String, bundle: Vec<u8>) -> Txn {
    Txn {
        compares: vec![Compare {
            key: BUNDLE_KEY.into(),
            mod_revision: revision,
        }],
        ops: vec![
            Op::Put {
                key: format!("{KEY_PREFIX}{id}"),
                value: key.into_bytes(),
                lease: None,
            },
            Op::Put {
                key: BUNDLE_KEY.into(),
                value: bundle,
                lease: None,
            },
        ],
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
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
        provided: Option<Provided>,
    ) -> Result<Ca, String> {
        if let Some(p) = &provided {
            p.check()?;
        }
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
                if provided.is_some() {
                    tracing::warn!("--ca-cert applies at the mesh's first start; this mesh has its CA already (see `weft ca roots`)");
                }
                return Ok(Ca {
                    store,
                    ttl,
                    signer: Mutex::new(None),
                });
            }
            let (certificate, key, signer) = root_material(trust_domain, provided.as_ref())?;
            let id = format!("root-{}", unix_now());
            let bundle = Bundle {
                trust_domain: trust_domain.to_string(),
                roots: vec![Root {
                    id: id.clone(),
                    certificate,
                    retired: None,
                    signer,
                }],
                active: id.clone(),
            };
            let value = serde_json::to_vec(&bundle).map_err(|e| e.to_string())?;
            let created = store
                .txn(add_root(0, &id, key, value))
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

    /// A TLS client configuration trusting the bundle's roots: how one replica reaches
    /// another's API.
    pub async fn peer_tls(
        &self,
    ) -> Result<std::sync::Arc<tokio_rustls::rustls::ClientConfig>, ApiError> {
        let pem = self.bundle().await?.roots_pem();
        weft_tls::client_config_pem(&pem, "the trust bundle", &[weft_tls::ALPN_HTTP11]).map_err(bad)
    }

    /// Signs `csr_pem` for `service`. The caller has already been checked to be
    /// entitled to that service.
    pub async fn sign(&self, service: &str, csr_pem: &str) -> Result<Signed, ApiError> {
        let bundle = self.bundle().await?;
        let signer = self.signer(&bundle).await?;
        let spiffe_id = weft_tls::spiffe::service_id(&bundle.trust_domain, service);
        let certificate =
            signer
                .signer
                .sign(csr_pem, &spiffe_id, self.ttl)
                .map_err(|e| match e {
                    weft_tls::ca::IssueError::Csr(m) => ApiError::bad_request("invalid-csr", m),
                    other => bad(other),
                })?
                + &signer.chain;
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
            root_id: bundle.active,
        })
    }

    /// A certificate for this server's API (TLS): a key made here, signed by the active
    /// root, for `spiffe://<td>/server` and `names` (DNS names and IP addresses), valid
    /// for `validity`. PEM `(chain, key)`.
    pub async fn server_certificate(
        &self,
        names: &[String],
        validity: Duration,
    ) -> Result<(String, String), ApiError> {
        let bundle = self.bundle().await?;
        let signer = self.signer(&bundle).await?;
        let (csr, key) = weft_tls::ca::new_csr("weft-server").map_err(bad)?;
        let id = format!("spiffe://{}/server", bundle.trust_domain);
        let cert = signer
            .signer
            .sign_server(&csr, &id, names, validity)
            .map_err(bad)?
            + &signer.chain;
        Ok((cert, key))
    }

    /// Root rotation: a new root (generated, or the operator's `provided` root or
    /// intermediate) joins the bundle and signs from now on; the old one is marked
    /// retired (still trusted). Sidecars install the two-root bundle from their discovery
    /// stream, then get new leaves from the new root; [`Ca::prune`] removes the old root
    /// once every leaf it signed has expired. Invalid material changes nothing.
    pub async fn rotate(&self, provided: Option<Provided>) -> Result<Bundle, ApiError> {
        if let Some(p) = &provided {
            p.check()
                .map_err(|e| ApiError::bad_request("invalid-ca", e))?;
        }
        loop {
            let (kv, _) = store::get(&*self.store, BUNDLE_KEY).await?;
            let kv = kv.ok_or_else(|| bad("no trust bundle in the store"))?;
            let mut bundle: Bundle = serde_json::from_slice(&kv.value).map_err(bad)?;
            let (cert, key, signer) =
                root_material(&bundle.trust_domain, provided.as_ref()).map_err(bad)?;
            let now = unix_now();
            // The operator's CA again: a root already in the bundle is not added twice.
            // Already signing: nothing to do; retired (and not pruned yet): it signs again.
            let existing = bundle
                .roots
                .iter()
                .find(|r| r.certificate == cert && r.signer == signer)
                .map(|r| r.id.clone());
            if existing.as_deref() == Some(bundle.active.as_str()) {
                tracing::info!(root = %bundle.active, "CA rotation to the root that already signs: nothing changed");
                return Ok(bundle);
            }
            let id = existing
                .clone()
                .unwrap_or_else(|| format!("root-{now}-{}", bundle.roots.len()));
            for r in &mut bundle.roots {
                r.retired.get_or_insert(now);
            }
            match bundle.roots.iter_mut().find(|r| r.id == id) {
                Some(r) => r.retired = None,
                None => bundle.roots.push(Root {
                    id: id.clone(),
                    certificate: cert,
                    retired: None,
                    signer,
                }),
            }
            bundle.active = id.clone();
            let value = serde_json::to_vec(&bundle).map_err(bad)?;
            let done = self
                .store
                .txn(add_root(kv.mod_revision, &id, key, value))
                .await?;
            if done.succeeded {
                tracing::info!(root = %id, "CA root rotated; the old root stays trusted until its leaves expire");
                return Ok(bundle);
            }
        }
    }

    /// Removes retired roots (and their keys) whose every leaf has expired: retired more
    /// than the leaf TTL and 10 s (clock skew between replicas) ago. Safe on every replica
    /// at once (compare-and-swap).
    pub async fn prune(&self) -> Result<(), ApiError> {
        let (kv, _) = store::get(&*self.store, BUNDLE_KEY).await?;
        let Some(kv) = kv else { return Ok(()) };
        let mut bundle: Bundle = serde_json::from_slice(&kv.value).map_err(bad)?;
        let deadline = unix_now().saturating_sub(self.ttl.as_secs() + 10);
        let (gone, kept): (Vec<Root>, Vec<Root>) = bundle
            .roots
            .into_iter()
            .partition(|r| r.id != bundle.active && r.retired.is_some_and(|t| t < deadline));
        if gone.is_empty() {
            return Ok(());
        }
        bundle.roots = kept;
        let mut ops: Vec<Op> = gone
            .iter()
            .map(|r| Op::Delete {
                key: format!("{KEY_PREFIX}{}", r.id),
            })
            .collect();
        ops.push(Op::Put {
            key: BUNDLE_KEY.into(),
            value: serde_json::to_vec(&bundle).map_err(bad)?,
            lease: None,
        });
        let done = self
            .store
            .txn(Txn {
                compares: vec![Compare {
                    key: BUNDLE_KEY.into(),
                    mod_revision: kv.mod_revision,
                }],
                ops,
            })
            .await?;
        if done.succeeded {
            for r in gone {
                tracing::info!(root = %r.id, "retired CA root removed from the trust bundle");
            }
        }
        Ok(())
    }

    /// The active root's signer, and the intermediate (PEM) leaves carry after them.
    async fn signer(&self, bundle: &Bundle) -> Result<ActiveSigner, ApiError> {
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
        let signing_cert = root.signer.as_deref().unwrap_or(&root.certificate);
        let signer = ActiveSigner {
            signer: std::sync::Arc::new(
                weft_tls::ca::Signer::new(signing_cert, &key).map_err(bad)?,
            ),
            chain: root.signer.clone().unwrap_or_default(),
        };
        *self.signer.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((bundle.active.clone(), signer.clone()));
        Ok(signer)
    }
}
