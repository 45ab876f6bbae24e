//! `/ui/`: the web UI (docs/ui.md). Hand-written HTML, CSS and JavaScript modules under
//! `crates/weft-control/ui/`, compiled into the binary: no build step, nothing fetched
//! at runtime. The pages themselves need no token (they hold no data); everything they
//! show comes from the API with the token the user enters, so it respects that token's
//! rules.

use axum::{
    extract::{Path, State},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
    routing::get,
    Router,
};

use super::context::Api;

/// The UI's files: name, content type, bytes.
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../ui/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/api.js"),
    ),
    (
        "graph.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/graph.js"),
    ),
    (
        "views.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/views.js"),
    ),
    (
        "yaml.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/yaml.js"),
    ),
];

/// What the pages may do: load only their own files, talk only to this server, never be
/// framed (clickjacking), no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The UI's routes (outside the API's token check: see [`super::request`]).
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { file("index.html") }))
        .route("/ui/settings.json", get(settings))
        .route(
            "/ui/{file}",
            get(|Path(f): Path<String>| async move { file(&f) }),
        )
}

/// What the pages need before sign-in: whether this server asks for a token at all (a
/// request without one would tell the same, as a 401).
async fn settings(State(api): State<Api>) -> Response {
    let mut resp = axum::Json(serde_json::json!({"acl": api.auth.enabled()})).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Whether `path` is one of the UI's (answered without a token).
pub(crate) fn is_ui(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

fn file(name: &str) -> Response {
    let Some((_, kind, body)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such file in weft's UI\n",
        )
            .into_response();
    };
    let mut resp = (*body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Served by this binary: a new weft serves new files, so the browser asks each time
    // (cheap: a few tens of KB, from the same connection).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_pages_import_is_served() {
        // Each `from "./x.js"` in a served file names a served file, and index.html
        // loads only served files: a missing one would be a blank page.
        for (name, _, body) in FILES {
            for piece in body.split("from \"./").skip(1) {
                let imported = piece.split('"').next().unwrap();
                assert!(
                    FILES.iter().any(|(n, _, _)| *n == imported),
                    "{name} imports {imported}, which is not served"
                );
            }
        }
        let index = FILES[0].2;
        for piece in index.split("=\"./").skip(1) {
            let linked = piece.split('"').next().unwrap();
            assert!(
                FILES.iter().any(|(n, _, _)| *n == linked),
                "index.html links {linked}, which is not served"
            );
        }
    }

    #[test]
    fn an_unknown_file_is_404_not_the_index() {
        assert_eq!(file("../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert_eq!(file("index.html").status(), StatusCode::OK);
    }
}
