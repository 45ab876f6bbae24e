//! The commands that talk to `weft server` (`apply`, `get`, `delete`, `kv`, `catalog`,
//! `status`): thin clients of the HTTP API, and the options every client command takes.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Subcommand;
use serde_json::Value;
use weft_proxy::mesh::control_api::request;

/// `WEFT_SERVER` or `--server`.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:8500";

/// The control plane to talk to.
#[derive(clap::Args)]
pub(crate) struct ServerArg {
    /// Control-plane URL.
    #[arg(long = "server", env = "WEFT_SERVER", default_value = DEFAULT_SERVER, global = true)]
    pub(crate) url: String,
    #[command(flatten)]
    pub(crate) auth: ControlAuth,
}

/// How a client of the control plane proves who it is and checks whom it talks to (only
/// on the commands that talk to one).
#[derive(clap::Args)]
pub(crate) struct ControlAuth {
    /// ACL token for the control plane (API and discovery stream).
    #[arg(long, global = true, env = "WEFT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The mesh CA's roots (PEM), to verify an `https://` control plane. A relative path
    /// is relative to the directory the command runs in.
    #[arg(long, global = true, env = "WEFT_CA_FILE")]
    ca_file: Option<PathBuf>,
}

impl ControlAuth {
    /// Makes this process use them.
    pub(crate) fn install(&self) {
        if let Some(t) = self.token.clone() {
            weft_proxy::mesh::control_api::set_token(t);
        }
        if let Some(f) = self.ca_file.clone() {
            weft_proxy::mesh::control_api::set_ca_file(f);
        }
    }
}

/// `weft kv` subcommands.
#[derive(Subcommand)]
pub(crate) enum KvCommand {
    /// Print a value.
    Get {
        /// The key (`a/b/c`).
        key: String,
    },
    /// Write a value.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Only if the key's modRevision is this (0: only if absent).
        #[arg(long)]
        cas: Option<u64>,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
        /// Every key under it.
        #[arg(long)]
        recurse: bool,
        /// Only if the key's modRevision is this.
        #[arg(long)]
        cas: Option<u64>,
    },
    /// List keys under a prefix.
    List {
        /// The prefix (empty: all).
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Print the key (or every key under a prefix) each time it changes.
    Watch {
        /// The key or prefix.
        key: String,
        /// Watch every key under `key`.
        #[arg(long)]
        prefix: bool,
    },
}

/// One API call; an API error becomes an error naming its code and details.
pub async fn api(
    server: &str,
    method: &str,
    path: &str,
    body: Bytes,
    content_type: &str,
    timeout: Duration,
) -> anyhow::Result<(Value, Bytes)> {
    let (status, _, bytes) = request(server, method, path, body, content_type, timeout)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        let code = value
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("");
        let message = value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        let mut text = format!("{message} ({status} {code})");
        for d in value
            .pointer("/error/details")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            text.push_str(&format!("\n  {}", d.as_str().unwrap_or_default()));
        }
        bail!(text);
    }
    Ok((value, bytes))
}

/// GET a JSON answer.
pub async fn get_json(server: &str, path: &str) -> anyhow::Result<Value> {
    Ok(api(
        server,
        "GET",
        path,
        Bytes::new(),
        "application/json",
        Duration::from_secs(10),
    )
    .await?
    .0)
}

/// Every item of a paginated list (`path` has its query already), page by page.
pub async fn all_pages(server: &str, path: &str) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page_path = match &after {
            Some(a) => format!("{path}&after={}", encode(a)),
            None => path.to_string(),
        };
        let page = get_json(server, &page_path).await?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return Ok(items),
        }
    }
}

