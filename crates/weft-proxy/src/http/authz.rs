//! Intentions enforced by a sidecar for calls to its own service, with no call to the
//! control plane: the intentions that can concern the service are compiled with the
//! snapshot, and [`weft_model::decide`] (shared with `weft intention check`) picks the
//! verdict.
//!
//! HTTP is judged per request, against the snapshot current when it arrives (a changed
//! intention applies to connections already open), and a denied request is answered 403
//! `denied-by-intention`; an L4 intention (`action`) decides every request of its caller
//! alike. An opaque TCP connection (an app run with `--app-protocol tcp`) is judged when
//! it is accepted and again while it stays open: denied, it is closed. L7 permissions
//! say nothing about a TCP connection (there is no request to match), so an intention
//! made only of permissions leaves it to the other intentions or the mesh default.

use std::sync::Arc;

use http::{HeaderMap, Method, Request};
use weft_model::{
    decide, Action, Config, HttpRouteMatch, IntentionSpec, Reason, Resource, Verdict,
};

use super::context::{Client, Context};
use super::router::{MatchError, Matcher};
use crate::error::ProxyError;

/// How a sidecar's inbound listener admits callers.
#[derive(Debug, Clone)]
pub struct MeshListener {
    /// Whether plaintext is accepted too.
    pub mode: weft_model::MtlsMode,
    /// The intentions for calls to the sidecar's service.
    pub authz: Arc<Authorizer>,
}

/// The compiled intentions for calls to one service.
#[derive(Debug)]
pub struct Authorizer {
    destination: String,
    default: Action,
    intentions: Vec<Resource<IntentionSpec>>,
    /// `[intention][permission]`: alternatives (one per listed method), any of which
    /// matches.
    matchers: Vec<Vec<Vec<Matcher>>>,
}

impl Authorizer {
    /// The intentions of `config` that can apply to calls to `destination`.
    pub fn build(config: &Config, destination: &str) -> Result<Authorizer, MatchError> {
        let intentions: Vec<_> = config
            .intentions
            .iter()
            .filter(|i| i.spec.destination == "*" || i.spec.destination == destination)
            .cloned()
            .collect();
        let matchers = intentions
            .iter()
            .map(|i| {
                i.spec
                    .permissions
                    .iter()
                    .map(|p| {
                        let methods: Vec<Option<String>> = if p.http.methods.is_empty() {
                            vec![None]
                        } else {
                            p.http.methods.iter().cloned().map(Some).collect()
                        };
                        methods
                            .into_iter()
                            .map(|method| {
                                Matcher::compile(&HttpRouteMatch {
                                    path: p.http.path.clone(),
                                    headers: p.http.headers.clone(),
                                    query_params: Vec::new(),
                                    method,
                                })
                            })
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Authorizer {
            destination: destination.to_string(),
            default: config.mesh().default_action,
            intentions,
            matchers,
        })
    }

    /// The verdict for an opaque TCP connection from `source`.
    pub fn connection(&self, source: Option<&str>) -> Verdict<'_> {
        decide(
            &self.intentions,
            self.default,
            source,
            &self.destination,
            Some(&|_, _| false),
        )
        .unwrap_or(Verdict {
            action: Action::Deny,
            reason: Reason::Undecided,
        })
    }

    /// The verdict for one request from `source`.
    pub fn request(
        &self,
        source: Option<&str>,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Verdict<'_> {
        let matches = |i: usize, p: usize| {
            self.matchers[i][p]
                .iter()
                .any(|m| m.matches(method, path, query, headers).is_some())
        };
        decide(
            &self.intentions,
            self.default,
            source,
            &self.destination,
            Some(&matches),
        )
        .unwrap_or(Verdict {
            // `decide` only leaves a verdict open when given no request.
            action: Action::Deny,
            reason: Reason::Undecided,
        })
    }
}

/// Judges one request on a sidecar's inbound listener against the intentions of the
/// snapshot it is served with (so a change applies to open connections too), by its
/// normalised `path` (the one that is forwarded). Allowed, it gives the reason (put into
/// words only by a caller that records it).
pub(crate) fn judge<'a, B>(
    ctx: &Context,
    authz: &'a Authorizer,
    client: &Client,
    req: &Request<B>,
    path: &str,
) -> Result<Reason<'a>, ProxyError> {
    let source = client.peer_service.as_deref();
    let verdict = authz.request(source, req.method(), path, req.uri().query(), req.headers());
    if verdict.action == weft_model::Action::Allow {
        return Ok(verdict.reason);
    }
    tracing::info!(
        listener = %ctx.name,
        client = %client.addr,
        source = %source.unwrap_or("(no identity)"),
        method = %req.method(),
        path = %path,
        reason = %verdict.reason,
        "request denied by intention"
    );
    Err(ProxyError::DeniedByIntention)
}
