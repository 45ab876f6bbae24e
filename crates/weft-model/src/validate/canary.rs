//! Checks of `Canary` resources: the service and its subsets exist, the steps reach
//! `maxWeight`, the analysis can judge something.

use super::report::Report;
use crate::yaml::Document;
use crate::*;

/// The longest interval: the proxies' windows hold ten minutes.
const MAX_INTERVAL_SECS: u64 = 600;

pub(crate) fn canary(r: &mut Report<'_>, c: &Config, k: &Resource<CanarySpec>, doc: &Document) {
    let name = &k.metadata.name;
    let s = &k.spec;
    let mut err = |field: &str, message: String| r.at(doc, "Canary", name, field.into(), message);
    match c.service(&s.service) {
        None => err(
            "spec.service",
            format!(
                "no Service `{}`: a canary needs the Service resource that names its subsets",
                s.service
            ),
        ),
        Some(svc) => {
            for (field, subset) in [("spec.stable", &s.stable), ("spec.canary", &s.canary)] {
                if !svc.spec.subsets.contains_key(subset) {
                    let known: Vec<&str> = svc.spec.subsets.keys().map(String::as_str).collect();
                    err(
                        field,
                        format!(
                            "Service `{}` has no subset `{subset}` ({})",
                            s.service,
                            if known.is_empty() {
                                "it defines none: spec.subsets".to_string()
                            } else {
                                format!("it has: {}", known.join(", "))
                            }
                        ),
                    );
                }
            }
        }
    }
    if s.stable == s.canary {
        err(
            "spec.canary",
            format!("`{}` is the stable subset too", s.canary),
        );
    }
    if let Some(bg) = &s.blue_green {
        if s.step_weight.is_some() || s.max_weight.is_some() || !s.weights.is_empty() {
            err(
                "spec.blueGreen",
                "blue/green switches at once: no stepWeight, maxWeight or weights".into(),
            );
        }
        if s.header.is_some() {
            err(
                "spec.blueGreen",
                "blue/green mirrors every request: no header".into(),
            );
        }
        if !(1..=100).contains(&bg.checks) {
            err(
                "spec.blueGreen.checks",
                format!("{} is outside 1..=100", bg.checks),
            );
        }
    } else {
        weighted(&mut err, s);
    }
    if let Some(route) = &s.route {
        let valid = !route.is_empty()
            && route.len() <= 253
            && route
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            err(
                "spec.route",
                format!("`{route}` is not a resource name (a-z, 0-9, `-`, `.`)"),
            );
        }
    }
    if let Some(h) = &s.header {
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            err(
                "spec.header.name",
                format!("`{}` is not a valid header name", h.name),
            );
        }
        if http::HeaderValue::from_str(&h.value).is_err() {
            err("spec.header.value", "not a valid header value".into());
        }
    }
    let a = &s.analysis;
    // The proxies count traffic in 10-second slots: a check of a whole number of slots
    // never reaches back before the step it judges.
    let ms = a.interval.get().as_millis();
    if ms % 10_000 != 0 || !(10_000..=MAX_INTERVAL_SECS as u128 * 1000).contains(&ms) {
        err(
            "spec.analysis.interval",
            format!(
                "must be 10s to 10m in whole 10s (the proxies count traffic in 10-second slots and keep ten minutes), not {}",
                a.interval
            ),
        );
    }
    if a.threshold == 0 {
        err(
            "spec.analysis.threshold",
            "must be at least 1 (the failed checks that roll back)".into(),
        );
    }
    if a.success_rate.is_none() && a.p99.is_none() && a.prometheus.is_empty() {
        err(
            "spec.analysis",
            "judges nothing: give successRate, p99, prometheus, or several".into(),
        );
    }
    if a.prometheus.len() > 8 {
        err("spec.analysis.prometheus", "at most 8".into());
    }
    for (i, q) in a.prometheus.iter().enumerate() {
        let at = format!("spec.analysis.prometheus[{i}]");
        let web = q.url.starts_with("http://") || q.url.starts_with("https://");
        if !web || q.url.parse::<http::Uri>().is_err() {
            err(
                &format!("{at}.url"),
                format!("`{}` is not an http:// or https:// URL", q.url),
            );
        }
        if q.query.trim().is_empty() {
            err(&format!("{at}.query"), "is empty".into());
        }
        if q.min.is_none() && q.max.is_none() {
            err(
                &at,
                "give min, max or both: a bound to judge the value by".into(),
            );
        }
        if let (Some(lo), Some(hi)) = (q.min, q.max) {
            if lo > hi {
                err(&format!("{at}.min"), format!("{lo} is over max {hi}"));
            }
        }
        if q.name.is_empty() || q.name.len() > 63 {
            err(&format!("{at}.name"), "1 to 63 characters".into());
        }
    }
    if let Some(sr) = a.success_rate {
        if !(sr > 0.0 && sr <= 1.0) {
            err(
                "spec.analysis.successRate",
                format!("{sr} is not a rate in (0, 1] (e.g. 0.99)"),
            );
        }
    }
    if a.p99.is_some_and(|d| d.get().is_zero()) {
        err("spec.analysis.p99", "must be greater than 0".into());
    }
    if a.webhooks.len() > 8 {
        err("spec.analysis.webhooks", "at most 8".into());
    }
    for (i, h) in a.webhooks.iter().enumerate() {
        let at = format!("spec.analysis.webhooks[{i}]");
        let rest = h
            .url
            .strip_prefix("http://")
            .or_else(|| h.url.strip_prefix("https://"));
        let host = rest.map(|r| r.split(['/', '?']).next().unwrap_or_default());
        if host.is_none_or(str::is_empty) || h.url.parse::<http::Uri>().is_err() {
            err(
                &format!("{at}.url"),
                format!("`{}` is not an http:// or https:// URL", h.url),
            );
        }
        if h.name.is_empty() || h.name.len() > 63 {
            err(&format!("{at}.name"), "1 to 63 characters".into());
        }
        let t = h.timeout.get();
        if t.is_zero() || t > std::time::Duration::from_secs(60) {
            err(
                &format!("{at}.timeout"),
                "must be more than 0 and at most 60s".into(),
            );
        }
    }
    if a.min_requests == 0 {
        err(
            "spec.analysis.minRequests",
            "must be at least 1 (use noData: pass to promote without traffic)".into(),
        );
    }
}

/// The weighted steps: `stepWeight` reaching `maxWeight`, or rising `weights`.
fn weighted(err: &mut impl FnMut(&str, String), s: &CanarySpec) {
    match (s.step_weight, s.max_weight, s.weights.is_empty()) {
        (Some(step), Some(max), true) => {
            if !(1..=100).contains(&step) {
                err("spec.stepWeight", format!("{step} is outside 1..=100"));
            } else if !(1..=100).contains(&max) {
                err("spec.maxWeight", format!("{max} is outside 1..=100"));
            } else if max % step != 0 {
                let steps: Vec<String> = (1..=max / step).map(|i| (i * step).to_string()).collect();
                err(
                    "spec.maxWeight",
                    format!(
                        "{max} is not a multiple of stepWeight {step}: the steps {} never reach it",
                        steps.join(", ")
                    ),
                );
            }
        }
        (None, None, false) => {
            let rising = s.weights.windows(2).all(|w| w[0] < w[1]);
            if !rising || s.weights.iter().any(|w| !(1..=100).contains(w)) {
                err(
                    "spec.weights",
                    "weights must rise, each within 1..=100".into(),
                );
            }
        }
        _ => err(
            "spec",
            "give either stepWeight and maxWeight, or weights".into(),
        ),
    }
}
