//! The admin listener (`[metrics] listen`): `GET /metrics` answers every counter in the
//! OpenMetrics text format, encoded by `prometheus-client`. A scrape reads the counters
//! where they live (user space atomics, the forwarder, the kernel's per-CPU maps) rather
//! than copying them on the hot path. `trustgate stats` prints the same scrape.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use proxy_common::{Class, Counter};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::kernel::{Attachment, Program, SocketFilterKind, XdpAttached, XdpWalk};
use crate::metrics;
use crate::metrics::TimeoutKind;
use crate::server::Server;

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    if let Ok(addr) = listener.local_addr() {
        info!(listener = %addr, "metrics listening");
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(error = %err, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let server = Arc::clone(&server);
                async move { Ok::<_, Infallible>(answer(&req, &server)) }
            });
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(peer = %peer, error = %err, "metrics connection ended with an error");
            }
        });
    }
}

fn answer(req: &Request<hyper::body::Incoming>, server: &Arc<Server>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if req.uri().path() == "/metrics" {
        match render(server) {
            Ok(text) => (StatusCode::OK, CONTENT_TYPE, text),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "encoding failed\n".into(),
            ),
        }
    } else {
        (StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".into())
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// Fetches `/metrics` from a running instance's admin listener (for `trustgate stats`).
pub async fn fetch(addr: SocketAddr) -> Result<String, FetchError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get("/metrics")
        .header(header::HOST, addr.to_string())
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(FetchError::Request)?;
    let response = sender.send_request(req).await?;
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await?
        .to_bytes();
    if !status.is_success() {
        return Err(FetchError::Status(status));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Why `trustgate stats` got no figures.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("connecting to the metrics listener (is trustgate running with [metrics] listen?)")]
    Connect(#[from] std::io::Error),
    #[error("talking HTTP to the metrics listener")]
    Http(#[from] hyper::Error),
    #[error("building the request")]
    Request(#[source] hyper::http::Error),
    #[error("the metrics listener answered {0}")]
    Status(StatusCode),
}

/// One scrape, as OpenMetrics text.
pub fn render(server: &Arc<Server>) -> Result<String, fmt::Error> {
    let mut registry = Registry::with_prefix("trustgate");
    registry.register_collector(Box::new(Scrape(Arc::clone(server))));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// Reads every counter at scrape time.
struct Scrape(Arc<Server>);

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

type Labels = Vec<(&'static str, String)>;

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, i64)],
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let server = &self.0;
        let m = server.metrics().snapshot();
        counter(
            &mut enc,
            "connections_accepted",
            "TCP connections accepted",
            &[(vec![], m.accepted)],
        )?;
        counter(
            &mut enc,
            "accept_errors",
            "accept() failures not caused by the peer (out of descriptors or memory); the listener pauses and retries",
            &[(vec![], m.accept_errors)],
        )?;
        counter(
            &mut enc,
            "filter_detach_errors",
            "accepted sockets whose inherited socket filter could not be detached (kernel_filter.detach_accepted); they keep it",
            &[(vec![], m.filter_detach_errors)],
        )?;
        counter(
            &mut enc,
            "connections_refused",
            "Connections closed before HTTP, by reason",
            &[
                (
                    vec![("reason", "untrusted_peer".into())],
                    m.refused_untrusted,
                ),
                (
                    vec![("reason", "direct_proxy_header".into())],
                    m.refused_direct_header,
                ),
                (
                    vec![("reason", "max_clients".into())],
                    m.refused_max_clients,
                ),
                (
                    vec![("reason", "max_clients_per_ip".into())],
                    m.refused_per_ip,
                ),
            ],
        )?;
        counter(
            &mut enc,
            "connections_closed",
            "Connections closed before HTTP for a reason that is not a refusal, by reason (no_data: a trusted proxy connected and closed without a byte, a TCP health check)",
            &[(vec![("reason", "no_data".into())], m.closed_no_data)],
        )?;
        counter(
            &mut enc,
            "proxy_v1_mixed_families",
            "PROXY v1 lines whose addresses differed in family, accepted by accept_v1_mixed_families",
            &[(vec![], m.v1_mixed_families)],
        )?;
        let dropped = server
            .runtime()
            .forwarder
            .access_log()
            .map_or(0, |log| log.dropped());
        counter(
            &mut enc,
            "access_log_dropped",
            "Access records dropped: the writer's queue was full (a slow or stalled log destination), or their write failed",
            &[(vec![], dropped)],
        )?;
        counter(
            &mut enc,
            "connections_shed",
            "Idle connections closed to make room for a new one when max_clients was reached",
            &[(vec![], m.shed)],
        )?;
        let by_kind = |map: &std::collections::BTreeMap<&'static str, u64>| -> Vec<(Labels, u64)> {
            map.iter()
                .map(|(k, v)| (vec![("kind", (*k).to_string())], *v))
                .collect()
        };
        counter(
            &mut enc,
            "proxy_header_errors",
            "PROXY headers refused, by kind (timeout: none complete before the deadline)",
            &by_kind(&m.header_errors),
        )?;
        counter(
            &mut enc,
            "tls_errors",
            "TLS handshakes failed, by kind (no_sni, unknown_sni: refused with an unrecognized_name alert; handshake; timeout)",
            &by_kind(&m.tls_errors),
        )?;
        counter(
            &mut enc,
            "tls_handshakes",
            "TLS handshakes completed, by kind (full, or resumed from a session ticket or ID)",
            &[
                (vec![("kind", "full".into())], m.tls_full),
                (vec![("kind", "resumed".into())], m.tls_resumed),
            ],
        )?;
        gauge(
            &mut enc,
            "connections_active",
            "Connections open now",
            &[(vec![], m.active as i64)],
        )?;
        counter(
            &mut enc,
            "reloads",
            "Config reloads, by outcome",
            &[
                (vec![("outcome", "ok".into())], m.reloads_ok),
                (vec![("outcome", "error".into())], m.reloads_failed),
            ],
        )?;
        let f = server.runtime().forwarder.stats();
        let classes: Vec<(Labels, u64)> = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .iter()
            .zip(f.responses)
            .map(|(class, n)| (vec![("class", (*class).to_string())], n))
            .collect();
        counter(
            &mut enc,
            "requests",
            "HTTP responses sent, by status class",
            &classes,
        )?;
        counter(
            &mut enc,
            "upstream_errors",
            "Upstream failures, by kind (each answered 502, 504 or 413)",
            &[
                (vec![("kind", "unreachable".into())], f.upstream_errors),
                (vec![("kind", "timeout".into())], f.upstream_timeouts),
                (vec![("kind", "body_too_large".into())], f.bodies_too_large),
            ],
        )?;
        let timeouts = server.runtime().forwarder.timeouts().clone();
        let by_kind: Vec<(Labels, u64)> = TimeoutKind::ALL
            .iter()
            .map(|&kind| (vec![("kind", kind.label().to_string())], timeouts.get(kind)))
            .collect();
        counter(
            &mut enc,
            "timeouts",
            "Connections and requests ended for waiting too long, by what they waited for",
            &by_kind,
        )?;
        let u = server.runtime().forwarder.upstream_stats();
        gauge(
            &mut enc,
            metrics::UPSTREAM_CONNECTIONS_OPEN,
            "Upstream connections open now, idle pooled ones included",
            &[(vec![], u.open as i64)],
        )?;
        gauge(
            &mut enc,
            metrics::UPSTREAM_CONNECTIONS_MAX,
            "max_upstream_connections",
            &[(vec![], u.max as i64)],
        )?;
        counter(
            &mut enc,
            metrics::UPSTREAM_REQUESTS_QUEUED,
            "Upstream requests that waited, by the limit they waited for",
            &[
                (vec![("limit", "max_upstream_connections".into())], u.waited),
                (
                    vec![("limit", "max_upstream_connections_per_client".into())],
                    u.waited_per_client,
                ),
            ],
        )?;
        counter(
            &mut enc,
            metrics::UPSTREAM_REQUESTS_REFUSED,
            "Requests answered 503: no upstream connection freed up within the connect timeout",
            &[(
                vec![("reason", "max_upstream_connections".into())],
                u.refused,
            )],
        )?;
        self.encode_kernel(&mut enc)
    }
}

impl Scrape {
    fn encode_kernel(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let state = self.0.with_kernel(|kernel| {
            let counters: Vec<(Program, _)> = [Program::Xdp, Program::Socket]
                .into_iter()
                .filter_map(|p| kernel.counters(p).ok().flatten().map(|c| (p, c)))
                .collect();
            (kernel.attachments(), counters)
        });
        let Some((attachments, counters)) = state else {
            return Ok(());
        };
        let attached: Vec<(Labels, i64)> = attachments
            .iter()
            .map(|a| match a {
                Attachment::Xdp {
                    interface,
                    mode,
                    walk,
                } => (
                    vec![
                        ("program", "xdp".into()),
                        ("interface", interface.clone()),
                        (
                            "mode",
                            match mode {
                                XdpAttached::Native => "native".into(),
                                XdpAttached::Generic => "generic".into(),
                            },
                        ),
                        (
                            "walk",
                            match walk {
                                XdpWalk::Ethernet => "ethernet".into(),
                                XdpWalk::Ip => "ip".into(),
                            },
                        ),
                    ],
                    1,
                ),
                Attachment::Socket { local, kind } => (
                    vec![
                        ("program", "socket".into()),
                        (
                            "listener",
                            local.map(|l: SocketAddr| l.to_string()).unwrap_or_default(),
                        ),
                        (
                            "mode",
                            match kind {
                                SocketFilterKind::Ebpf => "ebpf".into(),
                                SocketFilterKind::Classic => "classic".into(),
                            },
                        ),
                    ],
                    1,
                ),
            })
            .collect();
        gauge(
            enc,
            "kernel_filter_attached",
            "Where the kernel filter is attached, in which mode and (XDP) which walk",
            &attached,
        )?;
        let mut syns = Vec::new();
        let mut by_class = Vec::new();
        let mut malformed = Vec::new();
        let mut observed = Vec::new();
        for (program, c) in &counters {
            let program = match program {
                // Both XDP walks count into one map, read once as `Program::Xdp`.
                Program::Xdp | Program::XdpL3 => "xdp",
                Program::Socket => "socket",
            };
            for (family, seen, passed, dropped) in [
                (
                    "ipv4",
                    Counter::SynSeenV4,
                    Counter::SynPassedV4,
                    Counter::SynDroppedV4,
                ),
                (
                    "ipv6",
                    Counter::SynSeenV6,
                    Counter::SynPassedV6,
                    Counter::SynDroppedV6,
                ),
            ] {
                for (outcome, slot) in [("seen", seen), ("passed", passed), ("dropped", dropped)] {
                    let labels = vec![
                        ("program", program.to_string()),
                        ("family", family.to_string()),
                        ("outcome", outcome.to_string()),
                    ];
                    syns.push((labels, c.get(slot)));
                }
            }
            for (class, slot) in [
                (Class::Proxy, Counter::SynPassedProxy),
                (Class::Direct, Counter::SynPassedDirect),
            ] {
                let labels = vec![
                    ("program", program.to_string()),
                    ("class", class.name().to_string()),
                ];
                by_class.push((labels, c.get(slot)));
            }
            malformed.push((
                vec![("program", program.to_string())],
                c.get(Counter::DroppedMalformed),
            ));
            observed.push((
                vec![("program", program.to_string())],
                c.get(Counter::ObservedOnly),
            ));
        }
        counter(
            enc,
            "kernel_syns",
            "Initial SYNs to protected ports judged in the kernel",
            &syns,
        )?;
        counter(
            enc,
            "kernel_syns_passed",
            "Initial SYNs passed in the kernel, by the class of their source (proxy: trusted_proxies, direct: direct_sources)",
            &by_class,
        )?;
        counter(
            enc,
            "kernel_dropped_malformed",
            "Frames dropped because they could not be judged",
            &malformed,
        )?;
        counter(
            enc,
            "kernel_observed_only",
            "Untrusted SYNs let through by observe_only",
            &observed,
        )
    }
}
