use http::header::{HeaderMap, HeaderValue};

use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn get<'a>(h: &'a HeaderMap, n: &str) -> Option<&'a str> {
    h.get(n).and_then(|v| v.to_str().ok())
}

fn w3c(v: &str) -> Incoming {
    extract(&headers(&[("traceparent", v)]))
}

fn ids(i: &Incoming) -> Option<(String, String)> {
    let p = i.parent.as_ref()?;
    Some((
        format!("{:032x}", p.trace_id),
        format!("{:016x}", p.span_id),
    ))
}

fn ours() -> Option<(String, String)> {
    Some((TRACE.into(), SPAN.into()))
}

#[test]
fn a_valid_traceparent_is_continued() {
    let p = w3c(&format!("00-{TRACE}-{SPAN}-01"));
    assert_eq!((ids(&p), p.sampled), (ours(), Some(true)));
    assert_eq!(w3c(&format!("00-{TRACE}-{SPAN}-00")).sampled, Some(false));
    // Other flag bits are not "sampled".
    assert_eq!(w3c(&format!("00-{TRACE}-{SPAN}-02")).sampled, Some(false));
}

#[test]
fn an_invalid_traceparent_is_ignored() {
    let bad = [
        format!("ff-{TRACE}-{SPAN}-01"),                  // forbidden version
        format!("0-{TRACE}-{SPAN}-01"),                   // short version
        format!("00-{}-{SPAN}-01", TRACE.to_uppercase()), // upper-case hex
        format!("00-{TRACE}-{}-01", SPAN.to_uppercase()), // upper-case hex
        format!("00-{}-{SPAN}-01", "0".repeat(32)),       // all-zero trace id
        format!("00-{TRACE}-{}-01", "0".repeat(16)),      // all-zero span id
        format!("00-{}-{SPAN}-01", &TRACE[..31]),         // short trace id
        format!("00-{TRACE}-{SPAN}-01-extra"),            // version 00 is exactly 55
        format!("00-{TRACE}-{SPAN}-1"),                   // short flags
        format!("00_{TRACE}-{SPAN}-01"),                  // separator
        format!("00-{TRACE}-{SPAN}-0g"),                  // not hex
        format!("00-{}g-{SPAN}-01", &TRACE[..31]),        // not hex
        String::new(),
        "garbage".to_string(),
    ];
    for v in bad {
        let found = w3c(&v);
        assert_eq!(
            (found.parent, found.sampled),
            (None, None),
            "{v:?} was accepted"
        );
        assert_eq!(found.arrived, Formats::W3C, "noted, to be replaced");
    }
}

#[test]
fn a_later_version_is_read_as_far_as_it_is_understood() {
    assert_eq!(
        ids(&w3c(&format!("01-{TRACE}-{SPAN}-01-what-comes-next"))),
        ours()
    );
    assert_eq!(ids(&w3c(&format!("01-{TRACE}-{SPAN}-01"))), ours());
    assert_eq!(ids(&w3c(&format!("01-{TRACE}-{SPAN}-01x"))), None);
}

#[test]
fn b3_single_in_its_forms() {
    let one = |v: &str| extract(&headers(&[("b3", v)]));
    let p = one(&format!("{TRACE}-{SPAN}-1"));
    assert_eq!((ids(&p), p.sampled, p.debug), (ours(), Some(true), false));
    let p = one(&format!("{TRACE}-{SPAN}"));
    assert_eq!(p.sampled, None, "no decision: deferred to this hop");
    let p = one(&format!("{TRACE}-{SPAN}-d-{SPAN}"));
    assert_eq!((p.sampled, p.debug), (Some(true), true));
    let p = one(&format!("{}-{SPAN}-0", &TRACE[16..]));
    assert_eq!(p.sampled, Some(false));
    let parent = p.parent.unwrap();
    assert!(parent.short_trace_id);
    assert_eq!(
        parent.trace_id,
        u128::from_str_radix(&TRACE[16..], 16).unwrap()
    );
    // A lone decision: a new trace, with that decision.
    for (v, sampled, debug) in [("0", false, false), ("1", true, false), ("d", true, true)] {
        let p = one(v);
        assert_eq!(
            (p.parent, p.sampled, p.debug),
            (None, Some(sampled), debug),
            "{v}"
        );
    }
    for bad in [
        format!("{TRACE}-{SPAN}-x"),
        format!("{TRACE}-{SPAN}-1-zz"),
        "x".into(),
    ] {
        let p = one(&bad);
        assert_eq!((p.parent, p.sampled), (None, None), "{bad:?}");
        assert_eq!(p.arrived, Formats::B3_SINGLE);
    }
}

