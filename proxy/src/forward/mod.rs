//! Forwarding: what happens to a request once the listener has read it. [`Forwarder`]
//! routes it, rewrites its headers from the connection's facts ([`ConnContext`], with the
//! client recovered from the PROXY header), sends it upstream and streams the answer back:
//! `phases` runs `Forwarder::forward` as route, upstream request, send and response,
//! and [`Forwarder::handle`] ends with the log phase.
//! [`Forwarder::handle`] never fails: every failure is a response (400, 404, 405, 413, 421,
//! 502, 503, 504, or a 301 to HTTPS). Immutable once built; a reload builds a new one,
//! which shares the old one's upstream connection cap (`slots`).

mod access;
mod balance;
mod body;
mod client;
mod connect;
mod forwarded;
mod headers;
mod hygiene;
mod phases;
mod pool;
mod refusal;
mod request;
mod route;
mod slots;
mod tlv;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rustls::RootCertStore;
use tracing::{debug, warn};

use crate::access_log::AccessLog;
use crate::config::{Config, Timeouts};
use crate::metrics::{Metrics, TimeoutKind};
use crate::proxy_protocol::ProxyInfo;
use crate::trust::TrustList;
use access::{AccessBody, Pending};
use body::{BodyFailure, UpstreamBody};
use client::{Bounds, UpstreamClient, UpstreamError};
use pool::PooledBody;
use refusal::Refusal;
use route::{Router, Target};
use slots::{Slots, WithTurn};

pub(crate) use body::ResponseBodyError as BodyError;
pub(crate) use body::{BodyEnd, BodyEnded};
pub use client::ConnPools;

/// The response body type: the upstream's body, or the proxy's own, streamed.
pub(crate) type ProxyBody = BoxBody<Bytes, BodyError>;

/// How long an idle upstream connection stays pooled (rpxy's `UPSTREAM_IDLE_TIMEOUT_SEC`).
pub(crate) const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// At most one warning per this period about failing upstreams; the rest go to debug.
const UPSTREAM_WARN_PERIOD: Duration = Duration::from_secs(10);

/// What the listener knows about the connection a request came on.
#[derive(Debug)]
pub struct ConnContext {
    /// The client: recovered from the PROXY header, else the TCP peer.
    pub client: SocketAddr,
    /// The TCP peer: the load balancer under the PROXY protocol.
    pub peer: SocketAddr,
    /// The local address the connection was accepted on.
    pub local: SocketAddr,
    /// Accepted on the TLS listener.
    pub tls: bool,
    /// On the TLS listener, the `server_name` of the app whose certificate was served:
    /// the SNI's, else (no SNI) `default_tls_app` or the only TLS app.
    pub served_name: Option<String>,
    /// The PROXY header the connection started with, if any.
    pub proxy: Option<Arc<ProxyInfo>>,
    /// Upstream connections private to this connection: those that start with a PROXY
    /// header naming `client` (upstreams with `send_proxy_protocol`), and its turns under
    /// `max_upstream_connections_per_client`. Give each connection its own
    /// `ConnPools::default()`; its upstream connections close when it is dropped.
    pub upstream_pools: ConnPools,
}

impl ConnContext {
    /// The address the client connected to: the PROXY header's destination, else the
    /// local address. `X-Forwarded-Port` and `Forwarded: by=` come from it, since that is
    /// the port the client used and the one links back to it must name.
    pub(crate) fn front(&self) -> SocketAddr {
        self.proxy
            .as_ref()
            .and_then(|p| p.destination())
            .unwrap_or(self.local)
    }
}

/// Settings the config file does not carry.
#[derive(Clone, Debug)]
pub struct ForwardOptions {
    pub pool_idle_timeout: Duration,
    /// Verify TLS upstreams against these roots instead of the Mozilla roots.
    pub upstream_roots: Option<RootCertStore>,
    /// Where access records go when the config's `[access_log]` is on; none: nowhere.
    pub access_log: Option<AccessLog>,
    /// The process's counters (the server's); none: a home of this forwarder's own.
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        ForwardOptions {
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            upstream_roots: None,
            access_log: None,
            metrics: None,
        }
    }
}

/// Why a [`Forwarder`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("building the upstream TLS client failed")]
    Tls(#[from] rustls::Error),
}

/// Routes and forwards requests for one configuration.
#[derive(Debug)]
pub struct Forwarder {
    router: Router,
    client: UpstreamClient,
    trusted: TrustList,
    body_limit: Option<u64>,
    timeouts: Timeouts,
    /// `max_upstream_connections_per_client`.
    per_client: usize,
    redact_query: bool,
    /// The process's access log, passed on to the forwarders that succeed this one.
    access_log: Option<AccessLog>,
    /// Whether requests are logged: `[access_log]` on and an access log given.
    log_requests: bool,
    /// `upgrade_protocols`: lowercase, never `h2c`.
    upgrade_protocols: Vec<String>,
    /// Shared with the forwarder this one replaced on reload, so counts never go back.
    metrics: Arc<Metrics>,
    upstream_warning: Throttle,
}

