//! Authentication: the secret a request carries, resolved to a [`Caller`] from the
//! server's view, or — for a token created an instant ago on another replica — from the
//! store, under a negative cache and a cap on concurrent lookups.

use std::sync::Arc;

use crate::acl::{hash, Caller, TOKENS};
use crate::state::State;
use crate::store::Store;

/// Resolves the secrets requests carry to callers, for the API and the discovery stream.
///
/// A secret is looked up in the view (a hash and a map lookup); a secret the view does
/// not know may belong to a token created an instant ago on another replica, so the
/// store is asked — but never for the same unknown secret twice within
/// [`NEGATIVE_TTL`], and never by more than [`MAX_STORE_LOOKUPS`] requests at once: a
/// flood of made-up tokens costs the store almost nothing.
pub struct Authenticator {
    enabled: bool,
    state: Arc<State>,
    store: Arc<dyn Store>,
    /// Secret hashes the store did not know, and when it said so (oldest first).
    unknown: std::sync::Mutex<NegativeCache>,
    lookups: tokio::sync::Semaphore,
}

/// How long an unknown secret is answered from memory.
pub const NEGATIVE_TTL: std::time::Duration = std::time::Duration::from_secs(2);
/// Unknown secrets remembered at most (the oldest are forgotten first).
pub const MAX_NEGATIVE: usize = 4096;
/// Store lookups for secrets the view does not know, at once at most; beyond, the
/// secret is treated as unknown (the client may try again).
pub const MAX_STORE_LOOKUPS: usize = 8;

#[derive(Default)]
struct NegativeCache {
    order: std::collections::VecDeque<(String, std::time::Instant)>,
    set: std::collections::HashMap<String, std::time::Instant>,
}

impl NegativeCache {
    fn contains(&mut self, hash: &str, now: std::time::Instant) -> bool {
        while let Some((h, at)) = self.order.front() {
            if now.duration_since(*at) < NEGATIVE_TTL && self.order.len() <= MAX_NEGATIVE {
                break;
            }
            if self.set.get(h) == Some(at) {
                self.set.remove(h);
            }
            self.order.pop_front();
        }
        self.set.contains_key(hash)
    }

    fn insert(&mut self, hash: String, now: std::time::Instant) {
        self.set.insert(hash.clone(), now);
        self.order.push_back((hash, now));
    }
}

impl Authenticator {
    /// An authenticator over the view and the store; with ACLs off everyone is allowed.
    pub fn new(enabled: bool, state: Arc<State>, store: Arc<dyn Store>) -> Authenticator {
        Authenticator {
            enabled,
            state,
            store,
            unknown: Default::default(),
            lookups: tokio::sync::Semaphore::new(MAX_STORE_LOOKUPS),
        }
    }

    /// Whether ACLs are on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Who holds `secret`.
    pub async fn caller(&self, secret: Option<&str>) -> Caller {
        if !self.enabled {
            return Caller::Anyone;
        }
        let Some(secret) = secret.filter(|s| !s.is_empty()) else {
            return Caller::Nobody;
        };
        let hash = hash(secret);
        if let Some(t) = self.state.read().token(&hash) {
            return Caller::Token(t);
        }
        let now = std::time::Instant::now();
        if self.negative().contains(&hash, now) {
            return Caller::Unknown;
        }
        let Ok(_permit) = self.lookups.try_acquire() else {
            return Caller::Unknown;
        };
        match crate::store::get(&*self.store, &format!("{TOKENS}{hash}")).await {
            Ok((Some(kv), _)) => serde_json::from_slice(&kv.value)
                .map(|t| Caller::Token(Arc::new(t)))
                .unwrap_or(Caller::Unknown),
            Ok((None, _)) => {
                self.negative().insert(hash, now);
                Caller::Unknown
            }
            Err(_) => Caller::Unknown,
        }
    }

    fn negative(&self) -> std::sync::MutexGuard<'_, NegativeCache> {
        // Entries are inserted and removed whole; a poisoned lock holds consistent data.
        self.unknown.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The secret a request carries: `X-Weft-Token`, or `Authorization: Bearer`.
pub fn secret_of(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-weft-token").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}
