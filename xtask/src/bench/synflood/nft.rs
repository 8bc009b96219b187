//! The nftables side of the `synflood` scenario: a table whose one rule drops what
//! trustgate's filter would (an initial SYN to the protected port from any source but the
//! trusted one), on the `inet` input hook or the `netdev` ingress hook of the veth; the
//! table is deleted on drop.

use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{Case, PROXY_PORT};
use crate::bench::netns::Netns;
use crate::bench::procs::Scratch;

/// An nft table holding the case's rule, deleted on drop.
pub struct NftTable {
    pub family: &'static str,
    pub name: String,
}

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
        let name = format!("tgsf{}", std::process::id());
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
