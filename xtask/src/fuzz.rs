//! `cargo xtask fuzz`: runs every cargo-fuzz target under `fuzz/` for a bounded time
//! (installing cargo-fuzz from crates.io when it is missing), with the seed corpus the
//! target keeps in `fuzz/seeds/<target>` when there is one.

use std::fs;

use anyhow::{Context, Result, bail};

use crate::build_ebpf::cargo_nightly;
use crate::util::{cargo, exec, output, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// How long to fuzz each target, in seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u32,
}

pub fn fuzz(opts: &Options) -> Result<()> {
    run(opts.seconds)
}

pub fn run(seconds: u32) -> Result<()> {
    let fuzz_dir = workspace_root().join("fuzz");
    let targets_dir = fuzz_dir.join("fuzz_targets");
    let mut targets: Vec<String> = fs::read_dir(&targets_dir)
        .with_context(|| format!("reading {}", targets_dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".rs").map(String::from)
        })
        .collect();
    targets.sort();
    if targets.is_empty() {
        bail!("no fuzz targets in {}", targets_dir.display());
    }
    if output(cargo().args(["fuzz", "--version"])).is_none() {
        exec(cargo().args(["install", "--locked", "cargo-fuzz"]))
            .context("installing cargo-fuzz")?;
    }
    for target in targets {
        let corpus = fuzz_dir.join("corpus").join(&target);
        fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let mut cmd = cargo_nightly();
        cmd.current_dir(&fuzz_dir)
            .args(["fuzz", "run", &target])
            .arg(&corpus);
        let seeds = fuzz_dir.join("seeds").join(&target);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.arg("--").arg(format!("-max_total_time={seconds}"));
        exec(&mut cmd).with_context(|| {
            format!("fuzz target `{target}` found a failure (see fuzz/artifacts)")
        })?;
    }
    Ok(())
}
