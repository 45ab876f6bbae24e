//! ACL tokens: who may do what through the API and the discovery stream.
//!
//! A token is a secret (shown once, at creation) and a list of rules. The store keeps
//! only the secret's SHA-256, under `/weft/acl/tokens/<hash>`, so a copy of the store
//! does not hold usable tokens. Servers keep every token in their view (the watch keeps
//! it current), so checking a request costs a hash and a map lookup, and a revoked token
//! stops working on every replica within the watch's propagation time — open discovery
//! streams included.
//!
//! Rules (`RESOURCE:ACCESS`, access `read` or `write`; write implies read):
//!
//! | rule | grants |
//! | --- | --- |
//! | `service:NAME:write` | register, renew, report health, deregister instances of NAME; its certificate; its discovery stream |
//! | `service:NAME:read` | NAME's catalog entries, and NAME as an upstream of a discovery stream |
//! | `kv:PREFIX:read\|write` | keys starting with PREFIX (`kv::write`: every key) |
//! | `intentions:read\|write` | `Intention` resources |
//! | `tap:NAME:read` | live requests of NAME's proxies (`weft tap`, `top`): headers, maybe bodies |
//! | `operator:read` | configuration, catalog, status, proxies and their stats (not KV, not ACLs, not tap) |
//! | `operator:write` | everything, ACL management included (the management token) |
//!
//! NAME may be `*` (any service) or end with `*` (a prefix).

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Prefix of stored tokens (by secret hash).
pub const TOKENS: &str = "/weft/acl/tokens/";
/// Written once, by the bootstrap.
pub const BOOTSTRAPPED: &str = "/weft/acl/bootstrapped";

/// Read or write; write implies read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Look.
    Read,
    /// Change.
    Write,
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// A service's instances, certificate or discovery stream.
    Service(String, Access),
    /// A key of the KV store.
    Kv(String, Access),
    /// Intentions.
    Intentions(Access),
    /// Live requests of a service's proxies.
    Tap(String),
    /// Configuration, catalog, status, proxies; write: everything.
    Operator(Access),
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = |a: &Access| match a {
            Access::Read => "read",
            Access::Write => "write",
        };
        match self {
            Need::Service(n, x) => write!(f, "service:{n}:{}", a(x)),
            Need::Kv(k, x) => write!(f, "kv:{k}:{}", a(x)),
            Need::Intentions(x) => write!(f, "intentions:{}", a(x)),
            Need::Tap(n) => write!(f, "tap:{n}:read"),
            Need::Operator(x) => write!(f, "operator:{}", a(x)),
        }
    }
}

/// One rule of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `service:NAME:ACCESS`.
    Service(String, Access),
    /// `kv:PREFIX:ACCESS`.
    Kv(String, Access),
    /// `intentions:ACCESS`.
    Intentions(Access),
    /// `tap:NAME:ACCESS` (read and write grant the same).
    Tap(String, Access),
    /// `operator:ACCESS`.
    Operator(Access),
}

