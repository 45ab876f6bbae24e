//! The gRPC contract between weft proxies and the control plane (DESIGN.md §3: the only
//! crate, with `weft-model`, that both sides share).
//!
//! `proto/weft/discovery/v1/discovery.proto` is the source of truth; `build.rs` compiles
//! it with protox, so no system `protoc` is needed.

/// `weft.discovery.v1`: the discovery stream (see the `.proto` for its rules).
#[allow(missing_docs, clippy::all)]
pub mod discovery {
    tonic::include_proto!("weft.discovery.v1");
}

/// `grpc.health.v1`: the standard gRPC health protocol (the sidecar checks gRPC apps with it).
#[allow(missing_docs, clippy::all)]
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}
