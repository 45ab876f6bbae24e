//! Progressive delivery: `Canary`, a rollout of one subset of a service (its new
//! version) in place of another, weight step by weight step, each step judged from the
//! mesh's own live windows by the control plane (docs/progressive-delivery.md).

use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// `Canary`: move a service's traffic from its `stable` subset to its `canary` subset in
/// weighted steps, checking the canary's success rate and latency every `interval`;
/// promote when every step passed, roll back after `threshold` failed checks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanarySpec {
    /// The service whose traffic moves (a `Service` with `subsets`).
    pub service: String,
    /// The subset serving now.
    pub stable: String,
    /// The subset rolled out.
    pub canary: String,
    /// Steps of `stepWeight` percent up to `maxWeight` (a multiple of it)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weight: Option<u32>,
    /// … the last step before promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<u32>,
    /// … or the canary's weights in percent, explicitly (rising, each 1–99… or 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<u32>,
    /// The HTTPRoute the canary writes its weights into (attached to the service), e.g. one
    /// that already splits it by version; default `canary-NAME`. It is rewritten whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Blue/green instead of weighted steps: all traffic stays on stable (blue) while a
    /// copy of every request is mirrored to the canary (green), checked `checks` times;
    /// then all traffic switches to green at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreen>,
    /// Header-first: requests carrying this header go to the canary from the start, and
    /// a first step (weight 0) judges that traffic before any weight moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<CanaryHeader>,
    /// How each step is judged.
    pub analysis: Analysis,
}

/// `Canary.spec.blueGreen`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlueGreen {
    /// Passed checks of the mirrored traffic before the switch (default 3).
    #[serde(default = "three")]
    pub checks: u32,
}

/// `Canary.spec.header`: the request header (exact value) that picks the canary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanaryHeader {
    /// Header name, e.g. `x-canary`.
    pub name: String,
    /// Its exact value, e.g. `always`.
    pub value: String,
}

/// `Canary.spec.analysis`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Analysis {
    /// How often a step is checked, and what each check measures: the traffic since the
    /// previous check, in the proxies' 10-second slots (10 s – 10 min in whole 10 s).
    pub interval: Duration,
    /// Failed checks (over the whole rollout) before it is rolled back (default 3).
    #[serde(default = "three")]
    pub threshold: u32,
    /// The canary's success rate must be at least this (0 < x ≤ 1), e.g. 0.99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// The canary's p99 latency must be at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<Duration>,
    /// Requests an interval needs before it is judged (default 20).
    #[serde(default = "twenty")]
    pub min_requests: u64,
    /// What an interval with fewer than `minRequests` counts as.
    #[serde(default)]
    pub no_data: NoData,
    /// Prometheus queries for teams that want their own measure: each must return one
    /// value within its bounds (none: no data).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prometheus: Vec<PromCheck>,
    /// HTTP gates: each is POSTed a JSON description of what is about to happen, and
    /// anything but a 2xx answer in time counts as a failed check (the step waits an
    /// interval and asks again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
}

/// One Prometheus query of a canary's analysis. In `query`, `{{interval}}` (e.g. `30s`),
/// `{{service}}` and `{{backend}}` (the canary's upstream, `SERVICE#SUBSET`, as weft's
/// route metrics label it) are replaced before it is sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PromCheck {
    /// Its name, in measurements and logs.
    pub name: String,
    /// The Prometheus server, e.g. `http://prometheus:9090`.
    pub url: String,
    /// An instant query returning one value (a scalar, or a vector of one sample).
    pub query: String,
    /// The value must be at least this…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// … and at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// One webhook of a canary's analysis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Webhook {
    /// Its name, in measurements and logs.
    pub name: String,
    /// `http://…` or `https://…` (verified against the system's roots).
    pub url: String,
    /// When it is asked (default `before-step`).
    #[serde(default)]
    pub when: HookWhen,
    /// How long it has to answer (default 5 s, at most 60 s).
    #[serde(default = "five_seconds")]
    pub timeout: Duration,
}

fn five_seconds() -> Duration {
    Duration::from_millis(5000)
}

/// When a webhook is asked.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HookWhen {
    /// Once, before the first step's weight is set.
    BeforeStart,
    /// Before every step's weight is set (the first included).
    #[default]
    BeforeStep,
    /// Before promotion sends the canary all traffic.
    BeforePromotion,
}

impl HookWhen {
    /// As written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            HookWhen::BeforeStart => "before-start",
            HookWhen::BeforeStep => "before-step",
            HookWhen::BeforePromotion => "before-promotion",
        }
    }
}

fn three() -> u32 {
    3
}

fn twenty() -> u64 {
    20
}

/// What a check with too little traffic counts as.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NoData {
    /// Neither passed nor failed: the step waits for traffic (the default).
    #[default]
    Wait,
    /// A failed check.
    Fail,
    /// A passed check.
    Pass,
}

impl NoData {
    /// What a check with no data counts as: None (neither), Some(passed).
    pub fn verdict(self) -> Option<bool> {
        match self {
            NoData::Wait => None,
            NoData::Fail => Some(false),
            NoData::Pass => Some(true),
        }
    }

    /// As written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            NoData::Wait => "wait",
            NoData::Fail => "fail",
            NoData::Pass => "pass",
        }
    }
}

impl CanarySpec {
    /// The route this canary writes (see [`CanarySpec::route`]).
    pub fn route_name(&self, canary: &str) -> String {
        self.route
            .clone()
            .unwrap_or_else(|| format!("canary-{canary}"))
    }

    /// The canary's weight at each step, in percent (validated: rising, reaching
    /// `maxWeight`); promotion then sends it everything.
    pub fn steps(&self) -> Vec<u32> {
        // Blue/green: every check at weight 0 (green gets copies only), then the switch.
        if let Some(bg) = &self.blue_green {
            return vec![0; bg.checks as usize];
        }
        // Header-first: a step at weight 0, where only the header's requests reach it.
        let first = self.header.as_ref().map(|_| 0);
        let weights = if !self.weights.is_empty() {
            self.weights.clone()
        } else {
            match (self.step_weight, self.max_weight) {
                (Some(step), Some(max)) if step > 0 => (1..=max / step).map(|i| i * step).collect(),
                _ => Vec::new(),
            }
        };
        first.into_iter().chain(weights).collect()
    }
}
