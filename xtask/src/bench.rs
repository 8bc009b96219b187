//! `cargo xtask bench [NAME]`: builds the release eBPF object, runs the named benchmark
//! (or all of them) and keeps each one's output in `target/bench/NAME.txt`, with the
//! machine, kernel and commit it ran on at the top.

use std::fs;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::build_ebpf;
use crate::util::{output, workspace_root};

/// The benchmarks, each a `[[bench]]` target of the `proxy` crate.
const BENCHES: &[&str] = &["kernel", "proxy_protocol"];

#[derive(clap::Args)]
pub struct Options {
    /// One benchmark to run (kernel, proxy_protocol); all when absent.
    pub name: Option<String>,
}

pub fn bench(opts: &Options) -> Result<()> {
    let names: Vec<&str> = match &opts.name {
        Some(name) if BENCHES.contains(&name.as_str()) => vec![name.as_str()],
        Some(name) => bail!("no benchmark `{name}`; there are: {}", BENCHES.join(", ")),
        None => BENCHES.to_vec(),
    };
    build_ebpf::build(&build_ebpf::Options { release: true })?;
    let root = workspace_root();
    let out_dir = root.join("target").join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let header = machine();
    for name in names {
        eprintln!("+ cargo bench -p proxy --bench {name}");
        let out = Command::new("cargo")
            .current_dir(&root)
            .args(["bench", "-p", "proxy", "--bench", name])
            .output()
            .with_context(|| format!("running the {name} benchmark"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        print!("{stdout}");
        if !out.status.success() {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            bail!("the {name} benchmark failed with {}", out.status);
        }
        let path = out_dir.join(format!("{name}.txt"));
        fs::write(&path, format!("{header}\n{stdout}"))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("written to {}", path.display());
    }
    Ok(())
}

/// One line naming the CPU, the kernel and the commit.
fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name\t: ").map(String::from))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = output(Command::new("uname").arg("-r")).unwrap_or_default();
    let commit =
        output(Command::new("git").args(["rev-parse", "--short", "HEAD"])).unwrap_or_default();
    format!(
        "machine: {cpu} ({cpus} CPUs), Linux {}, commit {}",
        kernel.trim(),
        commit.trim()
    )
}
