//! `cargo xtask run` (being written).

use anyhow::Result;

#[derive(clap::Args)]
pub struct Options {}

pub fn run(_opts: &Options) -> Result<()> {
    anyhow::bail!("not yet")
}
