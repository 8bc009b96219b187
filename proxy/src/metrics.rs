//! Every user-space counter of the process, in one home. [`Metrics::new`] registers each
//! family once, with its name, help and labels, into the registry a scrape encodes
//! ([`Metrics::encode`]); the handles it keeps are the series themselves (a
//! `prometheus-client` counter is an atomic behind an `Arc`), so counting is one atomic add
//! and adding a counter is one field and its line in `new`. The server owns one `Metrics`
//! and shares it by `Arc` with every forwarder, its pools' slots and the access log; only
//! the kernel's per-CPU maps are read at scrape time (`admin.rs`).
//!
//! Connection-level events an outsider can trigger (refusals, PROXY header and TLS
//! failures) are counted and logged at debug only; [`Metrics::summarize`] turns them into
//! one periodic warning, and a [`Throttle`] lets through one warning per interval, so no
//! flood can control the log's volume.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tracing::warn;

/// What a connection or a request waited for too long (the `kind` label of
/// `trustgate_timeouts_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeoutKind {
    /// No complete request head within `request_header_timeout`.
    RequestHeader,
    /// Idle past `keepalive_timeout`.
    Keepalive,
    /// A request body paused past `request_body_timeout`.
    RequestBody,
    /// An upstream's response head or body paused past `upstream_read_timeout`.
    UpstreamRead,
    /// A client took no bytes for `send_timeout`.
    Send,
    /// A tunnel carried no byte for `tunnel_idle_timeout`.
    TunnelIdle,
    /// A connection from a trusted proxy sent no byte within `first_byte_timeout`.
    ProxyFirstByte,
    /// A direct source's first bytes did not tell, within the PROXY header `timeout`,
    /// whether they open a PROXY header.
    DirectFirstBytes,
}

impl TimeoutKind {
    pub(crate) const ALL: [TimeoutKind; 8] = [
        TimeoutKind::RequestHeader,
        TimeoutKind::Keepalive,
        TimeoutKind::RequestBody,
        TimeoutKind::UpstreamRead,
        TimeoutKind::Send,
        TimeoutKind::TunnelIdle,
        TimeoutKind::ProxyFirstByte,
        TimeoutKind::DirectFirstBytes,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            TimeoutKind::RequestHeader => "request_header",
            TimeoutKind::Keepalive => "keepalive",
            TimeoutKind::RequestBody => "request_body",
            TimeoutKind::UpstreamRead => "upstream_read",
            TimeoutKind::Send => "send",
            TimeoutKind::TunnelIdle => "tunnel_idle",
            TimeoutKind::ProxyFirstByte => "proxy_first_byte",
            TimeoutKind::DirectFirstBytes => "direct_first_bytes",
        }
    }
}

/// One label pair: the series of a family this process knows in advance.
type Label = [(&'static str, &'static str); 1];

/// Timeouts by kind, counted where they happen (the listener and the forwarder share one).
#[derive(Debug, Default)]
pub(crate) struct TimeoutCounts([Counter; TimeoutKind::ALL.len()]);

impl TimeoutCounts {
    pub(crate) fn bump(&self, kind: TimeoutKind) {
        self.0[kind as usize].inc();
    }

    #[cfg(test)]
    pub(crate) fn get(&self, kind: TimeoutKind) -> u64 {
        self.0[kind as usize].get()
    }
}

/// The upstream connection cap's series, shared with the cap itself (`forward/slots.rs`):
/// `open` is the count the cap enforces, not a copy of it.
#[derive(Clone, Debug, Default)]
pub(crate) struct UpstreamCounters {
    /// Upstream connections open now, idle pooled ones included.
    pub(crate) open: Gauge,
    /// `max_upstream_connections`.
    pub(crate) max: Gauge,
    /// Connects that found the cap reached and had to wait.
    pub(crate) waited: Counter,
    /// Requests that waited for their connection's `max_upstream_connections_per_client`.
    pub(crate) waited_per_client: Counter,
    /// Requests answered 503 because no connection freed up within the wait.
    pub(crate) refused: Counter,
}

