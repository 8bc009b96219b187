//! Scenario `memory`: resident memory (VmRSS, summed over the proxy's processes) of
//! trustgate and nginx idle, then holding N idle keep-alive connections, each
//! opened directly by this process with a PROXY v1 header and one served request.
//! Each proxy is started fresh for each round; rounds alternate the proxies.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::client;
use super::peers::{self, Target};
use super::procs::{self, HAPROXY, NGINX, Proc, Scratch, TASKSET};
use super::{Measured, loadavg, median};

/// The proxies measured. HAProxy is left out: for 10,000 proxied connections its
/// `maxconn` needs more open files than a process may have here (20,000).
const MEASURED: [Target; 2] = [Target::Trustgate, Target::Nginx];
const PROXY_CPU: &str = "1";
const REST_CPU: &str = "0";
/// Settling time before each reading.
const SETTLE: Duration = Duration::from_secs(2);
/// Bound on opening all the connections.
const OPEN_LIMIT: Duration = Duration::from_secs(120);
/// Per-connection I/O bound.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(opts: &super::Options, trustgate: &str) -> Result<Measured> {
    procs::require(&[HAPROXY, NGINX, TASKSET])?;
    let load_before = loadavg();
    let scratch = Scratch::new("memory")?;
    let cert = peers::certificate(&scratch)?;
    let _upstream = peers::start_upstream(&scratch, REST_CPU)?;
    let mut rows: Vec<(Target, Vec<(u64, u64)>)> =
        MEASURED.iter().map(|&t| (t, Vec::new())).collect();
    let mut raw = String::new();
    for round in 0..opts.rounds {
        for (target, samples) in rows.iter_mut() {
            let proc = match target {
                Target::Trustgate => peers::start_trustgate(&scratch, PROXY_CPU, trustgate, &cert)?,
                Target::Nginx => peers::start_nginx(&scratch, PROXY_CPU, &cert)?,
                other => bail!("{} is not measured here (see MEASURED)", other.name()),
            };
            let (idle, loaded) = measure(&proc, *target, opts.connections).with_context(|| {
                format!(
                    "measuring {}; its log ends:\n{}",
                    target.name(),
                    proc.log_tail(&scratch.path)
                )
            })?;
            eprintln!(
                "round {round} {}: idle {idle} KiB, with connections {loaded} KiB",
                target.name()
            );
            let _ = writeln!(
                raw,
                "round {round} | {} | idle {idle} KiB | loaded {loaded} KiB",
                target.name()
            );
            samples.push((idle, loaded));
        }
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} rounds, each proxy started fresh per round; {} idle HTTP/1.1 keep-alive connections, \
         each opened straight to the proxy with a PROXY v1 header and one `GET /` answered \
         through it; VmRSS summed over the proxy's processes (nginx: master and its one worker), \
         read {} s after the last connection. Proxy pinned to CPU {PROXY_CPU}; upstream on CPU {REST_CPU}.\n",
        opts.rounds,
        opts.connections,
        SETTLE.as_secs()
    );
    let _ = writeln!(
        text,
        "| proxy | idle RSS MiB | RSS with connections MiB | growth MiB | bytes per connection |"
    );
    let _ = writeln!(text, "| --- | ---: | ---: | ---: | ---: |");
    for (target, samples) in &rows {
        let idle = median(&samples.iter().map(|s| s.0 as f64).collect::<Vec<_>>());
        let loaded = median(&samples.iter().map(|s| s.1 as f64).collect::<Vec<_>>());
        let growth = median(
            &samples
                .iter()
                .map(|s| s.1 as f64 - s.0 as f64)
                .collect::<Vec<_>>(),
        );
        let _ = writeln!(
            text,
            "| {} | {:.1} | {:.1} | {:.1} | {:.0} |",
            target.name(),
            idle / 1024.0,
            loaded / 1024.0,
            growth / 1024.0,
            growth * 1024.0 / opts.connections as f64
        );
    }
    let _ = write!(
        text,
        "\nMedians over the rounds. Every round:\n\n```\n{raw}```\n"
    );
    Ok(Measured { load_before, text })
}

/// Idle RSS after one request, then RSS while holding `n` served keep-alive connections.
fn measure(proc: &Proc, target: Target, n: usize) -> Result<(u64, u64)> {
    let port = target.plain_port();
    drop(client::get(port, 0, IO_TIMEOUT)?);
    std::thread::sleep(SETTLE);
    let idle = rss(proc)?;
    let deadline = Instant::now() + OPEN_LIMIT;
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        if Instant::now() > deadline {
            bail!("opened only {i} of {n} connections within {OPEN_LIMIT:?}");
        }
        held.push(client::get(port, i, IO_TIMEOUT).with_context(|| format!("connection {i}"))?);
    }
    std::thread::sleep(SETTLE);
    let loaded = rss(proc)?;
    // Every connection must still be open: a proxy that shed some would look cheaper.
    if let Some(i) = held.iter().position(|c| !client::still_open(c)) {
        bail!("connection {i} was closed by the proxy while idle");
    }
    Ok((idle, loaded))
}

/// VmRSS of the process and its children, in KiB.
fn rss(proc: &Proc) -> Result<u64> {
    let mut total = procs::rss_kib(proc.pid())?;
    for child in procs::children(proc.pid()) {
        total += procs::rss_kib(child)?;
    }
    Ok(total)
}