#[test]
fn b3_multi_with_and_without_a_decision() {
    let p = extract(&headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "1"),
    ]));
    assert_eq!((ids(&p), p.sampled), (ours(), Some(true)));
    assert_eq!(p.arrived, Formats::B3_MULTI);
    let p = extract(&headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)]));
    assert_eq!(p.sampled, None);
    let p = extract(&headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-flags", "1"),
        ("x-b3-sampled", "0"),
    ]));
    assert_eq!(
        (p.sampled, p.debug),
        (Some(true), true),
        "debug implies sampled"
    );
    assert_eq!(extract(&headers(&[("x-b3-traceid", TRACE)])).parent, None);
    let upper = TRACE.to_uppercase();
    let p = extract(&headers(&[("x-b3-traceid", &upper), ("x-b3-spanid", SPAN)]));
    assert_eq!(p.parent, None);
}

#[test]
fn the_next_hop_sees_this_hops_span_as_its_parent_in_every_format() {
    for (format, arrived) in [
        (
            "w3c",
            headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]),
        ),
        (
            "b3 single",
            headers(&[("b3", &format!("{TRACE}-{SPAN}-1"))]),
        ),
        (
            "b3 multi",
            headers(&[
                ("x-b3-traceid", TRACE),
                ("x-b3-spanid", SPAN),
                ("x-b3-sampled", "1"),
            ]),
        ),
        ("none", HeaderMap::new()),
    ] {
        let mut h = arrived;
        let mut parent_span = None;
        let mut trace = None;
        // Three hops in a row (edge, a caller's sidecar, the callee's sidecar).
        for hop in 0..3 {
            let span = SpanContext::start(extract(&h), 1.0);
            if let Some(p) = parent_span {
                assert_eq!(span.parent_id, Some(p), "{format}, hop {hop}");
            } else if format != "none" {
                assert_eq!(span.parent_id, Some(u64::from_str_radix(SPAN, 16).unwrap()));
            }
            assert_eq!(
                *trace.get_or_insert(span.trace_id),
                span.trace_id,
                "{format}"
            );
            span.inject(&mut h, Formats::W3C);
            parent_span = Some(span.span_id);
            // W3C always; B3 in the form it arrived.
            let tp = get(&h, "traceparent").unwrap();
            assert_eq!(
                tp,
                format!("00-{}-{}-01", span.trace_hex(), span.span_hex())
            );
            // A new span id on every hop: HPACK's "never indexed" form.
            assert!(h["traceparent"].is_sensitive());
            match format {
                "b3 single" => {
                    let b3 = get(&h, "b3").unwrap();
                    assert!(
                        b3.starts_with(&format!("{TRACE}-{}-1-", span.span_hex())),
                        "{b3}"
                    );
                    assert!(!h.contains_key("x-b3-traceid"));
                }
                "b3 multi" => {
                    assert_eq!(get(&h, "x-b3-spanid"), Some(span.span_hex().as_str()));
                    assert_eq!(get(&h, "x-b3-traceid"), Some(TRACE));
                    assert!(!h.contains_key("b3"));
                }
                _ => assert!(!h.contains_key("b3") && !h.contains_key("x-b3-traceid")),
            }
        }
    }
}

#[test]
fn conflicting_w3c_and_b3_follow_w3c_and_nothing_stale_goes_on() {
    let other_trace = "1".repeat(32);
    let mut h = headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("b3", &format!("{other_trace}-{}-1", "2".repeat(16))),
        ("x-b3-traceid", &other_trace),
        ("x-b3-spanid", &"3".repeat(16)),
        ("x-b3-parentspanid", &"4".repeat(16)),
    ]);
    let span = SpanContext::start(extract(&h), 0.0);
    assert_eq!(span.trace_hex(), TRACE);
    span.inject(&mut h, Formats::W3C);
    for v in h.values() {
        let v = v.to_str().unwrap();
        assert!(!v.contains(&other_trace), "stale id passed on: {v}");
    }
    assert!(get(&h, "b3").unwrap().starts_with(TRACE));
    assert_eq!(get(&h, "x-b3-traceid"), Some(TRACE));
    assert_eq!(get(&h, "x-b3-parentspanid"), Some(SPAN));
}

