//! The discovery stream, proxy side: connect to one of the control-plane servers, say
//! who we are and what we hold, then apply each update atomically and answer ACK (applied)
//! or NACK (refused, with the reason; the last good configuration keeps serving).
//!
//! Static stability: when the stream breaks, nothing changes in the running proxy; the
//! client retries the servers in turn with jittered exponential backoff, and on
//! reconnecting lists the versions it holds, so the server sends only the difference.
//!
//! An edge gateway's spec changes when its file does: the new spec is built with the
//! resources held and applied all or nothing (a refused one leaves the running spec in
//! place), and when the mesh services it calls changed, the stream is reopened at once
//! to subscribe to the new set.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use tokio::sync::{mpsc, watch};
use weft_api::discovery::{
    discovery_client::DiscoveryClient, proxy_message::Message, Ack, Hello, ProxyMessage,
};

use super::{sidecar_config, SidecarSpec};
use crate::proxy::RunningProxy;

/// Backoff bounds between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Largest update accepted from the server.
const MAX_UPDATE_BYTES: usize = 64 * 1024 * 1024;

/// Who this proxy is, for the server.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Unique proxy id.
    pub proxy_id: String,
    /// The build, shown by `weft status`.
    pub build: String,
}

/// What the proxy runs: resource key → (version, JSON).
type Held = BTreeMap<String, (u64, String)>;

/// Follows the control plane for ever, applying updates to `proxy`. `specs` holds the
/// sidecar's spec (it changes only for an edge gateway whose file changed); `synced`
/// receives the version of every applied update.
pub async fn follow(
    servers: &[String],
    who: &Identity,
    mut specs: watch::Receiver<SidecarSpec>,
    proxy: &RunningProxy,
    synced: &watch::Sender<Option<u64>>,
) {
    let mut spec = specs.borrow_and_update().clone();
    let mut held = Held::new();
    let mut failures: u32 = 0;
    let mut next_server = 0;
    loop {
        let server = &servers[next_server % servers.len()];
        next_server += 1;
        let outcome = session(
            server,
            who,
            (&mut spec, &mut specs),
            proxy,
            &mut held,
            synced,
        )
        .await;
        proxy.discovery_state(false, None);
        match outcome {
            // Resubscribing: at once, to the same server.
            Ok(()) => {
                next_server -= 1;
                failures = 0;
                continue;
            }
            Err(Failure { message, applied }) => {
                if applied {
                    failures = 0;
                }
                tracing::warn!(%server, error = %message, "discovery stream lost; keeping the last configuration");
            }
        }
        failures = failures.saturating_add(1);
        let backoff = tokio::time::sleep(backoff(failures));
        tokio::pin!(backoff);
        // A new spec is applied while the control plane is away, too.
        loop {
            tokio::select! {
                _ = &mut backoff => break,
                Ok(()) = specs.changed() => {
                    let next = specs.borrow_and_update().clone();
                    adopt(next, &mut spec, &held, proxy);
                }
            }
        }
    }
}

/// Builds the configuration from `spec` and the resources held, and applies it; every
/// refusal is recorded (a failed load, the reason in `/config`).
fn build_and_apply(spec: &SidecarSpec, held: &Held, proxy: &RunningProxy) -> Result<(), String> {
    let flat: BTreeMap<String, String> = held
        .iter()
        .map(|(k, (_, j))| (k.clone(), j.clone()))
        .collect();
    match sidecar_config(spec, &flat) {
        // `apply` records its own refusals.
        Ok(config) => proxy.apply(config).map_err(|e| e.to_string()),
        Err(e) => {
            proxy.reject(&e);
            Err(e)
        }
    }
}

/// Applies a new spec (an edge gateway's file changed, or a transparent sidecar found a
/// new destination) with the resources held; refused whole, the running spec stays.
/// Returns whether the mesh services to subscribe to changed.
fn adopt(next: SidecarSpec, spec: &mut SidecarSpec, held: &Held, proxy: &RunningProxy) -> bool {
    match build_and_apply(&next, held, proxy) {
        Ok(()) => {
            let names = |s: &SidecarSpec| -> Vec<String> {
                s.upstreams.iter().map(|(n, _)| n.clone()).collect()
            };
            let resubscribe = names(&next) != names(spec);
            if next.gateway.is_empty() {
                tracing::info!(upstreams = ?names(&next), "subscribing to a new upstream");
            } else {
                tracing::info!(upstreams = ?names(&next), resubscribe, "gateway file applied");
            }
            *spec = next;
            resubscribe
        }
        Err(e) => {
            if next.gateway.is_empty() {
                tracing::error!(error = %e, "a new upstream refused, the previous configuration keeps serving");
            } else {
                tracing::error!(error = %e, "gateway file refused, the previous version keeps serving");
            }
            false
        }
    }
}

/// A gRPC channel to `server` (TLS verified by the control plane's CA when `https://`).
pub(crate) async fn connect(server: &str) -> Result<tonic::transport::Channel, String> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(server.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    if server.starts_with("https://") {
        let pem = super::control_api::ca_pem(server).map_err(|e| e.to_string())?;
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem));
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    endpoint.connect().await.map_err(|e| e.to_string())
}

