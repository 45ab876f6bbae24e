//! Live views, server side: the proxies' live streams, and the questions the API asks
//! them (DESIGN §4 "Live views").
//!
//! Each proxy opens a `Live` stream beside its discovery stream ([`Live::serve`]). The
//! API asks every proxy held here for its windows at once and waits at most
//! [`STATS_DEADLINE`] for the answers ([`Live::stats`]); a proxy that does not answer in
//! time is listed as such, never waited for. A tap ([`Live::tap`]) is sent to every
//! proxy of its service held now and to each that connects while the tap is open (a
//! restarted sidecar is tapped again when it comes back); its events reach the API
//! through a bounded queue, and what does not fit is dropped and counted, so a slow tap
//! client never holds a proxy's stream.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use weft_api::discovery::{
    live_ask::Ask, live_report::Report, LiveAsk, LiveReport, StatsAsk, StatsReport, TapAsk,
    TapEvent,
};

use crate::acl::{Access, Caller, Need};

/// The source proxies name for a caller without a verified identity.
pub const UNKNOWN_SOURCE: &str = "unknown";
/// How long the API waits for the proxies' windows.
pub const STATS_DEADLINE: Duration = Duration::from_secs(2);
/// Asks queued per proxy stream before new ones are refused (that proxy is then listed
/// as not answering).
const ASKS_QUEUE: usize = 64;
/// Events queued per tap client before new ones are dropped (and counted).
pub const TAP_QUEUE: usize = 1024;
/// Taps open at once on one server.
pub const MAX_TAPS: usize = 64;

/// A proxy's live stream.
struct Held {
    service: String,
    generation: u64,
    asks: mpsc::Sender<LiveAsk>,
    /// It answers every tap ask (`TapStarted`); an older proxy does not, and is said to
    /// tap once the ask is sent.
    acknowledges_taps: bool,
}

/// An open tap: what it asks and where its events go.
struct OpenTap {
    service: String,
    ask: TapAsk,
    events: mpsc::Sender<TapMessage>,
    /// Events dropped here because the client's queue was full.
    dropped: Arc<AtomicU64>,
}

/// What a tap client receives.
#[derive(Debug)]
pub enum TapMessage {
    /// One event, from the proxy `proxy_id`.
    Event {
        /// The proxy that saw it.
        proxy_id: String,
        /// The event.
        event: Box<TapEvent>,
    },
    /// A proxy of the service taps (on opening the tap, or when it started or
    /// restarted while the tap is open): every matching request that ends from now on
    /// is reported.
    Joined {
        /// The proxy.
        proxy_id: String,
    },
    /// A proxy of the service refused the tap (it serves the most taps it can).
    Refused {
        /// The proxy.
        proxy_id: String,
        /// Its reason.
        reason: String,
    },
    /// A proxy following the tap went away.
    Left {
        /// The proxy.
        proxy_id: String,
    },
}

/// One proxy's answer to a stats ask.
#[derive(Debug, Clone)]
pub struct ProxyStats {
    /// The proxy.
    pub proxy_id: String,
    /// Its service.
    pub service: String,
    /// Its SPIFFE ID.
    pub identity: String,
    /// Its windows.
    pub report: StatsReport,
}

/// What a fan-out gathered.
#[derive(Debug, Default)]
pub struct Gathered {
    /// The answers.
    pub answered: Vec<ProxyStats>,
    /// Proxies that did not answer within [`STATS_DEADLINE`].
    pub unanswered: Vec<String>,
}

/// The live streams held by this server.
#[derive(Default)]
pub struct Live {
    held: Mutex<HashMap<String, Held>>,
    /// Stats asks in flight: ask id → where the answers go.
    asking: Mutex<HashMap<u64, mpsc::Sender<ProxyStats>>>,
    taps: Mutex<HashMap<u64, OpenTap>>,
    next_id: AtomicU64,
    generation: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The asks a server sends a proxy.
pub type AskStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<LiveAsk, Status>> + Send + 'static>>;

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("this server has {MAX_TAPS} taps open, the most it serves at once")]
pub struct TooManyTaps;