/// A request's turn under `max_upstream_connections_per_client`.
type Turn = tokio::sync::OwnedSemaphorePermit;

/// What the proxy answers itself.
#[derive(Debug)]
enum Answer {
    Status(StatusCode),
    Redirect(HeaderValue),
}

impl From<Refusal> for Answer {
    fn from(refusal: Refusal) -> Self {
        Answer::Status(refusal.status())
    }
}

impl Answer {
    fn response(self) -> Response<Full<Bytes>> {
        let (status, location) = match self {
            Answer::Status(status) => (status, None),
            Answer::Redirect(location) => (StatusCode::MOVED_PERMANENTLY, Some(location)),
        };
        let text = format!("{status}\n");
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(location) = location {
            headers.insert(header::LOCATION, location);
        }
        response
    }
}

impl Forwarder {
    /// Builds the forwarder for `config` with the default [`ForwardOptions`].
    pub(crate) fn new(config: &Config) -> Result<Forwarder, ForwardError> {
        Forwarder::with_options(config, ForwardOptions::default())
    }

    /// Builds the forwarder for `config`.
    pub fn with_options(
        config: &Config,
        options: ForwardOptions,
    ) -> Result<Forwarder, ForwardError> {
        let metrics = options.metrics.clone().unwrap_or_default();
        let slots = Slots::new(
            config.limits.max_upstream_connections,
            metrics.upstream.clone(),
        );
        Forwarder::build(config, options, slots, metrics)
    }

    fn build(
        config: &Config,
        options: ForwardOptions,
        slots: Arc<Slots>,
        metrics: Arc<Metrics>,
    ) -> Result<Forwarder, ForwardError> {
        let bounds = Bounds {
            connect: config.timeouts.upstream_connect,
            response: config.timeouts.upstream_read,
            pool_idle: options.pool_idle_timeout,
        };
        let log_requests = config.access_log.on && options.access_log.is_some();
        Ok(Forwarder {
            router: Router::new(config),
            client: UpstreamClient::new(bounds, options.upstream_roots, slots)?,
            trusted: config.trusted_forwarded_proxies.clone(),
            body_limit: config.limits.request_max_body_size,
            timeouts: config.timeouts,
            per_client: config.limits.max_upstream_connections_per_client,
            redact_query: config.redact_query_in_access_log,
            access_log: options.access_log,
            log_requests,
            upgrade_protocols: config.headers.upgrade_protocols.clone(),
            metrics,
            upstream_warning: Throttle::new(UPSTREAM_WARN_PERIOD),
        })
    }

    /// Builds the forwarder of a reloaded config; it goes on counting where
    /// `previous` left off (and `previous` still counts its in-flight requests there),
    /// and its upstream connections are under the same cap as those `previous` holds
    /// (`max_upstream_connections` keeps its startup value, as `max_clients` does).
    pub(crate) fn succeeding(
        config: &Config,
        previous: &Forwarder,
    ) -> Result<Forwarder, ForwardError> {
        let slots = Arc::clone(previous.client.slots());
        let options = ForwardOptions {
            access_log: previous.access_log.clone(),
            ..ForwardOptions::default()
        };
        Forwarder::build(config, options, slots, Arc::clone(&previous.metrics))
    }

