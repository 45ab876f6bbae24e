//! `weft ca roots` and `weft ca rotate`: the mesh CA's trust bundle, and root rotation.

use serde_json::Value;

/// `weft ca` subcommands.
#[derive(clap::Subcommand)]
pub enum CaCommand {
    /// The trust bundle: trust domain, roots (which one signs, which are retired).
    Roots {
        /// Print the root certificates as PEM (e.g. to give to clients).
        #[arg(long)]
        pem: bool,
    },
    /// Rotate the root: a new root signs from now on; the old one stays trusted until
    /// the certificates it signed have expired, then leaves the bundle. The new root is
    /// generated, or the operator's (--ca-cert/--ca-key, with --ca-roots above an
    /// intermediate).
    Rotate {
        /// Rotate to this CA certificate (a root, or an intermediate with --ca-roots). PEM.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<std::path::PathBuf>,
        /// Its private key (PEM; must not be readable by group or others). It is sent to
        /// the control plane over its TLS connection and stored there like a generated
        /// root's key.
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<std::path::PathBuf>,
        /// The root(s) above an intermediate --ca-cert. PEM.
        #[arg(long, requires = "ca_cert")]
        ca_roots: Option<std::path::PathBuf>,
    },
}

fn print_bundle(v: &Value) {
    say!("trust domain: {}", v["trustDomain"].as_str().unwrap_or("?"));
    for r in v["roots"].as_array().into_iter().flatten() {
        let id = r["id"].as_str().unwrap_or("?");
        let state = if Some(id) == v["active"].as_str() {
            "active (signs new certificates)".to_string()
        } else {
            match r["retired"].as_u64() {
                Some(t) => format!("retired at {t} (trusted until its certificates expire)"),
                None => "trusted".to_string(),
            }
        };
        say!("root {id}: {state}");
    }
}

/// Runs one `weft ca` command.
pub async fn run(server: &str, command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Roots { pem } => {
            let v = crate::control::get_json(server, "/v1/ca/roots").await?;
            if pem {
                for r in v["roots"].as_array().into_iter().flatten() {
                    say!("{}", r["certificate"].as_str().unwrap_or("").trim_end());
                }
            } else {
                print_bundle(&v);
            }
        }
        CaCommand::Rotate {
            ca_cert,
            ca_key,
            ca_roots,
        } => {
            let body = match crate::server::provided_ca(ca_cert, ca_key, ca_roots)? {
                None => bytes::Bytes::new(),
                Some(p) => {
                    serde_json::json!({"certificate": p.cert, "key": p.key, "roots": p.roots})
                        .to_string()
                        .into()
                }
            };
            let (v, _) = crate::control::api(
                server,
                "POST",
                "/v1/ca/rotate",
                body,
                "application/json",
                std::time::Duration::from_secs(30),
            )
            .await?;
            print_bundle(&v);
        }
    }
    Ok(())
}