impl Live {
    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Serves one proxy's live stream: checks its hello against `caller` (the stream's
    /// token must grant `service:SERVICE:write`), then relays asks and answers.
    pub async fn serve(
        self: &Arc<Self>,
        state: Arc<crate::state::State>,
        caller: Caller,
        mut inbound: Streaming<LiveReport>,
    ) -> Result<AskStream, Status> {
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let hello = match first.and_then(|m| m.report) {
            Some(Report::Hello(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a live hello",
                ))
            }
        };
        if hello.proxy_id.is_empty() || hello.proxy_id.len() > 256 {
            return Err(Status::invalid_argument(
                "hello: proxy_id must be 1-256 bytes",
            ));
        }
        if !crate::config::valid_name(&hello.service) {
            return Err(Status::invalid_argument(format!(
                "hello: service `{}` is not a valid name",
                hello.service
            )));
        }
        if let Err(e) = caller.require(&Need::Service(hello.service.clone(), Access::Write)) {
            return Err(Status::permission_denied(e.message));
        }
        let (tx, rx) = mpsc::channel(ASKS_QUEUE);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let proxy_id = hello.proxy_id.clone();
        // Taps open on this service follow the new stream at once.
        let open: Vec<(u64, TapAsk, mpsc::Sender<TapMessage>)> = lock(&self.taps)
            .iter()
            .filter(|(_, t)| t.service == hello.service)
            .map(|(id, t)| (*id, t.ask.clone(), t.events.clone()))
            .collect();
        lock(&self.held).insert(
            proxy_id.clone(),
            Held {
                service: hello.service.clone(),
                generation,
                asks: tx.clone(),
                acknowledges_taps: hello.acknowledges_taps,
            },
        );
        for (id, ask, events) in open {
            ask_tap(&tx, hello.acknowledges_taps, id, ask, &events, &proxy_id);
        }
        tracing::debug!(proxy = %proxy_id, "live stream open");
        let live = self.clone();
        tokio::spawn(async move {
            // The stream ends when its token is revoked or no longer grants the service,
            // as the discovery stream does.
            let revoked = revocation(&state, &caller, &hello.service);
            tokio::select! {
                () = live.relay(&proxy_id, &hello.service, &hello.identity, inbound, &tx) => {}
                status = revoked => {
                    // Dropping the stream's last sender ends it (below, once unlisted).
                    tracing::info!(proxy = %proxy_id, "ending the live stream: {}", status.message());
                }
            }
            let mut held = lock(&live.held);
            if held
                .get(&proxy_id)
                .is_some_and(|h| h.generation == generation)
            {
                held.remove(&proxy_id);
            }
            drop(held);
            for t in lock(&live.taps)
                .values()
                .filter(|t| t.service == hello.service)
            {
                let _ = t.events.try_send(TapMessage::Left {
                    proxy_id: proxy_id.clone(),
                });
            }
            tracing::debug!(proxy = %proxy_id, "live stream closed");
        });
        Ok(Box::pin(tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            Ok,
        )))
    }

    /// Hands each report of one stream to whoever asked, until the stream ends or the
    /// server stops asking.
    async fn relay(
        &self,
        proxy_id: &str,
        service: &str,
        identity: &str,
        mut inbound: Streaming<LiveReport>,
        asks: &mpsc::Sender<LiveAsk>,
    ) {
        loop {
            let report = tokio::select! {
                r = inbound.message() => match r {
                    Ok(Some(r)) => r,
                    _ => return,
                },
                () = asks.closed() => return,
            };
            match report.report {
                Some(Report::Stats(stats)) => {
                    let to = lock(&self.asking).get(&report.id).cloned();
                    if let Some(to) = to {
                        let _ = to.try_send(ProxyStats {
                            proxy_id: proxy_id.to_string(),
                            service: service.to_string(),
                            identity: identity.to_string(),
                            report: stats,
                        });
                    }
                }
                Some(Report::TapStarted(started)) => {
                    if let Some(t) = lock(&self.taps).get(&report.id) {
                        let proxy_id = proxy_id.to_string();
                        let _ = t.events.try_send(match started.refused {
                            r if r.is_empty() => TapMessage::Joined { proxy_id },
                            reason => TapMessage::Refused { proxy_id, reason },
                        });
                    }
                }
                Some(Report::Tap(event)) => {
                    let taps = lock(&self.taps);
                    match taps.get(&report.id) {
                        Some(t) => {
                            let message = TapMessage::Event {
                                proxy_id: proxy_id.to_string(),
                                event: Box::new(event),
                            };
                            if t.events.try_send(message).is_err() {
                                t.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        None => {
                            // A tap that ended here: tell the proxy to stop it.
                            let _ = asks.try_send(LiveAsk {
                                id: 0,
                                ask: Some(Ask::StopTap(report.id)),
                            });
                        }
                    }
                }
                Some(Report::Hello(_)) | None => {}
            }
        }
    }

    /// Asks every proxy held (of `service` only, when given) for its windows over the
    /// last `seconds`, and gathers the answers that arrive within [`STATS_DEADLINE`].
    pub async fn stats(&self, seconds: u32, service: Option<&str>) -> Gathered {
        let id = self.id();
        let targets: Vec<(String, mpsc::Sender<LiveAsk>)> = lock(&self.held)
            .iter()
            .filter(|(_, h)| service.is_none_or(|s| s == h.service))
            .map(|(p, h)| (p.clone(), h.asks.clone()))
            .collect();
        let (tx, mut rx) = mpsc::channel(targets.len().max(1));
        lock(&self.asking).insert(id, tx);
        let mut waiting: std::collections::BTreeSet<String> = Default::default();
        for (proxy, asks) in targets {
            let ask = LiveAsk {
                id,
                ask: Some(Ask::Stats(StatsAsk { seconds })),
            };
            if asks.try_send(ask).is_ok() {
                waiting.insert(proxy);
            }
        }
        let mut out = Gathered::default();
        let deadline = tokio::time::sleep(STATS_DEADLINE);
        tokio::pin!(deadline);
        while !waiting.is_empty() {
            tokio::select! {
                Some(a) = rx.recv() => {
                    if waiting.remove(&a.proxy_id) {
                        out.answered.push(a);
                    }
                }
                () = &mut deadline => break,
            }
        }
        lock(&self.asking).remove(&id);
        out.unanswered = waiting.into_iter().collect();
        out.answered.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        out
    }

    /// Opens a tap on every proxy of `service`, now and as they connect, until the
    /// returned [`TapHandle`] is dropped.
    pub fn tap(
        self: &Arc<Self>,
        service: &str,
        ask: TapAsk,
    ) -> Result<(TapHandle, mpsc::Receiver<TapMessage>), TooManyTaps> {
        let id = self.id();
        let (events, rx) = mpsc::channel(TAP_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        {
            let mut taps = lock(&self.taps);
            if taps.len() >= MAX_TAPS {
                return Err(TooManyTaps);
            }
            taps.insert(
                id,
                OpenTap {
                    service: service.to_string(),
                    ask: ask.clone(),
                    events: events.clone(),
                    dropped: dropped.clone(),
                },
            );
        }
        for (proxy_id, h) in lock(&self.held)
            .iter()
            .filter(|(_, h)| h.service == service)
        {
            ask_tap(
                &h.asks,
                h.acknowledges_taps,
                id,
                ask.clone(),
                &events,
                proxy_id,
            );
        }
        Ok((
            TapHandle {
                live: self.clone(),
                id,
                service: service.to_string(),
                dropped,
            },
            rx,
        ))
    }
}

/// Sends tap `id`'s ask to a proxy's stream (`asks`). The tap's client hears that the
/// proxy taps when the proxy says so (`TapStarted`, relayed), or now for a proxy that
/// does not answer tap asks; that it was refused when the stream's queue is full.
fn ask_tap(
    asks: &mpsc::Sender<LiveAsk>,
    acknowledges_taps: bool,
    id: u64,
    ask: TapAsk,
    events: &mpsc::Sender<TapMessage>,
    proxy_id: &str,
) {
    let sent = asks.try_send(LiveAsk {
        id,
        ask: Some(Ask::Tap(ask)),
    });
    let told = match sent {
        Ok(()) if acknowledges_taps => return, // told when the proxy answers
        Ok(()) => TapMessage::Joined {
            proxy_id: proxy_id.to_string(),
        },
        Err(_) => TapMessage::Refused {
            proxy_id: proxy_id.to_string(),
            reason: format!("its live stream has {ASKS_QUEUE} asks waiting; try again"),
        },
    };
    let _ = events.try_send(told);
}

/// Resolves when `caller`'s token is revoked or stops granting `service:SERVICE:write`
/// (never, with ACLs off): checked at every change of the server's view.
async fn revocation(state: &crate::state::State, caller: &Caller, service: &str) -> Status {
    let Caller::Token(token) = caller else {
        return std::future::pending().await;
    };
    let mut tick = state.subscribe();
    loop {
        if tick.changed().await.is_err() {
            return std::future::pending().await;
        }
        let need = Need::Service(service.to_string(), Access::Write);
        match state.read().token(&token.secret_hash) {
            None => return Status::unauthenticated("ACL token revoked"),
            Some(t) if !Caller::Token(t.clone()).allows(&need) => {
                return Status::permission_denied(format!("the token no longer grants {need}"))
            }
            Some(_) => {}
        }
    }
}

/// An open tap; dropping it stops the tap on every proxy.
pub struct TapHandle {
    live: Arc<Live>,
    id: u64,
    service: String,
    dropped: Arc<AtomicU64>,
}

impl TapHandle {
    /// Events this server dropped because the client did not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for TapHandle {
    fn drop(&mut self) {
        lock(&self.live.taps).remove(&self.id);
        for h in lock(&self.live.held)
            .values()
            .filter(|h| h.service == self.service)
        {
            let _ = h.asks.try_send(LiveAsk {
                id: 0,
                ask: Some(Ask::StopTap(self.id)),
            });
        }
    }
}