/// The next reconnection delay after `failures` failures in a row: exponential, with
/// full jitter over the upper half so reconnect storms spread out.
pub(crate) fn backoff(failures: u32) -> Duration {
    let ceiling = BACKOFF_MIN
        .saturating_mul(1 << failures.min(6))
        .min(BACKOFF_MAX);
    ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
}

struct Failure {
    message: String,
    /// Whether at least one update was received before the failure.
    applied: bool,
}

/// The `Hello` that opens a stream (`known`: what the proxy holds) or, later on it,
/// changes the upstreams (`known` empty).
fn hello(who: &Identity, spec: &SidecarSpec, known: HashMap<String, u64>) -> ProxyMessage {
    ProxyMessage {
        message: Some(Message::Hello(Hello {
            proxy_id: who.proxy_id.clone(),
            service: spec.service.clone(),
            upstreams: spec.upstreams.iter().map(|(n, _)| n.clone()).collect(),
            known,
            build: who.build.clone(),
        })),
    }
}

/// One stream, until it fails (`Err`) or must be reopened to subscribe anew (`Ok`).
async fn session(
    server: &str,
    who: &Identity,
    (spec, specs): (&mut SidecarSpec, &mut watch::Receiver<SidecarSpec>),
    proxy: &RunningProxy,
    held: &mut Held,
    synced: &watch::Sender<Option<u64>>,
) -> Result<(), Failure> {
    let mut applied = false;
    let fail = |applied: bool| {
        move |e: &dyn std::fmt::Display| Failure {
            message: e.to_string(),
            applied,
        }
    };
    let channel = connect(server).await.map_err(|e| fail(false)(&e))?;
    let mut client = DiscoveryClient::new(channel).max_decoding_message_size(MAX_UPDATE_BYTES);
    let (tx, rx) = mpsc::channel(4);
    let known = held.iter().map(|(k, (v, _))| (k.clone(), *v)).collect();
    let _ = tx.send(hello(who, spec, known)).await;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(t) = super::control_api::token().and_then(|t| t.parse().ok()) {
        request.metadata_mut().insert("x-weft-token", t);
    }
    let mut updates = client
        .stream(request)
        .await
        .map_err(|e| fail(false)(&e))?
        .into_inner();
    tracing::info!(%server, "discovery stream open");
    proxy.discovery_state(true, None);
    loop {
        let message = tokio::select! {
            m = updates.message() => m,
            Ok(()) = specs.changed() => {
                let next = specs.borrow_and_update().clone();
                if adopt(next, spec, held, proxy) {
                    // Subscribe anew on this stream: a later Hello changes the upstreams
                    // only, and the server sends the difference.
                    if tx.send(hello(who, spec, Default::default())).await.is_err() {
                        return Err(fail(applied)(&"stream closed"));
                    }
                }
                continue;
            }
        };
        let update = match message {
            Ok(Some(u)) => u,
            Ok(None) => return Err(fail(applied)(&"server closed the stream")),
            Err(e) => return Err(fail(applied)(&e)),
        };
        applied = true;
        let mut next = held.clone();
        for key in &update.removes {
            next.remove(key);
        }
        for r in update.upserts {
            next.insert(r.key, (r.version, r.json));
        }
        // A new trust bundle (root rotation) is checked before the configuration and
        // installed after it, so a refused update changes neither.
        let bundle = match next.get(super::identity::TRUST_BUNDLE) {
            Some((_, json))
                if held.get(super::identity::TRUST_BUNDLE).map(|(_, j)| j) != Some(json) =>
            {
                Some(super::identity::bundle_of(json))
            }
            _ => None,
        };
        let result = match &bundle {
            Some(Err(e)) => {
                proxy.reject(e);
                Err(e.clone())
            }
            _ => build_and_apply(spec, &next, proxy),
        };
        if let (Ok(()), Some(Ok(bundle)), Some(mesh)) = (&result, bundle, proxy.mesh()) {
            match mesh.update(None, Some(&bundle.roots)) {
                Ok(()) => {
                    mesh.set_active_root(&bundle.active);
                    tracing::info!(roots = bundle.roots.len(), "trust bundle updated");
                    super::control_api::trust_bundle_roots(bundle.pem);
                }
                Err(e) => tracing::warn!(error = %e, "trust bundle refused"),
            }
        }
        let error = match result {
            Ok(()) => {
                *held = next;
                synced.send_replace(Some(update.version));
                proxy.discovery_state(true, Some(update.version));
                tracing::info!(
                    version = update.version,
                    resources = held.len(),
                    "applied update"
                );
                String::new()
            }
            Err(e) => {
                tracing::warn!(version = update.version, error = %e, "refused update; keeping the last good configuration");
                e
            }
        };
        let ack = ProxyMessage {
            message: Some(Message::Ack(Ack {
                version: update.version,
                error,
            })),
        };
        if tx.send(ack).await.is_err() {
            return Err(fail(applied)(&"stream closed"));
        }
    }
}
