//! The server's in-memory view of configuration and catalog, rebuilt from the store and
//! kept current by its watch. Discovery sessions read it to compute what each proxy
//! needs; a `watch` channel tells them the revision moved (coalescing bursts: a session
//! that is busy sees only the latest revision).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, RwLock, RwLockReadGuard},
    time::Duration,
};

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::{
    catalog::{self, Health, Instance},
    config,
    store::{self, Event, Revision, Store, WatchEvent},
};

/// The key of the trust bundle in a proxy's slice.
pub const TRUST_BUNDLE: &str = "TrustBundle/mesh";

/// The stored bundle as proxies get it: the trust domain and the root certificates.
fn render_trust_bundle(stored: &[u8]) -> Option<Rendered> {
    let b: crate::ca::Bundle = serde_json::from_slice(stored)
        .map_err(|e| tracing::warn!(error = %e, "unreadable trust bundle"))
        .ok()?;
    let roots: Vec<&str> = b.roots.iter().map(|r| r.certificate.as_str()).collect();
    Some(Rendered::new(
        json!({"trustDomain": b.trust_domain, "roots": roots, "active": b.active}).to_string(),
    ))
}

/// A resource as sent to proxies: JSON text and its content version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Content hash (the version a proxy reports back in `Hello.known`).
    pub version: u64,
    /// The JSON.
    pub json: Arc<str>,
}

impl Rendered {
    fn new(json: String) -> Rendered {
        let mut h = DefaultHasher::new();
        json.hash(&mut h);
        Rendered {
            version: h.finish(),
            json: json.into(),
        }
    }
}

/// The view (see the module docs).
#[derive(Debug, Default)]
pub struct View {
    /// The store revision the view reflects.
    pub revision: Revision,
    /// `Kind/name` → resource.
    config: HashMap<String, Rendered>,
    /// Service → id → instance.
    instances: HashMap<String, BTreeMap<String, Instance>>,
    /// Service → its `Endpoints` resource, rendered when first read after its instances
    /// change: rendering on every change made registering N instances of one service
    /// O(N²) (5,000 took minutes), and a load from the store the same.
    endpoints: HashMap<String, std::sync::OnceLock<Rendered>>,
    /// Service → mesh routes attached to it (`parentRefs: [{kind: Service}]`).
    routes_by_parent: HashMap<String, BTreeSet<String>>,
    /// Route → (services it attaches to, services it sends to).
    route_refs: HashMap<String, (Vec<String>, Vec<String>)>,
    /// Destination (a service or `*`) → intentions about calls to it.
    intentions_by_dest: HashMap<String, BTreeSet<String>>,
    /// Intention → its destination.
    intention_dest: HashMap<String, String>,
    /// The CA's trust bundle as proxies get it (`TrustBundle/mesh`): roots, no keys.
    trust_bundle: Option<Rendered>,
    /// ACL tokens by secret hash.
    tokens: crate::acl::Tokens,
    /// Service → its virtual IP, and back ([`crate::vip`]).
    vips: HashMap<String, std::net::Ipv4Addr>,
    vip_owners: HashMap<std::net::Ipv4Addr, String>,
}

impl View {
    /// What a proxy beside `service`, calling `upstreams`, needs: key → resource.
    pub fn slice(&self, service: &str, upstreams: &[String]) -> BTreeMap<String, Rendered> {
        let mut out = BTreeMap::new();
        self.add_service(&mut out, service, false);
        // Its inbound policy: the mesh settings and the intentions about calls to it.
        if let Some(r) = self.config.get("Mesh/mesh") {
            out.insert("Mesh/mesh".to_string(), r.clone());
        }
        for dest in [service, "*"] {
            for name in self.intentions_by_dest.get(dest).into_iter().flatten() {
                let key = format!("Intention/{name}");
                if let Some(r) = self.config.get(&key) {
                    out.insert(key, r.clone());
                }
            }
        }
        if let Some(b) = &self.trust_bundle {
            out.insert(TRUST_BUNDLE.to_string(), b.clone());
        }
        for u in upstreams {
            self.add_service(&mut out, u, true);
            for route in self.routes_by_parent.get(u).into_iter().flatten() {
                let key = format!("HTTPRoute/{route}");
                if let Some(r) = self.config.get(&key) {
                    out.insert(key, r.clone());
                }
                if let Some((_, backends)) = self.route_refs.get(route) {
                    for b in backends {
                        self.add_service(&mut out, b, true);
                    }
                }
            }
        }
        out
    }

