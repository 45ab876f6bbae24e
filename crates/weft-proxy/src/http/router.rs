//! Gateway API `HTTPRoute` matching.
//!
//! Routes are grouped by hostname into three tiers, tried in order until one yields a match:
//! exact host names, then `*.` wildcards (longest suffix first), then routes with no host
//! names. Within a tier, matches are sorted once, at snapshot build time, by the Gateway API
//! precedence: Exact path, then regular expression (an implementation-specific choice,
//! longest pattern first), then longest prefix; then a method match; then most header
//! matches; then most query matches; then file order of the route, rule and match. A request
//! is therefore routed by a linear scan that stops at the first hit.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use weft_model::{HttpRouteMatch, PathMatchType, ValueMatch, ValueMatchType};

/// A compiled route match, borrowing nothing from the config. Cloning is cheap: compiled
/// regexes share their program.
#[derive(Debug, Clone)]
pub struct Matcher {
    path: PathMatcher,
    headers: Vec<(HeaderName, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
    method: Option<Method>,
}

#[derive(Debug, Clone)]
enum PathMatcher {
    Exact(String),
    /// Stored without a trailing `/` (so `/` is stored as the empty string).
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

impl ValueMatcher {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatcher::Exact(e) => e == v,
            ValueMatcher::Regex(r) => r.is_match(v),
        }
    }
}

/// What a successful match tells the filters.
#[derive(Debug, Clone, Copy)]
pub struct MatchInfo {
    /// Length of the path prefix matched, for `ReplacePrefixMatch` (prefix matches only).
    pub prefix_len: Option<usize>,
}

/// Errors compiling a match; validation catches these first, so they only guard.
#[derive(Debug, thiserror::Error)]
#[error("invalid match: {0}")]
pub struct MatchError(String);

fn anchored(re: &str) -> Result<Regex, MatchError> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| MatchError(e.to_string()))
}

fn value_matcher(v: &ValueMatch) -> Result<ValueMatcher, MatchError> {
    Ok(match v.kind {
        ValueMatchType::Exact => ValueMatcher::Exact(v.value.clone()),
        ValueMatchType::RegularExpression => ValueMatcher::Regex(anchored(&v.value)?),
    })
}

impl Matcher {
    /// Compiles a model match.
    pub fn compile(m: &HttpRouteMatch) -> Result<Matcher, MatchError> {
        let path = match &m.path {
            None => PathMatcher::Prefix(String::new()),
            // Requests are matched by their normal form (`super::path`), so the values
            // written in configuration take it too: `/caf%c3%a9` matches `/café`.
            Some(p) => match p.kind {
                PathMatchType::Exact => {
                    PathMatcher::Exact(super::path::normalize_match_value(&p.value))
                }
                PathMatchType::PathPrefix => PathMatcher::Prefix(
                    super::path::normalize_match_value(&p.value)
                        .trim_end_matches('/')
                        .to_string(),
                ),
                PathMatchType::RegularExpression => PathMatcher::Regex(anchored(&p.value)?),
            },
        };
        let headers = m
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|e| MatchError(e.to_string()))?;
                Ok((name, value_matcher(h)?))
            })
            .collect::<Result<_, MatchError>>()?;
        let query = m
            .query_params
            .iter()
            .map(|q| Ok((q.name.clone(), value_matcher(q)?)))
            .collect::<Result<_, MatchError>>()?;
        let method = match &m.method {
            Some(s) => {
                Some(Method::from_bytes(s.as_bytes()).map_err(|e| MatchError(e.to_string()))?)
            }
            None => None,
        };
        Ok(Matcher {
            path,
            headers,
            query,
            method,
        })
    }

    /// Gateway API precedence; smaller sorts first.
    fn precedence(
        &self,
    ) -> (
        u8,
        std::cmp::Reverse<usize>,
        bool,
        std::cmp::Reverse<usize>,
        std::cmp::Reverse<usize>,
    ) {
        let (rank, len) = match &self.path {
            PathMatcher::Exact(p) => (0, p.len()),
            PathMatcher::Regex(r) => (1, r.as_str().len()),
            PathMatcher::Prefix(p) => (2, p.len()),
        };
        (
            rank,
            std::cmp::Reverse(len),
            self.method.is_none(),
            std::cmp::Reverse(self.headers.len()),
            std::cmp::Reverse(self.query.len()),
        )
    }

    /// Tests a request.
    pub fn matches(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<MatchInfo> {
        let prefix_len = match &self.path {
            PathMatcher::Exact(p) => (p == path).then_some(None)?,
            PathMatcher::Prefix(p) => {
                let rest = path.strip_prefix(p.as_str())?;
                if !(rest.is_empty() || rest.starts_with('/')) {
                    return None;
                }
                Some(p.len())
            }
            PathMatcher::Regex(r) => r.is_match(path).then_some(None)?,
        };
        if let Some(m) = &self.method {
            if m != method {
                return None;
            }
        }
        for (name, want) in &self.headers {
            // Several values of one header are compared as one comma-joined value (RFC 9110 §5.3).
            let mut values = headers.get_all(name).iter();
            let first = values.next()?.to_str().ok()?;
            let joined;
            let v = match values.next() {
                None => first,
                Some(second) => {
                    let mut s = format!("{first},{}", second.to_str().ok()?);
                    for more in values {
                        s.push(',');
                        s.push_str(more.to_str().ok()?);
                    }
                    joined = s;
                    &joined
                }
            };
            if !want.matches(v) {
                return None;
            }
        }
        for (name, want) in &self.query {
            // The first occurrence of a parameter counts, as the Gateway API specifies.
            let value = query_param(query.unwrap_or(""), name)?;
            if !want.matches(&value) {
                return None;
            }
        }
        Some(MatchInfo { prefix_len })
    }
}

