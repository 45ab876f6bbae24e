//! `weft intention check SRC DST`: the decision a destination's sidecar would make,
//! computed from the stored intentions by the same code the sidecar runs.

use anyhow::Context;
use serde_json::Value;

use weft_control::judge::{CheckAnswer, CheckAsk};

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
    let ask = CheckAsk {
        source: (args.source != "-").then(|| args.source.clone()),
        destination: args.destination.clone(),
        method: Some(args.method.clone()),
        path: Some(args.path.clone()),
        headers: args
            .headers
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .with_context(|| format!("--header {h}: expected NAME:VALUE"))
            })
            .collect::<anyhow::Result<_>>()?,
        tcp: args.tcp,
    };
    let answer = judge(&text, &ask).map_err(|e| anyhow::anyhow!("{e}"))?;
    say!("{}", answer.explanation);
    Ok(answer.allowed)
}

/// The server's intention check (`POST /v1/intentions/check`, the UI's form): the same
/// judgement as `weft intention check`.
pub struct SidecarJudge;

impl weft_control::judge::Judge for SidecarJudge {
    fn check(&self, policy: &str, ask: &CheckAsk) -> Result<CheckAnswer, String> {
        judge(policy, ask)
    }
}

/// Judges `ask` under `policy` (Mesh, Intention and Service resources as one text) with
/// the code the destination's sidecar runs. Err: the ask itself is malformed.
pub fn judge(policy: &str, ask: &CheckAsk) -> Result<CheckAnswer, String> {
    let config = weft_model::parse("control-plane", policy).map_err(|e| e.to_string())?;
    let authz = weft_proxy::http::authz::Authorizer::build(&config, &ask.destination)
        .map_err(|e| e.to_string())?;
    let method_text = ask.method.as_deref().unwrap_or("GET");
    let path_text = ask.path.as_deref().unwrap_or("/");
    let method = http::Method::from_bytes(method_text.as_bytes())
        .map_err(|_| format!("method `{method_text}`: not an HTTP method"))?;
    let mut headers = http::HeaderMap::new();
    for (k, v) in &ask.headers {
        headers.append(
            http::HeaderName::from_bytes(k.trim().as_bytes())
                .map_err(|_| format!("header `{k}`: not a header name"))?,
            http::HeaderValue::from_str(v.trim())
                .map_err(|_| format!("header `{k}`: its value is not a header value"))?,
        );
    }
    let source = ask.source.as_deref().filter(|s| !s.is_empty());
    let who = source.unwrap_or("(no identity)");
    let (verdict, what) = if ask.tcp {
        (authz.connection(source), "(TCP connection)".to_string())
    } else {
        let (path, query) = match path_text.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_text, None),
        };
        // Judged as the sidecar judges it: in its normal form, under the destination's
        // path policy (its Service's, else the Mesh's).
        let policy = config
            .service(&ask.destination)
            .and_then(|s| s.spec.paths)
            .unwrap_or(config.mesh().paths);
        let path = match weft_proxy::http::path::normalize(path, &policy) {
            Ok(p) => p,
            Err(e) => {
                let reason = format!("400 invalid-path before any intention: {e}");
                return Ok(CheckAnswer {
                    allowed: false,
                    explanation: format!(
                        "refused: {who} → {} {method_text} {path_text}: {reason}",
                        ask.destination
                    ),
                    reason,
                });
            }
        };
        let verdict = authz.request(source, &method, &path, query, &headers);
        (verdict, format!("{method_text} {path_text}"))
    };
    let allowed = verdict.action == weft_model::Action::Allow;
    Ok(CheckAnswer {
        allowed,
        explanation: format!(
            "{}: {who} → {} {what}: {}",
            if allowed { "allowed" } else { "denied" },
            ask.destination,
            verdict.reason
        ),
        reason: verdict.reason.to_string(),
    })
}
