//! `weft acl`: bootstrap the first management token, then create, list and revoke
//! tokens. Secrets are printed once, when a token is made.

use serde_json::{json, Value};

use std::time::Duration;

use bytes::Bytes;

/// One JSON call to the API.
async fn api(
    server: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let (v, _) = crate::control::api(
        server,
        method,
        path,
        body,
        "application/json",
        Duration::from_secs(10),
    )
    .await?;
    Ok(v)
}

/// `weft acl` subcommands.
#[derive(clap::Subcommand)]
pub enum AclCommand {
    /// Create the first management token (works once per mesh); prints its secret.
    Bootstrap,
    /// Create a token; prints its secret.
    Create {
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        /// A rule (repeatable): service:NAME:read|write, kv:PREFIX:read|write,
        /// intentions:read|write, operator:read|write.
        #[arg(long = "rule")]
        rules: Vec<String>,
        /// A sidecar's token for SERVICE: service:SERVICE:write and service:*:read.
        #[arg(long)]
        service: Option<String>,
    },
    /// List tokens (accessor ids, descriptions, rules; never secrets).
    List,
    /// Revoke a token by accessor id (its open discovery streams end too).
    Revoke {
        /// The accessor id.
        accessor: String,
    },
}

/// A token's rules, comma-separated.
fn rules_of(v: &Value) -> String {
    v["rules"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn print_token(v: &Value) {
    say!(
        "accessor: {}\nsecret:   {}\nrules:    {}\n",
        v["accessorId"].as_str().unwrap_or("?"),
        v["secretId"].as_str().unwrap_or("(not shown)"),
        rules_of(v)
    );
}

/// Runs one `weft acl` command.
pub async fn run(server: &str, command: AclCommand) -> anyhow::Result<()> {
    match command {
        AclCommand::Bootstrap => {
            let v = api(server, "POST", "/v1/acl/bootstrap", None).await?;
            print_token(&v);
            say!("Keep the secret: it is not stored and cannot be shown again.");
            say!("export WEFT_TOKEN={}", v["secretId"].as_str().unwrap_or(""));
        }
        AclCommand::Create {
            description,
            rules,
            service,
        } => {
            let body = json!({"description": description, "rules": rules, "service": service});
            print_token(&api(server, "POST", "/v1/acl/tokens", Some(&body)).await?);
        }
        AclCommand::List => {
            let v = api(server, "GET", "/v1/acl/tokens", None).await?;
            for t in v["items"].as_array().into_iter().flatten() {
                say!(
                    "{}  {}  [{}]",
                    t["accessorId"].as_str().unwrap_or("?"),
                    t["description"].as_str().unwrap_or(""),
                    rules_of(t)
                );
            }
        }
        AclCommand::Revoke { accessor } => {
            api(
                server,
                "DELETE",
                &format!("/v1/acl/tokens/{}", crate::control::encode(&accessor)),
                None,
            )
            .await?;
            say!("revoked {accessor}");
        }
    }
    Ok(())
}
