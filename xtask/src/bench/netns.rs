//! A throwaway network for a scenario: a namespace joined to the host by a veth pair, in a
//! /29 of 198.19.0.0/16 (RFC 2544 benchmarking space) that no interface holds yet. Names
//! carry the pid. `Drop` stops whatever still runs inside the namespace, then deletes it
//! and the pair, so every exit path leaves the host as it was; what an interrupted run
//! (Ctrl-C, SIGKILL: no `Drop`) left is removed by the next one.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long processes left in the namespace get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

pub struct Netns {
    pub name: String,
    /// The host end of the pair (where XDP and the nft ingress hook attach).
    pub host_if: String,
    /// The namespace end.
    pub ns_if: String,
    pub host: Ipv4Addr,
    /// Assigned in the namespace: the trusted load balancer's address.
    pub trusted: Ipv4Addr,
    /// Not assigned anywhere: the host reaches it through a permanent neighbour entry
    /// pointing at the namespace end, which drops what it receives for it (no RST, no
    /// ICMP: forwarding is off in a new namespace), as a spoofed source would.
    pub outsider: Ipv4Addr,
}

impl Netns {
    /// Creates `tg<tag><pid>` and its pair, or fails saying which step did. First removes
    /// any `tg<tag><pid>` namespace whose process is gone.
    pub fn new(tag: &str) -> Result<Netns> {
        remove_stale(tag);
        let pid = std::process::id();
        let base = free_block(pid)?;
        let name = format!("tg{tag}{pid}");
        let net = Netns {
            host_if: format!("{name}h"),
            ns_if: format!("{name}n"),
            name,
            host: Ipv4Addr::from(base + 1),
            trusted: Ipv4Addr::from(base + 2),
            outsider: Ipv4Addr::from(base + 3),
        };
        if net.host_if.len() > 15 {
            bail!("interface name {} is too long", net.host_if);
        }
        ip(&["netns", "add", &net.name])?;
        // From here on, Drop removes whatever the remaining steps create.
        let (ns, h, n) = (&net.name, &net.host_if, &net.ns_if);
        let host = format!("{}/29", net.host);
        let trusted = format!("{}/29", net.trusted);
        ip(&[
            "link", "add", h, "type", "veth", "peer", "name", n, "netns", ns,
        ])?;
        ip(&["addr", "add", &host, "dev", h])?;
        ip(&["link", "set", h, "up"])?;
        ip(&["-n", ns, "addr", "add", &trusted, "dev", n])?;
        ip(&["-n", ns, "link", "set", n, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        let ns_mac = net.ns_mac()?;
        let outsider = net.outsider.to_string();
        ip(&[
            "neigh",
            "replace",
            &outsider,
            "lladdr",
            &ns_mac,
            "dev",
            h,
            "nud",
            "permanent",
        ])?;
        Ok(net)
    }

    /// The host end's MAC address (the destination of the outsider's frames).
    pub fn host_mac(&self) -> Result<String> {
        let path = format!("/sys/class/net/{}/address", self.host_if);
        let mac = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        Ok(mac.trim().to_string())
    }

    fn ns_mac(&self) -> Result<String> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-o", "link", "show", "dev", &self.ns_if])
            .output()
            .context("running ip link in the namespace")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(String::from)
            .with_context(|| format!("no MAC address for {} in `{text}`", self.ns_if))
    }

    /// `argv` run inside the namespace.
    pub fn exec(&self, argv: &[&str]) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .iter()
            .chain(argv)
            .map(|s| s.to_string())
            .collect()
    }

    /// A counter of the namespace end (`tx_packets`, `tx_dropped`, ...), from `ip -s link`.
    pub fn ns_if_stat(&self, tx: bool, column: usize) -> Result<u64> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-s", "link", "show", "dev", &self.ns_if])
            .output()
            .context("running ip -s link in the namespace")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let header = if tx { "TX:" } else { "RX:" };
        let mut lines = text
            .lines()
            .skip_while(|l| !l.trim_start().starts_with(header));
        lines
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(column)?.parse().ok())
            .with_context(|| format!("no {header} counters in `ip -s link`: {text}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// The processes in namespace `name`.
fn pids(name: &str) -> Vec<String> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Stops what runs in namespace `name`, then deletes it and its pair.
fn delete(name: &str) {
    // Only a scenario's own processes can be in its namespace; one left there would keep
    // the namespace, and the pair with it, alive after `netns del`.
    let left = pids(name);
    if !left.is_empty() {
        let _ = Command::new("kill").arg("-TERM").args(&left).status();
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && !pids(name).is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = pids(name);
        if !left.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&left).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
    let _ = Command::new("ip")
        .args(["link", "del", &format!("{name}h")])
        .stderr(Stdio::null())
        .status();
}

/// Deletes the `tg<tag><pid>` namespaces whose pid no longer runs.
fn remove_stale(tag: &str) {
    let prefix = format!("tg{tag}");
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if let Some(pid) = stale_pid(name, &prefix) {
            eprintln!("removing namespace {name}, left by an interrupted run (pid {pid})");
            delete(name);
        }
    }
}

/// The pid in `name` (`<prefix><pid>`) when no process has it any more.
pub fn stale_pid(name: &str, prefix: &str) -> Option<u32> {
    let pid: u32 = name.strip_prefix(prefix)?.parse().ok()?;
    let gone = pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists();
    gone.then_some(pid)
}

/// The first address of a /29 in 198.19.0.0/16, chosen from the pid, that no interface
/// holds an address in (the kernel tests pick theirs in 198.18.0.0/15 too).
fn free_block(pid: u32) -> Result<u32> {
    let start = u32::from(Ipv4Addr::new(198, 19, 0, 0));
    for i in 0..64 {
        let base = start + ((pid + i * 97) % 8192) * 8;
        let prefix = format!("{}/29", Ipv4Addr::from(base));
        let out = Command::new("ip")
            .args(["-4", "-o", "addr", "show", "to", &prefix])
            .output()
            .context("running ip addr")?;
        if out.status.success() && out.stdout.is_empty() {
            return Ok(base);
        }
    }
    bail!("no free /29 found in 198.19.0.0/16")
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
