//! Scenario `http`: requests per second and latency through a PROXY-speaking front
//! (HAProxy, TCP mode, `send-proxy-v2`) into trustgate, nginx and HAProxy in HTTP mode,
//! the same `200 ok` upstream behind each, under four loads, alternating the three
//! proxies round by round. The proxy under test runs alone on CPU 1; the front, the
//! upstream and the load generator share CPU 0.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::peers::{self, Target};
use super::procs::{self, H2LOAD, HAPROXY, NGINX, Scratch, TASKSET, WRK};
use super::{Measured, loadavg, median};

/// CPU of the proxy under test.
const PROXY_CPU: &str = "1";
/// CPU of everything else: front, upstream, load generator.
const REST_CPU: &str = "0";
/// Concurrent connections of every load (as in baselines.md).
const CONNECTIONS: &str = "32";
/// Concurrent streams per h2 connection.
const H2_STREAMS: &str = "10";
/// Warm-up run before each load's rounds, per proxy.
const WARMUP: Duration = Duration::from_secs(1);
/// A load generator that overruns its duration by this much is killed.
const OVERRUN: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
enum Load {
    KeepAlive,
    H2,
    Close,
    Tls,
}

impl Load {
    const ALL: [Load; 4] = [Load::KeepAlive, Load::H2, Load::Close, Load::Tls];

    fn describe(self) -> &'static str {
        match self {
            Load::KeepAlive => "HTTP/1.1 keep-alive",
            Load::H2 => "h2c prior knowledge",
            Load::Close => "HTTP/1.1, new connection per request",
            Load::Tls => "HTTPS (HTTP/1.1 keep-alive), TLS ended by the proxy",
        }
    }

    fn command(self, target: Target, seconds: u64, scratch: &Scratch) -> Vec<String> {
        let (plain, h2c, tls) = peers::front_ports(target);
        let secs = format!("{seconds}s");
        let wrk = |url: String, extra: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = [
                "taskset",
                "-c",
                REST_CPU,
                "wrk",
                "-t1",
                "-c",
                CONNECTIONS,
                "-d",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            v.push(secs.clone());
            v.push("--latency".into());
            v.extend(extra.iter().map(|s| s.to_string()));
            v.push(url);
            v
        };
        match self {
            Load::KeepAlive => wrk(format!("http://127.0.0.1:{plain}/"), &[]),
            Load::Close => wrk(
                format!("http://127.0.0.1:{plain}/"),
                &["-H", "Connection: close"],
            ),
            Load::Tls => wrk(format!("https://localhost:{tls}/"), &[]),
            Load::H2 => {
                let log = scratch.path.join("h2load.log");
                [
                    "taskset",
                    "-c",
                    REST_CPU,
                    "h2load",
                    "-t1",
                    "-c",
                    CONNECTIONS,
                    "-m",
                    H2_STREAMS,
                    "-D",
                ]
                .iter()
                .map(|s| s.to_string())
                .chain([
                    seconds.to_string(),
                    format!("--log-file={}", log.display()),
                    format!("http://127.0.0.1:{h2c}/"),
                ])
                .collect()
            }
        }
    }
}

/// One measurement.
#[derive(Clone, Copy, Default)]
pub(super) struct Sample {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// Busy time of the proxy's CPU per request, in microseconds.
    pub cpu_us: f64,
}

