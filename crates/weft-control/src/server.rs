//! `weft server`: the store, the view that follows it, the HTTP API and the discovery
//! stream, served on one port (gRPC and JSON share it; HTTP/1.1 and h2c).

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use weft_api::discovery::discovery_server::DiscoveryServer as GrpcDiscovery;

use crate::{
    api::{self, Api},
    discovery::{DiscoveryServer, Sessions},
    state::State,
    store::Store,
};

/// Largest discovery message accepted from a proxy (a Hello with its known versions).
const MAX_PROXY_MESSAGE: usize = 4 * 1024 * 1024;

/// Serves the control plane on `listener` until `shutdown` completes. `advertise` is the
/// address other replicas reach this one at (announced in the store).
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    advertise: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = State::new();
    let follower = tokio::spawn(state.clone().follow(store.clone()));
    let announcer = tokio::spawn(crate::peers::announce(store.clone(), advertise.clone()));
    let sessions = Arc::new(Sessions::default());
    let grpc = GrpcDiscovery::new(DiscoveryServer::new(state.clone(), sessions.clone()))
        .max_decoding_message_size(MAX_PROXY_MESSAGE)
        .max_encoding_message_size(usize::MAX);
    // gRPC requests are HTTP/2 POSTs to /weft.discovery.v1.Discovery/METHOD; everything
    // else is the JSON API.
    let app = api::router(Api {
        store,
        state,
        sessions,
        advertise,
    })
    .route_service("/weft.discovery.v1.Discovery/{*method}", grpc);
    let local: SocketAddr = listener.local_addr()?;
    tracing::info!(%local, "control plane listening (HTTP API and gRPC discovery)");
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    follower.abort();
    announcer.abort();
    result
}
