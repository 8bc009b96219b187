//! Looks at a running process from outside, through `/proc`: resident memory, open
//! descriptors (and which of them are TCP connections with given endpoints, such as an
//! upstream pool's), and open-file limits, for tests that assert a flood left nothing
//! behind.
//! Also raises this test process's own open-file soft limit when a test needs many
//! sockets. Linux only, like trustgate's kernel side.

use std::collections::HashSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What a process holds at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// `VmRSS` from `/proc/PID/status`, in KiB.
    pub rss_kib: u64,
    /// Entries of `/proc/PID/fd`.
    pub fds: usize,
}

/// The resident memory and open descriptors of `pid`.
pub fn usage(pid: i32) -> Usage {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("listing /proc/{pid}/fd: {e}"))
        .count();
    Usage { rss_kib, fds }
}

/// What a proxy holds at one instant. Connections with its upstream (the pool's idle
/// ones come and go with its idle timeout) and with its metrics listener (a scrape's
/// socket closes a moment after the scrape) are counted apart from other descriptors.
#[derive(Clone, Copy, Debug)]
pub struct Held {
    pub rss_kib: u64,
    /// Open descriptors other than those connections.
    pub fds: usize,
    /// Connections with the upstream or the metrics listener.
    pub apart: usize,
}

/// What `pid` holds, its connections with any of `endpoints` counted apart.
pub fn held(pid: i32, endpoints: &[SocketAddr]) -> Held {
    let Usage { rss_kib, fds } = usage(pid);
    let apart = connections_with(pid, endpoints);
    Held {
        rss_kib,
        fds: fds.saturating_sub(apart),
        apart,
    }
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {} KiB, {} fds + {} upstream/metrics connections",
            self.rss_kib, self.fds, self.apart
        )
    }
}

/// The `st` column of `/proc/net/tcp*` for a listening socket.
const TCP_LISTEN: &str = "0A";

/// How many of `pid`'s descriptors are TCP connections (not listeners) with one end at
/// one of `endpoints` (from `/proc/PID/net/tcp` and `tcp6`, matched by socket inode).
pub fn connections_with(pid: i32, endpoints: &[SocketAddr]) -> usize {
    let inodes: HashSet<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("listing /proc/{pid}/fd: {e}"))
        .filter_map(|entry| {
            let link = fs::read_link(entry.ok()?.path()).ok()?;
            let link = link.to_str()?;
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .flat_map(|table| {
            fs::read_to_string(format!("/proc/{pid}/net/{table}"))
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local = parse_proc_addr(fields.get(1)?)?;
                    let remote = parse_proc_addr(fields.get(2)?)?;
                    let listening = *fields.get(3)? == TCP_LISTEN;
                    let ours = inodes.contains(*fields.get(9)?);
                    let with = endpoints.contains(&local) || endpoints.contains(&remote);
                    (ours && with && !listening).then_some(())
                })
                .collect::<Vec<_>>()
        })
        .count()
}

/// An address as `/proc/net/tcp*` prints it: the address's bytes as native-endian 32-bit
/// words in hex, a colon, the port in hex. IPv4-mapped IPv6 becomes IPv4.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<[u8; 4]> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .map(|w| w.map(u32::to_ne_bytes))
        .collect::<Option<_>>()?;
    let ip = match words.as_slice() {
        [a] => IpAddr::V4(Ipv4Addr::from(*a)),
        [a, b, c, d] => {
            let bytes: [u8; 16] = [*a, *b, *c, *d].concat().try_into().ok()?;
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The soft and hard open-file limits of `pid` (`None`: unlimited).
pub fn nofile_limits(pid: i32) -> (Option<u64>, Option<u64>) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/limits: {e}"));
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-file limit in /proc/{pid}/limits"));
    let mut values = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse().ok());
    let soft = values.next().flatten();
    let hard = values.next().flatten();
    (soft, hard)
}

/// Raises this process's open-file soft limit as far as its hard limit allows, so a
/// test can open `needed` sockets (and the processes it starts inherit the room).
/// Returns false after a loud skip (a failure in CI) when the hard limit is too low.
pub fn room_for(needed: u64) -> bool {
    let why = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) if soft >= needed => return true,
        Ok(soft) => {
            format!(
                "RLIMIT_NOFILE is {soft} even raised to the hard limit; this test needs {needed}"
            )
        }
        Err(e) => format!("raising RLIMIT_NOFILE: {e}"),
    };
    super::skip(&why);
    false
}
