//! One normal form for request paths, judged by routing, intentions and rate limits and
//! forwarded as judged, so a path cannot mean one thing to weft and another to the app
//! (the bypass class of CVE-2021-31920: `/public/%2e%2e/admin`, `/%61dmin`, `//admin`).
//!
//! In order (docs/security.md, "Request paths"):
//! 1. escapes are checked: a `%` not followed by two hex digits, an encoded control
//!    character (`%00`–`%1F`, `%7F`) or escapes that do not decode to UTF-8 (overlong
//!    forms such as `%C0%AE`) are refused;
//! 2. escaped unreserved characters are decoded (`%2e` → `.`, `%61` → `a`), other escapes
//!    upper-cased (`%3b` → `%3B`), and characters that must not appear raw (non-ASCII,
//!    `"`, `{`, `|`, …) escaped — RFC 3986 §6.2.2;
//! 3. encoded slashes and backslashes (`%2F`, `%5C`, raw `\`) are refused or kept escaped,
//!    never decoded into separators ([`EscapedSlashes`]);
//! 4. path parameters (`;` in a segment) are refused or stripped ([`PathParameters`]);
//! 5. repeated slashes are merged (unless turned off);
//! 6. dot segments are removed (RFC 3986 §5.2.4);
//! 7. a double-encoded dot, slash or backslash (`%252E`, `%252F`, `%255C`) is refused:
//!    an application that decodes twice would read it as one.
//!
//! The result is idempotent and holds no dot segment and no escaped unreserved character
//! (the `normalized_paths` fuzz target checks both). A raw `#` never reaches this code:
//! the HTTP parser cuts the fragment off the request target, and it is not forwarded.

use std::borrow::Cow;

use weft_model::{EscapedSlashes, PathParameters, PathPolicy};

pub use crate::error::PathError;

/// `ALPHA / DIGIT / "-" / "." / "_" / "~"`: decoded when escaped.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// What may stay raw in a normal path: pchar without `%` (escapes are rebuilt), and `/`.
fn plain(b: u8) -> bool {
    unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 0xF)] as char);
}

/// Whether `path` is already normal under `policy`: no escape, nothing to escape, no `;`,
/// no dot segment, and no `//` when slashes are merged. Most paths are; they are judged
/// and forwarded without a copy.
fn is_normal(path: &str, policy: &PathPolicy) -> bool {
    path.bytes().all(|b| plain(b) && b != b';')
        && !(policy.merge_slashes && path.contains("//"))
        && !path.split('/').any(|s| s == "." || s == "..")
}

/// The normal form of `path` under `policy`, or why it is refused. A target that is not
/// a path (`*` of `OPTIONS *`) is returned as it is.
pub fn normalize<'a>(path: &'a str, policy: &PathPolicy) -> Result<Cow<'a, str>, PathError> {
    if !path.starts_with('/') || is_normal(path, policy) {
        return Ok(Cow::Borrowed(path));
    }
    let escaped = canonical_escapes(path, policy.escaped_slashes)?;
    let params_out = match policy.path_parameters {
        _ if !escaped.contains(';') => escaped,
        PathParameters::Reject => return Err(PathError::PathParameter),
        PathParameters::Strip => escaped
            .split('/')
            .map(|seg| seg.split(';').next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("/"),
    };
    let merged = if policy.merge_slashes {
        merge_slashes(&params_out)
    } else {
        params_out
    };
    let out = remove_dot_segments(&merged);
    if double_encoded(&out) {
        return Err(PathError::DoubleEncoded);
    }
    Ok(Cow::Owned(out))
}

/// The normal form of a path written in configuration (a route's or a permission's
/// `Exact` or `PathPrefix` value), so that it compares with normalised requests: escapes
/// as in [`normalize`] and dot segments removed; `;`, `//` and escaped slashes are left
/// as written (a request that carries them is refused or normalised by its listener).
pub fn normalize_match_value(value: &str) -> String {
    match canonical_escapes(value, EscapedSlashes::Keep) {
        Ok(v) if value.starts_with('/') => remove_dot_segments(&v),
        Ok(v) => v,
        Err(_) => value.to_string(),
    }
}

/// Steps 1–3: every escape checked, unreserved ones decoded, the others upper-cased, raw
/// characters that need it escaped; slashes and backslashes per `slashes`.
fn canonical_escapes(path: &str, slashes: EscapedSlashes) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len() + 8);
    // Every escape decoded, to check that together they spell UTF-8.
    let mut decoded: Vec<u8> = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let v = match (
                bytes.get(i + 1).and_then(|&h| hex(h)),
                bytes.get(i + 2).and_then(|&l| hex(l)),
            ) {
                (Some(h), Some(l)) => h << 4 | l,
                _ => return Err(PathError::BadEscape),
            };
            i += 3;
            decoded.push(v);
            if v < 0x20 || v == 0x7F {
                return Err(PathError::ControlCharacter);
            }
            if unreserved(v) {
                out.push(v as char);
            } else if (v == b'/' || v == b'\\') && slashes == EscapedSlashes::Reject {
                return Err(PathError::EscapedSlash);
            } else {
                push_escaped(&mut out, v);
            }
            continue;
        }
        i += 1;
        decoded.push(b);
        if b == b'\\' {
            if slashes == EscapedSlashes::Reject {
                return Err(PathError::EscapedSlash);
            }
            push_escaped(&mut out, b);
        } else if plain(b) {
            out.push(b as char);
        } else {
            push_escaped(&mut out, b);
        }
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(PathError::NotUtf8);
    }
    Ok(out)
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// RFC 3986 §5.2.4 on an absolute path: `.` and `..` segments resolved, `..` never above
/// the root; a path ending in a dot segment keeps its trailing slash.
fn remove_dot_segments(path: &str) -> String {
    if !path.split('/').any(|s| s == "." || s == "..") {
        return path.to_string();
    }
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, s) in segments.iter().enumerate() {
        match *s {
            "." | ".." => {
                if *s == ".." {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// `%25` followed by the two hex digits of `.`, `/` or `\`.
fn double_encoded(path: &str) -> bool {
    path.match_indices("%25").any(|(i, _)| {
        let rest = &path.as_bytes()[i + 3..];
        matches!(
            (rest.first().and_then(|&h| hex(h)), rest.get(1).and_then(|&l| hex(l))),
            (Some(h), Some(l)) if matches!(h << 4 | l, b'.' | b'/' | b'\\')
        )
    })
}

#[cfg(test)]
mod tests;