/// How often the refusal summary may be logged.
pub(crate) const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Every user-space counter of the process; see the module's documentation.
pub struct Metrics {
    /// Every family below, registered once under the `trustgate` prefix (counters are
    /// exposed with `_total` appended).
    registry: Registry,
    pub accepted: Counter,
    /// accept() failures other than the peer's own (EMFILE, ENOBUFS, …).
    pub(crate) accept_errors: Counter,
    /// Accepted sockets whose inherited socket filter could not be detached
    /// (`detach_accepted`); they keep it, which passes everything but SYNs.
    pub(crate) filter_detach_errors: Counter,
    pub(crate) active: Gauge,
    pub refused_untrusted: Counter,
    /// Connections from a `direct_sources` network that opened with a PROXY signature.
    pub(crate) refused_direct_header: Counter,
    pub(crate) refused_max_clients: Counter,
    pub(crate) refused_per_ip: Counter,
    /// Connections from a trusted proxy closed before their first byte: TCP health
    /// checks, counted apart from header errors and never warned about.
    pub(crate) closed_no_data: Counter,
    /// v1 lines accepted by `accept_v1_mixed_families` whose addresses differed in family.
    pub(crate) v1_mixed_families: Counter,
    /// Access records dropped: the writer's queue was full, or their write failed.
    pub(crate) access_log_dropped: Counter,
    /// Idle connections closed to make room for a new one at `max_clients`.
    pub(crate) shed: Counter,
    /// PROXY header failures by `ReadError::kind` (timeout and eof included).
    header_errors: Family<Label, Counter>,
    /// TLS failures by `HandshakeError::kind`.
    tls_errors: Family<Label, Counter>,
    /// The sums of the two families above, for the summary (a family cannot be iterated);
    /// not exposed.
    header_errors_total: Counter,
    tls_errors_total: Counter,
    /// Completed TLS handshakes: full (with or without a HelloRetryRequest), resumed.
    tls_full: Counter,
    tls_resumed: Counter,
    pub(crate) reloads_ok: Counter,
    pub(crate) reloads_failed: Counter,
    /// Responses by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub responses: [Counter; 5],
    /// Upstream requests that failed (each also a 502).
    pub upstream_errors: Counter,
    /// Upstreams too slow to answer (each also a 504).
    pub upstream_timeouts: Counter,
    /// Request bodies over `request_max_body_size` (each also a 413).
    pub bodies_too_large: Counter,
    /// Every timeout of the process by kind; shared with the connections' clocks and the
    /// body wrappers, which outlive a reload.
    pub(crate) timeouts: Arc<TimeoutCounts>,
    pub(crate) upstream: UpstreamCounters,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("accepted", &self.accepted.get())
            .field("active", &self.active.get())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// Registers families into one registry and hands back their series.
struct Families(Registry);

impl Families {
    fn counter(&mut self, name: &str, help: &str) -> Counter {
        let counter = Counter::default();
        self.0.register(name, help, counter.clone());
        counter
    }

    fn gauge(&mut self, name: &str, help: &str) -> Gauge {
        let gauge = Gauge::default();
        self.0.register(name, help, gauge.clone());
        gauge
    }

