//! The canary controller (docs/progressive-delivery.md): on the elected leader only, every
//! second, each `Canary` moves one step of its rollout forward. It lives beside the API
//! because it asks the same things the API does: the proxies' windows through every
//! replica (live.rs), and a token to ask the peers with (acl.rs).
//!
//! ```text
//! progressing: write the route (stable 100-w / canary w, through config::apply, as
//!              `weft apply` does) → wait until every proxy is current at its revision
//!              → every `interval`: measure the canary subset's traffic over that
//!              interval (every caller's route window for SERVICE#CANARY, from every
//!              replica) → pass: next step (after the last: promoted, 100% canary)
//!                           fail: one more failed check (at `threshold`: rolled back,
//!                                 100% stable at once, and why)
//!                           too few requests: what `noData` says (wait, fail, pass)
//! paused:      the weight stays; resume carries on at the same step
//! ```
//!
//! The rollout's state is in the store (`/weft/canary/NAME`), written after every
//! decision with a compare-and-swap, so a restart or a new leader resumes at the same step
//! and never repeats a check it recorded. Operators' commands (`weft canary promote`,
//! …) are written into that state by any replica and carried out by the leader.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use weft_model::{CanarySpec, HookWhen, Resource};

use super::context::Api;
use crate::error::ApiError;
use crate::store::{self, Compare, Op, Txn};

/// Where rollouts keep their state.
pub const PREFIX: &str = "/weft/canary/";
/// How often the leader looks at every canary.
const TICK: Duration = Duration::from_secs(1);
/// Measurements kept per rollout (the oldest go first).
const MAX_MEASUREMENTS: usize = 500;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Stepping through the weights.
    #[default]
    Progressing,
    /// Held at its weight by an operator.
    Paused,
    /// Every step passed (or an operator promoted it): the canary takes all traffic.
    Promoted,
    /// Too many checks failed: all traffic back on stable.
    RolledBack,
    /// An operator aborted it: all traffic back on stable.
    Aborted,
}

impl Phase {
    /// As the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled-back",
            Phase::Aborted => "aborted",
        }
    }

    fn done(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack | Phase::Aborted)
    }
}

/// One check: what was measured and what it decided.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The canary's weight during the interval.
    pub weight: u32,
    /// Requests to the canary in the interval.
    pub requests: u64,
    /// Their success rate (none without requests).
    pub success_rate: Option<f64>,
    /// Their p99 latency in ms.
    pub p99_ms: Option<f64>,
    /// `pass`, `fail` or `wait` (too little traffic, `noData: wait`).
    pub verdict: String,
    /// Why, with the numbers.
    pub why: String,
}

/// A rollout's state (stored as JSON under [`PREFIX`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Rollout {
    /// The spec this rollout runs (its JSON's hash): a changed spec starts over.
    pub spec_version: String,
    /// Where it is.
    pub phase: Phase,
    /// Index into the steps (`steps.len()`: promoted).
    pub step: usize,
    /// The canary's weight the route has now (percent).
    pub weight: u32,
    /// The store revision of the last route write (0: none yet).
    pub route_revision: u64,
    /// When every proxy was current at `route_revision` (Unix ms).
    pub converged_ms: Option<u64>,
    /// When the next check is due (Unix ms).
    pub next_check_ms: Option<u64>,
    /// After a webhook refused a step: when to ask again (Unix ms).
    pub gate_retry_ms: Option<u64>,
    /// Failed checks so far.
    pub failed_checks: u32,
    /// Every check, oldest first.
    pub measurements: Vec<Measurement>,
    /// Why it ended (or paused), for a person.
    pub reason: Option<String>,
    /// Started and last changed (Unix ms).
    pub started_ms: u64,
    /// Last changed.
    pub updated_ms: u64,
    /// An operator's command not carried out yet: promote, pause, resume or abort.
    pub command: Option<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The store key of a rollout.
