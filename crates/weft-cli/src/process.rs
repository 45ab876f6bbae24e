//! What every long-running subcommand shares with the others: its runtime, its signals,
//! durations on the command line, and the lines it prints.

use std::net::SocketAddr;
use std::time::Duration;

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    weft_model::duration::parse(s)
}

/// `--watch-interval`: how often a followed file is checked (`off`: on SIGHUP only).
pub(crate) fn watch_interval(arg: &str) -> anyhow::Result<Option<Duration>> {
    match arg {
        "off" => Ok(None),
        d => Ok(Some(
            parse_duration(d).map_err(|e| anyhow::anyhow!("--watch-interval: {e}"))?,
        )),
    }
}

pub(crate) fn say_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if writeln!(std::io::stdout().lock(), "{args}").is_err() {
        std::process::exit(0); // the reader went away: nothing left to say
    }
}

/// One JSON line on stdout that tests and scripts read to learn the bound addresses.
pub(crate) fn print_ready(listeners: &[(String, SocketAddr)], admin: Option<SocketAddr>) {
    let listeners: serde_json::Map<String, serde_json::Value> = listeners
        .iter()
        .map(|(n, a)| (n.clone(), a.to_string().into()))
        .collect();
    let line = serde_json::json!({ "event": "ready", "listeners": listeners, "admin": admin.map(|a| a.to_string()) });
    println!("{line}");
}

pub(crate) async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}

/// Runs one API client command on a small runtime.
pub(crate) fn client<F: std::future::Future<Output = anyhow::Result<()>>>(
    f: impl FnOnce() -> F,
) -> anyhow::Result<()> {
    runtime(Some(1))?.block_on(f())
}

/// The data-path runtime. One worker means a single-threaded scheduler: no work stealing,
/// no cross-thread wake-ups (the admin listener and access log have threads of their own).
pub(crate) fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    Ok(b.enable_all().build()?)
}
