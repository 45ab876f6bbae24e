//! Configuration sources. Today: a YAML file, re-read when it (or a certificate, key or CA
//! file it names) changes, and on SIGHUP.
//!
//! Each new version is validated in full by `weft-model` and then applied all or nothing
//! through [`RunningProxy::apply`]; an invalid one is refused with every error in the log
//! (file, line, field), a failure in `weft_config_loads_total`, and the reason in `/config`,
//! while the previous version keeps serving. The control plane's stream will be a second
//! source calling the same `apply`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::RunningProxy;

/// A configuration file to follow.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    poll: Option<Duration>,
    hangup: Signal,
}

/// What a change check compares, per watched file: modification time and size (cheap;
/// for the configuration file the content hash then decides whether anything changed).
type Fingerprint = Vec<Option<(SystemTime, u64)>>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

impl FileSource {
    /// Follows `path`, checking every `poll` (`None`: on SIGHUP only). SIGHUP is taken over
    /// here, at construction, so a signal that arrives before `run` reloads instead of
    /// killing the process (SIGHUP's default action). Needs a tokio runtime.
    pub fn new(path: PathBuf, poll: Option<Duration>) -> std::io::Result<FileSource> {
        Ok(FileSource {
            path,
            poll,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Follows the file until `stop` turns true.
    pub async fn run(
        mut self,
        proxy: &RunningProxy,
        mut stop: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let mut watched = self.watched(proxy);
        let mut seen = fingerprint(&watched);
        loop {
            let poll = async {
                match self.poll {
                    Some(every) => tokio::time::sleep(every).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                _ = self.hangup.recv() => {
                    tracing::info!(file = %self.path.display(), "SIGHUP: reloading configuration");
                    self.reload(proxy, true);
                }
                _ = poll => {
                    let now = fingerprint(&watched);
                    if now == seen {
                        continue;
                    }
                    // A certificate or key replaced on disk re-applies the same version.
                    let referenced_changed = now.get(1..) != seen.get(1..);
                    self.reload(proxy, referenced_changed);
                }
            }
            watched = self.watched(proxy);
            seen = fingerprint(&watched);
        }
    }

    /// The configuration file, then every file the running version refers to.
    fn watched(&self, proxy: &RunningProxy) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(proxy.snapshot().config.referenced_files());
        files
    }

    /// Reads, validates and applies the file once; `force` applies it even when its text
    /// is unchanged (SIGHUP, or a referenced certificate changed).
    pub fn reload(&self, proxy: &RunningProxy, force: bool) {
        match weft_model::load_file(&self.path) {
            Err(errors) => {
                tracing::error!(
                    "configuration refused, the previous version keeps serving:\n{errors}"
                );
                proxy.reject(&errors.to_string());
            }
            Ok(config) if !force && config.version == proxy.snapshot().config.version => {
                tracing::debug!("configuration unchanged");
            }
            Ok(config) => {
                let version = config.version.clone();
                match proxy.apply(config) {
                    Ok(()) => tracing::info!(%version, "configuration applied"),
                    Err(e) => {
                        tracing::error!(error = %e, "configuration refused, the previous version keeps serving")
                    }
                }
            }
        }
    }
}