pub fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// A rollout as stored, and its mod revision (0: none).
pub async fn load(api: &Api, name: &str) -> Result<(Option<Rollout>, u64), ApiError> {
    let (kv, _) = store::get(&*api.store, &key(name)).await?;
    Ok(match kv {
        Some(kv) => (serde_json::from_slice(&kv.value).ok(), kv.mod_revision),
        None => (None, 0),
    })
}

/// Writes `r` if the stored one is still at `seen` (0: absent); false when it moved.
pub async fn save(api: &Api, name: &str, r: &Rollout, seen: u64) -> Result<bool, ApiError> {
    let value = serde_json::to_vec(r).map_err(|e| ApiError::internal(e.to_string()))?;
    let k = key(name);
    let out = api
        .store
        .txn(Txn {
            compares: vec![Compare {
                key: k.clone(),
                mod_revision: seen,
            }],
            ops: vec![Op::Put {
                key: k,
                value,
                lease: None,
            }],
        })
        .await?;
    Ok(out.succeeded)
}

/// The canaries applied, by name.
fn canaries(api: &Api) -> Vec<(Resource<CanarySpec>, String)> {
    api.state
        .read()
        .canaries()
        .into_iter()
        .filter_map(|json| {
            let r: Resource<CanarySpec> = serde_json::from_str(&json)
                .map_err(|e| tracing::warn!(error = %e, "unreadable Canary"))
                .ok()?;
            Some((r, version_of(&json)))
        })
        .collect()
}

fn version_of(json: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    json.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Runs the controller until the server stops.
pub async fn run(api: Api) {
    let mut headers = HeaderMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        if !api.leadership.is_leader() {
            continue;
        }
        let live: Vec<_> = canaries(&api);
        let names: BTreeSet<String> = live.iter().map(|(r, _)| r.metadata.name.clone()).collect();
        if live.is_empty() {
            forget_deleted(&api, &names).await;
            continue;
        }
        // Peers answer the leader's questions only with a token: it makes itself one
        // (operator:read) the first time it needs to ask one.
        let has_peers = api
            .peer_replicas()
            .await
            .map(|(peers, _)| !peers.is_empty())
            .unwrap_or(false);
        if api.auth.enabled() && headers.is_empty() && has_peers {
            match own_token(&api).await {
                Ok(secret) => {
                    if let Ok(v) = HeaderValue::from_str(&secret) {
                        headers.insert("x-weft-token", v);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e.message, "canary controller: no token yet");
                    continue;
                }
            }
        }
        for (canary, version) in live {
            let name = canary.metadata.name.clone();
            if let Err(e) = step(&api, &canary, &version, &headers).await {
                tracing::warn!(canary = %name, error = %e.message, "canary step failed; trying again");
            }
        }
        forget_deleted(&api, &names).await;
    }
}

