//! trustgate's `/metrics`, read with the library's own client into a map from series
//! (the name and labels as exposed, e.g. `trustgate_connections_refused_total{reason="max_clients"}`)
//! to value, so tests compare counters before and after. A series not exposed reads 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`until`] scrapes again while the counters have not got there.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// One scrape.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    series: BTreeMap<String, u64>,
}

impl Scrape {
    /// Parses OpenMetrics text (comments skipped; values are integers here).
    pub fn parse(text: &str) -> Scrape {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse::<f64>().ok()? as u64))
            })
            .collect();
        Scrape { series }
    }

    /// The value of one series, 0 when it is not exposed (a counter never bumped).
    pub fn get(&self, series: &str) -> u64 {
        self.series.get(series).copied().unwrap_or(0)
    }

    /// Every series whose name (with labels) starts with `prefix`.
    pub fn starting_with(&self, prefix: &str) -> Vec<(&str, u64)> {
        self.series
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, v)| (name.as_str(), *v))
            .collect()
    }

    /// `trustgate_proxy_header_errors_total{kind="…"}`.
    pub fn header_errors(&self, kind: &str) -> u64 {
        self.get(&format!(
            "trustgate_proxy_header_errors_total{{kind=\"{kind}\"}}"
        ))
    }

    /// Every `trustgate_proxy_header_errors_total` series, by kind.
    pub fn header_errors_by_kind(&self) -> BTreeMap<String, u64> {
        self.series
            .iter()
            .filter_map(|(name, v)| {
                let kind = name
                    .strip_prefix("trustgate_proxy_header_errors_total{kind=\"")?
                    .strip_suffix("\"}")?;
                Some((kind.to_string(), *v))
            })
            .collect()
    }

    /// `trustgate_connections_refused_total{reason="…"}`.
    pub fn refused(&self, reason: &str) -> u64 {
        self.get(&format!(
            "trustgate_connections_refused_total{{reason=\"{reason}\"}}"
        ))
    }

    pub fn accepted(&self) -> u64 {
        self.get("trustgate_connections_accepted_total")
    }

    pub fn active(&self) -> u64 {
        self.get("trustgate_connections_active")
    }

    /// `trustgate_upstream_connections_open`.
    pub fn upstream_open(&self) -> u64 {
        self.get("trustgate_upstream_connections_open")
    }

    /// `trustgate_upstream_requests_queued_total{limit="…"}`.
    pub fn upstream_queued(&self, limit: &str) -> u64 {
        self.get(&format!(
            "trustgate_upstream_requests_queued_total{{limit=\"{limit}\"}}"
        ))
    }

    /// `trustgate_upstream_requests_refused_total{reason="max_upstream_connections"}`.
    pub fn upstream_refused(&self) -> u64 {
        self.get("trustgate_upstream_requests_refused_total{reason=\"max_upstream_connections\"}")
    }
}

/// Scrapes `addr` once.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let text = proxy::admin::fetch(addr)
        .await
        .unwrap_or_else(|e| panic!("scraping http://{addr}/metrics: {e:#}"));
    Scrape::parse(&text)
}

/// Scrapes until `done` holds, within `timeout`; panics naming `what` otherwise. The
/// counters change with no event to wait for, so this polls, paced and bounded.
pub async fn until(
    addr: SocketAddr,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + timeout;
    loop {
        let now = scrape(addr).await;
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {timeout:?}; last scrape: {now:#?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
