//! The open-file limit and the descriptor budget. Every client connection holds a
//! descriptor, and every upstream connection one more; both are capped (`max_clients`,
//! `max_upstream_connections`), so the budget is their sum and a reserve. Services are
//! often started with a soft limit of 1024 (systemd's default is `LimitNOFILE=1024:524288`:
//! low for programs that still use select(2), with the room above it left for servers to
//! take). trustgate uses epoll only, so at start it raises its soft limit to the hard
//! limit, as Go programs, nginx and HAProxy do.

use std::io;

use tracing::{info, warn};

use crate::chain::Chain;

/// Descriptors needed besides the connections: listeners, the metrics listener, the
/// runtime's epoll and wakers, log output, eBPF programs and maps.
pub const RESERVED_FDS: u64 = 64;

/// The soft limit before and after [`raise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limit {
    pub(crate) before: u64,
    pub(crate) now: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit.
pub(crate) fn raise() -> io::Result<Limit> {
    let (before, _hard) = rlimit::Resource::NOFILE.get()?;
    let now = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok(Limit { before, now })
}

/// Descriptors the limits allow trustgate to hold: one per client connection
/// (`max_clients`), one per upstream connection, open or idle, whatever the number of
/// h2 streams (`max_upstream_connections`), and [`RESERVED_FDS`].
pub(crate) fn needed(max_clients: usize, max_upstream_connections: usize) -> u64 {
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    count(max_clients)
        .saturating_add(count(max_upstream_connections))
        .saturating_add(RESERVED_FDS)
}

/// [`raise`], logged: at info when it worked, at warn when it failed or when the limit
/// still cannot hold what the two caps allow (accept() or upstream connects would then
/// fail with EMFILE before the caps are reached).
pub(crate) fn raise_for(max_clients: usize, max_upstream_connections: usize) {
    let needed = needed(max_clients, max_upstream_connections);
    match raise() {
        Ok(limit) if limit.now < needed => warn!(
            limit = limit.now,
            needed,
            max_clients,
            max_upstream_connections,
            "the open-file limit (hard limit included) is below what max_clients and max_upstream_connections need; raise LimitNOFILE or lower them"
        ),
        Ok(limit) => info!(
            limit = limit.now,
            was = limit.before,
            needed,
            "open-file limit"
        ),
        Err(err) => warn!(error = %Chain(&err), "cannot read or raise the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_and_each_upstream_connection_needs_one_descriptor() {
        assert_eq!(needed(512, 512), 2 * 512 + RESERVED_FDS);
        assert_eq!(needed(1000, 50), 1050 + RESERVED_FDS);
        assert_eq!(needed(usize::MAX, 1), u64::MAX);
    }
}
