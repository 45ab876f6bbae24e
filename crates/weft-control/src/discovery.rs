//! The discovery stream, server side: one session per connected proxy.
//!
//! A session computes the proxy's slice of the [`View`](crate::state::View) (its own
//! service, the services it calls, the mesh routes attached to them and the services those
//! routes reach), sends what differs from what the proxy holds, and waits for the ACK or
//! NACK before sending anything else. So at most one update per proxy is in flight (a
//! slow proxy costs one queued message, not a backlog), and changes made meanwhile are
//! coalesced into the next update. After a NACK the proxy keeps its last good version;
//! the session remembers what the proxy really holds and tries again on the next change.
//!
//! Each session records the revision its proxy is known to be current at
//! ([`ProxyStatus`]), which `weft status` and `weft apply --wait` read.

use std::{
    collections::{BTreeMap, HashMap},
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use weft_api::discovery::{
    discovery_server::Discovery, proxy_message, Hello, LiveReport, ProxyMessage, Resource, Update,
};

use crate::{
    acl::{Access, Caller, Need},
    config::valid_name,
    state::State,
    store::Revision,
};

/// Upstreams one proxy may subscribe to.
pub const MAX_UPSTREAMS: usize = 256;
/// Longest `hello.build`.
pub const MAX_BUILD_LEN: usize = 128;
/// How long a new stream has to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams whose `Hello` is being read at once, server-wide (each may hold a message of up
/// to the server's message limit); more wait for a turn within [`HELLO_TIMEOUT`].
pub const MAX_PENDING_HELLOS: usize = 64;
/// A proxy's full resyncs (a stream opened again, or a `Hello` that asks for its slice
/// after a refused update) are served at most once per this interval; a faster loop waits.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Proxy ids whose last resync is remembered for [`RESYNC_INTERVAL`].
const MAX_RECENT: usize = 4096;

/// Bounds on what proxies may hold (`weft server --max-streams-per-token`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Discovery streams open at once under one ACL token (all the sidecars of a service
    /// usually share its token).
    pub streams_per_token: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            streams_per_token: 4096,
        }
    }
}

/// What the server knows of one connected proxy.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// The proxy's id.
    pub proxy_id: String,
    /// The service it stands beside.
    pub service: String,
    /// The services it calls.
    pub upstreams: Vec<String>,
    /// Its build.
    pub build: String,
    /// When the stream opened (Unix seconds).
    pub connected_at: u64,
    /// The proxy holds everything of its slice as of this revision.
    pub current_at: Revision,
    /// An update sent and not yet answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<Revision>,
    /// The last refused update, with the proxy's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nack: Option<Nack>,
    /// Updates sent on this stream.
    pub updates: u64,
    #[serde(skip)]
    generation: u64,
    /// The accessor of the token the stream was opened with (ACLs on).
    #[serde(skip)]
    token: Option<String>,
}

/// A refused update.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nack {
    /// Its version.
    pub version: Revision,
    /// The proxy's reason.
    pub error: String,
}

impl ProxyStatus {
    /// Whether the proxy has applied everything up to `revision`.
    pub fn current(&self, revision: Revision) -> bool {
        self.current_at >= revision && self.pending.is_none() && self.nack.is_none()
    }
}

/// Proxy ids and when each may resync next, at most [`MAX_RECENT`] of them.
#[derive(Default)]
struct Recent {
    turns: HashMap<String, tokio::time::Instant>,
    /// No entry expires before this: a full map is not scanned again until then (in a
    /// reconnect storm of 100,000 proxies the map stays full, and scanning its 4,096
    /// entries on every stream opened took a tenth of the server's CPU).
    earliest: Option<tokio::time::Instant>,
}

/// Connected proxies.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<Connected>,
    generation: std::sync::atomic::AtomicU64,
    /// When each proxy id may resync next (see [`RESYNC_INTERVAL`]).
    recent: Mutex<Recent>,
    /// Counters of updates sent and answered.
    pub metrics: crate::metrics::ControlMetrics,
}

/// The connected proxies by id, and how many streams each token holds — counted as they
/// come and go, so checking a token's limit when a stream opens is a lookup, not a scan
/// of every session (a scan made 100,000 proxies' initial sync quadratic).
#[derive(Default)]
struct Connected {
    by_id: HashMap<String, ProxyStatus>,
    per_token: HashMap<String, usize>,
}