    /// A family whose series are known in advance: one per `value` of `key`, all
    /// exposed from the start (at 0) in the order given, and returned in that order.
    fn series<const N: usize>(
        &mut self,
        name: &str,
        help: &str,
        key: &'static str,
        values: [&'static str; N],
    ) -> [Counter; N] {
        let counters: [Counter; N] = std::array::from_fn(|_| Counter::default());
        let series = Series {
            key,
            values,
            counters: counters.clone(),
        };
        self.0.register(name, help, series);
        counters
    }

    /// A family whose series appear as they are first counted (kinds of failure).
    fn family(&mut self, name: &str, help: &str) -> Family<Label, Counter> {
        let family = Family::<Label, Counter>::default();
        self.0.register(name, help, family.clone());
        family
    }
}

/// A counter family with a fixed set of series, encoded in a fixed order (a `Family`
/// keeps its series in a hash map and needs a lock to find one).
#[derive(Debug)]
struct Series<const N: usize> {
    key: &'static str,
    values: [&'static str; N],
    counters: [Counter; N],
}

impl<const N: usize> EncodeMetric for Series<N> {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        for (value, counter) in self.values.iter().zip(&self.counters) {
            counter.encode(encoder.encode_family(&[(self.key, *value)])?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

impl Metrics {
    /// Registers every family of the process, at zero.
    pub(crate) fn new() -> Metrics {
        let mut f = Families(Registry::with_prefix("trustgate"));
        let accepted = f.counter("connections_accepted", "TCP connections accepted");
        let accept_errors = f.counter(
            "accept_errors",
            "accept() failures not caused by the peer (out of descriptors or memory); the \
             listener pauses and retries",
        );
        let filter_detach_errors = f.counter(
            "filter_detach_errors",
            "accepted sockets whose inherited socket filter could not be detached \
             (kernel_filter.detach_accepted); they keep it",
        );
        let [
            refused_untrusted,
            refused_direct_header,
            refused_max_clients,
            refused_per_ip,
        ] = f.series(
            "connections_refused",
            "Connections closed before HTTP, by reason",
            "reason",
            [
                "untrusted_peer",
                "direct_proxy_header",
                "max_clients",
                "max_clients_per_ip",
            ],
        );
        let [closed_no_data] = f.series(
            "connections_closed",
            "Connections closed before HTTP for a reason that is not a refusal, by reason \
             (no_data: a trusted proxy connected and closed without a byte, a TCP health check)",
            "reason",
            ["no_data"],
        );
        let v1_mixed_families = f.counter(
            "proxy_v1_mixed_families",
            "PROXY v1 lines whose addresses differed in family, accepted by \
             accept_v1_mixed_families",
        );
        let access_log_dropped = f.counter(
            "access_log_dropped",
            "Access records dropped: the writer's queue was full (a slow or stalled log \
             destination), or their write failed",
        );
        let shed = f.counter(
            "connections_shed",
            "Idle connections closed to make room for a new one when max_clients was reached",
        );
        let header_errors = f.family(
            "proxy_header_errors",
            "PROXY headers refused, by kind (timeout: none complete before the deadline)",
        );
        let tls_errors = f.family(
            "tls_errors",
            "TLS handshakes failed, by kind (no_sni, unknown_sni: refused with an \
             unrecognized_name alert; handshake; timeout)",
        );
        let [tls_full, tls_resumed] = f.series(
            "tls_handshakes",
            "TLS handshakes completed, by kind (full, or resumed from a session ticket or ID)",
            "kind",
            ["full", "resumed"],
        );
        let active = f.gauge("connections_active", "Connections open now");
        let [reloads_ok, reloads_failed] = f.series(
            "reloads",
            "Config reloads, by outcome",
            "outcome",
            ["ok", "error"],
        );
        let responses = f.series(
            "requests",
            "HTTP responses sent, by status class",
            "class",
            ["1xx", "2xx", "3xx", "4xx", "5xx"],
        );
        let [upstream_errors, upstream_timeouts, bodies_too_large] = f.series(
            "upstream_errors",
            "Upstream failures, by kind (each answered 502, 504 or 413)",
            "kind",
            ["unreachable", "timeout", "body_too_large"],
        );
        let timeouts = Arc::new(TimeoutCounts(f.series(
            "timeouts",
            "Connections and requests ended for waiting too long, by what they waited for",
            "kind",
            TimeoutKind::ALL.map(TimeoutKind::label),
        )));
        let open = f.gauge(
            "upstream_connections_open",
            "Upstream connections open now, idle pooled ones included",
        );
        let max = f.gauge("upstream_connections_max", "max_upstream_connections");
        let [waited, waited_per_client] = f.series(
            "upstream_requests_queued",
            "Upstream requests that waited, by the limit they waited for",
            "limit",
            [
                "max_upstream_connections",
                "max_upstream_connections_per_client",
            ],
        );
        let [refused] = f.series(
            "upstream_requests_refused",
            "Requests answered 503: no upstream connection freed up within the connect timeout",
            "reason",
            ["max_upstream_connections"],
        );
        Metrics {
            registry: f.0,
            accepted,
            accept_errors,
            filter_detach_errors,
            active,
            refused_untrusted,
            refused_direct_header,
            refused_max_clients,
            refused_per_ip,
            closed_no_data,
            v1_mixed_families,
            access_log_dropped,
            shed,
            header_errors,
            tls_errors,
            header_errors_total: Counter::default(),
            tls_errors_total: Counter::default(),
            tls_full,
            tls_resumed,
            reloads_ok,
            reloads_failed,
            responses,
            upstream_errors,
            upstream_timeouts,
            bodies_too_large,
            timeouts,
            upstream: UpstreamCounters {
                open,
                max,
                waited,
                waited_per_client,
                refused,
            },
        }
    }

    /// Writes every family, without the closing `# EOF` (the kernel's series follow).
    pub(crate) fn encode(&self, text: &mut String) -> fmt::Result {
        prometheus_client::encoding::text::encode_registry(text, &self.registry)
    }

    pub(crate) fn header_error(&self, kind: &'static str) {
        self.header_errors.get_or_create(&[("kind", kind)]).inc();
        self.header_errors_total.inc();
    }

    pub(crate) fn tls_error(&self, kind: &'static str) {
        self.tls_errors.get_or_create(&[("kind", kind)]).inc();
        self.tls_errors_total.inc();
    }

    /// Counts a completed handshake by its kind (`None`, which rustls reports only
    /// before the handshake is done, counts as full).
    pub(crate) fn tls_handshake(&self, kind: Option<rustls::HandshakeKind>) {
        match kind {
            Some(rustls::HandshakeKind::Resumed) => self.tls_resumed.inc(),
            _ => self.tls_full.inc(),
        };
    }

    #[cfg(test)]
    /// PROXY header failures of `kind` so far.
    pub(crate) fn header_errors(&self, kind: &'static str) -> u64 {
        self.header_errors
            .get(&[("kind", kind)])
            .map_or(0, |c| c.get())
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            untrusted: self.refused_untrusted.get(),
            direct_headers: self.refused_direct_header.get(),
            limited: self.refused_max_clients.get() + self.refused_per_ip.get(),
            shed: self.shed.get(),
            bad_headers: self.header_errors_total.get(),
            tls: self.tls_errors_total.get(),
        }
    }

    /// Logs one warning for what was refused since `previous`, if anything was, and
    /// returns the new snapshot to compare with next time.
    pub(crate) fn summarize(&self, previous: &Snapshot) -> Snapshot {
        let now = self.snapshot();
        let since = |f: fn(&Snapshot) -> u64| f(&now) - f(previous);
        let untrusted = since(|s| s.untrusted);
        let direct_headers = since(|s| s.direct_headers);
        let limited = since(|s| s.limited);
        let shed = since(|s| s.shed);
        let bad_headers = since(|s| s.bad_headers);
        let tls = since(|s| s.tls);
        if untrusted + direct_headers + limited + shed + bad_headers + tls > 0 {
            warn!(
                untrusted,
                direct_with_proxy_header = direct_headers,
                over_limits = limited,
                idle_shed = shed,
                bad_proxy_headers = bad_headers,
                tls_failures = tls,
                interval_s = SUMMARY_INTERVAL.as_secs(),
                "connections refused in the last interval (details at debug level)"
            );
        }
        now
    }
}

/// What [`Metrics::summarize`] compares between two intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    untrusted: u64,
    direct_headers: u64,
    limited: u64,
    shed: u64,
    bad_headers: u64,
    tls: u64,
}

/// Lets one warning through per [`SUMMARY_INTERVAL`] for a condition outsiders can
/// cause over and over (such as running the process out of descriptors); the others
/// are counted, to be reported with the next one that gets through.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(n)` when a warning may be logged now, `n` being how many were held back
    /// since the last one; `None` when this one should go to debug.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < SUMMARY_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_counted_separately() {
        let m = Metrics::default();
        m.header_error("timeout");
        m.header_error("timeout");
        m.header_error("v1_bad_address");
        assert_eq!(m.header_errors("timeout"), 2);
        assert_eq!(m.header_errors("v1_bad_address"), 1);
        assert_eq!(m.header_errors("v1_bad_family"), 0);
        assert_eq!(m.snapshot().bad_headers, 3);
    }

