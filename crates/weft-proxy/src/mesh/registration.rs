//! The local instance in the catalog, through the control plane's HTTP API: register
//! (with the result of a first health check), keep the lease alive, report health changes,
//! register again if the lease was lost (e.g. the server was away longer than the TTL),
//! and deregister on shutdown.

use std::{net::SocketAddr, time::Duration};

use serde_json::{json, Value};
use tokio::net::TcpStream;

use super::control_api::call;

/// While the application has never passed a check, for this long after start...
const STARTING_FOR: Duration = Duration::from_secs(10);
/// ... it is checked this often (at most; `--health-interval` if shorter).
const STARTING_CHECK: Duration = Duration::from_millis(250);
/// How the local application's health is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// `GET path` must answer 2xx.
    Http(String),
    /// A TCP connection must open.
    Tcp,
    /// The gRPC health protocol (`grpc.health.v1.Health/Check`) must answer SERVING for
    /// this service name (empty: the server as a whole).
    Grpc(String),
    /// Not checked: always reported passing.
    None,
}

/// One registration and how to keep it.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Control-plane base URLs (`http://IP:PORT`), tried in turn.
    pub servers: Vec<String>,
    /// Service name.
    pub service: String,
    /// Instance id.
    pub id: String,
    /// Address and port other sidecars reach (this sidecar's inbound listener).
    pub address: SocketAddr,
    /// Metadata (version, zone, ...).
    pub metadata: Vec<(String, String)>,
    /// What the app speaks (`http`, `http2`, `grpc`, `tcp`): callers' sidecars open a
    /// TCP listener for a `tcp` service.
    pub protocol: weft_model::AppProtocol,
    /// Lease TTL.
    pub ttl: Duration,
    /// The local application.
    pub app: SocketAddr,
    /// Its health check.
    pub check: HealthCheck,
    /// How often to check.
    pub interval: Duration,
}

/// Runs the health check once.
pub async fn check(app: SocketAddr, check: &HealthCheck) -> bool {
    let probe = async {
        match check {
            HealthCheck::None => true,
            HealthCheck::Tcp => TcpStream::connect(app).await.is_ok(),
            HealthCheck::Grpc(service) => grpc_serving(app, service).await,
            HealthCheck::Http(path) => {
                let (status, _) = match call(&format!("http://{app}"), "GET", path, None).await {
                    Ok(r) => r,
                    Err(_) => return false,
                };
                (200..300).contains(&status)
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .unwrap_or(false)
}

async fn grpc_serving(app: SocketAddr, service: &str) -> bool {
    use weft_api::health::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{app}")) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
    else {
        return false;
    };
    let request = HealthCheckRequest {
        service: service.to_string(),
    };
    match HealthClient::new(channel).check(request).await {
        Ok(r) => r.into_inner().status == ServingStatus::Serving as i32,
        Err(_) => false,
    }
}

impl Registration {
    fn instance(&self, passing: bool) -> Value {
        let metadata: serde_json::Map<String, Value> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        json!({
            "service": self.service,
            "id": self.id,
            "address": self.address.ip().to_string(),
            "port": self.address.port(),
            "metadata": metadata,
            "protocol": self.protocol,
            "health": if passing { "passing" } else { "critical" },
            "ttl": format!("{}ms", self.ttl.as_millis()),
        })
    }

    /// Keeps the registration for ever (cancel the future to stop; then [`deregister`]).
    ///
    /// [`deregister`]: Registration::deregister
    pub async fn keep(&self) {
        let mut lease: Option<u64> = None;
        let mut reported: Option<bool> = None;
        let mut server = 0usize;
        let period = self.interval.min(self.ttl / 3);
        // A sidecar often starts beside an application still starting: until the app has
        // passed once (for its first STARTING_FOR), it is checked again sooner, so it gets
        // traffic a moment after it listens rather than a whole interval later.
        let started = std::time::Instant::now();
        let mut ever_passed = false;
        loop {
            let passing = check(self.app, &self.check).await;
            ever_passed |= passing;
            if reported.is_some() && reported != Some(passing) {
                tracing::warn!(passing, "local application health changed");
            }
            let base = &self.servers[server % self.servers.len()];
            let outcome = match lease {
                None => self.register(base, passing).await.map(|l| {
                    lease = Some(l);
                    reported = Some(passing);
                }),
                Some(l) => self
                    .refresh(base, l, passing, &mut reported)
                    .await
                    .inspect_err(|e| {
                        if e.contains("not-found") {
                            lease = None; // lease or instance gone: register again at once
                        }
                    }),
            };
            match outcome {
                Ok(()) if !ever_passed && started.elapsed() < STARTING_FOR => {
                    tokio::time::sleep(period.min(STARTING_CHECK)).await
                }
                Ok(()) => tokio::time::sleep(period).await,
                Err(e) => {
                    tracing::warn!(server = %base, error = %e, "catalog update failed");
                    server += 1;
                    if lease.is_some() {
                        tokio::time::sleep(period.min(Duration::from_secs(1))).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(200 + fastrand::u64(0..300)))
                            .await;
                    }
                }
            }
        }
    }

    async fn register(&self, base: &str, passing: bool) -> Result<u64, String> {
        let (status, body) = call(
            base,
            "POST",
            "/v1/catalog/register",
            Some(&self.instance(passing)),
        )
        .await?;
        if status != 200 {
            return Err(format!("register: {status} {body}"));
        }
        tracing::info!(service = %self.service, id = %self.id, passing, "registered");
        body.get("lease")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("register: no lease in {body}"))
    }

    async fn refresh(
        &self,
        base: &str,
        lease: u64,
        passing: bool,
        reported: &mut Option<bool>,
    ) -> Result<(), String> {
        let (status, body) = call(
            base,
            "PUT",
            &format!("/v1/catalog/leases/{lease}/renew?service={}", self.service),
            None,
        )
        .await?;
        if status != 200 {
            return Err(format!("renew: {status} {body}"));
        }
        if *reported != Some(passing) {
            let path = format!(
                "/v1/catalog/services/{}/instances/{}/health",
                self.service, self.id
            );
            let status_word = if passing { "passing" } else { "critical" };
            let (status, body) =
                call(base, "PUT", &path, Some(&json!({"status": status_word}))).await?;
            if status != 200 {
                return Err(format!("health: {status} {body}"));
            }
            *reported = Some(passing);
        }
        Ok(())
    }

    /// Removes the instance from the catalog (best effort over every server).
    pub async fn deregister(&self) -> bool {
        let path = format!(
            "/v1/catalog/services/{}/instances/{}",
            self.service, self.id
        );
        for base in &self.servers {
            if let Ok((status, _)) = call(base, "DELETE", &path, None).await {
                if status == 200 || status == 404 {
                    tracing::info!(service = %self.service, id = %self.id, "deregistered");
                    return true;
                }
            }
        }
        false
    }
}
