//! Mesh security resources: `Mesh` (mutual TLS mode, default authorization) and
//! `Intention` (which service may call which, optionally per HTTP request).

use serde::{Deserialize, Serialize};

use crate::{PathMatch, ValueMatch};

/// Whether a mesh inbound listener insists on mutual TLS.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Only mutual TLS with a mesh identity; plaintext is refused (the default).
    #[default]
    Strict,
    /// Mutual TLS and plaintext both accepted, for moving services into the mesh.
    /// Plaintext callers have no identity: only intentions for `*` apply to them.
    Permissive,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the call through.
    Allow,
    /// Refuse it: L4 closes the connection, L7 answers 403.
    #[default]
    Deny,
}

impl Action {
    /// As written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// `Mesh`: settings for the whole mesh. At most one, named `mesh`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshSpec {
    /// Mutual TLS between proxies.
    #[serde(default)]
    pub mtls: MeshMtls,
    /// What happens to a call no intention decides (default `deny`).
    #[serde(default)]
    pub default_action: Action,
    /// How sidecars normalise request paths, unless a `Service` says otherwise.
    #[serde(default, skip_serializing_if = "crate::PathPolicy::is_default")]
    pub paths: crate::PathPolicy,
    /// Distributed tracing in every sidecar and edge gateway (sampling, propagation); an
    /// edge gateway's own `tracing` wins for its listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<crate::Tracing>,
}

/// `Mesh.spec.mtls`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshMtls {
    /// `strict` (default) or `permissive`; a `Service` may override it for its own
    /// inbound listeners.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// `Intention`: whether `source` may call `destination`.
///
/// Either `action` (L4: the whole connection) or `permissions` (L7: per HTTP request,
/// first match wins) — not both.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IntentionSpec {
    /// The calling service, or `*` for any caller with a mesh identity. A `*` deny
    /// covers callers without an identity too (plaintext, in permissive mode); a `*`
    /// allow admits them only with `unauthenticated: true`.
    pub source: String,
    /// The called service, or `*` for any.
    pub destination: String,
    /// L4 decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// L7 decisions, tried in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<Permission>,
    /// With `source: "*"`: its allows admit callers without a mesh identity too
    /// (plaintext callers of a permissive inbound). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unauthenticated: bool,
}

/// One L7 permission: an action for the requests it matches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Permission {
    /// What to do with a matching request.
    pub action: Action,
    /// Which requests.
    #[serde(default)]
    pub http: PermissionMatch,
}

/// The requests a [`Permission`] covers; every condition given must hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PermissionMatch {
    /// Path condition (`Exact`, `PathPrefix`, `RegularExpression`); default any path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Methods, any of which matches; default any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
}

impl IntentionSpec {
    /// Precedence: exact source and destination (3) > any source, exact destination
    /// (2) > exact source, any destination (1) > any to any (0). Higher wins.
    pub fn precedence(&self) -> u8 {
        match (self.source == "*", self.destination == "*") {
            (false, false) => 3,
            (true, false) => 2,
            (false, true) => 1,
            (true, true) => 0,
        }
    }

    /// Whether it concerns a call from `source` (None: a caller without an identity) to
    /// `destination`.
    pub fn applies(&self, source: Option<&str>, destination: &str) -> bool {
        let src = self.source == "*" || Some(self.source.as_str()) == source;
        let dst = self.destination == "*" || self.destination == destination;
        src && dst
    }
}

/// An authorization decision and why it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict<'a> {
    /// Allow or deny.
    pub action: Action,
    /// Which intention (and permission) decided, or that the mesh default did.
    pub reason: Reason<'a>,
}

/// Why a [`Verdict`] was reached, borrowing the intentions it names. It is only put
/// into words when someone reads it (`Display`): a proxy judges every request and writes
/// the reason down only for a denial or a recorded span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason<'a> {
    /// An intention said it; `permission` is the index of its permission that matched
    /// (None: an L4 intention, `action`).
    Intention {
        /// The intention's name.
        name: &'a str,
        /// Which of its permissions matched.
        permission: Option<usize>,
    },
    /// No intention said anything: the mesh default decided.
    Default {
        /// `Mesh/mesh spec.defaultAction`.
        default: Action,
        /// Whether some intention applied (its permissions did not match).
        applied: bool,
        /// An allow that was not given because the caller has no identity.
        passed_over: Option<&'a str>,
    },
    /// The decision depended on a request and none was given.
    Undecided,
}

