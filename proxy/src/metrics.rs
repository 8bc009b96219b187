//! Connection-level counters of user space: accepted, refused (untrusted peer, a direct
//! source's PROXY header, limits), closed without a byte (health checks), accept()
//! failures, socket-filter detach failures, PROXY header and TLS failures by kind, TLS handshakes by kind (full or
//! resumed), active connections. Events
//! an outsider can trigger are counted and logged at debug only; [`Metrics::summarize`]
//! turns them into one periodic warning, and a [`Throttle`] lets through one warning per
//! interval, so no flood can control the log's volume.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

/// What a connection or a request waited for too long (the `kind` label of
/// `trustgate_timeouts_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
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
    pub const ALL: [TimeoutKind; 8] = [
        TimeoutKind::RequestHeader,
        TimeoutKind::Keepalive,
        TimeoutKind::RequestBody,
        TimeoutKind::UpstreamRead,
        TimeoutKind::Send,
        TimeoutKind::TunnelIdle,
        TimeoutKind::ProxyFirstByte,
        TimeoutKind::DirectFirstBytes,
    ];

    pub fn label(self) -> &'static str {
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

/// Timeouts by kind, counted where they happen (the listener and the forwarder share one).
#[derive(Debug, Default)]
pub struct TimeoutCounts([AtomicU64; TimeoutKind::ALL.len()]);

impl TimeoutCounts {
    pub fn bump(&self, kind: TimeoutKind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, kind: TimeoutKind) -> u64 {
        self.0[kind as usize].load(Ordering::Relaxed)
    }
}

/// The upstream side's series, as registered under the `trustgate` prefix (counters
/// are exposed with `_total` appended): `trustgate_upstream_connections_open`, …
pub const UPSTREAM_CONNECTIONS_OPEN: &str = "upstream_connections_open";
/// `max_upstream_connections`, as a gauge beside the open count.
pub const UPSTREAM_CONNECTIONS_MAX: &str = "upstream_connections_max";
/// Requests that waited for an upstream connection, by `limit`.
pub const UPSTREAM_REQUESTS_QUEUED: &str = "upstream_requests_queued";
/// Requests answered 503 for want of an upstream connection, by `reason`.
pub const UPSTREAM_REQUESTS_REFUSED: &str = "upstream_requests_refused";

/// How often the refusal summary may be logged.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Counters shared by every listener.
#[derive(Default, Debug)]
pub struct Metrics {
    pub accepted: AtomicU64,
    /// accept() failures other than the peer's own (EMFILE, ENOBUFS, …).
    pub accept_errors: AtomicU64,
    /// Accepted sockets whose inherited socket filter could not be detached
    /// (`detach_accepted`); they keep it, which passes everything but SYNs.
    pub filter_detach_errors: AtomicU64,
    pub active: AtomicU64,
    pub refused_untrusted: AtomicU64,
    /// Connections from a `direct_sources` network that opened with a PROXY signature.
    pub refused_direct_header: AtomicU64,
    pub refused_max_clients: AtomicU64,
    pub refused_per_ip: AtomicU64,
    /// Connections from a trusted proxy closed before their first byte: TCP health
    /// checks, counted apart from header errors and never warned about.
    pub closed_no_data: AtomicU64,
    /// v1 lines accepted by `accept_v1_mixed_families` whose addresses differed in family.
    pub v1_mixed_families: AtomicU64,
    /// Idle connections closed to make room for a new one at `max_clients`.
    pub shed: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// PROXY header failures by `ReadError::kind` (timeout and eof included).
    header_errors: Mutex<BTreeMap<&'static str, u64>>,
    /// TLS failures by `HandshakeError::kind`.
    tls_errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Completed TLS handshakes: full (with or without a HelloRetryRequest), resumed.
    tls_full: AtomicU64,
    tls_resumed: AtomicU64,
}

