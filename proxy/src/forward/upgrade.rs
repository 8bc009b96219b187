//! HTTP/1.1 `Upgrade` (WebSocket) tunnelling: recognising an upgrade request, and, once
//! the upstream has answered 101 with the protocol asked for, splicing the two upgraded
//! connections together with `copy_bidirectional` in a task of its own. The listener
//! serves connections `with_upgrades()`, or the client side never completes.

use http::{HeaderMap, HeaderValue, Response, Version, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

/// The protocol an HTTP/1.1 request asks to switch to: its `Upgrade` value, when its
/// `Connection` names `upgrade`. HTTP/2 has no `Upgrade`.
pub(super) fn requested(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
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
    headers.get(header::UPGRADE).cloned()
}

/// Whether a 101 switches to the protocol that was asked for.
pub(super) fn matches(asked: &HeaderValue, response: &Response<Incoming>) -> bool {
    response
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|got| got.as_bytes().eq_ignore_ascii_case(asked.as_bytes()))
}

/// Splices the client's and the upstream's upgraded connections once both complete; the
/// task ends when either side closes. Failures are the two peers' business: logged at
/// debug only.
pub(super) fn tunnel(client: OnUpgrade, upstream: &mut Response<Incoming>, who: String) {
    let upstream = hyper::upgrade::on(upstream);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(error) => {
                debug!(upstream = %who, %error, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => debug!(upstream = %who, up, down, "tunnel closed"),
            Err(error) => debug!(upstream = %who, %error, "tunnel failed"),
        }
    });
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

    #[test]
    fn upgrade_needs_connection_upgrade_and_http11() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(
            requested(Version::HTTP_11, &ws),
            Some(HeaderValue::from_static("websocket"))
        );
        assert_eq!(requested(Version::HTTP_2, &ws), None);
        assert_eq!(requested(Version::HTTP_10, &ws), None);
        let no_connection = headers(&[("upgrade", "websocket")]);
        assert_eq!(requested(Version::HTTP_11, &no_connection), None);
        let no_upgrade = headers(&[("connection", "upgrade")]);
        assert_eq!(requested(Version::HTTP_11, &no_upgrade), None);
    }
}
