//! The whole service, start to stop: config, kernel filter, listeners (filter attached
//! before they listen), the admin listener and reloads, serving until the first stop
//! signal, draining until the grace period or a second signal, then detaching the
//! filter and writing out the access log. What `trustgate` runs; signals are the caller's (`main`'s) business.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::access_log::{AccessLog, AccessLogError};
use crate::config::{self, ConfigError};
use crate::connection::{Runtime, RuntimeError};
use crate::kernel::{self, KernelError};
use crate::listener::{self, ListenerError};
use crate::metrics::Metrics;
use crate::server::Server;
use crate::{admin, nofile, reload};

/// How long the access log may take to write what is queued at exit.
const ACCESS_LOG_CLOSE: Duration = Duration::from_secs(2);

/// What to run.
pub struct Options {
    pub config: PathBuf,
    /// Reload when the config file, or a certificate it names, changes (SIGHUP always
    /// reloads).
    pub watch: bool,
    /// How long in-flight requests may run on after the stop signal.
    pub grace: Duration,
}

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("starting the kernel filter")]
    Kernel(#[source] KernelError),
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("starting the access log")]
    AccessLog(#[from] AccessLogError),
    #[error("binding the metrics listener {addr}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Runs until `stop` completes, then drains until `force` completes or the grace
/// period ends. The kernel filter is detached before this returns.
pub async fn run(
    options: Options,
    stop: impl Future<Output = ()>,
    force: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let (config, warnings) = config::load(&options.config)?;
    for w in &warnings {
        warn!(warning = %w, "config");
    }
    info!(config = %options.config.display(), "config loaded");
    let watched = reload::Watched::new(&options.config, &config);
    let signals = reload::Signals::install();
    nofile::raise_for(
        config.limits.max_clients,
        config.limits.max_upstream_connections,
    );
    // The process's one home for its counters: the server, every forwarder and the
    // access log count into it.
    let metrics = Arc::new(Metrics::new());
    let access_log = AccessLog::start(&config.access_log, metrics.access_log_dropped.clone())?;
    let runtime = Runtime::with_access_log(&config, access_log.clone(), metrics)?;
    let mut kernel = kernel::start_for(&config).map_err(ServiceError::Kernel)?;
    let listeners = listener::bind_all(&config, kernel.as_mut())?;
    let server = Server::new(runtime, kernel);
    let admin = match config.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServiceError::Metrics { addr, source })?;
            Some(tokio::spawn(admin::serve(listener, Arc::clone(&server))))
        }
        None => None,
    };
    server.serve(listeners);
    let reloads = tokio::spawn(reload::run(
        Arc::clone(&server),
        watched,
        options.watch,
        signals,
    ));
    tokio::select! {
        _ = Arc::clone(&server).run(stop, options.grace) => {}
        () = force => warn!("second signal: stopping without waiting for the drain"),
    }
    reloads.abort();
    if let Some(admin) = admin {
        admin.abort();
    }
    drop(server.take_kernel());
    access_log.close(ACCESS_LOG_CLOSE);
    info!("stopped; kernel filter detached");
    Ok(())
}