/// A copy of the counters at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub accepted: u64,
    pub accept_errors: u64,
    pub filter_detach_errors: u64,
    pub active: u64,
    pub refused_untrusted: u64,
    pub refused_direct_header: u64,
    pub refused_max_clients: u64,
    pub refused_per_ip: u64,
    pub shed: u64,
    pub closed_no_data: u64,
    pub v1_mixed_families: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub header_errors: BTreeMap<&'static str, u64>,
    pub tls_errors: BTreeMap<&'static str, u64>,
    pub tls_full: u64,
    pub tls_resumed: u64,
}

impl Snapshot {
    /// PROXY header failures of every kind.
    pub fn header_errors_total(&self) -> u64 {
        self.header_errors.values().sum()
    }
}

impl Metrics {
    pub fn header_error(&self, kind: &'static str) {
        bump(&self.header_errors, kind);
    }

    pub fn tls_error(&self, kind: &'static str) {
        bump(&self.tls_errors, kind);
    }

    /// Counts a completed handshake by its kind (`None`, which rustls reports only
    /// before the handshake is done, counts as full).
    pub fn tls_handshake(&self, kind: Option<rustls::HandshakeKind>) {
        let counter = match kind {
            Some(rustls::HandshakeKind::Resumed) => &self.tls_resumed,
            _ => &self.tls_full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            accepted: load(&self.accepted),
            accept_errors: load(&self.accept_errors),
            filter_detach_errors: load(&self.filter_detach_errors),
            active: load(&self.active),
            refused_untrusted: load(&self.refused_untrusted),
            refused_direct_header: load(&self.refused_direct_header),
            refused_max_clients: load(&self.refused_max_clients),
            refused_per_ip: load(&self.refused_per_ip),
            shed: load(&self.shed),
            closed_no_data: load(&self.closed_no_data),
            v1_mixed_families: load(&self.v1_mixed_families),
            reloads_ok: load(&self.reloads_ok),
            reloads_failed: load(&self.reloads_failed),
            header_errors: copy(&self.header_errors),
            tls_errors: copy(&self.tls_errors),
            tls_full: load(&self.tls_full),
            tls_resumed: load(&self.tls_resumed),
        }
    }

    /// Logs one warning for what was refused since `previous`, if anything was, and
    /// returns the new snapshot to compare with next time.
    pub fn summarize(&self, previous: &Snapshot) -> Snapshot {
        let now = self.snapshot();
        let untrusted = now.refused_untrusted - previous.refused_untrusted;
        let direct_headers = now.refused_direct_header - previous.refused_direct_header;
        let limited = (now.refused_max_clients + now.refused_per_ip)
            - (previous.refused_max_clients + previous.refused_per_ip);
        let shed = now.shed - previous.shed;
        let bad_headers = now.header_errors_total() - previous.header_errors_total();
        let tls: u64 =
            now.tls_errors.values().sum::<u64>() - previous.tls_errors.values().sum::<u64>();
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

/// Lets one warning through per [`SUMMARY_INTERVAL`] for a condition outsiders can
/// cause over and over (such as running the process out of descriptors); the others
/// are counted, to be reported with the next one that gets through.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(n)` when a warning may be logged now, `n` being how many were held back
    /// since the last one; `None` when this one should go to debug.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
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

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, kind: &'static str) {
    // A poisoned lock only means another thread panicked mid-increment; the map is
    // still a valid map of counters.
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    *map.entry(kind).or_default() += 1;
}

fn copy(map: &Mutex<BTreeMap<&'static str, u64>>) -> BTreeMap<&'static str, u64> {
    map.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
        let s = m.snapshot();
        assert_eq!(s.header_errors.get("timeout"), Some(&2));
        assert_eq!(s.header_errors.get("v1_bad_address"), Some(&1));
        assert_eq!(s.header_errors_total(), 3);
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
        m.refused_untrusted.fetch_add(5, Ordering::Relaxed);
        m.refused_direct_header.fetch_add(2, Ordering::Relaxed);
        let first = m.summarize(&Snapshot::default());
        assert_eq!(first.refused_untrusted, 5);
        assert_eq!(first.refused_direct_header, 2);
        let second = m.summarize(&first);
        assert_eq!(second, first);
    }
}