impl Rule {
    /// Parses `RESOURCE:…:ACCESS`.
    pub fn parse(s: &str) -> Result<Rule, String> {
        let (head, access) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("rule `{s}`: expected RESOURCE:ACCESS"))?;
        let access = match access {
            "read" => Access::Read,
            "write" => Access::Write,
            other => return Err(format!("rule `{s}`: access `{other}` is not read or write")),
        };
        let rule = match head.split_once(':') {
            Some(("service", name)) if valid_pattern(name) => Rule::Service(name.into(), access),
            Some(("service", name)) => {
                return Err(format!("rule `{s}`: `{name}` is not a service name, `*` or `prefix*`"))
            }
            Some(("kv", prefix)) => Rule::Kv(prefix.into(), access),
            Some(("tap", name)) if valid_pattern(name) => Rule::Tap(name.into(), access),
            Some(("tap", name)) => {
                return Err(format!("rule `{s}`: `{name}` is not a service name, `*` or `prefix*`"))
            }
            None if head == "intentions" => Rule::Intentions(access),
            None if head == "operator" => Rule::Operator(access),
            _ => {
                return Err(format!(
                    "rule `{s}`: expected service:NAME:, kv:PREFIX:, tap:NAME:, intentions: or operator: before the access"
                ))
            }
        };
        Ok(rule)
    }

    fn allows(&self, need: &Need) -> bool {
        match (self, need) {
            (Rule::Operator(Access::Write), _) => true,
            (Rule::Operator(Access::Read), n) => matches!(
                n,
                Need::Operator(Access::Read)
                    | Need::Service(_, Access::Read)
                    | Need::Intentions(Access::Read)
            ),
            (Rule::Service(p, have), Need::Service(name, want)) => {
                have >= want && pattern_matches(p, name)
            }
            (Rule::Kv(prefix, have), Need::Kv(key, want)) => {
                have >= want && key.starts_with(prefix.as_str())
            }
            (Rule::Intentions(have), Need::Intentions(want)) => have >= want,
            (Rule::Tap(p, _), Need::Tap(name)) => pattern_matches(p, name),
            _ => false,
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let need = match self {
            Rule::Service(n, a) => Need::Service(n.clone(), *a),
            Rule::Kv(k, a) => Need::Kv(k.clone(), *a),
            Rule::Intentions(a) => Need::Intentions(*a),
            Rule::Tap(n, Access::Write) => return write!(f, "tap:{n}:write"),
            Rule::Tap(n, Access::Read) => Need::Tap(n.clone()),
            Rule::Operator(a) => Need::Operator(*a),
        };
        need.fmt(f)
    }
}

fn valid_pattern(p: &str) -> bool {
    let name = p.strip_suffix('*').unwrap_or(p);
    p == "*" || (!name.is_empty() && crate::config::valid_name(name))
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// A stored token (without its secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    /// Public id: names the token in lists and revocations.
    pub accessor_id: String,
    /// SHA-256 of the secret, hex.
    pub secret_hash: String,
    /// What it is for.
    pub description: String,
    /// Its rules, as written.
    pub rules: Vec<String>,
    /// Unix seconds.
    pub created: u64,
}

impl Token {
    /// Whether the token's rules grant `need`.
    pub fn allows(&self, need: &Need) -> bool {
        self.rules
            .iter()
            .filter_map(|r| Rule::parse(r).ok())
            .any(|r| r.allows(need))
    }

    /// The API view: no hash.
    pub fn public(&self) -> serde_json::Value {
        serde_json::json!({
            "accessorId": self.accessor_id,
            "description": self.description,
            "rules": self.rules,
            "created": self.created,
        })
    }
}

