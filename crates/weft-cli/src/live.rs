//! `weft stat`, `weft edges`, `weft tap`, `weft top`: live traffic, answered by the
//! proxies through the control plane (`GET /v1/stats`, `GET /v1/tap/{service}`).

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::control::{encode, get_json};

/// Output formats of `stat` and `edges`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Output {
    /// Columns.
    Table,
    /// More columns.
    Wide,
    /// The API's JSON.
    Json,
}

/// What a tap matches and how it is shaped.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct TapFilter {
    /// Requests whose path starts with this.
    #[arg(long)]
    path: Option<String>,
    /// Requests with this method.
    #[arg(long)]
    method: Option<String>,
    /// Requests with this authority (Host).
    #[arg(long)]
    authority: Option<String>,
    /// Only the service's calls to this service (outbound).
    #[arg(long)]
    to: Option<String>,
    /// Only calls from this service (inbound).
    #[arg(long)]
    from: Option<String>,
    /// Events per second each proxy sends at most (default 100, at most 10000); the
    /// proxies count what they drop.
    #[arg(long)]
    max_rps: Option<u32>,
}

impl TapFilter {
    fn query(&self, extra: &[(&str, String)]) -> String {
        let mut q: Vec<String> = Vec::new();
        let mut add = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                q.push(format!("{k}={}", encode(v)));
            }
        };
        add("path", &self.path);
        add("method", &self.method);
        add("authority", &self.authority);
        add("to", &self.to);
        add("from", &self.from);
        add("maxRps", &self.max_rps.map(|n| n.to_string()));
        for (k, v) in extra {
            q.push(format!("{k}={}", encode(v)));
        }
        q.join("&")
    }
}

