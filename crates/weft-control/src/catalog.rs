//! The catalog: service instances, each held by a lease.
//!
//! An instance lives at `/weft/catalog/<service>/<id>` as JSON, written with the lease
//! its sidecar keeps alive. When the sidecar dies the lease lapses and the instance
//! leaves every endpoint set by itself; a failed health check leaves it in the catalog
//! with `health: critical`, so it stops receiving traffic sooner.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    config::valid_name,
    error::ApiError,
    store::{self, Compare, LeaseId, Op, Revision, Store, Txn},
};

/// Prefix of instance keys.
pub const PREFIX: &str = "/weft/catalog/";
/// Bounds on a registration's lease TTL.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// See [`MIN_TTL`].
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// Metadata entries per instance.
pub const MAX_METADATA: usize = 64;

/// Health as last reported by the instance's sidecar.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not yet checked: receives traffic (a new instance is innocent until proven
    /// otherwise, as with outlier detection).
    #[default]
    Unknown,
    /// The last checks passed.
    Passing,
    /// The last checks failed: no traffic.
    Critical,
}

/// One registered instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Instance {
    /// The service it belongs to.
    pub service: String,
    /// Unique within the service.
    pub id: String,
    /// Where the mesh reaches it (its sidecar's inbound listener): an IP address.
    pub address: String,
    /// Port of `address`.
    pub port: u16,
    /// Free-form labels (`version`, `zone`, ...).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// What the application speaks (default `http`).
    #[serde(default)]
    pub protocol: weft_model::AppProtocol,
    /// Current health.
    #[serde(default)]
    pub health: Health,
    /// The lease holding the registration (set by the server).
    #[serde(default)]
    pub lease: LeaseId,
}

/// A registration request.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Registration {
    /// The instance (its `lease` is ignored).
    #[serde(flatten)]
    pub instance: Instance,
    /// Lease TTL, e.g. `10s` (default 10 s).
    #[serde(default)]
    pub ttl: Option<weft_model::duration::Duration>,
}

/// The store key of an instance.
pub fn key(service: &str, id: &str) -> String {
    format!("{PREFIX}{service}/{id}")
}

/// Registers (or re-registers) an instance under a new lease; returns the lease.
pub async fn register(
    store: &dyn Store,
    reg: Registration,
) -> Result<(LeaseId, Revision), ApiError> {
    let mut inst = reg.instance;
    let ttl = reg.ttl.map_or(Duration::from_secs(10), |d| d.get());
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(ApiError::bad_request(
            "invalid-registration",
            format!("ttl must be between {MIN_TTL:?} and {MAX_TTL:?}"),
        ));
    }
    if !valid_name(&inst.service) {
        return Err(ApiError::bad_request(
            "invalid-registration",
            format!(
                "service `{}`: a name is 1-253 characters of a-z, 0-9, `-` and `.`",
                inst.service
            ),
        ));
    }
    if inst.id.is_empty()
        || inst.id.len() > 128
        || !inst
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(ApiError::bad_request(
            "invalid-registration",
            "id must be 1-128 characters of letters, digits, `-`, `_`, `.` and `:`",
        ));
    }
    if inst.address.parse::<std::net::IpAddr>().is_err() || inst.port == 0 {
        return Err(ApiError::bad_request(
            "invalid-registration",
            format!(
                "`{}:{}` is not an IP address and a non-zero port",
                inst.address, inst.port
            ),
        ));
    }
    if inst.metadata.len() > MAX_METADATA
        || inst
            .metadata
            .iter()
            .any(|(k, v)| k.len() > 128 || v.len() > 512)
    {
        return Err(ApiError::bad_request(
            "invalid-registration",
            format!("metadata: at most {MAX_METADATA} entries, keys ≤ 128 and values ≤ 512 bytes"),
        ));
    }
    let key = key(&inst.service, &inst.id);
    let previous = store::get(store, &key).await?.0.and_then(|kv| kv.lease);
    let lease = store.grant(ttl).await?;
    inst.lease = lease;
    let value = serde_json::to_vec(&inst).map_err(|e| ApiError::internal(e.to_string()))?;
    let revision = match store::put(store, &key, value, Some(lease)).await {
        Ok(r) => r,
        Err(e) => {
            let _ = store.revoke(lease).await;
            return Err(e.into());
        }
    };
    // A re-registration ends the lease it replaces: a service holds at most one live
    // lease per instance, however often its sidecars register.
    if let Some(old) = previous.filter(|&old| old != lease) {
        let _ = store.revoke(old).await;
    }
    Ok((lease, revision))
}

/// Sets an instance's health (a no-op when unchanged).
pub async fn set_health(
    store: &dyn Store,
    service: &str,
    id: &str,
    health: Health,
) -> Result<Revision, ApiError> {
    store::compare_and_swap(|| async move {
        let (kv, revision) = store::get(store, &key(service, id)).await?;
        let kv = kv.ok_or_else(|| ApiError::not_found(format!("no instance {service}/{id}")))?;
        let mut inst: Instance = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::internal(format!("stored instance unreadable: {e}")))?;
        if inst.health == health {
            return Ok(Some(revision));
        }
        inst.health = health;
        let value = serde_json::to_vec(&inst).map_err(|e| ApiError::internal(e.to_string()))?;
        let r = store
            .txn(Txn {
                compares: vec![Compare {
                    key: kv.key.clone(),
                    mod_revision: kv.mod_revision,
                }],
                ops: vec![Op::Put {
                    key: kv.key,
                    value,
                    lease: kv.lease,
                }],
            })
            .await?;
        Ok::<_, ApiError>(r.succeeded.then_some(r.revision))
    })
    .await?
    .ok_or_else(|| ApiError::conflict("instance kept changing; try again"))
}

/// Removes an instance and ends its lease.
pub async fn deregister(store: &dyn Store, service: &str, id: &str) -> Result<Revision, ApiError> {
    let (kv, _) = store::get(store, &key(service, id)).await?;
    let kv = kv.ok_or_else(|| ApiError::not_found(format!("no instance {service}/{id}")))?;
    let r = store
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Delete { key: kv.key }],
        })
        .await?;
    if let Some(lease) = kv.lease {
        // The key is gone already; a lapsed lease is fine.
        let _ = store.revoke(lease).await;
    }
    Ok(r.revision)
}

/// Instances of `service` (all services when `None`).
pub async fn instances(
    store: &dyn Store,
    service: Option<&str>,
) -> Result<(Vec<Instance>, Revision), ApiError> {
    let prefix = match service {
        Some(s) => format!("{PREFIX}{s}/"),
        None => PREFIX.to_string(),
    };
    let page = store::list_all(store, &prefix).await?;
    let list = page
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    Ok((list, page.revision))
}
