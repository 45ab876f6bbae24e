//! weft's control plane (`weft server`).
//!
//! ```text
//! HTTP API (api/)  ─► config / kv / catalog writes ─► Store (embedded redb, or etcd)
//!                                                        │ watch
//!                                                        ▼
//!                                              State (state.rs, in memory)
//!                                                        │ revision ticks
//!                                                        ▼
//!                      discovery sessions (discovery.rs): one per proxy stream,
//!                      each computes its slice, sends the delta, waits for ACK/NACK
//!                      live streams (live.rs): beside each, the API's questions to the
//!                      proxy (windows for stat/edges, taps) and their answers
//! ```
//!
//! The store is the only source of truth: every replica rebuilds its [`state::State`]
//! from it and follows its watch, so replicas over one etcd are interchangeable.

pub mod acl;
pub mod api;
pub mod authn;
pub mod ca;
pub mod catalog;
pub mod config;
mod diff;
pub mod discovery;
pub mod dns;
pub mod embedded;
pub mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod judge;
pub mod kv;
pub mod leader;
pub mod live;
pub mod metrics;
pub mod peers;
pub mod server;
pub mod state;
pub mod store;
pub mod update_stream;
pub mod vip;
pub mod webhook;
