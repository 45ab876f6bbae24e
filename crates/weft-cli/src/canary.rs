//! `weft canary`: the rollouts the control plane runs (docs/progressive-delivery.md).

use bytes::Bytes;
use serde_json::Value;

use crate::control::{api, encode, get_json};

/// `weft canary` subcommands.
#[derive(clap::Subcommand)]
pub enum CanaryCommand {
    /// Every canary, or one with the table of every measurement taken.
    Status {
        /// A Canary's name.
        name: Option<String>,
        /// `table` (default) or `json`.
        #[arg(short, long, default_value = "table")]
        output: String,
    },
    /// Send all traffic to the canary now.
    Promote {
        /// The Canary.
        name: String,
    },
    /// Hold the canary at its weight (no checks) until `resume`.
    Pause {
        /// The Canary.
        name: String,
    },
    /// Carry on a paused rollout at the same step.
    Resume {
        /// The Canary.
        name: String,
    },
    /// Send all traffic back to the stable subset now.
    Abort {
        /// The Canary.
        name: String,
    },
}

/// Runs one `weft canary` command.
pub async fn run(server: &str, cmd: CanaryCommand) -> anyhow::Result<()> {
    let (action, name) = match cmd {
        CanaryCommand::Status { name, output } => return status(server, name, &output).await,
        CanaryCommand::Promote { name } => ("promote", name),
        CanaryCommand::Pause { name } => ("pause", name),
        CanaryCommand::Resume { name } => ("resume", name),
        CanaryCommand::Abort { name } => ("abort", name),
    };
    api(
        server,
        "POST",
        &format!("/v1/canaries/{}/{action}", encode(&name)),
        Bytes::new(),
        "application/json",
        std::time::Duration::from_secs(10),
    )
    .await?;
    say!("{action} requested for canary {name}: the leader carries it out within a second");
    Ok(())
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("–".into(), |x| format!("{:.2}%", x * 100.0))
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |x| format!("{x:.1} ms"))
}

async fn status(server: &str, name: Option<String>, output: &str) -> anyhow::Result<()> {
    let Some(name) = name else {
        let v = get_json(server, "/v1/canaries").await?;
        if output == "json" {
            say!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        say!(
            "{:<24} {:<16} {:<12} {:>7} {:>6}  REASON",
            "NAME",
            "SERVICE",
            "PHASE",
            "WEIGHT",
            "FAILED"
        );
        for c in v["items"].as_array().into_iter().flatten() {
            say!(
                "{:<24} {:<16} {:<12} {:>6}% {:>6}  {}",
                c["name"].as_str().unwrap_or_default(),
                c["service"].as_str().unwrap_or_default(),
                c["phase"].as_str().unwrap_or_default(),
                c["weight"].as_u64().unwrap_or(0),
                c["failedChecks"].as_u64().unwrap_or(0),
                c["reason"].as_str().unwrap_or_default()
            );
        }
        return Ok(());
    };
    let c = get_json(server, &format!("/v1/canaries/{}", encode(&name))).await?;
    if output == "json" {
        say!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(());
    }
    let steps: Vec<String> = c["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| format!("{}%", s.as_u64().unwrap_or(0)))
        .collect();
    say!(
        "canary {name}: service {} — {} → {}",
        c["service"].as_str().unwrap_or_default(),
        c["stable"].as_str().unwrap_or_default(),
        c["canary"].as_str().unwrap_or_default()
    );
    say!(
        "phase {}, canary weight {}%, step {} of [{}], failed checks {} of {}, every {}",
        c["phase"].as_str().unwrap_or_default(),
        c["weight"].as_u64().unwrap_or(0),
        (c["step"].as_u64().unwrap_or(0) + 1).min(steps.len().max(1) as u64),
        steps.join(", "),
        c["failedChecks"].as_u64().unwrap_or(0),
        c["threshold"].as_u64().unwrap_or(0),
        c["interval"].as_str().unwrap_or_default()
    );
    if let Some(r) = c["reason"].as_str() {
        say!("reason: {r}");
    }
    say!(
        "\n{:<12} {:>6} {:>9} {:>9} {:>10}  {:<7} WHY",
        "TIME",
        "WEIGHT",
        "REQUESTS",
        "SUCCESS",
        "P99",
        "VERDICT"
    );
    for m in c["measurements"].as_array().into_iter().flatten() {
        let at = m["atMs"].as_u64().unwrap_or(0);
        let secs = at / 1000;
        say!(
            "{:02}:{:02}:{:02}.{:03} {:>5}% {:>9} {:>9} {:>10}  {:<7} {}",
            (secs / 3600) % 24,
            (secs / 60) % 60,
            secs % 60,
            at % 1000,
            m["weight"].as_u64().unwrap_or(0),
            m["requests"].as_u64().unwrap_or(0),
            pct(&m["successRate"]),
            ms(&m["p99Ms"]),
            m["verdict"].as_str().unwrap_or_default(),
            m["why"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}
