//! What the `synflood` scenario reads at both ends of a window: softirq time per CPU
//! (/proc/stat), a process's CPU time (/proc/PID/stat), the SYNs a given place dropped
//! (trustgate's kernel counters, an nft rule's counter, or the SYN cookies TCP sent), and
//! the frames lost on the way (veth and backlog drops). Kernel times are in USER_HZ ticks,
//! sampled at the timer tick: read them as deltas over whole seconds, not instants.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench::netns::Netns;
use crate::bench::procs::{self, USER_HZ};

/// Bound on one metrics scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a case's dropped SYNs are counted.
pub enum DropCount {
    /// TcpExt SyncookiesSent: SYNs TCP answered with a cookie and forgot.
    Cookies,
    /// The packet counter of the rule in an nft table (family, name).
    Nft(&'static str, String),
    /// trustgate's `kernel_syns_total` for this program, IPv4, dropped.
    Kernel(&'static str, SocketAddr),
}

impl DropCount {
    pub fn read(&self) -> Result<u64> {
        match self {
            DropCount::Cookies => tcp_ext("SyncookiesSent"),
            DropCount::Nft(family, name) => nft_packets(family, name),
            DropCount::Kernel(program, metrics) => {
                let key = format!(
                    "trustgate_kernel_syns_total{{program=\"{program}\",family=\"ipv4\",outcome=\"dropped\"}}"
                );
                metric(&scrape(*metrics)?, &key)
            }
        }
    }
}

/// Counters at one instant.
pub struct Snapshot {
    at: Instant,
    softirq: Vec<u64>,
    proxy: u64,
    dropped: u64,
    lost: u64,
    sent: u64,
}

impl Snapshot {
    pub fn take(net: &Netns, proxy_pid: u32, drops: &DropCount) -> Result<Snapshot> {
        Ok(Snapshot {
            at: Instant::now(),
            softirq: procs::cpu_times()?.iter().map(|t| t.softirq).collect(),
            proxy: process_ticks(proxy_pid)?,
            dropped: drops.read()?,
            lost: softnet_dropped()?
                + host_stat(&net.host_if, "rx_dropped")?
                + net.ns_if_stat(true, 3)?,
            sent: net.ns_if_stat(true, 1)? + net.ns_if_stat(true, 3)?,
        })
    }
}

/// Rates over a window between two snapshots.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// Softirq time per CPU, in CPUs (1.0 = one CPU all the time).
    pub softirq: Vec<f64>,
    /// The proxy's user + system time, in CPUs.
    pub proxy: f64,
    pub dropped_per_s: f64,
    /// Frames dropped before any filter saw them (backlog full, veth queue full).
    pub lost_per_s: f64,
    /// Frames the namespace end sent (flood and trusted traffic).
    pub sent_per_s: f64,
}

impl Window {
    pub fn between(a: &Snapshot, b: &Snapshot) -> Window {
        let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let rate = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
        Window {
            softirq: a
                .softirq
                .iter()
                .zip(&b.softirq)
                .map(|(x, y)| rate(*x, *y) / USER_HZ)
                .collect(),
            proxy: rate(a.proxy, b.proxy) / USER_HZ,
            dropped_per_s: rate(a.dropped, b.dropped),
            lost_per_s: rate(a.lost, b.lost),
            sent_per_s: rate(a.sent, b.sent),
        }
    }

    /// Softirq time on all CPUs together, in CPUs.
    pub fn softirq_total(&self) -> f64 {
        self.softirq.iter().sum()
    }
}

/// utime + stime of `pid`, all threads, in ticks.
pub fn process_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces; fields 14 and 15 follow its ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("unexpected {path}: {text}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no field {} in {path}", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// A TcpExt counter from /proc/net/netstat (the host's namespace).
fn tcp_ext(name: &str) -> Result<u64> {
    let text = fs::read_to_string("/proc/net/netstat").context("reading /proc/net/netstat")?;
    let mut rows = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
        bail!("no TcpExt rows in /proc/net/netstat");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no TcpExt {name} in /proc/net/netstat"))
}

/// Frames dropped because a CPU's backlog was full (second column of softnet_stat, hex).
fn softnet_dropped() -> Result<u64> {
    let text =
        fs::read_to_string("/proc/net/softnet_stat").context("reading /proc/net/softnet_stat")?;
    text.lines()
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .with_context(|| format!("unexpected softnet_stat line `{l}`"))
        })
        .sum()
}

fn host_stat(interface: &str, name: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{interface}/statistics/{name}");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("unexpected {path}: {text}"))
}

/// The packet count of the (one) counter in an nft table.
fn nft_packets(family: &str, name: &str) -> Result<u64> {
    let out = Command::new("nft")
        .args(["list", "table", family, name])
        .output()
        .context("running nft list table")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no rule counter in table {family} {name}: {text}"))
}

/// trustgate's `/metrics`, as text.
pub fn scrape(addr: SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT)
        .with_context(|| format!("connecting to trustgate's metrics on {addr}"))?;
    s.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
    s.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .context("reading trustgate's metrics")?;
    if !text.starts_with("HTTP/1.1 200") {
        bail!("trustgate's metrics answered: {text}");
    }
    Ok(text)
}

/// The value of the line `key value` in an OpenMetrics text.
pub fn metric(text: &str, key: &str) -> Result<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .with_context(|| format!("no `{key}` in trustgate's metrics"))
}