    #[test]
    fn throttle_lets_one_warning_through_per_interval_and_counts_the_rest() {
        let mut throttle = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(throttle.allow(t0), Some(0));
        assert_eq!(throttle.allow(t0 + Duration::from_millis(1)), None);
        assert_eq!(throttle.allow(t0 + SUMMARY_INTERVAL / 2), None);
        assert_eq!(throttle.allow(t0 + SUMMARY_INTERVAL), Some(2));
        assert_eq!(throttle.allow(t0 + SUMMARY_INTERVAL * 3), Some(0));
    }

    #[test]
    fn summary_compares_with_the_previous_snapshot() {
        let m = Metrics::default();
        m.refused_untrusted.inc_by(5);
        m.refused_direct_header.inc_by(2);
        let first = m.summarize(&Snapshot::default());
        assert_eq!(first.untrusted, 5);
        assert_eq!(first.direct_headers, 2);
        let second = m.summarize(&first);
        assert_eq!(second, first);
    }

    #[test]
    fn every_family_is_exposed_once_and_known_series_at_zero() {
        let m = Metrics::new();
        m.tls_error("no_sni");
        let mut text = String::new();
        m.encode(&mut text).expect("encodes");
        for line in [
            "trustgate_connections_accepted_total 0",
            "trustgate_connections_refused_total{reason=\"max_clients_per_ip\"} 0",
            "trustgate_requests_total{class=\"5xx\"} 0",
            "trustgate_timeouts_total{kind=\"direct_first_bytes\"} 0",
            "trustgate_tls_errors_total{kind=\"no_sni\"} 1",
            "trustgate_upstream_connections_open 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        let helps: Vec<&str> = text.lines().filter(|l| l.starts_with("# HELP")).collect();
        let mut unique = helps.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(helps.len(), unique.len(), "a family registered twice");
    }
}
