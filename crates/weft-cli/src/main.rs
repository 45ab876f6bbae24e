//! The `weft` binary. Subcommands only wire the library crates together.

/// `println!` for command output that ends quietly when stdout is closed (`| head`).
macro_rules! say {
    ($($t:tt)*) => { $crate::process::say_line(format_args!($($t)*)) };
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
mod canary;
mod control;
mod demo;
mod demo_mesh;
mod echo;
mod intention;
mod live;
mod process;
mod proxy;
mod server;
mod sidecar;
mod yaml_out;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use control::{KvCommand, ServerArg};
use process::{client, runtime};

/// mimalloc instead of glibc's malloc: 5–6% fewer instructions per proxied request, for
/// ~0.5 MB more of an idle proxy's own memory (docs/benchmarks.md, "The allocator").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Proxy(proxy::ProxyArgs),
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
        #[arg(long, default_value = "0ms", value_parser = crate::process::parse_duration)]
        delay: Duration,
        /// Fraction of requests answered 503, spread evenly (e.g. 0.3: 3 in every 10).
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Requests served at once at most; the rest queue (0: unlimited).
        #[arg(long, default_value_t = 0)]
        max_concurrency: usize,
        /// Answer every request 503 for this long after start, then recover (e.g. `10s`).
        #[arg(long, default_value = "0ms", value_parser = crate::process::parse_duration)]
        fail_for: Duration,
        /// Call this URL for every echoed request, passing on trace headers and
        /// x-request-id as an instrumented app does (a service with a dependency).
        #[arg(long)]
        call: Option<String>,
    },
    /// Run the control plane (catalog, configuration, key/value, discovery).
    Server(server::ServerArgs),
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
        #[arg(long, default_value = "30s", value_parser = crate::process::parse_duration)]
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
    /// Canary rollouts the control plane runs: status, promote, pause, resume, abort.
    Canary {
        #[command(subcommand)]
        command: canary::CanaryCommand,
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
    /// Live traffic per service (success rate, requests per second, latency), answered
    /// by the proxies themselves.
    Stat {
        /// Services to show.
        services: Vec<String>,
        /// Every service.
        #[arg(long)]
        all: bool,
        /// The window: 10s, 1m or 10m.
        #[arg(long, default_value = "1m")]
        window: String,
        /// Only traffic from this calling service.
        #[arg(long)]
        from: Option<String>,
        /// table, wide or json.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: live::Output,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Every caller → callee pair (of SERVICE, when given) with identities, mTLS, success
    /// rate and requests per second.
    Edges {
        /// A service: only its edges, in and out.
        service: Option<String>,
        /// The window: 10s, 1m or 10m.
        #[arg(long, default_value = "1m")]
        window: String,
        /// table, wide or json.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: live::Output,
        #[command(flatten)]
        server: ServerArg,
    },
    /// A service's requests as they happen (needs a token with `tap:SERVICE:read`).
    Tap {
        #[command(flatten)]
        args: live::TapArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// A live view of a service's busiest paths, redrawn every second (q quits).
    Top {
        /// The service whose proxies to watch.
        service: String,
        #[command(flatten)]
        filter: live::TapFilter,
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
        #[command(flatten)]
        tracing: proxy::TracingArgs,
    },
}

/// `weft intention` subcommands.
#[derive(Subcommand)]
enum IntentionCommand {
    /// Whether SOURCE may call DESTINATION (optionally: this request), and which
    /// intention decides; exits 2 when denied.
    Check(intention::CheckArgs),
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
        | Command::Canary { server, .. }
        | Command::Intention { server, .. }
        | Command::Catalog { server, .. }
        | Command::Stat { server, .. }
        | Command::Edges { server, .. }
        | Command::Tap { server, .. }
        | Command::Top { server, .. }
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
        Command::Proxy(args) => proxy::run(args),
        Command::Validate { config } => proxy::validate(&config),
        Command::Echo {
            listen,
            name,
            delay,
            fail_rate,
            max_concurrency,
            fail_for,
            call,
        } => runtime(None).and_then(|rt| {
            rt.block_on(echo::run(
                listen,
                weft_echo::EchoOptions {
                    name,
                    delay,
                    fail_rate: fail_rate.clamp(0.0, 1.0),
                    max_concurrency,
                    fail_for,
                    call,
                },
            ))
        }),
        Command::Server(args) => runtime(None).and_then(|rt| rt.block_on(server::run(args))),
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
        Command::Stat {
            services,
            all,
            window,
            from,
            output,
            server,
        } => client(|| {
            live::stat(
                &server.url,
                &services,
                all,
                &window,
                from.as_deref(),
                output,
            )
        }),
        Command::Edges {
            service,
            window,
            output,
            server,
        } => client(|| live::edges(&server.url, service.as_deref(), &window, output)),
        Command::Tap { args, server } => client(|| live::tap(&server.url, args)),
        Command::Top {
            service,
            filter,
            server,
        } => client(|| live::top(&server.url, &service, filter)),
        Command::Acl { command, server } => client(|| acl::run(&server.url, command)),
        Command::Ca { command, server } => client(|| ca::run(&server.url, command)),
        Command::Canary { command, server } => client(|| canary::run(&server.url, command)),
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
            tracing,
        } => tracing
            .options("weft-demo")
            .and_then(|otlp| runtime(None)?.block_on(demo::run(port, tls_port, server_port, otlp))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