pub fn run(opts: &super::Options, trustgate: &str) -> Result<Measured> {
    procs::require(&[WRK, H2LOAD, HAPROXY, NGINX, TASKSET])?;
    procs::require_nginx_stream()?;
    let load_before = loadavg();
    let scratch = Scratch::new("http")?;
    let cert = peers::certificate(&scratch)?;
    let _upstream = peers::start_upstream(&scratch, REST_CPU)?;
    let every: Vec<Target> = Target::ALL.into_iter().chain(Target::LOGGED).collect();
    let _front = peers::start_front(&scratch, REST_CPU, &every)?;
    let _trustgate = peers::start_trustgate(&scratch, PROXY_CPU, trustgate, &cert)?;
    let _nginx = peers::start_nginx(&scratch, PROXY_CPU, &cert)?;
    let _haproxy = peers::start_haproxy(&scratch, PROXY_CPU, &cert)?;
    let _trustgate_logged = peers::start_trustgate_as(
        &scratch,
        PROXY_CPU,
        trustgate,
        &cert,
        Target::TrustgateLogged,
    )?;
    let _nginx_logged = peers::start_nginx_as(&scratch, PROXY_CPU, &cert, Target::NginxLogged)?;

    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} rounds of {} s per proxy and load, A B C order each round; {CONNECTIONS} connections \
         (h2: {H2_STREAMS} streams each). Proxy under test pinned to CPU {PROXY_CPU} (one worker: \
         nginx `worker_processes 1`, HAProxy `nbthread 1`, trustgate's runtime sized by its \
         affinity); front HAProxy, upstream nginx and the load generator on CPU {REST_CPU}. \
         trustgate: release build, `RUST_LOG=warn`, access log off, kernel filter `socket`; \
         under keep-alive also trustgate with `[access_log]` `combined` to a file and nginx \
         with `access_log FILE` (combined), each beside its unlogged twin in the same round. \
         CPU µs/req: busy time of CPU {PROXY_CPU} (the proxy's own, kernel and softirq \
         included) per request. Ratios are medians of the per-round ratios.\n",
        opts.rounds, opts.seconds
    );
    let _ = writeln!(
        text,
        "| load | proxy | req/s (median) | req/s min–max | p50 ms | p99 ms | CPU µs/req | errors | \
         trustgate ÷ proxy, req/s | trustgate ÷ proxy, CPU/req |"
    );
    let _ = writeln!(
        text,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let mut raw = String::new();
    let mut logged = String::new();
    for load in Load::ALL {
        let targets: Vec<Target> = match load {
            Load::KeepAlive => every.clone(),
            _ => Target::ALL.to_vec(),
        };
        for &target in &targets {
            measure(load, target, WARMUP.as_secs(), &scratch).with_context(|| {
                format!("warming up {} under {}", target.name(), load.describe())
            })?;
        }
        let mut samples: Vec<Vec<Sample>> = Vec::new();
        for round in 0..opts.rounds {
            let mut row = vec![Sample::default(); targets.len()];
            for (i, &target) in targets.iter().enumerate() {
                let s = measure(load, target, opts.seconds, &scratch).with_context(|| {
                    format!("measuring {} under {}", target.name(), load.describe())
                })?;
                let line = format!(
                    "{} | round {round} | {} | {:.0} req/s | p50 {:.3} ms | p99 {:.3} ms | \
                     CPU {:.1} us/req | errors {}",
                    load.describe(),
                    target.name(),
                    s.rps,
                    s.p50_ms,
                    s.p99_ms,
                    s.cpu_us,
                    s.errors
                );
                eprintln!("{line}");
                let _ = writeln!(raw, "{line}");
                row[i] = s;
            }
            samples.push(row);
        }
        for (i, &target) in targets.iter().enumerate() {
            let col =
                |f: fn(&Sample) -> f64| -> Vec<f64> { samples.iter().map(|r| f(&r[i])).collect() };
            let rps = col(|s| s.rps);
            let min = rps.iter().copied().fold(f64::INFINITY, f64::min);
            let max = rps.iter().copied().fold(0.0, f64::max);
            let errors: u64 = samples.iter().map(|r| r[i].errors).sum();
            let ratio = |f: fn(&Sample) -> f64| {
                // The logged twins are compared with their unlogged selves below.
                if target == Target::Trustgate || Target::LOGGED.contains(&target) {
                    return "—".to_string();
                }
                let ratios: Vec<f64> = samples.iter().map(|r| f(&r[0]) / f(&r[i])).collect();
                format!("{:.2}", median(&ratios))
            };
            let _ = writeln!(
                text,
                "| {} | {} | {:.0} | {:.0}–{:.0} | {:.2} | {:.2} | {:.1} | {errors} | {} | {} |",
                load.describe(),
                target.name(),
                median(&rps),
                min,
                max,
                median(&col(|s| s.p50_ms)),
                median(&col(|s| s.p99_ms)),
                median(&col(|s| s.cpu_us)),
                ratio(|s| s.rps),
                ratio(|s| s.cpu_us),
            );
            if Target::LOGGED.contains(&target)
                && let Some(off) = targets.iter().position(|t| *t == target.unlogged())
            {
                let per_round = |f: fn(&Sample) -> f64| -> f64 {
                    let r: Vec<f64> = samples.iter().map(|r| f(&r[i]) / f(&r[off])).collect();
                    median(&r)
                };
                let _ = writeln!(
                    logged,
                    "| {} | {} | {:.3} | {:.3} |",
                    load.describe(),
                    target.unlogged().name(),
                    per_round(|s| s.cpu_us),
                    per_round(|s| s.rps),
                );
            }
        }
    }
    let _ = write!(
        text,
        "\nAccess log on ÷ off, the same proxy in the same rounds (medians of the per-round \
         ratios; CPU/req above 1 is the log's cost):\n\n\
         | load | proxy | CPU/req, log on ÷ off | req/s, log on ÷ off |\n\
         | --- | --- | ---: | ---: |\n{logged}"
    );
    let _ = write!(
        text,
        "\nerrors: wrk's non-2xx responses plus socket errors, h2load's failed and errored \
         requests, summed over the rounds. Every round:\n\n```\n{raw}```\n"
    );
    Ok(Measured { load_before, text })
}