    fn add_service(&self, out: &mut BTreeMap<String, Rendered>, name: &str, with_endpoints: bool) {
        let key = format!("Service/{name}");
        if let Some(r) = self.config.get(&key) {
            out.insert(key, r.clone());
        }
        if with_endpoints {
            let r = match self.endpoints.get(name) {
                Some(cell) => cell
                    .get_or_init(|| render_endpoints(name, self.instances.get(name)))
                    .clone(),
                None => render_endpoints(name, None),
            };
            out.insert(format!("Endpoints/{name}"), r);
        }
    }

    /// The ids of `service`'s instances in its `Service`'s subset `subset` (metadata with
    /// every label the subset lists); empty when either is unknown.
    pub fn subset_instances(&self, service: &str, subset: &str) -> BTreeSet<String> {
        let labels: BTreeMap<String, String> = self
            .config
            .get(&format!("Service/{service}"))
            .and_then(|r| serde_json::from_str::<Value>(&r.json).ok())
            .and_then(|v| serde_json::from_value(v["spec"]["subsets"][subset].clone()).ok())
            .unwrap_or_default();
        if labels.is_empty() {
            return BTreeSet::new();
        }
        self.instances
            .get(service)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|i| labels.iter().all(|(k, v)| i.metadata.get(k) == Some(v)))
            .map(|i| i.id.clone())
            .collect()
    }

    /// Every `Canary` resource's JSON.
    pub fn canaries(&self) -> Vec<Arc<str>> {
        self.config_json(|k| k.starts_with("Canary/"))
    }

    /// The Mesh and every Intention and Service resource, as one text `weft_model::parse`
    /// reads: what decides who may call whom (the UI's intention views).
    pub fn policy_text(&self) -> String {
        self.config_json(|k| {
            k == "Mesh/mesh" || k.starts_with("Intention/") || k.starts_with("Service/")
        })
        .join("\n---\n")
    }

    /// The JSON of the resources whose `Kind/name` passes `keep`, by `Kind/name`.
    fn config_json(&self, keep: impl Fn(&str) -> bool) -> Vec<Arc<str>> {
        let mut keys: Vec<&String> = self.config.keys().filter(|k| keep(k)).collect();
        keys.sort();
        keys.iter().map(|k| self.config[*k].json.clone()).collect()
    }

    /// The secret hashes of the tokens described exactly as `description`.
    pub fn tokens_described(&self, description: &str) -> Vec<String> {
        self.tokens
            .iter()
            .filter(|(_, t)| t.description == description)
            .map(|(hash, _)| hash.clone())
            .collect()
    }

    /// The token whose secret hashes to `hash`.
    pub fn token(&self, hash: &str) -> Option<Arc<crate::acl::Token>> {
        self.tokens.get(hash).cloned()
    }

    /// The service of the instance `lease` holds.
    pub fn lease_service(&self, lease: crate::store::LeaseId) -> Option<String> {
        self.instances
            .iter()
            .find(|(_, m)| m.values().any(|i| i.lease == lease))
            .map(|(s, _)| s.clone())
    }

    /// How many instances `service` has, and whether `id` is one of them.
    pub fn instance_count(&self, service: &str, id: &str) -> (usize, bool) {
        self.instances
            .get(service)
            .map_or((0, false), |m| (m.len(), m.contains_key(id)))
    }

    /// A view holding only `instances`, at `revision` (tests and fuzzing of what reads it).
    #[doc(hidden)]
    pub fn from_instances(
        instances: impl IntoIterator<Item = Instance>,
        revision: Revision,
    ) -> View {
        let mut view = View {
            revision,
            ..View::default()
        };
        for i in instances {
            view.instances
                .entry(i.service.clone())
                .or_default()
                .insert(i.id.clone(), i);
        }
        view
    }

    /// This view with `service`'s virtual IP set (tests).
    #[doc(hidden)]
    pub fn with_vip(mut self, service: &str, ip: std::net::Ipv4Addr) -> View {
        self.vips.insert(service.to_string(), ip);
        self.vip_owners.insert(ip, service.to_string());
        self
    }

    /// The registered instances of `service` by id (none: no instance ever, or all gone).
    pub fn instances_of(&self, service: &str) -> Option<&BTreeMap<String, Instance>> {
        self.instances.get(service).filter(|m| !m.is_empty())
    }

    /// The instances registered at `ip`, of every service (a scan: asked once per new
    /// destination by transparent sidecars, which remember the answer).
    pub fn instances_at(&self, ip: std::net::IpAddr) -> impl Iterator<Item = &Instance> {
        self.instances
            .values()
            .flat_map(BTreeMap::values)
            .filter(move |i| i.address.parse::<std::net::IpAddr>().ok() == Some(ip))
    }

    /// The virtual IP of `service`, once the leader gave it one.
    pub fn vip_of(&self, service: &str) -> Option<std::net::Ipv4Addr> {
        self.vips.get(service).copied()
    }

    /// The service whose virtual IP `ip` is.
    pub fn vip_owner(&self, ip: std::net::Ipv4Addr) -> Option<&str> {
        self.vip_owners.get(&ip).map(String::as_str)
    }

    /// Services with registered instances and no virtual IP yet, by name.
    pub fn services_without_vip(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .instances
            .keys()
            .filter(|s| !self.vips.contains_key(*s))
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Every virtual IP given.
    pub fn vips_taken(&self) -> std::collections::HashSet<std::net::Ipv4Addr> {
        self.vip_owners.keys().copied().collect()
    }

    /// Every service with instances: name → (instances, healthy ones).
    pub fn services(&self) -> BTreeMap<String, (usize, usize)> {
        self.instances
            .iter()
            .map(|(name, m)| {
                let up = m.values().filter(|i| i.health != Health::Critical).count();
                (name.clone(), (m.len(), up))
            })
            .collect()
    }

    fn apply(&mut self, event: &Event) {
        let key = event.key();
        if let Some(rest) = key.strip_prefix(catalog::PREFIX) {
            let Some((service, id)) = rest.split_once('/') else {
                return;
            };
            let set = self.instances.entry(service.to_string()).or_default();
            match event {
                Event::Put(kv) => match serde_json::from_slice::<Instance>(&kv.value) {
                    Ok(inst) => {
                        set.insert(id.to_string(), inst);
                    }
                    Err(e) => tracing::warn!(key, error = %e, "ignoring unreadable instance"),
                },
                Event::Delete { .. } => {
                    set.remove(id);
                }
            }
            if set.is_empty() {
                self.instances.remove(service);
                self.endpoints.remove(service);
            } else {
                self.endpoints
                    .insert(service.to_string(), std::sync::OnceLock::new());
            }
        } else if let Some(hash) = key.strip_prefix(crate::acl::TOKENS) {
            match event {
                Event::Put(kv) => match serde_json::from_slice::<crate::acl::Token>(&kv.value) {
                    Ok(t) => {
                        self.tokens.insert(hash.to_string(), Arc::new(t));
                    }
                    Err(e) => tracing::warn!(key, error = %e, "ignoring unreadable token"),
                },
                Event::Delete { .. } => {
                    self.tokens.remove(hash);
                }
            }
        } else if let Some(service) = key.strip_prefix(crate::vip::BY_SERVICE) {
            if let Some(old) = self.vips.remove(service) {
                self.vip_owners.remove(&old);
            }
            if let Event::Put(kv) = event {
                match std::str::from_utf8(&kv.value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                {
                    Some(ip) => {
                        self.vips.insert(service.to_string(), ip);
                        self.vip_owners.insert(ip, service.to_string());
                    }
                    None => tracing::warn!(key, "ignoring an unreadable virtual IP"),
                }
            }
        } else if key == crate::ca::BUNDLE_KEY {
            self.trust_bundle = match event {
                Event::Put(kv) => render_trust_bundle(&kv.value),
                Event::Delete { .. } => None,
            };
        } else if let Some((kind, name)) = config::id_of(key) {
            let id = format!("{kind}/{name}");
            if kind == "HTTPRoute" {
                self.unindex_route(name);
            }
            if kind == "Intention" {
                self.unindex_intention(name);
            }
            match event {
                Event::Put(kv) => {
                    let text = String::from_utf8_lossy(&kv.value).into_owned();
                    if kind == "HTTPRoute" {
                        if let Ok(v) = serde_json::from_str::<Value>(&text) {
                            self.index_route(name, &v);
                        }
                    }
                    if kind == "Intention" {
                        if let Ok(v) = serde_json::from_str::<Value>(&text) {
                            self.index_intention(name, &v);
                        }
                    }
                    self.config.insert(id, Rendered::new(text));
                }
                Event::Delete { .. } => {
                    self.config.remove(&id);
                }
            }
        }
    }

    fn index_route(&mut self, name: &str, v: &Value) {
        let strings = |list: Option<&Value>, filter: &dyn Fn(&Value) -> bool| -> Vec<String> {
            list.and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|p| filter(p))
                .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        };
        let parents = strings(v.pointer("/spec/parentRefs"), &|p| {
            p.get("kind").and_then(Value::as_str) == Some("Service")
        });
        let mut backends = Vec::new();
        for rule in v
            .pointer("/spec/rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            backends.extend(strings(rule.get("backendRefs"), &|_| true));
        }
        backends.sort();
        backends.dedup();
        for p in &parents {
            self.routes_by_parent
                .entry(p.clone())
                .or_default()
                .insert(name.to_string());
        }
        self.route_refs
            .insert(name.to_string(), (parents, backends));
    }

    fn index_intention(&mut self, name: &str, v: &Value) {
        let Some(dest) = v.pointer("/spec/destination").and_then(Value::as_str) else {
            return;
        };
        self.intentions_by_dest
            .entry(dest.to_string())
            .or_default()
            .insert(name.to_string());
        self.intention_dest
            .insert(name.to_string(), dest.to_string());
    }

    fn unindex_intention(&mut self, name: &str) {
        if let Some(dest) = self.intention_dest.remove(name) {
            if let Some(set) = self.intentions_by_dest.get_mut(&dest) {
                set.remove(name);
                if set.is_empty() {
                    self.intentions_by_dest.remove(&dest);
                }
            }
        }
    }

    fn unindex_route(&mut self, name: &str) {
        if let Some((parents, _)) = self.route_refs.remove(name) {
            for p in parents {
                if let Some(set) = self.routes_by_parent.get_mut(&p) {
                    set.remove(name);
                    if set.is_empty() {
                        self.routes_by_parent.remove(&p);
                    }
                }
            }
        }
    }
}