impl std::fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Reason::Intention {
                name,
                permission: None,
            } => write!(f, "intention {name}"),
            Reason::Intention {
                name,
                permission: Some(p),
            } => write!(f, "intention {name} permission {p}"),
            Reason::Default {
                default,
                applied,
                passed_over,
            } => {
                match (applied, passed_over) {
                    (_, Some(name)) => write!(
                        f,
                        "intention {name} allows only callers with a mesh identity \
                         (unauthenticated: true admits the others); "
                    )?,
                    (false, _) => f.write_str("no intention applies; ")?,
                    (true, _) => f.write_str("no permission matched; ")?,
                }
                write!(f, "Mesh/mesh spec.defaultAction: {}", default.as_str())
            }
            Reason::Undecided => f.write_str("undecided"),
        }
    }
}

/// Decides a call from `source` (None: no identity) to `destination`.
///
/// Precedence: only the intentions of the highest [`IntentionSpec::precedence`] that
/// apply to the pair count. Each of them says allow, deny or nothing (an L7 intention
/// none of whose permissions matches the request); any deny wins, then any allow; if
/// none says anything, `default` decides. For a caller without an identity, only `*`
/// intentions apply, and an allow counts only from one marked `unauthenticated` (its
/// denies always count).
///
/// `permission(i, p)` tells whether permission `p` of `intentions[i]` matches the
/// request; without it (a connection, before any request), a decision that depends on
/// the request is None. Nothing is allocated: a proxy calls this for every request.
pub fn decide<'a, I: std::borrow::Borrow<crate::Resource<IntentionSpec>>>(
    intentions: &'a [I],
    default: Action,
    source: Option<&str>,
    destination: &str,
    permission: Option<&dyn Fn(usize, usize) -> bool>,
) -> Option<Verdict<'a>> {
    let applying = || {
        intentions
            .iter()
            .map(|i| i.borrow())
            .enumerate()
            .filter(|(_, it)| it.spec.applies(source, destination))
    };
    let top = applying().map(|(_, it)| it.spec.precedence()).max();
    let mut allow = None;
    let mut depends = false;
    // An allow not given to a caller without an identity (for the reason).
    let mut passed_over: Option<&str> = None;
    for (i, it) in applying().filter(|(_, it)| Some(it.spec.precedence()) == top) {
        let name = it.metadata.name.as_str();
        let said = match it.spec.action {
            Some(action) => Some((
                action,
                Reason::Intention {
                    name,
                    permission: None,
                },
            )),
            None => match permission {
                None => {
                    depends = true;
                    None
                }
                Some(matches) => it
                    .spec
                    .permissions
                    .iter()
                    .enumerate()
                    .find(|(p, _)| matches(i, *p))
                    .map(|(p, perm)| {
                        (
                            perm.action,
                            Reason::Intention {
                                name,
                                permission: Some(p),
                            },
                        )
                    }),
            },
        };
        // `*` means any authenticated caller; an anonymous one is let in only on purpose.
        let said = match said {
            Some((Action::Allow, _)) if source.is_none() && !it.spec.unauthenticated => {
                passed_over.get_or_insert(name);
                None
            }
            said => said,
        };
        match said {
            Some((Action::Deny, reason)) => {
                return Some(Verdict {
                    action: Action::Deny,
                    reason,
                })
            }
            Some((Action::Allow, reason)) => {
                allow.get_or_insert(reason);
            }
            None => {}
        }
    }
    if depends {
        return None;
    }
    Some(match allow {
        Some(reason) => Verdict {
            action: Action::Allow,
            reason,
        },
        None => Verdict {
            action: default,
            reason: Reason::Default {
                default,
                applied: top.is_some(),
                passed_over,
            },
        },
    })
}