/// A token for the leader's questions to its peers.
async fn own_token(api: &Api) -> Result<String, ApiError> {
    let description = format!("canary controller on {}", api.advertise);
    // The one this replica made before (an earlier process) goes: one token per replica.
    let stale = api.state.read().tokens_described(&description);
    let (token, secret) = super::acl::mint(description, vec!["operator:read".into()])?;
    let mut ops = vec![super::acl::put_token(&token)?];
    ops.extend(stale.into_iter().map(|hash| Op::Delete {
        key: format!("{}{hash}", crate::acl::TOKENS),
    }));
    api.store
        .txn(Txn {
            compares: Vec::new(),
            ops,
        })
        .await?;
    // Until this replica's view has it, peers may not either: wait for the watch.
    for _ in 0..50 {
        if api.state.read().token(&token.secret_hash).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(secret)
}

/// Rollouts whose Canary was deleted are forgotten (the route stays as it was).
async fn forget_deleted(api: &Api, live: &BTreeSet<String>) {
    let Ok(all) = store::list_all(&*api.store, PREFIX).await else {
        return;
    };
    for kv in all.kvs {
        let Some(name) = kv.key.strip_prefix(PREFIX) else {
            continue;
        };
        if !live.contains(name) {
            let _ = api
                .store
                .txn(Txn {
                    compares: vec![Compare {
                        key: kv.key.clone(),
                        mod_revision: kv.mod_revision,
                    }],
                    ops: vec![Op::Delete {
                        key: kv.key.clone(),
                    }],
                })
                .await;
        }
    }
}

/// One look at one canary: at most one decision, saved before anything else happens.
async fn step(
    api: &Api,
    canary: &Resource<CanarySpec>,
    version: &str,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let name = &canary.metadata.name;
    let spec = &canary.spec;
    let (stored, seen) = load(api, name).await?;
    let now = now_ms();
    let mut r = match stored {
        Some(r) if r.spec_version == version => r,
        _ => Rollout {
            spec_version: version.to_string(),
            started_ms: now,
            ..Rollout::default()
        },
    };
    let before = r.clone();
    let steps = spec.steps();
    if let Some(cmd) = r.command.take() {
        command(api, canary, &mut r, &cmd).await?;
    } else if r.phase == Phase::Progressing {
        progress(api, canary, &steps, &mut r, headers).await?;
    }
    if r != before {
        r.updated_ms = now;
        if r.measurements.len() > MAX_MEASUREMENTS {
            let extra = r.measurements.len() - MAX_MEASUREMENTS;
            r.measurements.drain(..extra);
        }
        if !save(api, name, &r, seen).await? {
            // An operator's command came in meanwhile: the next tick starts from it.
            tracing::debug!(canary = %name, "rollout state moved; looking again");
        }
    }
    Ok(())
}

/// Carries out an operator's command.
async fn command(
    api: &Api,
    canary: &Resource<CanarySpec>,
    r: &mut Rollout,
    cmd: &str,
) -> Result<(), ApiError> {
    match (cmd, r.phase) {
        (_, p) if p.done() => {}
        ("pause", Phase::Progressing) => {
            r.phase = Phase::Paused;
            r.reason = Some("paused by an operator".into());
            tracing::info!(canary = %canary.metadata.name, weight = r.weight, "canary paused");
        }
        ("resume", Phase::Paused) => {
            r.phase = Phase::Progressing;
            r.reason = None;
            // The interval counts again from now: a paused period is not measured.
            r.next_check_ms = Some(now_ms() + interval_ms(&canary.spec));
            tracing::info!(canary = %canary.metadata.name, "canary resumed");
        }
        ("promote", _) => {
            r.step = canary.spec.steps().len();
            finish(api, canary, r, Phase::Promoted, "promoted by an operator").await?;
        }
        ("abort", _) => {
            finish(api, canary, r, Phase::Aborted, "aborted by an operator").await?;
        }
        _ => {}
    }
    Ok(())
}

fn interval_ms(spec: &CanarySpec) -> u64 {
    spec.analysis.interval.get().as_millis() as u64
}

/// Ends a rollout: all traffic to the canary (promoted) or back to stable.
async fn finish(
    api: &Api,
    canary: &Resource<CanarySpec>,
    r: &mut Rollout,
    phase: Phase,
    why: &str,
) -> Result<(), ApiError> {
    let weight = if phase == Phase::Promoted { 100 } else { 0 };
    // Finished: no header rule, no mirror (all traffic on one side).
    r.route_revision = write_route(api, canary, weight, false).await?;
    r.weight = weight;
    r.phase = phase;
    let m = &api.sessions.metrics;
    m.canary_weight(&canary.metadata.name, weight);
    m.canary_ended(&canary.metadata.name, phase.as_str());
    r.reason = Some(why.to_string());
    r.next_check_ms = None;
    tracing::info!(canary = %canary.metadata.name, phase = ?phase, reason = why, "canary finished");
    Ok(())
}

/// Moves a progressing rollout on by at most one decision.
async fn progress(
    api: &Api,
    canary: &Resource<CanarySpec>,
    steps: &[u32],
    r: &mut Rollout,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let spec = &canary.spec;
    let want = steps.get(r.step).copied().unwrap_or(100);
    if r.step >= steps.len() {
        if !gates(api, canary, r, &[HookWhen::BeforePromotion], 100).await? {
            return Ok(());
        }
        return finish(api, canary, r, Phase::Promoted, "every step passed").await;
    }
    if r.route_revision == 0 || r.weight != want {
        let when: &[HookWhen] = if r.route_revision == 0 {
            &[HookWhen::BeforeStart, HookWhen::BeforeStep]
        } else {
            &[HookWhen::BeforeStep]
        };
        if !gates(api, canary, r, when, want).await? {
            return Ok(());
        }
        r.route_revision = write_route(api, canary, want, true).await?;
        r.weight = want;
        api.sessions
            .metrics
            .canary_weight(&canary.metadata.name, want);
        r.converged_ms = None;
        r.next_check_ms = None;
        tracing::info!(canary = %canary.metadata.name, weight = want, "canary step");
        return Ok(());
    }
    let now = now_ms();
    if r.converged_ms.is_none() {
        if converged(api, r.route_revision, headers).await? {
            r.converged_ms = Some(now);
            r.next_check_ms = Some(now + interval_ms(spec));
        }
        return Ok(());
    }
    if r.next_check_ms.is_some_and(|due| now < due) {
        return Ok(());
    }
    let a = &spec.analysis;
    let seconds = a.interval.get().as_secs().clamp(1, 600) as u32;
    let backend = weft_model::subset_key(&spec.service, &spec.canary);
    let (requests, successes, p99_ms) = if spec.blue_green.is_some() {
        // Green gets copies only: judge what its instances received.
        let green = api
            .state
            .read()
            .subset_instances(&spec.service, &spec.canary);
        super::live::received_totals(api, seconds, &green, headers).await?
    } else {
        super::live::backend_totals(api, seconds, &backend, headers).await?
    };
    let success_rate = (requests > 0).then(|| successes as f64 / requests as f64);
    let mut m = Measurement {
        at_ms: now,
        weight: r.weight,
        requests,
        success_rate,
        p99_ms,
        verdict: String::new(),
        why: String::new(),
    };
    let pass = if requests < a.min_requests {
        let why = format!(
            "{requests} requests in the last {seconds}s, fewer than minRequests {}: noData {}",
            a.min_requests,
            a.no_data.as_str()
        );
        m.why = why;
        a.no_data.verdict()
    } else {
        let mut problems = Vec::new();
        let mut fine = Vec::new();
        if let (Some(min), Some(rate)) = (a.success_rate, success_rate) {
            let line = format!(
                "success rate {:.2}% (min {:.2}%)",
                rate * 100.0,
                min * 100.0
            );
            if rate < min {
                problems.push(line)
            } else {
                fine.push(line)
            }
        }
        if let Some(max) = a.p99 {
            let max_ms = max.get().as_secs_f64() * 1e3;
            match p99_ms {
                Some(p) if p > max_ms => {
                    problems.push(format!("p99 {p:.1} ms (max {max_ms:.0} ms)"))
                }
                Some(p) => fine.push(format!("p99 {p:.1} ms (max {max_ms:.0} ms)")),
                None => {}
            }
        }
        // The team's own measures, asked of their Prometheus.
        let mut empty = Vec::new();
        for q in &a.prometheus {
            let query = q
                .query
                .replace("{{interval}}", &format!("{seconds}s"))
                .replace("{{service}}", &spec.service)
                .replace("{{backend}}", &backend);
            match prometheus_value(&q.url, &query).await {
                Ok(None) => empty.push(q.name.clone()),
                Ok(Some(v)) => {
                    let low = q.min.filter(|min| v < *min);
                    let high = q.max.filter(|max| v > *max);
                    let bounds = match (q.min, q.max) {
                        (Some(lo), Some(hi)) => format!("{lo}..{hi}"),
                        (Some(lo), None) => format!("min {lo}"),
                        (None, Some(hi)) => format!("max {hi}"),
                        (None, None) => String::new(),
                    };
                    let line = format!("{} {v} ({bounds})", q.name);
                    if low.is_some() || high.is_some() {
                        problems.push(line)
                    } else {
                        fine.push(line)
                    }
                }
                Err(e) => problems.push(format!("prometheus {}: {e}", q.name)),
            }
        }
        if problems.is_empty() && !empty.is_empty() {
            m.why = format!(
                "prometheus {} returned no value: noData {}",
                empty.join(", "),
                a.no_data.as_str()
            );
            a.no_data.verdict()
        } else {
            m.why = if problems.is_empty() {
                fine.join(", ")
            } else {
                problems.join(", ")
            };
            Some(problems.is_empty())
        }
    };
    m.verdict = match pass {
        None => "wait",
        Some(true) => "pass",
        Some(false) => "fail",
    }
    .into();
    tracing::info!(canary = %canary.metadata.name, weight = r.weight, requests, verdict = %m.verdict, why = %m.why, "canary check");
    api.sessions
        .metrics
        .canary_check(&canary.metadata.name, &m.verdict);
    r.measurements.push(m.clone());
    r.next_check_ms = Some(now + interval_ms(spec));
    match pass {
        None => {}
        // The next look writes the next weight (or promotes), past its gates.
        Some(true) => r.step += 1,
        Some(false) => failed(api, canary, r, &m.why).await?,
    }
    Ok(())
}

/// How long a Prometheus query may take.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(10);

/// The one value an instant query returns (None: no sample, or NaN).
async fn prometheus_value(url: &str, query: &str) -> Result<Option<f64>, String> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = crate::webhook::get(
        &format!("{}/api/v1/query?query={encoded}", url.trim_end_matches('/')),
        PROMETHEUS_TIMEOUT,
    )
    .await?;
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("not a Prometheus answer: {e}"))?;
    if v["status"] != "success" {
        return Err(v["error"]
            .as_str()
            .unwrap_or("the query failed")
            .to_string());
    }
    let sample = match v["data"]["resultType"].as_str() {
        Some("scalar") => v["data"]["result"][1].clone(),
        Some("vector") => match v["data"]["result"].as_array().map(Vec::as_slice) {
            None | Some([]) => return Ok(None),
            Some([one]) => one["value"][1].clone(),
            Some(many) => {
                return Err(format!(
                    "returned {} series: a check needs one value (aggregate it, e.g. sum(…))",
                    many.len()
                ))
            }
        },
        other => {
            return Err(format!(
                "returned a {}, not one value",
                other.unwrap_or("?")
            ))
        }
    };
    let value: f64 = sample
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("an unreadable sample: {sample}"))?;
    Ok((!value.is_nan()).then_some(value))
}

