//! Checks of `Gateway` resources and their listeners.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use super::report::Report;
use crate::yaml::Document;
use crate::*;

/// Every `Gateway`: listeners named once, addresses used once, each listener sound.
pub(crate) fn gateways(r: &mut Report<'_>, c: &Config, docs: &[&Document]) {
    let mut addresses: HashMap<SocketAddr, String> = HashMap::new();
    for (g, doc) in c.gateways.iter().zip(docs) {
        let name = &g.metadata.name;
        if g.spec.listeners.is_empty() {
            r.at(
                doc,
                "Gateway",
                name,
                "spec.listeners".into(),
                "needs at least one listener".into(),
            );
        }
        if let Some(t) = &g.spec.tracing {
            for (field, msg) in super::checks::tracing_problems(t) {
                r.at(doc, "Gateway", name, format!("spec.tracing.{field}"), msg);
            }
        }
        let mut seen = HashSet::new();
        for (i, l) in g.spec.listeners.iter().enumerate() {
            let at = format!("spec.listeners[{i}]");
            if !seen.insert(&l.name) {
                r.at(
                    doc,
                    "Gateway",
                    name,
                    format!("{at}.name"),
                    format!("duplicate listener `{}`", l.name),
                );
            }
            match l.address.parse::<SocketAddr>() {
                Err(_) => r.at(
                    doc,
                    "Gateway",
                    name,
                    format!("{at}.address"),
                    format!("`{}` is not IP:PORT", l.address),
                ),
                Ok(a) if a.port() != 0 => {
                    if let Some(prev) = addresses.insert(a, format!("{name}/{}", l.name)) {
                        r.at(
                            doc,
                            "Gateway",
                            name,
                            format!("{at}.address"),
                            format!("{a} is already used by listener {prev}"),
                        );
                    }
                }
                Ok(_) => {}
            }
            listener(r, doc, name, &at, l);
        }
    }
}

fn listener(r: &mut Report<'_>, doc: &Document, gateway: &str, at: &str, l: &Listener) {
    let mut err =
        |field: &str, msg: String| r.at(doc, "Gateway", gateway, format!("{at}.{field}"), msg);
    match (l.protocol, &l.tls) {
        (ListenerProtocol::HTTP | ListenerProtocol::TCP, Some(_)) => err(
            "tls",
            format!("protocol {:?} takes no `tls`; use HTTPS or TLS", l.protocol),
        ),
        (ListenerProtocol::HTTPS | ListenerProtocol::TLS, None) => err(
            "tls",
            format!("protocol {:?} needs `tls` with certificates", l.protocol),
        ),
        (ListenerProtocol::HTTPS, Some(t)) if t.mode == TlsMode::Passthrough => err(
            "tls.mode",
            "HTTPS terminates TLS; for passthrough use protocol TLS with TLSRoutes".into(),
        ),
        (_, Some(t)) if t.mode == TlsMode::Passthrough && !t.certificates.is_empty() => err(
            "tls.certificates",
            "a passthrough listener never uses certificates; remove them".into(),
        ),
        (_, Some(t)) if t.mode == TlsMode::Terminate && t.certificates.is_empty() => {
            err("tls.certificates", "needs at least one certificate".into())
        }
        _ => {}
    }
    if let Some(t) = &l.tls {
        for (i, c) in t.certificates.iter().enumerate() {
            if c.cert_file.is_empty() || c.key_file.is_empty() {
                err(
                    &format!("tls.certificates[{i}]"),
                    "certFile and keyFile must not be empty".into(),
                );
            }
        }
    }
    let lim = &l.limits;
    if lim.max_connections == 0 {
        err("limits.maxConnections", "must be at least 1".into());
    }
    if !(8192..=1 << 20).contains(&lim.max_request_header_bytes) {
        err(
            "limits.maxRequestHeaderBytes",
            format!("{} is outside 8192..=1048576", lim.max_request_header_bytes),
        );
    }
    if !(1..=10_000).contains(&lim.max_request_headers) {
        err(
            "limits.maxRequestHeaders",
            format!("{} is outside 1..=10000", lim.max_request_headers),
        );
    }
    if lim.http2_max_concurrent_streams == 0 {
        err(
            "limits.http2MaxConcurrentStreams",
            "must be at least 1".into(),
        );
    }
    for (field, d) in [
        ("headerReadTimeout", lim.header_read_timeout),
        ("tlsHandshakeTimeout", lim.tls_handshake_timeout),
        ("requestBodyIdleTimeout", lim.request_body_idle_timeout),
        ("idleTimeout", lim.idle_timeout),
    ] {
        if d.get().is_zero() {
            err(&format!("limits.{field}"), "must be greater than 0".into());
        }
    }
}
