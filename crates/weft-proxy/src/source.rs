//! Configuration sources. Today: a YAML file, re-read when it (or a certificate, key or CA
//! file it names) changes, and on SIGHUP. An edge gateway in the mesh follows its file the
//! same way ([`FileSource::follow`]), with its own way of reading and applying it.
//!
//! Each new version is validated in full by `weft-model` and then applied all or nothing
//! through [`RunningProxy::apply`]; an invalid one is refused with every error in the log
//! (file, line, field), a failure in `weft_config_loads_total`, and the reason in `/config`,
//! while the previous version keeps serving. The control plane's stream will be a second
//! source calling the same `apply`.

use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::proxy::RunningProxy;

/// A configuration file to follow.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    poll: Option<Duration>,
    hangup: Signal,
    /// Files and fingerprints as of the first load, taken before reading them.
    loaded: Option<(Vec<PathBuf>, Fingerprint)>,
    /// The file's fingerprint before a caller read it itself ([`FileSource::reading`]).
    first: Option<Fingerprint>,
}

/// What a change check compares, per watched file: a hash of its content. Modification
/// times are not enough: the kernel stamps them with a coarse clock (a few milliseconds),
/// so two same-sized writes in one tick would look unchanged. The files are small
/// (configuration, certificates, keys), so reading them at each check is cheap.
type Fingerprint = Vec<Option<u64>>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).ok()?;
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&bytes, &mut h);
            Some(std::hash::Hasher::finish(&h))
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
            loaded: None,
            first: None,
        })
    }

    /// For a caller that reads the file itself: call just before that first read, so a
    /// change landing between it and [`FileSource::follow`] is seen, not lost.
    pub fn reading(&mut self) {
        self.first = Some(fingerprint(std::slice::from_ref(&self.path)));
    }

    /// The file followed.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Reads and validates the file for the proxy's start. The fingerprints that `run`
    /// compares against are taken *before* the files are read, so a change that lands
    /// between this load and `run` is seen as a change rather than lost.
    pub fn load(&mut self) -> Result<weft_model::Config, weft_model::ConfigErrors> {
        let config_print = fingerprint(std::slice::from_ref(&self.path));
        let config = weft_model::load_file(&self.path)?;
        let mut files = vec![self.path.clone()];
        files.extend(config.referenced_files());
        let mut print = config_print;
        print.extend(fingerprint(&files[1..]));
        self.loaded = Some((files, print));
        Ok(config)
    }

    /// Follows the file until `stop` turns true, applying each valid version.
    pub async fn run(
        self,
        proxy: &RunningProxy,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let path = self.path.clone();
        self.follow(proxy, stop, |force| reload(&path, proxy, force))
            .await
    }

    /// Follows the file and the files the running configuration names until `stop`
    /// turns true, calling `reload(force)` when one changed or on SIGHUP (`force`: apply
    /// even if the file's own text is unchanged, since a certificate, key or CA changed or
    /// the operator asked).
    pub async fn follow(
        mut self,
        proxy: &RunningProxy,
        mut stop: watch::Receiver<bool>,
        mut reload: impl FnMut(bool),
    ) -> std::io::Result<()> {
        let (mut watched, mut seen) = match self.loaded.take() {
            Some(loaded) => loaded,
            None => {
                let files = self.watched(proxy);
                let mut print = fingerprint(&files);
                if let Some(first) = self.first.take() {
                    print[0] = first[0];
                }
                (files, print)
            }
        };
        loop {
            let poll = async {
                match self.poll {
                    Some(every) => tokio::time::sleep(every).await,
                    None => std::future::pending().await,
                }
            };
            // Taken before reading the files, so a change landing during the reload is
            // seen by the next check rather than absorbed into this one.
            let now = tokio::select! {
                _ = stop.changed() => return Ok(()),
                _ = self.hangup.recv() => {
                    tracing::info!(file = %self.path.display(), "SIGHUP: reloading configuration");
                    let now = fingerprint(&watched);
                    reload(true);
                    now
                }
                _ = poll => {
                    let mut now = fingerprint(&watched);
                    if now == seen {
                        continue;
                    }
                    // Settle: a file being written in place is read again until two
                    // reads agree, so a half-written file is not taken for a new version.
                    let settle = self.poll.unwrap_or_default().min(Duration::from_millis(100));
                    for _ in 0..50 {
                        tokio::time::sleep(settle).await;
                        let again = fingerprint(&watched);
                        if again == now {
                            break;
                        }
                        now = again;
                    }
                    // A certificate or key replaced on disk re-applies the same version.
                    let referenced_changed = now.get(1..) != seen.get(1..);
                    reload(referenced_changed);
                    now
                }
            };
            let files = self.watched(proxy);
            seen = if files == watched {
                now
            } else {
                fingerprint(&files)
            };
            watched = files;
        }
    }

    /// The configuration file, then every file the running version refers to.
    fn watched(&self, proxy: &RunningProxy) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(proxy.snapshot().config.referenced_files());
        files
    }
}

/// Reads, validates and applies the file once; `force` applies it even when its text is
/// unchanged (SIGHUP, or a referenced certificate changed).
fn reload(path: &std::path::Path, proxy: &RunningProxy, force: bool) {
    match weft_model::load_file(path) {
        Err(errors) => {
            tracing::error!("configuration refused, the previous version keeps serving:\n{errors}");
            proxy.reject(&errors.to_string());
        }
        Ok(config) if !force && config.version == proxy.snapshot().config.version => {
            // Back to the version that serves (after a refused one): the newest attempt
            // is good, so no refusal is current any more.
            proxy.clear_rejection();
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
