//! The admin listener (`[metrics] listen`): `GET /metrics` answers every counter in the
//! OpenMetrics text format, encoded by `prometheus-client`: the families registered in
//! [`crate::metrics::Metrics`], then the kernel's per-CPU counters, read at scrape time by
//! a collector. `trustgate stats` prints the same scrape.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use proxy_common::{Counter, KERNEL_FAMILIES};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::chain::Chain;
use crate::kernel::{Attachment, Program, SocketFilterKind, XdpAttached, XdpWalk};
use crate::server::Server;

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// At most this many admin connections at once; one more is closed at accept. A scraper
/// needs one; the cap keeps whoever reaches the port from holding descriptors.
pub(crate) const ADMIN_MAX_CONNECTIONS: usize = 16;
/// The wait for a request head on an admin connection.
pub(crate) const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// An admin connection's whole life: one scrape (keep-alive is off).
pub(crate) const ADMIN_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `/metrics` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, server: Arc<Server>) {
    serve_with(listener, move || render(&server)).await
}

/// Serves `scrape`'s text at `/metrics`, under the admin listener's caps: at most
/// [`ADMIN_MAX_CONNECTIONS`], one request each, its head within [`ADMIN_HEADER_TIMEOUT`]
/// and the whole connection within [`ADMIN_CONNECTION_TIMEOUT`].
async fn serve_with<F>(listener: TcpListener, scrape: F)
where
    F: Fn() -> Result<String, fmt::Error> + Send + Sync + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        info!(listener = %addr, "metrics listening");
    }
    let scrape = Arc::new(scrape);
    let open = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(error = %err, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            debug!(peer = %peer, "metrics connection refused: {ADMIN_MAX_CONNECTIONS} open");
            continue;
        };
        let scrape = Arc::clone(&scrape);
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let scrape = Arc::clone(&scrape);
                async move { Ok::<_, Infallible>(answer(&req, &*scrape)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(ADMIN_CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    debug!(peer = %peer, error = %Chain(&err), "metrics connection ended with an error")
                }
                Err(_elapsed) => debug!(peer = %peer, "metrics connection closed: too slow"),
            }
        });
    }
}

fn answer(
    req: &Request<hyper::body::Incoming>,
    scrape: &dyn Fn() -> Result<String, fmt::Error>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if req.uri().path() == "/metrics" {
        match scrape() {
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

/// One scrape, as OpenMetrics text: the families of [`metrics::Metrics`], then the
/// kernel's series, read from its per-CPU maps now.
pub(crate) fn render(server: &Arc<Server>) -> Result<String, fmt::Error> {
    let mut text = String::new();
    server.metrics().encode(&mut text)?;
    let mut kernel = Registry::with_prefix("trustgate");
    kernel.register_collector(Box::new(Scrape(Arc::clone(server))));
    prometheus_client::encoding::text::encode_registry(&mut text, &kernel)?;
    prometheus_client::encoding::text::encode_eof(&mut text)?;
    Ok(text)
}

/// Reads the kernel's counters at scrape time (they live in per-CPU maps, summed when read).
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
        for (family, help) in KERNEL_FAMILIES {
            let mut series = Vec::new();
            for (program, c) in &counters {
                let program = match program {
                    // Both XDP walks count into one map, read once as `Program::Xdp`.
                    Program::Xdp | Program::XdpL3 => "xdp",
                    Program::Socket => "socket",
                };
                for slot in Counter::ALL {
                    let (name, labels) = slot.series();
                    if name != family {
                        continue;
                    }
                    let mut all: Labels = vec![("program", program.to_string())];
                    all.extend(labels.iter().map(|&(k, v)| (k, v.to_string())));
                    series.push((all, c.get(slot)));
                }
            }
            counter(enc, family, help, &series)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn admin() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve_with(listener, || Ok("up 1\n".to_string())));
        addr
    }

    #[tokio::test]
    async fn a_scrape_is_answered_and_the_connection_closed() {
        let addr = admin().await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut got = String::new();
        stream
            .read_to_string(&mut got)
            .await
            .expect("read to close");
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(got.ends_with("up 1\n"), "{got}");
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_at_once() {
        let addr = admin().await;
        let mut held = Vec::new();
        for _ in 0..ADMIN_MAX_CONNECTIONS {
            held.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // Accepted in order: the held ones took every permit before this one is accepted.
        let mut extra = TcpStream::connect(addr).await.expect("connect");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(ADMIN_HEADER_TIMEOUT / 2, extra.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the connection past the cap is closed before any head timeout: {read:?}"
        );
        drop(held);
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_at_the_header_timeout() {
        let addr = admin().await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let started = Instant::now();
        let mut got = Vec::new();
        let read = tokio::time::timeout(
            ADMIN_HEADER_TIMEOUT + Duration::from_secs(3),
            stream.read_to_end(&mut got),
        )
        .await;
        assert!(read.is_ok(), "still open past the header timeout");
        assert!(started.elapsed() >= ADMIN_HEADER_TIMEOUT - Duration::from_millis(100));
    }
}
