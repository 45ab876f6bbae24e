//! `weft proxy` (a proxy following a configuration file) and `weft validate` (the same
//! file compiled, not served).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use weft_proxy::{source::FileSource, telemetry::access_log::Sink, ProxyOptions, RunningProxy};

use crate::process::{print_ready, runtime, wait_for_signal, watch_interval};

/// `weft proxy` options.
#[derive(clap::Args)]
pub(crate) struct ProxyArgs {
    /// YAML file with Gateway, HTTPRoute and Service resources.
    #[arg(long, short)]
    config: PathBuf,
    /// Admin listener (`/metrics`, `/ready`, `/live`, `/config`); `off` disables it.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: String,
    /// Access log destination: `-` for stdout, a file path, or `off`.
    #[arg(long, default_value = "off")]
    access_log: String,
    /// Worker threads for the data path (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, default_value = "30s", value_parser = crate::process::parse_duration)]
    drain_timeout: Duration,
    /// How often to check the config file for changes (`off`: reload on SIGHUP only).
    #[arg(long, default_value = "1s")]
    watch_interval: String,
    #[command(flatten)]
    tracing: TracingArgs,
}

/// Where a proxy exports its spans.
#[derive(clap::Args)]
pub(crate) struct TracingArgs {
    /// OTLP collector for spans: `http://HOST:4317` (gRPC), or with
    /// OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf `http://HOST:4318`. Default:
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, then OTEL_EXPORTER_OTLP_ENDPOINT; none: trace
    /// context is still passed on, no span is exported.
    #[arg(long)]
    otlp_endpoint: Option<String>,
}

impl TracingArgs {
    /// The exporter's options; spans name `service` (unless OTEL_SERVICE_NAME says).
    pub(crate) fn options(
        &self,
        service: &str,
    ) -> anyhow::Result<Option<weft_proxy::telemetry::otlp::Options>> {
        weft_proxy::telemetry::otlp::Options::from_env(
            self.otlp_endpoint.as_deref(),
            service,
            |k| std::env::var(k).ok(),
        )
        .map_err(|e| anyhow::anyhow!("--otlp-endpoint: {e}"))
    }
}

pub(crate) fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let admin = match args.admin.as_str() {
        "off" => None,
        a => Some(
            a.parse::<SocketAddr>()
                .with_context(|| format!("--admin {a}: expected IP:PORT or off"))?,
        ),
    };
    let access_log = match args.access_log.as_str() {
        "off" => None,
        "-" => Some(Sink::Stdout),
        p => Some(Sink::File(p.into())),
    };
    let poll = watch_interval(&args.watch_interval)?;
    let opts = ProxyOptions {
        admin,
        access_log,
        source: args.config.display().to_string(),
        mesh: None,
        tracing: args.tracing.options("weft-proxy")?,
    };
    runtime(args.workers)?.block_on(async move {
        let mut source = FileSource::new(args.config.clone(), poll)?;
        let config = source
            .load()
            .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
        let proxy = RunningProxy::start(config, opts).await?;
        print_ready(&proxy.listeners(), proxy.admin);
        // Follow the file (changes, SIGHUP) until SIGTERM/SIGINT.
        let (_keep, never) = tokio::sync::watch::channel(false);
        tokio::select! {
            r = wait_for_signal() => r?,
            r = source.run(&proxy, never) => r?,
        }
        tracing::info!(deadline = ?args.drain_timeout, "draining");
        let drained = proxy.shutdown(args.drain_timeout).await;
        tracing::info!(drained, "stopped");
        Ok(())
    })
}

pub(crate) fn validate(path: &std::path::Path) -> anyhow::Result<()> {
    let c =
        weft_model::load_file(path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let summary = format!(
        "{} gateways, {} HTTP routes, {} TCP routes, {} TLS routes, {} services; version {}",
        c.gateways.len(),
        c.routes.len(),
        c.tcp_routes.len(),
        c.tls_routes.len(),
        c.services.len(),
        c.version
    );
    weft_proxy::check(c).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    println!("{}: valid ({summary})", path.display());
    Ok(())
}
