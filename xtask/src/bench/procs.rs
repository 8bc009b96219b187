//! The processes a scenario starts, and their scratch directory: each is a guard that
//! stops what it owns on drop (SIGTERM, then SIGKILL after a bounded wait), so every
//! exit path of a scenario, `?` and panics included, leaves nothing running behind.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a stopped process may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a started server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A tool the scenarios run, and the Debian package that provides it.
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

pub const WRK: Tool = Tool {
    program: "wrk",
    package: "wrk",
};
pub const H2LOAD: Tool = Tool {
    program: "h2load",
    package: "nghttp2-client",
};
pub const HAPROXY: Tool = Tool {
    program: "haproxy",
    package: "haproxy",
};
pub const NGINX: Tool = Tool {
    program: "nginx",
    package: "nginx-light",
};
pub const TASKSET: Tool = Tool {
    program: "taskset",
    package: "util-linux",
};
pub const TRAFGEN: Tool = Tool {
    program: "trafgen",
    package: "netsniff-ng",
};
pub const NFT: Tool = Tool {
    program: "nft",
    package: "nftables",
};
pub const IP: Tool = Tool {
    program: "ip",
    package: "iproute2",
};
pub const GCC: Tool = Tool {
    program: "gcc",
    package: "gcc",
};
pub const PERF: Tool = Tool {
    program: "perf",
    package: "linux-perf",
};

/// Fails, naming the package to install, unless every tool is on the PATH (or in
/// /usr/sbin, where Debian puts nginx and haproxy).
pub fn require(tools: &[Tool]) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.push(PathBuf::from("/usr/sbin"));
    let missing: Vec<&Tool> = tools
        .iter()
        .filter(|t| !dirs.iter().any(|d| d.join(t.program).is_file()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = missing
        .iter()
        .map(|t| format!("`{}` (apt-get install {})", t.program, t.package))
        .collect();
    bail!("missing tools: {}", names.join(", "))
}

/// The nginx stream module, which `libnginx-mod-stream` provides; checked so that a
/// machine set up from `.ci/run` has everything the tests and benches need.
pub fn require_nginx_stream() -> Result<()> {
    if Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").is_file() {
        return Ok(());
    }
    bail!("nginx's stream module is missing (apt-get install libnginx-mod-stream)")
}

/// A running process, stopped on drop.
pub struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    /// Starts `cmd` pinned to `cpus` (a taskset list such as "1"), with its output in
    /// `dir/NAME.log`.
    pub fn start(
        name: &str,
        cpus: &str,
        cmd: &[&str],
        env: &[(&str, &str)],
        dir: &Path,
    ) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating a log file handle")?;
        let mut command = Command::new("taskset");
        command
            .args(["-c", cpus])
            .args(cmd)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        eprintln!("+ taskset -c {cpus} {}", cmd.join(" "));
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} (`{}`)", cmd.join(" ")))?;
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    /// The last lines of the process's output, for error messages.
    pub fn log_tail(&self, dir: &Path) -> String {
        tail_log(dir, &self.name)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `addr` accepts a connection; fails with the end of the process's log
    /// if it exits first or the wait runs out.
    pub fn wait_ready(&mut self, addr: SocketAddr, dir: &Path) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("polling a child")? {
                bail!(
                    "{} exited with {status}:\n{}",
                    self.name,
                    tail_log(dir, &self.name)
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on {addr} within {READY_TIMEOUT:?}:\n{}",
                    self.name,
                    tail_log(dir, &self.name)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM first: nginx's master then stops its workers (SIGKILL would orphan them)
        // and trustgate drains and detaches its programs.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} did not stop within {STOP_GRACE:?}; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail_log(dir: &Path, name: &str) -> String {
    let text = fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A scratch directory, removed on drop.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(scenario: &str) -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("trustgate-bench-{scenario}-{}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch { path })
    }

    /// Writes `name` in the directory and returns its path as a string.
    pub fn write(&self, name: &str, text: &str) -> Result<String> {
        let path = self.path.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path.to_string_lossy().into_owned())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The unit of the times in /proc/stat and /proc/PID/stat: USER_HZ, 100 per second on
/// Linux (x86, arm64).
pub const USER_HZ: f64 = 100.0;

/// One CPU's times since boot, in USER_HZ ticks, from its `cpuN` line of /proc/stat.
#[derive(Clone, Copy, Debug)]
pub struct CpuTimes {
    /// user, nice, system, irq, softirq and steal: everything but idle and iowait.
    pub busy: u64,
    pub softirq: u64,
}

/// The times of each CPU, `cpu0` first. Kernel times are sampled at the timer tick: read
/// them as deltas over whole seconds.
pub fn cpu_times() -> Result<Vec<CpuTimes>> {
    let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let times: Vec<CpuTimes> = text
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            // user nice system idle iowait irq softirq steal ...
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(str::parse)
                .collect::<Result<_, _>>()
                .with_context(|| format!("unexpected /proc/stat line `{l}`"))?;
            let [user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = f[..] else {
                bail!("too few columns in /proc/stat line `{l}`");
            };
            Ok(CpuTimes {
                busy: user + nice + system + irq + softirq + steal,
                softirq,
            })
        })
        .collect::<Result<_>>()?;
    if times.is_empty() {
        bail!("no cpuN lines in /proc/stat");
    }
    Ok(times)
}

/// The CPU time of process `pid`, all its threads, user and system, in USER_HZ ticks
/// (utime and stime of /proc/PID/stat).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name, in parentheses, may hold spaces: count fields after it.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the name: state is field 3, utime field 14, stime field 15.
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("unexpected {path}: `{stat}`"))
    };
    Ok(tick(11)? + tick(12)?)
}

/// Resident memory of `pid` in KiB (VmRSS from /proc/PID/status).
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// The KiB figure `field` (such as `VmRSS:` or `VmHWM:`) of /proc/PID/status.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// The pids of `pid`'s children (nginx's workers).
pub fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_reads_this_process() {
        let before = cpu_ticks(std::process::id()).expect("/proc/self/stat parses");
        // Busy for well over one tick (10 ms).
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = cpu_ticks(std::process::id()).expect("/proc/self/stat parses");
        assert!(after > before, "{before} -> {after} ticks after 50 ms busy");
    }

    #[test]
    fn cpu_times_reads_every_cpu_of_this_machine() {
        let times = cpu_times().expect("/proc/stat parses");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(
            times.len() >= cpus,
            "{} cpuN lines for {cpus} CPUs",
            times.len()
        );
        assert!(times.iter().all(|t| t.busy >= t.softirq));
    }
}