/// The first value of a query parameter, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
        .next()
}

fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Entry<T> {
    matcher: Matcher,
    rule: Arc<T>,
    order: (usize, usize, usize),
}

/// Route entries for one listener, grouped by host name.
pub struct RouteTable<T> {
    exact: HashMap<String, Vec<Entry<T>>>,
    /// `(".example.com", entries)`, longest suffix first.
    wildcard: Vec<(String, Vec<Entry<T>>)>,
    any: Vec<Entry<T>>,
}

impl<T> std::fmt::Debug for RouteTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("exact_hosts", &self.exact.len())
            .field("wildcards", &self.wildcard.len())
            .field("any", &self.any.len())
            .finish()
    }
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            exact: HashMap::new(),
            wildcard: Vec::new(),
            any: Vec::new(),
        }
    }
}

impl<T> RouteTable<T> {
    /// Adds one match of one rule. `order` is (route index, rule index, match index).
    pub fn add(
        &mut self,
        hostnames: &[String],
        matcher: Matcher,
        rule: Arc<T>,
        order: (usize, usize, usize),
    ) {
        if hostnames.is_empty() {
            self.any.push(Entry {
                matcher,
                rule,
                order,
            });
            return;
        }
        for h in hostnames {
            let entry = Entry {
                matcher: matcher.clone(),
                rule: rule.clone(),
                order,
            };
            match h.strip_prefix('*') {
                Some(suffix) => match self.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                    Some((_, v)) => v.push(entry),
                    None => self.wildcard.push((suffix.to_string(), vec![entry])),
                },
                None => self.exact.entry(h.clone()).or_default().push(entry),
            }
        }
    }

    /// Sorts every tier by precedence; call once after the last `add`.
    pub fn finish(&mut self) {
        let sort = |v: &mut Vec<Entry<T>>| v.sort_by_key(|e| (e.matcher.precedence(), e.order));
        self.exact.values_mut().for_each(sort);
        self.wildcard.iter_mut().for_each(|(_, v)| sort(v));
        sort(&mut self.any);
        self.wildcard
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    }

    /// Finds the rule for a request. `host` is lower-case, without port.
    pub fn route<'a>(
        &'a self,
        host: &str,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<(&'a Arc<T>, MatchInfo)> {
        let scan = |entries: &'a [Entry<T>]| {
            entries.iter().find_map(|e| {
                e.matcher
                    .matches(method, path, query, headers)
                    .map(|m| (&e.rule, m))
            })
        };
        if let Some(hit) = self.exact.get(host).and_then(|entries| scan(entries)) {
            return Some(hit);
        }
        for (suffix, entries) in &self.wildcard {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(hit) = scan(entries) {
                    return Some(hit);
                }
            }
        }
        scan(&self.any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_model::PathMatch;

    fn m(
        path: Option<(PathMatchType, &str)>,
        method: Option<&str>,
        headers: &[(&str, &str)],
        query: &[(&str, &str)],
    ) -> HttpRouteMatch {
        HttpRouteMatch {
            path: path.map(|(kind, v)| PathMatch {
                kind,
                value: v.into(),
            }),
            headers: headers
                .iter()
                .map(|(n, v)| ValueMatch {
                    kind: ValueMatchType::Exact,
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            query_params: query
                .iter()
                .map(|(n, v)| ValueMatch {
                    kind: ValueMatchType::Exact,
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            method: method.map(Into::into),
        }
    }

    fn table(entries: &[(&[&str], HttpRouteMatch, &'static str)]) -> RouteTable<&'static str> {
        let mut t = RouteTable::default();
        for (i, (hosts, mm, name)) in entries.iter().enumerate() {
            let hosts: Vec<String> = hosts.iter().map(|s| s.to_string()).collect();
            t.add(
                &hosts,
                Matcher::compile(mm).unwrap(),
                Arc::new(*name),
                (i, 0, 0),
            );
        }
        t.finish();
        t
    }

    fn route(
        t: &RouteTable<&'static str>,
        host: &str,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> Option<&'static str> {
        let uri: http::Uri = uri.parse().unwrap();
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        t.route(host, &method.parse().unwrap(), uri.path(), uri.query(), &h)
            .map(|(r, _)| **r)
    }

    use PathMatchType::*;

    #[test]
    fn path_precedence_exact_regex_longest_prefix() {
        let t = table(&[
            (&[], m(Some((PathPrefix, "/")), None, &[], &[]), "root"),
            (&[], m(Some((PathPrefix, "/api")), None, &[], &[]), "api"),
            (&[], m(Some((PathPrefix, "/api/v1/")), None, &[], &[]), "v1"),
            (
                &[],
                m(Some((Exact, "/api/v1/login")), None, &[], &[]),
                "login",
            ),
            (
                &[],
                m(
                    Some((RegularExpression, "/api/v1/u/[0-9]+")),
                    None,
                    &[],
                    &[],
                ),
                "user",
            ),
        ]);
        assert_eq!(route(&t, "h", "GET", "/", &[]), Some("root"));
        assert_eq!(
            route(&t, "h", "GET", "/apix", &[]),
            Some("root"),
            "prefix is segment-wise"
        );
        assert_eq!(route(&t, "h", "GET", "/api", &[]), Some("api"));
        assert_eq!(
            route(&t, "h", "GET", "/api/v1", &[]),
            Some("v1"),
            "trailing slash of a prefix is ignored"
        );
        assert_eq!(route(&t, "h", "GET", "/api/v1/x", &[]), Some("v1"));
        assert_eq!(route(&t, "h", "GET", "/api/v1/login", &[]), Some("login"));
        assert_eq!(route(&t, "h", "GET", "/api/v1/u/42", &[]), Some("user"));
        assert_eq!(
            route(&t, "h", "GET", "/api/v1/u/42x", &[]),
            Some("v1"),
            "regex is anchored"
        );
    }

    #[test]
    fn method_then_headers_then_query_break_ties() {
        let t = table(&[
            (
                &[],
                m(Some((PathPrefix, "/p")), None, &[], &[("q", "1")]),
                "query",
            ),
            (
                &[],
                m(
                    Some((PathPrefix, "/p")),
                    None,
                    &[("x-a", "1"), ("x-b", "2")],
                    &[],
                ),
                "two-headers",
            ),
            (
                &[],
                m(Some((PathPrefix, "/p")), None, &[("x-a", "1")], &[]),
                "one-header",
            ),
            (
                &[],
                m(Some((PathPrefix, "/p")), Some("POST"), &[], &[]),
                "post",
            ),
            (&[], m(Some((PathPrefix, "/p")), None, &[], &[]), "plain"),
        ]);
        assert_eq!(
            route(&t, "h", "POST", "/p?q=1", &[("x-a", "1"), ("x-b", "2")]),
            Some("post")
        );
        assert_eq!(
            route(&t, "h", "GET", "/p?q=1", &[("x-a", "1"), ("x-b", "2")]),
            Some("two-headers")
        );
        assert_eq!(
            route(&t, "h", "GET", "/p?q=1", &[("x-a", "1")]),
            Some("one-header")
        );
        assert_eq!(route(&t, "h", "GET", "/p?z=0&q=1", &[]), Some("query"));
        assert_eq!(route(&t, "h", "GET", "/p?q=2", &[]), Some("plain"));
        assert_eq!(
            route(&t, "h", "GET", "/p?q=%31", &[]),
            Some("query"),
            "query values are percent-decoded"
        );
    }

    #[test]
    fn file_order_breaks_full_ties() {
        let t = table(&[
            (&[], m(Some((PathPrefix, "/")), None, &[], &[]), "first"),
            (&[], m(Some((PathPrefix, "/")), None, &[], &[]), "second"),
        ]);
        assert_eq!(route(&t, "h", "GET", "/", &[]), Some("first"));
    }

    #[test]
    fn hostname_tiers_exact_then_wildcard_then_any() {
        let t = table(&[
            (&[], m(None, None, &[], &[]), "any"),
            (&["*.example.com"], m(None, None, &[], &[]), "wild"),
            (
                &["*.api.example.com"],
                m(None, None, &[], &[]),
                "wild-longer",
            ),
            (
                &["www.example.com"],
                m(Some((PathPrefix, "/only")), None, &[], &[]),
                "exact",
            ),
        ]);
        assert_eq!(
            route(&t, "www.example.com", "GET", "/only/x", &[]),
            Some("exact")
        );
        assert_eq!(
            route(&t, "www.example.com", "GET", "/", &[]),
            Some("wild"),
            "falls through to less specific hosts"
        );
        assert_eq!(route(&t, "a.b.example.com", "GET", "/", &[]), Some("wild"));
        assert_eq!(
            route(&t, "x.api.example.com", "GET", "/", &[]),
            Some("wild-longer")
        );
        assert_eq!(
            route(&t, "example.com", "GET", "/", &[]),
            Some("any"),
            "wildcard needs a label"
        );
        assert_eq!(route(&t, "other.org", "GET", "/", &[]), Some("any"));
    }

    #[test]
    fn no_match_is_none() {
        let t = table(&[(&["a.com"], m(None, None, &[], &[]), "a")]);
        assert_eq!(route(&t, "b.com", "GET", "/", &[]), None);
    }

    #[test]
    fn multi_valued_headers_are_joined() {
        let t = table(&[(&[], m(None, None, &[("x-a", "1,2")], &[]), "joined")]);
        assert_eq!(
            route(&t, "h", "GET", "/", &[("x-a", "1"), ("x-a", "2")]),
            Some("joined")
        );
    }
}