/// Percent-encodes a query value or path segment.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b'/' => "/".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `weft apply -f FILE [--dry-run] [--wait]`.
pub async fn apply(
    server: &str,
    file: &std::path::Path,
    dry_run: bool,
    wait: Option<Duration>,
) -> anyhow::Result<()> {
    let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let path = format!(
        "/v1/config?dryRun={dry_run}&file={}",
        encode(&file.display().to_string())
    );
    let (outcome, _) = api(
        server,
        "POST",
        &path,
        Bytes::from(text),
        "application/yaml",
        Duration::from_secs(30),
    )
    .await?;
    print_changes(&outcome, dry_run, dry_run);
    let revision = outcome["revision"].as_u64().unwrap_or(0);
    if let (Some(max), false) = (wait, dry_run) {
        wait_for_proxies(server, revision, max).await?;
    }
    Ok(())
}

/// One line per changed resource (`Kind/name action`), and its diff when `diffs`.
fn print_changes(outcome: &Value, dry_run: bool, diffs: bool) {
    let suffix = if dry_run { " (dry run)" } else { "" };
    for c in outcome["changes"].as_array().into_iter().flatten() {
        say!(
            "{}/{} {}{suffix}",
            c["kind"].as_str().unwrap_or(""),
            c["name"].as_str().unwrap_or(""),
            c["action"].as_str().unwrap_or("")
        );
        if diffs {
            for line in c["diff"].as_str().unwrap_or("").lines() {
                say!("    {line}");
            }
        }
    }
}

