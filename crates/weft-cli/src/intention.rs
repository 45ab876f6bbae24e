//! `weft intention check SRC DST`: the decision a destination's sidecar would make,
//! computed from the stored intentions by the same code the sidecar runs.

use anyhow::Context;
use serde_json::Value;

use crate::control::{all_pages, get_json};

/// What to check.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The calling service (`-` for a caller without a mesh identity).
    source: String,
    /// The called service.
    destination: String,
    /// The request path (for L7 intentions).
    #[arg(long, default_value = "/")]
    path: String,
    /// The request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// A request header NAME:VALUE (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Judge an opaque TCP connection (a service run with `--app-protocol tcp`) instead
    /// of an HTTP request: L7 permissions do not apply.
    #[arg(long, conflicts_with_all = ["path", "method", "headers"])]
    tcp: bool,
}

/// Prints the verdict and why; Ok(true) when allowed.
pub async fn check(server: &str, args: &CheckArgs) -> anyhow::Result<bool> {
    let mut docs: Vec<Value> = all_pages(server, "/v1/config/Intention?limit=1000").await?;
    if let Ok(mesh) = get_json(server, "/v1/config/Mesh/mesh").await {
        docs.push(mesh);
    }
    // The destination's path policy, if it has one.
    if let Ok(service) = get_json(server, &format!("/v1/config/Service/{}", args.destination)).await
    {
        docs.push(service);
    }
    let text = docs
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n");
    let config = weft_model::parse("control-plane", &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let authz = weft_proxy::http::authz::Authorizer::build(&config, &args.destination)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let method = http::Method::from_bytes(args.method.as_bytes())
        .with_context(|| format!("--method {}: not an HTTP method", args.method))?;
    let mut headers = http::HeaderMap::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("--header {h}: expected NAME:VALUE"))?;
        headers.append(
            http::HeaderName::from_bytes(k.trim().as_bytes())
                .with_context(|| format!("--header {h}: bad name"))?,
            http::HeaderValue::from_str(v.trim())
                .with_context(|| format!("--header {h}: bad value"))?,
        );
    }
    let source = (args.source != "-").then_some(args.source.as_str());
    let (verdict, what) = if args.tcp {
        (authz.connection(source), "(TCP connection)".to_string())
    } else {
        let (path, query) = match args.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (args.path.as_str(), None),
        };
        // Judged as the sidecar judges it: in its normal form, under the destination's
        // path policy (its Service's, else the Mesh's).
        let policy = config
            .service(&args.destination)
            .and_then(|s| s.spec.paths)
            .unwrap_or(config.mesh().paths);
        let path = match weft_proxy::http::path::normalize(path, &policy) {
            Ok(p) => p,
            Err(e) => {
                say!(
                    "refused: {} → {} {} {}: 400 invalid-path before any intention: {e}",
                    source.unwrap_or("(no identity)"),
                    args.destination,
                    args.method,
                    args.path
                );
                return Ok(false);
            }
        };
        let verdict = authz.request(source, &method, &path, query, &headers);
        (verdict, format!("{} {}", args.method, args.path))
    };
    let allowed = verdict.action == weft_model::Action::Allow;
    say!(
        "{}: {} → {} {what}: {}",
        if allowed { "allowed" } else { "denied" },
        source.unwrap_or("(no identity)"),
        args.destination,
        verdict.reason
    );
    Ok(allowed)
}
