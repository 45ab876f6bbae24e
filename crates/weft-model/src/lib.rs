//! weft's resource model: the typed configuration every weft component reads.
//!
//! Data flows one way through this crate:
//!
//! ```text
//! YAML text ─► yaml::parse_documents (line-marked JSON values)
//!           ─► typed Resource<Spec> per document (serde, field path on error)
//!           ─► validate (cross-references, regexes, header names, …)
//!           ─► Config (immutable; the proxy compiles it into a snapshot)
//! ```
//!
//! Every error carries the file, line and field path; one bad document refuses the whole
//! file, so a half-valid configuration is never applied. This crate does no I/O beyond
//! reading the file it is asked to load.

pub mod delivery;
pub mod duration;
pub mod resources;
pub mod security;
mod validate;
pub mod yaml;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use delivery::*;
pub use resources::*;
pub use security::*;

/// Largest configuration file accepted.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// A validated configuration: the resources of one file.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Config {
    /// Content hash of the source text: changes whenever the file does.
    pub version: String,
    /// `Gateway` resources (listeners).
    pub gateways: Vec<Resource<GatewaySpec>>,
    /// `HTTPRoute` resources, in file order (file order breaks precedence ties).
    pub routes: Vec<Resource<HttpRouteSpec>>,
    /// `Service` resources.
    pub services: Vec<Resource<ServiceSpec>>,
    /// `TCPRoute` resources.
    #[serde(rename = "tcpRoutes")]
    pub tcp_routes: Vec<Resource<StreamRouteSpec>>,
    /// `TLSRoute` resources.
    #[serde(rename = "tlsRoutes")]
    pub tls_routes: Vec<Resource<StreamRouteSpec>>,
    /// The `Mesh` resource (at most one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub meshes: Vec<Resource<MeshSpec>>,
    /// `Intention` resources.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub intentions: Vec<Resource<IntentionSpec>>,
    /// `Canary` resources (control plane only: the control plane runs them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canaries: Vec<Resource<CanarySpec>>,
    /// Directory relative file names (certificates, keys) are resolved against: the
    /// configuration file's directory; absent for text parsed without a file.
    #[serde(skip)]
    pub base_dir: Option<std::path::PathBuf>,
}

impl Config {
    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Resource<ServiceSpec>> {
        self.services.iter().find(|s| s.metadata.name == name)
    }

    /// The mesh settings: the `Mesh` resource's, or the defaults (strict mutual TLS,
    /// deny what no intention allows).
    pub fn mesh(&self) -> MeshSpec {
        self.meshes
            .first()
            .map(|m| m.spec.clone())
            .unwrap_or_default()
    }

    /// The mutual TLS mode of `service`'s inbound listeners: its own, else the mesh's.
    pub fn mtls_mode(&self, service: &str) -> MtlsMode {
        self.service(service)
            .and_then(|s| s.spec.mtls.as_ref())
            .map_or(self.mesh().mtls.mode, |m| m.mode)
    }

    /// `file` as a path: absolute as is, relative against [`Config::base_dir`].
    pub fn resolve(&self, file: &str) -> std::path::PathBuf {
        match &self.base_dir {
            Some(dir) => dir.join(file),
            None => std::path::PathBuf::from(file),
        }
    }

    /// Every file the configuration refers to (certificates and keys): a source watching
    /// the configuration watches these too.
    pub fn referenced_files(&self) -> Vec<std::path::PathBuf> {
        let listener_certs = self
            .gateways
            .iter()
            .flat_map(|g| &g.spec.listeners)
            .flat_map(|l| l.tls.iter().flat_map(|t| &t.certificates));
        let upstream = self.services.iter().filter_map(|s| s.spec.tls.as_ref());
        let client_certs = upstream.clone().flat_map(|t| &t.client_certificate);
        let mut files: Vec<_> = listener_certs
            .chain(client_certs)
            .flat_map(|c| [self.resolve(&c.cert_file), self.resolve(&c.key_file)])
            .collect();
        files.extend(
            upstream
                .filter_map(|t| t.ca_file.as_deref())
                .map(|f| self.resolve(f)),
        );
        files
    }
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File name as given.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Field path, e.g. `HTTPRoute/web: spec.rules[0].backendRefs[0].name`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file, line)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// All problems found in a file (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    fn single(file: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            line,
            field: String::new(),
            message: message.into(),
        }])
    }
}