/// `weft tap`'s own options.
#[derive(clap::Args, Debug)]
pub(crate) struct TapArgs {
    /// The service whose proxies to tap.
    service: String,
    #[command(flatten)]
    filter: TapFilter,
    /// Capture up to this many bytes of each request and response body (0: none; at most
    /// 65536).
    #[arg(long, default_value_t = 0)]
    body: u32,
    /// More header names to redact (comma-separated), besides authorization,
    /// proxy-authorization, cookie and set-cookie, which always are.
    #[arg(long)]
    redact: Option<String>,
    /// Stop after this many events (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// `wide` adds identities, trace id and headers; `json` prints each event's JSON.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("-".to_string(), |r| format!("{:.2}%", r * 100.0))
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or("-".to_string(), |m| {
        if m >= 100.0 {
            format!("{m:.0}ms")
        } else {
            format!("{m:.1}ms")
        }
    })
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

async fn stats(
    server: &str,
    window: &str,
    service: Option<&str>,
    from: Option<&str>,
) -> anyhow::Result<Value> {
    let mut path = format!("/v1/stats?window={}", encode(window));
    if let Some(s) = service {
        path.push_str(&format!("&service={}", encode(s)));
    }
    if let Some(f) = from {
        path.push_str(&format!("&from={}", encode(f)));
    }
    let v = get_json(server, &path).await?;
    for u in v["unreachable"].as_array().into_iter().flatten() {
        eprintln!(
            "replica {} unreachable, its proxies are not counted: {}",
            s(&u["server"]),
            s(&u["error"])
        );
    }
    let late = v["unanswered"].as_array().map_or(0, Vec::len);
    if late > 0 {
        eprintln!("{late} proxies did not answer in time and are not counted");
    }
    Ok(v)
}

/// `weft stat`.
pub async fn stat(
    server: &str,
    services: &[String],
    all: bool,
    window: &str,
    from: Option<&str>,
    output: Output,
) -> anyhow::Result<()> {
    if services.is_empty() && !all {
        bail!("name one or more services, or --all");
    }
    let v = stats(server, window, None, from).await?;
    let rows: Vec<&Value> = v["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| all || services.iter().any(|n| r["service"] == n.as_str()))
        .collect();
    for n in services {
        if !rows.iter().any(|r| r["service"] == n.as_str()) {
            eprintln!("no service {n} in the catalog, and no proxy of it answered");
        }
    }
    match output {
        Output::Json => {
            let mut out = v.clone();
            out["services"] = Value::Array(rows.into_iter().cloned().collect());
            say!("{}", serde_json::to_string_pretty(&out)?);
        }
        Output::Table | Output::Wide => {
            let wide = matches!(output, Output::Wide);
            let mut head = format!(
                "{:<24} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5}",
                "SERVICE", "MESHED", "SUCCESS", "RPS", "P50", "P95", "P99", "TCP"
            );
            if wide {
                head.push_str(&format!(
                    " {:>9} {:>9} {:>9}",
                    "REQUESTS", "HEALTHY", "TCP_DONE"
                ));
            }
            say!("{head}");
            for r in rows {
                let mut line = format!(
                    "{:<24} {:>7} {:>9} {:>9.1} {:>9} {:>9} {:>9} {:>5}",
                    s(&r["service"]),
                    format!("{}/{}", r["meshed"], r["instances"]),
                    pct(&r["successRate"]),
                    r["rps"].as_f64().unwrap_or(0.0),
                    ms(&r["p50Ms"]),
                    ms(&r["p95Ms"]),
                    ms(&r["p99Ms"]),
                    r["tcpConnectionsOpen"].as_u64().unwrap_or(0),
                );
                if wide {
                    line.push_str(&format!(
                        " {:>9} {:>9} {:>9}",
                        r["requests"].as_u64().unwrap_or(0),
                        r["healthy"].as_u64().unwrap_or(0),
                        r["tcpConnectionsClosed"].as_u64().unwrap_or(0)
                    ));
                }
                say!("{line}");
            }
            say!(
                "(window {}, {:.0} s covered)",
                s(&v["window"]),
                v["seconds"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

/// `weft edges`.
pub async fn edges(
    server: &str,
    service: Option<&str>,
    window: &str,
    output: Output,
) -> anyhow::Result<()> {
    let v = stats(server, window, service, None).await?;
    let rows: Vec<&Value> = v["edges"].as_array().into_iter().flatten().collect();
    match output {
        Output::Json => {
            let out =
                serde_json::json!({"window": v["window"], "seconds": v["seconds"], "edges": rows});
            say!("{}", serde_json::to_string_pretty(&out)?);
        }
        Output::Table | Output::Wide => {
            let wide = matches!(output, Output::Wide);
            let mut head = format!(
                "{:<20} {:<20} {:<6} {:>9} {:>9} {:>9}",
                "SOURCE", "DESTINATION", "MTLS", "SUCCESS", "RPS", "P99"
            );
            if wide {
                head.push_str("  SOURCE_ID / DESTINATION_ID (SEEN BY)");
            }
            say!("{head}");
            for r in rows {
                let mtls = match r["mtls"].as_bool() {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "?",
                };
                let mut line = format!(
                    "{:<20} {:<20} {:<6} {:>9} {:>9.1} {:>9}",
                    s(&r["source"]),
                    s(&r["destination"]),
                    mtls,
                    pct(&r["successRate"]),
                    r["rps"].as_f64().unwrap_or(0.0),
                    ms(&r["p99Ms"]),
                );
                if wide {
                    line.push_str(&format!(
                        "  {} / {} ({})",
                        s(&r["sourceIdentity"]),
                        s(&r["destinationIdentity"]),
                        s(&r["seenBy"])
                    ));
                }
                say!("{line}");
            }
        }
    }
    Ok(())
}

/// Server-sent events from `path`, one `(event, data)` at a time, to `each` until it
/// says stop (false) or the stream ends.
async fn events(
    server: &str,
    path: &str,
    mut each: impl FnMut(&str, Value) -> bool,
) -> anyhow::Result<()> {
    let resp = weft_proxy::mesh::control_api::stream(server, path, Duration::from_secs(10))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        bail!(
            "{} ({} {})",
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("tap refused"),
            status.as_u16(),
            v.pointer("/error/code")
                .and_then(Value::as_str)
                .unwrap_or("")
        );
    }
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the tap stream broke")?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let mut kind = "message";
            let mut data = String::new();
            for line in text.lines() {
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = k;
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let value: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            if !each(kind, value) {
                return Ok(());
            }
        }
    }
    bail!("the server closed the tap stream")
}

/// `weft tap`.
pub async fn tap(server: &str, args: TapArgs) -> anyhow::Result<()> {
    let mut extra = vec![("body", args.body.to_string())];
    if let Some(r) = &args.redact {
        extra.push(("redact", r.clone()));
    }
    let path = format!(
        "/v1/tap/{}?{}",
        encode(&args.service),
        args.filter.query(&extra)
    );
    let mut seen = 0u64;
    let mut dropped = 0u64;
    let wide = matches!(args.output, Output::Wide);
    events(server, &path, |kind, v| {
        match (kind, args.output) {
            ("tap", Output::Json) => say!("{v}"),
            ("tap", _) => {
                dropped += v["dropped"].as_u64().unwrap_or(0);
                let status = match (v["status"].as_u64(), v["grpcStatus"].as_i64()) {
                    (_, Some(g)) => format!("{} grpc={g}", v["status"]),
                    (Some(0), _) => "-".to_string(),
                    (Some(st), _) => st.to_string(),
                    _ => "-".to_string(),
                };
                let error = v["error"]
                    .as_str()
                    .map(|e| format!(" error={e}"))
                    .unwrap_or_default();
                say!(
                    "{} {} -> {} {} {}{} :status={status}{error} latency={} bytes={}",
                    s(&v["direction"]),
                    s(&v["source"]),
                    s(&v["destination"]),
                    s(&v["method"]),
                    s(&v["authority"]),
                    s(&v["path"]),
                    ms(&v["latencyMs"]),
                    v["responseBytes"],
                );
                if wide {
                    say!(
                        "    src={} dst={} trace={} proxy={}",
                        s(&v["sourceIdentity"]),
                        s(&v["destinationIdentity"]),
                        s(&v["traceId"]),
                        s(&v["proxyId"])
                    );
                    for h in v["requestHeaders"].as_array().into_iter().flatten() {
                        say!("    > {}: {}", s(&h[0]), s(&h[1]));
                    }
                    for h in v["responseHeaders"].as_array().into_iter().flatten() {
                        say!("    < {}: {}", s(&h[0]), s(&h[1]));
                    }
                    if let Some(b) = v["requestBody"].as_str() {
                        let more = if v["requestBodyTruncated"] == true {
                            " (truncated)"
                        } else {
                            ""
                        };
                        say!("    request body: {b:?}{more}");
                    }
                    if let Some(b) = v["responseBody"].as_str() {
                        say!(
                            "    body: {b:?}{}",
                            if v["responseBodyTruncated"] == true {
                                " (truncated)"
                            } else {
                                ""
                            }
                        );
                    }
                }
            }
            ("dropped", _) => eprintln!(
                "the server dropped {} events (this client was slow)",
                v["server"]
            ),
            ("joined", _) => eprintln!("tapping proxy {}", s(&v["proxyId"])),
            ("left", _) => eprintln!("proxy {} left", s(&v["proxyId"])),
            ("refused", _) => eprintln!(
                "proxy {} refused the tap: {}",
                s(&v["proxyId"]),
                s(&v["reason"])
            ),
            ("unreachable", _) => eprintln!(
                "replica {} unreachable, its proxies are not tapped: {}",
                s(&v["server"]),
                s(&v["error"])
            ),
            _ => {}
        }
        if kind == "tap" {
            seen += 1;
            if args.count > 0 && seen >= args.count {
                return false;
            }
        }
        true
    })
    .await?;
    if dropped > 0 {
        eprintln!("the proxies dropped {dropped} events (over --max-rps or a full queue)");
    }
    Ok(())
}

/// What `weft top` shows: its rows, and which proxies tap or refused to.
#[derive(Default)]
struct Board {
    /// By (source, destination, method, path).
    rows: HashMap<(String, String, String, String), Row>,
    tapping: std::collections::BTreeSet<String>,
    /// Proxy → its reason.
    refused: std::collections::BTreeMap<String, String>,
}

/// One row of `weft top`.
#[derive(Default)]
struct Row {
    count: u64,
    successes: u64,
    best: f64,
    worst: f64,
    last: f64,
}

/// `weft top`: the busiest paths of a service, from a tap, redrawn every second; `q` or
/// Ctrl-C quits and restores the terminal.
pub async fn top(server: &str, service: &str, filter: TapFilter) -> anyhow::Result<()> {
    let path = format!("/v1/tap/{}?{}", encode(service), filter.query(&[]));
    let terminal = RawTerminal::enter();
    // `q` on stdin (read a byte at a time: the terminal is in non-canonical mode).
    let (quit_tx, mut quit) = tokio::sync::mpsc::channel::<()>(1);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut byte = [0u8; 1];
        let mut stdin = std::io::stdin();
        while let Ok(1) = stdin.read(&mut byte) {
            if byte[0] == b'q' || byte[0] == b'Q' || byte[0] == 3 {
                let _ = quit_tx.blocking_send(());
                return;
            }
        }
    });
    let board: std::sync::Arc<std::sync::Mutex<Board>> = Default::default();
    let table = board.clone();
    let started = Instant::now();
    let follow = events(server, &path, move |kind, v| {
        let mut board = table.lock().unwrap_or_else(|p| p.into_inner());
        let proxy = s(&v["proxyId"]).to_string();
        match kind {
            "joined" => {
                board.refused.remove(&proxy);
                board.tapping.insert(proxy);
            }
            "left" => {
                board.tapping.remove(&proxy);
            }
            "refused" => {
                board.tapping.remove(&proxy);
                board.refused.insert(proxy, s(&v["reason"]).to_string());
            }
            _ => {}
        }
        if kind == "tap" {
            let key = (
                s(&v["source"]).to_string(),
                s(&v["destination"]).to_string(),
                s(&v["method"]).to_string(),
                s(&v["path"])
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
            let latency = v["latencyMs"].as_f64().unwrap_or(0.0);
            let ok = v["status"].as_u64().is_some_and(|s| (1..500).contains(&s));
            let r = board.rows.entry(key).or_default();
            if r.count == 0 || latency < r.best {
                r.best = latency;
            }
            r.worst = r.worst.max(latency);
            r.last = latency;
            r.count += 1;
            r.successes += u64::from(ok);
        }
        true
    });
    tokio::pin!(follow);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let outcome = loop {
        tokio::select! {
            r = &mut follow => break r,
            _ = quit.recv() => break Ok(()),
            r = tokio::signal::ctrl_c() => break r.map_err(Into::into),
            _ = tick.tick() => draw(service, &board, started.elapsed()),
        }
    };
    drop(terminal);
    outcome
}

fn draw(service: &str, board: &std::sync::Mutex<Board>, elapsed: Duration) {
    let board = board.lock().unwrap_or_else(|p| p.into_inner());
    let mut sorted: Vec<_> = board.rows.iter().collect();
    sorted.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    let mut out = String::from("\x1b[H\x1b[2J");
    let tapping = board.tapping.len();
    out.push_str(&format!(
        "weft top {service}: {} paths, {:.0} s, {tapping} {} tapping (q or Ctrl-C quits)\r\n",
        board.rows.len(),
        elapsed.as_secs_f64(),
        if tapping == 1 { "proxy" } else { "proxies" },
    ));
    for (proxy, reason) in &board.refused {
        out.push_str(&format!("proxy {proxy} refused the tap: {reason}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&format!(
        "{:<16} {:<16} {:<7} {:<32} {:>7} {:>8} {:>9} {:>9} {:>9}\r\n",
        "SOURCE", "DESTINATION", "METHOD", "PATH", "COUNT", "SUCCESS", "BEST", "WORST", "LAST"
    ));
    for ((src, dst, method, path), r) in sorted.into_iter().take(40) {
        out.push_str(&format!(
            "{:<16} {:<16} {:<7} {:<32} {:>7} {:>7.1}% {:>9} {:>9} {:>9}\r\n",
            src,
            dst,
            method,
            path,
            r.count,
            r.successes as f64 * 100.0 / r.count.max(1) as f64,
            ms(&r.best.into()),
            ms(&r.worst.into()),
            ms(&r.last.into()),
        ));
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

/// The terminal in non-canonical, no-echo mode (keys arrive one at a time) while this
/// lives; its settings are restored when it is dropped. Not a terminal: nothing changes.
struct RawTerminal {
    saved: Option<String>,
}

impl RawTerminal {
    fn enter() -> RawTerminal {
        let stty = |args: &[&str]| {
            std::process::Command::new("stty")
                .args(args)
                .stdin(std::process::Stdio::inherit())
                .output()
                .ok()
                .filter(|o| o.status.success())
        };
        let saved = stty(&["-g"]).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if saved.is_some() {
            stty(&["-icanon", "-echo", "min", "1"]);
            // The alternate screen, the cursor hidden.
            print!("\x1b[?1049h\x1b[?25l");
        }
        RawTerminal { saved }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            print!("\x1b[?25h\x1b[?1049l");
            let _ = std::io::stdout().flush();
            let _ = std::process::Command::new("stty")
                .arg(saved)
                .stdin(std::process::Stdio::inherit())
                .status();
        }
    }
}
