//! Reloading the config while serving: on SIGHUP, and with `-w` whenever the
//! modification time of the config file, or of a certificate, key, CA or ticket key file
//! it names, changes (checked every second). The new file is parsed and validated in full first; a
//! bad one is logged at error and the running config stays. SIGUSR1 reopens the access log
//! file (after logrotate has moved it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info, warn};

use crate::chain::Chain;
use crate::config::{self, Config};
use crate::server::Server;

/// How often `-w` looks at the file.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The files a running config depends on, and their [`Stamp`]s from before it was read, so
/// that no change made while it loads is missed (a change made before is read twice, which
/// is harmless).
pub(crate) struct Watched {
    path: PathBuf,
    files: Vec<PathBuf>,
    stamps: Vec<Option<Stamp>>,
}

impl Watched {
    pub(crate) fn new(path: &Path, config: &Config) -> Watched {
        let files = files(path, config);
        let stamps = stamps(&files);
        Watched {
            path: path.to_path_buf(),
            files,
            stamps,
        }
    }

    /// Whether a file changed since the last call (or since [`Watched::new`]).
    fn changed(&mut self) -> bool {
        let now = stamps(&self.files);
        let changed = now != self.stamps;
        self.stamps = now;
        changed
    }

    /// Re-reads the modification times; call it before a reload reads the files.
    fn stamp(&mut self) {
        self.stamps = stamps(&self.files);
    }

    /// What to watch once `config` is loaded: its files, each with the time [`stamp`]
    /// took before the load when it was watched already (a file only the new config
    /// names is stamped now). Stamped after the load instead, a certificate renewed
    /// while the reload ran would never be picked up.
    ///
    /// [`stamp`]: Watched::stamp
    fn reloaded(&self, config: &Config) -> Watched {
        self.with_files(files(&self.path, config))
    }

    fn with_files(&self, files: Vec<PathBuf>) -> Watched {
        let stamps = files
            .iter()
            .map(|f| {
                self.files
                    .iter()
                    .zip(&self.stamps)
                    .find(|(watched, _)| *watched == f)
                    .map_or_else(|| modified(f), |(_, stamp)| *stamp)
            })
            .collect();
        Watched {
            path: self.path.clone(),
            files,
            stamps,
        }
    }
}

/// SIGHUP and SIGUSR1, listened for from [`Signals::install`] on. Install them before
/// the first listener is bound: a signal sent once "listening" is logged must not meet
/// the default action, which ends the process.
pub(crate) struct Signals {
    hup: Option<Signal>,
    usr1: Option<Signal>,
}

impl Signals {
    pub(crate) fn install() -> Signals {
        let hup = match signal(SignalKind::hangup()) {
            Ok(hup) => Some(hup),
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGHUP; reload only with -w");
                None
            }
        };
        let usr1 = match signal(SignalKind::user_defined1()) {
            Ok(usr1) => Some(usr1),
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGUSR1; the access log file is never reopened");
                None
            }
        };
        Signals { hup, usr1 }
    }
}

/// Reloads into `server` on each SIGHUP, and on each change of the watched files when
/// `watch_files`. Runs until the task is dropped.
pub(crate) async fn run(
    server: Arc<Server>,
    mut watched: Watched,
    watch_files: bool,
    signals: Signals,
) {
    let Signals { mut hup, mut usr1 } = signals;
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            Some(()) = async { hup.as_mut()?.recv().await } => {}
            Some(()) = async { usr1.as_mut()?.recv().await } => {
                if let Some(log) = server.runtime().forwarder.access_log() {
                    log.reopen();
                }
                continue;
            }
            _ = tick.tick(), if watch_files => {
                if !watched.changed() {
                    continue;
                }
            }
        }
        watched.stamp();
        if let Some(config) = reload(&server, &watched.path) {
            watched = watched.reloaded(&config);
        }
    }
}

