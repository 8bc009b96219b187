//! `cargo xtask bench` (being written).

use anyhow::Result;

#[derive(clap::Args)]
pub struct Options {}

pub fn bench(_opts: &Options) -> Result<()> {
    anyhow::bail!("not yet")
}
