//! The control plane's own metrics, served at `GET /metrics` (OpenMetrics text).
//!
//! | metric | what |
//! | --- | --- |
//! | `weft_control_proxies` | discovery streams connected to this server |
//! | `weft_control_revision` | the store revision this server's view reflects |
//! | `weft_control_leader` | 1 while this replica is the elected leader, else 0 |
//! | `weft_control_updates_total{result}` | updates `sent`, `acked`, `nacked` |
//! | `weft_control_update_ack_seconds` | from sending an update to its ACK or NACK |
//! | `weft_control_canary_weight{canary}` | a rollout's canary weight now, in percent (on the leader) |
//! | `weft_control_canary_checks_total{canary,verdict}` | a rollout's checks: `pass`, `fail`, `wait` |
//! | `weft_control_canary_rollouts_total{canary,phase}` | rollouts ended: `promoted`, `rolled-back`, `aborted` |
//! | `weft_control_dns_queries_total{transport,rcode}` | DNS queries answered (`--dns`), by `udp`/`tcp` and response code |
//! | `weft_control_dns_truncated_total{transport}` | DNS answers cut for size (TC set) |

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsLabels {
    transport: &'static str,
    rcode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CanaryLabels {
    canary: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    canary: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    canary: String,
    phase: &'static str,
}

/// See the module docs.
pub struct ControlMetrics {
    registry: Registry,
    proxies: Gauge,
    revision: Gauge,
    leader: Gauge,
    updates: Family<ResultLabels, Counter>,
    ack_seconds: Histogram,
    canary_weight: Family<CanaryLabels, Gauge>,
    canary_checks: Family<CheckLabels, Counter>,
    canary_ends: Family<EndLabels, Counter>,
    dns_queries: Family<DnsLabels, Counter>,
    dns_truncated: Family<TransportLabels, Counter>,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let proxies = Gauge::default();
        let revision = Gauge::default();
        let leader = Gauge::default();
        let updates = Family::<ResultLabels, Counter>::default();
        let ack_seconds = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "weft_control_proxies",
            "Discovery streams connected to this server",
            proxies.clone(),
        );
        registry.register(
            "weft_control_revision",
            "Store revision this server's view reflects",
            revision.clone(),
        );
        registry.register(
            "weft_control_leader",
            "1 while this replica is the elected leader (run-once work runs there)",
            leader.clone(),
        );
        registry.register(
            "weft_control_updates",
            "Discovery updates by result (sent, acked, nacked)",
            updates.clone(),
        );
        registry.register_with_unit(
            "weft_control_update_ack",
            "Time from sending an update to the proxy's ACK or NACK",
            Unit::Seconds,
            ack_seconds.clone(),
        );
        let canary_weight = Family::<CanaryLabels, Gauge>::default();
        let canary_checks = Family::<CheckLabels, Counter>::default();
        let canary_ends = Family::<EndLabels, Counter>::default();
        registry.register(
            "weft_control_canary_weight",
            "A rollout's canary weight now, in percent (kept by the leader)",
            canary_weight.clone(),
        );
        registry.register(
            "weft_control_canary_checks",
            "A rollout's checks by verdict (pass, fail, wait)",
            canary_checks.clone(),
        );
        registry.register(
            "weft_control_canary_rollouts",
            "Rollouts ended, by how (promoted, rolled-back, aborted)",
            canary_ends.clone(),
        );
        let dns_queries = Family::<DnsLabels, Counter>::default();
        let dns_truncated = Family::<TransportLabels, Counter>::default();
        registry.register(
            "weft_control_dns_queries",
            "DNS queries answered, by transport and response code",
            dns_queries.clone(),
        );
        registry.register(
            "weft_control_dns_truncated",
            "DNS answers cut to fit their transport (TC set)",
            dns_truncated.clone(),
        );
        ControlMetrics {
            registry,
            dns_queries,
            dns_truncated,
            proxies,
            revision,
            leader,
            updates,
            ack_seconds,
            canary_weight,
            canary_checks,
            canary_ends,
        }
    }
}

impl ControlMetrics {
    /// An update was sent.
    pub fn sent(&self) {
        self.updates
            .get_or_create(&ResultLabels { result: "sent" })
            .inc();
    }

    /// An update was answered after `seconds`; `applied` false for a NACK.
    pub fn answered(&self, applied: bool, seconds: f64) {
        let result = if applied { "acked" } else { "nacked" };
        self.updates.get_or_create(&ResultLabels { result }).inc();
        self.ack_seconds.observe(seconds);
    }

    /// A rollout's canary weight was set.
    pub fn canary_weight(&self, canary: &str, weight: u32) {
        self.canary_weight
            .get_or_create(&CanaryLabels {
                canary: canary.to_string(),
            })
            .set(i64::from(weight));
    }

    /// A rollout's check decided `verdict`.
    pub fn canary_check(&self, canary: &str, verdict: &str) {
        self.canary_checks
            .get_or_create(&CheckLabels {
                canary: canary.to_string(),
                verdict: verdict.to_string(),
            })
            .inc();
    }

    /// A rollout ended as `phase`.
    pub fn canary_ended(&self, canary: &str, phase: &'static str) {
        self.canary_ends
            .get_or_create(&EndLabels {
                canary: canary.to_string(),
                phase,
            })
            .inc();
    }

    /// A DNS query over `transport` was answered with `rcode`; `truncated`: TC set.
    pub fn dns_answered(&self, transport: &'static str, rcode: &'static str, truncated: bool) {
        self.dns_queries
            .get_or_create(&DnsLabels { transport, rcode })
            .inc();
        if truncated {
            self.dns_truncated
                .get_or_create(&TransportLabels { transport })
                .inc();
        }
    }

    /// The text exposition, with the gauges read now.
    pub fn encode(&self, proxies: usize, revision: u64, leader: bool) -> String {
        self.proxies.set(proxies as i64);
        self.revision.set(revision as i64);
        self.leader.set(i64::from(leader));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
