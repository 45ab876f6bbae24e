//! Configuration sources. Today: a YAML file, re-read when it changes and on SIGHUP.
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

/// What a change check compares: modification time and size (cheap; the content hash
/// then decides whether anything really changed).
type Fingerprint = Option<(SystemTime, u64)>;

fn fingerprint(path: &PathBuf) -> Fingerprint {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
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
        let mut seen = fingerprint(&self.path);
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
                    seen = fingerprint(&self.path);
                    self.reload(proxy);
                }
                _ = poll => {
                    let now = fingerprint(&self.path);
                    if now != seen {
                        seen = now;
                        self.reload(proxy);
                    }
                }
            }
        }
    }

    /// Reads, validates and applies the file once.
    pub fn reload(&self, proxy: &RunningProxy) {
        match weft_model::load_file(&self.path) {
            Err(errors) => {
                tracing::error!(
                    "configuration refused, the previous version keeps serving:\n{errors}"
                );
                proxy.reject(&errors.to_string());
            }
            Ok(config) if config.version == proxy.snapshot().config.version => {
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
