//! What every handler is given: the server's store, view, sessions, CA and settings.

use std::sync::Arc;

use axum::response::Response;

use crate::{discovery::Sessions, error::ApiError, state::State, store::Store};

/// Everything a handler needs.
#[derive(Clone)]
pub struct Api {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The in-memory view.
    pub state: Arc<State>,
    /// Connected proxies.
    pub sessions: Arc<Sessions>,
    /// Their live streams (stats and taps).
    pub live: Arc<crate::live::Live>,
    /// This server's API address as its peers reach it.
    pub advertise: String,
    /// The mesh CA.
    pub ca: Arc<crate::ca::Ca>,
    /// Who a request's token belongs to (ACLs on or off).
    pub auth: Arc<crate::authn::Authenticator>,
    /// `/metrics` answers without a token (`weft server --metrics public`).
    pub metrics_public: bool,
    /// Registered instances one service may have (`--max-instances-per-service`).
    pub instances_per_service: usize,
    /// Whether the API is served over TLS (peers are reached the same way).
    pub tls: bool,
    /// The replicas' election.
    pub leadership: crate::leader::Leadership,
    /// Topologies recently built for the UI, shared by its watchers.
    pub topology: Arc<super::TopologyCache>,
    /// The sidecar's intention code, for `/v1/intentions/check` (None: answered 501).
    pub judge: Option<Arc<dyn crate::judge::Judge>>,
}

/// What a handler answers.
pub(crate) type ApiResult = Result<Response, ApiError>;

impl Api {
    /// The other replicas (announced in the store) and how to reach them: each knows only
    /// the proxies connected to it, so a view of every proxy asks them too.
    pub(crate) async fn peer_replicas(
        &self,
    ) -> Result<(Vec<String>, crate::peers::PeerTls), ApiError> {
        let peers = crate::peers::list(&*self.store)
            .await?
            .into_iter()
            .filter(|a| *a != self.advertise)
            .collect();
        let tls = match self.tls {
            false => None,
            true => Some(self.ca.peer_tls().await?),
        };
        Ok((peers, tls))
    }
}
