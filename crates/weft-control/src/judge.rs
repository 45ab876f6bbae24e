//! The intention check the API answers (`POST /v1/intentions/check`, the UI's form): a
//! request judged by the code the destination's sidecar runs. That code lives in the
//! proxy crate, which the control plane does not depend on; the `weft` binary hands it in
//! ([`crate::server::Options::judge`]), as `weft intention check` uses it.

/// What to judge.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckAsk {
    /// The calling service; absent or empty: a caller without a mesh identity.
    #[serde(default)]
    pub source: Option<String>,
    /// The called service.
    pub destination: String,
    /// The request method (default GET).
    #[serde(default)]
    pub method: Option<String>,
    /// The request path, with its query (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// Request headers, `[name, value]`.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// An opaque TCP connection instead of an HTTP request.
    #[serde(default)]
    pub tcp: bool,
}

/// The decision and why.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckAnswer {
    /// Whether the call is let through.
    pub allowed: bool,
    /// What decided: `intention NAME [permission N]`, the mesh default, or the refusal.
    pub reason: String,
    /// The whole explanation as `weft intention check` prints it.
    pub explanation: String,
}

/// Judges a call under a policy (the Mesh, Intention and Service resources as one text,
/// [`crate::state::View::policy_text`]). An `Err` is a malformed ask (a bad method or
/// header), answered 400.
pub trait Judge: Send + Sync {
    /// The decision for `ask`.
    fn check(&self, policy: &str, ask: &CheckAsk) -> Result<CheckAnswer, String>;
}

impl std::fmt::Debug for dyn Judge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Judge")
    }
}