/// Runs one load against one proxy for `seconds` and parses the generator's report.
/// Also reads the busy time of [`PROXY_CPU`] over the run: the proxy under test is the
/// only process there, so that is its own time plus the kernel's work for its sockets
/// (loopback delivery runs on the sending CPU).
fn measure(load: Load, target: Target, seconds: u64, scratch: &Scratch) -> Result<Sample> {
    let argv = load.command(target, seconds, scratch);
    let busy_before = proxy_cpu_busy_ticks()?;
    let out = run_bounded(&argv, Duration::from_secs(seconds) + OVERRUN)?;
    let busy = proxy_cpu_busy_ticks()?.saturating_sub(busy_before);
    let mut sample = match load {
        Load::H2 => parse_h2load(&out, &scratch.path.join("h2load.log"))?,
        _ => parse_wrk(&out)?,
    };
    let requests = sample.rps * seconds as f64;
    sample.cpu_us = busy as f64 * 1e6 / procs::USER_HZ / requests.max(1.0);
    Ok(sample)
}

/// Ticks [`PROXY_CPU`] has spent busy since boot.
fn proxy_cpu_busy_ticks() -> Result<u64> {
    let cpu: usize = PROXY_CPU.parse().context("PROXY_CPU is a CPU number")?;
    let times = procs::cpu_times()?;
    let proxy = times
        .get(cpu)
        .with_context(|| format!("no cpu{cpu} line in /proc/stat"))?;
    Ok(proxy.busy)
}

/// Runs `argv` to completion, killing it if it outlives `limit`; returns its stdout.
pub(super) fn run_bounded(argv: &[String], limit: Duration) -> Result<String> {
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{}`", argv.join(" ")))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.context("waiting for the load generator")?,
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            bail!("`{}` ran past {limit:?} and was killed", argv.join(" "));
        }
    };
    if !out.status.success() {
        bail!(
            "`{}` failed with {}: {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// wrk's `--latency` report: Requests/sec, the 50% and 99% lines, and its error lines.
pub(super) fn parse_wrk(out: &str) -> Result<Sample> {
    let mut s = Sample::default();
    for line in out.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Requests/sec:") => s.rps = words.next().unwrap_or("").parse()?,
            Some("50%") => s.p50_ms = wrk_ms(words.next().unwrap_or(""))?,
            Some("99%") => s.p99_ms = wrk_ms(words.next().unwrap_or(""))?,
            Some("Non-2xx") => {
                s.errors += line.rsplit(' ').next().unwrap_or("0").parse::<u64>()?;
            }
            Some("Socket") => {
                // Socket errors: connect 0, read 0, write 0, timeout 0
                s.errors += line
                    .split(',')
                    .filter_map(|p| p.rsplit(' ').next()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if s.rps == 0.0 {
        bail!("no Requests/sec in wrk's output:\n{out}");
    }
    Ok(s)
}

/// A wrk duration (`812.00us`, `1.23ms`, `1.02s`) in milliseconds.
fn wrk_ms(v: &str) -> Result<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("unknown wrk duration `{v}`")
    };
    Ok(num
        .parse::<f64>()
        .with_context(|| format!("wrk duration `{v}`"))?
        * scale)
}

/// h2load's summary for req/s and failures; latency percentiles from its per-request
/// log (`--log-file`: start, status, microseconds).
fn parse_h2load(out: &str, log: &std::path::Path) -> Result<Sample> {
    let mut s = Sample::default();
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // finished in 5.00s, 12345.67 req/s, 1.23MB/s
            s.rps = rest
                .split(',')
                .nth(1)
                .and_then(|p| p.trim().strip_suffix(" req/s"))
                .context("h2load's req/s")?
                .parse()?;
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            for part in rest.split(',') {
                let mut w = part.split_whitespace();
                let n: u64 = w.next().unwrap_or("0").parse().unwrap_or(0);
                if matches!(w.next(), Some("failed" | "errored")) {
                    s.errors += n;
                }
            }
        }
    }
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let mut us: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    if s.rps == 0.0 || us.is_empty() {
        bail!("no req/s or no per-request log in h2load's output:\n{out}");
    }
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q) as usize] / 1000.0;
    s.p50_ms = at(0.50);
    s.p99_ms = at(0.99);
    Ok(s)
}
