//! `cargo xtask test` (being written).

use anyhow::Result;

#[derive(clap::Args)]
pub struct Options {}

pub fn test(_opts: &Options) -> Result<()> {
    anyhow::bail!("not yet")
}
