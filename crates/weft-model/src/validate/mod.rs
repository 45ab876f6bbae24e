//! Semantic checks that serde cannot express: names resolve, regexes compile, header names
//! are legal, filters are consistent with matches. Each error is mapped back to its line.
//!
//! One file per kind, over shared checks (`checks.rs`) and the report (`report.rs`):
//! `gateway.rs`, `service.rs`, `http_route.rs`, `stream_route.rs` (TCP and TLS), and
//! `security.rs` (`Mesh`, `Intention`), `canary.rs` (`Canary`).

mod canary;
mod checks;
mod gateway;
mod http_route;
mod report;
mod security;
mod service;
mod stream_route;

use crate::yaml::Document;
use crate::*;
use report::Report;

/// The document each resource came from, parallel to the vectors of `Config`.
#[derive(Default)]
pub(crate) struct Origins<'a> {
    pub gateways: Vec<&'a Document>,
    pub routes: Vec<&'a Document>,
    pub services: Vec<&'a Document>,
    pub tcp_routes: Vec<&'a Document>,
    pub tls_routes: Vec<&'a Document>,
    pub meshes: Vec<&'a Document>,
    pub intentions: Vec<&'a Document>,
    pub canaries: Vec<&'a Document>,
}

pub(crate) fn validate(file: &str, c: &Config, o: &Origins<'_>, errors: &mut Vec<ConfigError>) {
    let mut r = Report::new(file, errors);
    fn names<S>(rs: &[Resource<S>]) -> Vec<&String> {
        rs.iter().map(|r| &r.metadata.name).collect()
    }
    for (kind, names, docs) in [
        ("Gateway", names(&c.gateways), &o.gateways),
        ("HTTPRoute", names(&c.routes), &o.routes),
        ("Service", names(&c.services), &o.services),
        ("TCPRoute", names(&c.tcp_routes), &o.tcp_routes),
        ("TLSRoute", names(&c.tls_routes), &o.tls_routes),
        ("Mesh", names(&c.meshes), &o.meshes),
        ("Intention", names(&c.intentions), &o.intentions),
        ("Canary", names(&c.canaries), &o.canaries),
    ] {
        checks::unique_names(&mut r, kind, names.into_iter(), docs);
    }

    gateway::gateways(&mut r, c, &o.gateways);

    for (s, doc) in c.services.iter().zip(&o.services) {
        service::service(&mut r, s, doc);
    }
    for (route, doc) in c.routes.iter().zip(&o.routes) {
        http_route::http_route(&mut r, c, route, doc);
    }
    for (route, doc) in c.tcp_routes.iter().zip(&o.tcp_routes) {
        stream_route::stream_route(&mut r, c, "TCPRoute", route, doc);
    }
    for (route, doc) in c.tls_routes.iter().zip(&o.tls_routes) {
        stream_route::stream_route(&mut r, c, "TLSRoute", route, doc);
    }
    security::mesh(&mut r, c, &o.meshes);
    for (i, doc) in c.intentions.iter().zip(&o.intentions) {
        security::intention(&mut r, i, doc);
    }
    for (k, doc) in c.canaries.iter().zip(&o.canaries) {
        canary::canary(&mut r, c, k, doc);
    }
}
