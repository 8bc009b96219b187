//! `cargo xtask bench [NAME]`: builds the release eBPF object, then runs the named
//! benchmark (or all of them). The criterion benches (`kernel`, `proxy_protocol`) keep
//! their output in `target/bench/NAME.txt`; the end-to-end scenarios (`http`, `memory`, `download`,
//! `bulk`, `slowloris`, `synflood`) print a markdown table and write it to `target/bench/NAME.md`, with the machine,
//! kernel, commit, load average and exact command at the top.

mod bulk;
#[path = "../../../proxy/tests/it/common/certs.rs"]
#[expect(
    dead_code,
    reason = "the benches serve one self-signed certificate; the files and the CA are the tests'"
)]
mod certs;
mod client;
mod download;
mod http;
mod memory;
mod netns;
mod peers;
mod procs;
mod slowloris;
mod synflood;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::build_ebpf;
use crate::util::{cargo, exec, output, workspace_root};

/// The criterion benchmarks, each a `[[bench]]` target of the `proxy` crate.
const BENCHES: &[&str] = &["kernel", "proxy_protocol"];
/// The end-to-end scenarios, run by xtask itself.
const SCENARIOS: &[&str] = &[
    "http",
    "memory",
    "download",
    "bulk",
    "slowloris",
    "synflood",
];

#[derive(clap::Args)]
pub struct Options {
    /// One benchmark to run (kernel, proxy_protocol, http, memory, download, bulk,
    /// slowloris, synflood); all when absent. `synflood` and `bulk` need root.
    pub name: Option<String>,
    /// Alternating rounds per end-to-end scenario (A B C A B C ...).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds each load generator runs per measurement in `http`, and of each window
    /// (and of each profile) in `synflood`.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Idle keep-alive connections held open in `memory`.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Seconds the normal client runs in `slowloris` while the hostile connections are held.
    #[arg(long, default_value_t = 30)]
    pub window: u64,
    /// Concurrent downloads in `download`; concurrent downloads, then uploads, in `bulk`.
    #[arg(long, default_value_t = 200)]
    pub downloads: usize,
    /// MiB each download in `download` fetches; each transfer's MiB in `bulk`.
    #[arg(long, default_value_t = 50)]
    pub mib: u64,
    /// Seconds after the downloads end that `download` reads RSS again.
    #[arg(long, default_value_t = 30)]
    pub after: u64,
    /// Another trustgate binary to measure beside the fresh build in `download` (a
    /// build of another commit); repeatable.
    #[arg(long)]
    pub compare: Vec<String>,
}

pub fn bench(opts: &Options) -> Result<()> {
    let all: Vec<&str> = BENCHES.iter().chain(SCENARIOS).copied().collect();
    let names: Vec<&str> = match &opts.name {
        Some(name) if all.contains(&name.as_str()) => vec![name.as_str()],
        Some(name) => bail!("no benchmark `{name}`; there are: {}", all.join(", ")),
        None => all,
    };
    build_ebpf::build(&build_ebpf::Options { release: true })?;
    let root = workspace_root();
    let out_dir = root.join("target").join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let header = machine();
    for name in names {
        match name {
            "http" => report(&out_dir, name, &http::run(opts, &trustgate_binary()?)?)?,
            "memory" => report(&out_dir, name, &memory::run(opts, &trustgate_binary()?)?)?,
            "download" => report(&out_dir, name, &download::run(opts, &trustgate_binary()?)?)?,
            "bulk" => {
                let (trustgate, sink) = (trustgate_binary()?, release_binary("demo-upstream")?);
                report(&out_dir, name, &bulk::run(opts, &trustgate, &sink)?)?
            }
            "slowloris" => report(&out_dir, name, &slowloris::run(opts, &trustgate_binary()?)?)?,
            "synflood" => report(&out_dir, name, &synflood::run(opts, &trustgate_binary()?)?)?,
            _ => criterion(&root, &out_dir, &header, name)?,
        }
    }
    Ok(())
}

fn criterion(
    root: &std::path::Path,
    out_dir: &std::path::Path,
    header: &str,
    name: &str,
) -> Result<()> {
    eprintln!("+ cargo bench -p proxy --bench {name}");
    let out = cargo()
        .current_dir(root)
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
    Ok(())
}

/// Builds the release `trustgate` (the eBPF object is already built) and returns its path.
fn trustgate_binary() -> Result<String> {
    release_binary("trustgate")
}

/// Builds the `proxy` crate's release binary `name` and returns its path.
fn release_binary(name: &str) -> Result<String> {
    let root = workspace_root();
    exec(
        cargo()
            .current_dir(&root)
            .args(["build", "--release", "-p", "proxy", "--bin", name]),
    )?;
    let bin: PathBuf = root.join("target").join("release").join(name);
    Ok(bin.to_string_lossy().into_owned())
}

/// Prints a scenario's table and writes it to `target/bench/NAME.md` below the machine,
/// the date, the load average before and after, and the command.
fn report(out_dir: &std::path::Path, name: &str, body: &Measured) -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    let text = format!(
        "{}\n\ndate: {}\nload average before: {}\nload average after: {}\ncommand: `cargo xtask {}`\n\n{}",
        machine(),
        date.trim(),
        body.load_before,
        loadavg(),
        args.join(" "),
        body.text
    );
    println!("{text}");
    let path = out_dir.join(format!("{name}.md"));
    fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("written to {}", path.display());
    Ok(())
}

/// A scenario's markdown, and the load average when it started.
pub struct Measured {
    pub load_before: String,
    pub text: String,
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The median of `values` (the upper one for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
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
