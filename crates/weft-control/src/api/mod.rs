//! The HTTP API: JSON over HTTP for configuration, catalog, key/value and proxy status,
//! described by `openapi.json` (served at `/v1/openapi.json`).
//!
//! Conventions (docs/api.md): errors are `{"error": {"code", "message", "details"?}}`;
//! lists take `limit` (default 100, at most 1000) and `after`, and answer
//! `{"items": [...], "next": TOKEN?}`; every answer carries `X-Weft-Index`, the store
//! revision it reflects; a read with `index=N` waits (up to `wait`, default 30 s, at most
//! 5 min) until something it covers changes after revision N (long-poll).
//!
//! Every handler takes the raw body and parses it itself, so a malformed request gets
//! the same JSON error shape as any other failure.
//!
//! ```text
//! mod.rs       the router: every resource's routes, inside the two middlewares
//!  ├ status.rs   /v1/status, /metrics, /v1/openapi.json
//!  ├ config.rs   /v1/config            ├ catalog.rs  /v1/catalog
//!  ├ kv.rs       /v1/kv                ├ ca.rs       /v1/ca
//!  ├ proxies.rs  /v1/proxies           ├ acl.rs      /v1/acl
//!  ├ live.rs     /v1/stats, /v1/tap/{service} (asked of the proxies, live.rs)
//!  ├ topology.rs /v1/topology, /v1/intentions/{matrix,check} (the UI's graph and forms)
//!  ├ canary.rs   /v1/canaries: rollouts and operators' commands
//!  │   └ rollout.rs  the canary controller, run on the leader (asks live.rs, acl.rs)
//!  └ ui.rs       /ui/: the web UI's files (no token: they hold no data)
//! request.rs   around every handler: the caller (extractor, before the body), bodies
//!              under limits, errors as JSON, X-Weft-Index
//! query.rs     the query parameters (extractor), pages, long-polls
//! context.rs   Api: what every handler is given
//! ```

mod acl;
mod ca;
mod canary;
mod catalog;
mod config;
mod context;
mod kv;
mod live;
mod proxies;
mod query;
mod request;
mod rollout;
mod status;
mod topology;
mod ui;

use axum::Router;

pub use context::Api;
pub use rollout::run as run_canaries;
pub use topology::TopologyCache;

use crate::error::ApiError;

/// The API's routes.
pub fn router(api: Api) -> Router {
    Router::new()
        .merge(status::routes())
        .merge(config::routes())
        .merge(kv::routes())
        .merge(proxies::routes())
        .merge(live::routes())
        .merge(topology::routes())
        .merge(canary::routes())
        .merge(ui::routes())
        .merge(catalog::routes())
        .merge(ca::routes())
        .merge(acl::routes())
        .fallback(|| async { ApiError::not_found("no such API endpoint (see /v1/openapi.json)") })
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            request::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            request::finish,
        ))
        .with_state(api)
}

#[cfg(test)]
mod tests {
    /// The router files, read as source: their `.route(PATH, METHODS)` calls are what the
    /// server serves.
    const ROUTER_FILES: &[(&str, &str)] = &[
        ("status.rs", include_str!("status.rs")),
        ("config.rs", include_str!("config.rs")),
        ("kv.rs", include_str!("kv.rs")),
        ("proxies.rs", include_str!("proxies.rs")),
        ("live.rs", include_str!("live.rs")),
        ("topology.rs", include_str!("topology.rs")),
        ("canary.rs", include_str!("canary.rs")),
        ("catalog.rs", include_str!("catalog.rs")),
        ("ca.rs", include_str!("ca.rs")),
        ("acl.rs", include_str!("acl.rs")),
    ];

    /// `(path as OpenAPI spells it, method)` for every `.route(...)` call in `src` (before
    /// its tests).
    fn routed(src: &str) -> Vec<(String, String)> {
        let code = src.split("#[cfg(test)]").next().unwrap_or_default();
        let mut out = Vec::new();
        for (at, _) in code.match_indices(".route(") {
            let rest = &code[at + ".route(".len()..];
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(rest.len(), |(i, _)| i);
            let call = &rest[..end];
            let path = call.split('"').nth(1).expect("a route path literal");
            let spelled = path.replace("{*key}", "{key}");
            for method in ["get", "post", "put", "delete", "patch"] {
                let calls = call.match_indices(&format!("{method}(")).any(|(i, _)| {
                    i == 0
                        || !call.as_bytes()[i - 1].is_ascii_alphanumeric()
                            && call.as_bytes()[i - 1] != b'_'
                });
                if calls {
                    out.push((spelled.clone(), method.to_string()));
                }
            }
        }
        out
    }

    #[test]
    fn the_openapi_document_describes_exactly_the_routes_with_their_path_parameters() {
        let doc: serde_json::Value = serde_json::from_str(super::status::OPENAPI).unwrap();
        let resolve = |p: &serde_json::Value| -> serde_json::Value {
            match p.get("$ref").and_then(|r| r.as_str()) {
                Some(r) => doc
                    .pointer(r.trim_start_matches('#'))
                    .cloned()
                    .unwrap_or_default(),
                None => p.clone(),
            }
        };
        let mut served = std::collections::BTreeSet::new();
        for (file, src) in ROUTER_FILES {
            let routes = routed(src);
            assert!(!routes.is_empty(), "{file}: no routes found");
            for (path, method) in routes {
                let op = doc["paths"][&path][&method].clone();
                assert!(
                    op.is_object(),
                    "{method} {path} ({file}) is not in openapi.json"
                );
                let declared: Vec<String> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(resolve)
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap_or_default().to_string())
                    .collect();
                let wanted: Vec<String> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                    .map(str::to_string)
                    .collect();
                assert_eq!(declared, wanted, "{method} {path}: path parameters");
                assert!(
                    op["responses"]
                        .as_object()
                        .is_some_and(|r| r.contains_key("400")),
                    "{method} {path}: the 400 every operation can answer"
                );
                served.insert((path, method));
            }
        }
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                assert!(
                    served.contains(&(path.clone(), method.clone())),
                    "openapi.json documents {method} {path}, which nobody serves"
                );
            }
        }
        // Every query parameter the document names is one the server parses.
        let params_struct = include_str!("query.rs")
            .split("pub(crate) struct Params {")
            .nth(1)
            .and_then(|s| s.split('}').next())
            .unwrap_or_default()
            .to_string();
        for ops in doc["paths"].as_object().unwrap().values() {
            for op in ops.as_object().unwrap().values() {
                for p in op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(resolve)
                {
                    if p["in"] == "query" {
                        let name = p["name"].as_str().unwrap_or_default();
                        let field = name
                            .chars()
                            .flat_map(|c| {
                                if c.is_ascii_uppercase() {
                                    vec!['_', c.to_ascii_lowercase()]
                                } else {
                                    vec![c]
                                }
                            })
                            .collect::<String>();
                        assert!(
                            params_struct.contains(&format!(" {field}:")),
                            "query parameter {name} is not parsed by the server"
                        );
                    }
                }
            }
        }
    }
}