/// Loads `path` and applies it; returns the config when it was applied.
pub(crate) fn reload(server: &Arc<Server>, path: &Path) -> Option<Config> {
    let metrics = server.metrics();
    let applied = match config::load(path) {
        Err(err) => {
            error!(config = %path.display(), error = %Chain(&err), "reload refused: the config is invalid; the running config stays");
            None
        }
        Ok((config, warnings)) => {
            for w in &warnings {
                warn!(warning = %w, "config");
            }
            match server.apply(&config) {
                Ok(()) => {
                    reconfigure_access_log(server, &config);
                    info!(config = %path.display(), "config reloaded");
                    Some(config)
                }
                Err(err) => {
                    error!(config = %path.display(), error = %Chain(&err), "reload failed; the running config stays");
                    None
                }
            }
        }
    };
    let counter = if applied.is_some() {
        &metrics.reloads_ok
    } else {
        &metrics.reloads_failed
    };
    counter.inc();
    applied
}

/// Points the access log at the reloaded config's path and format. The file was opened
/// once by the config's check; should it fail now, the old destination stays.
fn reconfigure_access_log(server: &Arc<Server>, config: &Config) {
    if let Some(log) = server.runtime().forwarder.access_log()
        && let Err(err) = log.reconfigure(&config.access_log)
    {
        error!(error = %Chain(&err), "reload: the access log stays where it was");
    }
}

/// The config file and every certificate, key, CA and ticket key file it names.
fn files(path: &Path, config: &Config) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    files.extend(config.tls_ticket_key_file.clone());
    for tls in config.apps.iter().filter_map(|a| a.tls.as_ref()) {
        files.extend([tls.cert_path.clone(), tls.key_path.clone()]);
        files.extend(tls.client_ca_path.clone());
    }
    files
}

/// What tells that a file changed: its modification time, and its inode and length, which
/// catch a rewrite within the same timestamp tick when it changes the length or replaces
/// the file (as certbot and Kubernetes secret volumes do, by rename).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: SystemTime,
    inode: u64,
    len: u64,
}

fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    files.iter().map(|f| modified(f)).collect()
}

fn modified(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok()?,
        inode: meta.ino(),
        len: meta.len(),
    })
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    /// A certificate rewritten after the reload stamped the files but before it finished
    /// (here: before the new watch list is made) is seen at the next check.
    #[test]
    fn a_change_made_during_a_reload_is_seen_at_the_next_check() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (config, cert) = (dir.path().join("c.toml"), dir.path().join("cert.pem"));
        for f in [&config, &cert] {
            std::fs::write(f, "x").expect("write");
        }
        let mut watched = Watched {
            path: config.clone(),
            files: vec![config.clone(), cert.clone()],
            stamps: Vec::new(),
        };
        watched.stamp();
        let later = SystemTime::now() + Duration::from_secs(10);
        File::options()
            .write(true)
            .open(&cert)
            .and_then(|f| f.set_modified(later))
            .expect("set the certificate's mtime");
        let new = dir.path().join("new.pem");
        std::fs::write(&new, "x").expect("write");
        let mut next = watched.with_files(vec![config, cert, new]);
        assert!(next.changed(), "the certificate changed during the reload");
        assert!(!next.changed(), "and nothing since");
    }

    /// A rewrite that lands within the same timestamp tick (here: its modification time
    /// put back) is seen when it changes the file's length or replaces the file.
    #[test]
    fn a_rewrite_in_the_same_tick_is_seen_by_its_length_or_its_inode() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "one").expect("write");
        let mtime = std::fs::metadata(&cert)
            .and_then(|m| m.modified())
            .expect("mtime");
        let mut watched = Watched {
            path: cert.clone(),
            files: vec![cert.clone()],
            stamps: Vec::new(),
        };
        watched.stamp();
        let same_tick = |path: &Path| {
            File::options()
                .write(true)
                .open(path)
                .and_then(|f| f.set_modified(mtime))
                .expect("put the mtime back");
        };
        std::fs::write(&cert, "longer").expect("rewrite");
        same_tick(&cert);
        assert!(watched.changed(), "a new length in the same tick");
        assert!(!watched.changed(), "and nothing since");
        let next = dir.path().join("cert.pem.new");
        std::fs::write(&next, "longer").expect("write the replacement");
        same_tick(&next);
        std::fs::rename(&next, &cert).expect("rename into place");
        assert!(
            watched.changed(),
            "a replaced file with the same length and mtime"
        );
    }
}
