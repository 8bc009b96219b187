//! Reloading the config while serving: on SIGHUP, and with `-w` whenever the file's
//! modification time changes (checked every second). The new file is parsed and
//! validated in full first; a bad one is logged at error and the running config stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config;
use crate::listener::Server;

/// How often `-w` looks at the file.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Reloads `path` into `server` on each SIGHUP, and on each change when `watch_file`.
/// Runs until the task is dropped.
pub async fn run(server: Arc<Server>, path: PathBuf, watch_file: bool) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => Some(hup),
        Err(err) => {
            warn!(error = %err, "cannot listen for SIGHUP; reload only with -w");
            None
        }
    };
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    let mut seen = modified(&path);
    loop {
        tokio::select! {
            Some(()) = async { hup.as_mut()?.recv().await } => {}
            _ = tick.tick(), if watch_file => {
                let now = modified(&path);
                if now == seen {
                    continue;
                }
                seen = now;
            }
        }
        reload(&server, &path);
    }
}

/// Loads `path` and applies it; returns whether it was applied.
pub fn reload(server: &Server, path: &Path) -> bool {
    let metrics = server.metrics();
    let applied = match config::load(path) {
        Err(err) => {
            error!(config = %path.display(), error = %err, "reload refused: the config is invalid; the running config stays");
            false
        }
        Ok((config, warnings)) => {
            for w in &warnings {
                warn!(warning = %w, "config");
            }
            match server.reload(&config) {
                Ok(()) => {
                    info!(config = %path.display(), "config reloaded");
                    true
                }
                Err(err) => {
                    error!(config = %path.display(), error = %err, "reload failed; the running config stays");
                    false
                }
            }
        }
    };
    let counter = if applied {
        &metrics.reloads_ok
    } else {
        &metrics.reloads_failed
    };
    counter.fetch_add(1, Ordering::Relaxed);
    applied
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
