//! The open-file limit. Every client connection holds a descriptor, and usually a second
//! one upstream, but services are often started with a soft limit of 1024 (systemd's
//! default is `LimitNOFILE=1024:524288`: low for programs that still use select(2), with
//! the room above it left for servers to take). trustgate uses epoll only, so at start it
//! raises its soft limit to the hard limit, as Go programs, nginx and HAProxy do.

use std::io;

use tracing::{info, warn};

/// Descriptors needed besides the connections: listeners, the metrics listener, the
/// runtime's epoll and wakers, log output, eBPF programs and maps.
const RESERVED_FDS: u64 = 64;

/// The soft limit before and after [`raise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub before: u64,
    pub now: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit.
pub fn raise() -> io::Result<Limit> {
    let (before, _hard) = rlimit::Resource::NOFILE.get()?;
    let now = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok(Limit { before, now })
}

/// Descriptors `max_clients` connections can need: one each, one upstream each, and
/// [`RESERVED_FDS`].
pub fn needed(max_clients: usize) -> u64 {
    u64::try_from(max_clients)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(RESERVED_FDS)
}

/// [`raise`], logged: at info when it worked, at warn when it failed or when the limit
/// still cannot hold `max_clients` connections (accept() would then fail with EMFILE
/// before `max_clients` is reached).
pub fn raise_for(max_clients: usize) {
    let needed = needed(max_clients);
    match raise() {
        Ok(limit) if limit.now < needed => warn!(
            limit = limit.now,
            needed,
            max_clients,
            "the open-file limit (hard limit included) is below what max_clients needs; raise LimitNOFILE or lower max_clients"
        ),
        Ok(limit) => info!(limit = limit.now, was = limit.before, "open-file limit"),
        Err(err) => warn!(error = %err, "cannot read or raise the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_may_need_two_descriptors() {
        assert_eq!(needed(512), 2 * 512 + RESERVED_FDS);
        assert_eq!(needed(usize::MAX), u64::MAX);
    }
}
