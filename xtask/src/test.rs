//! `cargo xtask test`: the whole suite, as CI runs it. Formatting and clippy (user space
//! and, separately, the eBPF crate, so `proxy-common`'s `user` feature never leaks into
//! the eBPF build), the eBPF object, then every test of the workspace including the
//! kernel and real-peer tests, and optionally a bounded fuzzing run.
//!
//! Kernel tests skip with a loud line when the process lacks CAP_BPF or root; set
//! TRUSTGATE_REQUIRE_ALL=1 (as `.ci/run` does) to make such a skip a failure.

use anyhow::{Context, Result};

use crate::build_ebpf;
use crate::util::{cargo, exec, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Also fuzz the PROXY parser for this many seconds (0: no fuzzing).
    #[arg(long, default_value_t = 0)]
    pub fuzz_seconds: u32,
    /// Skip fmt and clippy (for a quick local run).
    #[arg(long)]
    pub no_lint: bool,
    /// Passed to `cargo test` after `--` (a test-name filter, `--nocapture`, ...).
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn test(opts: &Options) -> Result<()> {
    let root = workspace_root();
    if !opts.no_lint {
        exec(
            cargo()
                .current_dir(&root)
                .args(["fmt", "--all", "--", "--check"]),
        )
        .context("formatting is off: run `cargo fmt --all`")?;
        exec(
            cargo()
                .current_dir(root.join("proxy-ebpf"))
                .args(["fmt", "--", "--check"]),
        )
        .context("formatting is off in proxy-ebpf: run `cargo fmt` there")?;
    }
    // The object is built before clippy and the tests: the proxy embeds it.
    build_ebpf::build(&build_ebpf::Options::default())?;
    if !opts.no_lint {
        exec(cargo().current_dir(&root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
        .context("clippy found problems in user space")?;
        exec(
            build_ebpf::cargo_nightly()
                .current_dir(root.join("proxy-ebpf"))
                .args([
                    "clippy",
                    "--target",
                    build_ebpf::TARGET,
                    "-Z",
                    "build-std=core",
                    "--target-dir",
                ])
                .arg(root.join("target").join("ebpf"))
                .args(["--", "-D", "warnings"]),
        )
        .context("clippy found problems in proxy-ebpf")?;
    }
    exec(
        cargo()
            .current_dir(&root)
            .args(["test", "--workspace", "--"])
            .args(&opts.args),
    )
    .context("tests failed")?;
    if opts.fuzz_seconds > 0 {
        crate::fuzz::run(opts.fuzz_seconds)?;
    }
    Ok(())
}