fn render_endpoints(service: &str, set: Option<&BTreeMap<String, Instance>>) -> Rendered {
    let instances: Vec<Value> = set
        .into_iter()
        .flat_map(|m| m.values())
        .map(|i| {
            json!({
                "id": i.id,
                "address": i.address,
                "port": i.port,
                "metadata": i.metadata,
                "protocol": i.protocol,
                "health": i.health,
            })
        })
        .collect();
    Rendered::new(json!({"service": service, "instances": instances}).to_string())
}

/// The shared view plus the revision signal.
pub struct State {
    view: RwLock<View>,
    tick: watch::Sender<Revision>,
    /// Set once the first full load is in: until then the view is empty, and serving it
    /// to a proxy would wipe that proxy's configuration.
    loaded: watch::Sender<bool>,
}

impl State {
    /// An empty state; call [`State::follow`] to fill it.
    pub fn new() -> Arc<State> {
        Arc::new(State {
            view: RwLock::new(View::default()),
            tick: watch::channel(0).0,
            loaded: watch::channel(false).0,
        })
    }

    /// Reads the view.
    pub fn read(&self) -> RwLockReadGuard<'_, View> {
        // No code panics while holding the write lock mid-update in a way that leaves
        // the view inconsistent for readers (each event is applied whole).
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that wakes when the revision moves.
    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.tick.subscribe()
    }

    /// Waits (up to `max`) for the first full load; false if it did not come.
    pub async fn loaded(&self, max: Duration) -> bool {
        let mut rx = self.loaded.subscribe();
        tokio::time::timeout(max, rx.wait_for(|l| *l))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits (up to `max`) until the view holds the store's changes up to `revision`;
    /// false if it did not get there in time.
    pub async fn reached(&self, revision: Revision, max: Duration) -> bool {
        let mut rx = self.tick.subscribe();
        tokio::time::timeout(max, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Loads everything under `/weft/` and follows the store's watch, for ever
    /// (listing again when told the history is gone, retrying when the store fails).
    pub async fn follow(self: Arc<State>, store: Arc<dyn Store>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.sync_once(&*store).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, "store watch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn sync_once(&self, store: &dyn Store) -> Result<(), store::StoreError> {
        let mut fresh = View::default();
        let mut revision = Revision::MAX;
        for prefix in [
            config::PREFIX,
            catalog::PREFIX,
            crate::ca::BUNDLE_KEY,
            crate::acl::TOKENS,
            crate::vip::BY_SERVICE,
        ] {
            let page = store::list_all(store, prefix).await?;
            revision = revision.min(page.revision);
            for kv in page.kvs {
                fresh.apply(&Event::Put(kv));
            }
        }
        // Watching from the earliest list replays what changed while listing (events
        // are idempotent on the view).
        let mut rx = store.watch("/weft/", revision).await?;
        fresh.revision = revision;
        {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            *view = fresh;
        }
        self.tick.send_replace(revision);
        self.loaded.send_replace(true);
        while let Some(event) = rx.recv().await {
            match event {
                WatchEvent::Changes { revision, events } => {
                    {
                        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
                        for e in &events {
                            view.apply(e);
                        }
                        view.revision = revision;
                    }
                    self.tick.send_replace(revision);
                }
                WatchEvent::Compacted => return Ok(()),
            }
        }
        Err(store::StoreError::Unavailable("watch ended".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(i: &Instance) -> Event {
        Event::Put(store::KeyValue {
            key: catalog::key(&i.service, &i.id),
            value: serde_json::to_vec(i).expect("JSON"),
            create_revision: 1,
            mod_revision: 1,
            lease: None,
        })
    }

    #[test]
    fn endpoints_are_rendered_once_when_read_not_on_every_change() {
        let mut view = View::default();
        for n in 0..3 {
            let i = crate::dns::instance("big", &format!("i{n}"), "10.0.0.1", 80 + n, "v1", false);
            view.apply(&put(&i));
            assert!(
                view.endpoints["big"].get().is_none(),
                "a change only marks the resource stale"
            );
        }
        let slice = view.slice("client", &["big".to_string()]);
        let rendered = &slice["Endpoints/big"];
        assert_eq!(rendered.json.matches("\"id\"").count(), 3);
        assert!(
            view.endpoints["big"].get().is_some(),
            "kept for the next reader"
        );
        // The next change is seen by the next reader.
        let i = crate::dns::instance("big", "i9", "10.0.0.2", 90, "v1", false);
        view.apply(&put(&i));
        let again = &view.slice("client", &["big".to_string()])["Endpoints/big"];
        assert_eq!(again.json.matches("\"id\"").count(), 4);
        assert_ne!(again.version, rendered.version);
    }
}
