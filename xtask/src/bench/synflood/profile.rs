//! A system-wide profile for the `synflood` scenario: `perf record -a -g` (cpu-clock, as
//! virtual machines often have no hardware counters) over a window, then the flat
//! per-symbol report (with callees and without), read while the case's programs are still
//! loaded so that JIT-ed BPF programs resolve to their names. Gives the time spent in
//! the filter's own code (the BPF program, or netfilter's rules), under a given kernel
//! function, and the kernel symbols that cost the most.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bench::procs::Scratch;

/// Sampling frequency per CPU.
const FREQUENCY_HZ: &str = "999";

/// One symbol's share of all samples.
pub struct Symbol {
    /// Samples in the symbol or anything it called, percent.
    pub children: f64,
    /// Samples in the symbol itself, percent.
    pub own: f64,
    pub kernel: bool,
    pub name: String,
}

pub struct Profile {
    /// Sampled time, all CPUs, in nanoseconds (cpu-clock counts nanoseconds).
    pub sampled_ns: f64,
    symbols: Vec<Symbol>,
}

impl Profile {
    /// Percent of all samples in `name` and its callees (0 when never sampled).
    pub fn children(&self, name: &str) -> f64 {
        self.symbols
            .iter()
            .find(|s| s.name == name)
            .map_or(0.0, |s| s.children)
    }

    /// Percent of all samples in the filter's own code (see [`is_filter_code`]).
    pub fn filter_code(&self) -> f64 {
        self.symbols
            .iter()
            .filter(|s| is_filter_code(&s.name))
            .map(|s| s.own)
            .fold(0.0, |a, b| a + b)
    }

    /// The `n` kernel symbols with the most samples of their own, idle left out.
    pub fn top_kernel(&self, n: usize) -> Vec<&Symbol> {
        let mut top: Vec<&Symbol> = self
            .symbols
            .iter()
            .filter(|s| s.kernel && !is_idle(&s.name))
            .collect();
        top.sort_by(|a, b| b.own.total_cmp(&a.own));
        top.truncate(n);
        top
    }
}

/// Records every CPU for `window`, then reports.
pub fn record(dir: &Scratch, name: &str, window: Duration) -> Result<Profile> {
    let data = dir.path.join(format!("perf-{name}.data"));
    let out = Command::new("perf")
        .args([
            "record",
            "-a",
            "-g",
            "-e",
            "cpu-clock",
            "-F",
            FREQUENCY_HZ,
            "-o",
        ])
        .arg(&data)
        .args(["--", "sleep", &format!("{:.1}", window.as_secs_f64())])
        .output()
        .context("running perf record (apt-get install linux-perf)")?;
    if !out.status.success() {
        bail!(
            "perf record failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--children",
            "--sort",
            "sym",
            "-g",
            "none",
        ])
        .args(["--percent-limit", "0", "-i"])
        .arg(&data)
        .output()
        .context("running perf report")?;
    if !out.status.success() {
        bail!(
            "perf report failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// `perf report --children --sort sym` text: `# Event count (approx.): N` and
/// `  45.00%  1.38%  [k] symbol` lines.
fn parse(text: &str) -> Result<Profile> {
    let sampled_ns = text
        .lines()
        .find_map(|l| l.strip_prefix("# Event count (approx.): "))
        .and_then(|v| v.trim().parse().ok())
        .context("no event count in perf report's output")?;
    let symbols = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let children = words.next()?.strip_suffix('%')?.parse().ok()?;
            let own = words.next()?.strip_suffix('%')?.parse().ok()?;
            let kernel = words.next()? == "[k]";
            let name = words.collect::<Vec<_>>().join(" ");
            Some(Symbol {
                children,
                own,
                kernel,
                name,
            })
        })
        .collect();
    Ok(Profile {
        sampled_ns,
        symbols,
    })
}

/// The filter's own code: a JIT-ed BPF program (`bpf_prog_<tag>_<name>`), or netfilter's
/// hook walk and rule evaluation (`nf_hook_slow`, `nft_*`).
pub fn is_filter_code(symbol: &str) -> bool {
    let jit = symbol.strip_prefix("bpf_prog_").is_some_and(|rest| {
        rest.len() > 17
            && rest.as_bytes()[16] == b'_'
            && rest[..16].bytes().all(|b| b.is_ascii_hexdigit())
    });
    jit || symbol.starts_with("nft_") || symbol.starts_with("__nft_") || symbol == "nf_hook_slow"
}

fn is_idle(symbol: &str) -> bool {
    symbol.contains("safe_halt") || symbol.contains("idle") || symbol == "poll_idle"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jit_programs_and_nft_count_as_filter_code() {
        assert!(is_filter_code("bpf_prog_0123456789abcdef_trust_xdp"));
        assert!(is_filter_code("nft_do_chain"));
        assert!(is_filter_code("nf_hook_slow"));
        assert!(!is_filter_code("bpf_prog_run_generic_xdp"));
        assert!(!is_filter_code("do_xdp_generic"));
    }

    #[test]
    fn parses_a_children_report() {
        let text = "# Samples: 10 of event 'cpu-clock'\n# Event count (approx.): 10000000\n#\n\
                    \x20   50.00%    50.00%  [k] pv_native_safe_halt\n\
                    \x20   40.00%     2.00%  [k] do_xdp_generic\n\
                    \x20   30.00%    30.00%  [k] veth_xmit\n\
                    \x20   20.00%    20.00%  [.] some::user::code\n\
                    \x20    1.00%     1.00%  [k] bpf_prog_0123456789abcdef_trust_xdp\n";
        let p = parse(text).expect("parses");
        assert_eq!(p.sampled_ns, 10_000_000.0);
        assert_eq!(p.children("do_xdp_generic"), 40.0);
        assert_eq!(p.children("absent"), 0.0);
        assert_eq!(p.filter_code(), 1.0);
        let top: Vec<&str> = p.top_kernel(2).iter().map(|s| s.name.as_str()).collect();
        assert_eq!(top, ["veth_xmit", "do_xdp_generic"]);
    }
}