impl Connected {
    fn insert(&mut self, status: ProxyStatus) {
        if let Some(t) = &status.token {
            *self.per_token.entry(t.clone()).or_default() += 1;
        }
        if let Some(old) = self.by_id.insert(status.proxy_id.clone(), status) {
            self.forget(old.token.as_deref());
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            self.forget(old.token.as_deref());
        }
    }

    fn forget(&mut self, token: Option<&str>) {
        let Some(t) = token else { return };
        if let Some(n) = self.per_token.get_mut(t) {
            *n -= 1;
            if *n == 0 {
                self.per_token.remove(t);
            }
        }
    }

    /// Streams `token` holds, other than proxy `id`'s.
    fn streams_of(&self, token: &str, id: &str) -> usize {
        let all = self.per_token.get(token).copied().unwrap_or(0);
        let own = self
            .by_id
            .get(id)
            .is_some_and(|s| s.token.as_deref() == Some(token));
        all - usize::from(own)
    }
}

impl Sessions {
    /// Every connected proxy, by id.
    pub fn list(&self) -> Vec<ProxyStatus> {
        let mut v: Vec<_> = self.lock().by_id.values().cloned().collect();
        v.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connected> {
        // Entries are replaced whole; a poisoned lock holds consistent data.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When a resync of proxy `id` may be served (now, or up to a few intervals ahead
    /// for a proxy that loops), reserving that turn.
    fn resync_turn(&self, id: &str) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let recent = &mut *recent;
        if recent.turns.len() >= MAX_RECENT && recent.earliest.is_none_or(|e| e <= now) {
            recent.turns.retain(|_, at| *at > now);
            recent.earliest = recent.turns.values().min().copied();
        }
        let turn = match recent.turns.get(id) {
            Some(&next) if next > now => next,
            _ => now,
        };
        if recent.turns.len() < MAX_RECENT || recent.turns.contains_key(id) {
            let next = turn + RESYNC_INTERVAL;
            recent.turns.insert(id.to_string(), next);
            recent.earliest = Some(recent.earliest.map_or(next, |e| e.min(next)));
        }
        turn
    }

    /// Records a new session for `status.proxy_id`, unless the id is held by another
    /// service's proxy (a takeover) or the token holds `limit` streams already.
    fn open(&self, status: ProxyStatus, limit: &Limits) -> Result<(), Status> {
        let mut map = self.lock();
        if let Some(held) = map.by_id.get(&status.proxy_id) {
            if held.service != status.service {
                return Err(Status::permission_denied(format!(
                    "proxy id `{}` is held by a proxy of service {}; a proxy of {} cannot take it over",
                    status.proxy_id, held.service, status.service
                )));
            }
        }
        if let Some(token) = &status.token {
            let open = map.streams_of(token, &status.proxy_id);
            if open >= limit.streams_per_token {
                return Err(Status::resource_exhausted(format!(
                    "token {token} holds {open} discovery streams, the limit \
                     (weft server --max-streams-per-token {})",
                    limit.streams_per_token
                )));
            }
        }
        map.insert(status);
        Ok(())
    }

    fn update(&self, id: &str, generation: u64, f: impl FnOnce(&mut ProxyStatus)) {
        // Never the token: `Connected` counts streams per token.
        if let Some(s) = self.lock().by_id.get_mut(id) {
            if s.generation == generation {
                f(s);
            }
        }
    }
}

/// The tonic service.
pub struct DiscoveryServer {
    state: Arc<State>,
    sessions: Arc<Sessions>,
    auth: Arc<crate::authn::Authenticator>,
    limits: Limits,
    pending_hellos: Arc<tokio::sync::Semaphore>,
    live: Arc<crate::live::Live>,
}

impl DiscoveryServer {
    /// A server over `state`, recording sessions in `sessions`. With ACLs on (`auth`), a
    /// stream needs a valid token before its first message is read, then
    /// `service:SERVICE:write` for its own service and `service:UPSTREAM:read` for each
    /// upstream, and it ends when its token is revoked.
    pub fn new(
        state: Arc<State>,
        sessions: Arc<Sessions>,
        auth: Arc<crate::authn::Authenticator>,
        limits: Limits,
        live: Arc<crate::live::Live>,
    ) -> DiscoveryServer {
        DiscoveryServer {
            state,
            sessions,
            auth,
            limits,
            live,
            pending_hellos: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HELLOS)),
        }
    }
}