#[test]
fn an_invalid_traceparent_is_replaced_and_its_tracestate_dropped() {
    let mut h = headers(&[
        (
            "traceparent",
            &format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
        ),
        ("tracestate", "vendor=1"),
    ]);
    let span = SpanContext::start(extract(&h), 0.0);
    assert_eq!(span.parent_id, None, "a new trace");
    span.inject(&mut h, Formats::W3C);
    assert!(get(&h, "traceparent").unwrap().contains(&span.trace_hex()));
    assert!(!h.contains_key("tracestate"));
}

#[test]
fn a_64_bit_b3_trace_id_is_widened_for_w3c_and_kept_for_b3() {
    let short = &TRACE[16..];
    let mut h = headers(&[("x-b3-traceid", short), ("x-b3-spanid", SPAN)]);
    let span = SpanContext::start(extract(&h), 1.0);
    span.inject(&mut h, Formats::W3C);
    assert_eq!(get(&h, "x-b3-traceid"), Some(short));
    let tp = get(&h, "traceparent").unwrap();
    assert!(
        tp.starts_with(&format!("00-0000000000000000{short}-")),
        "{tp}"
    );
}

#[test]
fn b3_is_added_when_configuration_asks_for_it() {
    let mut h = HeaderMap::new();
    let span = SpanContext::start(Incoming::default(), 0.0);
    span.inject(&mut h, Formats::from_names(["b3multi", "b3single"]));
    assert_eq!(get(&h, "x-b3-sampled"), Some("0"));
    assert!(
        get(&h, "b3").unwrap().ends_with("-0"),
        "no parent on a new trace"
    );
    assert!(!h.contains_key("x-b3-parentspanid"));
}

#[test]
fn debug_travels_as_debug() {
    let mut h = headers(&[("b3", &format!("{TRACE}-{SPAN}-d"))]);
    let span = SpanContext::start(extract(&h), 0.0);
    assert!(span.sampled && span.debug);
    span.inject(&mut h, Formats::B3_MULTI);
    assert!(get(&h, "b3").unwrap().contains("-d-"));
    assert_eq!(get(&h, "x-b3-flags"), Some("1"));
    assert!(!h.contains_key("x-b3-sampled"));
}

#[test]
fn sampling_respects_the_callers_decision_and_otherwise_the_rate() {
    let unsampled = w3c(&format!("00-{TRACE}-{SPAN}-00"));
    assert!(!SpanContext::start(unsampled, 1.0).sampled);
    let sampled = w3c(&format!("00-{TRACE}-{SPAN}-01"));
    assert!(SpanContext::start(sampled, 0.0).sampled);
    let deferred = extract(&headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)]));
    assert!(SpanContext::start(deferred.clone(), 1.0).sampled);
    assert!(!SpanContext::start(deferred, 0.0).sampled);
    assert!(!SpanContext::start(Incoming::default(), 0.0).sampled);
    assert!(SpanContext::start(Incoming::default(), 1.0).sampled);
    let n = (0..4000)
        .filter(|_| SpanContext::start(Incoming::default(), 0.25).sampled)
        .count();
    assert!((800..=1200).contains(&n), "{n} of 4000 at 25%");
}

#[test]
fn tracestate_is_kept_and_an_oversized_one_cut_by_whole_entries() {
    let state = |h: &HeaderMap| extract(h).parent.and_then(|p| p.tracestate);
    let kept = state(&headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("tracestate", "a=1,b=2"),
        ("tracestate", "c=3"),
    ]));
    assert_eq!(kept.unwrap(), "a=1,b=2,c=3");
    let long: Vec<String> = (0..100).map(|i| format!("vendor{i:03}=value")).collect();
    let kept = state(&headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("tracestate", &long.join(",")),
    ]))
    .unwrap();
    let kept = kept.to_str().unwrap();
    assert!(kept.len() <= MAX_TRACESTATE);
    let entries: Vec<&str> = kept.split(',').collect();
    assert!(entries.len() <= 32);
    assert_eq!(
        entries,
        long[..entries.len()],
        "whole entries, from the front"
    );
    // Forty short entries: at most 32 are passed on.
    let many: Vec<String> = (0..40).map(|i| format!("v{i}=1")).collect();
    let kept = state(&headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("tracestate", &many.join(",")),
    ]))
    .unwrap();
    assert_eq!(kept.to_str().unwrap().split(',').count(), 32);
}

#[test]
fn new_ids_are_never_zero() {
    for _ in 0..1000 {
        let s = SpanContext::start(Incoming::default(), 0.0);
        assert_ne!(s.span_id, 0);
        assert_ne!(s.trace_id >> 64, 0);
    }
}
