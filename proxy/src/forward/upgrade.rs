//! HTTP/1.1 `Upgrade` (WebSocket) tunnelling: recognising an upgrade request to a
//! protocol the operator allows (`upgrade_protocols`; never h2c), and, once
//! the upstream has answered 101 with the protocol asked for, splicing the two upgraded
//! connections together with `copy_bidirectional` in a task of its own, closed on both
//! sides once no byte has crossed it either way for `tunnel_idle_timeout`. The listener
//! serves connections `with_upgrades()`, or the client side never completes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response, Version, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

use crate::metrics::{TimeoutCounts, TimeoutKind};

/// How long a tunnel may carry nothing, and where its closing is counted.
#[derive(Debug)]
pub(super) struct Idle {
    pub(super) limit: Duration,
    pub(super) counts: Arc<TimeoutCounts>,
}

/// The protocols an HTTP/1.1 request asks to switch to and may: the entries of its
/// `Upgrade` whose protocol name (before any `/version`) is in `allowed` (lowercase),
/// in the client's order, when its `Connection` names `upgrade`. `None` when no entry is
/// allowed: the request is then forwarded without `Upgrade`. `h2c` never passes, whatever
/// `allowed` says. HTTP/2 has no `Upgrade`.
pub(super) fn requested(
    version: Version,
    headers: &HeaderMap,
    allowed: &[String],
) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return None;
    }
    let offered = headers.get(header::UPGRADE)?;
    let all_allowed = |v: &HeaderValue| {
        v.to_str()
            .ok()
            .map(|text| text.split(',').map(str::trim).filter(|p| !p.is_empty()))
            .map(|mut entries| entries.all(|p| allowed_protocol(p, allowed)))
    };
    // The usual case, one allowed entry, keeps the client's value as it is.
    if all_allowed(offered) == Some(true) && headers.get_all(header::UPGRADE).iter().count() == 1 {
        return Some(offered.clone());
    }
    let kept: Vec<&str> = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| allowed_protocol(p, allowed))
        .collect();
    if kept.is_empty() {
        debug!(upgrade = ?offered, "upgrade to a protocol not allowed; forwarded without it");
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

/// Whether an `Upgrade` entry (`name[/version]`) names an allowed protocol.
fn allowed_protocol(entry: &str, allowed: &[String]) -> bool {
    let name = entry.split('/').next().unwrap_or_default().trim();
    !name.is_empty()
        && !name.eq_ignore_ascii_case("h2c")
        && allowed.iter().any(|a| name.eq_ignore_ascii_case(a))
}

/// Whether a 101 switches to one of the protocols that were asked for.
pub(super) fn matches(asked: &HeaderValue, response: &Response<Incoming>) -> bool {
    let Some(got) = response.headers().get(header::UPGRADE) else {
        return false;
    };
    got.as_bytes().eq_ignore_ascii_case(asked.as_bytes())
        || asked.to_str().is_ok_and(|asked| {
            asked
                .split(',')
                .any(|p| p.trim().as_bytes().eq_ignore_ascii_case(got.as_bytes()))
        })
}

/// Splices the client's and the upstream's upgraded connections once both complete; the
/// task ends when either side closes, or when `idle` says the tunnel has been silent too
/// long (both connections are then dropped: closed). Failures are the two peers'
/// business: logged at debug only.
pub(super) fn tunnel(
    client: OnUpgrade,
    upstream: &mut Response<Incoming>,
    who: String,
    idle: Option<Idle>,
) {
    let upstream = hyper::upgrade::on(upstream);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(error) => {
                debug!(upstream = %who, %error, "upgrade did not complete");
                return;
            }
        };
        let epoch = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let mut client = Touched::new(TokioIo::new(client), epoch, &last);
        let mut upstream = Touched::new(TokioIo::new(upstream), epoch, &last);
        let copied = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        let Some(idle) = idle else {
            return closed(&who, copied.await);
        };
        tokio::select! {
            copied = copied => closed(&who, copied),
            () = silence(epoch, &last, idle.limit) => {
                idle.counts.bump(TimeoutKind::TunnelIdle);
                debug!(upstream = %who, tunnel_idle_timeout = ?idle.limit, "tunnel idle: closed");
            }
        }
    });
}

fn closed(who: &str, copied: io::Result<(u64, u64)>) {
    match copied {
        Ok((up, down)) => debug!(upstream = %who, up, down, "tunnel closed"),
        Err(error) => debug!(upstream = %who, %error, "tunnel failed"),
    }
}

/// Completes once `limit` has passed since `last` (milliseconds after `epoch`) moved.
async fn silence(epoch: Instant, last: &AtomicU64, limit: Duration) {
    loop {
        let since = epoch + Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = since + limit;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// One side of a tunnel, noting in `last` when a byte last crossed it either way.
struct Touched<S> {
    inner: S,
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Touched<S> {
    fn new(inner: S, epoch: Instant, last: &Arc<AtomicU64>) -> Self {
        Touched {
            inner,
            epoch,
            last: Arc::clone(last),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Touched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Touched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    fn websocket() -> Vec<String> {
        vec!["websocket".to_owned()]
    }

    #[test]
    fn only_allowed_protocols_are_upgraded_and_h2c_never() {
        let asked = |value: &'static str, allowed: &[String]| {
            requested(
                Version::HTTP_11,
                &headers(&[
                    ("connection", "Upgrade, HTTP2-Settings"),
                    ("upgrade", value),
                ]),
                allowed,
            )
        };
        assert_eq!(
            asked("WebSocket", &websocket()),
            Some(HeaderValue::from_static("WebSocket"))
        );
        assert_eq!(asked("h2c", &websocket()), None);
        assert_eq!(asked("h2c", &["h2c".to_owned()]), None);
        assert_eq!(asked("foo/2", &websocket()), None);
        assert_eq!(
            asked("foo/2", &["foo".to_owned()]),
            Some(HeaderValue::from_static("foo/2"))
        );
        assert_eq!(
            asked("h2c, websocket", &websocket()),
            Some(HeaderValue::from_static("websocket"))
        );
        assert_eq!(asked("websocket", &[]), None);
    }

    #[test]
    fn upgrade_needs_connection_upgrade_and_http11() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(
            requested(Version::HTTP_11, &ws, &websocket()),
            Some(HeaderValue::from_static("websocket"))
        );
        assert_eq!(requested(Version::HTTP_2, &ws, &websocket()), None);
        assert_eq!(requested(Version::HTTP_10, &ws, &websocket()), None);
        let no_connection = headers(&[("upgrade", "websocket")]);
        assert_eq!(
            requested(Version::HTTP_11, &no_connection, &websocket()),
            None
        );
        let no_upgrade = headers(&[("connection", "upgrade")]);
        assert_eq!(requested(Version::HTTP_11, &no_upgrade, &websocket()), None);
    }
}