/// One more failed check; at the threshold, the rollback.
async fn failed(
    api: &Api,
    canary: &Resource<CanarySpec>,
    r: &mut Rollout,
    why: &str,
) -> Result<(), ApiError> {
    let threshold = canary.spec.analysis.threshold;
    r.failed_checks += 1;
    if r.failed_checks >= threshold {
        let why = format!(
            "{} failed checks (threshold {threshold}); last: {why}",
            r.failed_checks
        );
        finish(api, canary, r, Phase::RolledBack, &why).await?;
    }
    Ok(())
}

/// Asks the webhooks for `when` before the canary's weight becomes `weight`: true when
/// every one said yes (or there are none). A refusal is a failed check, recorded; the
/// gate is asked again an interval later.
async fn gates(
    api: &Api,
    canary: &Resource<CanarySpec>,
    r: &mut Rollout,
    when: &[HookWhen],
    weight: u32,
) -> Result<bool, ApiError> {
    let spec = &canary.spec;
    let hooks: Vec<_> = spec
        .analysis
        .webhooks
        .iter()
        .filter(|h| when.contains(&h.when))
        .collect();
    if hooks.is_empty() {
        return Ok(true);
    }
    let now = now_ms();
    if r.gate_retry_ms.is_some_and(|at| now < at) {
        return Ok(false);
    }
    for h in hooks {
        let body = serde_json::json!({
            "canary": canary.metadata.name,
            "service": spec.service,
            "stable": spec.stable,
            "canarySubset": spec.canary,
            "hook": h.when.as_str(),
            "step": r.step,
            "weight": r.weight,
            "nextWeight": weight,
            "failedChecks": r.failed_checks,
        })
        .to_string();
        if let Err(e) = crate::webhook::post(&h.url, body, h.timeout.get()).await {
            let why = format!("webhook {} ({}): {e}", h.name, h.when.as_str());
            tracing::info!(canary = %canary.metadata.name, %why, "canary gate refused");
            api.sessions
                .metrics
                .canary_check(&canary.metadata.name, "fail");
            r.measurements.push(Measurement {
                at_ms: now,
                weight: r.weight,
                requests: 0,
                success_rate: None,
                p99_ms: None,
                verdict: "fail".into(),
                why: why.clone(),
            });
            r.gate_retry_ms = Some(now + interval_ms(spec));
            failed(api, canary, r, &why).await?;
            return Ok(false);
        }
    }
    r.gate_retry_ms = None;
    Ok(true)
}

