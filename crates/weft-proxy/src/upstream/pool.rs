//! An endpoint's connections: stacks of idle HTTP/1.1 connections (most recently used
//! first, so the warmest is reused and the coldest ages out) — hyper's, for requests with
//! bodies or upgrades, and weft's own ([`super::h1`]) for the rest, each stack holding up
//! to `maxIdlePerEndpoint` — and, for HTTP/2 services, one shared multiplexed connection. An HTTP/1.1 connection comes back to the pool only when
//! its response body has been read to the end ([`Lease::release`]); a response abandoned
//! half-way closes its connection, so a half-read stream is never reused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;

use super::body::{RequestBody, Verdict};
use super::{h1, h2};

/// The connections of one endpoint.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    /// Idle connections of weft's own client.
    pub(super) own: Arc<h1::Idle>,
    pub(super) h2: tokio::sync::Mutex<Option<Shared>>,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
    /// Set when the connection's writes found the peer gone ([`super::keep_reading::KeepReading`]).
    dead_writes: Arc<AtomicBool>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) conn: h2::Conn,
    pub(super) last_used: Instant,
}

impl Pool {
    pub(super) fn take_idle(
        &self,
        idle_timeout: Duration,
    ) -> Option<(http1::SendRequest<RequestBody>, Arc<AtomicBool>)> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed() && c.since.elapsed() < idle_timeout {
                return Some((c.sender, c.dead_writes));
            }
        }
        None
    }

    pub(super) fn put_idle(
        &self,
        sender: http1::SendRequest<RequestBody>,
        dead_writes: Arc<AtomicBool>,
        max_idle: usize,
    ) {
        if sender.is_closed() || dead_writes.load(Ordering::Relaxed) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
                dead_writes,
            });
        }
    }

    /// Closes connections idle for longer than `idle_timeout` (dropping the sender ends the
    /// connection task, which closes the socket).
    pub(super) fn evict(&self, idle_timeout: Duration) {
        self.own.evict(idle_timeout);
        let stale: Vec<Idle> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let (keep, stale) = idle
                .drain(..)
                .partition(|c| !c.sender.is_closed() && c.since.elapsed() < idle_timeout);
            *idle = keep;
            stale
        };
        drop(stale);
        if let Ok(mut h2) = self.h2.try_lock() {
            if h2
                .as_ref()
                .is_some_and(|s| s.conn.is_closed() || s.last_used.elapsed() >= idle_timeout)
            {
                *h2 = None;
            }
        }
    }
}

/// A checked-out HTTP/1.1 connection, returned to its pool by [`Lease::release`] once the
/// response has been read to the end; dropped otherwise, which closes it.
#[derive(Debug)]
pub struct Lease {
    pub(super) sender: http1::SendRequest<RequestBody>,
    pub(super) pool: Arc<Pool>,
    pub(super) max_idle: usize,
    pub(super) dead_writes: Arc<AtomicBool>,
    /// The request's body, which may still be going out.
    pub(super) request: Verdict,
}

impl Lease {
    /// The answer has been read to its end. A request body still going out is not wanted
    /// any more ([`Verdict::answered`]): it ends, and its connection with it — never back
    /// in the pool, where the next request would wait for a body that may never finish
    /// (the client stopped sending, or the upstream stopped reading). Otherwise the
    /// connection goes back for reuse (unless its writes found the peer gone).
    pub fn release(self) {
        if self.request.answered() {
            return;
        }
        self.pool
            .put_idle(self.sender, self.dead_writes, self.max_idle);
    }
}
