//! The `*_timeout` keys: how long each wait may last, in seconds (whole or fractional).
//! Every wait has a default, nginx's where nginx has the same wait, so that no peer can
//! hold a connection, a slot or an upstream connection for as long as it likes. Zero is
//! refused (it would mean "never"), except for `tunnel_idle_timeout`, where it turns the
//! idle limit off.

use std::time::Duration;

use super::{Cx, shown};
use crate::config::Timeouts;
use crate::config::error::{ConfigError, ValueError};
use crate::config::file::{ConfigFile, Seconds};

/// nginx `client_header_timeout`.
pub(crate) const DEFAULT_REQUEST_HEADER: Duration = Duration::from_secs(60);
/// nginx `keepalive_timeout`.
pub(crate) const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(75);
/// nginx `client_body_timeout`.
pub(crate) const DEFAULT_REQUEST_BODY: Duration = Duration::from_secs(60);
/// rpxy's upstream connect timeout.
pub(crate) const DEFAULT_UPSTREAM_CONNECT: Duration = Duration::from_secs(10);
/// nginx `proxy_read_timeout`.
pub(crate) const DEFAULT_UPSTREAM_READ: Duration = Duration::from_secs(60);
/// nginx `send_timeout`.
pub(crate) const DEFAULT_SEND: Duration = Duration::from_secs(60);
/// nginx's `proxy_read_timeout`, which also bounds its upgraded connections.
pub(crate) const DEFAULT_TUNNEL_IDLE: Duration = Duration::from_secs(60);
/// The longest timeout accepted: a day. Longer is a typo, or a wish for "never".
const MAX_SECONDS: f64 = 86_400.0;

pub(super) fn timeouts(cx: &Cx<'_>, file: &ConfigFile) -> Result<Timeouts, ConfigError> {
    let required = |key: &'static str, value: Option<Seconds>, default: Duration| match value {
        None => Ok(default),
        Some(value) => seconds(cx, key, value)?
            .ok_or_else(|| cx.invalid(key, "0".into(), ValueError::ZeroTimeout)),
    };
    Ok(Timeouts {
        request_header: required(
            "request_header_timeout",
            file.request_header_timeout,
            DEFAULT_REQUEST_HEADER,
        )?,
        keepalive: required(
            "keepalive_timeout",
            file.keepalive_timeout,
            DEFAULT_KEEPALIVE,
        )?,
        request_body: required(
            "request_body_timeout",
            file.request_body_timeout,
            DEFAULT_REQUEST_BODY,
        )?,
        upstream_connect: required(
            "upstream_connect_timeout",
            file.upstream_connect_timeout,
            DEFAULT_UPSTREAM_CONNECT,
        )?,
        upstream_read: required(
            "upstream_read_timeout",
            file.upstream_read_timeout,
            DEFAULT_UPSTREAM_READ,
        )?,
        send: required("send_timeout", file.send_timeout, DEFAULT_SEND)?,
        tunnel_idle: match file.tunnel_idle_timeout {
            None => Some(DEFAULT_TUNNEL_IDLE),
            Some(value) => seconds(cx, "tunnel_idle_timeout", value)?,
        },
    })
}

/// A number of seconds as a duration; `None` for zero.
fn seconds(
    cx: &Cx<'_>,
    key: &'static str,
    value: Seconds,
) -> Result<Option<Duration>, ConfigError> {
    let (secs, text) = match value {
        Seconds::Whole(n) => (n as f64, n.to_string()),
        Seconds::Fraction(x) => (x, shown(&x)),
    };
    if !(0.0..=MAX_SECONDS).contains(&secs) {
        return Err(cx.invalid(key, text, ValueError::BadTimeout));
    }
    let duration = Duration::from_secs_f64(secs);
    // Below a millisecond no timer here can tell it from zero.
    if duration < Duration::from_millis(1) {
        return if secs == 0.0 {
            Ok(None)
        } else {
            Err(cx.invalid(key, text, ValueError::BadTimeout))
        };
    }
    Ok(Some(duration))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{APP, invalid, ok};
    use super::*;

    #[test]
    fn defaults_are_nginx_s() {
        let t = ok(&format!("listen_port = 80\n{APP}")).0.timeouts;
        assert_eq!(t.request_header, Duration::from_secs(60));
        assert_eq!(t.keepalive, Duration::from_secs(75));
        assert_eq!(t.request_body, Duration::from_secs(60));
        assert_eq!(t.upstream_connect, Duration::from_secs(10));
        assert_eq!(t.upstream_read, Duration::from_secs(60));
        assert_eq!(t.send, Duration::from_secs(60));
        assert_eq!(t.tunnel_idle, Some(Duration::from_secs(60)));
    }

    #[test]
    fn whole_and_fractional_seconds_are_read() {
        let t = ok(&format!(
            "listen_port = 80\nrequest_header_timeout = 5\nsend_timeout = 0.25\n\
             tunnel_idle_timeout = 0\n{APP}"
        ))
        .0
        .timeouts;
        assert_eq!(t.request_header, Duration::from_secs(5));
        assert_eq!(t.send, Duration::from_millis(250));
        assert_eq!(t.tunnel_idle, None, "0 turns the tunnel's idle limit off");
    }

    #[test]
    fn zero_negative_and_huge_timeouts_are_refused() {
        for key in [
            "request_header_timeout",
            "keepalive_timeout",
            "request_body_timeout",
            "upstream_connect_timeout",
            "upstream_read_timeout",
            "send_timeout",
        ] {
            let (at, problem) = invalid(&format!("listen_port = 80\n{key} = 0\n{APP}"));
            assert_eq!(at, key);
            assert!(
                matches!(problem, ValueError::ZeroTimeout),
                "{key}: {problem}"
            );
        }
        for bad in ["-1", "-0.5", "86401", "0.0001", "nan", "inf"] {
            let (at, problem) = invalid(&format!(
                "listen_port = 80\nkeepalive_timeout = {bad}\n{APP}"
            ));
            assert_eq!(at, "keepalive_timeout");
            assert!(
                matches!(problem, ValueError::BadTimeout),
                "{bad}: {problem}"
            );
        }
        let (at, problem) = invalid(&format!(
            "listen_port = 80\ntunnel_idle_timeout = -1\n{APP}"
        ));
        assert_eq!(at, "tunnel_idle_timeout");
        assert!(matches!(problem, ValueError::BadTimeout), "{problem}");
    }
}
