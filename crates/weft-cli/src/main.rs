//! The `weft` binary. Subcommands only wire the library crates together.

/// `println!` for command output that ends quietly when stdout is closed (`| head`).
macro_rules! say {
    ($($t:tt)*) => { $crate::say_line(format_args!($($t)*)) };
}

/// A status line (ready, synced) from a long-running command: a closed stdout must not
/// stop a proxy, so write errors are ignored.
macro_rules! note {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

mod acl;
mod ca;
mod control;
mod demo;
mod demo_mesh;
mod intention;
mod sidecar;
mod yaml_out;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weft_proxy::{source::FileSource, telemetry::access_log::Sink, ProxyOptions, RunningProxy};

#[derive(Parser)]
#[command(name = "weft", version, about = "weft service mesh")]
struct Cli {
    /// Log filter (tracing syntax), e.g. `info` or `weft_proxy=debug`.
    #[arg(long, global = true, default_value = "info", env = "WEFT_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy from a configuration file.
    Proxy(ProxyArgs),
    /// Check a configuration file and exit (0 if valid, 1 with every error otherwise).
    Validate {
        /// The YAML file.
        config: PathBuf,
    },
    /// Run a sample backend that echoes requests (httpbin-like).
    Echo {
        /// Address to listen on (port 0 picks one; the ready line says which).
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// Name reported in `x-echo-name` and in echoed bodies.
        #[arg(long, default_value = "echo")]
        name: String,
        /// Extra delay before every response, e.g. `50ms` (to play a slow instance).
        #[arg(long, default_value = "0ms", value_parser = parse_duration)]
        delay: Duration,
        /// Fraction of requests answered 503, spread evenly (e.g. 0.3: 3 in every 10).
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Requests served at once at most; the rest queue (0: unlimited).
        #[arg(long, default_value_t = 0)]
        max_concurrency: usize,
        /// Answer every request 503 for this long after start, then recover (e.g. `10s`).
        #[arg(long, default_value = "0ms", value_parser = parse_duration)]
        fail_for: Duration,
    },
    /// Run the control plane (catalog, configuration, key/value, discovery).
    Server(control::ServerArgs),
    /// Run a sidecar beside one service instance (registers it, routes its calls).
    Sidecar(Box<sidecar::SidecarArgs>),
    /// Apply resources from a YAML file (all documents or none).
    Apply {
        /// The file (multi-document YAML).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Show what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Wait until every connected proxy has applied the change.
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits before naming the proxies that are behind.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show stored resources: `weft get KIND [NAME]`.
    Get {
        /// Kind (Service, HTTPRoute, ...; case-insensitive, plural accepted).
        kind: String,
        /// Name; all of the kind when absent.
        name: Option<String>,
        /// Output format: yaml or json.
        #[arg(short = 'o', long, default_value = "yaml")]
        output: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Delete a stored resource (refused if others still refer to it).
    Delete {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// Check only.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// The key/value store.
    Kv {
        #[command(subcommand)]
        command: KvCommand,
        #[command(flatten)]
        server: ServerArg,
    },
    /// ACL tokens: `bootstrap` once, then `create`, `list`, `revoke`.
    Acl {
        #[command(subcommand)]
        command: acl::AclCommand,
        #[command(flatten)]
        server: ServerArg,
    },
    /// The mesh CA: its roots, and root rotation.
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Intentions: which service may call which.
    Intention {
        #[command(subcommand)]
        command: IntentionCommand,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Registered services, or the instances of one.
    Catalog {
        /// A service name.
        service: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// The control plane and its proxies: connected, current or behind (and why).
    Status {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Start a local demo: a mesh (control plane, services with sidecars, a caller) and an
    /// edge proxy in front of echo backends.
    Demo {
        /// Proxy port on 127.0.0.1 (falls back to a free port if taken).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// HTTPS port on 127.0.0.1 (falls back to a free port if taken).
        #[arg(long, default_value_t = 8443)]
        tls_port: u16,
        /// Control-plane port on 127.0.0.1 (falls back to a free port if taken).
        #[arg(long, default_value_t = 8500)]
        server_port: u16,
    },
}

/// The control plane to talk to.
#[derive(clap::Args)]
struct ServerArg {
    /// Control-plane URL.
    #[arg(long = "server", env = "WEFT_SERVER", default_value = control::DEFAULT_SERVER, global = true)]
    url: String,
    #[command(flatten)]
    auth: ControlAuth,
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

/// `weft intention` subcommands.
#[derive(Subcommand)]
enum IntentionCommand {
    /// Whether SOURCE may call DESTINATION (optionally: this request), and which
    /// intention decides; exits 2 when denied.
    Check(intention::CheckArgs),
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

#[derive(clap::Args)]
struct ProxyArgs {
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
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// How often to check the config file for changes (`off`: reload on SIGHUP only).
    #[arg(long, default_value = "1s")]
    watch_interval: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    weft_model::duration::parse(s)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match &cli.command {
        Command::Apply { server, .. }
        | Command::Get { server, .. }
        | Command::Delete { server, .. }
        | Command::Kv { server, .. }
        | Command::Acl { server, .. }
        | Command::Ca { server, .. }
        | Command::Intention { server, .. }
        | Command::Catalog { server, .. }
        | Command::Status { server } => {
            server.auth.install();
            // A command typed (or scripted) right after `weft server … &` waits for it
            // (a sidecar does not: it has other servers to try).
            weft_proxy::mesh::control_api::set_startup_grace(Duration::from_secs(3));
        }
        Command::Sidecar(args) => args.auth.install(),
        Command::Proxy(_)
        | Command::Validate { .. }
        | Command::Echo { .. }
        | Command::Server(_)
        | Command::Demo { .. } => {}
    }
    let result = match cli.command {
        Command::Proxy(args) => run_proxy(args),
        Command::Validate { config } => validate(&config),
        Command::Echo {
            listen,
            name,
            delay,
            fail_rate,
            max_concurrency,
            fail_for,
        } => runtime(None).and_then(|rt| {
            rt.block_on(run_echo(
                listen,
                weft_echo::EchoOptions {
                    name,
                    delay,
                    fail_rate: fail_rate.clamp(0.0, 1.0),
                    max_concurrency,
                    fail_for,
                },
            ))
        }),
        Command::Server(args) => {
            runtime(None).and_then(|rt| rt.block_on(control::run_server(args)))
        }
        Command::Sidecar(args) => {
            runtime(Some(args.workers)).and_then(|rt| rt.block_on(sidecar::run(*args)))
        }
        Command::Apply {
            file,
            dry_run,
            wait,
            timeout,
            server,
        } => client(|| control::apply(&server.url, &file, dry_run, wait.then_some(timeout))),
        Command::Get {
            kind,
            name,
            output,
            server,
        } => client(|| control::get(&server.url, &kind, name.as_deref(), &output)),
        Command::Delete {
            kind,
            name,
            dry_run,
            server,
        } => client(|| control::delete(&server.url, &kind, &name, dry_run)),
        Command::Kv { command, server } => client(|| control::kv(&server.url, command)),
        Command::Catalog { service, server } => {
            client(|| control::catalog(&server.url, service.as_deref()))
        }
        Command::Status { server } => client(|| control::status(&server.url)),
        Command::Acl { command, server } => client(|| acl::run(&server.url, command)),
        Command::Ca { command, server } => client(|| ca::run(&server.url, command)),
        Command::Intention {
            command: IntentionCommand::Check(args),
            server,
        } => {
            client(|| async {
                if !intention::check(&server.url, &args).await? {
                    std::process::exit(2); // denied: told on stdout already
                }
                Ok(())
            })
        }
        Command::Demo {
            port,
            tls_port,
            server_port,
        } => runtime(None).and_then(|rt| rt.block_on(demo::run(port, tls_port, server_port))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn say_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if writeln!(std::io::stdout().lock(), "{args}").is_err() {
        std::process::exit(0); // the reader went away: nothing left to say
    }
}

/// Runs one API client command on a small runtime.
fn client<F: std::future::Future<Output = anyhow::Result<()>>>(
    f: impl FnOnce() -> F,
) -> anyhow::Result<()> {
    runtime(Some(1))?.block_on(f())
}

/// The data-path runtime. One worker means a single-threaded scheduler: no work stealing,
/// no cross-thread wake-ups (the admin listener and access log have threads of their own).
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
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

fn validate(path: &std::path::Path) -> anyhow::Result<()> {
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

fn run_proxy(args: ProxyArgs) -> anyhow::Result<()> {
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

/// `--watch-interval`: how often a followed file is checked (`off`: on SIGHUP only).
fn watch_interval(arg: &str) -> anyhow::Result<Option<Duration>> {
    match arg {
        "off" => Ok(None),
        d => Ok(Some(
            parse_duration(d).map_err(|e| anyhow::anyhow!("--watch-interval: {e}"))?,
        )),
    }
}

/// One JSON line on stdout that tests and scripts read to learn the bound addresses.
fn print_ready(listeners: &[(String, SocketAddr)], admin: Option<SocketAddr>) {
    let listeners: serde_json::Map<String, serde_json::Value> = listeners
        .iter()
        .map(|(n, a)| (n.clone(), a.to_string().into()))
        .collect();
    let line = serde_json::json!({ "event": "ready", "listeners": listeners, "admin": admin.map(|a| a.to_string()) });
    println!("{line}");
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}

async fn run_echo(listen: SocketAddr, opts: weft_echo::EchoOptions) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    println!(
        "{}",
        serde_json::json!({ "event": "ready", "address": addr.to_string(), "name": opts.name })
    );
    weft_echo::serve(listener, opts, async {
        let _ = wait_for_signal().await;
    })
    .await;
    Ok(())
}
