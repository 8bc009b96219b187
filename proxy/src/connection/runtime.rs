//! What a connection is served by, from accept to close: a config's [`Runtime`] (the
//! forwarder, the TLS configs by SNI, the PROXY settings, the limits and timeouts).
//! Built anew on each reload; a connection keeps the one it started with.

use std::sync::Arc;
use std::time::Duration;

use super::clock::WaitLimits;
use crate::access_log::AccessLog;
use crate::config::{Config, KernelFilterConfig, Limits, Timeouts};
use crate::forward::{ForwardError, ForwardOptions, Forwarder};
use crate::metrics::Metrics;
use crate::proxy_protocol;
use crate::tls::{Tls, TlsError};
use crate::trust::TrustList;

/// Why a config's runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

/// The PROXY-protocol part of the runtime settings.
pub(crate) struct ProxySettings {
    pub(crate) trust: TrustList,
    pub(crate) timeout: Duration,
    pub(crate) first_byte_timeout: Duration,
    pub(crate) limits: proxy_protocol::Limits,
}

/// Everything a new connection needs from the current config. Swapped whole on reload;
/// a connection keeps the one it started with.
pub struct Runtime {
    pub(crate) forwarder: Arc<Forwarder>,
    /// How to filter: a reload that changes the mode only warns (it takes effect at the
    /// next start); the trusted list is applied at once.
    pub(crate) kernel_filter: Option<KernelFilterConfig>,
    pub(crate) tls: Tls,
    pub(crate) proxy: Option<ProxySettings>,
    pub(crate) limits: Limits,
    pub(crate) timeouts: Timeouts,
    /// What each connection's watchdog reads (see `clock::WaitLimits`).
    pub(crate) wait_limits: Arc<WaitLimits>,
}

impl Runtime {
    /// Builds the runtime of a validated config (reads the certificates and the ticket
    /// key file). On reload, `previous` is the runtime it replaces: the counters, the TLS
    /// session cache and ticket keys carry on from it.
    pub fn new(config: &Config, previous: Option<&Runtime>) -> Result<Runtime, RuntimeError> {
        let forwarder = match previous {
            Some(previous) => Forwarder::succeeding(config, &previous.forwarder)?,
            None => Forwarder::new(config)?,
        };
        Runtime::build(config, forwarder, previous)
    }

    /// The first runtime of a process that logs requests to `access_log` and counts
    /// into `metrics` (reloads carry both on).
    pub(crate) fn with_access_log(
        config: &Config,
        access_log: AccessLog,
        metrics: Arc<Metrics>,
    ) -> Result<Runtime, RuntimeError> {
        let options = ForwardOptions {
            access_log: Some(access_log),
            metrics: Some(metrics),
            ..ForwardOptions::default()
        };
        Runtime::build(config, Forwarder::with_options(config, options)?, None)
    }

    fn build(
        config: &Config,
        forwarder: Forwarder,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, RuntimeError> {
        let wait_limits = Arc::new(WaitLimits {
            header: config.timeouts.request_header,
            keepalive: config.timeouts.keepalive,
            send: config.timeouts.send,
            counts: Arc::clone(&forwarder.metrics().timeouts),
        });
        Ok(Runtime {
            forwarder: Arc::new(forwarder),
            kernel_filter: config
                .proxy_protocol
                .as_ref()
                .map(|p| p.kernel_filter.clone()),
            tls: Tls::new(config, previous.map(|p| &p.tls))?,
            proxy: config.proxy_protocol.as_ref().map(|p| ProxySettings {
                trust: p.trust.clone(),
                timeout: p.timeout,
                first_byte_timeout: p.first_byte_timeout,
                limits: proxy_protocol::Limits {
                    accept_v1_mixed_families: p.accept_v1_mixed_families,
                    ..proxy_protocol::Limits::default()
                },
            }),
            limits: config.limits.clone(),
            timeouts: config.timeouts,
            wait_limits,
        })
    }
}