    /// The access log this forwarder was given (also when `[access_log]` is off).
    pub(crate) fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.as_ref()
    }

    /// The process's counters, shared by every forwarder of this process and its server.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Answers one request that came on `conn`. Never fails: `forward` runs the phases
    /// (route, upstream request, send, response: see `phases`), and a failure in any is
    /// the proxy's own response; then the log phase hands one record to the access log
    /// when the response body ends or is dropped, if requests are logged (the record is
    /// not even built otherwise).
    pub async fn handle(&self, req: Request<Incoming>, conn: &ConnContext) -> Response<ProxyBody> {
        let mut record = self
            .log_requests
            .then(|| Pending::start(&req, conn.client, conn.peer, self.redact_query));
        let response = match self.forward(req, conn, record.as_mut()).await {
            Ok((response, give_back, turn)) => response.map(|body| {
                let read = self.timeouts.upstream_read;
                let body = UpstreamBody::new(body, read, Arc::clone(&self.metrics.timeouts));
                WithTurn::new(PooledBody::new(body, Some(give_back)), turn).boxed()
            }),
            Err(answer) => answer
                .response()
                .map(|body| body.map_err(|never: Infallible| match never {}).boxed()),
        };
        self.count(response.status());
        self.log(response, record)
    }

    /// The log phase: the response's body carries `record` to the access log, which
    /// gets it when the body ends or is dropped.
    fn log(&self, response: Response<ProxyBody>, record: Option<Pending>) -> Response<ProxyBody> {
        match (record, &self.access_log) {
            (Some(mut record), Some(log)) => {
                record.record.status = response.status().as_u16();
                let log = log.clone();
                response.map(|body| AccessBody::new(body, record, log).boxed())
            }
            _ => response,
        }
    }

    fn count(&self, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.metrics.responses[class].inc();
    }

    /// The answer to a request that got no response ([`UpstreamError::status`]),
    /// counted and logged: the client's body over the limit (413), unreadable (400) or
    /// paused too long (408), no room for an upstream connection (503, counted by the
    /// slots), the upstream too slow (504) or unreachable or failing (502).
    fn upstream_failed(&self, error: &UpstreamError, target: &Target) -> Answer {
        let status = error.status();
        match error {
            UpstreamError::ClientBody(BodyFailure::TooLarge) => {
                self.metrics.bodies_too_large.inc();
                return Answer::Status(status);
            }
            UpstreamError::ClientBody(BodyFailure::TimedOut) => {
                self.metrics.timeouts.bump(TimeoutKind::RequestBody);
                debug!(upstream = %target.authority, error = ?error, "client request body timed out");
                return Answer::Status(status);
            }
            UpstreamError::ClientBody(BodyFailure::Read) => {
                debug!(upstream = %target.authority, error = ?error, "client request body failed");
                return Answer::Status(status);
            }
            UpstreamError::Full(_) => {
                // The clients' own load can cause this at will: debug, and the counter.
                debug!(upstream = %target.authority, error = ?error, "no room for an upstream connection");
                return Answer::Status(status);
            }
            UpstreamError::Timeout(_) => {
                self.metrics.upstream_timeouts.inc();
                self.metrics.timeouts.bump(TimeoutKind::UpstreamRead);
            }
            _ => {
                self.metrics.upstream_errors.inc();
            }
        }
        debug!(upstream = %target.authority, error = ?error, "upstream request failed");
        if self.upstream_warning.ready() {
            warn!(
                upstream = %target.authority,
                error = ?error,
                upstream_errors = self.metrics.upstream_errors.get(),
                upstream_timeouts = self.metrics.upstream_timeouts.get(),
                "upstream requests failing"
            );
        }
        Answer::Status(status)
    }
}

/// Lets one event through per period.
#[derive(Debug)]
struct Throttle {
    epoch: Instant,
    period_ms: u64,
    /// Milliseconds since `epoch` before which nothing passes.
    next_ms: AtomicU64,
}

impl Throttle {
    fn new(period: Duration) -> Throttle {
        Throttle {
            epoch: Instant::now(),
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
        }
    }

    fn ready(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.period_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_event_through_per_period() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert!(t.ready());
        assert!(!t.ready());
        assert!(!t.ready());
        let open = Throttle::new(Duration::ZERO);
        assert!(open.ready() && open.ready());
    }

    fn info(line: &[u8]) -> Arc<ProxyInfo> {
        let limits = crate::proxy_protocol::Limits::default();
        let (header, _) = crate::proxy_protocol::parse(line, &limits)
            .expect("a valid header")
            .expect("a complete header");
        Arc::new(ProxyInfo::from(header))
    }

    #[test]
    fn front_is_the_proxy_destination_when_there_is_one() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("test address");
        let mut conn = ConnContext {
            client: a("203.0.113.7:5000"),
            peer: a("10.0.0.1:40000"),
            local: a("10.0.0.2:8080"),
            tls: false,
            served_name: None,
            proxy: None,
            upstream_pools: ConnPools::default(),
        };
        assert_eq!(conn.front(), a("10.0.0.2:8080"));
        conn.proxy = Some(info(b"PROXY TCP4 203.0.113.7 198.51.100.1 5000 80\r\n"));
        assert_eq!(conn.front(), a("198.51.100.1:80"));
        conn.proxy = Some(info(b"PROXY UNKNOWN\r\n"));
        assert_eq!(conn.front(), a("10.0.0.2:8080"));
    }

    #[test]
    fn answers_carry_their_status_and_location() {
        let r = Answer::Status(StatusCode::MISDIRECTED_REQUEST).response();
        assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
        let location = HeaderValue::from_static("https://a.example/x");
        let r = Answer::Redirect(location.clone()).response();
        assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(r.headers().get(header::LOCATION), Some(&location));
    }
}
