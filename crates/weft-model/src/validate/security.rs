//! Checks of `Mesh` and `Intention` resources.

use crate::yaml::Document;
use crate::*;

use super::checks::{check_path_match, header_match_problems, method_problem, valid_name};
use super::report::Report;

pub(crate) fn mesh(r: &mut Report<'_>, c: &Config, docs: &[&Document]) {
    for (i, (m, doc)) in c.meshes.iter().zip(docs).enumerate() {
        if m.metadata.name != "mesh" {
            r.at(
                doc,
                "Mesh",
                &m.metadata.name,
                "metadata.name".into(),
                "the Mesh resource is named `mesh` (there is one per mesh)".into(),
            );
        } else if i > 0 {
            r.at(
                doc,
                "Mesh",
                &m.metadata.name,
                "metadata.name".into(),
                "only one Mesh resource".into(),
            );
        }
        if let Some(t) = &m.spec.tracing {
            for (field, msg) in super::checks::tracing_problems(t) {
                r.at(
                    doc,
                    "Mesh",
                    &m.metadata.name,
                    format!("spec.tracing.{field}"),
                    msg,
                );
            }
        }
    }
}

pub(crate) fn intention(r: &mut Report<'_>, i: &Resource<IntentionSpec>, doc: &Document) {
    let name = &i.metadata.name;
    let err = |r: &mut Report<'_>, field: String, message: String| {
        r.at(doc, "Intention", name, field, message);
    };
    for (field, v) in [
        ("spec.source", &i.spec.source),
        ("spec.destination", &i.spec.destination),
    ] {
        if v != "*" && !valid_name(v) {
            err(
                r,
                field.into(),
                format!("`{v}` is neither a service name nor `*`"),
            );
        }
    }
    if i.spec.unauthenticated && i.spec.source != "*" {
        err(
            r,
            "spec.unauthenticated".into(),
            "only an intention from `*` can admit callers without an identity".into(),
        );
    }
    match (&i.spec.action, i.spec.permissions.is_empty()) {
        (Some(_), false) => err(
            r,
            "spec.permissions".into(),
            "give either `action` (the whole connection) or `permissions` (per request), not both"
                .into(),
        ),
        (None, true) => err(
            r,
            "spec".into(),
            "needs `action` (allow or deny) or `permissions`".into(),
        ),
        _ => {}
    }
    for (pi, p) in i.spec.permissions.iter().enumerate() {
        let at = format!("spec.permissions[{pi}].http");
        if let Some(path) = &p.http.path {
            if let Err(msg) = check_path_match(path) {
                err(r, format!("{at}.path.value"), msg);
            }
        }
        for (mi, m) in p.http.methods.iter().enumerate() {
            if let Some(msg) = method_problem(m) {
                err(r, format!("{at}.methods[{mi}]"), msg);
            }
        }
        for (hi, h) in p.http.headers.iter().enumerate() {
            for (field, msg) in header_match_problems(h) {
                err(r, format!("{at}.headers[{hi}].{field}"), msg);
            }
        }
    }
}
