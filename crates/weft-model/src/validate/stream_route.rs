//! Checks of `TCPRoute` and `TLSRoute` resources.

use super::checks::*;
use super::report::Report;
use crate::yaml::Document;
use crate::*;

pub(crate) fn stream_route(
    r: &mut Report<'_>,
    c: &Config,
    kind: &str,
    route: &Resource<StreamRouteSpec>,
    doc: &Document,
) {
    let name = &route.metadata.name;
    parent_refs(r, c, doc, kind, name, &route.spec.parent_refs);
    if kind == "TCPRoute" && !route.spec.hostnames.is_empty() {
        r.at(
            doc,
            kind,
            name,
            "spec.hostnames".into(),
            "a TCPRoute cannot match names (TCP carries none); use a TLSRoute".into(),
        );
    }
    for (i, h) in route.spec.hostnames.iter().enumerate() {
        if let Err(m) = check_hostname(h, true) {
            r.at(doc, kind, name, format!("spec.hostnames[{i}]"), m);
        }
    }
    if route.spec.rules.len() != 1 {
        r.at(
            doc,
            kind,
            name,
            "spec.rules".into(),
            "needs exactly one rule".into(),
        );
    }
    for (ri, rule) in route.spec.rules.iter().enumerate() {
        if rule.backend_refs.is_empty() {
            r.at(
                doc,
                kind,
                name,
                format!("spec.rules[{ri}].backendRefs"),
                "needs at least one backend".into(),
            );
        }
        for (bi, b) in rule.backend_refs.iter().enumerate() {
            if c.service(&b.name).is_none() {
                r.at(
                    doc,
                    kind,
                    name,
                    format!("spec.rules[{ri}].backendRefs[{bi}].name"),
                    format!("unknown Service `{}`", b.name),
                );
            }
            if let Some(m) = super::service::subset_problem(c, b) {
                r.at(
                    doc,
                    kind,
                    name,
                    format!("spec.rules[{ri}].backendRefs[{bi}].subset"),
                    m,
                );
            }
        }
    }
}
