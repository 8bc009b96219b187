//! `cargo xtask run`: builds the eBPF object and the proxy (release), starts the demo
//! upstream on 127.0.0.1:8081, and runs `trustgate -c config.toml` (under `sudo -E`
//! when not root, since the eBPF modes need CAP_BPF and CAP_NET_ADMIN) until it exits.
//! Then `curl --haproxy-protocol http://127.0.0.1:8080/` shows the recovered address.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::build_ebpf;
use crate::util::{cargo, exec, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Where the demo upstream listens (config.toml routes to 127.0.0.1:8081).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub upstream: String,
    /// Arguments for trustgate (default: `-c config.toml`).
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    build_ebpf::build(&build_ebpf::Options { release: true })?;
    let root = workspace_root();
    exec(
        cargo()
            .current_dir(&root)
            .args(["build", "--release", "-p", "proxy", "--bins"]),
    )
    .context("building trustgate")?;
    let bin = root.join("target").join("release");
    let mut upstream = Command::new(bin.join("demo-upstream"))
        .args(["--listen", &opts.upstream])
        .spawn()
        .context("starting the demo upstream")?;
    let mut args = opts.args.clone();
    if args.is_empty() {
        args = vec![
            "-c".into(),
            root.join("config.toml").to_string_lossy().into_owned(),
        ];
    }
    let trustgate = bin.join("trustgate");
    let mut cmd = if is_root() {
        Command::new(&trustgate)
    } else {
        eprintln!(
            "not root: running trustgate under sudo -E (the eBPF modes need CAP_BPF and CAP_NET_ADMIN)"
        );
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&trustgate);
        c
    };
    cmd.current_dir(&root).args(&args);
    eprintln!("trustgate on config.toml; try: curl --haproxy-protocol http://127.0.0.1:8080/");
    let status = cmd.status().context("running trustgate");
    let _ = upstream.kill();
    let _ = upstream.wait();
    let status = status?;
    if !status.success() {
        bail!("trustgate exited with {status}");
    }
    Ok(())
}

fn is_root() -> bool {
    crate::util::output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}