impl DiscoveryServer {
    /// Who opened a stream, from its metadata (`x-weft-token`): refused before any
    /// message is read unless authenticated (or ACLs are off).
    async fn caller(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, Status> {
        let secret = metadata.get("x-weft-token").and_then(|v| v.to_str().ok());
        let caller = self.auth.caller(secret).await;
        caller
            .authenticated()
            .map_err(|e| Status::unauthenticated(e.message))?;
        Ok(caller)
    }
}

/// Whether `caller` may follow `hello`.
fn permitted(caller: &Caller, hello: &Hello) -> Result<(), Status> {
    let mut needs = vec![Need::Service(hello.service.clone(), Access::Write)];
    needs.extend(
        hello
            .upstreams
            .iter()
            .map(|u| Need::Service(u.clone(), Access::Read)),
    );
    for need in &needs {
        if let Err(e) = caller.require(need) {
            return Err(if e.status == http::StatusCode::FORBIDDEN {
                Status::permission_denied(e.message)
            } else {
                Status::unauthenticated(e.message)
            });
        }
    }
    Ok(())
}

type UpdateStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<Update, Status>> + Send + 'static>>;

fn check_hello(h: &Hello) -> Result<(), Status> {
    if h.proxy_id.is_empty() || h.proxy_id.len() > 256 {
        return Err(Status::invalid_argument(
            "hello: proxy_id must be 1-256 bytes",
        ));
    }
    if !valid_name(&h.service) {
        return Err(Status::invalid_argument(format!(
            "hello: service `{}` is not a valid name",
            h.service
        )));
    }
    if h.build.len() > MAX_BUILD_LEN {
        return Err(Status::invalid_argument(format!(
            "hello: build is at most {MAX_BUILD_LEN} bytes"
        )));
    }
    if h.upstreams.len() > MAX_UPSTREAMS {
        return Err(Status::invalid_argument(format!(
            "hello: at most {MAX_UPSTREAMS} upstreams"
        )));
    }
    if let Some(bad) = h.upstreams.iter().find(|u| !valid_name(u)) {
        return Err(Status::invalid_argument(format!(
            "hello: upstream `{bad}` is not a valid name"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Discovery for DiscoveryServer {
    type StreamStream = UpdateStream;
    type LiveStream = crate::live::AskStream;

    async fn live(
        &self,
        request: Request<Streaming<LiveReport>>,
    ) -> Result<Response<Self::LiveStream>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let asks = self
            .live
            .serve(self.state.clone(), caller, request.into_inner())
            .await?;
        Ok(Response::new(asks))
    }

    async fn stream(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<UpdateStream>, Status> {
        if !self.state.loaded(Duration::from_secs(5)).await {
            return Err(Status::unavailable(
                "the server has not loaded its state yet",
            ));
        }
        // Who is calling, from the stream's metadata: refused before any message is read.
        let caller = self.caller(request.metadata()).await?;
        // A bounded number of Hellos are read at once.
        let permit =
            tokio::time::timeout(HELLO_TIMEOUT, self.pending_hellos.clone().acquire_owned())
                .await
                .map_err(|_| Status::unavailable("too many streams are starting; try again"))?
                .map_err(|_| Status::unavailable("the server is stopping"))?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let hello = match first.and_then(|m| m.message) {
            Some(proxy_message::Message::Hello(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a hello",
                ))
            }
        };
        check_hello(&hello)?;
        permitted(&caller, &hello)?;
        // A proxy that reconnects in a loop gets one full slice per interval.
        let turn = self.sessions.resync_turn(&hello.proxy_id);
        if turn > tokio::time::Instant::now() + HELLO_TIMEOUT {
            return Err(Status::resource_exhausted(format!(
                "proxy {} reconnects too fast",
                hello.proxy_id
            )));
        }
        tokio::time::sleep_until(turn).await;
        drop(permit);
        let generation = self
            .sessions
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let token = match &caller {
            Caller::Token(t) => Some(t.accessor_id.clone()),
            _ => None,
        };
        self.sessions.open(
            ProxyStatus {
                proxy_id: hello.proxy_id.clone(),
                service: hello.service.clone(),
                upstreams: hello.upstreams.clone(),
                build: hello.build.clone(),
                connected_at: now,
                current_at: 0,
                pending: None,
                nack: None,
                updates: 0,
                generation,
                token,
            },
            &self.limits,
        )?;
        tracing::info!(proxy = %hello.proxy_id, service = %hello.service, "proxy connected");
        let (tx, rx) = mpsc::channel(1);
        let session = Session {
            state: self.state.clone(),
            sessions: self.sessions.clone(),
            generation,
            hello,
            caller,
        };
        tokio::spawn(session.run(inbound, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

struct Session {
    state: Arc<State>,
    sessions: Arc<Sessions>,
    generation: u64,
    hello: Hello,
    /// Who opened the stream: checked again at every change (a revoked token ends it).
    caller: Caller,
}

impl Session {
    /// The stream's token, if revoked since (or no longer granting what the stream
    /// follows): the status to end the stream with.
    fn revoked(&self) -> Option<Status> {
        let Caller::Token(token) = &self.caller else {
            return None;
        };
        match self.state.read().token(&token.secret_hash) {
            None => Some(Status::unauthenticated("ACL token revoked")),
            Some(current) => permitted(&Caller::Token(current), &self.hello).err(),
        }
    }
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<ProxyMessage>,
        tx: mpsc::Sender<Result<Update, Status>>,
    ) {
        let id = self.hello.proxy_id.clone();
        // What the proxy holds: key → content version.
        let mut held: HashMap<String, u64> =
            std::mem::take(&mut self.hello.known).into_iter().collect();
        let mut tick = self.state.subscribe();
        // (version, what the proxy held before it) of the update in flight.
        let mut in_flight: Option<(Revision, HashMap<String, u64>)> = None;
        let mut sent_at = std::time::Instant::now();
        // After a NACK, wait for the next change before trying again.
        let mut hold = false;
        // The first update is sent even when empty: it tells the proxy it is in sync.
        let mut first = true;
        // A resync asked for after a NACK waits for its turn.
        let mut resync_at: Option<tokio::time::Instant> = None;
        loop {
            if let Some(at) = resync_at.take() {
                if at > tokio::time::Instant::now() {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = tx.closed() => break,
                    }
                }
            }
            if in_flight.is_none() && !hold {
                // Mark the current revision seen *before* reading the view: a change
                // that lands after this line wakes the select below, so none is lost.
                tick.mark_unchanged();
                let (revision, slice) = {
                    let view = self.state.read();
                    (
                        view.revision,
                        view.slice(&self.hello.service, &self.hello.upstreams),
                    )
                };
                let update = delta(&held, &slice, revision);
                let was_first = std::mem::take(&mut first);
                if update.upserts.is_empty() && update.removes.is_empty() && !was_first {
                    // The proxy holds exactly its slice: current, whatever it refused before
                    // (e.g. the refused resource was deleted again).
                    self.sessions.update(&id, self.generation, |s| {
                        s.current_at = s.current_at.max(revision);
                        s.nack = None;
                    });
                } else {
                    let before = std::mem::replace(
                        &mut held,
                        slice.iter().map(|(k, r)| (k.clone(), r.version)).collect(),
                    );
                    in_flight = Some((revision, before));
                    self.sessions.update(&id, self.generation, |s| {
                        s.pending = Some(revision);
                        s.updates += 1;
                    });
                    self.sessions.metrics.sent();
                    sent_at = std::time::Instant::now();
                    if tx.send(Ok(update)).await.is_err() {
                        break;
                    }
                }
            }
            tokio::select! {
                changed = tick.changed() => {
                    if changed.is_err() { break }
                    if let Some(status) = self.revoked() {
                        tracing::info!(proxy = %id, "ending the stream: {}", status.message());
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                    hold = false;
                }
                message = inbound.message() => match message {
                    Ok(Some(ProxyMessage { message: Some(m) })) => match m {
                        proxy_message::Message::Ack(ack) => {
                            let Some((version, before)) = in_flight.take_if(|(v, _)| *v == ack.version) else {
                                tracing::debug!(proxy = %id, version = ack.version, "ack for no update in flight");
                                continue;
                            };
                            self.sessions.metrics.answered(ack.error.is_empty(), sent_at.elapsed().as_secs_f64());
                            if ack.error.is_empty() {
                                self.sessions.update(&id, self.generation, |s| {
                                    s.pending = None;
                                    s.nack = None;
                                    s.current_at = s.current_at.max(version);
                                });
                            } else {
                                tracing::warn!(proxy = %id, version, error = %ack.error, "proxy refused an update");
                                held = before;
                                hold = true;
                                let error: String = ack.error.chars().take(4096).collect();
                                self.sessions.update(&id, self.generation, |s| {
                                    s.pending = None;
                                    s.nack = Some(Nack { version, error });
                                });
                            }
                        }
                        proxy_message::Message::Hello(h) => {
                            let same = h.proxy_id == self.hello.proxy_id && h.service == self.hello.service;
                            let checked = if same {
                                check_hello(&h).and_then(|()| permitted(&self.caller, &h))
                            } else {
                                Err(Status::invalid_argument("a later hello may change the upstreams only, not the proxy id or service"))
                            };
                            if let Err(status) = checked {
                                let _ = tx.send(Err(status)).await;
                                break;
                            }
                            // A subscription that only adds services (a transparent sidecar
                            // found a new destination; its first connection is waiting) is
                            // served at once. Anything else is served at the proxy's next
                            // resync turn: a Hello → NACK → Hello loop, or adding and removing
                            // by turns, costs at most a slice or two per interval.
                            let adds = h.upstreams.iter().any(|u| !self.hello.upstreams.contains(u))
                                && self.hello.upstreams.iter().all(|u| h.upstreams.contains(u));
                            self.sessions.update(&id, self.generation, |s| s.upstreams = h.upstreams.clone());
                            self.hello.upstreams = h.upstreams;
                            resync_at = (!adds).then(|| self.sessions.resync_turn(&id));
                            hold = false;
                        }
                    },
                    Ok(Some(ProxyMessage { message: None })) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
        tracing::info!(proxy = %id, "proxy disconnected");
        let mut map = self.sessions.lock();
        if map
            .by_id
            .get(&id)
            .is_some_and(|s| s.generation == self.generation)
        {
            map.remove(&id);
        }
    }
}

fn delta(
    held: &HashMap<String, u64>,
    slice: &BTreeMap<String, crate::state::Rendered>,
    version: Revision,
) -> Update {
    let upserts = slice
        .iter()
        .filter(|(k, r)| held.get(*k) != Some(&r.version))
        .map(|(k, r)| Resource {
            key: k.clone(),
            version: r.version,
            json: r.json.to_string(),
        })
        .collect();
    let mut removes: Vec<String> = held
        .keys()
        .filter(|k| !slice.contains_key(*k))
        .cloned()
        .collect();
    removes.sort();
    Update {
        version,
        upserts,
        removes,
    }
}

#[cfg(test)]
mod connected_tests {
    use super::*;

    fn status(id: &str, token: Option<&str>) -> ProxyStatus {
        ProxyStatus {
            proxy_id: id.into(),
            service: "s".into(),
            upstreams: vec![],
            build: String::new(),
            connected_at: 0,
            current_at: 0,
            pending: None,
            nack: None,
            updates: 0,
            generation: 0,
            token: token.map(str::to_string),
        }
    }

    /// The per-token counts follow every insert, replacement and removal, and a proxy's
    /// own stream does not count against it when it reconnects.
    #[test]
    fn streams_per_token_are_counted_as_sessions_come_and_go() {
        let mut c = Connected::default();
        c.insert(status("a", Some("t")));
        c.insert(status("b", Some("t")));
        c.insert(status("c", Some("u")));
        c.insert(status("d", None));
        assert_eq!(c.streams_of("t", "new"), 2);
        assert_eq!(c.streams_of("t", "a"), 1, "a's own stream is not counted");
        assert_eq!(c.streams_of("u", "new"), 1);
        // a reconnects with another token: moves from t to u.
        c.insert(status("a", Some("u")));
        assert_eq!((c.streams_of("t", "x"), c.streams_of("u", "x")), (1, 2));
        c.remove("b");
        c.remove("b");
        c.remove("d");
        assert_eq!(c.streams_of("t", "x"), 0);
        assert!(!c.per_token.contains_key("t"), "no count left at zero");
        c.remove("a");
        c.remove("c");
        assert!(c.per_token.is_empty() && c.by_id.is_empty());
    }
}
