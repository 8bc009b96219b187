//! The nftables side of the `synflood` scenario: a table whose one rule drops what
//! trustgate's filter would (an initial SYN to the protected port from any source but the
//! trusted one), on the `inet` input hook or the `netdev` ingress hook of the veth; the
//! table is deleted on drop, or by the next run if this one was killed.

use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{Case, PROXY_PORT};
use crate::bench::netns::{Netns, stale_pid};
use crate::bench::procs::Scratch;

/// An nft table holding the case's rule, deleted on drop.
pub struct NftTable {
    pub family: &'static str,
    pub name: String,
}

/// Table names: this prefix and the pid.
const PREFIX: &str = "tgsf";

impl NftTable {
    pub fn create(case: Case, net: &Netns, dir: &Scratch) -> Result<Option<NftTable>> {
        // The same judgement as trustgate's: an initial SYN to the protected port from
        // any source but the trusted one. One address compared inline, the cheapest
        // form nftables has.
        let rule = format!(
            "tcp dport {PROXY_PORT} tcp flags & (syn | ack) == syn ip saddr != {} counter drop",
            net.trusted
        );
        let (family, hook) = match case {
            Case::NftInet => (
                "inet",
                "chain input {\n    type filter hook input priority filter; policy accept;"
                    .to_string(),
            ),
            Case::NftNetdev => (
                "netdev",
                format!(
                    "chain ingress {{\n    type filter hook ingress device \"{}\" priority filter; policy accept;",
                    net.host_if
                ),
            ),
            _ => return Ok(None),
        };
        let name = format!("{PREFIX}{}", std::process::id());
        let text = format!("table {family} {name} {{\n  {hook}\n    {rule}\n  }}\n}}\n");
        let path = dir.write(&format!("{}.nft", case.name()), &text)?;
        eprintln!("+ nft -f {path}");
        let out = Command::new("nft")
            .args(["-f", &path])
            .output()
            .context("running nft")?;
        if !out.status.success() {
            bail!(
                "nft -f {path} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Some(NftTable { family, name }))
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", self.family, &self.name])
            .status();
    }
}

/// Deletes the tables a killed run left (named with a pid that no longer runs): one
/// left on the input hook would drop the next run's trusted SYNs.
pub fn remove_stale() {
    let Ok(out) = Command::new("nft").args(["list", "tables"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // table inet tgsf1234
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["table", family, name] = words[..]
            && let Some(pid) = stale_pid(name, PREFIX)
        {
            eprintln!("removing nft table {family} {name}, left by an interrupted run (pid {pid})");
            let _ = Command::new("nft")
                .args(["delete", "table", family, name])
                .status();
        }
    }
}
