//! Authentication: the secret a request carries, resolved to a [`Caller`] from the
//! server's view, or — for a token created an instant ago on another replica — from the
//! store, under a negative cache and a cap on concurrent lookups; such a caller then
//! waits for the view to catch up with the store, so what it is served is not older than
//! its token.

use std::sync::Arc;

use crate::acl::{hash, Caller, TOKENS};
use crate::state::State;
use crate::store::Store;

/// Resolves the secrets requests carry to callers, for the API and the discovery stream.
///
/// A secret is looked up in the view (a hash and a map lookup); a secret the view does
/// not know may belong to a token created an instant ago (on another replica, or on this
/// one while its watch is behind a burst of writes), so the store is asked — but never
/// for the same unknown secret twice within [`NEGATIVE_TTL`], and never by more than
/// [`MAX_STORE_LOOKUPS`] requests at once: beyond that, requests wait their turn (at most
/// [`LOOKUP_WAIT`]) rather than being refused a token that exists. A flood of made-up
/// tokens costs the store at most those few lookups at a time.
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
/// Store lookups for secrets the view does not know, at once at most.
pub const MAX_STORE_LOOKUPS: usize = 8;
/// How long a request waits for its turn to look its secret up; then it is treated as
/// unknown (the client may try again). Found at 100,000 proxies (bench/control.py): with
/// no wait, tokens made an instant before were refused while the watch was catching up.
pub const LOOKUP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a caller found in the store waits for this server's view to catch up with
/// the store (see [`Authenticator::caller`]).
pub const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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
        let Ok(Ok(permit)) = tokio::time::timeout(LOOKUP_WAIT, self.lookups.acquire()).await else {
            return Caller::Unknown;
        };
        // The watch may have brought the token while this request waited.
        if let Some(t) = self.state.read().token(&hash) {
            return Caller::Token(t);
        }
        match crate::store::get(&*self.store, &format!("{TOKENS}{hash}")).await {
            Ok((Some(kv), revision)) => {
                // The lookup is done: waiting for the view below needs no lookup slot.
                drop(permit);
                // The view is behind the store (it lacks a token the store has): what
                // this caller does next — a proxy's first configuration, an API read —
                // waits until the view holds everything the store held when asked (a
                // proxy was sent a stale slice without its intentions, and its stream
                // ended as "revoked" when the view moved on without the token). Not
                // for ever: a view that cannot catch up is served as it is.
                if !self.state.reached(revision, CATCH_UP_WAIT).await {
                    tracing::warn!(
                        revision,
                        "this server's view is behind the store; serving it as it is"
                    );
                }
                serde_json::from_slice(&kv.value)
                    .map(|t| Caller::Token(Arc::new(t)))
                    .unwrap_or(Caller::Unknown)
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::Token;

    /// Many requests at once with tokens the store has and the view does not yet (a
    /// burst of new tokens, the watch behind): every one is recognised, none refused for
    /// want of a lookup slot; a made-up secret is still unknown.
    #[tokio::test]
    async fn tokens_the_view_has_not_seen_yet_are_found_however_many_ask_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> =
            Arc::new(crate::embedded::Embedded::open(dir.path()).expect("store"));
        let n = MAX_STORE_LOOKUPS * 8;
        for i in 0..n {
            let secret = format!("secret-{i}");
            let token = Token {
                accessor_id: format!("a-{i}"),
                secret_hash: hash(&secret),
                description: String::new(),
                rules: vec!["service:s:write".into()],
                created: 0,
            };
            let value = serde_json::to_vec(&token).expect("json");
            crate::store::put(&*store, &format!("{TOKENS}{}", hash(&secret)), value, None)
                .await
                .expect("put");
        }
        // The view is empty: it never watched the store.
        let auth = Arc::new(Authenticator::new(true, State::new(), store));
        let asks: Vec<_> = (0..n)
            .map(|i| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.caller(Some(&format!("secret-{i}"))).await })
            })
            .collect();
        for (i, ask) in asks.into_iter().enumerate() {
            let caller = ask.await.expect("task");
            assert!(
                matches!(caller, Caller::Token(ref t) if t.accessor_id == format!("a-{i}")),
                "secret-{i} was not recognised"
            );
        }
        assert!(matches!(
            auth.caller(Some("made-up")).await,
            Caller::Unknown
        ));
    }

    /// A token the view has not seen (its watch is behind): the caller is answered only
    /// once the view holds what the store held when asked, so a proxy connecting with it
    /// is not served a slice older than its token (it was: without its intentions).
    #[tokio::test]
    async fn a_caller_found_in_the_store_waits_for_the_view_to_catch_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> =
            Arc::new(crate::embedded::Embedded::open(dir.path()).expect("store"));
        let token = Token {
            accessor_id: "a".into(),
            secret_hash: hash("fresh"),
            description: String::new(),
            rules: vec!["service:s:write".into()],
            created: 0,
        };
        let value = serde_json::to_vec(&token).expect("json");
        let key = format!("{TOKENS}{}", hash("fresh"));
        let written = crate::store::put(&*store, &key, value, None)
            .await
            .expect("put");
        let state = State::new();
        let auth = Arc::new(Authenticator::new(true, state.clone(), store.clone()));
        let ask = {
            let auth = auth.clone();
            tokio::spawn(async move { auth.caller(Some("fresh")).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!ask.is_finished(), "answered from a view behind the store");
        // The view starts following the store: the caller is answered, and by then
        // the view holds the token.
        tokio::spawn(state.clone().follow(store));
        let caller = ask.await.expect("task");
        assert!(matches!(caller, Caller::Token(ref t) if t.accessor_id == "a"));
        let view = state.read();
        assert!(view.revision >= written, "{} < {written}", view.revision);
        assert!(view.token(&hash("fresh")).is_some());
    }
}