/// Reads and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigErrors::single(&name, None, format!("cannot read: {e}")))?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigErrors::single(
            &name,
            None,
            format!(
                "file is {} bytes; the limit is {MAX_CONFIG_BYTES}",
                meta.len()
            ),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::single(&name, None, format!("cannot read: {e}")))?;
    let mut config = parse(&name, &text)?;
    config.base_dir = path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".").to_path_buf()
        } else {
            p.to_path_buf()
        }
    });
    Ok(config)
}

/// Parses and validates configuration text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigErrors> {
    let docs = yaml::parse_documents(text).map_err(|e| {
        ConfigErrors::single(file, Some(e.line), format!("YAML syntax: {}", e.message))
    })?;
    let mut errors = Vec::new();
    let mut config = Config {
        version: content_version(text),
        gateways: Vec::new(),
        routes: Vec::new(),
        services: Vec::new(),
        tcp_routes: Vec::new(),
        tls_routes: Vec::new(),
        meshes: Vec::new(),
        intentions: Vec::new(),
        canaries: Vec::new(),
        base_dir: None,
    };
    let mut origins = validate::Origins::default();
    for doc in &docs {
        let kind = doc
            .value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        let err_at = |field: String, message: String| ConfigError {
            file: file.to_string(),
            line: doc.lines.line_of(&field).or(Some(doc.start_line)),
            field,
            message,
        };
        // A typed resource goes to its list, with the document it came from beside it.
        let mut keep = |res: Result<(), (String, String)>| {
            if let Err((f, m)) = res {
                errors.push(err_at(f, m));
            }
        };
        match kind {
            "Gateway" => keep(take(doc, &mut config.gateways, &mut origins.gateways)),
            "HTTPRoute" => keep(take(doc, &mut config.routes, &mut origins.routes)),
            "Service" => keep(take(doc, &mut config.services, &mut origins.services)),
            "TCPRoute" => keep(take(doc, &mut config.tcp_routes, &mut origins.tcp_routes)),
            "TLSRoute" => keep(take(doc, &mut config.tls_routes, &mut origins.tls_routes)),
            "Mesh" => keep(take(doc, &mut config.meshes, &mut origins.meshes)),
            "Intention" => keep(take(doc, &mut config.intentions, &mut origins.intentions)),
            "Canary" => keep(take(doc, &mut config.canaries, &mut origins.canaries)),
            "" if doc.value.is_null() => {} // empty document, e.g. a trailing `---`
            "" => errors.push(err_at("kind".into(), "missing `kind`".into())),
            other => errors.push(err_at(
                "kind".into(),
                format!("unknown kind `{other}` (expected Gateway, HTTPRoute, TCPRoute, TLSRoute, Service, Mesh, Intention or Canary)"),
            )),
        }
    }
    if errors.is_empty() {
        validate::validate(file, &config, &origins, &mut errors);
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Types `doc` and appends it to `out`, its document to `origins`.
fn take<'a, T: DeserializeOwned>(
    doc: &'a yaml::Document,
    out: &mut Vec<T>,
    origins: &mut Vec<&'a yaml::Document>,
) -> Result<(), (String, String)> {
    out.push(typed(doc)?);
    origins.push(doc);
    Ok(())
}

fn typed<T: DeserializeOwned>(doc: &yaml::Document) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(&doc.value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        (path, e.into_inner().to_string())
    })
}

/// A stable content hash (SipHash with fixed keys), 16 hex digits.
fn content_version(text: &str) -> String {
    #[allow(deprecated)]
    // SipHasher is deprecated only in favour of DefaultHasher, whose keys may change
    let mut h = std::hash::SipHasher::new();
    text.hash(&mut h);
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests;