/// Writes the canary's route (stable `100 - weight`, canary `weight`; while the rollout
/// runs (`with_extras`), the header rule first, or blue/green's mirror to the canary)
/// through the same path as `weft apply`; its store revision.
async fn write_route(
    api: &Api,
    canary: &Resource<CanarySpec>,
    weight: u32,
    with_extras: bool,
) -> Result<u64, ApiError> {
    let s = &canary.spec;
    // Header-first: a rule before the weighted one sends the header's requests to the
    // canary, until the rollout ends (back on stable: the rule goes too).
    let header_rule = match &s.header {
        Some(h) if with_extras => serde_json::json!({
            "matches": [{"headers": [{"name": h.name, "value": h.value}]}],
            "backendRefs": [{"name": s.service, "subset": s.canary, "weight": 1}],
        })
        .to_string(),
        _ => String::new(),
    };
    let mut weighted = serde_json::json!({
        "backendRefs": [
            {"name": s.service, "subset": s.stable, "weight": 100 - weight.min(100)},
            {"name": s.service, "subset": s.canary, "weight": weight},
        ],
    });
    // Blue/green while it runs: every request also copied to green.
    if s.blue_green.is_some() && with_extras {
        weighted["filters"] = serde_json::json!([{
            "type": "RequestMirror",
            "requestMirror": {"backendRef": {"name": s.service, "subset": s.canary}, "percent": 100},
        }]);
    }
    let weighted = weighted.to_string();
    let rules = [header_rule, weighted]
        .into_iter()
        .filter(|r| !r.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "kind: HTTPRoute\nmetadata: {{name: {route}}}\nspec:\n  parentRefs: [{{kind: Service, name: {svc}}}]\n  rules: [{rules}]\n",
        route = s.route_name(&canary.metadata.name),
        svc = s.service,
    );
    let registered = api.state.read().services().into_keys().collect();
    let outcome = crate::config::apply(
        &*api.store,
        &format!("Canary/{}", canary.metadata.name),
        &text,
        false,
        &registered,
    )
    .await?;
    Ok(outcome.revision)
}

/// Whether every proxy (of every replica) is current at `revision` (a replica that
/// cannot be asked counts as not yet).
async fn converged(api: &Api, revision: u64, headers: &HeaderMap) -> Result<bool, ApiError> {
    let token = crate::authn::secret_of(headers).map(str::to_string);
    let (items, unreachable) = super::proxies::every_proxy(api, revision, token, false).await?;
    if !unreachable.is_empty() {
        tracing::debug!(?unreachable, "canary: a replica did not say");
    }
    Ok(unreachable.is_empty() && items.iter().all(|p| p["current"] == true))
}

/// The rollouts as the API shows them: every canary applied (or only `only`), with its
/// state (none until the leader first looked at it under its current spec).
pub async fn statuses(
    api: &Api,
    only: Option<&str>,
) -> Result<HashMap<String, (CanarySpec, Option<Rollout>)>, ApiError> {
    let mut out = HashMap::new();
    for (c, version) in canaries(api)
        .into_iter()
        .filter(|(c, _)| only.is_none_or(|o| o == c.metadata.name))
    {
        let (r, _) = load(api, &c.metadata.name).await?;
        let r = r.filter(|r| r.spec_version == version);
        out.insert(c.metadata.name, (c.spec, r));
    }
    Ok(out)
}