/// Waits until every connected proxy is current at `revision`, or names the ones that
/// are not, and why.
pub async fn wait_for_proxies(server: &str, revision: u64, max: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        let status = get_json(server, &format!("/v1/proxies?revision={revision}")).await?;
        let items = status["items"].as_array().cloned().unwrap_or_default();
        let behind: Vec<&Value> = items
            .iter()
            .filter(|p| p["current"] != Value::Bool(true))
            .collect();
        if behind.is_empty() {
            say!(
                "applied by all {} proxies (revision {revision})",
                items.len()
            );
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let mut text = format!(
                "{} of {} proxies have not applied revision {revision}:",
                behind.len(),
                items.len()
            );
            for p in behind {
                let why = if let Some(n) = p.get("nack") {
                    format!(
                        "refused version {}: {}",
                        n["version"],
                        n["error"].as_str().unwrap_or("")
                    )
                } else if let Some(v) = p.get("pending") {
                    format!("update {v} sent, not yet acknowledged")
                } else {
                    format!("current at revision {}", p["currentAt"])
                };
                text.push_str(&format!(
                    "\n  {} ({}): {why}",
                    p["proxyId"].as_str().unwrap_or(""),
                    p["service"].as_str().unwrap_or("")
                ));
            }
            bail!(text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `weft get KIND [NAME] [-o yaml|json]`.
pub async fn get(server: &str, kind: &str, name: Option<&str>, output: &str) -> anyhow::Result<()> {
    let value = match name {
        Some(n) => {
            get_json(
                server,
                &format!("/v1/config/{}/{}", encode(kind), encode(n)),
            )
            .await?
        }
        None => {
            let items =
                all_pages(server, &format!("/v1/config/{}?limit=1000", encode(kind))).await?;
            Value::Array(items)
        }
    };
    match output {
        "json" => say!("{}", serde_json::to_string_pretty(&value)?),
        "yaml" => match value {
            Value::Array(items) => {
                let docs: Vec<String> = items.iter().map(crate::yaml_out::to_yaml).collect();
                say!("{}", docs.join("---\n").trim_end());
            }
            v => say!("{}", crate::yaml_out::to_yaml(&v).trim_end()),
        },
        other => bail!("-o {other}: expected yaml or json"),
    }
    Ok(())
}

/// `weft delete KIND NAME [--dry-run]`.
pub async fn delete(server: &str, kind: &str, name: &str, dry_run: bool) -> anyhow::Result<()> {
    let path = format!(
        "/v1/config/{}/{}?dryRun={dry_run}",
        encode(kind),
        encode(name)
    );
    let (outcome, _) = api(
        server,
        "DELETE",
        &path,
        Bytes::new(),
        "application/json",
        Duration::from_secs(30),
    )
    .await?;
    print_changes(&outcome, dry_run, false);
    Ok(())
}

/// `weft kv ...`.
pub async fn kv(server: &str, cmd: KvCommand) -> anyhow::Result<()> {
    use KvCommand as K;
    let t = Duration::from_secs(10);
    match cmd {
        K::Get { key } => {
            let (_, raw) = api(
                server,
                "GET",
                &format!("/v1/kv/{}?raw=true", encode(&key)),
                Bytes::new(),
                "application/json",
                t,
            )
            .await?;
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            if out
                .write_all(&raw)
                .and_then(|()| {
                    if raw.ends_with(b"\n") {
                        Ok(())
                    } else {
                        out.write_all(b"\n")
                    }
                })
                .is_err()
            {
                std::process::exit(0);
            }
        }
        K::Put { key, value, cas } => {
            let mut path = format!("/v1/kv/{}", encode(&key));
            if let Some(c) = cas {
                path.push_str(&format!("?cas={c}"));
            }
            let (v, _) = api(
                server,
                "PUT",
                &path,
                Bytes::from(value),
                "application/octet-stream",
                t,
            )
            .await?;
            say!("{key} written (modRevision {})", v["modRevision"]);
        }
        K::Delete { key, recurse, cas } => {
            let mut path = format!("/v1/kv/{}?recurse={recurse}", encode(&key));
            if let Some(c) = cas {
                path.push_str(&format!("&cas={c}"));
            }
            let (v, _) = api(server, "DELETE", &path, Bytes::new(), "application/json", t).await?;
            say!("{} key(s) deleted", v["deleted"]);
        }
        K::List { prefix } => {
            let path = format!("/v1/kv?prefix={}&limit=1000", encode(&prefix));
            for e in all_pages(server, &path).await? {
                let value = e["value"]
                    .as_str()
                    .map_or_else(|| format!("({} bytes)", e["size"]), str::to_string);
                say!(
                    "{}\t{}\t{value}",
                    e["key"].as_str().unwrap_or(""),
                    e["modRevision"]
                );
            }
        }
        K::Watch { key, prefix: true } => watch_prefix(server, &key).await?,
        K::Watch { key, prefix: false } => {
            // Long-poll: each answer's X-Weft-Index is the revision to wait from next.
            let mut index: u64 = 0;
            let mut last: Option<String> = None;
            loop {
                let path = format!("/v1/kv/{}?index={index}&wait=60s", encode(&key));
                let (status, at, bytes) = long_poll(server, &path).await?;
                let at = match at {
                    Some(at) => at,
                    // A 404 carries no index: take the server's current revision.
                    None => get_json(server, "/v1/status").await?["revision"]
                        .as_u64()
                        .unwrap_or(index),
                };
                let shown = match status {
                    200 => String::from_utf8_lossy(&bytes).into_owned(),
                    404 => serde_json::json!({"key": key, "absent": true}).to_string(),
                    _ => bail!("watch: {status} {}", String::from_utf8_lossy(&bytes)),
                };
                // A wait that timed out answers the same state again: print changes only.
                if last.as_ref() != Some(&shown) {
                    say!("{shown}");
                    last = Some(shown);
                }
                index = index.max(at);
            }
        }
    }
    Ok(())
}

/// One long-poll GET (`index` and `wait=60s` in `path`): `(status, X-Weft-Index, body)`.
async fn long_poll(server: &str, path: &str) -> anyhow::Result<(u16, Option<u64>, Bytes)> {
    request(
        server,
        "GET",
        path,
        Bytes::new(),
        "application/json",
        Duration::from_secs(90),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// `weft kv watch PREFIX --prefix`: the entries under PREFIX, then one JSON line per
/// change — an entry written (as `weft kv get` shows it) or `{"key", "deleted": true}`.
async fn watch_prefix(server: &str, prefix: &str) -> anyhow::Result<()> {
    let mut index: u64 = 0;
    let mut last: std::collections::BTreeMap<String, Value> = Default::default();
    loop {
        // Wait (long-poll) for a change under the prefix after `index`...
        let path = format!(
            "/v1/kv?prefix={}&index={index}&wait=60s&limit=1",
            encode(prefix)
        );
        let (status, at, bytes) = long_poll(server, &path).await?;
        if status != 200 {
            bail!("watch: {status} {}", String::from_utf8_lossy(&bytes));
        }
        // ...then read every entry, and print what differs from what was printed.
        let list = all_pages(
            server,
            &format!("/v1/kv?prefix={}&limit=1000", encode(prefix)),
        )
        .await?;
        let now: std::collections::BTreeMap<String, Value> = list
            .into_iter()
            .filter_map(|e| Some((e["key"].as_str()?.to_string(), e)))
            .collect();
        for (k, e) in &now {
            if last.get(k) != Some(e) {
                say!("{e}");
            }
        }
        for k in last.keys().filter(|k| !now.contains_key(*k)) {
            say!("{}", serde_json::json!({"key": k, "deleted": true}));
        }
        last = now;
        index = index.max(at.unwrap_or(index));
    }
}

/// `weft catalog [SERVICE]`.
pub async fn catalog(server: &str, service: Option<&str>) -> anyhow::Result<()> {
    match service {
        None => {
            let v = get_json(server, "/v1/catalog/services").await?;
            say!("{:<30} {:>9} {:>8}", "SERVICE", "INSTANCES", "HEALTHY");
            for s in v["items"].as_array().into_iter().flatten() {
                say!(
                    "{:<30} {:>9} {:>8}",
                    s["name"].as_str().unwrap_or(""),
                    s["instances"].to_string(),
                    s["healthy"].to_string()
                );
            }
        }
        Some(name) => {
            let v = get_json(server, &format!("/v1/catalog/services/{}", encode(name))).await?;
            say!("{:<36} {:<22} {:<9} METADATA", "ID", "ADDRESS", "HEALTH");
            for i in v["items"].as_array().into_iter().flatten() {
                say!(
                    "{:<36} {:<22} {:<9} {}",
                    i["id"].as_str().unwrap_or(""),
                    format!("{}:{}", i["address"].as_str().unwrap_or(""), i["port"]),
                    i["health"].as_str().unwrap_or(""),
                    i["metadata"].to_string()
                );
            }
        }
    }
    Ok(())
}

/// `weft status`: the server and every connected proxy, current or not.
pub async fn status(server: &str) -> anyhow::Result<()> {
    let s = get_json(server, "/v1/status").await?;
    let revision = s["revision"].as_u64().unwrap_or(0);
    say!(
        "server {server}: store {}, revision {revision}, {} proxies",
        s["store"].as_str().unwrap_or(""),
        s["proxies"]
    );
    match (s["leader"].as_str(), s["server"].as_str()) {
        (Some(l), Some(me)) if l == me => say!("leader: this server ({me})"),
        (Some(l), _) => say!("leader: {l}"),
        (None, _) => say!("leader: none elected (is the store reachable?)"),
    }
    let p = get_json(server, &format!("/v1/proxies?revision={revision}")).await?;
    for u in p["unreachable"].as_array().into_iter().flatten() {
        say!(
            "replica {} unreachable, its proxies are not listed: {}",
            u["server"].as_str().unwrap_or("?"),
            u["error"].as_str().unwrap_or("")
        );
    }
    say!(
        "{:<40} {:<20} {:<9} {:>10} DETAIL",
        "PROXY",
        "SERVICE",
        "STATE",
        "CURRENT AT"
    );
    for i in p["items"].as_array().into_iter().flatten() {
        let state = if i["current"] == Value::Bool(true) {
            "current"
        } else {
            "behind"
        };
        let detail = match (i.get("nack"), i.get("pending")) {
            (Some(n), _) => format!(
                "NACK {}: {}",
                n["version"],
                n["error"].as_str().unwrap_or("")
            ),
            (None, Some(v)) => format!("update {v} not yet acknowledged"),
            _ => String::new(),
        };
        say!(
            "{:<40} {:<20} {:<9} {:>10} {detail}",
            i["proxyId"].as_str().unwrap_or(""),
            i["service"].as_str().unwrap_or(""),
            state,
            i["currentAt"].to_string()
        );
    }
    Ok(())
}