/// SHA-256 of a secret, hex.
pub fn hash(secret: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A random id: 32 hex digits from the OS's randomness.
pub fn random_id() -> Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| ApiError::internal("no randomness from the OS"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Every token a server knows, by secret hash (part of the view).
pub type Tokens = HashMap<String, Arc<Token>>;

/// Who is calling: a token, or nobody in particular when ACLs are off.
#[derive(Debug, Clone)]
pub enum Caller {
    /// ACLs are off: everything is allowed.
    Anyone,
    /// No token was given.
    Nobody,
    /// A token that is not (or no longer) known.
    Unknown,
    /// A valid token.
    Token(Arc<Token>),
}

impl Caller {
    /// Ok when the caller may do `need`; otherwise the API error that says why.
    pub fn require(&self, need: &Need) -> Result<(), ApiError> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::Token(t) if t.allows(need) => Ok(()),
            Caller::Token(t) => Err(ApiError::forbidden(format!(
                "token {} does not grant {need}",
                t.accessor_id
            ))),
            Caller::Nobody => Err(ApiError::unauthorized(
                "acl-token-missing",
                "this server requires an ACL token (X-Weft-Token or Authorization: Bearer); \
                 the first one comes from `weft acl bootstrap`",
            )),
            Caller::Unknown => Err(ApiError::unauthorized(
                "acl-token-invalid",
                "unknown or revoked ACL token",
            )),
        }
    }

    /// Ok for a valid token (or when ACLs are off); the 401 otherwise. Checked before a
    /// request's body is read.
    pub fn authenticated(&self) -> Result<(), ApiError> {
        match self {
            Caller::Anyone | Caller::Token(_) => Ok(()),
            Caller::Nobody | Caller::Unknown => self.require(&Need::Operator(Access::Read)),
        }
    }

    /// Whether `need` is granted (for filtering lists).
    pub fn allows(&self, need: &Need) -> bool {
        self.require(need).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(rules: &[&str]) -> Caller {
        Caller::Token(Arc::new(Token {
            accessor_id: "t".into(),
            secret_hash: String::new(),
            description: String::new(),
            rules: rules.iter().map(|r| r.to_string()).collect(),
            created: 0,
        }))
    }

    #[test]
    fn rules_grant_what_they_name_and_nothing_else() {
        let web = token(&["service:web:write", "service:*:read"]);
        assert!(web.allows(&Need::Service("web".into(), Access::Write)));
        assert!(web.allows(&Need::Service("db".into(), Access::Read)));
        assert!(!web.allows(&Need::Service("db".into(), Access::Write)));
        assert!(!web.allows(&Need::Operator(Access::Read)));
        assert!(!web.allows(&Need::Kv("a".into(), Access::Read)));
        let kv = token(&["kv:app/:read", "kv:app/flags/:write"]);
        assert!(kv.allows(&Need::Kv("app/x".into(), Access::Read)));
        assert!(!kv.allows(&Need::Kv("app/x".into(), Access::Write)));
        assert!(kv.allows(&Need::Kv("app/flags/y".into(), Access::Write)));
        assert!(!kv.allows(&Need::Kv("other".into(), Access::Read)));
        let ro = token(&["operator:read"]);
        assert!(ro.allows(&Need::Operator(Access::Read)));
        assert!(!ro.allows(&Need::Operator(Access::Write)));
        assert!(!ro.allows(&Need::Kv("a".into(), Access::Read)));
        let root = token(&["operator:write"]);
        assert!(root.allows(&Need::Kv("a".into(), Access::Write)));
        let pre = token(&["service:pay*:write"]);
        assert!(pre.allows(&Need::Service("payments".into(), Access::Write)));
        assert!(!pre.allows(&Need::Service("web".into(), Access::Write)));
        assert!(Caller::Anyone.allows(&Need::Operator(Access::Write)));
        // Tap is its own rule: read-only operators and service tokens do not get it.
        assert!(!ro.allows(&Need::Tap("web".into())));
        assert!(!web.allows(&Need::Tap("web".into())));
        assert!(root.allows(&Need::Tap("web".into())));
        let tap = token(&["tap:pay*:read"]);
        assert!(tap.allows(&Need::Tap("payments".into())));
        assert!(!tap.allows(&Need::Tap("web".into())));
        assert!(!tap.allows(&Need::Operator(Access::Read)));
        assert!(!Caller::Nobody.allows(&Need::Service("web".into(), Access::Read)));
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        for (bad, why) in [
            ("service:web", "access `web`"),
            ("service:Web:read", "not a service name"),
            ("acl:write", "expected service:NAME:"),
            ("operator:admin", "access `admin`"),
            ("nothing", "expected RESOURCE:ACCESS"),
        ] {
            let e = Rule::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(
            Rule::parse("kv::write").unwrap(),
            Rule::Kv(String::new(), Access::Write)
        );
    }

    #[test]
    fn secrets_are_stored_as_hashes() {
        let h = hash("s3cret");
        assert_eq!(h.len(), 64);
        assert_ne!(h, hash("s3cret "));
        assert_eq!(random_id().unwrap().len(), 32);
    }
}
